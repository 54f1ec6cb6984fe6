//! The data path: one-sided and two-sided reads, writes and atomics
//! through a lease, on the calling thread's client thread.

use std::ffi::c_char;

use super::boundary::guard;
use super::error::{lease_rc, Failure, FfiResult, PatronusRc};
use super::flags::check_flags;
use super::handle::{bytes, bytes_mut, patronus_lease_t, patronus_t, try_mut};
use super::registry::with_client;
use crate::client::Lease;
use crate::lease::flags::rw;
use crate::lease::Rc;

/// The checks every data-path call starts with: `p` and `lease` not NULL,
/// known RW flags. Returns the lease.
pub(crate) fn start<'a>(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    flag: u64,
) -> FfiResult<&'a mut Lease> {
    if p.is_null() {
        return Err(Failure::null("p"));
    }
    let l = try_mut(lease, "lease")?;
    check_flags(flag, rw::ALL, "RW")?;
    Ok(l)
}

/// Atomics work on 8-byte aligned words.
pub(crate) fn aligned(offset: usize) -> FfiResult<()> {
    if offset % 8 != 0 {
        return Err(Failure::invalid(format!(
            "offset {offset} is not 8-byte aligned"
        )));
    }
    Ok(())
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
        let l = start(p, lease, flag)?;
        let dst = bytes_mut(obuf, size, "obuf")?;
        let rc = with_client(p, |c| c.read(l, dst, offset as u64, flag))??;
        lease_rc(rc, l)
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
        let l = start(p, lease, flag)?;
        let src = bytes(ibuf, size, "ibuf")?;
        let rc = with_client(p, |c| c.write(l, src, offset as u64, flag))??;
        lease_rc(rc, l)
    })
}

/// CAS or FAA, one-sided or (with `rw::USE_TWO_SIDED`) by RPC; `iobuf`
/// receives the old value.
#[allow(clippy::too_many_arguments)]
fn atomic(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    iobuf: *mut c_char,
    offset: usize,
    a: u64,
    b: u64,
    cas: bool,
    flag: u64,
) -> FfiResult<PatronusRc> {
    let l = start(p, lease, flag)?;
    let out = bytes_mut(iobuf, 8, "iobuf")?;
    aligned(offset)?;
    let (rc, old) = with_client(p, |c| {
        if cas {
            c.cas(l, offset as u64, a, b, flag)
        } else {
            c.faa(l, offset as u64, a as i64, flag)
        }
    })??;
    if rc == Rc::Ok {
        out.copy_from_slice(&old.to_le_bytes());
    }
    lease_rc(rc, l)
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
        atomic(p, lease, iobuf, offset, compare, swap, true, flag)
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
        atomic(p, lease, iobuf, offset, value as u64, 0, false, flag)
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
        let l = start(p, lease, flag)?;
        let dst = bytes_mut(obuf, size, "obuf")?;
        let rc = with_client(p, |c| c.rpc_read(l, dst, offset as u64))??;
        lease_rc(rc, l)
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
        let l = start(p, lease, flag)?;
        let src = bytes(ibuf, size, "ibuf")?;
        let rc = with_client(p, |c| c.rpc_write(l, src, offset as u64))??;
        lease_rc(rc, l)
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
