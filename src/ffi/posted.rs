//! Many calls in flight per thread: the posted form of every blocking call
//! and the completions that follow (`patronus_poll`, `patronus_wait`).
//!
//! A post validates its arguments as the blocking call does, hands the call
//! to the calling thread's engine (`client::calls`) under a ticket, and
//! remembers where its results go (the lease handle, the caller's buffer).
//! Polling turns the engine's completions into `patronus_completion_t`:
//! READ data and old values are copied to the caller's buffers, the lease
//! handle learns what the call learnt (an extension's deadline, cached
//! bytes), and acquisitions hand out a new lease handle.

use std::ffi::c_char;
use std::time::Duration;

use super::batch::BatchState;
use super::boundary::{guard, guard_or};
use super::data::{aligned, start};
use super::error::{rc_of, Failure, FfiResult, PatronusRc};
use super::flags::check_flags;
use super::gaddr::patronus_gaddr_t;
use super::handle::{
    box_into_raw, boxed_into_raw, bytes, bytes_mut, copy_out, out_slice, patronus_batch_t,
    patronus_lease_t, patronus_t, try_mut,
};
use super::registry::{with_client, with_client_table};
use crate::client::{ClientThread, Completion, Lease, Post};
use crate::lease::flags::{acquire, modify, rw};
use crate::lease::AcquireStatus;
use crate::Error;

/// One completed posted call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct patronus_completion_t {
    /// The tag given to the post call.
    pub user_data: u64,
    /// What the blocking call would have returned (PATRONUS_RC_OK whenever
    /// a lease is returned, granted or not).
    pub rc: PatronusRc,
    /// Posted acquisitions and upgrades: the new lease (the caller owns
    /// it; check `patronus_lease_success`, free with
    /// `patronus_lease_free`). Other calls: the lease they were given.
    pub lease: *mut patronus_lease_t,
    /// CAS/FAA: the old 8-byte value (also written to `iobuf`); else 0.
    pub value: u64,
}

/// Where a posted call's results go.
enum Sink {
    /// An acquisition (an upgrade also updates the read lease).
    Acquire,
    /// READ data into (ptr, len).
    Read(usize, usize),
    /// An old value into an 8-byte iobuf.
    Value(usize),
    /// Nothing but the lease.
    Lease,
    /// A committed batch: per operation (ptr, len).
    Batch(Vec<(usize, usize)>),
}

#[derive(Default)]
struct Place {
    generation: u32,
    call: Option<Pending>,
}

impl Table {
    /// The ticket the next recorded call gets (nothing is taken yet).
    fn next_ticket(&self) -> u64 {
        let (i, g) = match self.free.last() {
            Some(&i) => (i, self.calls[i as usize].generation),
            None => (self.calls.len() as u32, 0),
        };
        // Generations stay below 2^31: bit 63 marks kv handles' calls.
        let g = g.wrapping_add(1) & 0x7fff_ffff;
        (g as u64) << 32 | i as u64
    }

    /// Records `p` under `ticket` (from [`Table::next_ticket`], nothing
    /// recorded in between).
    fn record(&mut self, ticket: u64, p: Pending) {
        let i = (ticket & 0xffff_ffff) as usize;
        if i == self.calls.len() {
            self.calls.push(Place::default());
        } else {
            self.free.pop();
        }
        let place = &mut self.calls[i];
        place.generation = (ticket >> 32) as u32;
        place.call = Some(p);
        self.out += 1;
    }

    /// Takes the call of `ticket` (None: no such call is out).
    fn take(&mut self, ticket: u64) -> Option<Pending> {
        let i = (ticket & 0xffff_ffff) as u32;
        let place = self.calls.get_mut(i as usize)?;
        if place.generation != (ticket >> 32) as u32 {
            return None;
        }
        let p = place.call.take()?;
        self.free.push(i);
        self.out -= 1;
        Some(p)
    }
}

struct Pending {
    user_data: u64,
    /// The `patronus_lease_t *` the call was given (0: none).
    lease: usize,
    sink: Sink,
}

