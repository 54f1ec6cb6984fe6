/*
 * quickstart.c: one process, a memory node serving on its own thread and a
 * client on the main thread. Acquire a write lease, write, read back, see
 * an out-of-lease access refused by the NIC, relinquish, and see the
 * revoked lease refused too.
 *
 *   make -C examples-c quickstart && ./examples-c/quickstart
 */
#include <patronus.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

static void *serve(void *arg) {
    patronus_t *p = (patronus_t *)arg;
    patronus_register_server_thread(p);
    patronus_server_serve(p, 0); /* until every node called finished(0) */
    return NULL;
}

#define CHECK(cond, what)                                                    \
    do {                                                                     \
        if (!(cond)) {                                                       \
            const char *e = patronus_last_error();                           \
            fprintf(stderr, "FAILED: %s (%s)\n", what, e ? e : "no error"); \
            return 1;                                                        \
        }                                                                    \
    } while (0)

int main(void) {
    patronus_config_t conf;
    patronus_config_init(&conf);
    conf.cluster = "quickstart";
    patronus_t *p = patronus_new(&conf); /* a one-node cluster */
    CHECK(p != NULL, "patronus_new");

    /* This node is also a client: register the client thread before the
       server starts, and end serving with patronus_finished below. */
    CHECK(patronus_register_client_thread(p) == PATRONUS_RC_OK, "register client");
    pthread_t server;
    pthread_create(&server, NULL, serve, p);

    /* A 64-byte write lease at offset 4096 of node 0's lease buffer, 100 ms. */
    uint16_t node = patronus_get_node_id(p);
    patronus_lease_t *l = patronus_get_wlease(p, node, 0, patronus_gaddr(node, 4096), 0, 64,
                                              100 * 1000 * 1000, 0);
    CHECK(l && patronus_lease_success(l), "acquire");
    printf("lease granted: %zu bytes, expires at %llu ns\n", patronus_lease_buffer_size(l),
           (unsigned long long)patronus_lease_ddl_term(l));

    const char msg[] = "hello, protected remote memory";
    CHECK(patronus_write(p, l, msg, sizeof msg, 0, 0) == PATRONUS_RC_OK, "write");
    char back[sizeof msg] = {0};
    CHECK(patronus_read(p, l, back, sizeof back, 0, 0) == PATRONUS_RC_OK, "read");
    CHECK(memcmp(back, msg, sizeof msg) == 0, "read back");
    printf("read back: %s\n", back);

    /* Past the end of the 64-byte lease: the NIC refuses. */
    char x[8];
    patronus_rc_t rc = patronus_read(p, l, x, 8, 64, 0);
    CHECK(rc == PATRONUS_RC_RDMA_PROTECTION_ERR, "out-of-lease read refused");
    printf("read outside the lease: %s\n", patronus_rc_str(rc));
    /* The connection recovered by itself: the lease still works. */
    CHECK(patronus_read(p, l, back, 8, 0, 0) == PATRONUS_RC_OK, "read after recovery");

    CHECK(patronus_relinquish(p, l, 0, 0) == PATRONUS_RC_OK, "relinquish");
    rc = patronus_read(p, l, x, 8, 0, PATRONUS_RW_NO_LOCAL_EXPIRE_CHECK);
    printf("read after relinquish: %s\n", patronus_rc_str(rc));
    CHECK(rc != PATRONUS_RC_OK, "revoked lease refused");
    patronus_lease_free(l);

    patronus_finished(p, 0);
    pthread_join(server, NULL);
    patronus_free(p);
    printf("quickstart: ok\n");
    return 0;
}
