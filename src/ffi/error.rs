//! Return codes, the one map from core errors to codes, the thread-local
//! last error, and the version call.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};

use super::boundary::guard_pure;
use crate::client::Lease;
use crate::lease::Rc;
use crate::Error;

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
    /// A one-sided access failed at the NIC, and the lease never allowed it:
    /// outside the lease, wrong permission, relinquished, revoked early by
    /// a flag, or checked with NO_LOCAL_EXPIRE_CHECK past its deadline. A
    /// call refused because the lease ran out while it was in flight is
    /// PATRONUS_RC_LEASE_LOCAL_EXPIRED_ERR instead. The connection recovers
    /// in place either way.
    PATRONUS_RC_RDMA_PROTECTION_ERR = 6,
    /// An RDMA operation could not be executed.
    PATRONUS_RC_RDMA_EXECUTION_ERR = 7,
    /// The lease expired: by the local clock check (`now + epsilon >=
    /// deadline`) before the call was sent, or while the call was in flight
    /// (it passed the check and the memory node, which revokes no earlier
    /// than deadline + epsilon on its clock, had revoked it on arrival), or
    /// auto-extend came back to a lease the memory node had already closed.
    PATRONUS_RC_LEASE_LOCAL_EXPIRED_ERR = 8,
    /// Fault injection.
    PATRONUS_RC_MOCK_CRASHED = 9,
    /// Reserved (a default-constructed code).
    PATRONUS_RC_RESERVED = 10,
    /// A panic or broken invariant inside the library.
    PATRONUS_RC_INTERNAL = 11,
}

impl From<Rc> for PatronusRc {
    fn from(rc: Rc) -> Self {
        use PatronusRc::*;
        match rc {
            Rc::Ok => PATRONUS_RC_OK,
            Rc::NotFound => PATRONUS_RC_NOT_FOUND,
            Rc::NoMem => PATRONUS_RC_NO_MEM,
            Rc::Retry => PATRONUS_RC_RETRY,
            Rc::CacheStale => PATRONUS_RC_CACHE_STALE,
            Rc::Invalid => PATRONUS_RC_INVALID,
            Rc::RdmaProtectionErr => PATRONUS_RC_RDMA_PROTECTION_ERR,
            Rc::RdmaExecutionErr => PATRONUS_RC_RDMA_EXECUTION_ERR,
            Rc::LeaseLocalExpiredErr => PATRONUS_RC_LEASE_LOCAL_EXPIRED_ERR,
            Rc::MockCrashed => PATRONUS_RC_MOCK_CRASHED,
            Rc::Reserved => PATRONUS_RC_RESERVED,
            Rc::Internal => PATRONUS_RC_INTERNAL,
        }
    }
}

impl PatronusRc {
    /// The static text `patronus_rc_str` returns.
    fn describe(self) -> &'static CStr {
        use PatronusRc::*;
        match self {
            PATRONUS_RC_OK => c"ok",
            PATRONUS_RC_NOT_FOUND => c"not found",
            PATRONUS_RC_NO_MEM => c"out of memory or resources",
            PATRONUS_RC_RETRY => c"retry",
            PATRONUS_RC_CACHE_STALE => c"cache stale",
            PATRONUS_RC_INVALID => c"invalid argument or refused request",
            PATRONUS_RC_RDMA_PROTECTION_ERR => c"RDMA protection error",
            PATRONUS_RC_RDMA_EXECUTION_ERR => c"RDMA execution error",
            PATRONUS_RC_LEASE_LOCAL_EXPIRED_ERR => c"lease expired (local check)",
            PATRONUS_RC_MOCK_CRASHED => c"mock crashed",
            PATRONUS_RC_RESERVED => c"reserved",
            PATRONUS_RC_INTERNAL => c"internal error",
        }
    }
}

/// The code C sees for a core error: the only place an `Error` becomes a
/// return code.
pub(crate) fn rc_of(e: &Error) -> PatronusRc {
    use PatronusRc::*;
    match e {
        Error::Invalid(_) => PATRONUS_RC_INVALID,
        Error::NotFound(_) => PATRONUS_RC_NOT_FOUND,
        Error::NoMem(_) => PATRONUS_RC_NO_MEM,
        Error::Timeout(_) | Error::Fabric(_) => PATRONUS_RC_RDMA_EXECUTION_ERR,
        Error::Keeper(_) => PATRONUS_RC_RETRY,
        Error::NodesDied(_) => PATRONUS_RC_RDMA_EXECUTION_ERR,
        Error::Refused { rc, .. } => (*rc).into(),
        Error::Io { .. } => PATRONUS_RC_INTERNAL,
    }
}

/// Why a call failed: the code it returns and the cause, which the
/// boundary records as "<fn>: <msg>".
#[derive(Debug)]
pub(crate) struct Failure {
    pub rc: PatronusRc,
    pub msg: String,
}

/// The result of an exported function's body.
pub(crate) type FfiResult<T> = Result<T, Failure>;