/// The calling thread's posted calls on one node.
#[derive(Default)]
pub(crate) struct Table {
    /// Posted calls by ticket: place `ticket & 0xffff_ffff` holds the call
    /// while it is out, under the generation in the ticket's high bits (a
    /// place's generation moves on each time it is used, so a ticket never
    /// names a later call). No hashing per post and per completion.
    calls: Vec<Place>,
    /// Free places (a stack: the most recently freed is reused first).
    free: Vec<u32>,
    /// Calls out.
    out: usize,
    /// Completions being delivered (kept: polling allocates nothing).
    got: Vec<Completion>,
    /// Completions of these posted calls that a kv handle's polling took
    /// from the thread (delivered by the next `patronus_poll`).
    pub(crate) stray: Vec<Completion>,
}

/// Posts through `f` under a fresh ticket and records `pending` on success.
fn post(
    p: *mut patronus_t,
    user_data: u64,
    lease: *mut patronus_lease_t,
    sink: Sink,
    f: impl FnOnce(&mut ClientThread, u64) -> crate::Result<Post>,
) -> FfiResult<PatronusRc> {
    with_client_table(p, |c, t| {
        let ticket = t.next_ticket();
        match f(c, ticket)? {
            Post::Retry => Ok(PatronusRc::PATRONUS_RC_RETRY),
            Post::Posted => {
                t.record(
                    ticket,
                    Pending {
                        user_data,
                        lease: lease as usize,
                        sink,
                    },
                );
                Ok(PatronusRc::PATRONUS_RC_OK)
            }
        }
    })?
}

/// Turns an engine completion into the C one, delivering its results.
fn deliver(
    t: &mut Table,
    ct: &mut ClientThread,
    mut c: Completion,
) -> Option<patronus_completion_t> {
    let pd = t.take(c.user_data)?;
    let given = pd.lease as *mut patronus_lease_t;
    if !given.is_null() {
        if let Ok(l) = try_mut(given, "lease") {
            c.apply(l);
        }
    }
    let mut out = patronus_completion_t {
        user_data: pd.user_data,
        rc: match &c.result {
            Ok(rc) => PatronusRc::from(*rc),
            Err(e) => rc_of(e),
        },
        lease: given,
        value: c.value,
    };
    let ok = matches!(c.result, Ok(crate::lease::Rc::Ok));
    match pd.sink {
        Sink::Acquire => {
            out.value = 0;
            out.lease = std::ptr::null_mut();
            match (c.result, c.lease) {
                (Ok(_), Some(l)) => {
                    out.rc = PatronusRc::PATRONUS_RC_OK;
                    out.lease = boxed_into_raw(l);
                }
                // As the blocking call: a lease that could not be had for
                // a timeout or a fabric failure is a failed lease.
                (Err(Error::Invalid(_)), _) => {}
                (Err(_), _) => {
                    out.rc = PatronusRc::PATRONUS_RC_OK;
                    out.lease = box_into_raw(Lease::failed(AcquireStatus::Reserved as u8, 0, 0));
                }
                (Ok(_), None) => out.rc = PatronusRc::PATRONUS_RC_INTERNAL,
            }
        }
        Sink::Read(ptr, len) => {
            if ok {
                copy_out(&c.data, ptr as *mut u8, len);
            }
            ct.recycle_buf(std::mem::take(&mut c.data));
            out.value = 0;
        }
        Sink::Value(ptr) => {
            if ok {
                copy_out(&c.value.to_le_bytes(), ptr as *mut u8, 8);
            }
        }
        Sink::Lease => out.value = 0,
        Sink::Batch(outs) => {
            if ok {
                for ((ptr, len), res) in outs.into_iter().zip(&c.batch) {
                    if ptr != 0 {
                        copy_out(res, ptr as *mut u8, len);
                    }
                }
            }
            out.value = 0;
        }
    }
    Some(out)
}

fn collect(
    p: *mut patronus_t,
    out: *mut patronus_completion_t,
    max: usize,
    timeout: Option<Duration>,
) -> FfiResult<usize> {
    if max == 0 {
        return Ok(0);
    }
    let dst = out_slice(out, max, "out")?;
    let deadline = timeout.map(|d| std::time::Instant::now() + d);
    with_client_table(p, |c, t| loop {
        let mut got = std::mem::take(&mut t.got);
        got.clear();
        // Completions a kv handle's polling took from the thread first.
        let early = t.stray.len().min(max);
        got.extend(t.stray.drain(..early));
        let room = max - got.len();
        let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        let r = match left {
            _ if room == 0 => Ok(()),
            Some(d) if got.is_empty() => c.wait(room, d).map(|v| got.extend(v)),
            _ => c.poll_into(&mut got, room).map(|_| ()),
        };
        let mut n = 0;
        for x in got.drain(..) {
            if x.user_data & super::kv::POSTED_KV_TAG != 0 {
                // A posted kv operation's call: its handle takes it.
                super::kv::mail(x);
                continue;
            }
            if let Some(cc) = deliver(t, c, x) {
                dst[n] = cc;
                n += 1;
            }
        }
        t.got = got;
        r?;
        // A wait that took only kv handles' completions (or ones delivered
        // to nobody) waits on for the rest of its time, while calls of
        // its own are out.
        if n > 0 || left.is_none_or(|l| l.is_zero()) || t.out == 0 {
            return Ok(n);
        }
    })?
}

