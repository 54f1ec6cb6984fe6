//! Flags, return codes and acquire statuses of the Patronus protocol, with
//! the bit values and numbers of the original enums. The C surface
//! (`src/ffi`) mirrors these one to one; a test there checks every value.

/// `AcquireRequestFlag` bits (get_rlease / get_wlease).
pub mod acquire {
    /// No server GC task; the lease never expires (client deadline infinite).
    pub const NO_GC: u64 = 1 << 0;
    /// Exclusive per-key lock held until relinquish or GC.
    pub const WITH_CONFLICT_DETECT: u64 = 1 << 1;
    /// No protection region: no one-sided extension.
    pub const NO_BIND_PR: u64 = 1 << 2;
    /// No memory window at all (pure RPC cost).
    pub const NO_BIND_ANY: u64 = 1 << 3;
    /// Allocate `size` bytes with allocator `alloc_hint`, then lease them.
    pub const WITH_ALLOCATION: u64 = 1 << 4;
    /// Allocate only (no lease; the object's address comes back).
    pub const ONLY_ALLOCATION: u64 = 1 << 5;
    /// Register a memory region instead of binding a window (baseline).
    pub const USE_MR: u64 = 1 << 6;
    /// Client-only lease without any RPC.
    pub const NO_RPC: u64 = 1 << 7;
    /// The server replies success without doing anything (debug).
    pub const DEBUG_SERVER_DO_NOTHING: u64 = 1 << 8;
    /// Every defined bit.
    pub const ALL: u64 = (1 << 9) - 1;
}

/// `LeaseModifyFlag` bits (relinquish, extend, rpc_extend, dealloc).
pub mod modify {
    /// Keep both windows bound on relinquish.
    pub const NO_RELINQUISH_UNBIND_ANY: u64 = 1 << 0;
    /// The original keeps the protection-region window bound on relinquish.
    /// Accepted without effect: the region's window is always unbound (left
    /// bound, its old holder could extend the region's next lease).
    pub const NO_RELINQUISH_UNBIND_PR: u64 = 1 << 1;
    /// GC ignores client extensions. Accepted without effect: a relinquish
    /// always closes the protection region before it revokes.
    pub const FORCE_UNBIND: u64 = 1 << 2;
    /// Also free the object's memory (allocation leases).
    pub const WITH_DEALLOCATION: u64 = 1 << 3;
    /// Free only (the dealloc path).
    pub const ONLY_DEALLOCATION: u64 = 1 << 4;
    /// The server ignores the request.
    pub const SERVER_DO_NOTHING: u64 = 1 << 5;
    /// Wait until the revocation completed (always true in Patronus-rs:
    /// accepted without effect).
    pub const WAIT_UNTIL_SUCCESS: u64 = 1 << 6;
    /// The lease was MR-based.
    pub const USE_MR: u64 = 1 << 7;
    /// Client-side invalidation only.
    pub const NO_RPC: u64 = 1 << 8;
    /// rpc_extend: the server skips the update but reports success (debug).
    pub const DEBUG_EXTEND_DO_NOTHING: u64 = 1 << 9;
    /// Every defined bit.
    pub const ALL: u64 = (1 << 10) - 1;
}

/// `RWFlag` bits (read, write, cas, faa and their batch forms).
pub mod rw {
    /// Skip the client's deadline check.
    pub const NO_LOCAL_EXPIRE_CHECK: u64 = 1 << 0;
    /// Extend the lease before it expires.
    pub const WITH_AUTO_EXTEND: u64 = 1 << 1;
    /// Per-lease client cache.
    pub const WITH_CACHE: u64 = 1 << 2;
    /// Use the directory's whole-region key (unprotected baseline).
    pub const USE_UNIVERSAL_RKEY: u64 = 1 << 3;
    /// Tracing only.
    pub const ENABLE_TRACE: u64 = 1 << 4;
    /// Perform the operation by RPC.
    pub const USE_TWO_SIDED: u64 = 1 << 5;
    /// Allow RPC operations larger than one message. Accepted without
    /// effect: two-sided transfers are always split into messages.
    pub const USE_TWO_SIDED_AUTO_PACKING: u64 = 1 << 6;
    /// Every defined bit.
    pub const ALL: u64 = (1 << 7) - 1;
}

