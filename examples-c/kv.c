/*
 * kv.c: a small protected key-value store on one memory node. Each key
 * hashes to a 64-byte slot of the lease buffer; a writer holds an exclusive
 * write lease on the slot (PATRONUS_ACQUIRE_WITH_CONFLICT_DETECT, so two
 * writers never overlap), a reader a read lease. Several client threads
 * insert disjoint key ranges concurrently; the main thread then reads every
 * key back and checks it.
 *
 *   make -C examples-c kv && ./examples-c/kv [threads] [keys-per-thread]
 */
#include <patronus.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOT 64
#define SLOTS 65536 /* 4 MiB of the lease buffer */
#define TERM_NS (50ull * 1000 * 1000)

typedef struct {
    uint64_t key;
    uint64_t len;
    char val[SLOT - 16];
} slot_t;

static patronus_t *P;
static int KEYS = 200;

static uint64_t slot_of(uint64_t key) {
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdull;
    key ^= key >> 33;
    return key % SLOTS;
}

/* Linear probing under per-slot locks (conflict-detecting write leases). */
static int kv_put(uint64_t key, const char *val) {
    for (uint64_t i = 0; i < SLOTS; i++) {
        uint64_t s = (slot_of(key) + i) % SLOTS;
        patronus_lease_t *l;
        for (;;) {
            l = patronus_get_wlease(P, 0, 0, patronus_gaddr(0, s * SLOT), 0, SLOT, TERM_NS,
                                    PATRONUS_ACQUIRE_WITH_CONFLICT_DETECT);
            if (!l) return -1;
            if (patronus_lease_success(l)) break;
            int locked = patronus_lease_ec(l) == PATRONUS_ACQUIRE_LOCKED_ERR;
            patronus_lease_free(l);
            if (!locked) return -1;
        }
        slot_t cur;
        int rc = -1;
        if (patronus_read(P, l, (char *)&cur, sizeof cur, 0, 0) == PATRONUS_RC_OK) {
            if (cur.len == 0 || cur.key == key) {
                slot_t n = {.key = key, .len = strlen(val) + 1};
                memcpy(n.val, val, n.len);
                rc = patronus_write(P, l, (const char *)&n, sizeof n, 0, 0) == PATRONUS_RC_OK ? 1 : -1;
            } else {
                rc = 0; /* taken by another key: probe on */
            }
        }
        patronus_relinquish(P, l, 0, 0);
        patronus_lease_free(l);
        if (rc != 0) return rc > 0 ? 0 : -1;
    }
    return -1;
}

static int kv_get(uint64_t key, char *out, size_t cap) {
    for (uint64_t i = 0; i < SLOTS; i++) {
        uint64_t s = (slot_of(key) + i) % SLOTS;
        patronus_lease_t *l =
            patronus_get_rlease(P, 0, 0, patronus_gaddr(0, s * SLOT), 0, SLOT, TERM_NS, 0);
        if (!l || !patronus_lease_success(l)) {
            patronus_lease_free(l);
            return -1;
        }
        slot_t cur;
        patronus_rc_t rc = patronus_read(P, l, (char *)&cur, sizeof cur, 0, 0);
        patronus_relinquish(P, l, 0, 0);
        patronus_lease_free(l);
        if (rc != PATRONUS_RC_OK) return -1;
        if (cur.len == 0) return 1; /* not present */
        if (cur.key == key) {
            if (cur.len > cap || cur.len > sizeof cur.val) return -1;
            memcpy(out, cur.val, cur.len);
            return 0;
        }
    }
    return 1;
}

static void *server(void *arg) {
    (void)arg;
    patronus_register_server_thread(P);
    patronus_server_serve(P, 0);
    return NULL;
}

static void *writer(void *arg) {
    uint64_t t = (uint64_t)(uintptr_t)arg;
    if (patronus_register_client_thread(P) != PATRONUS_RC_OK) return (void *)1;
    for (int i = 0; i < KEYS; i++) {
        uint64_t key = t * 1000000 + (uint64_t)i;
        char v[40];
        snprintf(v, sizeof v, "value-%llu", (unsigned long long)key);
        if (kv_put(key, v) != 0) return (void *)1;
    }
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 3;
    if (argc > 2) KEYS = atoi(argv[2]);
    if (threads < 1 || threads > 7 || KEYS < 1) {
        fprintf(stderr, "usage: kv [threads 1..7] [keys-per-thread]\n");
        return 2;
    }
    patronus_config_t conf;
    patronus_config_init(&conf);
    conf.cluster = "kv-example";
    conf.client_threads = 8;
    P = patronus_new(&conf);
    if (!P) {
        fprintf(stderr, "patronus_new: %s\n", patronus_last_error());
        return 1;
    }
    /* This node is also a client: a registered client thread keeps the
       server serving until patronus_finished below. */
    patronus_register_client_thread(P);
    pthread_t srv, w[8];
    pthread_create(&srv, NULL, server, NULL);
    for (int t = 0; t < threads; t++) pthread_create(&w[t], NULL, writer, (void *)(uintptr_t)t);
    int bad = 0;
    for (int t = 0; t < threads; t++) {
        void *r;
        pthread_join(w[t], &r);
        bad |= r != NULL;
    }
    if (bad) fprintf(stderr, "a writer failed: %s\n", patronus_last_error());
    long found = 0;
    for (int t = 0; t < threads && !bad; t++) {
        for (int i = 0; i < KEYS; i++) {
            uint64_t key = (uint64_t)t * 1000000 + (uint64_t)i;
            char want[40], got[48];
            snprintf(want, sizeof want, "value-%llu", (unsigned long long)key);
            if (kv_get(key, got, sizeof got) == 0 && strcmp(got, want) == 0) found++;
        }
    }
    char none[48];
    int absent = kv_get(424242424242ull, none, sizeof none) == 1;
    patronus_finished(P, 0);
    pthread_join(srv, NULL);
    patronus_free(P);
    printf("kv: %ld of %ld keys read back, absent key %s\n", found, (long)threads * KEYS,
           absent ? "absent" : "FOUND?");
    return (!bad && absent && found == (long)threads * KEYS) ? 0 : 1;
}
