//! The one boundary every exported function runs inside.
//!
//! [`boundary`] clears the calling thread's last error (unless the function
//! is one of the pure helpers that never fail), runs the body under
//! `catch_unwind`, and turns what came out into a C value: a body's
//! [`Failure`] is recorded as "<fn>: <cause>" and becomes the return type's
//! failure value; a panic is recorded as "internal panic in <fn>: <payload>"
//! and becomes the failure value for `PATRONUS_RC_INTERNAL`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::error::{clear_last_error, set_last_error, FfiResult, PatronusRc};

/// What a function returns to C when it fails with `rc` (or panicked:
/// `PATRONUS_RC_INTERNAL`).
pub(crate) trait Fallback {
    /// The failure value.
    fn fallback(rc: PatronusRc) -> Self;
}

impl Fallback for PatronusRc {
    fn fallback(rc: PatronusRc) -> Self {
        rc
    }
}
impl<T> Fallback for *mut T {
    fn fallback(_: PatronusRc) -> Self {
        std::ptr::null_mut()
    }
}
impl<T> Fallback for *const T {
    fn fallback(_: PatronusRc) -> Self {
        std::ptr::null()
    }
}
impl Fallback for bool {
    fn fallback(_: PatronusRc) -> Self {
        false
    }
}
impl Fallback for () {
    fn fallback(_: PatronusRc) -> Self {}
}
macro_rules! zero_fallback {
    ($($t:ty),*) => {$(impl Fallback for $t { fn fallback(_: PatronusRc) -> Self { 0 } })*};
}
zero_fallback!(u16, u32, u64, usize);

/// The boundary of a call that clears the last error first; a failure
/// returns `T::fallback(rc)`.
pub(crate) fn guard<T: Fallback>(call: &'static str, f: impl FnOnce() -> FfiResult<T>) -> T {
    boundary(call, true, f).unwrap_or_else(T::fallback)
}

/// As [`guard`], for calls whose documented failure value is not the
/// type's usual one (e.g. `UINT32_MAX`).
pub(crate) fn guard_or<T>(
    call: &'static str,
    on_failure: T,
    f: impl FnOnce() -> FfiResult<T>,
) -> T {
    boundary(call, true, f).unwrap_or(on_failure)
}

/// The boundary of a pure helper that never fails (gaddr accessors,
/// `patronus_rc_str`, the last-error calls): it leaves the last error as it
/// is, so such a helper can be called between a failing call and reading
/// `patronus_last_error()`.
pub(crate) fn guard_pure<T: Fallback>(call: &'static str, f: impl FnOnce() -> T) -> T {
    boundary(call, false, || Ok(f())).unwrap_or_else(T::fallback)
}

/// Runs `f` inside the panic boundary; `Err(rc)` once the cause is recorded.
fn boundary<T>(
    call: &'static str,
    clear: bool,
    f: impl FnOnce() -> FfiResult<T>,
) -> Result<T, PatronusRc> {
    if clear {
        clear_last_error();
    }
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(fail)) => {
            set_last_error(format!("{call}: {}", fail.msg));
            Err(fail.rc)
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".into());
            set_last_error(format!("internal panic in {call}: {msg}"));
            Err(PatronusRc::PATRONUS_RC_INTERNAL)
        }
    }
}
