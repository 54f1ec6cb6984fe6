/*
 * test_kv.c: the protected hash table through the C API (patronus_kv_*),
 * against the real libpatronus.so: a memory node served by a pthread, the
 * client on the main thread. Values byte-exact, NOT_FOUND / NO_MEM codes,
 * the many-key calls, a read-only handle refused by the memory node with
 * the table unchanged, a relinquished handle refused, bad arguments
 * INVALID, a handle used from another thread INVALID. Built with
 * -Wall -Wextra -Werror and once with AddressSanitizer by tests/c_api.rs.
 */
#include <patronus.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;
#define EXPECT(cond)                                                                   \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            const char *e_ = patronus_last_error();                                    \
            fprintf(stderr, "%s:%d: EXPECT(%s) failed; last error: %s\n", __FILE__,    \
                    __LINE__, #cond, e_ ? e_ : "(none)");                              \
            failures++;                                                                \
        }                                                                              \
    } while (0)

static void *serve(void *arg) {
    patronus_t *p = (patronus_t *)arg;
    if (patronus_register_server_thread(p) != PATRONUS_RC_OK) return (void *)1;
    patronus_server_serve(p, 0);
    return NULL;
}

static void fill(char *b, size_t len, int seed) {
    for (size_t k = 0; k < len; k++) b[k] = (char)(k * 31 + seed * 7 + 1);
}

struct other {
    patronus_t *p;
    patronus_kv_t *kv;
    patronus_rc_t rc;
};

/* Another OS thread (a client thread of its own) may not use the handle. */
static void *other_thread(void *arg) {
    struct other *o = (struct other *)arg;
    if (patronus_register_client_thread(o->p) != PATRONUS_RC_OK) return (void *)1;
    char buf[16];
    size_t len = 0;
    o->rc = patronus_kv_get(o->p, o->kv, "k", 1, buf, sizeof buf, &len);
    return NULL;
}


/* Waits (bounded: 20 s) until `want` posted kv operations completed;
 * stores them in out[] and returns how many came. */
static size_t poll_all(patronus_t *p, patronus_kv_t *kv, patronus_kv_completion_t *out,
                       size_t want) {
    size_t got = 0;
    for (int round = 0; round < 200 && got < want; round++)
        got += patronus_kv_wait(p, kv, out + got, want - got, 100000000ull);
    return got;
}

