// patronus.hpp: header-only C++17 API over libpatronus.so, mirroring the
// original Patronus.h names (namespace patronus, RC/RetCode, GlobalAddress,
// the flag enums) so code written for the original compiles unchanged for
// the calls it uses: Patronus::ins(config), leases (move-only RAII), the data
// path, batches, allocation, keeper helpers, and the original's coroutine
// model: a call given a worker's `CoroContext *` posts its request and yields
// to the master, which resumes the workers whose calls completed
// (`try_get_client_continue_coros`); nullptr (or the master's or nullctx)
// blocks. The coroutine types of the original (`CoroYield`, `CoroCall`,
// Boost.Coroutine symmetric coroutines) are defined when
// <boost/coroutine/all.hpp> is available (Debian: libboost-coroutine-dev; link
// -lboost_coroutine -lboost_context) unless PATRONUS_NO_BOOST is defined;
// this header itself needs no Boost.
// Ownership: a Lease owns its patronus_lease_t and frees it (without
// relinquishing) when destroyed; a PatronusBatchContext owns its batch; a
// Patronus owns its node and frees it when the last shared_ptr goes away.
#ifndef PATRONUS_HPP
#define PATRONUS_HPP

#include <patronus.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <ostream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#if !defined(PATRONUS_NO_BOOST) && defined(__has_include)
#if __has_include(<boost/coroutine/all.hpp>)
#ifndef BOOST_COROUTINES_NO_DEPRECATION_WARNING
#define BOOST_COROUTINES_NO_DEPRECATION_WARNING
#endif
#ifndef BOOST_ALLOW_DEPRECATED_HEADERS
#define BOOST_ALLOW_DEPRECATED_HEADERS
#endif
#include <boost/coroutine/all.hpp>
#define PATRONUS_HAS_BOOST_CORO 1
using CoroYield = boost::coroutines::symmetric_coroutine<void>::yield_type;
using CoroCall = boost::coroutines::symmetric_coroutine<void>::call_type;
#endif
#endif

// Coroutine ids, as the original.
using coro_t = uint8_t;
static constexpr coro_t kMasterCoro = coro_t(-1);
static constexpr coro_t kNotACoro = coro_t(-2);

// The original's global GlobalAddress and RC live outside the namespace too.
enum RC : int {
    kOk = PATRONUS_RC_OK,
    kNotFound = PATRONUS_RC_NOT_FOUND,
    kNoMem = PATRONUS_RC_NO_MEM,
    kRetry = PATRONUS_RC_RETRY,
    kCacheStale = PATRONUS_RC_CACHE_STALE,
    kInvalid = PATRONUS_RC_INVALID,
    kRdmaProtectionErr = PATRONUS_RC_RDMA_PROTECTION_ERR,
    kRdmaExecutionErr = PATRONUS_RC_RDMA_EXECUTION_ERR,
    kLeaseLocalExpiredErr = PATRONUS_RC_LEASE_LOCAL_EXPIRED_ERR,
    kMockCrashed = PATRONUS_RC_MOCK_CRASHED,
    kReserved = PATRONUS_RC_RESERVED,
    kInternal = PATRONUS_RC_INTERNAL,
};

class RetCode {
public:
    constexpr RetCode() : c_(kReserved) {}
    constexpr RetCode(RC c) : c_(c) {}  // NOLINT: implicit, as the original
    constexpr bool operator==(RC c) const { return c_ == c; }
    constexpr bool operator!=(RC c) const { return c_ != c; }
    constexpr bool operator==(const RetCode &o) const { return c_ == o.c_; }
    constexpr bool operator!=(const RetCode &o) const { return c_ != o.c_; }
    constexpr RC code() const { return c_; }
    std::string str() const { return patronus_rc_str(static_cast<int>(c_)); }
    /// Aborts with a message unless the code is `c` (as the original).
    void expect(RC c) const {
        if (c_ != c) {
            std::fprintf(stderr, "RetCode::expect: got %s, expected %s\n", str().c_str(),
                         patronus_rc_str(static_cast<int>(c)));
            std::abort();
        }
    }

private:
    RC c_;
};

inline std::ostream &operator<<(std::ostream &os, const RetCode &rc) { return os << rc.str(); }

