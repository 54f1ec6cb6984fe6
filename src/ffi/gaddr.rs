//! Global addresses: 16-bit node id + 48-bit buffer offset, as the original.

use super::boundary::guard;
use super::error::set_last_error;

/// A global address: low 48 bits offset, high 16 bits node id.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct patronus_gaddr_t {
    /// Raw value.
    pub val: u64,
}

const OFFSET_MASK: u64 = (1 << 48) - 1;

/// Builds a global address. An offset of 2^48 or more cannot be represented:
/// the result is the null address and `patronus_last_error()` says why.
#[no_mangle]
pub extern "C" fn patronus_gaddr(node_id: u16, offset: u64) -> patronus_gaddr_t {
    guard("patronus_gaddr", || {
        if offset > OFFSET_MASK {
            set_last_error(format!(
                "patronus_gaddr: offset {offset:#x} does not fit in 48 bits"
            ));
            return patronus_gaddr_t { val: 0 };
        }
        patronus_gaddr_t {
            val: (node_id as u64) << 48 | offset,
        }
    })
}

/// The node id of a global address.
#[no_mangle]
pub extern "C" fn patronus_gaddr_node(g: patronus_gaddr_t) -> u16 {
    (g.val >> 48) as u16
}

/// The buffer offset of a global address.
#[no_mangle]
pub extern "C" fn patronus_gaddr_offset(g: patronus_gaddr_t) -> u64 {
    g.val & OFFSET_MASK
}

/// True when the offset is 0 (the original's null convention).
#[no_mangle]
pub extern "C" fn patronus_gaddr_is_null(g: patronus_gaddr_t) -> bool {
    g.val & OFFSET_MASK == 0
}

impl super::boundary::PanicDefault for patronus_gaddr_t {
    fn panic_value() -> Self {
        patronus_gaddr_t { val: 0 }
    }
}
