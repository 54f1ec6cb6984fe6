//! Leases, the data path, batches and allocation.
//!
//! Every call here runs on the calling thread's client thread of the node
//! (see `patronus_register_client_thread`).

#![allow(non_camel_case_types)]

use std::ffi::c_char;

use super::boundary::guard;
use super::error::{fail, set_last_error, PatronusRc};
use super::flags::PatronusAcquireStatus;
use super::gaddr::patronus_gaddr_t;
use super::node::{err_rc, node_ref, patronus_t, rc_to_c, with_client};
use crate::client::{Batch, Lease};
use crate::lease::flags::{acquire, modify, rw};

/// A lease (opaque). Free it with `patronus_lease_free` (after
/// relinquishing, or to drop it without relinquishing).
pub struct patronus_lease_t {
    pub(crate) l: Lease,
}

/// A batch of one-sided operations towards one directory (opaque).
pub struct patronus_batch_t {
    b: Batch,
    /// Where each prepared operation's result goes: (ptr, len), null for
    /// writes.
    outs: Vec<(*mut u8, usize)>,
}

const INVALID: PatronusRc = PatronusRc::PATRONUS_RC_INVALID;
/// Largest single transfer the C API accepts.
const MAX_IO: usize = 1 << 30;

fn lease_mut<'a>(call: &str, lease: *mut patronus_lease_t) -> Option<&'a mut Lease> {
    if lease.is_null() {
        set_last_error(format!("{call}: lease is NULL"));
        return None;
    }
    // SAFETY: a non-NULL lease comes from patronus_get_*lease and is not
    // freed (contract); the caller does not use it from two threads at once.
    Some(unsafe { &mut (*lease).l })
}

fn lease_ref<'a>(lease: *const patronus_lease_t) -> Option<&'a Lease> {
    if lease.is_null() {
        set_last_error("lease accessor: lease is NULL");
        return None;
    }
    // SAFETY: as in lease_mut, read-only.
    Some(unsafe { &(*lease).l })
}

fn check_flags(call: &str, flag: u64, all: u64, what: &str) -> bool {
    if flag & !all != 0 {
        set_last_error(format!(
            "{call}: flag {flag:#x} has bits {:#x} that are not {what} flags",
            flag & !all
        ));
        return false;
    }
    true
}

#[allow(clippy::too_many_arguments)]
fn get_lease(
    call: &str,
    write: bool,
    p: *mut patronus_t,
    node_id: u16,
    dir_id: u16,
    bind_gaddr: patronus_gaddr_t,
    alloc_hint: u64,
    size: usize,
    ns: u64,
    flag: u64,
) -> *mut patronus_lease_t {
    let Some(p) = node_ref(call, p) else {
        return std::ptr::null_mut();
    };
    if !check_flags(call, flag, acquire::ALL, "AcquireRequest") {
        return std::ptr::null_mut();
    }
    if size == 0 || size > MAX_IO {
        set_last_error(format!("{call}: size {size} must be 1 byte to 1 GiB"));
        return std::ptr::null_mut();
    }
    let off = bind_gaddr.val & ((1 << 48) - 1);
    let r = with_client(call, p, |c| {
        if write {
            c.get_wlease(node_id, dir_id, off, alloc_hint, size as u64, ns, flag)
        } else {
            c.get_rlease(node_id, dir_id, off, alloc_hint, size as u64, ns, flag)
        }
    });
    match r {
        None => std::ptr::null_mut(),
        Some(Ok(l)) => Box::into_raw(Box::new(patronus_lease_t { l })),
        Some(Err(crate::Error::Invalid(m))) => {
            set_last_error(format!("{call}: {m}"));
            std::ptr::null_mut()
        }
        Some(Err(e)) => {
            // Timeouts and fabric failures: a failed lease, never NULL.
            err_rc(call, &e);
            Box::into_raw(Box::new(patronus_lease_t {
                l: Lease::failed(crate::lease::AcquireStatus::Reserved as u8, node_id, dir_id),
            }))
        }
    }
}

