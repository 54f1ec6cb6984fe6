//! Return codes, the thread-local last error, and version.

use std::cell::RefCell;
use std::ffi::{c_char, CString};

/// Return codes. Values equal the original `RC` (0..=10) plus
/// `PATRONUS_RC_INTERNAL` (a panic or broken invariant inside the library;
/// `patronus_last_error()` says where).
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatronusRc {
    /// Success.
    PATRONUS_RC_OK = 0,
    /// Not found.
    PATRONUS_RC_NOT_FOUND = 1,
    /// Out of memory or another pooled resource.
    PATRONUS_RC_NO_MEM = 2,
    /// Try again (lock held, transient).
    PATRONUS_RC_RETRY = 3,
    /// Cache stale.
    PATRONUS_RC_CACHE_STALE = 4,
    /// Invalid argument or refused request.
    PATRONUS_RC_INVALID = 5,
    /// A one-sided access failed at the NIC (outside the lease, revoked, ...).
    PATRONUS_RC_RDMA_PROTECTION_ERR = 6,
    /// An RDMA operation could not be executed.
    PATRONUS_RC_RDMA_EXECUTION_ERR = 7,
    /// The lease expired by the local clock check.
    PATRONUS_RC_LEASE_LOCAL_EXPIRED_ERR = 8,
    /// Fault injection.
    PATRONUS_RC_MOCK_CRASHED = 9,
    /// Reserved (a default-constructed code).
    PATRONUS_RC_RESERVED = 10,
    /// A panic or broken invariant inside the library.
    PATRONUS_RC_INTERNAL = 11,
}

thread_local! {
    static LAST: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Records this thread's last error.
pub fn set_last_error(msg: impl Into<String>) {
    let mut m = msg.into();
    m.retain(|c| c != '\0');
    let c = CString::new(m).unwrap_or_default();
    LAST.with(|l| *l.borrow_mut() = Some(c));
}

/// Records an error and returns `rc` (for `return fail(...)`).
pub fn fail(rc: PatronusRc, msg: impl Into<String>) -> PatronusRc {
    set_last_error(msg);
    rc
}

/// This thread's last error message, or NULL when none was recorded.
///
/// Ownership: the string belongs to the library. It stays valid until the
/// next `patronus_*` call on this thread that records or clears an error.
/// Successful calls do not clear it (like errno); call
/// `patronus_clear_last_error()` to reset it.
#[no_mangle]
pub extern "C" fn patronus_last_error() -> *const c_char {
    LAST.with(|l| match &*l.borrow() {
        Some(c) => c.as_ptr(),
        None => std::ptr::null(),
    })
}

/// Forgets this thread's last error (`patronus_last_error()` returns NULL).
#[no_mangle]
pub extern "C" fn patronus_clear_last_error() {
    LAST.with(|l| *l.borrow_mut() = None);
}

/// A static description of a return code ("unknown return code" for values
/// outside the table). Never NULL; do not free.
#[no_mangle]
pub extern "C" fn patronus_rc_str(rc: i32) -> *const c_char {
    let s: &'static [u8] = match rc {
        0 => b"ok\0",
        1 => b"not found\0",
        2 => b"out of memory or resources\0",
        3 => b"retry\0",
        4 => b"cache stale\0",
        5 => b"invalid argument or refused request\0",
        6 => b"RDMA protection error\0",
        7 => b"RDMA execution error\0",
        8 => b"lease expired (local check)\0",
        9 => b"mock crashed\0",
        10 => b"reserved\0",
        11 => b"internal error\0",
        _ => b"unknown return code\0",
    };
    s.as_ptr() as *const c_char
}

/// The C ABI version this library implements (bumped on incompatible
/// changes); bindings compare it with what they were written for.
pub const PATRONUS_ABI_VERSION: u32 = 1;

/// Returns `PATRONUS_ABI_VERSION` of the loaded library.
#[no_mangle]
pub extern "C" fn patronus_abi_version() -> u32 {
    PATRONUS_ABI_VERSION
}