struct GlobalAddress {
    GlobalAddress() : offset(0), nodeID(0) {}
    GlobalAddress(uint16_t node_id, uint64_t off) : offset(off & ((uint64_t(1) << 48) - 1)), nodeID(node_id) {}
    explicit GlobalAddress(patronus_gaddr_t g) : offset(patronus_gaddr_offset(g)), nodeID(patronus_gaddr_node(g)) {}
    uint64_t offset : 48;
    uint64_t nodeID : 16;
    uint64_t val() const { return (uint64_t(nodeID) << 48) | offset; }
    bool is_null() const { return offset == 0; }
    patronus_gaddr_t to_c() const { return patronus_gaddr_t{val()}; }
    bool operator==(const GlobalAddress &o) const { return val() == o.val(); }
    bool operator!=(const GlobalAddress &o) const { return val() != o.val(); }
    bool operator<(const GlobalAddress &o) const { return val() < o.val(); }
};
static_assert(sizeof(GlobalAddress) == 8, "GlobalAddress is 64 bits");

inline std::ostream &operator<<(std::ostream &os, const GlobalAddress &g) {
    return os << "{GA " << g.nodeID << ", " << g.offset << "}";
}
static const GlobalAddress nullgaddr{};

namespace patronus {

using flag_t = uint64_t;

enum class AcquireRequestFlag : uint16_t {
    kNoGc = PATRONUS_ACQUIRE_NO_GC,
    kWithConflictDetect = PATRONUS_ACQUIRE_WITH_CONFLICT_DETECT,
    kNoBindPR = PATRONUS_ACQUIRE_NO_BIND_PR,
    kNoBindAny = PATRONUS_ACQUIRE_NO_BIND_ANY,
    kWithAllocation = PATRONUS_ACQUIRE_WITH_ALLOCATION,
    kOnlyAllocation = PATRONUS_ACQUIRE_ONLY_ALLOCATION,
    kUseMR = PATRONUS_ACQUIRE_USE_MR,
    kNoRpc = PATRONUS_ACQUIRE_NO_RPC,
    kDebugServerDoNothing = PATRONUS_ACQUIRE_DEBUG_SERVER_DO_NOTHING,
};

enum class LeaseModifyFlag : uint16_t {
    kNoRelinquishUnbindAny = PATRONUS_MODIFY_NO_RELINQUISH_UNBIND_ANY,
    kNoRelinquishUnbindPr = PATRONUS_MODIFY_NO_RELINQUISH_UNBIND_PR,
    kForceUnbind = PATRONUS_MODIFY_FORCE_UNBIND,
    kWithDeallocation = PATRONUS_MODIFY_WITH_DEALLOCATION,
    kOnlyDeallocation = PATRONUS_MODIFY_ONLY_DEALLOCATION,
    kServerDoNothing = PATRONUS_MODIFY_SERVER_DO_NOTHING,
    kWaitUntilSuccess = PATRONUS_MODIFY_WAIT_UNTIL_SUCCESS,
    kUseMR = PATRONUS_MODIFY_USE_MR,
    kNoRpc = PATRONUS_MODIFY_NO_RPC,
    kDebugExtendDoNothing = PATRONUS_MODIFY_DEBUG_EXTEND_DO_NOTHING,
};

enum class RWFlag : uint16_t {
    kNoLocalExpireCheck = PATRONUS_RW_NO_LOCAL_EXPIRE_CHECK,
    kWithAutoExtend = PATRONUS_RW_WITH_AUTO_EXTEND,
    kWithCache = PATRONUS_RW_WITH_CACHE,
    kUseUniversalRkey = PATRONUS_RW_USE_UNIVERSAL_RKEY,
    kEnableTrace = PATRONUS_RW_ENABLE_TRACE,
    kUseTwoSided = PATRONUS_RW_USE_TWO_SIDED,
    kUseTwoSidedAutoPacking = PATRONUS_RW_USE_TWO_SIDED_AUTO_PACKING,
};

enum class AcquireRequestStatus : uint8_t {
    kSuccess = PATRONUS_ACQUIRE_SUCCESS,
    kMagicMwErr = PATRONUS_ACQUIRE_MAGIC_MW_ERR,
    kLockedErr = PATRONUS_ACQUIRE_LOCKED_ERR,
    kBindErr = PATRONUS_ACQUIRE_BIND_ERR,
    kRegMrErr = PATRONUS_ACQUIRE_REG_MR_ERR,
    kAddressOutOfRangeErr = PATRONUS_ACQUIRE_ADDRESS_OUT_OF_RANGE_ERR,
    kNoMem = PATRONUS_ACQUIRE_NO_MEM,
    kNoMw = PATRONUS_ACQUIRE_NO_MW,
    kReserved = PATRONUS_ACQUIRE_RESERVED,
    kReservedNoReturn = PATRONUS_ACQUIRE_RESERVED_NO_RETURN,
};

// flag_t helpers: `(flag_t) AcquireRequestFlag::kNoGc | ...` as the original.
template <typename E>
constexpr flag_t operator|(E a, E b) {
    return static_cast<flag_t>(a) | static_cast<flag_t>(b);
}
template <typename E>
constexpr flag_t operator|(flag_t a, E b) {
    return a | static_cast<flag_t>(b);
}

inline std::ostream &operator<<(std::ostream &os, AcquireRequestStatus s) {
    static const char *names[] = {"kSuccess", "kMagicMwErr", "kLockedErr", "kBindErr",
                                  "kRegMrErr", "kAddressOutOfRangeErr", "kNoMem", "kNoMw",
                                  "kReserved", "kReservedNoReturn"};
    auto i = static_cast<unsigned>(s);
    return os << (i < sizeof(names) / sizeof(names[0]) ? names[i] : "kUnknown");
}

/// The original's coroutine context. A worker's context (thread id, its
/// yield, the master it yields to, its id) makes calls post and yield; the
/// master's (thread id, its yield, the array of workers) resumes workers;
/// the default one is nullctx (calls block). The yield and call types are
/// whatever the program uses (Boost's symmetric coroutines in the
/// original's programs: `CoroYield`, `CoroCall`).
class CoroContext {
public:
    CoroContext() = default;
    template <typename Y, typename C>
    CoroContext(size_t thread_id, Y *yield, C *master, coro_t coro_id)
        : thread_id_(thread_id), yield_(yield), target_(master), coro_id_(coro_id),
          jump_(&jump<Y, C>) {
        if (coro_id == kMasterCoro || coro_id == kNotACoro)
            throw std::invalid_argument("CoroContext: a worker needs a worker id");
    }
    template <typename Y, typename C>
    CoroContext(size_t thread_id, Y *yield, C *workers)
        : thread_id_(thread_id), yield_(yield), target_(workers), coro_id_(kMasterCoro),
          jump_(&jump<Y, C>) {}
    CoroContext(const CoroContext &) = delete;
    CoroContext &operator=(const CoroContext &) = delete;

