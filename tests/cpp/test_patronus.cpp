// test_patronus.cpp: the C++ shim in the original's style, against the real
// libpatronus.so. Two nodes in one process (node 0 serves, node 1 is the
// client); exit status 0 only when every check passed.
#include <patronus.hpp>

#include <chrono>
#include <cstring>
#include <iostream>
#include <thread>
#include <unistd.h>

using namespace patronus;
using namespace std::chrono_literals;

static int failures = 0;
#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK(" #cond ") failed; "    \
                      << last_error() << std::endl;                                       \
            failures++;                                                                   \
        }                                                                                 \
    } while (0)

// How long a condition may take on a loaded 2-core machine before the check
// fails (only a failing check waits this long).
static constexpr auto kPatience = 10s;

// Polls (every 100 us) until `cond()` holds; false after kPatience.
template <class F>
static bool wait_until(F cond) {
    auto give_up = std::chrono::steady_clock::now() + kPatience;
    while (!cond()) {
        if (std::chrono::steady_clock::now() > give_up) return false;
        std::this_thread::sleep_for(100us);
    }
    return true;
}

int main() {
    PatronusConfig config;
    config.machine_nr = 2;
    config.cluster = "cpp-test-" + std::to_string(::getpid());
    Patronus::pointer a, b;
    std::thread ta([&] { a = Patronus::ins(config); });
    std::thread tb([&] { b = Patronus::ins(config); });
    ta.join();
    tb.join();
    Patronus::pointer server = a->get_node_id() == 0 ? a : b;
    Patronus::pointer p = a->get_node_id() == 0 ? b : a;

    std::thread srv([&] {
        server->registerServerThread();
        server->server_serve(0);
    });
    CHECK(p->registerClientThread() == RC::kOk);
    CoroContext *ctx = nullptr;

    // read / write / cas / faa
    auto lease = p->get_wlease(0, 0, GlobalAddress(0, 4096), 0, 64, 100ms, 0, ctx);
    CHECK(lease.success());
    CHECK(lease.is_writable() && lease.is_readable());
    CHECK(p->get_gaddr(lease) == GlobalAddress(0, 4096));
    auto rdma_buf = p->get_rdma_buffer(64);
    CHECK(rdma_buf.buffer != nullptr);
    std::memcpy(rdma_buf.buffer, "patronus-cpp", 13);
    CHECK(p->write(lease, rdma_buf.buffer, 13, 8, 0, ctx) == RC::kOk);
    char back[13] = {};
    CHECK(p->read(lease, back, 13, 8, 0, ctx) == RC::kOk);
    CHECK(std::memcmp(back, "patronus-cpp", 13) == 0);
    auto lb = server->get_lease_buffer();
    CHECK(lb.size > 4096 + 64 && std::memcmp(lb.buffer + 4096 + 8, "patronus-cpp", 13) == 0);
    char io[8];
    uint64_t old = 0;
    std::memset(io, 0, 8);
    CHECK(p->write(lease, io, 8, 0, 0) == RC::kOk);
    CHECK(p->faa(lease, io, 0, 7, 0) == RC::kOk);
    std::memcpy(&old, io, 8);
    CHECK(old == 0);
    CHECK(p->cas(lease, io, 0, 7, 9, 0) == RC::kOk);
    std::memcpy(&old, io, 8);
    CHECK(old == 7);
    CHECK(p->rpc_faa(lease, io, 0, 1) == RC::kOk);
    std::memcpy(&old, io, 8);
    CHECK(old == 9);
    // Outside the lease: refused, then the lease works again.
    RetCode rc = p->read(lease, back, 8, 64, 0);
    CHECK(rc == RC::kRdmaProtectionErr);
    std::cout << "read outside the lease: " << rc << std::endl;
    CHECK(p->read(lease, back, 8, 0, 0) == RC::kOk);
    // extend / rpc_extend
    uint64_t ddl = lease.ddl_term();
    CHECK(p->extend(lease, 100ms, 0) == RC::kOk);
    CHECK(lease.ddl_term() > ddl);
    CHECK(p->rpc_extend(lease, 100ms, 0) == RC::kOk);
    // Move semantics: the moved-from lease is empty.
    Lease moved = std::move(lease);
    CHECK(!lease.success() && moved.success());
    CHECK(p->relinquish(moved, 0, 0) == RC::kOk);
    p->put_rdma_buffer(std::move(rdma_buf));

    // batches
    auto nl = p->get_wlease(0, 0, GlobalAddress(0, 8192), 0, 256, 0ns,
                            (flag_t)AcquireRequestFlag::kNoGc);
    CHECK(nl.success());
    PatronusBatchContext batch;
    char r1[8] = {}, a1[8] = {};
    CHECK(p->prepare_write(batch, nl, "batch-01", 8, 0, 0) == RC::kOk);
    CHECK(p->prepare_read(batch, nl, r1, 8, 0, 0) == RC::kOk);
    CHECK(p->prepare_faa(batch, nl, a1, 64, 5, 0) == RC::kOk);
    CHECK(p->commit(batch) == RC::kOk);
    CHECK(std::memcmp(r1, "batch-01", 8) == 0);
    std::memcpy(&old, a1, 8);
    CHECK(old == 0);
    CHECK(p->prepare_read(batch, nl, r1, 8, 1000, 0) == RC::kOk);
    CHECK(p->commit(batch) == RC::kRdmaProtectionErr);
    CHECK(p->prepare_cas(batch, nl, a1, 64, 5, 6, 0) == RC::kOk);
    CHECK(p->commit(batch) == RC::kOk);
    std::memcpy(&old, a1, 8);
    CHECK(old == 5);
    CHECK(p->relinquish(nl, 0, 0) == RC::kOk);

    // expiry: the local check, then the memory node's revocation
    auto sl = p->get_rlease(0, 0, GlobalAddress(0, 12288), 0, 64, 50ms, 0);
    CHECK(sl.success() && !sl.is_writable());
    CHECK(p->write(sl, "x", 1, 0, 0) == RC::kRdmaProtectionErr);
    // Past the deadline on every clock (now > ddl + epsilon): the local
    // check refuses.
    CHECK(wait_until([&] { return p->patronus_now().val > sl.ddl_term() + p->epsilon(); }));
    CHECK(p->read(sl, back, 8, 0, 0) == RC::kLeaseLocalExpiredErr);
    // The memory node's GC revokes the window: reads without the local check
    // work until then, and are refused by the NIC after.
    RetCode last;
    CHECK(wait_until([&] {
        last = p->read(sl, back, 8, 0, (flag_t)RWFlag::kNoLocalExpireCheck);
        return last != RC::kOk;
    }));
    CHECK(last == RC::kRdmaProtectionErr);

    // allocation
    GlobalAddress g = p->alloc(0, 0, 100, 0);
    CHECK(!g.is_null());
    p->dealloc(g, 0, 100, 0);
    auto al = p->get_wlease(0, 0, GlobalAddress(), 0, 64, 50ms,
                            (flag_t)AcquireRequestFlag::kWithAllocation);
    CHECK(al.success());
    CHECK(p->write(al, "alloc", 5, 0, 0) == RC::kOk);
    CHECK(p->relinquish(al, 0, (flag_t)LeaseModifyFlag::kWithDeallocation) == RC::kOk);
    // conflict detection
    auto l1 = p->get_wlease(0, 0, GlobalAddress(0, 16384), 0, 8, 100ms,
                            (flag_t)AcquireRequestFlag::kWithConflictDetect);
    auto l2 = p->get_wlease(0, 0, GlobalAddress(0, 16384), 0, 8, 100ms,
                            (flag_t)AcquireRequestFlag::kWithConflictDetect);
    CHECK(l1.success() && !l2.success());
    CHECK(l2.ec() == AcquireRequestStatus::kLockedErr);
    CHECK(p->relinquish(l1, 0, 0) == RC::kOk);

    // keeper
    p->put("cpp-key", "cpp-value");
    CHECK(server->get("cpp-key") == "cpp-value");
    std::thread kb([&] { server->keeper_barrier("cpp-barrier"); });
    p->keeper_barrier("cpp-barrier");
    kb.join();

    p->finished(0);
    srv.join();
    if (failures) {
        std::cerr << "test_patronus: " << failures << " failures" << std::endl;
        return 1;
    }
    std::cout << "test_patronus: ok" << std::endl;
    return 0;
}
