//! The handle layer: every opaque C type, the Rust value it stands for and
//! how that value is owned, and the few helpers that turn C pointers into
//! Rust references (rustls-ffi's `Castable`). Every `from_raw`/`into_raw`,
//! NULL check and view of caller memory in src/ffi happens here.

#![allow(non_camel_case_types)]

use std::ffi::{c_char, CStr};
use std::sync::Arc;

use super::batch::BatchState;
use super::error::{Failure, FfiResult};
use super::node::Node;
use crate::client::Lease;

/// One node of a Patronus cluster (opaque). Shared by every thread that
/// uses it; `patronus_free` releases it.
pub struct patronus_t {
    _private: [u8; 0],
}

/// A lease (opaque). Free it with `patronus_lease_free` (after
/// relinquishing, or to drop it without relinquishing).
pub struct patronus_lease_t {
    _private: [u8; 0],
}

/// A batch of one-sided operations towards one directory (opaque).
pub struct patronus_batch_t {
    _private: [u8; 0],
}

/// A handle on a protected hash table (opaque), usable by the client
/// thread that made it. Free it with `patronus_kv_free`.
pub struct patronus_kv_t {
    _private: [u8; 0],
}

/// The handle is an `Arc::into_raw` pointer: shared across threads.
pub(crate) struct OwnershipArc;
/// The handle is a `Box::into_raw` pointer: one owner, one thread at a time.
pub(crate) struct OwnershipBox;

/// Ties an opaque C type to the Rust value behind it and its ownership.
pub(crate) trait Castable {
    /// `OwnershipArc` or `OwnershipBox`.
    type Ownership;
    /// The value a handle points to.
    type RustType;
}

impl Castable for patronus_t {
    type Ownership = OwnershipArc;
    type RustType = Node;
}
impl Castable for patronus_lease_t {
    type Ownership = OwnershipBox;
    type RustType = Lease;
}
impl Castable for patronus_kv_t {
    type Ownership = OwnershipBox;
    type RustType = super::kv::KvHandle;
}
impl Castable for patronus_batch_t {
    type Ownership = OwnershipBox;
    type RustType = BatchState;
}

/// Hands an Arc to C (one strong count, given back by [`arc_take`]).
pub(crate) fn arc_into_raw<C: Castable<Ownership = OwnershipArc>>(v: Arc<C::RustType>) -> *mut C {
    Arc::into_raw(v) as *mut C
}

/// A new strong reference to the value behind an Arc handle.
pub(crate) fn arc_clone<C: Castable<Ownership = OwnershipArc>>(
    p: *const C,
    param: &str,
) -> FfiResult<Arc<C::RustType>> {
    if p.is_null() {
        return Err(Failure::null(param));
    }
    let raw = p as *const C::RustType;
    // SAFETY: a non-NULL handle came from `arc_into_raw` and C has not
    // given it back yet (the documented contract), so its strong count is
    // at least one while we add ours.
    unsafe {
        Arc::increment_strong_count(raw);
        Ok(Arc::from_raw(raw))
    }
}