    /// A worker gives the thread back to its master.
    void yield_to_master() const {
        if (!is_worker()) throw std::logic_error("yield_to_master: not a worker");
        jump_(yield_, target_, 0);
    }
    /// The master resumes worker `wid`.
    void yield_to_worker(coro_t wid) const {
        if (!is_master()) throw std::logic_error("yield_to_worker: not the master");
        jump_(yield_, target_, wid);
    }
    bool is_master() const { return coro_id_ == kMasterCoro; }
    bool is_worker() const { return coro_id_ != kMasterCoro && coro_id_ != kNotACoro; }
    bool is_nullctx() const { return coro_id_ == kNotACoro; }
    coro_t coro_id() const { return coro_id_; }
    size_t thread_id() const { return thread_id_; }

private:
    template <typename Y, typename C>
    static void jump(void *y, void *t, size_t i) {
        (*static_cast<Y *>(y))(static_cast<C *>(t)[i]);
    }
    size_t thread_id_{0};
    void *yield_{nullptr};
    void *target_{nullptr};
    coro_t coro_id_{kNotACoro};
    void (*jump_)(void *, void *, size_t){nullptr};
};

static CoroContext nullctx;

inline std::ostream &operator<<(std::ostream &os, const CoroContext &ctx) {
    if (ctx.is_master()) return os << "{Coro T(" << ctx.thread_id() << ") Master }";
    if (ctx.is_nullctx()) return os << "{Coro Not a coro}";
    return os << "{Coro T(" << ctx.thread_id() << ") " << int(ctx.coro_id()) << "}";
}

namespace time {
using ns_t = int64_t;
}

inline std::string last_error() {
    const char *e = patronus_last_error();
    return e ? std::string(e) : std::string();
}

/// Node configuration (the original's PatronusConfig plus Patronus-rs
/// fields). Empty strings mean "the default" (environment, then shm /
/// in-process keeper).
struct PatronusConfig {
    size_t machine_nr{1};
    size_t dir_nr{1};
    size_t lease_buffer_size{0};
    size_t alloc_buffer_size{0};
    size_t reserved_buffer_size{0};
    uint16_t time_parent_node_id{0};
    bool simplify{false};
    std::string fabric;
    std::string keeper;
    std::string listen_addr;
    std::string cluster;
    uint16_t client_threads{0};
    uint32_t leases_per_dir{0};
    uint64_t rpc_timeout_ms{0};
};

/// A registered client buffer ({nullptr, 0} when none is available).
struct Buffer {
    char *buffer{nullptr};
    size_t size{0};
    Buffer() = default;
    Buffer(char *b, size_t s) : buffer(b), size(s) {}
};

/// Synchronised cluster time (ns); `.val` as the original's time types.
struct PatronusTime {
    uint64_t val{0};
    uint64_t term() const { return val; }
};

/// `lease.ddl_term() - p->patronus_now()`: nanoseconds left (negative once
/// past), as the original.
inline int64_t operator-(uint64_t ddl, PatronusTime now) {
    return static_cast<int64_t>(ddl - now.val);
}

class Patronus;

/// A lease. Move-only; destroying it frees the handle but does not
/// relinquish (the memory node's GC revokes an abandoned lease at expiry).
class Lease {
public:
    Lease() = default;
    explicit Lease(patronus_lease_t *h) : h_(h) {}
    Lease(const Lease &) = delete;
    Lease &operator=(const Lease &) = delete;
    Lease(Lease &&o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
    Lease &operator=(Lease &&o) noexcept {
        if (this != &o) {
            patronus_lease_free(h_);
            h_ = std::exchange(o.h_, nullptr);
        }
        return *this;
    }
    ~Lease() { patronus_lease_free(h_); }

    bool success() const { return h_ && patronus_lease_success(h_); }
    AcquireRequestStatus ec() const {
        return h_ ? static_cast<AcquireRequestStatus>(patronus_lease_ec(h_))
                  : AcquireRequestStatus::kReserved;
    }
    uint64_t id() const { return patronus_lease_id(h_); }
    uint64_t base_addr() const { return patronus_lease_base_addr(h_); }
    size_t buffer_size() const { return patronus_lease_buffer_size(h_); }
    uint16_t dir_id() const { return patronus_lease_dir_id(h_); }
    uint64_t ddl_term() const { return patronus_lease_ddl_term(h_); }
    bool is_readable() const { return patronus_lease_is_readable(h_); }
    bool is_writable() const { return patronus_lease_is_writable(h_); }
    patronus_lease_t *native() const { return h_; }
    explicit operator bool() const { return success(); }

private:
    patronus_lease_t *h_{nullptr};
};

inline std::ostream &operator<<(std::ostream &os, const Lease &l) {
    if (!l.native()) return os << "{Lease null}";
    return os << "{Lease id " << l.id() << ", dir " << l.dir_id() << ", size " << l.buffer_size()
              << ", " << (l.success() ? "granted" : "not granted") << " ec " << l.ec()
              << ", ddl " << l.ddl_term() << "}";
}

/// A batch of one-sided operations (at most 16, towards one directory).
class PatronusBatchContext {
public:
    PatronusBatchContext() : b_(patronus_batch_new()) {
        if (!b_) throw std::bad_alloc();
    }
    PatronusBatchContext(const PatronusBatchContext &) = delete;
    PatronusBatchContext &operator=(const PatronusBatchContext &) = delete;
    PatronusBatchContext(PatronusBatchContext &&o) noexcept : b_(std::exchange(o.b_, nullptr)) {}
    PatronusBatchContext &operator=(PatronusBatchContext &&o) noexcept {
        if (this != &o) {
            patronus_batch_free(b_);
            b_ = std::exchange(o.b_, nullptr);
        }
        return *this;
    }
    ~PatronusBatchContext() { patronus_batch_free(b_); }
    patronus_batch_t *native() const { return b_; }
    /// Operations one batch holds at most.
    static constexpr size_t kMaxOp = 16;
    /// True when nothing is prepared.
    bool empty() const { return ops_ == 0; }
    void count_op() { ops_++; }
    void clear_ops() { ops_ = 0; }

private:
    patronus_batch_t *b_;
    size_t ops_{0};
};

/// One node of a Patronus cluster.
class Patronus {
public:
    using pointer = std::shared_ptr<Patronus>;

