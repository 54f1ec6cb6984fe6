/*
 * inflight.c: many calls in flight on one thread. One process, a memory
 * node serving on its own thread and a client on the main thread, which
 * keeps DEPTH 64-byte READs posted at once (patronus_post_read), polls
 * their completions (patronus_poll) and posts again, for SECONDS. Every
 * READ is checked byte-exact against what was written; the rate is
 * printed at the end.
 *
 *   make -C examples-c inflight && ./examples-c/inflight [DEPTH] [SECONDS]
 */
#define _POSIX_C_SOURCE 200809L
#include <patronus.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_DEPTH 1024
#define OBJECT 4096
#define READ 64

static void *serve(void *arg) {
    patronus_t *p = (patronus_t *)arg;
    patronus_register_server_thread(p);
    patronus_server_serve(p, 0); /* until every node called finished(0) */
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

#define CHECK(cond, what)                                                    \
    do {                                                                     \
        if (!(cond)) {                                                       \
            const char *e = patronus_last_error();                           \
            fprintf(stderr, "FAILED: %s (%s)\n", what, e ? e : "no error"); \
            return 1;                                                        \
        }                                                                    \
    } while (0)

static char bufs[MAX_DEPTH][READ];

int main(int argc, char **argv) {
    int depth = argc > 1 ? atoi(argv[1]) : 32;
    double seconds = argc > 2 ? atof(argv[2]) : 1.0;
    CHECK(depth >= 1 && depth <= MAX_DEPTH && seconds > 0, "usage: inflight [DEPTH] [SECONDS]");

    patronus_config_t conf;
    patronus_config_init(&conf);
    char name[64];
    snprintf(name, sizeof name, "inflight-%d", (int)getpid());
    conf.cluster = name;
    conf.max_inflight = (uint32_t)depth; /* posts past it return RETRY */
    patronus_t *p = patronus_new(&conf);
    CHECK(p != NULL, "patronus_new");
    CHECK(patronus_register_client_thread(p) == PATRONUS_RC_OK, "register client");
    pthread_t server;
    pthread_create(&server, NULL, serve, p);

    /* A write lease over a 4 KiB object, filled with a pattern. */
    uint16_t node = patronus_get_node_id(p);
    patronus_lease_t *l =
        patronus_get_wlease(p, node, 0, patronus_gaddr(node, 0), 0, OBJECT, 0, PATRONUS_ACQUIRE_NO_GC);
    CHECK(l && patronus_lease_success(l), "acquire");
    static char object[OBJECT];
    for (int i = 0; i < OBJECT; i++) object[i] = (char)(i * 31 + 7);
    CHECK(patronus_write(p, l, object, OBJECT, 0, 0) == PATRONUS_RC_OK, "write");

    /* Buffer `s` is free while `free_bufs` lists it; a READ's user_data
       names its buffer and the offset it read. */
    int free_bufs[MAX_DEPTH], nfree = 0;
    for (int s = depth - 1; s >= 0; s--) free_bufs[nfree++] = s;
    patronus_completion_t got[64];
    unsigned long posted = 0, done = 0, bad = 0, rounds = 0;
    double t0 = now(), end = t0 + seconds;
    int running = 1;
    while (running || nfree < depth) {
        if (running && ++rounds % 64 == 0) running = now() < end;
        while (running && nfree > 0) {
            int s = free_bufs[nfree - 1];
            size_t off = (posted % (OBJECT / READ)) * READ;
            patronus_rc_t rc = patronus_post_read(p, l, bufs[s], READ, off, 0,
                                                  (uint64_t)s | (uint64_t)off << 32);
            if (rc == PATRONUS_RC_RETRY) break; /* at max_inflight: poll first */
            CHECK(rc == PATRONUS_RC_OK, "post_read");
            nfree--;
            posted++;
        }
        size_t n = patronus_poll(p, got, 64);
        for (size_t i = 0; i < n; i++) {
            int s = (int)(got[i].user_data & 0xffffffffu);
            size_t off = (size_t)(got[i].user_data >> 32);
            CHECK(got[i].rc == PATRONUS_RC_OK, "a READ failed");
            if (memcmp(bufs[s], object + off, READ) != 0) bad++;
            free_bufs[nfree++] = s;
            done++;
        }
    }
    double t = now() - t0;
    CHECK(done == posted && bad == 0, "every READ completed byte-exact");
    printf("%d READs of %d B in flight: %lu READs in %.2f s, %.2f M/s, all byte-exact\n", depth,
           READ, done, t, (double)done / t / 1e6);

    CHECK(patronus_relinquish(p, l, 0, 0) == PATRONUS_RC_OK, "relinquish");
    patronus_lease_free(l);
    patronus_finished(p, 0);
    pthread_join(server, NULL);
    patronus_free(p);
    printf("inflight: ok\n");
    return 0;
}
