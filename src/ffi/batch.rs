//! Batches: one-sided operations towards one directory, prepared one by
//! one and posted as one chain by `patronus_commit`.

use std::ffi::c_char;

use super::boundary::guard;
use super::data::{aligned, start};
use super::error::{lease_rc, Failure, FfiResult, PatronusRc};
use super::handle::{
    box_free, box_into_raw, bytes, bytes_mut, copy_out, patronus_batch_t, patronus_lease_t,
    patronus_t, try_mut,
};
use super::registry::with_client;
use crate::client::{Batch, Lease};
use crate::lease::Rc;

/// What a `patronus_batch_t` stands for.
pub(crate) struct BatchState {
    b: Batch,
    /// Where each prepared operation's result goes: (ptr, len), null for
    /// writes.
    outs: Vec<(*mut u8, usize)>,
}

impl BatchState {
    /// The output pointers and the batch (for posting).
    pub(crate) fn parts(&mut self) -> (&mut Vec<(*mut u8, usize)>, &mut Batch) {
        (&mut self.outs, &mut self.b)
    }
}

/// A new, empty batch (at most 16 operations, all towards one directory).
/// Ownership: free with `patronus_batch_free`.
#[no_mangle]
pub extern "C" fn patronus_batch_new() -> *mut patronus_batch_t {
    guard("patronus_batch_new", || {
        Ok(box_into_raw(BatchState {
            b: Batch::new(),
            outs: Vec::new(),
        }))
    })
}

/// Frees a batch (prepared operations are dropped). Consumes `b`. NULL is
/// a no-op.
#[no_mangle]
pub extern "C" fn patronus_batch_free(b: *mut patronus_batch_t) {
    guard("patronus_batch_free", || {
        box_free(b);
        Ok(())
    })
}

/// The checks every prepare starts with; returns the batch and the lease.
fn prepare_start<'a>(
    p: *mut patronus_t,
    b: *mut patronus_batch_t,
    lease: *mut patronus_lease_t,
    flag: u64,
) -> FfiResult<(&'a mut BatchState, &'a mut Lease)> {
    if p.is_null() {
        return Err(Failure::null("p"));
    }
    let bt = try_mut(b, "b")?;
    Ok((bt, start(p, lease, flag)?))
}

/// Records where the prepared operation's result goes once the core took it.
fn prepared(
    bt: &mut BatchState,
    l: &Lease,
    rc: Rc,
    out: (*mut u8, usize),
) -> FfiResult<PatronusRc> {
    let rc = lease_rc(rc, l)?;
    bt.outs.push(out);
    Ok(rc)
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
        let (bt, l) = prepare_start(p, b, lease, flag)?;
        bytes_mut(obuf, size, "obuf")?;
        let rc = with_client(p, |c| {
            c.prepare_read(&mut bt.b, l, size, offset as u64, flag)
        })??;
        prepared(bt, l, rc, (obuf as *mut u8, size))
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
        let (bt, l) = prepare_start(p, b, lease, flag)?;
        let src = bytes(ibuf, size, "ibuf")?;
        let rc = with_client(p, |c| {
            c.prepare_write(&mut bt.b, l, src, offset as u64, flag)
        })??;
        prepared(bt, l, rc, (std::ptr::null_mut(), 0))
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
        let (bt, l) = prepare_start(p, b, lease, flag)?;
        bytes_mut(iobuf, 8, "iobuf")?;
        aligned(offset)?;
        let rc = with_client(p, |c| {
            c.prepare_cas(&mut bt.b, l, offset as u64, compare, swap, flag)
        })??;
        prepared(bt, l, rc, (iobuf as *mut u8, 8))
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
        let (bt, l) = prepare_start(p, b, lease, flag)?;
        bytes_mut(iobuf, 8, "iobuf")?;
        aligned(offset)?;
        let rc = with_client(p, |c| {
            c.prepare_faa(&mut bt.b, l, offset as u64, value, flag)
        })??;
        prepared(bt, l, rc, (iobuf as *mut u8, 8))
    })
}

/// Posts every prepared operation as one chain and waits for it. On
/// success the read buffers and atomic iobufs are filled; one failure fails
/// the batch (PATRONUS_RC_RDMA_PROTECTION_ERR) and the connection recovers.
/// Once posted, the batch is empty afterwards either way; an empty batch
/// is PATRONUS_RC_OK. PATRONUS_RC_INVALID means nothing was posted and the
/// batch is unchanged (e.g. this thread is not a client thread: commit it
/// again from one).
#[no_mangle]
pub extern "C" fn patronus_commit(p: *mut patronus_t, b: *mut patronus_batch_t) -> PatronusRc {
    guard("patronus_commit", || {
        if p.is_null() {
            return Err(Failure::null("p"));
        }
        let bt = try_mut(b, "b")?;
        // The output pointers leave the batch only together with its
        // operations, on a client thread.
        let (outs, r) = with_client(p, |c| {
            let outs = std::mem::take(&mut bt.outs);
            (outs, c.commit(&mut bt.b))
        })?;
        let rc = PatronusRc::from(r?);
        if rc != PatronusRc::PATRONUS_RC_OK {
            return Err(Failure::new(
                rc,
                format!("the chain of {} operations failed: {rc:?}", outs.len()),
            ));
        }
        for (i, (ptr, len)) in outs.into_iter().enumerate() {
            if let Some(res) = bt.b.result(i) {
                copy_out(res, ptr, len);
            }
        }
        Ok(rc)
    })
}