    /// Joins the cluster (blocks until every node joined). Throws
    /// std::runtime_error with the library's message on failure.
    static pointer ins(const PatronusConfig &conf) {
        patronus_config_t c;
        patronus_config_init(&c);
        c.machine_nr = static_cast<uint16_t>(conf.machine_nr);
        c.dir_nr = static_cast<uint16_t>(conf.dir_nr);
        c.lease_buffer_size = conf.lease_buffer_size;
        c.alloc_buffer_size = conf.alloc_buffer_size;
        c.reserved_buffer_size = conf.reserved_buffer_size;
        c.time_parent_node_id = conf.time_parent_node_id;
        c.simplify = conf.simplify;
        c.fabric = conf.fabric.empty() ? nullptr : conf.fabric.c_str();
        c.keeper = conf.keeper.empty() ? nullptr : conf.keeper.c_str();
        c.listen_addr = conf.listen_addr.empty() ? nullptr : conf.listen_addr.c_str();
        c.cluster = conf.cluster.empty() ? nullptr : conf.cluster.c_str();
        if (conf.client_threads) c.client_threads = conf.client_threads;
        if (conf.leases_per_dir) c.leases_per_dir = conf.leases_per_dir;
        if (conf.rpc_timeout_ms) c.rpc_timeout_ms = conf.rpc_timeout_ms;
        patronus_t *p = patronus_new(&c);
        if (!p) throw std::runtime_error("patronus_new: " + last_error());
        return pointer(new Patronus(p));
    }

