/*
 * test_mp.c: one role of a multi-process cluster through memcached.
 *   test_mp server KEEPER CLUSTER NODES
 *   test_mp client KEEPER CLUSTER NODES OPS
 * Clients FAA +1 OPS times on word 0 of the memory node under a write
 * lease, meet at a barrier, and print the word ("total=N").
 */
#include <patronus.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reports a failed call with the library's last error; returns 1. */
static int fail(const char *what) {
    const char *e = patronus_last_error();
    fprintf(stderr, "%s failed: %s\n", what, e ? e : "(no error recorded)");
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: test_mp server|client KEEPER CLUSTER NODES [OPS]\n");
        return 2;
    }
    int server = strcmp(argv[1], "server") == 0;
    patronus_config_t conf;
    patronus_config_init(&conf);
    conf.keeper = argv[2];
    conf.cluster = argv[3];
    conf.machine_nr = (uint16_t)atoi(argv[4]);
    patronus_t *p = patronus_new(&conf);
    if (!p) {
        fprintf(stderr, "patronus_new: %s\n", patronus_last_error());
        return 1;
    }
    /* Every node learns who serves. */
    char key[32];
    if (server) {
        snprintf(key, sizeof key, "server");
        uint16_t id = patronus_get_node_id(p);
        if (patronus_put(p, key, &id, sizeof id) != PATRONUS_RC_OK) return fail("put server");
    }
    uint16_t srv = 0;
    size_t n = 0;
    if (patronus_get(p, "server", &srv, sizeof srv, &n) != PATRONUS_RC_OK || n != sizeof srv)
        return fail("get server");
    if (server) {
        if (patronus_register_server_thread(p) != PATRONUS_RC_OK) return fail("register_server_thread");
        patronus_server_serve(p, 0);
        printf("served=1\n");
        patronus_free(p);
        return 0;
    }
    long ops = argc > 5 ? atol(argv[5]) : 1000;
    if (patronus_register_client_thread(p) != PATRONUS_RC_OK) return fail("register_client_thread");
    patronus_lease_t *l = patronus_get_wlease(p, srv, 0, patronus_gaddr(srv, 0), 0, 8,
                                              50ull * 1000 * 1000, 0);
    if (!l || !patronus_lease_success(l)) return fail("acquire");
    char io[8];
    for (long i = 0; i < ops; i++) {
        patronus_rc_t rc = patronus_faa(p, l, io, 0, 1, PATRONUS_RW_WITH_AUTO_EXTEND);
        if (rc != PATRONUS_RC_OK) {
            fprintf(stderr, "faa %ld: %s\n", i, patronus_rc_str(rc));
            return 1;
        }
    }
    /* Clients only: the server is inside patronus_server_serve. */
    char b[8] = {0};
    patronus_rc_t rc = PATRONUS_RC_OK;
    if (patronus_relinquish(p, l, 0, 0) != PATRONUS_RC_OK) return fail("relinquish");
    patronus_lease_free(l);
    if (patronus_put(p, "dummy", "", 0) != PATRONUS_RC_OK) return fail("put of an empty value");
    /* Wait until every client is done: count arrivals with FAA. */
    l = patronus_get_wlease(p, srv, 0, patronus_gaddr(srv, 8), 0, 8, 0, PATRONUS_ACQUIRE_NO_GC);
    if (!l || !patronus_lease_success(l)) return fail("acquire of the arrival counter");
    if (patronus_faa(p, l, io, 0, 1, 0) != PATRONUS_RC_OK) return fail("arrival FAA");
    uint64_t done = 0;
    uint64_t deadline = patronus_now(p) + 30ull * 1000 * 1000 * 1000;
    while (done < (uint64_t)(conf.machine_nr - 1)) {
        if (patronus_now(p) > deadline) {
            fprintf(stderr, "the other clients did not finish within 30 s\n");
            return 1;
        }
        if (patronus_read(p, l, b, 8, 0, 0) != PATRONUS_RC_OK) return fail("read of the arrival counter");
        memcpy(&done, b, 8);
    }
    patronus_lease_t *r = patronus_get_rlease(p, srv, 0, patronus_gaddr(srv, 0), 0, 8, 0, PATRONUS_ACQUIRE_NO_GC);
    if (!r || !patronus_lease_success(r)) return fail("acquire of the total");
    rc = patronus_read(p, r, b, 8, 0, 0);
    uint64_t total;
    memcpy(&total, b, 8);
    printf("total=%llu rc=%d\n", (unsigned long long)total, (int)rc);
    if (patronus_relinquish(p, r, 0, 0) != PATRONUS_RC_OK ||
        patronus_relinquish(p, l, 0, 0) != PATRONUS_RC_OK)
        return fail("relinquish");
    patronus_lease_free(r);
    patronus_lease_free(l);
    patronus_finished(p, 0);
    patronus_free(p);
    return 0;
}