/// Makes progress on this thread's posted calls and stores up to `max` of
/// their completions in `out`; never blocks. Returns how many it stored (0
/// with the last error set for bad arguments). One-sided calls posted since
/// the last poll go to the NIC here, as one chain per connection (or as
/// soon as 16 wait): a thread that posts and then computes has sent
/// nothing until it polls or waits.
#[no_mangle]
pub extern "C" fn patronus_poll(
    p: *mut patronus_t,
    out: *mut patronus_completion_t,
    max: usize,
) -> usize {
    guard_or("patronus_poll", 0, || collect(p, out, max, None))
}

/// As `patronus_poll`, but waits until at least one completion is there or
/// `timeout_ns` passed (returns at once when nothing is in flight).
#[no_mangle]
pub extern "C" fn patronus_wait(
    p: *mut patronus_t,
    out: *mut patronus_completion_t,
    max: usize,
    timeout_ns: u64,
) -> usize {
    guard_or("patronus_wait", 0, || {
        collect(p, out, max, Some(Duration::from_nanos(timeout_ns)))
    })
}

/// Calls this thread posted on `p` whose completions were not polled yet
/// (0 when this thread is not a client thread of `p`).
#[no_mangle]
pub extern "C" fn patronus_inflight(p: *const patronus_t) -> usize {
    guard_or("patronus_inflight", 0, || with_client(p, |c| c.inflight()))
}

#[allow(clippy::too_many_arguments)]
fn post_lease(
    write: bool,
    p: *mut patronus_t,
    node_id: u16,
    dir_id: u16,
    bind_gaddr: patronus_gaddr_t,
    alloc_hint: u64,
    size: usize,
    ns: u64,
    flag: u64,
    user_data: u64,
) -> FfiResult<PatronusRc> {
    super::lease::acquire_args(p, flag, size)?;
    let off = bind_gaddr.offset();
    post(
        p,
        user_data,
        std::ptr::null_mut(),
        Sink::Acquire,
        |c, tk| {
            let s = size as u64;
            if write {
                c.post_get_wlease(node_id, dir_id, off, alloc_hint, s, ns, flag, tk)
            } else {
                c.post_get_rlease(node_id, dir_id, off, alloc_hint, s, ns, flag, tk)
            }
        },
    )
}

/// Posted `patronus_get_rlease`: the completion's `lease` is the new lease.
/// Returns PATRONUS_RC_OK (posted: one completion follows),
/// PATRONUS_RC_RETRY (at the thread's limit: nothing posted) or
/// PATRONUS_RC_INVALID (bad arguments: nothing posted, last error set);
/// every `patronus_post_*` call returns these.
#[no_mangle]
pub extern "C" fn patronus_post_get_rlease(
    p: *mut patronus_t,
    node_id: u16,
    dir_id: u16,
    bind_gaddr: patronus_gaddr_t,
    alloc_hint: u64,
    size: usize,
    ns: u64,
    flag: u64,
    user_data: u64,
) -> PatronusRc {
    guard("patronus_post_get_rlease", || {
        post_lease(
            false, p, node_id, dir_id, bind_gaddr, alloc_hint, size, ns, flag, user_data,
        )
    })
}

/// Posted `patronus_get_wlease`.
#[no_mangle]
pub extern "C" fn patronus_post_get_wlease(
    p: *mut patronus_t,
    node_id: u16,
    dir_id: u16,
    bind_gaddr: patronus_gaddr_t,
    alloc_hint: u64,
    size: usize,
    ns: u64,
    flag: u64,
    user_data: u64,
) -> PatronusRc {
    guard("patronus_post_get_wlease", || {
        post_lease(
            true, p, node_id, dir_id, bind_gaddr, alloc_hint, size, ns, flag, user_data,
        )
    })
}