    Patronus(const Patronus &) = delete;
    Patronus &operator=(const Patronus &) = delete;
    ~Patronus() { patronus_free(p_); }
    patronus_t *native() const { return p_; }

    // threads, time, sync -------------------------------------------------
    RetCode registerClientThread() { return rc(patronus_register_client_thread(p_)); }
    /// Makes this thread a server thread (a directory). Throws
    /// std::runtime_error with the library's message when it cannot (e.g.
    /// every directory is taken): code written for the original ignores the
    /// result, so a failure must not pass silently.
    RetCode registerServerThread() {
        RetCode r = rc(patronus_register_server_thread(p_));
        if (r != RC::kOk) throw std::runtime_error("registerServerThread: " + last_error());
        return r;
    }
    void server_serve(uint64_t key) { patronus_server_serve(p_, key); }
    void finished(uint64_t key) { patronus_finished(p_, key); }
    bool should_exit(uint64_t key) const { return patronus_should_exit(p_, key); }
    uint16_t get_node_id() const { return patronus_get_node_id(p_); }
    uint32_t get_thread_id() const { return patronus_get_thread_id(p_); }
    PatronusTime patronus_now() const { return PatronusTime{::patronus_now(p_)}; }
    uint64_t epsilon() const { return patronus_epsilon(p_); }

    // leases --------------------------------------------------------------
    Lease get_rlease(uint16_t node_id, uint16_t dir_id, GlobalAddress bind_gaddr,
                     uint64_t alloc_hint, size_t size, std::chrono::nanoseconds ns, flag_t flag,
                     CoroContext *ctx = nullptr) {
        if (worker(ctx))
            return Lease(await(ctx, [&](uint64_t tag) { return patronus_post_get_rlease(p_, node_id, dir_id, bind_gaddr.to_c(), alloc_hint, size, ns_of(ns), flag, tag); }).lease);
        return Lease(patronus_get_rlease(p_, node_id, dir_id, bind_gaddr.to_c(), alloc_hint,
                                         size, ns_of(ns), flag));
    }
    Lease get_wlease(uint16_t node_id, uint16_t dir_id, GlobalAddress bind_gaddr,
                     uint64_t alloc_hint, size_t size, std::chrono::nanoseconds ns, flag_t flag,
                     CoroContext *ctx = nullptr) {
        if (worker(ctx))
            return Lease(await(ctx, [&](uint64_t tag) { return patronus_post_get_wlease(p_, node_id, dir_id, bind_gaddr.to_c(), alloc_hint, size, ns_of(ns), flag, tag); }).lease);
        return Lease(patronus_get_wlease(p_, node_id, dir_id, bind_gaddr.to_c(), alloc_hint,
                                         size, ns_of(ns), flag));
    }
    RetCode relinquish(Lease &lease, uint64_t hint, flag_t flag, CoroContext *ctx = nullptr) {
        if (worker(ctx))
            return rc(await(ctx, [&](uint64_t tag) { return patronus_post_relinquish(p_, lease.native(), hint, flag, tag); }).rc);
        return rc(patronus_relinquish(p_, lease.native(), hint, flag));
    }
    RetCode extend(Lease &lease, std::chrono::nanoseconds ns, flag_t flag,
                   CoroContext *ctx = nullptr) {
        if (worker(ctx))
            return rc(await(ctx, [&](uint64_t tag) { return patronus_post_extend(p_, lease.native(), ns_of(ns), flag, tag); }).rc);
        return rc(patronus_extend(p_, lease.native(), ns_of(ns), flag));
    }
    RetCode rpc_extend(Lease &lease, std::chrono::nanoseconds ns, flag_t flag,
                       CoroContext *ctx = nullptr) {
        if (worker(ctx))
            return rc(await(ctx, [&](uint64_t tag) { return patronus_post_rpc_extend(p_, lease.native(), ns_of(ns), flag, tag); }).rc);
        return rc(patronus_rpc_extend(p_, lease.native(), ns_of(ns), flag));
    }
    Lease upgrade(Lease &lease, flag_t flag, CoroContext *ctx = nullptr) {
        if (worker(ctx))
            return Lease(await(ctx, [&](uint64_t tag) { return patronus_post_upgrade(p_, lease.native(), flag, tag); }).lease);
        return Lease(patronus_upgrade(p_, lease.native(), flag));
    }
    GlobalAddress get_gaddr(const Lease &lease) const {
        return GlobalAddress(patronus_get_gaddr(p_, lease.native()));
    }

