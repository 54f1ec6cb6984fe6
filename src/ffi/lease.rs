//! Leases: acquiring, extending, upgrading and giving them back, and what
//! a lease handle tells about itself.
//!
//! Calls that act on the memory node run on the calling thread's client
//! thread of the node (see `patronus_register_client_thread`).

use super::boundary::{guard, guard_or};
use super::error::{lease_rc, set_last_error, Failure, FfiResult, PatronusRc};
use super::flags::{check_flags, PatronusAcquireStatus};
use super::gaddr::patronus_gaddr_t;
use super::handle::{
    box_free, box_into_raw, patronus_lease_t, patronus_t, try_mut, try_ref, MAX_IO,
};
use super::registry::{self, with_client};
use crate::client::Lease;
use crate::lease::flags::{acquire, modify};
use crate::lease::AcquireStatus;
use crate::Error;

/// The checks every acquisition (blocking or posted) starts with.
pub(crate) fn acquire_args(p: *mut patronus_t, flag: u64, size: usize) -> FfiResult<()> {
    if p.is_null() {
        return Err(Failure::null("p"));
    }
    check_flags(flag, acquire::ALL, "AcquireRequest")?;
    if size == 0 || size > MAX_IO {
        return Err(Failure::invalid(format!(
            "size {size} must be 1 byte to 1 GiB"
        )));
    }
    Ok(())
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
) -> FfiResult<*mut patronus_lease_t> {
    acquire_args(p, flag, size)?;
    let off = bind_gaddr.offset();
    let r = with_client(p, |c| {
        if write {
            c.get_wlease(node_id, dir_id, off, alloc_hint, size as u64, ns, flag)
        } else {
            c.get_rlease(node_id, dir_id, off, alloc_hint, size as u64, ns, flag)
        }
    })?;
    match r {
        Ok(l) => Ok(box_into_raw(l)),
        Err(e @ Error::Invalid(_)) => Err(e.into()),
        Err(e) => {
            // Timeouts and fabric failures: a failed lease, never NULL,
            // and the cause in the last error.
            set_last_error(format!("{call}: {e}"));
            Ok(box_into_raw(Lease::failed(
                AcquireStatus::Reserved as u8,
                node_id,
                dir_id,
            )))
        }
    }
}