/// Acquires a read lease on `[bind_gaddr.offset, +size)` of directory
/// `dir_id` of node `node_id` for `ns` nanoseconds (0 with
/// PATRONUS_ACQUIRE_NO_GC: forever). With PATRONUS_ACQUIRE_WITH_ALLOCATION
/// the object is allocated by allocator `alloc_hint` and `bind_gaddr` must
/// be null. Never NULL for a well-formed call: a refused lease has
/// `patronus_lease_success()` false and `patronus_lease_ec()` says why.
/// NULL (with `patronus_last_error()`) for invalid arguments or when this
/// thread is not a client thread. Ownership: free with
/// `patronus_lease_free`.
#[no_mangle]
pub extern "C" fn patronus_get_rlease(
    p: *mut patronus_t,
    node_id: u16,
    dir_id: u16,
    bind_gaddr: patronus_gaddr_t,
    alloc_hint: u64,
    size: usize,
    ns: u64,
    flag: u64,
) -> *mut patronus_lease_t {
    guard("patronus_get_rlease", || {
        get_lease(
            "patronus_get_rlease",
            false,
            p,
            node_id,
            dir_id,
            bind_gaddr,
            alloc_hint,
            size,
            ns,
            flag,
        )
    })
}

/// Acquires a write lease (read, write and atomics); as
/// `patronus_get_rlease`.
#[no_mangle]
pub extern "C" fn patronus_get_wlease(
    p: *mut patronus_t,
    node_id: u16,
    dir_id: u16,
    bind_gaddr: patronus_gaddr_t,
    alloc_hint: u64,
    size: usize,
    ns: u64,
    flag: u64,
) -> *mut patronus_lease_t {
    guard("patronus_get_wlease", || {
        get_lease(
            "patronus_get_wlease",
            true,
            p,
            node_id,
            dir_id,
            bind_gaddr,
            alloc_hint,
            size,
            ns,
            flag,
        )
    })
}

/// Gives the lease back: the memory node revokes its windows at once (see
/// the PATRONUS_MODIFY_* flags). Relinquishing twice is PATRONUS_RC_OK.
/// The handle stays valid (free it with `patronus_lease_free`).
#[no_mangle]
pub extern "C" fn patronus_relinquish(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    hint: u64,
    flag: u64,
) -> PatronusRc {
    guard("patronus_relinquish", || {
        let call = "patronus_relinquish";
        let Some(p) = node_ref(call, p) else {
            return INVALID;
        };
        let Some(l) = lease_mut(call, lease) else {
            return INVALID;
        };
        if !check_flags(call, flag, modify::ALL, "LeaseModify") {
            return INVALID;
        }
        match with_client(call, p, |c| c.relinquish(l, hint, flag)) {
            None => INVALID,
            Some(Ok(rc)) => rc_to_c(rc),
            Some(Err(e)) => err_rc(call, &e),
        }
    })
}

fn extend_impl(
    call: &str,
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    ns: u64,
    flag: u64,
    rpc: bool,
) -> PatronusRc {
    let Some(p) = node_ref(call, p) else {
        return INVALID;
    };
    let Some(l) = lease_mut(call, lease) else {
        return INVALID;
    };
    if !check_flags(call, flag, modify::ALL, "LeaseModify") {
        return INVALID;
    }
    let r = with_client(call, p, |c| {
        if rpc {
            c.rpc_extend(l, ns, flag)
        } else {
            c.extend(l, ns, flag)
        }
    });
    match r {
        None => INVALID,
        Some(Ok(rc)) => {
            if rc != crate::lease::Rc::Ok {
                set_last_error(format!(
                    "{call}: extension refused ({rc:?}: the lease has no protection region, was revoked, or would exceed the cap)"
                ));
            }
            rc_to_c(rc)
        }
        Some(Err(e)) => err_rc(call, &e),
    }
}

/// Extends the lease by `ns` with a one-sided CAS on its protection region
/// (no memory-node CPU). PATRONUS_RC_INVALID when the extension cannot be
/// granted (revoked, no protection region, cap reached).
#[no_mangle]
pub extern "C" fn patronus_extend(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    ns: u64,
    flag: u64,
) -> PatronusRc {
    guard("patronus_extend", || {
        extend_impl("patronus_extend", p, lease, ns, flag, false)
    })
}

