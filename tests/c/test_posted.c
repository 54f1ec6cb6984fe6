/*
 * test_posted.c: many calls in flight on one thread through the C API
 * (patronus_post_*, patronus_poll, patronus_wait, patronus_inflight), against
 * the real libpatronus.so: a memory node served by a pthread, the client on
 * the main thread. Built with -Wall -Wextra -Werror and once with
 * AddressSanitizer by tests/c_api.rs. Exit status 0 only when every check
 * passed.
 */
#include <patronus.h>
#include <pthread.h>
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

#define N 48
#define OBJ 4096

/* Waits for exactly `n` completions (each user_data < cap once) into
 * `got` indexed by user_data; returns how many arrived. */
static size_t collect(patronus_t *p, patronus_completion_t *got, size_t cap, size_t n) {
    static char seen[4096];
    memset(seen, 0, sizeof seen);
    size_t have = 0;
    for (int rounds = 0; have < n && rounds < 100000; rounds++) {
        patronus_completion_t c[16];
        size_t k = patronus_wait(p, c, 16, 10ull * 1000 * 1000);
        for (size_t i = 0; i < k; i++) {
            uint64_t u = c[i].user_data;
            EXPECT(u < cap);
            if (u >= cap) continue;
            EXPECT(!seen[u]); /* exactly once */
            seen[u] = 1;
            got[u] = c[i];
            have++;
        }
    }
    EXPECT(have == n);
    EXPECT(patronus_inflight(p) == 0);
    return have;
}

static void fill(char *b, size_t len, int seed) {
    for (size_t k = 0; k < len; k++) b[k] = (char)(k * 31 + seed * 7 + 1);
}

static void test_limit_and_exact(patronus_t *p) {
    static patronus_completion_t got[4096];
    patronus_lease_t *l = patronus_get_wlease(p, 0, 0, patronus_gaddr(0, 1 << 20), 0, 64, 0,
                                              PATRONUS_ACQUIRE_NO_GC);
    EXPECT(patronus_lease_success(l));
    static char io[64][8];
    /* 64 FAAs in flight on one word: each old value once, the sum exact. */
    for (int round = 0; round < 10; round++) {
        for (int i = 0; i < 64; i++)
            EXPECT(patronus_post_faa(p, l, io[i], 0, 1, 0, (uint64_t)i) == PATRONUS_RC_OK);
        char extra[8];
        EXPECT(patronus_post_faa(p, l, extra, 0, 1, 0, 99) == PATRONUS_RC_RETRY);
        EXPECT(patronus_last_error() == NULL); /* RETRY is not an error */
        collect(p, got, 4096, 64);
        char seen[64] = {0};
        for (int i = 0; i < 64; i++) {
            EXPECT(got[i].rc == PATRONUS_RC_OK);
            EXPECT(got[i].lease == l);
            uint64_t old;
            memcpy(&old, io[i], 8);
            EXPECT(old == got[i].value);
            uint64_t k = old - (uint64_t)round * 64;
            EXPECT(k < 64);
            if (k < 64) {
                EXPECT(!seen[k]);
                seen[k] = 1;
            }
        }
    }
    char b[8];
    EXPECT(patronus_read(p, l, b, 8, 0, 0) == PATRONUS_RC_OK);
    uint64_t v;
    memcpy(&v, b, 8);
    EXPECT(v == 640);

    /* A refused access among good ones fails alone. */
    static char r[20][16];
    for (int i = 0; i < 20; i++) {
        size_t off = i == 10 ? 64 : (size_t)(i % 4) * 16; /* 64: past the end */
        EXPECT(patronus_post_read(p, l, r[i], 16, off, 0, (uint64_t)i) == PATRONUS_RC_OK);
    }
    collect(p, got, 4096, 20);
    for (int i = 0; i < 20; i++)
        EXPECT(got[i].rc == (i == 10 ? PATRONUS_RC_RDMA_PROTECTION_ERR : PATRONUS_RC_OK));
    memcpy(&v, r[0], 8);
    EXPECT(v == 640);

    /* Bad arguments: INVALID, last error set, nothing posted. */
    EXPECT(patronus_post_read(p, NULL, r[0], 8, 0, 0, 1) == PATRONUS_RC_INVALID);
    EXPECT(patronus_last_error() != NULL);
    EXPECT(patronus_post_read(p, l, NULL, 8, 0, 0, 1) == PATRONUS_RC_INVALID);
    EXPECT(patronus_post_faa(p, l, r[0], 3, 1, 0, 1) == PATRONUS_RC_INVALID); /* unaligned */
    EXPECT(patronus_post_read(p, l, r[0], 8, 0, 1ull << 40, 1) == PATRONUS_RC_INVALID);
    EXPECT(patronus_post_get_rlease(p, 7, 0, patronus_gaddr(0, 0), 0, 64, 0, 0, 1) ==
           PATRONUS_RC_INVALID);
    EXPECT(patronus_inflight(p) == 0);
    patronus_completion_t c[4];
    EXPECT(patronus_poll(p, c, 4) == 0);
    EXPECT(patronus_poll(p, NULL, 4) == 0 && patronus_last_error() != NULL);

    /* A posted relinquish, then the lease is refused. */
    EXPECT(patronus_post_relinquish(p, l, 0, 0, 5) == PATRONUS_RC_OK);
    collect(p, got, 4096, 1);
    EXPECT(got[5].rc == PATRONUS_RC_OK);
    EXPECT(!patronus_lease_success(l));
    patronus_lease_free(l);
}