    // data path -----------------------------------------------------------
    RetCode read(Lease &lease, char *obuf, size_t size, size_t offset, flag_t flag,
                 CoroContext *ctx = nullptr) {
        if (worker(ctx))
            return rc(await(ctx, [&](uint64_t tag) { return patronus_post_read(p_, lease.native(), obuf, size, offset, flag, tag); }).rc);
        return rc(patronus_read(p_, lease.native(), obuf, size, offset, flag));
    }
    RetCode write(Lease &lease, const char *ibuf, size_t size, size_t offset, flag_t flag,
                  CoroContext *ctx = nullptr) {
        if (worker(ctx))
            return rc(await(ctx, [&](uint64_t tag) { return patronus_post_write(p_, lease.native(), ibuf, size, offset, flag, tag); }).rc);
        return rc(patronus_write(p_, lease.native(), ibuf, size, offset, flag));
    }
    RetCode cas(Lease &lease, char *iobuf, size_t offset, uint64_t compare, uint64_t swap,
                flag_t flag, CoroContext *ctx = nullptr) {
        if (worker(ctx))
            return rc(await(ctx, [&](uint64_t tag) { return patronus_post_cas(p_, lease.native(), iobuf, offset, compare, swap, flag, tag); }).rc);
        return rc(patronus_cas(p_, lease.native(), iobuf, offset, compare, swap, flag));
    }
    RetCode faa(Lease &lease, char *iobuf, size_t offset, int64_t value, flag_t flag,
                CoroContext *ctx = nullptr) {
        if (worker(ctx))
            return rc(await(ctx, [&](uint64_t tag) { return patronus_post_faa(p_, lease.native(), iobuf, offset, value, flag, tag); }).rc);
        return rc(patronus_faa(p_, lease.native(), iobuf, offset, value, flag));
    }
    RetCode rpc_read(Lease &lease, char *obuf, size_t size, size_t offset, flag_t flag,
                     CoroContext *ctx = nullptr) {
        if (worker(ctx))
            return rc(await(ctx, [&](uint64_t tag) { return patronus_post_rpc_read(p_, lease.native(), obuf, size, offset, flag, tag); }).rc);
        return rc(patronus_rpc_read(p_, lease.native(), obuf, size, offset, flag));
    }
    RetCode rpc_write(Lease &lease, const char *ibuf, size_t size, size_t offset, flag_t flag,
                      CoroContext *ctx = nullptr) {
        if (worker(ctx))
            return rc(await(ctx, [&](uint64_t tag) { return patronus_post_rpc_write(p_, lease.native(), ibuf, size, offset, flag, tag); }).rc);
        return rc(patronus_rpc_write(p_, lease.native(), ibuf, size, offset, flag));
    }
    RetCode rpc_cas(Lease &lease, char *iobuf, size_t offset, uint64_t compare, uint64_t swap,
                    CoroContext *ctx = nullptr) {
        if (worker(ctx))
            return rc(await(ctx, [&](uint64_t tag) { return patronus_post_rpc_cas(p_, lease.native(), iobuf, offset, compare, swap, tag); }).rc);
        return rc(patronus_rpc_cas(p_, lease.native(), iobuf, offset, compare, swap));
    }
    RetCode rpc_faa(Lease &lease, char *iobuf, size_t offset, int64_t value,
                    CoroContext *ctx = nullptr) {
        if (worker(ctx))
            return rc(await(ctx, [&](uint64_t tag) { return patronus_post_rpc_faa(p_, lease.native(), iobuf, offset, value, tag); }).rc);
        return rc(patronus_rpc_faa(p_, lease.native(), iobuf, offset, value));
    }
    RetCode prepare_read(PatronusBatchContext &b, Lease &lease, char *obuf, size_t size,
                         size_t offset, flag_t flag, CoroContext *ctx = nullptr) {
        (void)ctx;
        b.count_op();
        return rc(patronus_prepare_read(p_, b.native(), lease.native(), obuf, size, offset, flag));
    }
    RetCode prepare_write(PatronusBatchContext &b, Lease &lease, const char *ibuf, size_t size,
                          size_t offset, flag_t flag, CoroContext *ctx = nullptr) {
        (void)ctx;
        b.count_op();
        return rc(
            patronus_prepare_write(p_, b.native(), lease.native(), ibuf, size, offset, flag));
    }
    RetCode prepare_cas(PatronusBatchContext &b, Lease &lease, char *iobuf, size_t offset,
                        uint64_t compare, uint64_t swap, flag_t flag, CoroContext *ctx = nullptr) {
        (void)ctx;
        b.count_op();
        return rc(patronus_prepare_cas(p_, b.native(), lease.native(), iobuf, offset, compare,
                                       swap, flag));
    }
    RetCode prepare_faa(PatronusBatchContext &b, Lease &lease, char *iobuf, size_t offset,
                        int64_t value, flag_t flag, CoroContext *ctx = nullptr) {
        (void)ctx;
        b.count_op();
        return rc(
            patronus_prepare_faa(p_, b.native(), lease.native(), iobuf, offset, value, flag));
    }
    RetCode commit(PatronusBatchContext &b, CoroContext *ctx = nullptr) {
        b.clear_ops();
        if (worker(ctx))
            return rc(await(ctx, [&](uint64_t tag) { return patronus_post_commit(p_, b.native(), tag); }).rc);
        return rc(patronus_commit(p_, b.native()));
    }
    Buffer get_rdma_buffer(size_t size) {
        char *b = patronus_get_rdma_buffer(p_, size);
        return b ? Buffer(b, size) : Buffer();
    }
    void put_rdma_buffer(Buffer &&buf) {
        patronus_put_rdma_buffer(p_, buf.buffer);
        buf = Buffer();
    }