/// Extends the lease by `ns` through an RPC to its directory.
#[no_mangle]
pub extern "C" fn patronus_rpc_extend(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    ns: u64,
    flag: u64,
) -> PatronusRc {
    guard("patronus_rpc_extend", || {
        extend_impl("patronus_rpc_extend", p, lease, ns, flag, true)
    })
}

/// Turns a read lease into a write lease: acquires the write lease, then
/// relinquishes `lease`. Returns the new lease (free it separately); a
/// refused upgrade returns a failed lease and keeps `lease`. NULL for
/// invalid arguments (e.g. `lease` is already a write lease).
#[no_mangle]
pub extern "C" fn patronus_upgrade(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    flag: u64,
) -> *mut patronus_lease_t {
    guard("patronus_upgrade", || {
        let call = "patronus_upgrade";
        let Some(p) = node_ref(call, p) else {
            return std::ptr::null_mut();
        };
        let Some(l) = lease_mut(call, lease) else {
            return std::ptr::null_mut();
        };
        if !check_flags(call, flag, acquire::ALL, "AcquireRequest") {
            return std::ptr::null_mut();
        }
        match with_client(call, p, |c| c.upgrade(l, flag)) {
            Some(Ok(w)) => Box::into_raw(Box::new(patronus_lease_t { l: w })),
            Some(Err(e)) => {
                err_rc(call, &e);
                std::ptr::null_mut()
            }
            None => std::ptr::null_mut(),
        }
    })
}

/// Frees a lease handle without relinquishing (the memory node's GC
/// revokes it at expiry). NULL is a no-op.
#[no_mangle]
pub extern "C" fn patronus_lease_free(lease: *mut patronus_lease_t) {
    guard("patronus_lease_free", || {
        if !lease.is_null() {
            // SAFETY: `lease` came from this library and is freed once.
            drop(unsafe { Box::from_raw(lease) });
        }
    })
}

/// True when the lease was granted and is still held.
#[no_mangle]
pub extern "C" fn patronus_lease_success(lease: *const patronus_lease_t) -> bool {
    guard("patronus_lease_success", || {
        lease_ref(lease).is_some_and(|l| l.success())
    })
}

/// Why an acquisition failed (PATRONUS_ACQUIRE_SUCCESS when granted).
#[no_mangle]
pub extern "C" fn patronus_lease_ec(lease: *const patronus_lease_t) -> PatronusAcquireStatus {
    guard("patronus_lease_ec", || {
        use PatronusAcquireStatus::*;
        match lease_ref(lease).map(|l| l.ec()) {
            Some(0) => PATRONUS_ACQUIRE_SUCCESS,
            Some(1) => PATRONUS_ACQUIRE_MAGIC_MW_ERR,
            Some(2) => PATRONUS_ACQUIRE_LOCKED_ERR,
            Some(3) => PATRONUS_ACQUIRE_BIND_ERR,
            Some(4) => PATRONUS_ACQUIRE_REG_MR_ERR,
            Some(5) => PATRONUS_ACQUIRE_ADDRESS_OUT_OF_RANGE_ERR,
            Some(6) => PATRONUS_ACQUIRE_NO_MEM,
            Some(7) => PATRONUS_ACQUIRE_NO_MW,
            Some(9) => PATRONUS_ACQUIRE_RESERVED_NO_RETURN,
            _ => PATRONUS_ACQUIRE_RESERVED,
        }
    })
}

impl PanicDefault for PatronusAcquireStatus {
    fn panic_value() -> Self {
        PatronusAcquireStatus::PATRONUS_ACQUIRE_RESERVED
    }
}
use super::boundary::PanicDefault;

/// The lease's id at its directory (context slot; UINT64_MAX when none).
#[no_mangle]
pub extern "C" fn patronus_lease_id(lease: *const patronus_lease_t) -> u64 {
    guard("patronus_lease_id", || {
        lease_ref(lease).map_or(u64::MAX, |l| {
            if l.slot == u32::MAX {
                u64::MAX
            } else {
                l.slot as u64
            }
        })
    })
}

/// The object's address in the memory node's registered region.
#[no_mangle]
pub extern "C" fn patronus_lease_base_addr(lease: *const patronus_lease_t) -> u64 {
    guard("patronus_lease_base_addr", || {
        lease_ref(lease).map_or(0, |l| l.base.0)
    })
}