/// Acquires a read lease on `[bind_gaddr.offset, +size)` of directory
/// `dir_id` of node `node_id` for `ns` nanoseconds (0 with
/// PATRONUS_ACQUIRE_NO_GC: forever). With PATRONUS_ACQUIRE_WITH_ALLOCATION
/// the object is allocated by allocator `alloc_hint` and `bind_gaddr` must
/// be null. Never NULL for a well-formed call: a refused lease has
/// `patronus_lease_success()` false and `patronus_lease_ec()` says why
/// (when the memory node could not be reached, the last error is set
/// too). NULL (with `patronus_last_error()`) for invalid arguments or when
/// this thread is not a client thread. Ownership: free with
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
    const CALL: &str = "patronus_get_rlease";
    guard(CALL, || {
        get_lease(
            CALL, false, p, node_id, dir_id, bind_gaddr, alloc_hint, size, ns, flag,
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
    const CALL: &str = "patronus_get_wlease";
    guard(CALL, || {
        get_lease(
            CALL, true, p, node_id, dir_id, bind_gaddr, alloc_hint, size, ns, flag,
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
        if p.is_null() {
            return Err(Failure::null("p"));
        }
        let l = try_mut(lease, "lease")?;
        check_flags(flag, modify::ALL, "LeaseModify")?;
        let rc = with_client(p, |c| c.relinquish(l, hint, flag))??;
        lease_rc(rc, l)
    })
}

fn extend(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    ns: u64,
    flag: u64,
    rpc: bool,
) -> FfiResult<PatronusRc> {
    if p.is_null() {
        return Err(Failure::null("p"));
    }
    let l = try_mut(lease, "lease")?;
    check_flags(flag, modify::ALL, "LeaseModify")?;
    let rc = with_client(p, |c| {
        if rpc {
            c.rpc_extend(l, ns, flag)
        } else {
            c.extend(l, ns, flag)
        }
    })??;
    lease_rc(rc, l)
}

/// Extends the lease by `ns` with a one-sided CAS on its protection region
/// (no memory-node CPU). PATRONUS_RC_INVALID when the extension cannot be
/// granted (revoked, no protection region, cap reached);
/// PATRONUS_RC_LEASE_LOCAL_EXPIRED_ERR when the CAS reached the memory
/// node after it had revoked the lease at its deadline (the lease ran out
/// while the extension was in flight).
#[no_mangle]
pub extern "C" fn patronus_extend(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    ns: u64,
    flag: u64,
) -> PatronusRc {
    guard("patronus_extend", || extend(p, lease, ns, flag, false))
}

/// Extends the lease by `ns` through an RPC to its directory.
#[no_mangle]
pub extern "C" fn patronus_rpc_extend(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    ns: u64,
    flag: u64,
) -> PatronusRc {
    guard("patronus_rpc_extend", || extend(p, lease, ns, flag, true))
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
        if p.is_null() {
            return Err(Failure::null("p"));
        }
        let l = try_mut(lease, "lease")?;
        check_flags(flag, acquire::ALL, "AcquireRequest")?;
        let w = with_client(p, |c| c.upgrade(l, flag))??;
        Ok(box_into_raw(w))
    })
}

/// Frees a lease handle without relinquishing (the memory node's GC
/// revokes it at expiry). Consumes `lease`. NULL is a no-op.
#[no_mangle]
pub extern "C" fn patronus_lease_free(lease: *mut patronus_lease_t) {
    guard("patronus_lease_free", || {
        box_free(lease);
        Ok(())
    })
}

/// True when the lease was granted and is still held.
#[no_mangle]
pub extern "C" fn patronus_lease_success(lease: *const patronus_lease_t) -> bool {
    guard("patronus_lease_success", || {
        Ok(try_ref(lease, "lease")?.success())
    })
}

/// Why an acquisition failed (PATRONUS_ACQUIRE_SUCCESS when granted;
/// PATRONUS_ACQUIRE_RESERVED for NULL).
#[no_mangle]
pub extern "C" fn patronus_lease_ec(lease: *const patronus_lease_t) -> PatronusAcquireStatus {
    guard("patronus_lease_ec", || {
        Ok(AcquireStatus::from_u8(try_ref(lease, "lease")?.ec()).into())
    })
}

/// The lease's id at its directory (context slot; UINT64_MAX when none).
#[no_mangle]
pub extern "C" fn patronus_lease_id(lease: *const patronus_lease_t) -> u64 {
    guard_or("patronus_lease_id", u64::MAX, || {
        let l = try_ref(lease, "lease")?;
        Ok(if l.slot == u32::MAX {
            u64::MAX
        } else {
            l.slot as u64
        })
    })
}

/// The object's address in the memory node's registered region.
#[no_mangle]
pub extern "C" fn patronus_lease_base_addr(lease: *const patronus_lease_t) -> u64 {
    guard("patronus_lease_base_addr", || {
        Ok(try_ref(lease, "lease")?.base.0)
    })
}

/// The object's size in bytes.
#[no_mangle]
pub extern "C" fn patronus_lease_buffer_size(lease: *const patronus_lease_t) -> usize {
    guard("patronus_lease_buffer_size", || {
        Ok(try_ref(lease, "lease")?.size as usize)
    })
}

/// The directory that granted the lease.
#[no_mangle]
pub extern "C" fn patronus_lease_dir_id(lease: *const patronus_lease_t) -> u16 {
    guard("patronus_lease_dir_id", || Ok(try_ref(lease, "lease")?.dir))
}

/// The lease's deadline in PatronusTime ns (UINT64_MAX: never expires).
#[no_mangle]
pub extern "C" fn patronus_lease_ddl_term(lease: *const patronus_lease_t) -> u64 {
    guard("patronus_lease_ddl_term", || {
        let l = try_ref(lease, "lease")?;
        Ok(if l.ddl == i64::MAX {
            u64::MAX
        } else {
            l.ddl.max(0) as u64
        })
    })
}

/// Every granted lease can be read.
#[no_mangle]
pub extern "C" fn patronus_lease_is_readable(lease: *const patronus_lease_t) -> bool {
    guard("patronus_lease_is_readable", || {
        Ok(try_ref(lease, "lease")?.success())
    })
}

/// Write leases can be written and used for atomics.
#[no_mangle]
pub extern "C" fn patronus_lease_is_writable(lease: *const patronus_lease_t) -> bool {
    guard("patronus_lease_is_writable", || {
        let l = try_ref(lease, "lease")?;
        Ok(l.success() && l.write)
    })
}

/// The global address of the leased object.
#[no_mangle]
pub extern "C" fn patronus_get_gaddr(
    p: *const patronus_t,
    lease: *const patronus_lease_t,
) -> patronus_gaddr_t {
    guard("patronus_get_gaddr", || {
        let n = registry::node(p)?;
        let l = try_ref(lease, "lease")?;
        let (node, off) = n.node.gaddr_of(l);
        patronus_gaddr_t::new(node, off)
    })
}