impl Failure {
    /// A failure with code `rc`.
    pub fn new(rc: PatronusRc, msg: impl Into<String>) -> Failure {
        Failure {
            rc,
            msg: msg.into(),
        }
    }
    /// A `PATRONUS_RC_INVALID` failure.
    pub fn invalid(msg: impl Into<String>) -> Failure {
        Failure::new(PatronusRc::PATRONUS_RC_INVALID, msg)
    }
    /// "<param> is NULL".
    pub fn null(param: &str) -> Failure {
        Failure::invalid(format!("{param} is NULL"))
    }
}

impl From<Error> for Failure {
    /// The core's error, its Display naming what failed.
    fn from(e: Error) -> Failure {
        Failure::new(rc_of(&e), e.to_string())
    }
}

/// A lease-layer code the core returned as `Ok(rc)`: OK passes, any other
/// code fails with a message naming the lease and the code.
pub(crate) fn lease_rc(rc: Rc, lease: &Lease) -> FfiResult<PatronusRc> {
    let c = PatronusRc::from(rc);
    if c == PatronusRc::PATRONUS_RC_OK {
        return Ok(c);
    }
    let id = if lease.slot == u32::MAX {
        "without id".to_string()
    } else {
        lease.slot.to_string()
    };
    Err(Failure::new(
        c,
        format!(
            "lease {id} (node {}, dir {}): {c:?} ({})",
            lease.node,
            lease.dir,
            c.describe().to_string_lossy()
        ),
    ))
}

/// The last error of a thread. `current` false means "none": clearing
/// keeps the old string alive, so a pointer C got from
/// `patronus_last_error()` stays valid until the next failure replaces it.
struct Last {
    msg: Option<CString>,
    current: bool,
}

thread_local! {
    static LAST: RefCell<Last> = const {
        RefCell::new(Last { msg: None, current: false })
    };
}

/// Records this thread's last error (nothing during thread teardown).
pub(crate) fn set_last_error(msg: String) {
    let mut m = msg.into_bytes();
    m.retain(|&c| c != 0);
    let c = CString::new(m).unwrap_or_default();
    let _ = LAST.try_with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            *l = Last {
                msg: Some(c),
                current: true,
            };
        }
    });
}

/// Forgets this thread's last error (`patronus_last_error()` is NULL).
pub(crate) fn clear_last_error() {
    let _ = LAST.try_with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            l.current = false;
        }
    });
}

/// This thread's last error message, or NULL when the last `patronus_*`
/// call on this thread succeeded.
///
/// The rule: every `patronus_*` call clears the last error when it starts
/// and sets it when it fails, so right after any call (also one returning
/// `void`) a non-NULL `patronus_last_error()` means that call failed, and
/// the message says why ("<function>: <cause>"). The exceptions are the
/// pure helpers that never fail and leave the last error as it is:
/// `patronus_last_error`, `patronus_clear_last_error`, `patronus_rc_str`,
/// `patronus_abi_version`, `patronus_gaddr_node`, `patronus_gaddr_offset`
/// and `patronus_gaddr_is_null`.
///
/// Ownership: the string belongs to the library. It stays valid until the
/// next `patronus_*` call on this thread (copy it to keep it). Each thread
/// has its own last error.
#[no_mangle]
pub extern "C" fn patronus_last_error() -> *const c_char {
    guard_pure("patronus_last_error", || {
        LAST.try_with(|l| match l.try_borrow() {
            Ok(l) if l.current => l.msg.as_ref().map_or(std::ptr::null(), |m| m.as_ptr()),
            _ => std::ptr::null(),
        })
        .unwrap_or(std::ptr::null())
    })
}

/// Forgets this thread's last error (`patronus_last_error()` returns NULL).
#[no_mangle]
pub extern "C" fn patronus_clear_last_error() {
    guard_pure("patronus_clear_last_error", clear_last_error)
}

/// A static description of a return code ("unknown return code" for values
/// outside the table). Never NULL; do not free. Never fails.
#[no_mangle]
pub extern "C" fn patronus_rc_str(rc: i32) -> *const c_char {
    guard_pure("patronus_rc_str", || {
        u8::try_from(rc)
            .ok()
            .and_then(Rc::try_from_u8)
            .map_or(c"unknown return code", |r| PatronusRc::from(r).describe())
            .as_ptr()
    })
}

/// The C ABI version this library implements (bumped on incompatible
/// changes); bindings compare it with what they were written for.
pub const PATRONUS_ABI_VERSION: u32 = 5;

/// Returns `PATRONUS_ABI_VERSION` of the loaded library. Never fails.
#[no_mangle]
pub extern "C" fn patronus_abi_version() -> u32 {
    guard_pure("patronus_abi_version", || PATRONUS_ABI_VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rc_keeps_its_number_in_c() {
        for rc in Rc::ALL {
            assert_eq!(PatronusRc::from(rc) as i32, rc as u8 as i32, "{rc:?}");
        }
    }

    #[test]
    fn rc_str_covers_every_code_and_nothing_else() {
        let s = |v| {
            // SAFETY: patronus_rc_str returns a static NUL-terminated string.
            unsafe { CStr::from_ptr(patronus_rc_str(v)) }
                .to_str()
                .unwrap()
                .to_string()
        };
        for v in 0..=11 {
            assert_ne!(s(v), "unknown return code", "{v}");
        }
        for v in [-1, 12, 255, 256, i32::MAX] {
            assert_eq!(s(v), "unknown return code", "{v}");
        }
    }
}