/// The object's size in bytes.
#[no_mangle]
pub extern "C" fn patronus_lease_buffer_size(lease: *const patronus_lease_t) -> usize {
    guard("patronus_lease_buffer_size", || {
        lease_ref(lease).map_or(0, |l| l.size as usize)
    })
}

/// The directory that granted the lease.
#[no_mangle]
pub extern "C" fn patronus_lease_dir_id(lease: *const patronus_lease_t) -> u16 {
    guard("patronus_lease_dir_id", || {
        lease_ref(lease).map_or(0, |l| l.dir)
    })
}

/// The lease's deadline in PatronusTime ns (UINT64_MAX: never expires).
#[no_mangle]
pub extern "C" fn patronus_lease_ddl_term(lease: *const patronus_lease_t) -> u64 {
    guard("patronus_lease_ddl_term", || {
        lease_ref(lease).map_or(0, |l| {
            if l.ddl == i64::MAX {
                u64::MAX
            } else {
                l.ddl.max(0) as u64
            }
        })
    })
}

/// Every granted lease can be read.
#[no_mangle]
pub extern "C" fn patronus_lease_is_readable(lease: *const patronus_lease_t) -> bool {
    guard("patronus_lease_is_readable", || {
        lease_ref(lease).is_some_and(|l| l.success())
    })
}

/// Write leases can be written and used for atomics.
#[no_mangle]
pub extern "C" fn patronus_lease_is_writable(lease: *const patronus_lease_t) -> bool {
    guard("patronus_lease_is_writable", || {
        lease_ref(lease).is_some_and(|l| l.success() && l.write)
    })
}

/// The global address of the leased object.
#[no_mangle]
pub extern "C" fn patronus_get_gaddr(
    p: *const patronus_t,
    lease: *const patronus_lease_t,
) -> patronus_gaddr_t {
    guard("patronus_get_gaddr", || {
        let null = patronus_gaddr_t { val: 0 };
        let (Some(p), Some(l)) = (node_ref("patronus_get_gaddr", p), lease_ref(lease)) else {
            return null;
        };
        let (node, off) = p.node.gaddr_of(l);
        super::gaddr::patronus_gaddr(node, off)
    })
}

/// Checked view of caller memory.
fn buf<'a>(call: &str, what: &str, ptr: *const c_char, size: usize) -> Option<&'a [u8]> {
    if size > MAX_IO {
        set_last_error(format!("{call}: size {size} is above 1 GiB"));
        return None;
    }
    if size == 0 {
        return Some(&[]);
    }
    if ptr.is_null() {
        set_last_error(format!("{call}: {what} is NULL"));
        return None;
    }
    // SAFETY: `ptr` points to `size` readable bytes (contract).
    Some(unsafe { std::slice::from_raw_parts(ptr as *const u8, size) })
}

fn buf_mut<'a>(call: &str, what: &str, ptr: *mut c_char, size: usize) -> Option<&'a mut [u8]> {
    if size > MAX_IO {
        set_last_error(format!("{call}: size {size} is above 1 GiB"));
        return None;
    }
    if size == 0 {
        return Some(&mut []);
    }
    if ptr.is_null() {
        set_last_error(format!("{call}: {what} is NULL"));
        return None;
    }
    // SAFETY: `ptr` points to `size` writable bytes (contract).
    Some(unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, size) })
}

fn finish(call: &str, r: Option<crate::Result<crate::lease::Rc>>) -> PatronusRc {
    match r {
        None => INVALID,
        Some(Ok(rc)) => {
            if rc != crate::lease::Rc::Ok {
                set_last_error(format!("{call}: {rc:?}"));
            }
            rc_to_c(rc)
        }
        Some(Err(e)) => err_rc(call, &e),
    }
}

