/*
 * test_boundary.c: the rules of the C boundary, from C.
 *   - every call clears the last error when it starts and sets it when it
 *     fails, also the void ones;
 *   - NULL for a pointer parameter gives INVALID (or NULL/0/false) and a
 *     message naming the function and the parameter;
 *   - patronus_commit on a thread that is not a client thread fails with
 *     INVALID and loses nothing: a later commit fills the buffers;
 *   - patronus_free releases the node although other threads registered
 *     client threads (its NIC threads and memory go away), and those
 *     threads' later calls with the freed handle fail cleanly;
 *   - a C bool is read as its byte (simplify = 0xFF is true);
 *   - calls from a pthread key destructor (after the library's thread-local
 *     state is gone) return instead of aborting, and exited threads give
 *     their client slots back.
 * Built with -Wall -Wextra -Werror by tests/c_api.rs. Exit status 0 only
 * when every check passed.
 */
#include <dirent.h>
#include <patronus.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
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

/* The last error is set and contains `what` (read right after the call). */
static int error_has(const char *what) {
    const char *e = patronus_last_error();
    if (e == NULL || strstr(e, what) == NULL) {
        fprintf(stderr, "  last error %s%s%s lacks \"%s\"\n", e ? "\"" : "", e ? e : "NULL",
                e ? "\"" : "", what);
        return 0;
    }
    return 1;
}
#define EXPECT_ERR(what) EXPECT(error_has(what))
#define EXPECT_NO_ERR() EXPECT(patronus_last_error() == NULL)

static const uint64_t MS = 1000 * 1000;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Threads of this process whose name starts with one of `prefixes`. */
static int count_threads(const char *const *prefixes) {
    DIR *d = opendir("/proc/self/task");
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[300], comm[64] = {0};
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue; /* the thread just exited */
        if (fgets(comm, sizeof comm, f)) {
            for (const char *const *p = prefixes; *p; p++)
                if (strncmp(comm, *p, strlen(*p)) == 0) {
                    n++;
                    break;
                }
        }
        fclose(f);
    }
    closedir(d);
    return n;
}

/* The soft NIC's threads (src/fabric/soft/nic.rs: nic-ctl, nic-shm,
   nic-tcp) and the clock threads (patronus-time, patronus-resync). */
static const char *const NODE_THREADS[] = {"nic-", "patronus", NULL};

/* Open memfd segments of the library (the registered region, shm links). */
static int count_segments(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char path[300], link[300] = {0};
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t k = readlink(path, link, sizeof link - 1);
        if (k > 0 && strncmp(link, "/memfd:patronus-", 16) == 0) n++;
    }
    closedir(d);
    return n;
}

/* Polls until count_threads(NODE_THREADS) and count_segments() are back
   at the baseline, at most `deadline_s` seconds. */
static int node_gone(int threads0, int segs0, double deadline_s) {
    double t0 = now_s();
    for (;;) {
        if (count_threads(NODE_THREADS) == threads0 && count_segments() == segs0) return 1;
        if (now_s() - t0 > deadline_s) {
            fprintf(stderr, "  after %.0f s: %d node threads (baseline %d), %d segments (baseline %d)\n",
                    deadline_s, count_threads(NODE_THREADS), threads0, count_segments(), segs0);
            return 0;
        }
        usleep(10 * 1000);
    }
}

static patronus_t *new_node(const char *cluster) {
    patronus_config_t conf;
    patronus_config_init(&conf);
    conf.cluster = cluster;
    patronus_t *p = patronus_new(&conf);
    if (!p) fprintf(stderr, "patronus_new(%s): %s\n", cluster, patronus_last_error());
    return p;
}

/* ---- patronus_free releases the node for every thread ---------------- */

struct stage {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int registered; /* workers that registered */
    int freed;      /* main freed the node */
};

struct worker {
    struct stage *st;
    patronus_t *p;
    int ok_before, ok_after;
};

