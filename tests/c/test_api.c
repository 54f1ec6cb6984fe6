/*
 * test_api.c: the C API against the real libpatronus.so, in one process
 * (a memory node served by a pthread, the client on the main thread).
 * Built with -Wall -Wextra -Werror (and once with AddressSanitizer) by
 * tests/c_api.rs. Exit status 0 only when every check passed.
 */
#include <patronus.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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

static const uint64_t MS = 1000 * 1000;

/* How long a condition may take on a loaded 2-core machine before the
 * check fails (only a failing check waits this long). */
static const uint64_t PATIENCE = 10ull * 1000 * MS;

/* Polls (every 100 us) until the deadline `ddl` has passed beyond doubt
 * on this node's synchronised clock (now > ddl + epsilon); false after
 * PATIENCE. */
static int wait_past(patronus_t *p, uint64_t ddl) {
    uint64_t give_up = patronus_now(p) + PATIENCE;
    while (patronus_now(p) <= ddl + patronus_epsilon(p)) {
        if (patronus_now(p) > give_up) return 0;
        usleep(100);
    }
    return 1;
}

/* Polls a one-sided read without the local check until the memory node has
 * revoked the lease's window: OK until then, then RDMA_PROTECTION_ERR.
 * Returns the last code (OK after PATIENCE: never revoked). */
static patronus_rc_t wait_revoked(patronus_t *p, patronus_lease_t *l) {
    char b[8];
    uint64_t give_up = patronus_now(p) + PATIENCE;
    patronus_rc_t rc;
    while ((rc = patronus_read(p, l, b, 8, 0, PATRONUS_RW_NO_LOCAL_EXPIRE_CHECK)) ==
               PATRONUS_RC_OK &&
           patronus_now(p) < give_up)
        usleep(100);
    return rc;
}

static void test_bad_input(patronus_t *p) {
    /* NULL everything: clear errors, never a crash. */
    EXPECT(patronus_register_client_thread(NULL) == PATRONUS_RC_INVALID);
    EXPECT(strstr(patronus_last_error(), "p is NULL") != NULL);
    EXPECT(patronus_get_wlease(NULL, 0, 0, patronus_gaddr(0, 0), 0, 64, MS, 0) == NULL);
    EXPECT(patronus_read(p, NULL, NULL, 8, 0, 0) == PATRONUS_RC_INVALID);
    EXPECT(strstr(patronus_last_error(), "lease is NULL") != NULL);
    patronus_lease_free(NULL);
    patronus_batch_free(NULL);
    patronus_free(NULL);
    patronus_put_rdma_buffer(p, NULL);
    /* Unknown flag bits are refused and named. */
    EXPECT(patronus_get_wlease(p, 0, 0, patronus_gaddr(0, 0), 0, 64, MS, 1ull << 40) == NULL);
    EXPECT(strstr(patronus_last_error(), "flag") != NULL);
    /* Impossible sizes. */
    EXPECT(patronus_get_wlease(p, 0, 0, patronus_gaddr(0, 0), 0, 0, MS, 0) == NULL);
    EXPECT(patronus_get_wlease(p, 0, 0, patronus_gaddr(0, 0), 0, (size_t)-1, MS, 0) == NULL);
    /* A range outside the buffer is a failed lease with a status, not NULL. */
    patronus_lease_t *l = patronus_get_wlease(p, 0, 0, patronus_gaddr(0, (1ull << 40)), 0, 64, MS, 0);
    EXPECT(l != NULL && !patronus_lease_success(l));
    EXPECT(patronus_lease_ec(l) == PATRONUS_ACQUIRE_ADDRESS_OUT_OF_RANGE_ERR);
    patronus_lease_free(l);
    /* A node or directory outside the cluster. */
    EXPECT(patronus_get_wlease(p, 9, 0, patronus_gaddr(0, 0), 0, 64, MS, 0) == NULL);
    EXPECT(strcmp(patronus_rc_str((patronus_rc_t)99), "unknown return code") == 0);
    EXPECT(strcmp(patronus_rc_str(PATRONUS_RC_OK), patronus_rc_str((patronus_rc_t)99)) != 0);
}