/// Reads `size` bytes at `offset` of the leased object into `obuf` (one
/// RDMA READ through the lease's window). PATRONUS_RC_RDMA_PROTECTION_ERR
/// when the memory node refuses (outside the lease, revoked); the
/// connection recovers by itself. PATRONUS_RC_LEASE_LOCAL_EXPIRED_ERR when
/// the local clock says the lease expired (nothing was sent).
#[no_mangle]
pub extern "C" fn patronus_read(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    obuf: *mut c_char,
    size: usize,
    offset: usize,
    flag: u64,
) -> PatronusRc {
    guard("patronus_read", || {
        let call = "patronus_read";
        let Some(p) = node_ref(call, p) else {
            return INVALID;
        };
        let Some(l) = lease_mut(call, lease) else {
            return INVALID;
        };
        let Some(dst) = buf_mut(call, "obuf", obuf, size) else {
            return INVALID;
        };
        if !check_flags(call, flag, rw::ALL, "RW") {
            return INVALID;
        }
        finish(
            call,
            with_client(call, p, |c| c.read(l, dst, offset as u64, flag)),
        )
    })
}

/// Writes `size` bytes from `ibuf` at `offset` of the leased object.
#[no_mangle]
pub extern "C" fn patronus_write(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    ibuf: *const c_char,
    size: usize,
    offset: usize,
    flag: u64,
) -> PatronusRc {
    guard("patronus_write", || {
        let call = "patronus_write";
        let Some(p) = node_ref(call, p) else {
            return INVALID;
        };
        let Some(l) = lease_mut(call, lease) else {
            return INVALID;
        };
        let Some(src) = buf(call, "ibuf", ibuf, size) else {
            return INVALID;
        };
        if !check_flags(call, flag, rw::ALL, "RW") {
            return INVALID;
        }
        finish(
            call,
            with_client(call, p, |c| c.write(l, src, offset as u64, flag)),
        )
    })
}

#[allow(clippy::too_many_arguments)]
fn atomic(
    call: &str,
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    iobuf: *mut c_char,
    offset: usize,
    a: u64,
    b: u64,
    cas: bool,
    flag: u64,
) -> PatronusRc {
    let Some(p) = node_ref(call, p) else {
        return INVALID;
    };
    let Some(l) = lease_mut(call, lease) else {
        return INVALID;
    };
    let Some(out) = buf_mut(call, "iobuf", iobuf, 8) else {
        return INVALID;
    };
    if !check_flags(call, flag, rw::ALL, "RW") {
        return INVALID;
    }
    if offset % 8 != 0 {
        return fail(
            INVALID,
            format!("{call}: offset {offset} is not 8-byte aligned"),
        );
    }
    let r = with_client(call, p, |c| {
        if cas {
            c.cas(l, offset as u64, a, b, flag)
        } else {
            c.faa(l, offset as u64, a as i64, flag)
        }
    });
    match r {
        Some(Ok((rc, old))) => {
            if rc == crate::lease::Rc::Ok {
                out.copy_from_slice(&old.to_le_bytes());
            } else {
                set_last_error(format!("{call}: {rc:?}"));
            }
            rc_to_c(rc)
        }
        Some(Err(e)) => err_rc(call, &e),
        None => INVALID,
    }
}

/// 8-byte compare-and-swap at `offset` (8-aligned); `iobuf` receives the
/// old value (8 bytes, little endian) whether or not it swapped.
#[no_mangle]
pub extern "C" fn patronus_cas(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    iobuf: *mut c_char,
    offset: usize,
    compare: u64,
    swap: u64,
    flag: u64,
) -> PatronusRc {
    guard("patronus_cas", || {
        atomic(
            "patronus_cas",
            p,
            lease,
            iobuf,
            offset,
            compare,
            swap,
            true,
            flag,
        )
    })
}

/// 8-byte fetch-and-add at `offset` (8-aligned); `iobuf` receives the old
/// value.
#[no_mangle]
pub extern "C" fn patronus_faa(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    iobuf: *mut c_char,
    offset: usize,
    value: i64,
    flag: u64,
) -> PatronusRc {
    guard("patronus_faa", || {
        atomic(
            "patronus_faa",
            p,
            lease,
            iobuf,
            offset,
            value as u64,
            0,
            false,
            flag,
        )
    })
}