    // allocation and memory-node buffers ----------------------------------
    GlobalAddress alloc(uint16_t node_id, uint16_t dir_id, size_t size, uint64_t hint,
                        CoroContext *ctx = nullptr) {
        (void)ctx;
        return GlobalAddress(patronus_alloc(p_, node_id, dir_id, size, hint));
    }
    void dealloc(GlobalAddress gaddr, uint16_t dir_id, size_t size, uint64_t hint,
                 CoroContext *ctx = nullptr) {
        (void)ctx;
        patronus_dealloc(p_, gaddr.to_c(), dir_id, size, hint);
    }
    Buffer get_lease_buffer() const { return part(patronus_get_lease_buffer); }
    Buffer get_alloc_buffer() const { return part(patronus_get_alloc_buffer); }
    Buffer get_user_reserved_buffer() const { return part(patronus_get_user_reserved_buffer); }
    /// The whole server buffer (lease, alloc, reserved parts).
    Buffer get_server_internal_buffer() const {
        Buffer l = get_lease_buffer(), a = get_alloc_buffer(), r = get_user_reserved_buffer();
        return Buffer(l.buffer, l.size + a.size + r.size);
    }
    GlobalAddress to_exposed_gaddr(const void *addr) const {
        return GlobalAddress(patronus_to_exposed_gaddr(p_, addr));
    }
    void *from_exposed_gaddr(GlobalAddress g) const {
        return patronus_from_exposed_gaddr(p_, g.to_c());
    }

    // keeper ---------------------------------------------------------------
    void put(const std::string &key, const std::string &value) {
        check(patronus_put(p_, key.c_str(), value.data(), value.size()), "put");
    }
    /// As the original: `sleep_time` was its polling interval (the library
    /// waits on its own).
    template <typename T>
    void put(const std::string &key, const T &value, std::chrono::nanoseconds sleep_time) {
        (void)sleep_time;
        static_assert(std::is_trivially_copyable<T>::value, "put: trivially copyable values");
        put(key, std::string(reinterpret_cast<const char *>(&value), sizeof(T)));
    }
    void put(const std::string &key, const std::string &value,
             std::chrono::nanoseconds sleep_time) {
        (void)sleep_time;
        put(key, value);
    }
    std::string get(const std::string &key, std::chrono::nanoseconds sleep_time) {
        (void)sleep_time;
        return get(key);
    }
    /// `get` and a byte copy into a T (throws when the value is shorter).
    template <typename T>
    T get_object(const std::string &key,
                 std::chrono::nanoseconds sleep_time = std::chrono::milliseconds(1)) {
        (void)sleep_time;
        static_assert(std::is_trivially_copyable<T>::value, "get_object: trivially copyable T");
        std::string v = get(key);
        if (v.size() < sizeof(T))
            throw std::runtime_error("get_object: value of " + key + " is shorter than T");
        T t;
        std::memcpy(&t, v.data(), sizeof(T));
        return t;
    }
    /// The value of `key`, or an empty string when it does not exist (yet).
    std::string try_get(const std::string &key,
                        std::chrono::nanoseconds sleep_time = std::chrono::milliseconds(1)) {
        (void)sleep_time;
        std::string v(256, '\0');
        size_t n = 0;
        patronus_rc_t r = patronus_try_get(p_, key.c_str(), &v[0], v.size(), &n);
        if (r == PATRONUS_RC_NOT_FOUND) return std::string();
        if (r == PATRONUS_RC_NO_MEM && n > v.size()) {
            v.resize(n);
            r = patronus_try_get(p_, key.c_str(), &v[0], v.size(), &n);
        }
        check(r, "try_get");
        v.resize(n);
        return v;
    }
    /// Waits until `key` exists.
    std::string get(const std::string &key) {
        std::string v(256, '\0');
        size_t n = 0;
        patronus_rc_t r = patronus_get(p_, key.c_str(), &v[0], v.size(), &n);
        if (r == PATRONUS_RC_NO_MEM && n > v.size()) {
            v.resize(n);
            r = patronus_get(p_, key.c_str(), &v[0], v.size(), &n);
        }
        check(r, "get");
        v.resize(n);
        return v;
    }
    void keeper_barrier(const std::string &key,
                        std::chrono::milliseconds sleep_time = std::chrono::milliseconds(1)) {
        (void)sleep_time;
        check(patronus_keeper_barrier(p_, key.c_str()), "keeper_barrier");
    }