static void test_lease_rw_atomics(patronus_t *p) {
    patronus_lease_t *l = patronus_get_wlease(p, 0, 0, patronus_gaddr(0, 4096), 0, 128, 100 * MS, 0);
    EXPECT(l && patronus_lease_success(l));
    EXPECT(patronus_lease_is_readable(l) && patronus_lease_is_writable(l));
    EXPECT(patronus_lease_buffer_size(l) == 128);
    EXPECT(patronus_lease_dir_id(l) == 0);
    EXPECT(patronus_lease_id(l) != UINT64_MAX);
    EXPECT(patronus_gaddr_offset(patronus_get_gaddr(p, l)) == 4096);
    EXPECT(patronus_lease_ddl_term(l) > patronus_now(p));
    char data[100];
    for (int i = 0; i < 100; i++) data[i] = (char)(i * 7 + 1);
    EXPECT(patronus_write(p, l, data, 100, 13, 0) == PATRONUS_RC_OK);
    char back[100] = {0};
    EXPECT(patronus_read(p, l, back, 100, 13, 0) == PATRONUS_RC_OK);
    EXPECT(memcmp(back, data, 100) == 0);
    /* The memory node sees the bytes at buffer offset 4096 + 13. */
    size_t n = 0;
    char *lb = patronus_get_lease_buffer(p, &n);
    EXPECT(lb && n > 4096 + 128 && memcmp(lb + 4096 + 13, data, 100) == 0);
    EXPECT(patronus_to_exposed_gaddr(p, lb + 4096).val == patronus_gaddr(0, 4096).val);
    EXPECT(patronus_from_exposed_gaddr(p, patronus_gaddr(0, 4096)) == lb + 4096);
    /* Atomics: CAS returns the old value; FAA too. */
    char io[8];
    uint64_t v;
    EXPECT(patronus_write(p, l, "\0\0\0\0\0\0\0\0", 8, 0, 0) == PATRONUS_RC_OK);
    EXPECT(patronus_faa(p, l, io, 0, 5, 0) == PATRONUS_RC_OK);
    memcpy(&v, io, 8);
    EXPECT(v == 0);
    EXPECT(patronus_cas(p, l, io, 0, 5, 77, 0) == PATRONUS_RC_OK);
    memcpy(&v, io, 8);
    EXPECT(v == 5);
    EXPECT(patronus_cas(p, l, io, 0, 5, 99, 0) == PATRONUS_RC_OK); /* fails: value is 77 */
    memcpy(&v, io, 8);
    EXPECT(v == 77);
    EXPECT(patronus_faa(p, l, io, 3, 1, 0) == PATRONUS_RC_INVALID); /* unaligned */
    /* Two-sided versions, checked against the lease. */
    EXPECT(patronus_rpc_faa(p, l, io, 0, 1) == PATRONUS_RC_OK);
    memcpy(&v, io, 8);
    EXPECT(v == 77);
    EXPECT(patronus_rpc_cas(p, l, io, 0, 78, 1) == PATRONUS_RC_OK);
    EXPECT(patronus_rpc_read(p, l, back, 100, 13, 0) == PATRONUS_RC_OK);
    EXPECT(memcmp(back, data, 100) == 0);
    EXPECT(patronus_rpc_write(p, l, data, 8, 200, 0) == PATRONUS_RC_RDMA_PROTECTION_ERR);
    /* Outside the lease: refused at the NIC; the QP recovers. */
    EXPECT(patronus_read(p, l, back, 8, 128, 0) == PATRONUS_RC_RDMA_PROTECTION_ERR);
    EXPECT(patronus_read(p, l, back, 8, 0, 0) == PATRONUS_RC_OK);
    /* Registered buffers work like plain memory. */
    char *rb = patronus_get_rdma_buffer(p, 64);
    EXPECT(rb != NULL);
    EXPECT(patronus_read(p, l, rb, 64, 0, 0) == PATRONUS_RC_OK);
    patronus_put_rdma_buffer(p, rb);
    /* Extension: one-sided and by RPC. */
    uint64_t ddl = patronus_lease_ddl_term(l);
    EXPECT(patronus_extend(p, l, 100 * MS, 0) == PATRONUS_RC_OK);
    EXPECT(patronus_lease_ddl_term(l) > ddl);
    EXPECT(patronus_rpc_extend(p, l, 100 * MS, 0) == PATRONUS_RC_OK);
    EXPECT(patronus_relinquish(p, l, 0, 0) == PATRONUS_RC_OK);
    /* A relinquished lease is refused before anything is sent. */
    EXPECT(patronus_read(p, l, back, 8, 0, PATRONUS_RW_NO_LOCAL_EXPIRE_CHECK) == PATRONUS_RC_INVALID);
    EXPECT(strstr(patronus_last_error(), "relinquished") != NULL);
    EXPECT(patronus_relinquish(p, l, 0, 0) == PATRONUS_RC_OK); /* twice: fine */
    patronus_lease_free(l);

    /* A read lease refuses writes and atomics at the NIC. */
    l = patronus_get_rlease(p, 0, 0, patronus_gaddr(0, 4096), 0, 64, 100 * MS, 0);
    EXPECT(l && patronus_lease_success(l) && !patronus_lease_is_writable(l));
    EXPECT(patronus_write(p, l, data, 8, 0, 0) == PATRONUS_RC_RDMA_PROTECTION_ERR);
    EXPECT(patronus_faa(p, l, io, 0, 1, 0) == PATRONUS_RC_RDMA_PROTECTION_ERR);
    patronus_lease_t *w = patronus_upgrade(p, l, 0);
    EXPECT(w && patronus_lease_success(w) && patronus_lease_is_writable(w));
    EXPECT(patronus_write(p, w, data, 8, 0, 0) == PATRONUS_RC_OK);
    EXPECT(patronus_relinquish(p, w, 0, 0) == PATRONUS_RC_OK);
    patronus_lease_free(w);
    patronus_lease_free(l);
}