/// Two-sided read: the directory copies the bytes, checked against the
/// caller's lease exactly like a one-sided access.
#[no_mangle]
pub extern "C" fn patronus_rpc_read(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    obuf: *mut c_char,
    size: usize,
    offset: usize,
    flag: u64,
) -> PatronusRc {
    guard("patronus_rpc_read", || {
        let call = "patronus_rpc_read";
        let Some(p) = node_ref(call, p) else {
            return INVALID;
        };
        let Some(l) = lease_mut(call, lease) else {
            return INVALID;
        };
        let Some(dst) = buf_mut(call, "obuf", obuf, size) else {
            return INVALID;
        };
        if !check_flags(call, flag, rw::ALL, "RW") {
            return INVALID;
        }
        finish(
            call,
            with_client(call, p, |c| c.rpc_read(l, dst, offset as u64)),
        )
    })
}

/// Two-sided write, checked against the caller's lease.
#[no_mangle]
pub extern "C" fn patronus_rpc_write(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    ibuf: *const c_char,
    size: usize,
    offset: usize,
    flag: u64,
) -> PatronusRc {
    guard("patronus_rpc_write", || {
        let call = "patronus_rpc_write";
        let Some(p) = node_ref(call, p) else {
            return INVALID;
        };
        let Some(l) = lease_mut(call, lease) else {
            return INVALID;
        };
        let Some(src) = buf(call, "ibuf", ibuf, size) else {
            return INVALID;
        };
        if !check_flags(call, flag, rw::ALL, "RW") {
            return INVALID;
        }
        finish(
            call,
            with_client(call, p, |c| c.rpc_write(l, src, offset as u64)),
        )
    })
}

/// Two-sided compare-and-swap, checked against the caller's lease.
#[no_mangle]
pub extern "C" fn patronus_rpc_cas(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    iobuf: *mut c_char,
    offset: usize,
    compare: u64,
    swap: u64,
) -> PatronusRc {
    guard("patronus_rpc_cas", || {
        atomic(
            "patronus_rpc_cas",
            p,
            lease,
            iobuf,
            offset,
            compare,
            swap,
            true,
            rw::USE_TWO_SIDED,
        )
    })
}

/// Two-sided fetch-and-add, checked against the caller's lease.
#[no_mangle]
pub extern "C" fn patronus_rpc_faa(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    iobuf: *mut c_char,
    offset: usize,
    value: i64,
) -> PatronusRc {
    guard("patronus_rpc_faa", || {
        atomic(
            "patronus_rpc_faa",
            p,
            lease,
            iobuf,
            offset,
            value as u64,
            0,
            false,
            rw::USE_TWO_SIDED,
        )
    })
}

/// A new, empty batch (at most 16 operations, all towards one directory).
/// Ownership: free with `patronus_batch_free`.
#[no_mangle]
pub extern "C" fn patronus_batch_new() -> *mut patronus_batch_t {
    guard("patronus_batch_new", || {
        Box::into_raw(Box::new(patronus_batch_t {
            b: Batch::new(),
            outs: Vec::new(),
        }))
    })
}

/// Frees a batch (prepared operations are dropped). NULL is a no-op.
#[no_mangle]
pub extern "C" fn patronus_batch_free(b: *mut patronus_batch_t) {
    guard("patronus_batch_free", || {
        if !b.is_null() {
            // SAFETY: `b` came from patronus_batch_new and is freed once.
            drop(unsafe { Box::from_raw(b) });
        }
    })
}

fn batch_mut<'a>(call: &str, b: *mut patronus_batch_t) -> Option<&'a mut patronus_batch_t> {
    if b.is_null() {
        set_last_error(format!("{call}: batch is NULL"));
        return None;
    }
    // SAFETY: `b` came from patronus_batch_new and is used by one thread.
    Some(unsafe { &mut *b })
}

fn prepared(
    call: &str,
    r: Option<crate::Result<crate::lease::Rc>>,
    b: &mut patronus_batch_t,
    out: (*mut u8, usize),
) -> PatronusRc {
    let rc = finish(call, r);
    if rc == PatronusRc::PATRONUS_RC_OK {
        b.outs.push(out);
    }
    rc
}