int main(void) {
    patronus_config_t conf;
    patronus_config_init(&conf);
    conf.cluster = "c-test-kv";
    conf.leases_per_dir = 1024;
    patronus_t *p = patronus_new(&conf);
    if (!p) {
        fprintf(stderr, "patronus_new: %s\n", patronus_last_error());
        return 1;
    }
    EXPECT(patronus_register_client_thread(p) == PATRONUS_RC_OK);
    pthread_t srv;
    pthread_create(&srv, NULL, serve, p);

    patronus_kv_params_t prm;
    EXPECT(patronus_kv_params_init(&prm) == PATRONUS_RC_OK);
    EXPECT(prm.groups == 64 && prm.initial_depth == 2 && prm.max_depth == 8);
    prm.base = 4096;
    prm.groups = 16;
    prm.initial_depth = 1;
    prm.max_depth = 6;
    uint64_t region = patronus_kv_region_bytes(&prm);
    EXPECT(region > 0 && region < (8u << 20));

    /* Bad arguments: NULL handle and INVALID, never a crash. */
    EXPECT(patronus_kv_create(p, 0, 0, &prm, 7) == NULL);
    EXPECT(patronus_last_error() != NULL);
    EXPECT(patronus_kv_create(NULL, 0, 0, &prm, PATRONUS_KV_LEASE) == NULL);
    EXPECT(patronus_kv_params_init(NULL) == PATRONUS_RC_INVALID);
    EXPECT(patronus_kv_put(p, NULL, "k", 1, "v", 1) == PATRONUS_RC_INVALID);
    patronus_kv_free(NULL);

    patronus_kv_t *kv = patronus_kv_create(p, 0, 0, &prm, PATRONUS_KV_LEASE);
    EXPECT(kv != NULL);
    if (!kv) return 1;
    EXPECT(patronus_kv_put(p, kv, NULL, 3, "v", 1) == PATRONUS_RC_INVALID);
    EXPECT(patronus_kv_put(p, kv, "k", 0, "v", 1) == PATRONUS_RC_INVALID);
    char longkey[65];
    memset(longkey, 'x', sizeof longkey);
    EXPECT(patronus_kv_put(p, kv, longkey, 65, "v", 1) == PATRONUS_RC_INVALID);
    EXPECT(patronus_kv_put(p, kv, "k", 1, NULL, 5) == PATRONUS_RC_INVALID);
    EXPECT(patronus_kv_put(p, kv, longkey, 64, "", 0) == PATRONUS_RC_OK);

    /* Byte-exact values, 1 byte to 4000 bytes. */
    static char val[4000], out[4096];
    for (int i = 0; i < 200; i++) {
        char key[32];
        int kl = snprintf(key, sizeof key, "key-%d", i);
        size_t vl = (i == 7) ? 4000 : (size_t)(1 + i * 3);
        fill(val, vl, i);
        EXPECT(patronus_kv_put(p, kv, key, (size_t)kl, val, vl) == PATRONUS_RC_OK);
    }
    for (int i = 0; i < 200; i++) {
        char key[32];
        int kl = snprintf(key, sizeof key, "key-%d", i);
        size_t vl = (i == 7) ? 4000 : (size_t)(1 + i * 3);
        fill(val, vl, i);
        size_t len = 0;
        EXPECT(patronus_kv_get(p, kv, key, (size_t)kl, out, sizeof out, &len) == PATRONUS_RC_OK);
        EXPECT(len == vl && memcmp(out, val, vl) == 0);
    }
    size_t len = 12345;
    EXPECT(patronus_kv_get(p, kv, "absent", 6, out, sizeof out, &len) == PATRONUS_RC_NOT_FOUND);
    EXPECT(len == 12345); /* outputs written only on success */
    EXPECT(patronus_kv_get(p, kv, "key-7", 5, out, 10, &len) == PATRONUS_RC_NO_MEM);
    EXPECT(len == 4000);
    EXPECT(patronus_kv_del(p, kv, "key-3", 5) == PATRONUS_RC_OK);
    EXPECT(patronus_kv_del(p, kv, "key-3", 5) == PATRONUS_RC_NOT_FOUND);
    EXPECT(patronus_kv_get(p, kv, "key-3", 5, out, sizeof out, &len) == PATRONUS_RC_NOT_FOUND);

    /* Many keys in flight together. */
    enum { M = 32 };
    static char keys[M][16], vals[M][64], outs[M][64];
    patronus_kv_item_t items[M];
    size_t lens[M];
    for (int i = 0; i < M; i++) {
        int kl = snprintf(keys[i], sizeof keys[i], "many-%d", i);
        fill(vals[i], 64, 1000 + i);
        items[i].key = keys[i];
        items[i].key_len = (size_t)kl;
        items[i].value = vals[i];
        items[i].value_len = (size_t)(8 + i);
    }
    EXPECT(patronus_kv_put_many(p, kv, items, M) == PATRONUS_RC_OK);
    for (int i = 0; i < M; i++) {
        items[i].value = outs[i];
        items[i].value_len = sizeof outs[i];
    }
    items[5].key = "many-absent";
    items[5].key_len = strlen("many-absent");
    EXPECT(patronus_kv_get_many(p, kv, items, M, lens) == PATRONUS_RC_OK);
    for (int i = 0; i < M; i++) {
        if (i == 5) {
            EXPECT(lens[i] == SIZE_MAX);
            continue;
        }
        EXPECT(lens[i] == (size_t)(8 + i) && memcmp(outs[i], vals[i], lens[i]) == 0);
    }
    EXPECT(patronus_kv_get_many(p, kv, NULL, 3, lens) == PATRONUS_RC_INVALID);
    /* Delete the first 8 (item 5 is absent) together. */
    bool existed[8];
    EXPECT(patronus_kv_del_many(p, kv, items, 8, existed) == PATRONUS_RC_OK);
    for (int i = 0; i < 8; i++) EXPECT(existed[i] == (i != 5));
    EXPECT(patronus_kv_del_many(p, kv, items, 8, existed) == PATRONUS_RC_OK);
    for (int i = 0; i < 8; i++) EXPECT(!existed[i]);
    EXPECT(patronus_kv_get(p, kv, "many-0", 6, out, sizeof out, &len) == PATRONUS_RC_NOT_FOUND);
    EXPECT(patronus_kv_get(p, kv, "many-8", 6, out, sizeof out, &len) == PATRONUS_RC_OK);


    /* Posted operations: queued on the handle, driven and completed by
     * patronus_kv_poll/wait; each user_data completes exactly once. */
    {
        enum { P = 32 };
        static char pk[P][16], pv[P][128], pout[P][128];
        static patronus_kv_completion_t comp[2 * PATRONUS_KV_MAX_POSTED];
        int seen[P];
        size_t pkl[P];
        /* Bad arguments: INVALID, nothing queued. */
        EXPECT(patronus_kv_post_get(p, kv, NULL, 3, pout[0], 128, 1) == PATRONUS_RC_INVALID);
        EXPECT(patronus_kv_post_get(p, kv, "k", 1, NULL, 8, 1) == PATRONUS_RC_INVALID);
        EXPECT(patronus_kv_post_get(p, kv, longkey, 65, pout[0], 128, 1) == PATRONUS_RC_INVALID);
        EXPECT(patronus_kv_post_put(p, kv, "k", 0, "v", 1, 1) == PATRONUS_RC_INVALID);
        EXPECT(patronus_kv_post_put(p, kv, "k", 1, NULL, 5, 1) == PATRONUS_RC_INVALID);
        EXPECT(patronus_kv_post_del(p, NULL, "k", 1, 1) == PATRONUS_RC_INVALID);
        EXPECT(patronus_kv_post_del(NULL, kv, "k", 1, 1) == PATRONUS_RC_INVALID);
        EXPECT(patronus_kv_posted(kv) == 0);
        EXPECT(patronus_kv_poll(p, kv, NULL, 4) == 0);
        EXPECT(patronus_last_error() != NULL);
        EXPECT(patronus_kv_poll(p, kv, comp, 4) == 0);
        /* 32 puts in flight together. */
        for (int i = 0; i < P; i++) {
            pkl[i] = (size_t)snprintf(pk[i], sizeof pk[i], "post-%d", i);
            fill(pv[i], 1 + (size_t)i * 3, 2000 + i);
            EXPECT(patronus_kv_post_put(p, kv, pk[i], pkl[i], pv[i], 1 + (size_t)i * 3,
                                        1000 + (uint64_t)i) == PATRONUS_RC_OK);
        }
        EXPECT(patronus_kv_posted(kv) == P);
        /* The blocking calls wait until the posted ones are polled. */
        EXPECT(patronus_kv_get(p, kv, "key-9", 5, out, sizeof out, &len) == PATRONUS_RC_INVALID);
        memset(seen, 0, sizeof seen);
        size_t n = poll_all(p, kv, comp, P);
        EXPECT(n == P);
        for (size_t j = 0; j < n; j++) {
            uint64_t u = comp[j].user_data;
            EXPECT(u >= 1000 && u < 1000 + P);
            if (u < 1000 || u >= 1000 + P) continue;
            seen[u - 1000]++;
            EXPECT(comp[j].rc == PATRONUS_RC_OK && comp[j].op == PATRONUS_KV_OP_PUT);
        }
        for (int i = 0; i < P; i++) EXPECT(seen[i] == 1);
        EXPECT(patronus_kv_posted(kv) == 0);
        /* 32 gets and dels mixed: odd keys deleted, even keys read (key 4
         * into a 2-byte buffer: NO_MEM; one absent key: NOT_FOUND). */
        memset(pout, 0, sizeof pout);
        for (int i = 0; i < P; i++) {
            uint64_t u = 5000 + (uint64_t)i;
            if (i % 2) {
                EXPECT(patronus_kv_post_del(p, kv, pk[i], pkl[i], u) == PATRONUS_RC_OK);
            } else if (i == 30) {
                EXPECT(patronus_kv_post_get(p, kv, "post-absent", 11, pout[i], 128, u) ==
                       PATRONUS_RC_OK);
            } else {
                EXPECT(patronus_kv_post_get(p, kv, pk[i], pkl[i], pout[i], i == 4 ? 2 : 128, u) ==
                       PATRONUS_RC_OK);
            }
        }
        memset(seen, 0, sizeof seen);
        n = poll_all(p, kv, comp, P);
        EXPECT(n == P);
        for (size_t j = 0; j < n; j++) {
            uint64_t u = comp[j].user_data;
            EXPECT(u >= 5000 && u < 5000 + P);
            if (u < 5000 || u >= 5000 + P) continue;
            int i = (int)(u - 5000);
            seen[i]++;
            size_t vl = 1 + (size_t)i * 3;
            if (i % 2) {
                EXPECT(comp[j].op == PATRONUS_KV_OP_DEL && comp[j].rc == PATRONUS_RC_OK);
            } else if (i == 30) {
                EXPECT(comp[j].op == PATRONUS_KV_OP_GET && comp[j].rc == PATRONUS_RC_NOT_FOUND);
            } else if (i == 4) {
                EXPECT(comp[j].rc == PATRONUS_RC_NO_MEM && comp[j].value_len == vl);
                EXPECT(pout[i][0] == 0 && pout[i][1] == 0);
            } else {
                EXPECT(comp[j].op == PATRONUS_KV_OP_GET && comp[j].rc == PATRONUS_RC_OK);
                EXPECT(comp[j].value_len == vl && memcmp(pout[i], pv[i], vl) == 0);
            }
        }
        for (int i = 0; i < P; i++) EXPECT(seen[i] == 1);
        EXPECT(patronus_kv_get(p, kv, pk[1], pkl[1], out, sizeof out, &len) ==
               PATRONUS_RC_NOT_FOUND);
        EXPECT(patronus_kv_get(p, kv, pk[2], pkl[2], out, sizeof out, &len) == PATRONUS_RC_OK);
        /* Past the per-handle limit: RETRY, nothing queued; all the queued
         * ones still complete. */
        size_t queued = 0;
        patronus_rc_t rc = PATRONUS_RC_OK;
        while (queued <= PATRONUS_KV_MAX_POSTED) {
            rc = patronus_kv_post_get(p, kv, pk[2], pkl[2], pout[2], 128, 9000 + queued);
            if (rc != PATRONUS_RC_OK) break;
            queued++;
        }
        EXPECT(rc == PATRONUS_RC_RETRY);
        EXPECT(queued == PATRONUS_KV_MAX_POSTED);
        EXPECT(patronus_kv_posted(kv) == PATRONUS_KV_MAX_POSTED);
        n = poll_all(p, kv, comp, queued);
        EXPECT(n == queued);
        for (size_t j = 0; j < n; j++)
            EXPECT(comp[j].rc == PATRONUS_RC_OK && comp[j].value_len == 7 &&
                   comp[j].user_data >= 9000 && comp[j].user_data < 9000 + queued);
        EXPECT(patronus_kv_wait(p, kv, comp, 4, 1000000ull) == 0);

        /* Posted kv operations share the thread with patronus_post_*
         * calls: whichever poll meets the other's completion hands it
         * over. */
        patronus_lease_t *l =
            patronus_get_rlease(p, 0, 0, patronus_gaddr(0, 4096), 0, 64, 0, PATRONUS_ACQUIRE_NO_GC);
        EXPECT(l != NULL && patronus_lease_success(l));
        if (l && patronus_lease_success(l)) {
            char rb[64];
            patronus_completion_t gc[2];
            size_t g = 0;
            /* The kv handle's polling meets the read's completion. */
            EXPECT(patronus_post_read(p, l, rb, sizeof rb, 0, 0, 77) == PATRONUS_RC_OK);
            EXPECT(patronus_kv_post_get(p, kv, pk[2], pkl[2], pout[2], 128, 88) == PATRONUS_RC_OK);
            EXPECT(poll_all(p, kv, comp, 1) == 1);
            EXPECT(comp[0].user_data == 88 && comp[0].rc == PATRONUS_RC_OK);
            for (int round = 0; round < 200 && g < 1; round++)
                g += patronus_wait(p, gc + g, 1 - g, 100000000ull);
            EXPECT(g == 1 && gc[0].user_data == 77 && gc[0].rc == PATRONUS_RC_OK);
            /* patronus_wait meets the kv calls' completions. */
            EXPECT(patronus_kv_post_get(p, kv, pk[2], pkl[2], pout[2], 128, 89) == PATRONUS_RC_OK);
            EXPECT(patronus_post_read(p, l, rb, sizeof rb, 0, 0, 78) == PATRONUS_RC_OK);
            g = 0;
            for (int round = 0; round < 200 && g < 1; round++)
                g += patronus_wait(p, gc + g, 1 - g, 100000000ull);
            EXPECT(g == 1 && gc[0].user_data == 78 && gc[0].rc == PATRONUS_RC_OK);
            EXPECT(poll_all(p, kv, comp, 1) == 1);
            EXPECT(comp[0].user_data == 89 && comp[0].rc == PATRONUS_RC_OK &&
                   comp[0].value_len == 7 && memcmp(pout[2], pv[2], 7) == 0);
            EXPECT(patronus_inflight(p) == 0);
            EXPECT(patronus_relinquish(p, l, 0, 0) == PATRONUS_RC_OK);
        }
        patronus_lease_free(l);
    }

    /* A handle belongs to the thread that made it. */
    struct other o = {p, kv, PATRONUS_RC_OK};
    pthread_t th;
    pthread_create(&th, NULL, other_thread, &o);
    void *tr;
    pthread_join(th, &tr);
    EXPECT(tr == NULL);
    EXPECT(o.rc == PATRONUS_RC_INVALID);

    /* A read-only handle: gets work, changes are refused by the memory
     * node and leave the table as it was. */
    patronus_kv_t *ro = patronus_kv_open(p, 0, 0, &prm, PATRONUS_KV_LEASE, PATRONUS_KV_READ_ONLY);
    EXPECT(ro != NULL);
    if (ro) {
        EXPECT(patronus_kv_get(p, ro, "key-9", 5, out, sizeof out, &len) == PATRONUS_RC_OK);
        EXPECT(patronus_kv_put(p, ro, "key-9", 5, "forged", 6) == PATRONUS_RC_RDMA_PROTECTION_ERR);
        EXPECT(patronus_kv_put(p, ro, "new-key", 7, "forged", 6) ==
               PATRONUS_RC_RDMA_PROTECTION_ERR);
        EXPECT(patronus_kv_del(p, ro, "key-10", 6) == PATRONUS_RC_RDMA_PROTECTION_ERR);
        fill(val, 28, 9);
        EXPECT(patronus_kv_get(p, kv, "key-9", 5, out, sizeof out, &len) == PATRONUS_RC_OK);
        EXPECT(len == 28 && memcmp(out, val, 28) == 0);
        EXPECT(patronus_kv_get(p, kv, "new-key", 7, out, sizeof out, &len) ==
               PATRONUS_RC_NOT_FOUND);
        EXPECT(patronus_kv_get(p, kv, "key-10", 6, out, sizeof out, &len) == PATRONUS_RC_OK);
        /* Relinquished: every access is refused locally (the memory node
         * refuses the old keys too: tests/kv.rs shows that). */
        EXPECT(patronus_kv_relinquish(p, ro) == PATRONUS_RC_OK);
        len = 777;
        EXPECT(patronus_kv_get(p, ro, "key-9", 5, out, sizeof out, &len) == PATRONUS_RC_INVALID);
        EXPECT(strstr(patronus_last_error(), "relinquished") != NULL);
        EXPECT(len == 777);
        patronus_kv_free(ro);
    }
    /* Opening where no table is: NOT_FOUND. */
    patronus_kv_params_t none = prm;
    none.base = 8u << 20;
    EXPECT(patronus_kv_open(p, 0, 0, &none, PATRONUS_KV_LEASE, PATRONUS_KV_READ_WRITE) == NULL);

    EXPECT(patronus_kv_relinquish(p, kv) == PATRONUS_RC_OK);
    patronus_kv_free(kv);

    patronus_finished(p, 0);
    void *r;
    pthread_join(srv, &r);
    EXPECT(r == NULL);
    patronus_free(p);
    if (failures) {
        fprintf(stderr, "test_kv: %d failures\n", failures);
        return 1;
    }
    printf("test_kv: ok\n");
    return 0;
}