static void *free_worker(void *arg) {
    struct worker *w = (struct worker *)arg;
    w->ok_before = patronus_register_client_thread(w->p) == PATRONUS_RC_OK &&
                   patronus_get_thread_id(w->p) != UINT32_MAX;
    pthread_mutex_lock(&w->st->mu);
    w->st->registered++;
    pthread_cond_broadcast(&w->st->cv);
    while (!w->st->freed) pthread_cond_wait(&w->st->cv, &w->st->mu);
    pthread_mutex_unlock(&w->st->mu);
    /* The handle is dead: every call fails cleanly and says why. */
    int ok = 1;
    ok &= patronus_register_client_thread(w->p) == PATRONUS_RC_INVALID && error_has("freed");
    ok &= patronus_get_node_id(w->p) == 0 && error_has("patronus_get_node_id: p was freed");
    ok &= patronus_get_thread_id(w->p) == UINT32_MAX && error_has("freed");
    char b[8];
    ok &= patronus_read(w->p, NULL, b, 8, 0, 0) == PATRONUS_RC_INVALID && error_has("lease is NULL");
    patronus_batch_t *bt = patronus_batch_new();
    ok &= patronus_commit(w->p, bt) == PATRONUS_RC_INVALID && error_has("patronus_commit: p was freed");
    patronus_batch_free(bt);
    patronus_free(w->p);
    ok &= error_has("patronus_free: p was already freed");
    w->ok_after = ok;
    return NULL;
}