/// Adds a READ to the batch; `obuf` is filled by `patronus_commit` and
/// must stay valid until then. PATRONUS_RC_NO_MEM when the batch is full.
#[no_mangle]
pub extern "C" fn patronus_prepare_read(
    p: *mut patronus_t,
    b: *mut patronus_batch_t,
    lease: *mut patronus_lease_t,
    obuf: *mut c_char,
    size: usize,
    offset: usize,
    flag: u64,
) -> PatronusRc {
    guard("patronus_prepare_read", || {
        let call = "patronus_prepare_read";
        let Some(p) = node_ref(call, p) else {
            return INVALID;
        };
        let Some(bt) = batch_mut(call, b) else {
            return INVALID;
        };
        let Some(l) = lease_mut(call, lease) else {
            return INVALID;
        };
        if buf_mut(call, "obuf", obuf, size).is_none() || !check_flags(call, flag, rw::ALL, "RW") {
            return INVALID;
        }
        let r = with_client(call, p, |c| {
            c.prepare_read(&mut bt.b, l, size, offset as u64, flag)
        });
        prepared(call, r, bt, (obuf as *mut u8, size))
    })
}

/// Adds a WRITE of `size` bytes from `ibuf` (copied now).
#[no_mangle]
pub extern "C" fn patronus_prepare_write(
    p: *mut patronus_t,
    b: *mut patronus_batch_t,
    lease: *mut patronus_lease_t,
    ibuf: *const c_char,
    size: usize,
    offset: usize,
    flag: u64,
) -> PatronusRc {
    guard("patronus_prepare_write", || {
        let call = "patronus_prepare_write";
        let Some(p) = node_ref(call, p) else {
            return INVALID;
        };
        let Some(bt) = batch_mut(call, b) else {
            return INVALID;
        };
        let Some(l) = lease_mut(call, lease) else {
            return INVALID;
        };
        let Some(src) = buf(call, "ibuf", ibuf, size) else {
            return INVALID;
        };
        if !check_flags(call, flag, rw::ALL, "RW") {
            return INVALID;
        }
        let r = with_client(call, p, |c| {
            c.prepare_write(&mut bt.b, l, src, offset as u64, flag)
        });
        prepared(call, r, bt, (std::ptr::null_mut(), 0))
    })
}

/// Adds a CAS; `iobuf` receives the old value at commit.
#[no_mangle]
pub extern "C" fn patronus_prepare_cas(
    p: *mut patronus_t,
    b: *mut patronus_batch_t,
    lease: *mut patronus_lease_t,
    iobuf: *mut c_char,
    offset: usize,
    compare: u64,
    swap: u64,
    flag: u64,
) -> PatronusRc {
    guard("patronus_prepare_cas", || {
        let call = "patronus_prepare_cas";
        let Some(p) = node_ref(call, p) else {
            return INVALID;
        };
        let Some(bt) = batch_mut(call, b) else {
            return INVALID;
        };
        let Some(l) = lease_mut(call, lease) else {
            return INVALID;
        };
        if buf_mut(call, "iobuf", iobuf, 8).is_none() || !check_flags(call, flag, rw::ALL, "RW") {
            return INVALID;
        }
        if offset % 8 != 0 {
            return fail(
                INVALID,
                format!("{call}: offset {offset} is not 8-byte aligned"),
            );
        }
        let r = with_client(call, p, |c| {
            c.prepare_cas(&mut bt.b, l, offset as u64, compare, swap, flag)
        });
        prepared(call, r, bt, (iobuf as *mut u8, 8))
    })
}

/// Adds a FAA; `iobuf` receives the old value at commit.
#[no_mangle]
pub extern "C" fn patronus_prepare_faa(
    p: *mut patronus_t,
    b: *mut patronus_batch_t,
    lease: *mut patronus_lease_t,
    iobuf: *mut c_char,
    offset: usize,
    value: i64,
    flag: u64,
) -> PatronusRc {
    guard("patronus_prepare_faa", || {
        let call = "patronus_prepare_faa";
        let Some(p) = node_ref(call, p) else {
            return INVALID;
        };
        let Some(bt) = batch_mut(call, b) else {
            return INVALID;
        };
        let Some(l) = lease_mut(call, lease) else {
            return INVALID;
        };
        if buf_mut(call, "iobuf", iobuf, 8).is_none() || !check_flags(call, flag, rw::ALL, "RW") {
            return INVALID;
        }
        if offset % 8 != 0 {
            return fail(
                INVALID,
                format!("{call}: offset {offset} is not 8-byte aligned"),
            );
        }
        let r = with_client(call, p, |c| {
            c.prepare_faa(&mut bt.b, l, offset as u64, value, flag)
        });
        prepared(call, r, bt, (iobuf as *mut u8, 8))
    })
}

