//! Global addresses: 16-bit node id + 48-bit buffer offset, as the original.

use super::boundary::{guard, guard_pure, Fallback};
use super::error::{Failure, FfiResult, PatronusRc};

/// A global address: low 48 bits offset, high 16 bits node id.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct patronus_gaddr_t {
    /// Raw value.
    pub val: u64,
}

const OFFSET_MASK: u64 = (1 << 48) - 1;

impl patronus_gaddr_t {
    /// The null address.
    pub(crate) const NULL: patronus_gaddr_t = patronus_gaddr_t { val: 0 };

    /// The address of `offset` on node `node_id`.
    pub(crate) fn new(node_id: u16, offset: u64) -> FfiResult<patronus_gaddr_t> {
        if offset > OFFSET_MASK {
            return Err(Failure::invalid(format!(
                "offset {offset:#x} does not fit in 48 bits"
            )));
        }
        Ok(patronus_gaddr_t {
            val: (node_id as u64) << 48 | offset,
        })
    }

    /// The node id.
    pub(crate) fn node(self) -> u16 {
        (self.val >> 48) as u16
    }

    /// The buffer offset.
    pub(crate) fn offset(self) -> u64 {
        self.val & OFFSET_MASK
    }
}

impl Fallback for patronus_gaddr_t {
    fn fallback(_: PatronusRc) -> Self {
        patronus_gaddr_t::NULL
    }
}

/// Builds a global address. An offset of 2^48 or more cannot be represented:
/// the result is the null address and `patronus_last_error()` says why.
#[no_mangle]
pub extern "C" fn patronus_gaddr(node_id: u16, offset: u64) -> patronus_gaddr_t {
    guard("patronus_gaddr", || patronus_gaddr_t::new(node_id, offset))
}

/// The node id of a global address. Never fails.
#[no_mangle]
pub extern "C" fn patronus_gaddr_node(g: patronus_gaddr_t) -> u16 {
    guard_pure("patronus_gaddr_node", || g.node())
}

/// The buffer offset of a global address. Never fails.
#[no_mangle]
pub extern "C" fn patronus_gaddr_offset(g: patronus_gaddr_t) -> u64 {
    guard_pure("patronus_gaddr_offset", || g.offset())
}

/// True when the offset is 0 (the original's null convention). Never fails.
#[no_mangle]
pub extern "C" fn patronus_gaddr_is_null(g: patronus_gaddr_t) -> bool {
    guard_pure("patronus_gaddr_is_null", || g.offset() == 0)
}