static void test_free_releases_every_thread(void) {
    int threads0 = count_threads(NODE_THREADS), segs0 = count_segments();
    patronus_t *p = new_node("c-boundary-free");
    if (!p) {
        failures++;
        return;
    }
    EXPECT(count_threads(NODE_THREADS) > threads0); /* the check sees them */
    EXPECT(count_segments() > segs0);
    struct stage st = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
    struct worker w[2] = {{&st, p, 0, 0}, {&st, p, 0, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, free_worker, &w[i]);
    pthread_mutex_lock(&st.mu);
    while (st.registered < 2) pthread_cond_wait(&st.cv, &st.mu);
    pthread_mutex_unlock(&st.mu);
    EXPECT(w[0].ok_before && w[1].ok_before);
    /* Freed on the main thread while both workers still live. */
    patronus_free(p);
    EXPECT_NO_ERR();
    EXPECT(node_gone(threads0, segs0, 10.0));
    pthread_mutex_lock(&st.mu);
    st.freed = 1;
    pthread_cond_broadcast(&st.cv);
    pthread_mutex_unlock(&st.mu);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    EXPECT(w[0].ok_after && w[1].ok_after);
}

/* ---- calls during thread teardown ------------------------------------ */

/* glibc runs a pthread key's destructor after the thread-local storage of
   the library is gone: calls from there must neither crash nor abort. */
static pthread_key_t teardown_key;
static patronus_t *teardown_node;
static int teardown_calls_returned;

static void teardown_dtor(void *arg) {
    (void)arg;
    patronus_gaddr_t g = patronus_gaddr(1, 1ull << 48); /* fails: records an error */
    char b[8];
    int ok = patronus_gaddr_is_null(g);
    ok &= patronus_read(teardown_node, NULL, b, 8, 0, 0) == PATRONUS_RC_INVALID;
    ok &= patronus_get_node_id(teardown_node) == 0;
    (void)patronus_last_error();
    patronus_clear_last_error();
    teardown_calls_returned = ok;
}

static void *teardown_thread(void *arg) {
    (void)arg;
    pthread_setspecific(teardown_key, (void *)1);
    /* The thread's library state exists: a client role and a last error. */
    if (patronus_register_client_thread(teardown_node) != PATRONUS_RC_OK) return (void *)1;
    patronus_gaddr(1, 1ull << 48);
    return NULL;
}

static void test_calls_during_thread_teardown(patronus_t *p) {
    teardown_node = p;
    pthread_key_create(&teardown_key, teardown_dtor);
    pthread_t t;
    void *r = (void *)1;
    pthread_create(&t, NULL, teardown_thread, NULL);
    pthread_join(t, &r);
    EXPECT(r == NULL);
    EXPECT(teardown_calls_returned);
    /* Each exited thread gave its client slot back: more threads in turn
       than the node has slots (4, one is the main thread's). */
    for (int i = 0; i < 4; i++) {
        pthread_create(&t, NULL, teardown_thread, NULL);
        pthread_join(t, &r);
        EXPECT(r == NULL);
    }
    pthread_key_delete(teardown_key);
}

/* ---- the last error: cleared by every call, set by every failure ------ */

static void *serve(void *arg) {
    patronus_t *p = (patronus_t *)arg;
    if (patronus_register_server_thread(p) != PATRONUS_RC_OK) return (void *)1;
    patronus_server_serve(p, 0);
    return patronus_last_error() ? (void *)2 : NULL;
}

static void test_last_error_rule(patronus_t *p) {
    /* A failure sets it, the next successful call clears it. */
    EXPECT(patronus_read(p, NULL, NULL, 8, 0, 0) == PATRONUS_RC_INVALID);
    EXPECT_ERR("patronus_read: lease is NULL");
    EXPECT(patronus_get_node_id(p) == 0);
    EXPECT_NO_ERR();
    /* Pure helpers leave it alone. */
    EXPECT(patronus_read(p, NULL, NULL, 8, 0, 0) == PATRONUS_RC_INVALID);
    patronus_gaddr_t zero = {0};
    EXPECT(patronus_gaddr_is_null(zero) && patronus_gaddr_node(zero) == 0);
    EXPECT(strcmp(patronus_rc_str(PATRONUS_RC_OK), "ok") == 0);
    EXPECT_ERR("patronus_read");
    /* A successful void call clears it too. */
    char *rb = patronus_get_rdma_buffer(p, 64);
    EXPECT(rb != NULL);
    EXPECT(patronus_read(p, NULL, NULL, 8, 0, 0) == PATRONUS_RC_INVALID);
    patronus_put_rdma_buffer(p, rb);
    EXPECT_NO_ERR();
    patronus_lease_free(NULL);
    EXPECT_NO_ERR();

    /* Every failing void call sets it (after a success cleared it). */
    char not_ours[16];
    EXPECT(patronus_get_node_id(p) == 0 && patronus_last_error() == NULL);
    patronus_put_rdma_buffer(p, not_ours);
    EXPECT_ERR("patronus_put_rdma_buffer: ");
    EXPECT_ERR("was not handed out by this node");

    EXPECT(patronus_get_node_id(p) == 0 && patronus_last_error() == NULL);
    patronus_dealloc(p, patronus_gaddr(0, 12345), 0, 100, 0); /* never allocated */
    EXPECT_ERR("patronus_dealloc: invalid argument: dealloc of 100 bytes at offset 0x3039");

    EXPECT(patronus_get_node_id(p) == 0 && patronus_last_error() == NULL);
    patronus_dealloc(NULL, patronus_gaddr(0, 12345), 0, 100, 0);
    EXPECT_ERR("patronus_dealloc: p is NULL");

    /* The one directory already has its server thread. */
    EXPECT(patronus_get_node_id(p) == 0 && patronus_last_error() == NULL);
    patronus_server_serve(p, 0);
    EXPECT_ERR("patronus_server_serve: out of resources: all 1 directories have a server thread");
    patronus_server_serve(NULL, 0);
    EXPECT_ERR("patronus_server_serve: p is NULL");

    EXPECT(patronus_get_node_id(p) == 0 && patronus_last_error() == NULL);
    patronus_finished(NULL, 0);
    EXPECT_ERR("patronus_finished: p is NULL");

    EXPECT(patronus_get_node_id(p) == 0 && patronus_last_error() == NULL);
    patronus_config_init(NULL);
    EXPECT_ERR("patronus_config_init: conf is NULL");

    /* A failed acquisition that still returns a lease. */
    patronus_lease_t *l = patronus_get_wlease(p, 0, 0, patronus_gaddr(0, 1ull << 40), 0, 64, MS, 0);
    EXPECT(l != NULL && !patronus_lease_success(l));
    EXPECT_NO_ERR(); /* the accessor succeeded */
    patronus_lease_free(l);
}

/* ---- a C bool is read as its byte ------------------------------------ */

/* A one-node cluster with `allow_universal_rkey` set as a raw byte: returns
   the rc of a 16-byte read through a 1-byte lease with the universal rkey,
   which only an opted-in memory node honours. */
static int universal_read_rc(const char *cluster, int byte) {
    patronus_config_t conf;
    patronus_config_init(&conf);
    conf.cluster = cluster;
    memset(&conf.allow_universal_rkey, byte, sizeof conf.allow_universal_rkey);
    patronus_t *p = patronus_new(&conf);
    if (!p) {
        fprintf(stderr, "patronus_new(%s): %s\n", cluster, patronus_last_error());
        failures++;
        return -1;
    }
    EXPECT(patronus_register_client_thread(p) == PATRONUS_RC_OK);
    pthread_t srv;
    pthread_create(&srv, NULL, serve, p);
    patronus_lease_t *l = NULL;
    double t0 = now_s();
    while (now_s() - t0 < 10.0) {
        l = patronus_get_wlease(p, 0, 0, patronus_gaddr(0, 4096), 0, 1, 0, PATRONUS_ACQUIRE_NO_GC);
        if (l && patronus_lease_success(l)) break;
        patronus_lease_free(l);
        l = NULL;
        usleep(5 * 1000);
    }
    int rc = -1;
    if (l) {
        char b[16];
        rc = patronus_read(p, l, b, sizeof b, 0, PATRONUS_RW_USE_UNIVERSAL_RKEY);
        EXPECT(patronus_relinquish(p, l, 0, 0) == PATRONUS_RC_OK);
        patronus_lease_free(l);
    } else {
        failures++;
    }
    patronus_finished(p, 0);
    void *r;
    pthread_join(srv, &r);
    EXPECT(r == NULL);
    patronus_free(p);
    return rc;
}

static void test_c_bool(void) {
    /* Control: off by default, the universal key opens nothing... */
    EXPECT(universal_read_rc("c-boundary-bool-0", 0) == PATRONUS_RC_RDMA_PROTECTION_ERR);
    /* ...and a byte of 0xFF is true: the opted-in node honours it. */
    EXPECT(universal_read_rc("c-boundary-bool-ff", 0xFF) == PATRONUS_RC_OK);
}

/* ---- NULL pointer parameters ----------------------------------------- */

#define EXPECT_NULL_PARAM(call, failed, what)                                   \
    do {                                                                        \
        EXPECT(patronus_get_node_id(p) == 0);                                   \
        EXPECT((call)failed);                                                   \
        EXPECT_ERR(what);                                                       \
    } while (0)

static void test_null_parameters(patronus_t *p) {
    patronus_lease_t *l = patronus_get_wlease(p, 0, 0, patronus_gaddr(0, 4096), 0, 64, 500 * MS, 0);
    EXPECT(l && patronus_lease_success(l));
    patronus_batch_t *b = patronus_batch_new();
    char buf[8];
    size_t n;
    const patronus_rc_t INV = PATRONUS_RC_INVALID;
    EXPECT_NULL_PARAM(patronus_read(NULL, l, buf, 8, 0, 0), == INV, "patronus_read: p is NULL");
    EXPECT_NULL_PARAM(patronus_read(p, NULL, buf, 8, 0, 0), == INV, "patronus_read: lease is NULL");
    EXPECT_NULL_PARAM(patronus_read(p, l, NULL, 8, 0, 0), == INV, "patronus_read: obuf is NULL");
    EXPECT_NULL_PARAM(patronus_write(p, l, NULL, 8, 0, 0), == INV, "patronus_write: ibuf is NULL");
    EXPECT_NULL_PARAM(patronus_cas(p, l, NULL, 0, 1, 2, 0), == INV, "patronus_cas: iobuf is NULL");
    EXPECT_NULL_PARAM(patronus_rpc_faa(NULL, l, buf, 0, 1), == INV, "patronus_rpc_faa: p is NULL");
    EXPECT_NULL_PARAM(patronus_relinquish(p, NULL, 0, 0), == INV, "patronus_relinquish: lease is NULL");
    EXPECT_NULL_PARAM(patronus_extend(NULL, l, MS, 0), == INV, "patronus_extend: p is NULL");
    EXPECT_NULL_PARAM(patronus_upgrade(p, NULL, 0), == NULL, "patronus_upgrade: lease is NULL");
    EXPECT_NULL_PARAM(patronus_get_rlease(NULL, 0, 0, patronus_gaddr(0, 0), 0, 8, MS, 0), == NULL,
                      "patronus_get_rlease: p is NULL");
    EXPECT_NULL_PARAM(patronus_prepare_read(NULL, b, l, buf, 8, 0, 0), == INV,
                      "patronus_prepare_read: p is NULL");
    EXPECT_NULL_PARAM(patronus_prepare_read(p, NULL, l, buf, 8, 0, 0), == INV,
                      "patronus_prepare_read: b is NULL");
    EXPECT_NULL_PARAM(patronus_prepare_read(p, b, NULL, buf, 8, 0, 0), == INV,
                      "patronus_prepare_read: lease is NULL");
    EXPECT_NULL_PARAM(patronus_prepare_read(p, b, l, NULL, 8, 0, 0), == INV,
                      "patronus_prepare_read: obuf is NULL");
    EXPECT_NULL_PARAM(patronus_commit(NULL, b), == INV, "patronus_commit: p is NULL");
    EXPECT_NULL_PARAM(patronus_commit(p, NULL), == INV, "patronus_commit: b is NULL");
    EXPECT_NULL_PARAM(patronus_get_gaddr(NULL, l).val, == 0, "patronus_get_gaddr: p is NULL");
    EXPECT_NULL_PARAM(patronus_get_gaddr(p, NULL).val, == 0, "patronus_get_gaddr: lease is NULL");
    EXPECT_NULL_PARAM(patronus_lease_success(NULL), == 0, "patronus_lease_success: lease is NULL");
    EXPECT_NULL_PARAM(patronus_lease_id(NULL), == UINT64_MAX, "patronus_lease_id: lease is NULL");
    EXPECT_NULL_PARAM(patronus_lease_ec(NULL), == PATRONUS_ACQUIRE_RESERVED,
                      "patronus_lease_ec: lease is NULL");
    EXPECT_NULL_PARAM(patronus_put(p, NULL, "v", 1), == INV, "patronus_put: key is NULL");
    EXPECT_NULL_PARAM(patronus_put(p, "k", NULL, 1), == INV, "patronus_put: value is NULL");
    EXPECT_NULL_PARAM(patronus_get(p, "k", NULL, 8, &n), == INV, "patronus_get: buf is NULL");
    EXPECT_NULL_PARAM(patronus_keeper_barrier(p, NULL), == INV, "patronus_keeper_barrier: key is NULL");
    EXPECT_NULL_PARAM(patronus_get_node_id(NULL), == 0, "patronus_get_node_id: p is NULL");
    EXPECT_NULL_PARAM(patronus_should_exit(NULL, 0), == 0, "patronus_should_exit: p is NULL");
    EXPECT_NULL_PARAM(patronus_get_thread_id(NULL), == UINT32_MAX, "patronus_get_thread_id: p is NULL");
    EXPECT_NULL_PARAM(patronus_register_client_thread(NULL), == INV,
                      "patronus_register_client_thread: p is NULL");
    EXPECT_NULL_PARAM(patronus_get_lease_buffer(NULL, &n), == NULL, "patronus_get_lease_buffer: p is NULL");
    EXPECT_NULL_PARAM(patronus_get_rdma_buffer(NULL, 8), == NULL, "patronus_get_rdma_buffer: p is NULL");
    EXPECT_NULL_PARAM(patronus_alloc(NULL, 0, 0, 8, 0).val, == 0, "patronus_alloc: p is NULL");
    /* Output pointers the caller does not want may be NULL. */
    EXPECT(patronus_get_lease_buffer(p, NULL) != NULL);
    EXPECT_NO_ERR();
    patronus_batch_free(b);
    EXPECT(patronus_relinquish(p, l, 0, 0) == PATRONUS_RC_OK);
    patronus_lease_free(l);
}

/* ---- commit on a thread that is not a client thread loses nothing ------ */

struct commit_try {
    patronus_t *p;
    patronus_batch_t *b;
    patronus_rc_t rc;
    int named;
};

static void *commit_elsewhere(void *arg) {
    struct commit_try *c = (struct commit_try *)arg;
    c->rc = patronus_commit(c->p, c->b);
    c->named = error_has("patronus_commit: this thread is not a client thread of node 0");
    return NULL;
}

static void test_commit_on_a_non_client_thread(patronus_t *p) {
    patronus_lease_t *l = patronus_get_wlease(p, 0, 0, patronus_gaddr(0, 20480), 0, 64, 0,
                                              PATRONUS_ACQUIRE_NO_GC);
    EXPECT(l && patronus_lease_success(l));
    EXPECT(patronus_write(p, l, "committed-later", 16, 0, 0) == PATRONUS_RC_OK);
    EXPECT(patronus_write(p, l, "\x07\0\0\0\0\0\0\0", 8, 32, 0) == PATRONUS_RC_OK);
    patronus_batch_t *b = patronus_batch_new();
    char r[16] = {0}, io[8] = {0};
    EXPECT(patronus_prepare_read(p, b, l, r, 16, 0, 0) == PATRONUS_RC_OK);
    EXPECT(patronus_prepare_faa(p, b, l, io, 32, 1, 0) == PATRONUS_RC_OK);
    struct commit_try c = {p, b, PATRONUS_RC_OK, 0};
    pthread_t t;
    pthread_create(&t, NULL, commit_elsewhere, &c);
    pthread_join(t, NULL);
    EXPECT(c.rc == PATRONUS_RC_INVALID && c.named);
    EXPECT(r[0] == 0); /* nothing was posted */
    /* The batch and its output pointers are intact. */
    EXPECT(patronus_commit(p, b) == PATRONUS_RC_OK);
    EXPECT(memcmp(r, "committed-later", 16) == 0);
    uint64_t old;
    memcpy(&old, io, 8);
    EXPECT(old == 7);
    patronus_batch_free(b);
    EXPECT(patronus_relinquish(p, l, 0, 0) == PATRONUS_RC_OK);
    patronus_lease_free(l);
}

int main(void) {
    test_free_releases_every_thread();
    test_c_bool();

    patronus_t *p = new_node("c-boundary");
    if (!p) return 1;
    EXPECT(patronus_register_client_thread(p) == PATRONUS_RC_OK);
    pthread_t srv;
    pthread_create(&srv, NULL, serve, p);
    /* Wait (with a deadline) until the directory has its server thread. */
    double t0 = now_s();
    patronus_lease_t *probe = NULL;
    while (now_s() - t0 < 10.0) {
        probe = patronus_get_wlease(p, 0, 0, patronus_gaddr(0, 64), 0, 8, 100 * MS, 0);
        if (probe && patronus_lease_success(probe)) break;
        patronus_lease_free(probe);
        probe = NULL;
        usleep(5 * 1000);
    }
    EXPECT(probe != NULL);
    patronus_relinquish(p, probe, 0, 0);
    patronus_lease_free(probe);

    test_last_error_rule(p);
    test_null_parameters(p);
    test_commit_on_a_non_client_thread(p);
    test_calls_during_thread_teardown(p);

    patronus_finished(p, 0);
    EXPECT_NO_ERR();
    void *r;
    pthread_join(srv, &r);
    EXPECT(r == NULL);
    patronus_free(p);
    if (failures) {
        fprintf(stderr, "test_boundary: %d failures\n", failures);
        return 1;
    }
    printf("test_boundary: ok\n");
    return 0;
}