/// Posted `patronus_relinquish` (the lease counts as given back at once).
#[no_mangle]
pub extern "C" fn patronus_post_relinquish(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    hint: u64,
    flag: u64,
    user_data: u64,
) -> PatronusRc {
    guard("patronus_post_relinquish", || {
        if p.is_null() {
            return Err(Failure::null("p"));
        }
        let l = try_mut(lease, "lease")?;
        check_flags(flag, modify::ALL, "LeaseModify")?;
        post(p, user_data, lease, Sink::Lease, |c, tk| {
            c.post_relinquish(l, hint, flag, tk)
        })
    })
}

fn post_ext(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    ns: u64,
    flag: u64,
    user_data: u64,
    rpc: bool,
) -> FfiResult<PatronusRc> {
    if p.is_null() {
        return Err(Failure::null("p"));
    }
    let l = try_mut(lease, "lease")?;
    check_flags(flag, modify::ALL, "LeaseModify")?;
    post(p, user_data, lease, Sink::Lease, |c, tk| {
        if rpc {
            c.post_rpc_extend(l, ns, flag, tk)
        } else {
            c.post_extend(l, ns, flag, tk)
        }
    })
}

/// Posted `patronus_extend` (one-sided).
#[no_mangle]
pub extern "C" fn patronus_post_extend(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    ns: u64,
    flag: u64,
    user_data: u64,
) -> PatronusRc {
    guard("patronus_post_extend", || {
        post_ext(p, lease, ns, flag, user_data, false)
    })
}

/// Posted `patronus_rpc_extend`.
#[no_mangle]
pub extern "C" fn patronus_post_rpc_extend(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    ns: u64,
    flag: u64,
    user_data: u64,
) -> PatronusRc {
    guard("patronus_post_rpc_extend", || {
        post_ext(p, lease, ns, flag, user_data, true)
    })
}

/// Posted `patronus_upgrade`: the completion's `lease` is the write lease;
/// when it was granted, `lease` (the read lease) is given back.
#[no_mangle]
pub extern "C" fn patronus_post_upgrade(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    flag: u64,
    user_data: u64,
) -> PatronusRc {
    guard("patronus_post_upgrade", || {
        if p.is_null() {
            return Err(Failure::null("p"));
        }
        let l = try_mut(lease, "lease")?;
        check_flags(flag, acquire::ALL, "AcquireRequest")?;
        post(p, user_data, lease, Sink::Acquire, |c, tk| {
            c.post_upgrade(l, flag, tk)
        })
    })
}

fn post_read(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    obuf: *mut c_char,
    size: usize,
    offset: usize,
    flag: u64,
    user_data: u64,
) -> FfiResult<PatronusRc> {
    let l = start(p, lease, flag)?;
    bytes_mut(obuf, size, "obuf")?;
    post(
        p,
        user_data,
        lease,
        Sink::Read(obuf as usize, size),
        |c, tk| c.post_read(l, size, offset as u64, flag, tk),
    )
}

fn post_write(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    ibuf: *const c_char,
    size: usize,
    offset: usize,
    flag: u64,
    user_data: u64,
) -> FfiResult<PatronusRc> {
    let l = start(p, lease, flag)?;
    let src = bytes(ibuf, size, "ibuf")?;
    post(p, user_data, lease, Sink::Lease, |c, tk| {
        c.post_write(l, src, offset as u64, flag, tk)
    })
}

#[allow(clippy::too_many_arguments)]
fn post_atomic(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    iobuf: *mut c_char,
    offset: usize,
    a: u64,
    b: u64,
    cas: bool,
    flag: u64,
    user_data: u64,
) -> FfiResult<PatronusRc> {
    let l = start(p, lease, flag)?;
    bytes_mut(iobuf, 8, "iobuf")?;
    aligned(offset)?;
    post(p, user_data, lease, Sink::Value(iobuf as usize), |c, tk| {
        if cas {
            c.post_cas(l, offset as u64, a, b, flag, tk)
        } else {
            c.post_faa(l, offset as u64, a as i64, flag, tk)
        }
    })
}

/// Posted `patronus_read`: `obuf` is filled when the completion is polled
/// and must stay valid until then.
#[no_mangle]
pub extern "C" fn patronus_post_read(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    obuf: *mut c_char,
    size: usize,
    offset: usize,
    flag: u64,
    user_data: u64,
) -> PatronusRc {
    guard("patronus_post_read", || {
        post_read(p, lease, obuf, size, offset, flag, user_data)
    })
}