/// Posts every prepared operation as one chain and waits for it. On
/// success the read buffers and atomic iobufs are filled; one failure fails
/// the batch (PATRONUS_RC_RDMA_PROTECTION_ERR) and the connection recovers.
/// The batch is empty afterwards either way; an empty batch is
/// PATRONUS_RC_OK.
#[no_mangle]
pub extern "C" fn patronus_commit(p: *mut patronus_t, b: *mut patronus_batch_t) -> PatronusRc {
    guard("patronus_commit", || {
        let call = "patronus_commit";
        let Some(p) = node_ref(call, p) else {
            return INVALID;
        };
        let Some(bt) = batch_mut(call, b) else {
            return INVALID;
        };
        let outs = std::mem::take(&mut bt.outs);
        let r = with_client(call, p, |c| c.commit(&mut bt.b));
        let rc = finish(call, r);
        if rc == PatronusRc::PATRONUS_RC_OK {
            for (i, (ptr, len)) in outs.into_iter().enumerate() {
                if ptr.is_null() || len == 0 {
                    continue;
                }
                if let Some(res) = bt.b.result(i) {
                    let n = res.len().min(len);
                    // SAFETY: the caller kept `ptr` valid for `len` bytes
                    // since prepare (contract).
                    unsafe { std::ptr::copy_nonoverlapping(res.as_ptr(), ptr, n) };
                }
            }
        }
        rc
    })
}

/// Allocates `size` bytes on directory `dir_id` of node `node_id` with the
/// allocator registered for `hint` (0: the default slab). The null gaddr
/// when nothing is available.
#[no_mangle]
pub extern "C" fn patronus_alloc(
    p: *mut patronus_t,
    node_id: u16,
    dir_id: u16,
    size: usize,
    hint: u64,
) -> patronus_gaddr_t {
    guard("patronus_alloc", || {
        let call = "patronus_alloc";
        let null = patronus_gaddr_t { val: 0 };
        let Some(p) = node_ref(call, p) else {
            return null;
        };
        if size == 0 || size > MAX_IO {
            set_last_error(format!("{call}: size {size} must be 1 byte to 1 GiB"));
            return null;
        }
        match with_client(call, p, |c| c.alloc(node_id, dir_id, size as u64, hint)) {
            Some(Ok(Some(off))) => super::gaddr::patronus_gaddr(node_id, off),
            Some(Ok(None)) => {
                set_last_error(format!(
                    "{call}: allocator {hint} of node {node_id} dir {dir_id} has no {size}-byte block"
                ));
                null
            }
            Some(Err(e)) => {
                err_rc(call, &e);
                null
            }
            None => null,
        }
    })
}

/// Frees a block from `patronus_alloc`. The memory node checks that it is
/// a live block of that allocator; a bad free changes nothing and is
/// reported through `patronus_last_error()`.
#[no_mangle]
pub extern "C" fn patronus_dealloc(
    p: *mut patronus_t,
    gaddr: patronus_gaddr_t,
    dir_id: u16,
    size: usize,
    hint: u64,
) {
    guard("patronus_dealloc", || {
        let call = "patronus_dealloc";
        let Some(p) = node_ref(call, p) else { return };
        let (node, off) = ((gaddr.val >> 48) as u16, gaddr.val & ((1 << 48) - 1));
        match with_client(call, p, |c| c.dealloc(node, dir_id, off, size as u64, hint)) {
            Some(Ok(crate::lease::Rc::Ok)) => {}
            Some(Ok(rc)) => {
                set_last_error(format!(
                    "{call}: node {node} refused to free {size} bytes at {off:#x} with allocator {hint} ({rc:?})"
                ));
            }
            Some(Err(e)) => {
                err_rc(call, &e);
            }
            None => {}
        }
    })
}