    // coroutines -------------------------------------------------------------
    /// The master's poll: stores up to `limit` ids of workers whose calls
    /// completed in `buf` (resume each with `yield_to_worker`); never blocks.
    size_t try_get_client_continue_coros(coro_t *buf, size_t limit) {
        size_t n = 0;
        auto &r = ready();
        while (n < limit && !r.empty()) {
            buf[n++] = r.back();
            r.pop_back();
        }
        if (n < limit) {
            patronus_completion_t cs[64];
            size_t want = limit - n < 64 ? limit - n : 64;
            size_t k = patronus_poll(p_, cs, want);
            for (size_t i = 0; i < k; i++) {
                done()[cs[i].user_data] = cs[i];
                buf[n++] = coro_of(cs[i].user_data);
            }
        }
        return n;
    }
    /// Calls this thread has in flight.
    size_t inflight() const { return patronus_inflight(p_); }

private:
    explicit Patronus(patronus_t *p) : p_(p) {}
    static bool worker(CoroContext *ctx) { return ctx && ctx->is_worker(); }
    static coro_t coro_of(uint64_t tag) { return static_cast<coro_t>(tag >> 56); }
    // Per thread: completions waiting for their worker, workers to resume
    // (completions taken while a post met the limit), the tag sequence.
    static std::unordered_map<uint64_t, patronus_completion_t> &done() {
        static thread_local std::unordered_map<uint64_t, patronus_completion_t> m;
        return m;
    }
    static std::vector<coro_t> &ready() {
        static thread_local std::vector<coro_t> v;
        return v;
    }
    static uint64_t next_tag(coro_t id) {
        static thread_local uint64_t seq = 0;
        seq = (seq + 1) & ((uint64_t(1) << 56) - 1);
        return (uint64_t(id) << 56) | seq;
    }
    /// Posts through `post(tag)` and yields to the master until the call's
    /// completion is there (the master stores it when it polls).
    template <typename F>
    patronus_completion_t await(CoroContext *ctx, F post) {
        uint64_t tag = next_tag(ctx->coro_id());
        patronus_rc_t r;
        while ((r = post(tag)) == PATRONUS_RC_RETRY) {
            // At the thread's limit: take one completion (for whichever
            // worker) so that this post fits; its worker runs next time.
            patronus_completion_t c;
            if (patronus_wait(p_, &c, 1, 1000000) == 1) {
                done()[c.user_data] = c;
                ready().push_back(coro_of(c.user_data));
            }
        }
        if (r != PATRONUS_RC_OK) return patronus_completion_t{tag, r, nullptr, 0};
        for (;;) {
            ctx->yield_to_master();
            auto &m = done();
            auto it = m.find(tag);
            if (it != m.end()) {
                patronus_completion_t c = it->second;
                m.erase(it);
                return c;
            }
        }
    }
    static RetCode rc(patronus_rc_t r) { return RetCode(static_cast<RC>(r)); }
    static uint64_t ns_of(std::chrono::nanoseconds ns) {
        return ns.count() < 0 ? 0 : static_cast<uint64_t>(ns.count());
    }
    static void check(patronus_rc_t r, const char *what) {
        if (r != PATRONUS_RC_OK)
            throw std::runtime_error(std::string("patronus ") + what + ": " + last_error());
    }
    Buffer part(char *(*fn)(patronus_t *, size_t *)) const {
        size_t n = 0;
        char *b = fn(p_, &n);
        return Buffer(b, n);
    }
    patronus_t *p_;
};

}  // namespace patronus

#endif  // PATRONUS_HPP