static void test_expiry(patronus_t *p) {
    /* Tens of ms: a loaded 2-core machine can pause this thread for ms. */
    patronus_lease_t *l = patronus_get_wlease(p, 0, 0, patronus_gaddr(0, 8192), 0, 64, 50 * MS, 0);
    EXPECT(l && patronus_lease_success(l));
    char b[8];
    EXPECT(patronus_read(p, l, b, 8, 0, 0) == PATRONUS_RC_OK);
    /* Past the deadline on every clock: the local check refuses. */
    EXPECT(wait_past(p, patronus_lease_ddl_term(l)));
    EXPECT(patronus_read(p, l, b, 8, 0, 0) == PATRONUS_RC_LEASE_LOCAL_EXPIRED_ERR);
    /* The memory node's GC revokes it too: the NIC refuses the window. */
    EXPECT(wait_revoked(p, l) == PATRONUS_RC_RDMA_PROTECTION_ERR);
    patronus_lease_free(l);
    /* Conflict detection: one holder at a time. */
    patronus_lease_t *a = patronus_get_wlease(p, 0, 0, patronus_gaddr(0, 9000), 0, 8, 100 * MS,
                                              PATRONUS_ACQUIRE_WITH_CONFLICT_DETECT);
    patronus_lease_t *c = patronus_get_wlease(p, 0, 0, patronus_gaddr(0, 9000), 0, 8, 100 * MS,
                                              PATRONUS_ACQUIRE_WITH_CONFLICT_DETECT);
    EXPECT(patronus_lease_success(a) && !patronus_lease_success(c));
    EXPECT(patronus_lease_ec(c) == PATRONUS_ACQUIRE_LOCKED_ERR);
    EXPECT(patronus_relinquish(p, a, 0, 0) == PATRONUS_RC_OK);
    patronus_lease_free(a);
    patronus_lease_free(c);
}

