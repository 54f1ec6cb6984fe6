// patronus.hpp: header-only C++17 API over libpatronus.so, mirroring the
// original Patronus.h names (namespace patronus, RC/RetCode, GlobalAddress,
// the flag enums) so code written for the original compiles unchanged for
// the calls it uses. This increment covers the types; the Patronus class,
// Lease and the data path arrive with the lease core.
#ifndef PATRONUS_HPP
#define PATRONUS_HPP

#include <patronus.h>

#include <cstdint>
#include <ostream>
#include <string>

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

// The original's CoroContext; nullptr is always accepted (synchronous calls).
class CoroContext;

inline std::string last_error() {
    const char *e = patronus_last_error();
    return e ? std::string(e) : std::string();
}

}  // namespace patronus

#endif  // PATRONUS_HPP