/// Posted `patronus_write` (`ibuf` is copied at once).
#[no_mangle]
pub extern "C" fn patronus_post_write(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    ibuf: *const c_char,
    size: usize,
    offset: usize,
    flag: u64,
    user_data: u64,
) -> PatronusRc {
    guard("patronus_post_write", || {
        post_write(p, lease, ibuf, size, offset, flag, user_data)
    })
}

/// Posted `patronus_cas`: `iobuf` receives the old value at completion.
#[no_mangle]
pub extern "C" fn patronus_post_cas(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    iobuf: *mut c_char,
    offset: usize,
    compare: u64,
    swap: u64,
    flag: u64,
    user_data: u64,
) -> PatronusRc {
    guard("patronus_post_cas", || {
        post_atomic(
            p, lease, iobuf, offset, compare, swap, true, flag, user_data,
        )
    })
}

/// Posted `patronus_faa`.
#[no_mangle]
pub extern "C" fn patronus_post_faa(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    iobuf: *mut c_char,
    offset: usize,
    value: i64,
    flag: u64,
    user_data: u64,
) -> PatronusRc {
    guard("patronus_post_faa", || {
        post_atomic(
            p,
            lease,
            iobuf,
            offset,
            value as u64,
            0,
            false,
            flag,
            user_data,
        )
    })
}

/// Posted `patronus_rpc_read`.
#[no_mangle]
pub extern "C" fn patronus_post_rpc_read(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    obuf: *mut c_char,
    size: usize,
    offset: usize,
    flag: u64,
    user_data: u64,
) -> PatronusRc {
    guard("patronus_post_rpc_read", || {
        post_read(
            p,
            lease,
            obuf,
            size,
            offset,
            flag | rw::USE_TWO_SIDED,
            user_data,
        )
    })
}

/// Posted `patronus_rpc_write`.
#[no_mangle]
pub extern "C" fn patronus_post_rpc_write(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    ibuf: *const c_char,
    size: usize,
    offset: usize,
    flag: u64,
    user_data: u64,
) -> PatronusRc {
    guard("patronus_post_rpc_write", || {
        post_write(
            p,
            lease,
            ibuf,
            size,
            offset,
            flag | rw::USE_TWO_SIDED,
            user_data,
        )
    })
}

/// Posted `patronus_rpc_cas`.
#[no_mangle]
pub extern "C" fn patronus_post_rpc_cas(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    iobuf: *mut c_char,
    offset: usize,
    compare: u64,
    swap: u64,
    user_data: u64,
) -> PatronusRc {
    guard("patronus_post_rpc_cas", || {
        post_atomic(
            p,
            lease,
            iobuf,
            offset,
            compare,
            swap,
            true,
            rw::USE_TWO_SIDED,
            user_data,
        )
    })
}

/// Posted `patronus_rpc_faa`.
#[no_mangle]
pub extern "C" fn patronus_post_rpc_faa(
    p: *mut patronus_t,
    lease: *mut patronus_lease_t,
    iobuf: *mut c_char,
    offset: usize,
    value: i64,
    user_data: u64,
) -> PatronusRc {
    guard("patronus_post_rpc_faa", || {
        post_atomic(
            p,
            lease,
            iobuf,
            offset,
            value as u64,
            0,
            false,
            rw::USE_TWO_SIDED,
            user_data,
        )
    })
}

/// Posted `patronus_commit`: the read buffers and iobufs the batch's
/// operations named are filled when the completion is polled. The batch
/// is empty once posted (ready for the next operations).
#[no_mangle]
pub extern "C" fn patronus_post_commit(
    p: *mut patronus_t,
    b: *mut patronus_batch_t,
    user_data: u64,
) -> PatronusRc {
    guard("patronus_post_commit", || {
        if p.is_null() {
            return Err(Failure::null("p"));
        }
        let bt: &mut BatchState = try_mut(b, "b")?;
        let (outs, batch) = bt.parts();
        let sink = Sink::Batch(outs.iter().map(|(p, n)| (*p as usize, *n)).collect());
        let r = post(p, user_data, std::ptr::null_mut(), sink, |c, tk| {
            c.post_commit(batch, tk)
        })?;
        if r == PatronusRc::PATRONUS_RC_OK {
            outs.clear();
        }
        Ok(r)
    })
}