static void test_batch_alloc_keeper(patronus_t *p) {
    patronus_lease_t *l = patronus_get_wlease(p, 0, 0, patronus_gaddr(0, 16384), 0, 256, 0,
                                              PATRONUS_ACQUIRE_NO_GC);
    EXPECT(l && patronus_lease_success(l));
    patronus_batch_t *b = patronus_batch_new();
    char w1[16] = "batched-write-1", r1[16] = {0}, io[8];
    EXPECT(patronus_commit(p, b) == PATRONUS_RC_OK); /* empty */
    EXPECT(patronus_prepare_write(p, b, l, w1, 16, 0, 0) == PATRONUS_RC_OK);
    EXPECT(patronus_prepare_read(p, b, l, r1, 16, 0, 0) == PATRONUS_RC_OK);
    EXPECT(patronus_prepare_faa(p, b, l, io, 64, 9, 0) == PATRONUS_RC_OK);
    EXPECT(patronus_commit(p, b) == PATRONUS_RC_OK);
    EXPECT(memcmp(r1, w1, 16) == 0);
    /* One bad op fails the batch; the next batch works. */
    EXPECT(patronus_prepare_read(p, b, l, r1, 16, 0, 0) == PATRONUS_RC_OK);
    EXPECT(patronus_prepare_read(p, b, l, r1, 16, 1000, 0) == PATRONUS_RC_OK);
    EXPECT(patronus_commit(p, b) == PATRONUS_RC_RDMA_PROTECTION_ERR);
    EXPECT(patronus_prepare_cas(p, b, l, io, 64, 9, 10, 0) == PATRONUS_RC_OK);
    EXPECT(patronus_commit(p, b) == PATRONUS_RC_OK);
    uint64_t old;
    memcpy(&old, io, 8);
    EXPECT(old == 9);
    patronus_batch_free(b);
    EXPECT(patronus_relinquish(p, l, 0, 0) == PATRONUS_RC_OK);
    patronus_lease_free(l);

    /* Allocation. */
    patronus_gaddr_t g = patronus_alloc(p, 0, 0, 100, 0);
    EXPECT(!patronus_gaddr_is_null(g));
    patronus_gaddr_t g2 = patronus_alloc(p, 0, 0, 100, 0);
    EXPECT(g2.val != g.val);
    EXPECT(patronus_gaddr_is_null(patronus_alloc(p, 0, 0, 100, 12345))); /* unknown hint */
    patronus_clear_last_error();
    patronus_dealloc(p, g, 0, 100, 0);
    EXPECT(patronus_last_error() == NULL);
    patronus_dealloc(p, g, 0, 100, 0); /* double free: refused, reported */
    EXPECT(patronus_last_error() != NULL);
    l = patronus_get_wlease(p, 0, 0, patronus_gaddr(0, 0), 0, 64, 50 * MS, PATRONUS_ACQUIRE_WITH_ALLOCATION);
    EXPECT(l && patronus_lease_success(l));
    EXPECT(patronus_write(p, l, "alloc", 5, 0, 0) == PATRONUS_RC_OK);
    EXPECT(patronus_relinquish(p, l, 0, PATRONUS_MODIFY_WITH_DEALLOCATION) == PATRONUS_RC_OK);
    patronus_lease_free(l);

    /* Keeper. */
    EXPECT(patronus_put(p, "answer", "42", 3) == PATRONUS_RC_OK);
    char v[8];
    size_t n = 0;
    EXPECT(patronus_get(p, "answer", v, sizeof v, &n) == PATRONUS_RC_OK && n == 3 && !strcmp(v, "42"));
    EXPECT(patronus_get(p, "answer", v, 1, &n) == PATRONUS_RC_NO_MEM && n == 3);
    EXPECT(patronus_put(p, NULL, "x", 1) == PATRONUS_RC_INVALID);
    EXPECT(patronus_keeper_barrier(p, "one-node-barrier") == PATRONUS_RC_OK);
}

int main(void) {
    patronus_config_t conf;
    patronus_config_init(&conf);
    EXPECT(conf.machine_nr == 1 && conf.dir_nr == 1);
    conf.cluster = "c-test-api";
    patronus_t *p = patronus_new(&conf);
    if (!p) {
        fprintf(stderr, "patronus_new: %s\n", patronus_last_error());
        return 1;
    }
    EXPECT(patronus_get_thread_id(p) == UINT32_MAX);
    EXPECT(patronus_register_client_thread(p) == PATRONUS_RC_OK);
    EXPECT(patronus_register_client_thread(p) == PATRONUS_RC_OK); /* again: no-op */
    pthread_t srv;
    pthread_create(&srv, NULL, serve, p);
    EXPECT(patronus_get_thread_id(p) != UINT32_MAX);

    test_bad_input(p);
    test_lease_rw_atomics(p);
    test_expiry(p);
    test_batch_alloc_keeper(p);

    patronus_finished(p, 0);
    EXPECT(patronus_should_exit(p, 0));
    void *r;
    pthread_join(srv, &r);
    EXPECT(r == NULL);
    patronus_free(p);
    if (failures) {
        fprintf(stderr, "test_api: %d failures\n", failures);
        return 1;
    }
    printf("test_api: ok\n");
    return 0;
}
