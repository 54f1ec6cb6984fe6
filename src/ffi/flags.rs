//! Flag constants (uint64_t bitsets) and the acquire status, with the bit
//! values of the original enums (API.md).

use super::boundary::Fallback;
use super::error::{Failure, FfiResult, PatronusRc};
use crate::lease::AcquireStatus;

/// No server GC task; the lease never expires (client deadline infinite).
pub const PATRONUS_ACQUIRE_NO_GC: u64 = 1u64 << 0;
/// Exclusive per-key lock held until relinquish or GC.
pub const PATRONUS_ACQUIRE_WITH_CONFLICT_DETECT: u64 = 1u64 << 1;
/// No protection region: no one-sided extension.
pub const PATRONUS_ACQUIRE_NO_BIND_PR: u64 = 1u64 << 2;
/// No memory window at all (pure RPC cost).
pub const PATRONUS_ACQUIRE_NO_BIND_ANY: u64 = 1u64 << 3;
/// Allocate `size` bytes with allocator `alloc_hint`, then lease them.
pub const PATRONUS_ACQUIRE_WITH_ALLOCATION: u64 = 1u64 << 4;
/// Allocate only (see patronus_alloc).
pub const PATRONUS_ACQUIRE_ONLY_ALLOCATION: u64 = 1u64 << 5;
/// Register a memory region instead of binding a window (baseline).
pub const PATRONUS_ACQUIRE_USE_MR: u64 = 1u64 << 6;
/// Client-only lease without any RPC.
pub const PATRONUS_ACQUIRE_NO_RPC: u64 = 1u64 << 7;
/// The server replies success without doing anything (debug).
pub const PATRONUS_ACQUIRE_DEBUG_SERVER_DO_NOTHING: u64 = 1u64 << 8;

/// Keep both windows bound on relinquish.
pub const PATRONUS_MODIFY_NO_RELINQUISH_UNBIND_ANY: u64 = 1u64 << 0;
/// Keep the protection-region window bound on relinquish.
pub const PATRONUS_MODIFY_NO_RELINQUISH_UNBIND_PR: u64 = 1u64 << 1;
/// GC ignores client extensions.
pub const PATRONUS_MODIFY_FORCE_UNBIND: u64 = 1u64 << 2;
/// Also free the object's memory (allocation leases).
pub const PATRONUS_MODIFY_WITH_DEALLOCATION: u64 = 1u64 << 3;
/// Free only (the dealloc path).
pub const PATRONUS_MODIFY_ONLY_DEALLOCATION: u64 = 1u64 << 4;
/// The server ignores the request.
pub const PATRONUS_MODIFY_SERVER_DO_NOTHING: u64 = 1u64 << 5;
/// Wait until the revocation completed (always true in Patronus-rs).
pub const PATRONUS_MODIFY_WAIT_UNTIL_SUCCESS: u64 = 1u64 << 6;
/// The lease was MR-based.
pub const PATRONUS_MODIFY_USE_MR: u64 = 1u64 << 7;
/// Client-side invalidation only.
pub const PATRONUS_MODIFY_NO_RPC: u64 = 1u64 << 8;
/// rpc_extend: the server skips the update but reports success (debug).
pub const PATRONUS_MODIFY_DEBUG_EXTEND_DO_NOTHING: u64 = 1u64 << 9;

/// Skip the client's deadline check.
pub const PATRONUS_RW_NO_LOCAL_EXPIRE_CHECK: u64 = 1u64 << 0;
/// Extend the lease before it expires.
pub const PATRONUS_RW_WITH_AUTO_EXTEND: u64 = 1u64 << 1;
/// Per-lease client cache.
pub const PATRONUS_RW_WITH_CACHE: u64 = 1u64 << 2;
/// Use the directory's whole-region key (unprotected baseline).
pub const PATRONUS_RW_USE_UNIVERSAL_RKEY: u64 = 1u64 << 3;
/// Tracing only.
pub const PATRONUS_RW_ENABLE_TRACE: u64 = 1u64 << 4;
/// Perform the operation by RPC.
pub const PATRONUS_RW_USE_TWO_SIDED: u64 = 1u64 << 5;
/// Allow RPC operations larger than one message.
pub const PATRONUS_RW_USE_TWO_SIDED_AUTO_PACKING: u64 = 1u64 << 6;

/// Outcome of an acquisition. Values equal `AcquireRequestStatus`.
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatronusAcquireStatus {
    /// Granted.
    PATRONUS_ACQUIRE_SUCCESS = 0,
    /// Magic-MW fault injection hit (retried transparently).
    PATRONUS_ACQUIRE_MAGIC_MW_ERR = 1,
    /// The conflict lock is held.
    PATRONUS_ACQUIRE_LOCKED_ERR = 2,
    /// Binding the window failed.
    PATRONUS_ACQUIRE_BIND_ERR = 3,
    /// Registering the MR failed.
    PATRONUS_ACQUIRE_REG_MR_ERR = 4,
    /// The range is outside the memory node's buffer.
    PATRONUS_ACQUIRE_ADDRESS_OUT_OF_RANGE_ERR = 5,
    /// The allocator returned nothing.
    PATRONUS_ACQUIRE_NO_MEM = 6,
    /// No memory window left.
    PATRONUS_ACQUIRE_NO_MW = 7,
    /// Never valid on the wire.
    PATRONUS_ACQUIRE_RESERVED = 8,
    /// Never valid on the wire.
    PATRONUS_ACQUIRE_RESERVED_NO_RETURN = 9,
}

impl From<AcquireStatus> for PatronusAcquireStatus {
    fn from(s: AcquireStatus) -> Self {
        use PatronusAcquireStatus::*;
        match s {
            AcquireStatus::Success => PATRONUS_ACQUIRE_SUCCESS,
            AcquireStatus::MagicMwErr => PATRONUS_ACQUIRE_MAGIC_MW_ERR,
            AcquireStatus::LockedErr => PATRONUS_ACQUIRE_LOCKED_ERR,
            AcquireStatus::BindErr => PATRONUS_ACQUIRE_BIND_ERR,
            AcquireStatus::RegMrErr => PATRONUS_ACQUIRE_REG_MR_ERR,
            AcquireStatus::AddressOutOfRangeErr => PATRONUS_ACQUIRE_ADDRESS_OUT_OF_RANGE_ERR,
            AcquireStatus::NoMem => PATRONUS_ACQUIRE_NO_MEM,
            AcquireStatus::NoMw => PATRONUS_ACQUIRE_NO_MW,
            AcquireStatus::Reserved => PATRONUS_ACQUIRE_RESERVED,
            AcquireStatus::ReservedNoReturn => PATRONUS_ACQUIRE_RESERVED_NO_RETURN,
        }
    }
}

impl Fallback for PatronusAcquireStatus {
    fn fallback(_: PatronusRc) -> Self {
        PatronusAcquireStatus::PATRONUS_ACQUIRE_RESERVED
    }
}

/// Unknown bits in a flag argument are refused and named.
pub(crate) fn check_flags(flag: u64, all: u64, what: &str) -> FfiResult<()> {
    if flag & !all != 0 {
        return Err(Failure::invalid(format!(
            "flag {flag:#x} has bits {:#x} that are not {what} flags",
            flag & !all
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_keeps_its_number_in_c() {
        for s in AcquireStatus::ALL {
            assert_eq!(
                PatronusAcquireStatus::from(s) as i32,
                s as u8 as i32,
                "{s:?}"
            );
        }
    }
}