/// Return codes, numbered as the original `RC`, plus `Internal`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Rc {
    /// Success.
    Ok = 0,
    /// Not found.
    NotFound = 1,
    /// Out of memory or another pooled resource.
    NoMem = 2,
    /// Try again (lock held, transient).
    Retry = 3,
    /// Cache stale.
    CacheStale = 4,
    /// Invalid argument or refused request.
    Invalid = 5,
    /// A one-sided access failed at the NIC (outside the lease, revoked, ...).
    RdmaProtectionErr = 6,
    /// An RDMA operation could not be executed.
    RdmaExecutionErr = 7,
    /// The lease expired by the local clock check.
    LeaseLocalExpiredErr = 8,
    /// Fault injection.
    MockCrashed = 9,
    /// Reserved (a default-constructed code).
    Reserved = 10,
    /// A panic or broken invariant inside the library.
    Internal = 11,
}

impl Rc {
    /// Every code, in number order: the one table from numbers to codes.
    pub const ALL: [Rc; 12] = {
        use Rc::*;
        [
            Ok,
            NotFound,
            NoMem,
            Retry,
            CacheStale,
            Invalid,
            RdmaProtectionErr,
            RdmaExecutionErr,
            LeaseLocalExpiredErr,
            MockCrashed,
            Reserved,
            Internal,
        ]
    };

    /// The code with number `v`, or None for numbers outside the table.
    pub fn try_from_u8(v: u8) -> Option<Rc> {
        Rc::ALL.get(v as usize).copied()
    }

    /// The code with number `v`; unknown numbers are `Internal`.
    pub fn from_u8(v: u8) -> Rc {
        Rc::try_from_u8(v).unwrap_or(Rc::Internal)
    }
}

/// Outcome of an acquisition, numbered as `AcquireRequestStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AcquireStatus {
    /// Granted.
    Success = 0,
    /// Magic-MW fault injection hit.
    MagicMwErr = 1,
    /// The conflict lock is held.
    LockedErr = 2,
    /// Binding the window failed.
    BindErr = 3,
    /// Registering the MR failed.
    RegMrErr = 4,
    /// The range is outside the memory node's buffer.
    AddressOutOfRangeErr = 5,
    /// The allocator returned nothing.
    NoMem = 6,
    /// No memory window left.
    NoMw = 7,
    /// Never valid on the wire.
    Reserved = 8,
    /// Never valid on the wire.
    ReservedNoReturn = 9,
}

impl AcquireStatus {
    /// Every status, in number order: the one table from numbers to
    /// statuses.
    pub const ALL: [AcquireStatus; 10] = {
        use AcquireStatus::*;
        [
            Success,
            MagicMwErr,
            LockedErr,
            BindErr,
            RegMrErr,
            AddressOutOfRangeErr,
            NoMem,
            NoMw,
            Reserved,
            ReservedNoReturn,
        ]
    };

    /// The status with number `v`, or None for numbers outside the table.
    pub fn try_from_u8(v: u8) -> Option<AcquireStatus> {
        AcquireStatus::ALL.get(v as usize).copied()
    }

    /// The status with number `v`; unknown numbers are `Reserved`.
    pub fn from_u8(v: u8) -> AcquireStatus {
        AcquireStatus::try_from_u8(v).unwrap_or(AcquireStatus::Reserved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for v in 0..=11u8 {
            assert_eq!(Rc::from_u8(v) as u8, v);
        }
        assert_eq!(Rc::from_u8(200), Rc::Internal);
        for v in 0..=9u8 {
            assert_eq!(AcquireStatus::from_u8(v) as u8, v);
        }
        assert_eq!(AcquireStatus::from_u8(77), AcquireStatus::Reserved);
        assert_eq!(Rc::try_from_u8(12), None);
        assert_eq!(AcquireStatus::try_from_u8(10), None);
    }
}