/// Takes C's strong reference back (the handle is dead afterwards).
pub(crate) fn arc_take<C: Castable<Ownership = OwnershipArc>>(
    p: *const C,
) -> Option<Arc<C::RustType>> {
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` came from `arc_into_raw` and is given back once
    // (contract); this consumes C's strong count.
    Some(unsafe { Arc::from_raw(p as *const C::RustType) })
}

/// Hands a Box to C (freed by [`box_free`]).
pub(crate) fn box_into_raw<C: Castable<Ownership = OwnershipBox>>(v: C::RustType) -> *mut C {
    Box::into_raw(Box::new(v)) as *mut C
}

/// As [`box_into_raw`], for a value that is boxed already.
pub(crate) fn boxed_into_raw<C: Castable<Ownership = OwnershipBox>>(v: Box<C::RustType>) -> *mut C {
    Box::into_raw(v) as *mut C
}

/// Frees a Box handle; NULL is a no-op.
pub(crate) fn box_free<C: Castable<Ownership = OwnershipBox>>(p: *mut C) {
    if !p.is_null() {
        // SAFETY: `p` came from `box_into_raw` and is freed once (contract).
        drop(unsafe { Box::from_raw(p as *mut C::RustType) });
    }
}

/// Borrows the value behind a handle of either kind.
pub(crate) fn try_ref<'a, C: Castable>(p: *const C, param: &str) -> FfiResult<&'a C::RustType> {
    if p.is_null() {
        return Err(Failure::null(param));
    }
    // SAFETY: a non-NULL handle points to a live value of its Rust type
    // (it came from `*_into_raw` and was not freed: contract); C does not
    // mutate it behind our back (it is opaque).
    Ok(unsafe { &*(p as *const C::RustType) })
}

/// Borrows the value behind a Box handle mutably.
pub(crate) fn try_mut<'a, C: Castable<Ownership = OwnershipBox>>(
    p: *mut C,
    param: &str,
) -> FfiResult<&'a mut C::RustType> {
    if p.is_null() {
        return Err(Failure::null(param));
    }
    // SAFETY: as in `try_ref`; a Box handle is used by one thread at a
    // time and not aliased during the call (contract).
    Ok(unsafe { &mut *(p as *mut C::RustType) })
}

/// `n` writable elements of caller memory at `ptr` (an output array).
pub(crate) fn out_slice<'a, T>(ptr: *mut T, n: usize, param: &str) -> FfiResult<&'a mut [T]> {
    if ptr.is_null() {
        return Err(Failure::null(param));
    }
    if n > MAX_IO / std::mem::size_of::<T>().max(1) {
        return Err(Failure::invalid(format!(
            "{param}: {n} elements is too many"
        )));
    }
    // SAFETY: `ptr` points to `n` writable, initialised-or-not elements of
    // T owned by the caller for the duration of the call (contract); T is
    // a plain C struct, so writing over it drops nothing.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, n) })
}

/// Largest single transfer the C API accepts.
pub(crate) const MAX_IO: usize = 1 << 30;

/// `size` readable bytes of caller memory at `ptr` (NULL allowed when
/// `size` is 0).
pub(crate) fn bytes<'a>(ptr: *const c_char, size: usize, param: &str) -> FfiResult<&'a [u8]> {
    if size > MAX_IO {
        return Err(Failure::invalid(format!("size {size} is above 1 GiB")));
    }
    if size == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Failure::null(param));
    }
    // SAFETY: `ptr` points to `size` readable bytes (contract).
    Ok(unsafe { std::slice::from_raw_parts(ptr as *const u8, size) })
}

/// `size` writable bytes of caller memory at `ptr`.
pub(crate) fn bytes_mut<'a>(ptr: *mut c_char, size: usize, param: &str) -> FfiResult<&'a mut [u8]> {
    if size > MAX_IO {
        return Err(Failure::invalid(format!("size {size} is above 1 GiB")));
    }
    if size == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(Failure::null(param));
    }
    // SAFETY: `ptr` points to `size` writable bytes (contract).
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, size) })
}

/// A NUL-terminated UTF-8 string; NULL gives None.
pub(crate) fn opt_str<'a>(s: *const c_char, param: &str) -> FfiResult<Option<&'a str>> {
    if s.is_null() {
        return Ok(None);
    }
    // SAFETY: a non-NULL `s` is NUL-terminated and readable (contract).
    let c = unsafe { CStr::from_ptr(s) };
    c.to_str()
        .map(Some)
        .map_err(|_| Failure::invalid(format!("{param} is not valid UTF-8")))
}

/// A required NUL-terminated UTF-8 string.
pub(crate) fn req_str<'a>(s: *const c_char, param: &str) -> FfiResult<&'a str> {
    opt_str(s, param)?.ok_or_else(|| Failure::null(param))
}

/// Reads a plain C struct the caller passed by pointer; None for NULL.
pub(crate) fn read_in<T: Copy>(p: *const T) -> Option<T> {
    if p.is_null() {
        return None;
    }
    // SAFETY: a non-NULL `p` points to an initialised `T` (contract); the
    // types read this way accept every bit pattern in their fields.
    Some(unsafe { p.read_unaligned() })
}

/// Writes an output parameter; NULL means the caller does not want it.
pub(crate) fn write_out<T>(p: *mut T, v: T) {
    if !p.is_null() {
        // SAFETY: a non-NULL output pointer is writable (contract).
        unsafe { p.write_unaligned(v) };
    }
}

/// Hands a value to a caller's `(buf, cap, len_out)`: `*len_out` gets its
/// length either way; PATRONUS_RC_NO_MEM (nothing copied) when it does not
/// fit in `cap` bytes.
pub(crate) fn value_out(
    v: &[u8],
    buf: *mut std::ffi::c_void,
    cap: usize,
    len_out: *mut usize,
) -> FfiResult<super::error::PatronusRc> {
    write_out(len_out, v.len());
    if v.len() > cap {
        return Err(Failure::new(
            super::error::PatronusRc::PATRONUS_RC_NO_MEM,
            format!("value of {} bytes does not fit in {cap}", v.len()),
        ));
    }
    copy_out(v, buf as *mut u8, cap);
    Ok(super::error::PatronusRc::PATRONUS_RC_OK)
}

/// Copies bytes into caller memory that was checked when it was handed in
/// (a batch's output buffers, checked at prepare).
pub(crate) fn copy_out(src: &[u8], dst: *mut u8, cap: usize) {
    if dst.is_null() {
        return;
    }
    let n = src.len().min(cap);
    // SAFETY: the caller kept `dst` valid for `cap` bytes since it handed
    // it in (contract); `src` is library memory, so they do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, n) };
}