static void test_mixed(patronus_t *p) {
    /* Mixed calls on distinct leases, in flight together, every byte
     * checked. */
    static patronus_completion_t got[4096];
    patronus_lease_t *l[N];
    for (int i = 0; i < N; i++)
        EXPECT(patronus_post_get_wlease(p, 0, 0, patronus_gaddr(0, (uint64_t)(i + 64) * OBJ), 0,
                                        OBJ, 0, PATRONUS_ACQUIRE_NO_GC, (uint64_t)i) ==
               PATRONUS_RC_OK);
    collect(p, got, 4096, N);
    for (int i = 0; i < N; i++) {
        l[i] = got[i].lease;
        EXPECT(got[i].rc == PATRONUS_RC_OK && l[i] && patronus_lease_success(l[i]));
    }
    static char in[N][700], out[N][700], io1[N][8], io2[N][8];
    for (int i = 0; i < N; i++) {
        fill(in[i], 700, i + 3);
        EXPECT(patronus_post_write(p, l[i], in[i], 700, 9, 0, (uint64_t)i) == PATRONUS_RC_OK);
    }
    collect(p, got, 4096, N);
    for (int i = 0; i < N; i++) EXPECT(got[i].rc == PATRONUS_RC_OK);
    /* Reads and CAS of the first 21 leases (63 calls in flight, under the
     * limit of 64). */
    for (int i = 0; i < 21; i++) {
        EXPECT(patronus_post_read(p, l[i], out[i], 700, 9, 0, 100 + (uint64_t)i) == PATRONUS_RC_OK);
        EXPECT(patronus_post_cas(p, l[i], io1[i], 2048, 0, 50 + (uint64_t)i, 0, 200 + (uint64_t)i) ==
               PATRONUS_RC_OK);
        EXPECT(patronus_post_faa(p, l[i], io2[i], 2048, 1, 0, 300 + (uint64_t)i) == PATRONUS_RC_OK);
    }
    collect(p, got, 4096, 63);
    for (int i = 0; i < 21; i++) {
        EXPECT(got[100 + i].rc == PATRONUS_RC_OK);
        EXPECT(got[100 + i].lease == l[i]);
        EXPECT(memcmp(out[i], in[i], 700) == 0);
        uint64_t o1, o2;
        memcpy(&o1, io1[i], 8);
        memcpy(&o2, io2[i], 8);
        /* Calls to one QP execute in posting order: CAS saw 0, FAA 50+i. */
        EXPECT(o1 == 0 && got[200 + i].value == 0);
        EXPECT(o2 == 50 + (uint64_t)i && got[300 + i].value == 50 + (uint64_t)i);
    }
    /* Relinquish all in flight. */
    for (int i = 0; i < N; i++)
        EXPECT(patronus_post_relinquish(p, l[i], 0, 0, (uint64_t)i) == PATRONUS_RC_OK);
    collect(p, got, 4096, N);
    for (int i = 0; i < N; i++) {
        EXPECT(got[i].rc == PATRONUS_RC_OK);
        EXPECT(!patronus_lease_success(l[i]));
        patronus_lease_free(l[i]);
    }
}

int main(void) {
    patronus_config_t conf;
    patronus_config_init(&conf);
    EXPECT(conf.max_inflight == 64);
    conf.cluster = "c-test-posted";
    conf.leases_per_dir = 1024;
    patronus_t *p = patronus_new(&conf);
    if (!p) {
        fprintf(stderr, "patronus_new: %s\n", patronus_last_error());
        return 1;
    }
    EXPECT(patronus_register_client_thread(p) == PATRONUS_RC_OK);
    pthread_t srv;
    pthread_create(&srv, NULL, serve, p);

    test_limit_and_exact(p);
    test_mixed(p);

    patronus_finished(p, 0);
    void *r;
    pthread_join(srv, &r);
    EXPECT(r == NULL);
    patronus_free(p);
    if (failures) {
        fprintf(stderr, "test_posted: %d failures\n", failures);
        return 1;
    }
    printf("test_posted: ok\n");
    return 0;
}
