//! The panic boundary every exported function runs inside.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::error::{set_last_error, PatronusRc};

/// What a function returns when it panicked.
pub trait PanicDefault {
    /// The fallback value.
    fn panic_value() -> Self;
}

impl PanicDefault for PatronusRc {
    fn panic_value() -> Self {
        PatronusRc::PATRONUS_RC_INTERNAL
    }
}
impl<T> PanicDefault for *mut T {
    fn panic_value() -> Self {
        std::ptr::null_mut()
    }
}
impl<T> PanicDefault for *const T {
    fn panic_value() -> Self {
        std::ptr::null()
    }
}
impl PanicDefault for bool {
    fn panic_value() -> Self {
        false
    }
}
impl PanicDefault for () {
    fn panic_value() -> Self {}
}
macro_rules! zero_default {
    ($($t:ty),*) => {$(impl PanicDefault for $t { fn panic_value() -> Self { 0 } })*};
}
zero_default!(u8, u16, u32, u64, i64, usize);

/// Runs `f`; a panic becomes `T::panic_value()` and the thread's last error
/// says "internal panic in <name>: <payload>".
pub fn guard<T: PanicDefault>(name: &str, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".into());
            set_last_error(format!("internal panic in {name}: {msg}"));
            T::panic_value()
        }
    }
}
