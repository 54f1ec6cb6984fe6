//! Calls in flight: every client call (lease, data, two-sided, batch) is a
//! small state machine posted to the thread's engine and completed later on
//! the same thread, as RDMA users know from `ibv_post_send` +
//! `ibv_poll_cq` (the original reaches the same effect with coroutines).
//! Blocking calls are post + wait on the same machinery.
//!
//! - A call waits for one thing at a time: an RPC reply (matched by RPC id)
//!   or one signalled work request on a data QP (matched by slot and a
//!   per-slot sequence number, so completions of a call that was re-posted
//!   or finished are recognised as stale and dropped).
//! - Staging: each call slot owns `SMALL` bytes of a registered buffer;
//!   transfers larger than that use the thread's large buffer, one call at
//!   a time (others wait for it in the backlog, not with an error).
//! - Faults: a failed work request fails its own call with
//!   RDMA_PROTECTION_ERR; the QP is recovered in place, and the other calls
//!   that were waiting on that QP (posted after it: RC completes in order,
//!   so they never executed) are posted again and complete normally.
//! - Resources that run out (RPC receive credit at a directory, send queue
//!   depth, the large buffer) make a call wait in the backlog; only the
//!   per-thread limit `max_inflight` makes a post return [`Post::Retry`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::{ClientThread, DATA_BUF};
use crate::fabric::{FabricError, Mr, SendWr, Sge, Wc, WcStatus, WrOp};
use crate::lease::flags::rw;
use crate::lease::msg::{
    self, AcquireReq, AdminReq, Header, MemOp, MemReq, ModifyReq, Msg, MsgType,
};
use crate::lease::pr::{Refusal, Word};
use crate::lease::{AcquireStatus as St, Lease, Rc};
use crate::{Error, Result};

/// Staging bytes each call slot owns (one 4 KiB page).
pub const SMALL: usize = 4096;
/// The default per-thread limit of calls in flight.
pub const DEFAULT_MAX_INFLIGHT: u32 = 64;
/// The largest per-thread limit (staging is `SMALL` bytes per slot).
pub const MAX_INFLIGHT: u32 = 1024;
/// Slots beyond the limit kept for blocking calls, so that a blocking call
/// works on a thread whose posted calls are at the limit.
const RESERVED: usize = 2;
/// RPCs one thread keeps outstanding at one directory (its receive slots
/// for that directory's replies).
pub(crate) const RPC_PER_DIR: usize = 32;
/// Work requests one thread keeps outstanding on one data QP.
const WR_PER_QP: usize = 256;
/// Work requests collected for one data QP before they are posted as one
/// chain (doorbell batching; the chain is also posted at the next poll).
const DOORBELL: usize = 16;
/// Consecutive polls that found nothing after which a poll yields the
/// core once (see [`ClientThread::poll_into`]).
const YIELD_EVERY: u32 = 256;
/// READ buffers a thread keeps for reuse ([`ClientThread::recycle`]).
const POOLED: usize = 256;

/// What a post did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Post {
    /// Posted: exactly one completion will follow.
    Posted,
    /// The thread has its maximum of calls in flight: nothing was posted
    /// (poll, then post again).
    Retry,
}

/// What the lease a call was given learns from its completion (applied by
/// [`Completion::apply`]; blocking calls apply it themselves).
#[derive(Clone, Debug, Default)]
pub(super) struct Update {
    /// An honoured one-sided extension: the units the region now holds.
    units: Option<u32>,
    /// An honoured two-sided extension: units added.
    add_units: Option<u32>,
    /// Auto-extension step to use next.
    auto_step: Option<u32>,
    /// READ with WITH_CACHE: cache the data at this offset.
    cache_insert: Option<u64>,
    /// WRITE with WITH_CACHE: write these bytes through the cache.
    cache_write: Option<(u64, Vec<u8>)>,
    /// An upgrade succeeded: the read lease was given back.
    release: bool,
    /// Auto-extend found the protection region closed.
    closed: bool,
}

/// The result of a posted call.
#[derive(Debug)]
pub struct Completion {
    /// The tag given to the post call.
    pub user_data: u64,
    /// What the blocking call would have returned.
    pub result: Result<Rc>,
    /// Old 8-byte value of a CAS/FAA (also of an allocation: its buffer
    /// offset), else 0.
    pub value: u64,
    /// The new lease of an acquisition or upgrade (granted or not), boxed
    /// so that a completion stays small (it is moved through the queue).
    pub lease: Option<Box<Lease>>,
    /// READ data.
    pub data: Vec<u8>,
    /// Results of a committed batch (per operation: READ data, or the old
    /// value of a CAS/FAA as 8 little-endian bytes).
    pub batch: Vec<Vec<u8>>,
    /// Boxed: only extensions, caches and upgrades learn something.
    update: Option<Box<Update>>,
    /// The READ data is still in staging slot `.1` (blocking reads only).
    staged: Option<u32>,
}

impl Completion {
    pub(super) fn new(user_data: u64, result: Result<Rc>) -> Completion {
        Completion {
            user_data,
            result,
            value: 0,
            lease: None,
            data: Vec::new(),
            batch: Vec::new(),
            update: None,
            staged: None,
        }
    }

    /// What the lease learns (created on first use).
    fn upd(&mut self) -> &mut Update {
        self.update.get_or_insert_with(Default::default)
    }

    /// The lease a completed acquisition returns (its error, if it failed).
    pub fn into_lease(self) -> Result<Lease> {
        self.result?;
        self.lease
            .map(|l| *l)
            .ok_or_else(|| Error::Invalid("acquisition completed without a lease".into()))
    }

    /// The return code: the call's code, or the code of its error.
    pub fn rc(&self) -> Rc {
        match &self.result {
            Ok(rc) => *rc,
            Err(e) => rc_of(e),
        }
    }

    /// Brings the lease the call was given up to date with what the call
    /// learnt: an honoured extension's new deadline, WITH_CACHE data, an
    /// upgrade's release of the read lease. Skipping it is safe (the lease
    /// then expires locally at its older deadline and caches less).
    pub fn apply(&self, lease: &mut Lease) {
        let Some(u) = self.update.as_deref() else {
            return;
        };
        if let Some(units) = u.units {
            lease.set_units(units);
        }
        if let Some(more) = u.add_units {
            lease.set_units(lease.units.saturating_add(more));
        }
        if let Some(step) = u.auto_step {
            lease.auto_step = step;
        }
        if let Some(off) = u.cache_insert {
            lease.cache.insert(off, &self.data);
        }
        if let Some((off, bytes)) = &u.cache_write {
            lease.cache.write(*off, bytes);
        }
        if u.release {
            lease.release();
        }
        if u.closed {
            lease.closed = true;
        }
    }
}

/// The code of a core error (as the C boundary maps it).
pub(crate) fn rc_of(e: &Error) -> Rc {
    match e {
        Error::Invalid(_) => Rc::Invalid,
        Error::NotFound(_) => Rc::NotFound,
        Error::NoMem(_) => Rc::NoMem,
        Error::Timeout(_) | Error::Fabric(_) | Error::NodesDied(_) => Rc::RdmaExecutionErr,
        Error::Keeper(_) => Rc::Retry,
        Error::Io { .. } => Rc::Invalid,
        Error::Refused { rc, .. } => *rc,
    }
}

/// A call, prepared by its post function: either work to do, or already
/// decided (an expired lease, a cache hit, a NO_RPC lease).
pub(super) enum Prepared {
    Op(Op),
    /// Boxed: a prepared call is returned by value on every post.
    Done(Box<Completion>),
}

/// What a call does.
pub(super) enum Op {
    /// Boxed: an RPC's state is large and an RPC costs microseconds.
    Rpc(Box<RpcOp>),
    Data(DataOp),
}

/// After an acquisition's reply.
pub(super) enum Then {
    /// Return the lease.
    Lease,
    /// An allocation: return the buffer offset (or None: NoMem).
    Alloc,
    /// An upgrade: give the read lease back (this request) on success.
    Upgrade(ModifyReq),
}

/// Calls that are RPCs to a directory (one or more in sequence).
pub(super) enum RpcOp {
    Acquire {
        write: bool,
        node: u16,
        dir: u16,
        req: AcquireReq,
        attempts: u32,
        then: Then,
        /// The upgrade's new lease, kept while the read lease is given back.
        got: Option<Box<Lease>>,
    },
    Relinquish {
        node: u16,
        dir: u16,
        req: ModifyReq,
    },
    Dealloc {
        node: u16,
        dir: u16,
        req: ModifyReq,
        offset: u64,
    },
    Extend {
        node: u16,
        dir: u16,
        req: ModifyReq,
    },
    /// A two-sided memory call, split in chunks of one message.
    Mem {
        node: u16,
        dir: u16,
        req: MemReq,
        total: usize,
        done: usize,
        /// READ: the data so far; WRITE: the source.
        data: Vec<u8>,
    },
    Admin {
        node: u16,
        dir: u16,
        req: AdminReq,
    },
}

impl RpcOp {
    fn target(&self) -> (u16, u16) {
        match self {
            RpcOp::Acquire { node, dir, .. }
            | RpcOp::Relinquish { node, dir, .. }
            | RpcOp::Dealloc { node, dir, .. }
            | RpcOp::Extend { node, dir, .. }
            | RpcOp::Mem { node, dir, .. }
            | RpcOp::Admin { node, dir, .. } => (*node, *dir),
        }
    }

    /// The request to send now.
    fn request(&self) -> (MsgType, Msg) {
        match self {
            RpcOp::Acquire {
                write,
                req,
                then,
                got,
                ..
            } => match (then, got) {
                (Then::Upgrade(r), Some(_)) => (MsgType::Relinquish, Msg::Relinquish(*r)),
                _ => (
                    if *write {
                        MsgType::AcquireW
                    } else {
                        MsgType::AcquireR
                    },
                    Msg::Acquire(*req),
                ),
            },
            RpcOp::Relinquish { req, .. } | RpcOp::Dealloc { req, .. } => {
                (MsgType::Relinquish, Msg::Relinquish(*req))
            }
            RpcOp::Extend { req, .. } => (MsgType::Extend, Msg::Extend(*req)),
            RpcOp::Mem {
                req,
                total,
                done,
                data,
                ..
            } => {
                let n = (total - done).min(msg::MAX_MEM_PAYLOAD);
                let mut r = req.clone();
                r.offset = req.offset + *done as u64;
                if r.op == MemOp::Read || r.op == MemOp::Write {
                    r.size = n as u32;
                }
                if r.op == MemOp::Write {
                    r.payload = data[*done..*done + n].to_vec();
                }
                (MsgType::Memory, Msg::Memory(r))
            }
            RpcOp::Admin { req, .. } => (MsgType::Admin, Msg::Admin(*req)),
        }
    }
}

/// What a one-sided call does.
pub(super) enum DataKind {
    Read,
    Write,
    Cas {
        compare: u64,
        swap: u64,
    },
    Faa {
        add: u64,
    },
    /// One-sided extension: CAS on the protection region's word of lease
    /// (slot, generation).
    Extend {
        from: Word,
        to: Word,
        slot: u32,
        generation: u64,
    },
    /// A committed batch: its chain (local offsets relative to the
    /// staging area) and per operation (result bytes, staging offset).
    Batch {
        wrs: Box<[WrOp]>,
        outs: Box<[(usize, u64)]>,
    },
}

/// An auto-extension posted before the access (WITH_AUTO_EXTEND).
pub(super) struct PreExtend {
    pub from: Word,
    pub to: Word,
    pub raddr: u64,
    pub rkey: u32,
    pub step: u32,
    /// The local check called the lease expired: the access goes ahead
    /// only if this extension is honoured.
    pub required: bool,
    /// When the call was prepared (the extension's round trip).
    pub posted: Instant,
}

/// One-sided calls on a data QP.
pub(super) struct DataOp {
    pub node: u16,
    pub dir: u16,
    pub kind: DataKind,
    /// Remote address of byte 0 of the transfer and its rkey.
    pub raddr: u64,
    pub rkey: u32,
    /// Bytes in all; done so far.
    pub total: usize,
    pub done: usize,
    /// READ: the data so far; WRITE: the source.
    pub data: Vec<u8>,
    /// Auto-extension and cache state: boxed, rare, and a call is moved
    /// into its slot (a `DataOp` of at most 128 bytes is moved inline).
    pub rare: Option<Box<DataRare>>,
    /// The lease's deadline when the call was checked against it locally:
    /// a refusal once that deadline is in doubt means the lease ran out
    /// while the call was in flight (LEASE_LOCAL_EXPIRED_ERR).
    pub ddl: Option<i64>,
    /// Asked for WITH_AUTO_EXTEND: running out of the lease in flight
    /// counts as a lease auto-extend lost.
    pub auto: bool,
    /// A blocking READ of at most [`SMALL`] bytes: its data stays in the
    /// call's staging page and [`ClientThread::run_into`] copies it to the
    /// caller (no buffer in between).
    pub staged: bool,
}

/// The rare parts of a one-sided call (WITH_AUTO_EXTEND, WITH_CACHE).
#[derive(Default)]
pub(super) struct DataRare {
    pub pre: Option<PreExtend>,
    /// WITH_CACHE: the lease offset to cache at.
    pub cache: Option<u64>,
    /// Set once the auto-extension was honoured.
    pub units: Option<u32>,
}

impl DataOp {
    /// The auto-extension still to be posted before the access.
    fn pre(&self) -> Option<&PreExtend> {
        self.rare.as_deref().and_then(|r| r.pre.as_ref())
    }

    /// True when the call stages through the large buffer.
    fn large(&self) -> bool {
        match &self.kind {
            DataKind::Read | DataKind::Write => self.total > SMALL,
            DataKind::Batch { outs, .. } => outs
                .iter()
                .map(|(n, off)| off + *n as u64)
                .max()
                .is_some_and(|end| end > SMALL as u64),
            _ => false,
        }
    }

    fn wrs(&self) -> usize {
        match &self.kind {
            DataKind::Batch { wrs, .. } => wrs.len(),
            _ => 1,
        }
    }
}

/// What a call waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// In the backlog: not posted yet (or to be posted again).
    Backlog,
    /// The reply to this RPC id from directory index `peer`.
    Rpc { id: u64, peer: usize },
    /// A completion on data QP `qp` of `wrs` work requests.
    Wr { qp: usize, wrs: usize },
}

struct Call {
    user_data: u64,
    /// A blocking call's: its completion stays with the slot, never polled.
    internal: bool,
    op: Op,
    wait: Wait,
    /// An RPC's deadline, CLOCK_MONOTONIC_COARSE ns (deadlines are
    /// seconds, its tick is milliseconds); 0 until the call's step is
    /// stamped by the first round after it was posted (see
    /// `Calls::stamp`). A work request's deadline is its QP's (see
    /// `Calls::since`).
    deadline: i64,
}

#[derive(Default)]
struct Slot {
    /// Sequence of the work request posted last for this slot.
    seq: u32,
    call: Option<Call>,
    /// A finished blocking call's completion.
    done: Option<Completion>,
}

/// A thread's engine state.
pub(super) struct Calls {
    max: usize,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Posted calls not yet polled (finished ones included).
    user: usize,
    /// Finished calls in completion order (a Vec: a poll that takes them
    /// all swaps it with the caller's empty vector).
    ready: Vec<Completion>,
    backlog: VecDeque<u32>,
    /// Calls waiting for an RPC reply (a reply finds its call by the
    /// slot index in its RPC id: no map).
    rpcs: usize,
    rpc_out: Vec<usize>,
    wr_out: Vec<usize>,
    large_owner: Option<u32>,
    next_deadline: Option<i64>,
    /// RPCs sent since the last round, whose deadline that round stamps:
    /// one clock read per round, not per post (a call's timeout runs from
    /// the first round after its post).
    stamp: Vec<u32>,
    /// Per data QP: since when (CLOCK_MONOTONIC_COARSE ns, stamped by the
    /// first round that saw it; 0: not yet, or nothing outstanding) the
    /// request at the front of its `fifo` waits. RC completes in order, so
    /// the front is the request whose deadline comes first; when its QP
    /// made no progress for `rpc_timeout`, the QP is recovered and every
    /// call waiting on it fails (see [`ClientThread::expire_fronts`]). No
    /// per-call stamp: a posted READ costs no clock and no deadline
    /// bookkeeping.
    since: Vec<i64>,
    /// The earliest `since + rpc_timeout` over the data QPs.
    data_deadline: Option<i64>,
    /// Some QP's front changed since the last round (restamp `since`).
    fronts_moved: bool,
    /// Calls posted to the fabric at once (not waiting in the backlog),
    /// highest seen (a statistic for tests).
    pub(super) peak: usize,
    wc: [Wc; 32],
    /// Per data QP: work requests made since the last post (posted as one
    /// chain, the last one signalled, at the next poll or once there are
    /// [`DOORBELL`] of them).
    pend: Vec<Vec<SendWr>>,
    /// Per data QP: the calls whose requests are posted or pending there,
    /// in posting order (as `wr_id`s). RC completes in order and a chain
    /// signals only its last request, so a completion (or the first
    /// error) of one of them completes every call before it.
    fifo: Vec<VecDeque<u64>>,
    /// READ buffers given back by [`ClientThread::recycle`].
    pool: Vec<Vec<u8>>,
    /// Polls in a row that returned nothing while calls were out.
    empty_polls: u32,
}

impl Calls {
    pub(super) fn new(max: u32, dirs: usize) -> Calls {
        let max = if max == 0 { DEFAULT_MAX_INFLIGHT } else { max }.min(MAX_INFLIGHT) as usize;
        let n = max + RESERVED;
        Calls {
            max,
            slots: (0..n).map(|_| Slot::default()).collect(),
            free: (0..n as u32).rev().collect(),
            user: 0,
            ready: Vec::new(),
            backlog: VecDeque::new(),
            rpcs: 0,
            rpc_out: vec![0; dirs],
            wr_out: vec![0; dirs],
            large_owner: None,
            next_deadline: None,
            stamp: Vec::with_capacity(n),
            since: vec![0; dirs],
            data_deadline: None,
            fronts_moved: false,
            peak: 0,
            wc: [Wc::default(); 32],
            pend: (0..dirs)
                .map(|_| Vec::with_capacity(2 * DOORBELL))
                .collect(),
            fifo: (0..dirs)
                .map(|_| VecDeque::with_capacity(WR_PER_QP))
                .collect(),
            pool: Vec::new(),
            empty_polls: 0,
        }
    }

    /// Staging slots needed (bytes: `slots() * SMALL`).
    pub(super) fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The per-thread limit.
    pub(super) fn max(&self) -> usize {
        self.max
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

impl Calls {
    /// Call step `id` now waits on data QP `qp` for `wrs` requests: in
    /// posting order behind the others there (a new front is stamped by
    /// the next round).
    fn enter(&mut self, qp: usize, id: u64, wrs: usize) {
        if self.fifo[qp].is_empty() {
            self.fronts_moved = true;
        }
        self.fifo[qp].push_back(id);
        self.wr_out[qp] += wrs;
    }

    /// Puts new rkeys (old → new) into every call on (node, dir) that is
    /// waiting or about to be posted again: its request, its
    /// auto-extension and a batch's requests.
    pub(super) fn rekey(&mut self, node: u16, dir: u16, map: &HashMap<u32, u32>) {
        if map.is_empty() {
            return;
        }
        let new = |k: &mut u32| {
            if let Some(&n) = map.get(k) {
                *k = n;
            }
        };
        for s in self.slots.iter_mut() {
            let Some(Call {
                op: Op::Data(d), ..
            }) = s.call.as_mut()
            else {
                continue;
            };
            if (d.node, d.dir) != (node, dir) {
                continue;
            }
            new(&mut d.rkey);
            if let Some(p) = d.rare.as_mut().and_then(|r| r.pre.as_mut()) {
                new(&mut p.rkey);
            }
            if let DataKind::Batch { wrs, .. } = &mut d.kind {
                for w in wrs.iter_mut() {
                    match w {
                        WrOp::Read { rkey, .. }
                        | WrOp::Write { rkey, .. }
                        | WrOp::Cas { rkey, .. }
                        | WrOp::Faa { rkey, .. } => new(rkey),
                        _ => {}
                    }
                }
            }
        }
    }
}

/// CLOCK_MONOTONIC_COARSE in ns.
fn coarse_now() -> i64 {
    crate::fabric::monotonic_coarse_ns()
}

/// Low bits of an RPC id: the call's slot (or [`RPC_TAG_DIRECT`]).
pub(super) const RPC_TAG_MASK: u64 = 0xffff;
/// The tag of RPCs sent outside the engine (recovery).
pub(super) const RPC_TAG_DIRECT: u32 = 0xffff;

/// The RPC id of the thread's `n`-th RPC, sent by call slot `idx`: the
/// reply names its call (slots are fewer than 2^16), and the counter keeps
/// ids unique, so a late reply never matches a newer call.
pub(super) fn rpc_tag(n: u64, idx: u32) -> u64 {
    n << 16 | (idx as u64 & RPC_TAG_MASK)
}

fn wr_id(idx: u32, seq: u32) -> u64 {
    idx as u64 | (seq as u64) << 32
}

impl ClientThread {
    /// Calls posted by this thread whose completions were not polled yet.
    pub fn inflight(&self) -> usize {
        self.calls.user
    }

    /// The per-thread limit of calls in flight (`Config::max_inflight`).
    pub fn max_inflight(&self) -> usize {
        self.calls.max()
    }

    /// The most calls this thread had in flight at once.
    pub fn peak_inflight(&self) -> usize {
        self.calls.peak
    }

    /// Posts the call `prep` prepares, for `user_data`; nothing is prepared
    /// (the lease is untouched) when the thread is at its limit.
    pub(super) fn post(
        &mut self,
        user_data: u64,
        prep: impl FnOnce(&mut Self) -> Result<Prepared>,
    ) -> Result<Post> {
        if self.calls.user >= self.calls.max {
            return Ok(Post::Retry);
        }
        match prep(self)? {
            Prepared::Done(c) => {
                let mut c = *c;
                c.user_data = user_data;
                self.calls.user += 1;
                self.calls.ready.push(c);
            }
            Prepared::Op(op) => {
                self.calls.user += 1;
                self.enqueue(op, user_data, false);
            }
        }
        Ok(Post::Posted)
    }

    /// The posted small READ as most calls are (no cache, no
    /// auto-extension, not two-sided; the backlog empty and the QP with
    /// room): checked, written into its slot and chained in one step,
    /// leaving the engine exactly as the general path would. None: nothing
    /// was done, the general path takes the call (and reports what is
    /// wrong with it).
    #[inline]
    pub(super) fn post_read_lean(
        &mut self,
        lease: &Lease,
        len: usize,
        offset: u64,
        flag: u64,
        user_data: u64,
    ) -> Option<Post> {
        let c = &self.calls;
        if flag & !rw::NO_LOCAL_EXPIRE_CHECK != 0
            || len == 0
            || len > SMALL
            || !lease.live
            || c.user >= c.max
            || !c.backlog.is_empty()
        {
            return None;
        }
        let qp = self.sh.dir_index(lease.node, lease.dir);
        if c.wr_out.get(qp).is_none_or(|&n| n >= WR_PER_QP) {
            return None;
        }
        let checked = flag & rw::NO_LOCAL_EXPIRE_CHECK == 0;
        if checked && self.expired(lease) {
            return None;
        }
        let (raddr, rkey) = self.remote(lease, offset, 0);
        let lkey = self.stage.lkey();
        let calls = &mut self.calls;
        let idx = calls.free.pop()?;
        let slot = &mut calls.slots[idx as usize];
        slot.seq = slot.seq.wrapping_add(1);
        let id = wr_id(idx, slot.seq);
        slot.call = Some(Call {
            user_data,
            internal: false,
            op: Op::Data(DataOp {
                node: lease.node,
                dir: lease.dir,
                kind: DataKind::Read,
                raddr,
                rkey,
                total: len,
                done: 0,
                // Taken from the pool when the data is there (see
                // `data_ok`): nothing to zero now.
                data: Vec::new(),
                rare: None,
                ddl: (checked && !lease.never_expires()).then_some(lease.ddl),
                auto: false,
                staged: false,
            }),
            wait: Wait::Wr { qp, wrs: 1 },
            deadline: 0,
        });
        calls.user += 1;
        calls.enter(qp, id, 1);
        calls.pend[qp].push(SendWr {
            wr_id: id,
            op: WrOp::Read {
                local: Sge {
                    lkey,
                    offset: idx as u64 * SMALL as u64,
                    len: len as u32,
                },
                raddr,
                rkey,
            },
            signaled: false,
        });
        self.posted_wr(qp);
        Some(Post::Posted)
    }

    /// Runs a prepared call to its end (a blocking call): other calls in
    /// flight make progress meanwhile; their completions wait for `poll`.
    pub(super) fn run(&mut self, p: Result<Prepared>) -> Result<Completion> {
        self.run_into(p, &mut [])
    }

    /// Runs the engine until no call is in flight (every call ends by its
    /// deadline), dropping unpolled completions: for a thread that goes
    /// away.
    pub(super) fn settle(&mut self) {
        let t0 = Instant::now();
        let limit = self.sh.cfg.rpc_timeout.saturating_mul(2) + Duration::from_secs(1);
        let mut spins = 0u32;
        while self.calls.in_flight() > 0 && t0.elapsed() < limit {
            // Unpolled completions of posted calls free their slots.
            let n = self.calls.ready.len();
            self.take_ready(n);
            let busy = self.calls.slots.iter().any(|s| s.call.is_some());
            if !busy {
                break;
            }
            match self.progress() {
                Ok(0) => {
                    spins += 1;
                    self.idle(t0, spins);
                }
                Ok(_) => spins = 0,
                Err(_) => break,
            }
        }
        let n = self.calls.ready.len();
        self.take_ready(n);
    }

    /// As [`ClientThread::run`], for a blocking READ into `dst`: data the
    /// call left in its staging page is copied straight to `dst` (before
    /// the page can be reused); otherwise `dst` gets the completion's data.
    pub(super) fn run_into(&mut self, p: Result<Prepared>, dst: &mut [u8]) -> Result<Completion> {
        let op = match p? {
            Prepared::Done(c) => {
                if matches!(c.result, Ok(Rc::Ok)) && c.data.len() == dst.len() {
                    dst.copy_from_slice(&c.data);
                }
                return Ok(*c);
            }
            Prepared::Op(op) => op,
        };
        let idx = self.enqueue(op, 0, true);
        let t0 = Instant::now();
        let mut spins = 0u32;
        loop {
            if let Some(c) = self.calls.slots[idx as usize].done.take() {
                let r = match (c.staged, &c.result) {
                    (Some(i), Ok(Rc::Ok)) => self.stage.read(i as u64 * SMALL as u64, dst),
                    (None, Ok(Rc::Ok)) if c.data.len() == dst.len() => {
                        dst.copy_from_slice(&c.data);
                        Ok(())
                    }
                    _ => Ok(()),
                };
                self.calls.free.push(idx);
                r?;
                return Ok(c);
            }
            if self.progress()? > 0 {
                spins = 0;
                continue;
            }
            spins += 1;
            self.idle(t0, spins);
        }
    }

    /// Gives the core away a little when nothing happened for a while.
    fn idle(&self, t0: Instant, spins: u32) {
        // The clock only every 64th idle spin (a read costs what a poll does).
        if spins < 64 || spins % 64 != 0 && spins < 4096 {
            std::hint::spin_loop();
            return;
        }
        if t0.elapsed() <= super::data::SPIN_FOR {
            std::hint::spin_loop();
            return;
        }
        let rpc = self.calls.rpcs > 0;
        let data = self.calls.wr_out.iter().any(|&n| n > 0);
        match (rpc, data) {
            (false, true) => self.data_cq.wait(Duration::from_micros(50)),
            (true, false) => {
                self.msgr.cq().wait(Duration::from_micros(5));
            }
            _ => std::thread::yield_now(),
        }
    }

    /// Makes progress and returns up to `max` completions (never blocks).
    pub fn poll(&mut self, max: usize) -> Result<Vec<Completion>> {
        let mut v = Vec::new();
        self.poll_into(&mut v, max)?;
        Ok(v)
    }

    /// As [`ClientThread::poll`], appending the completions to `out`
    /// (reuse it between polls: nothing is allocated then); returns how
    /// many it appended.
    pub fn poll_into(&mut self, out: &mut Vec<Completion>, max: usize) -> Result<usize> {
        if self.calls.ready.len() < max {
            self.progress()?;
        }
        let n = max.min(self.calls.ready.len());
        if n > 0 {
            self.calls.user -= n;
            if out.is_empty() && n == self.calls.ready.len() {
                // All of them into an empty vector: no copy.
                std::mem::swap(out, &mut self.calls.ready);
            } else {
                out.extend(self.calls.ready.drain(..n));
            }
            self.calls.empty_polls = 0;
        } else if self.calls.user > 0 {
            // A thread that polls in a tight loop while its calls are out
            // gives its core away now and then: the thread that answers
            // them (a soft NIC's, or a directory's) may be queued behind
            // it on the same core, and a busy host otherwise serves one
            // round trip per scheduler slice (milliseconds).
            self.calls.empty_polls += 1;
            if self.calls.empty_polls % YIELD_EVERY == 0 {
                std::thread::yield_now();
            }
        }
        Ok(n)
    }

    /// Gives a polled completion back so that its READ buffer serves a
    /// later READ (a thread that recycles its completions allocates
    /// nothing per READ).
    pub fn recycle(&mut self, c: Completion) {
        self.recycle_buf(c.data);
    }

    /// Gives a READ buffer back (see [`ClientThread::recycle`]).
    pub fn recycle_buf(&mut self, mut v: Vec<u8>) {
        if v.capacity() > 0 && v.capacity() <= SMALL && self.calls.pool.len() < POOLED {
            v.clear();
            self.calls.pool.push(v);
        }
    }

    /// A zeroed buffer of `len` bytes for a READ (from the recycled ones
    /// when one is large enough).
    pub(super) fn read_buf(&mut self, len: usize) -> Vec<u8> {
        match self.calls.pool.pop() {
            Some(mut v) if v.capacity() >= len => {
                v.resize(len, 0);
                v
            }
            Some(v) => {
                self.calls.pool.push(v);
                vec![0u8; len]
            }
            None => vec![0u8; len],
        }
    }

    /// As [`ClientThread::poll`], but waits up to `timeout` for at least one
    /// completion.
    pub fn wait(&mut self, max: usize, timeout: Duration) -> Result<Vec<Completion>> {
        let t0 = Instant::now();
        let mut spins = 0u32;
        loop {
            let got = self.poll(max)?;
            if !got.is_empty() || max == 0 || t0.elapsed() >= timeout || self.calls.user == 0 {
                return Ok(got);
            }
            spins += 1;
            self.idle(t0, spins);
        }
    }

    fn take_ready(&mut self, max: usize) -> Vec<Completion> {
        let n = max.min(self.calls.ready.len());
        self.calls.user -= n;
        self.calls.ready.drain(..n).collect()
    }

    /// Puts a call into a free slot and starts it. Inlined, so that the
    /// prepared call is moved once, straight into its slot.
    #[inline(always)]
    fn enqueue(&mut self, op: Op, user_data: u64, internal: bool) -> u32 {
        let idx = self
            .calls
            .free
            .pop()
            .expect("a free call slot (limit checked, blocking calls reserved)");
        self.calls.slots[idx as usize].call = Some(Call {
            user_data,
            internal,
            op,
            wait: Wait::Backlog,
            deadline: 0,
        });
        self.launch(idx);
        idx
    }

    /// Starts the call just put into slot `idx`.
    fn launch(&mut self, idx: u32) {
        // Post at once when the backlog is empty (order is kept otherwise).
        if self.calls.backlog.is_empty() {
            if !self.start(idx) {
                self.calls.backlog.push_back(idx);
            }
        } else {
            self.calls.backlog.push_back(idx);
            self.drain_backlog();
        }
    }

    /// Posts call `idx`'s next step if its resources are there; false
    /// leaves it for the backlog. The call stays in its slot (it is large:
    /// moving it out and back costs more than the post).
    fn start(&mut self, idx: u32) -> bool {
        let rpc = match self.calls.slots[idx as usize].call.as_ref() {
            None => return true,
            Some(c) => matches!(c.op, Op::Rpc(_)),
        };
        let posted = if rpc {
            self.start_rpc(idx)
        } else {
            self.start_data(idx)
        };
        match posted {
            Ok(Some(w)) => {
                self.posted(idx, w);
                true
            }
            Ok(None) => {
                if let Some(call) = self.calls.slots[idx as usize].call.as_mut() {
                    call.wait = Wait::Backlog;
                }
                false
            }
            Err(e) => {
                self.finish(idx, Completion::new(0, Err(e)));
                true
            }
        }
    }

    /// Call `idx`'s step went to the fabric (or into its QP's pending
    /// chain) and now waits for `w`: an RPC's deadline is stamped by the
    /// next round (a request's is its QP's), the peak counts it, and a
    /// chain of [`DOORBELL`] requests is posted at once.
    #[inline]
    fn posted(&mut self, idx: u32, w: Wait) {
        if let Some(call) = self.calls.slots[idx as usize].call.as_mut() {
            call.wait = w;
            call.deadline = 0;
            if matches!(w, Wait::Rpc { .. }) {
                self.calls.stamp.push(idx);
            }
        }
        match w {
            Wait::Wr { qp, .. } => self.posted_wr(qp),
            _ => self.count_peak(),
        }
    }

    /// A request went into data QP `qp`'s pending chain: counted in the
    /// peak, and a chain of [`DOORBELL`] requests is posted at once.
    #[inline]
    fn posted_wr(&mut self, qp: usize) {
        self.count_peak();
        if self.calls.pend[qp].len() >= DOORBELL {
            self.flush_qp(qp);
        }
    }

    #[inline]
    fn count_peak(&mut self) {
        // Every call not in the backlog (finished blocking calls hold
        // their slot only briefly).
        let active = self.calls.in_flight() - self.calls.backlog.len();
        self.calls.peak = self.calls.peak.max(active);
    }

    fn start_rpc(&mut self, idx: u32) -> Result<Option<Wait>> {
        let Some(Call { op: Op::Rpc(r), .. }) = self.calls.slots[idx as usize].call.as_ref() else {
            return Ok(None);
        };
        let (node, dir) = r.target();
        let peer = self.sh.dir_index(node, dir);
        if self.calls.rpc_out[peer] >= RPC_PER_DIR {
            return Ok(None);
        }
        let (ty, m) = r.request();
        self.rpc_id += 1;
        let id = rpc_tag(self.rpc_id, idx);
        let h = Header {
            ty,
            rpc_id: id,
            node: self.sh.node_id,
            thread: self.slot,
        };
        msg::encode(&h, &m, &mut self.out);
        let out = std::mem::take(&mut self.out);
        let res = self.msgr.send(peer, &out);
        self.out = out;
        res?;
        self.calls.rpc_out[peer] += 1;
        self.calls.rpcs += 1;
        Ok(Some(Wait::Rpc { id, peer }))
    }

    /// Makes call `idx`'s next work requests and adds them to its QP's
    /// pending chain (posted by [`ClientThread::flush_qp`]).
    fn start_data(&mut self, idx: u32) -> Result<Option<Wait>> {
        let Calls {
            slots,
            wr_out,
            large_owner,
            pend,
            ..
        } = &mut self.calls;
        let slot = &mut slots[idx as usize];
        let Some(Call {
            op: Op::Data(d), ..
        }) = slot.call.as_mut()
        else {
            return Ok(None);
        };
        let qp = self.sh.dir_index(d.node, d.dir);
        let large = d.large();
        if large && large_owner.is_some_and(|o| o != idx) {
            return Ok(None);
        }
        let wrs = if d.pre().is_some() { 1 } else { d.wrs() };
        if wr_out[qp] + wrs > WR_PER_QP {
            return Ok(None);
        }
        let (mr, base): (&Mr, u64) = if large {
            (&self.buf, 0)
        } else {
            (&self.stage, idx as u64 * SMALL as u64)
        };
        let lkey = mr.lkey();
        let local = |off: u64, len: usize| Sge {
            lkey,
            offset: base + off,
            len: len as u32,
        };
        let chunk = if large { DATA_BUF } else { SMALL };
        // Staging first: nothing is queued if it fails.
        match (d.pre(), &d.kind) {
            (None, DataKind::Write) => {
                let n = (d.total - d.done).min(chunk);
                mr.write(base, &d.data[d.done..d.done + n])?;
            }
            // Write payloads of a batch were staged by `prepare_batch` into
            // the data vector at their offsets.
            (None, DataKind::Batch { .. }) if !d.data.is_empty() => {
                mr.write(base, &d.data)?;
            }
            _ => {}
        }
        if large {
            *large_owner = Some(idx);
        }
        slot.seq = slot.seq.wrapping_add(1);
        let id = wr_id(idx, slot.seq);
        let q = &mut pend[qp];
        let mut one = |op: WrOp| {
            q.push(SendWr {
                wr_id: id,
                op,
                signaled: false,
            })
        };
        if let Some(p) = d.pre() {
            one(WrOp::Cas {
                local: local(0, 8),
                raddr: p.raddr,
                rkey: p.rkey,
                compare: p.from.pack(),
                swap: p.to.pack(),
            })
        } else {
            match &d.kind {
                DataKind::Read => {
                    let n = (d.total - d.done).min(chunk);
                    one(WrOp::Read {
                        local: local(0, n),
                        raddr: d.raddr.wrapping_add(d.done as u64),
                        rkey: d.rkey,
                    })
                }
                DataKind::Write => {
                    let n = (d.total - d.done).min(chunk);
                    one(WrOp::Write {
                        local: local(0, n),
                        raddr: d.raddr.wrapping_add(d.done as u64),
                        rkey: d.rkey,
                    })
                }
                DataKind::Cas { compare, swap } => one(WrOp::Cas {
                    local: local(0, 8),
                    raddr: d.raddr,
                    rkey: d.rkey,
                    compare: *compare,
                    swap: *swap,
                }),
                DataKind::Faa { add } => one(WrOp::Faa {
                    local: local(0, 8),
                    raddr: d.raddr,
                    rkey: d.rkey,
                    add: *add,
                }),
                DataKind::Extend { from, to, .. } => one(WrOp::Cas {
                    local: local(0, 8),
                    raddr: d.raddr,
                    rkey: d.rkey,
                    compare: from.pack(),
                    swap: to.pack(),
                }),
                DataKind::Batch { wrs, .. } => {
                    for op in wrs {
                        one(rebase(*op, lkey, base));
                    }
                }
            }
        }
        self.calls.enter(qp, id, wrs);
        Ok(Some(Wait::Wr { qp, wrs }))
    }

    /// Posts data QP `qp`'s pending requests as one chain, its last request
    /// signalled (the fabric completes in order; errors and flushes
    /// complete every request, signalled or not). A chain the fabric
    /// refuses fails its calls.
    fn flush_qp(&mut self, qp: usize) {
        let q = &mut self.calls.pend[qp];
        let Some(last) = q.last_mut() else {
            return;
        };
        last.signaled = true;
        let res = self.data[qp].post_send(q);
        if let Err(e) = res {
            // Nothing of it runs (a QP that is not ready refuses the
            // first request): fail its calls, which are the last ones
            // queued on the QP.
            let mut ids: Vec<u64> = q.iter().map(|w| w.wr_id).collect();
            ids.dedup();
            q.clear();
            self.calls.fronts_moved = true;
            let msg = e.to_string();
            for id in ids {
                if let Some(k) = self.calls.fifo[qp].iter().rposition(|&x| x == id) {
                    self.calls.fifo[qp].remove(k);
                }
                let idx = (id & 0xffff_ffff) as u32;
                if self.seq_matches(id) {
                    self.finish(
                        idx,
                        Completion::new(
                            0,
                            Err(Error::Fabric(FabricError::Invalid(format!(
                                "posting to data QP {qp} failed: {msg}"
                            )))),
                        ),
                    );
                }
            }
            return;
        }
        q.clear();
    }

    /// Posts every data QP's pending chain.
    fn flush_all(&mut self) {
        for qp in 0..self.calls.pend.len() {
            if !self.calls.pend[qp].is_empty() {
                self.flush_qp(qp);
            }
        }
    }

    /// True when `id` is the request call slot `idx` posted last and the
    /// call still waits for it.
    fn seq_matches(&self, id: u64) -> bool {
        let idx = (id & 0xffff_ffff) as usize;
        let seq = (id >> 32) as u32;
        self.calls.slots.get(idx).is_some_and(|s| {
            s.seq == seq && matches!(s.call.as_ref().map(|c| c.wait), Some(Wait::Wr { .. }))
        })
    }

    /// Ends call `idx` with `c` (its tag and internal flag are the call's).
    fn finish(&mut self, idx: u32, mut c: Completion) {
        let slot = &mut self.calls.slots[idx as usize];
        let Some(call) = slot.call.as_ref() else {
            return;
        };
        let (wait, user_data, internal) = (call.wait, call.user_data, call.internal);
        // Dropped in place (the call is large: not moved out).
        slot.call = None;
        self.release_wait(wait);
        if self.calls.large_owner == Some(idx) {
            self.calls.large_owner = None;
        }
        c.user_data = user_data;
        if internal {
            self.calls.slots[idx as usize].done = Some(c);
        } else {
            self.calls.ready.push(c);
            self.calls.free.push(idx);
        }
    }

    /// Gives back what a call's wait held (RPC credit, send queue depth).
    fn release_wait(&mut self, w: Wait) {
        match w {
            Wait::Rpc { peer, .. } => {
                self.calls.rpcs -= 1;
                self.calls.rpc_out[peer] = self.calls.rpc_out[peer].saturating_sub(1);
            }
            Wait::Wr { qp, wrs } => self.calls.wr_out[qp] -= wrs,
            Wait::Backlog => {}
        }
    }

    /// One round: data completions, RPC replies, deadlines, the backlog.
    /// Returns the events handled.
    pub(super) fn progress(&mut self) -> Result<usize> {
        let mut n = 0;
        // Requests made since the last round go out as one chain per QP.
        self.flush_all();
        // One clock read per round: deadlines of the calls posted since
        // the last one, and the check against the nearest deadline.
        let c = &self.calls;
        let now = if c.stamp.is_empty()
            && c.next_deadline.is_none()
            && !c.fronts_moved
            && c.data_deadline.is_none()
        {
            0
        } else {
            coarse_now()
        };
        if !self.calls.stamp.is_empty() {
            self.stamp_deadlines(now);
        }
        if self.calls.fronts_moved {
            self.stamp_fronts(now);
        }
        // Data QPs.
        loop {
            let k = self.data_cq.poll(&mut self.calls.wc);
            for i in 0..k {
                let wc = self.calls.wc[i];
                n += self.on_wc(wc)?;
            }
            if k < self.calls.wc.len() {
                break;
            }
        }
        // RPC replies (only while some are awaited: a data call's wait
        // polls one CQ; stale replies wait for the next RPC).
        while self.calls.rpcs > 0 {
            let Some(inc) = self.msgr.try_recv()? else {
                break;
            };
            n += 1;
            if inc.data.len() < 16 {
                continue;
            }
            let id = u64::from_le_bytes(inc.data[8..16].try_into().expect("8 bytes"));
            let idx = (id & RPC_TAG_MASK) as u32;
            let Some(c) = self
                .calls
                .slots
                .get_mut(idx as usize)
                .and_then(|s| s.call.as_mut())
                .filter(|c| matches!(c.wait, Wait::Rpc { id: w, .. } if w == id))
            else {
                continue; // a reply to a call that timed out
            };
            c.wait = Wait::Backlog;
            self.calls.rpcs -= 1;
            self.calls.rpc_out[inc.peer] = self.calls.rpc_out[inc.peer].saturating_sub(1);
            let decoded = msg::decode(&inc.data);
            self.msgr.give_back(inc.data);
            match decoded {
                Ok((_, m)) => self.on_reply(idx, m)?,
                Err(e) => self.finish(idx, Completion::new(0, Err(Error::Invalid(e.to_string())))),
            }
        }
        if let Some(d) = self.calls.next_deadline {
            if now >= d {
                n += self.expire()?;
            }
        }
        if let Some(d) = self.calls.data_deadline {
            if now >= d {
                n += self.expire_fronts(now)?;
            }
        }
        if !self.calls.backlog.is_empty() {
            n += self.drain_backlog();
        }
        // What completions and the backlog started.
        self.flush_all();
        Ok(n)
    }

    /// Starts backlogged calls as far as resources allow. A call that must
    /// wait holds back the later calls to the same directory (so that calls
    /// to one QP are posted in the order they were made); returns how many
    /// started.
    fn drain_backlog(&mut self) -> usize {
        let mut started = 0;
        let mut held: Vec<(bool, usize)> = Vec::new();
        for _ in 0..self.calls.backlog.len() {
            let Some(idx) = self.calls.backlog.pop_front() else {
                break;
            };
            let target = match self.calls.slots[idx as usize].call.as_ref().map(|c| &c.op) {
                Some(Op::Rpc(r)) => {
                    let (node, dir) = r.target();
                    (true, self.sh.dir_index(node, dir))
                }
                Some(Op::Data(d)) => (false, self.sh.dir_index(d.node, d.dir)),
                None => continue,
            };
            if held.contains(&target) || !self.start(idx) {
                if !held.contains(&target) {
                    held.push(target);
                }
                self.calls.backlog.push_back(idx);
            } else {
                started += 1;
            }
        }
        started
    }

    /// Gives the calls posted since the last round their deadline.
    fn stamp_deadlines(&mut self, now: i64) {
        let d = now.saturating_add(self.timeout_ns()).max(1);
        let Calls {
            stamp,
            slots,
            next_deadline,
            ..
        } = &mut self.calls;
        let mut any = false;
        for idx in stamp.drain(..) {
            // A slot listed twice, or finished (and maybe reused) since,
            // is stamped at most once per step.
            if let Some(c) = slots[idx as usize].call.as_mut() {
                if c.deadline == 0 && matches!(c.wait, Wait::Rpc { .. }) {
                    c.deadline = d;
                    any = true;
                }
            }
        }
        if any && next_deadline.is_none_or(|n| d < n) {
            *next_deadline = Some(d);
        }
    }

    /// `rpc_timeout` in ns (the unit of the engine's deadlines).
    fn timeout_ns(&self) -> i64 {
        self.sh.cfg.rpc_timeout.as_nanos().min(i64::MAX as u128) as i64
    }

    /// Stamps the data QPs whose front request changed since the last
    /// round (see `Calls::since`) and finds the earliest data deadline.
    fn stamp_fronts(&mut self, now: i64) {
        let t = self.timeout_ns();
        let Calls {
            fifo,
            since,
            data_deadline,
            fronts_moved,
            ..
        } = &mut self.calls;
        let mut next: Option<i64> = None;
        for (q, s) in fifo.iter().zip(since.iter_mut()) {
            if q.is_empty() {
                *s = 0;
                continue;
            }
            if *s == 0 {
                *s = now.max(1);
            }
            let d = s.saturating_add(t);
            next = Some(next.map_or(d, |n| n.min(d)));
        }
        *data_deadline = next;
        *fronts_moved = false;
    }

    /// A data QP whose front request got no completion for `rpc_timeout`
    /// (the QP made no progress that long) is treated as failed at the
    /// NIC, as retries exceeded would: it is recovered in place and every
    /// call waiting on it completes as RDMA_EXECUTION_ERR (its peer did
    /// not answer; a call is never left waiting for one that stopped).
    fn expire_fronts(&mut self, now: i64) -> Result<usize> {
        let t = self.timeout_ns();
        let mut n = 0;
        for qp in 0..self.calls.fifo.len() {
            let s = self.calls.since[qp];
            if s == 0 || s.saturating_add(t) > now {
                continue;
            }
            self.calls.since[qp] = 0;
            // Entries of calls that ended otherwise need no recovery.
            if !self.calls.fifo[qp].iter().any(|&id| self.seq_matches(id)) {
                self.calls.fifo[qp].clear();
                continue;
            }
            let waiting = self.recover_qp(qp)?;
            n += waiting.len();
            for idx in waiting {
                self.finish(idx, Completion::new(0, Ok(Rc::RdmaExecutionErr)));
            }
        }
        // Restamped (and the next deadline found) by the next round.
        self.calls.data_deadline = None;
        self.calls.fronts_moved = true;
        Ok(n)
    }

    /// Fails RPCs past their deadline (no reply). Work requests have their
    /// QP's deadline (see [`ClientThread::expire_fronts`]).
    fn expire(&mut self) -> Result<usize> {
        let now = coarse_now();
        let mut next: Option<i64> = None;
        let mut late = Vec::new();
        for (i, s) in self.calls.slots.iter().enumerate() {
            let Some(c) = &s.call else { continue };
            if !matches!(c.wait, Wait::Rpc { .. }) || c.deadline == 0 {
                continue; // not an RPC out, or stamped by the next round
            }
            if c.deadline <= now {
                late.push((i as u32, c.wait));
            } else if next.is_none_or(|n| c.deadline < n) {
                next = Some(c.deadline);
            }
        }
        self.calls.next_deadline = next;
        for (idx, w) in &late {
            match *w {
                Wait::Rpc { peer, .. } => {
                    let nd = self.sh.cfg.dir_nr as usize;
                    let (node, dir) = (peer / nd, peer % nd);
                    let timeout = self.sh.cfg.rpc_timeout;
                    self.finish(
                        *idx,
                        Completion::new(
                            0,
                            Err(Error::Timeout(format!(
                                "no reply from node {node} dir {dir} within {timeout:?}"
                            ))),
                        ),
                    );
                }
                Wait::Wr { .. } | Wait::Backlog => {}
            }
        }
        Ok(late.len())
    }

    /// Handles one data completion; returns the calls it completed.
    fn on_wc(&mut self, wc: Wc) -> Result<usize> {
        let idx = (wc.wr_id & 0xffff_ffff) as u32;
        if !self.seq_matches(wc.wr_id) {
            return Ok(0); // stale: the call finished or was re-posted
        }
        let Some(Wait::Wr { qp, .. }) =
            self.calls.slots[idx as usize].call.as_ref().map(|c| c.wait)
        else {
            return Ok(0);
        };
        // Calls posted before it on this QP completed without a signal of
        // their own (in order, and successfully: a failure completes).
        // Their staging pages were just written by the fabric: their loads
        // are started together here rather than one by one as each call
        // reads its data (in the same pass that finds the request).
        let ok = wc.status == WcStatus::Success;
        let mut found = false;
        for &id in self.calls.fifo[qp].iter() {
            if ok {
                self.stage.prefetch((id & 0xffff_ffff) * SMALL as u64);
            }
            if id == wc.wr_id {
                found = true;
                break;
            }
        }
        if !found {
            return Ok(0);
        }
        // The QP made progress: its next front waits from the next round.
        self.calls.since[qp] = 0;
        self.calls.fronts_moved = true;
        let mut n = 0;
        while let Some(&front) = self.calls.fifo[qp].front() {
            if front == wc.wr_id {
                break;
            }
            self.calls.fifo[qp].pop_front();
            n += self.data_ok(front)?;
        }
        if wc.status == WcStatus::Success {
            self.calls.fifo[qp].pop_front();
            return Ok(n + self.data_ok(wc.wr_id)?);
        }
        if wc.status == WcStatus::WrFlushErr {
            // Flushed without an error of its own: the QP broke under it
            // (e.g. the peer reset); recover and post it again.
            let again = self.recover_qp(qp)?;
            self.repost(again);
            return Ok(n + 1);
        }
        self.data_failed(idx, qp, Some(wc.status))?;
        Ok(n + 1)
    }

    /// The request `id` completed successfully (if its call still waits
    /// for it): the call takes its next step or finishes.
    fn data_ok(&mut self, id: u64) -> Result<usize> {
        let idx = (id & 0xffff_ffff) as u32;
        let Some(slot) = self.calls.slots.get_mut(idx as usize) else {
            return Ok(0);
        };
        // Only the request the call posted last, while it waits for it.
        if slot.seq != (id >> 32) as u32 {
            return Ok(0);
        }
        // A posted small READ in one request (most completions): its
        // bytes go from the staging page straight into its buffer, and
        // the completion straight into the ready queue.
        if let Some(Call {
            op: Op::Data(d),
            wait: Wait::Wr { qp, wrs },
            user_data,
            internal: false,
            ..
        }) = slot.call.as_mut()
        {
            if matches!(d.kind, DataKind::Read)
                && d.rare.is_none()
                && !d.staged
                && d.done == 0
                && d.total <= SMALL
                && (d.data.is_empty() || d.data.len() == d.total)
            {
                let at = idx as u64 * SMALL as u64;
                let (qp, wrs, user_data) = (*qp, *wrs, *user_data);
                let data = if d.data.is_empty() {
                    // The lean lane's: a recycled buffer, appended to (not
                    // zeroed first).
                    let mut v = self.calls.pool.pop().unwrap_or_default();
                    self.stage.read_append(at, d.total, &mut v)?;
                    v
                } else {
                    self.stage.read(at, &mut d.data)?;
                    std::mem::take(&mut d.data)
                };
                slot.call = None;
                self.calls.wr_out[qp] -= wrs;
                self.calls.free.push(idx);
                // Built in its place in the queue.
                self.calls.ready.push(Completion {
                    user_data,
                    result: Ok(Rc::Ok),
                    value: 0,
                    lease: None,
                    data,
                    batch: Vec::new(),
                    update: None,
                    staged: None,
                });
                return Ok(1);
            }
        }
        let Some(call) = slot.call.as_mut() else {
            return Ok(0);
        };
        if !matches!(call.wait, Wait::Wr { .. }) {
            return Ok(0);
        }
        if let Wait::Wr { qp, wrs } = call.wait {
            call.wait = Wait::Backlog;
            self.calls.wr_out[qp] -= wrs;
        }
        self.on_data_done(idx)?;
        Ok(1)
    }

    /// Call `idx`'s request on `qp` failed with `status` (None: no
    /// completion within its deadline): recover the QP, fail the call, post
    /// the other calls waiting on that QP again. A refusal by the responder
    /// (remote access or invalid request) is a protection fault, or an
    /// expiry in flight; a request that never got an answer (no completion,
    /// retries exceeded, a fatal NIC error) failed to execute, whatever its
    /// lease.
    fn data_failed(&mut self, idx: u32, qp: usize, status: Option<WcStatus>) -> Result<()> {
        let mut again = self.recover_qp(qp)?;
        again.retain(|&i| i != idx);
        self.repost(again);
        if !matches!(
            status,
            Some(WcStatus::RemAccessErr | WcStatus::RemInvReqErr)
        ) {
            self.finish(idx, Completion::new(0, Ok(Rc::RdmaExecutionErr)));
            return Ok(());
        }
        let (ddl, revive, auto) = match self.calls.slots[idx as usize].call.as_ref().map(|c| &c.op)
        {
            Some(Op::Data(d)) => (d.ddl, d.pre().is_some(), d.auto),
            _ => (None, false, false),
        };
        if revive {
            // The auto-extension itself was refused: its region's window is
            // gone, the GC revoked the lease (before the access was posted).
            let mut c = Completion::new(0, Ok(Rc::LeaseLocalExpiredErr));
            c.upd().closed = true;
            self.note_lost();
            self.finish(idx, c);
            return Ok(());
        }
        let c = match ddl {
            // It passed the local check at post time and the deadline is in
            // doubt now: it expired in flight (and auto-extend, if it was
            // asked to keep the lease alive, did not). The GC closes the
            // protection region before it unbinds: the lease is closed.
            Some(t) if !self.sh.clock.before_deadline(t) => {
                if auto {
                    self.note_lost();
                }
                let mut c = Completion::new(0, Ok(Rc::LeaseLocalExpiredErr));
                c.upd().closed = true;
                c
            }
            _ => Completion::new(0, Ok(Rc::RdmaProtectionErr)),
        };
        self.finish(idx, c);
        Ok(())
    }

    /// Auto-extend could not keep a lease alive: it came back to a lease the
    /// memory node had closed, or a call ran out of it in flight.
    fn note_lost(&self) {
        self.auto_extend_lost.set(self.auto_extend_lost.get() + 1);
        if !self.ext_warned.replace(true) {
            tracing::warn!(
                "auto-extend could not keep a lease alive: the thread came back after the memory node \
                 closed it (its term plus epsilon had passed); a term longer than this thread's pauses is needed"
            );
        }
    }

    /// Resets and reconnects data QP `qp` in place. Returns the calls that
    /// were waiting on it, in posting order, back in the backlog state:
    /// the caller posts again those whose requests never executed
    /// ([`ClientThread::repost`]) and ends the others.
    fn recover_qp(&mut self, qp: usize) -> Result<Vec<u32>> {
        let (node, dir) = (
            (qp / self.sh.cfg.dir_nr as usize) as u16,
            (qp % self.sh.cfg.dir_nr as usize) as u16,
        );
        // Requests not posted yet are dropped with the rest: their calls
        // are posted again below, after the recovery.
        self.calls.pend[qp].clear();
        // In posting order (the order they are posted again in).
        let order: Vec<u64> = self.calls.fifo[qp].drain(..).collect();
        self.calls.since[qp] = 0;
        self.calls.fronts_moved = true;
        let waiting: Vec<u32> = order
            .into_iter()
            .filter(|&id| self.seq_matches(id))
            .map(|id| (id & 0xffff_ffff) as u32)
            .collect();
        for s in self.calls.slots.iter_mut() {
            let Some(c) = s.call.as_mut() else { continue };
            if let Wait::Wr { qp: q, wrs } = c.wait {
                if q == qp {
                    self.calls.wr_out[qp] -= wrs;
                    c.wait = Wait::Backlog;
                    // Completions still to come for it are stale now.
                    s.seq = s.seq.wrapping_add(1);
                }
            }
        }
        self.recover_data_qp(node, dir)?;
        Ok(waiting)
    }

    /// Posts `calls` again (after a recovery), first and in their order,
    /// ahead of calls not yet posted.
    fn repost(&mut self, calls: Vec<u32>) {
        for idx in calls.into_iter().rev() {
            self.calls.backlog.push_front(idx);
        }
    }

    fn on_data_done(&mut self, idx: u32) -> Result<()> {
        let large;
        let again;
        let mut rtt = None;
        let mut lost = false;
        let mut c = Completion::new(0, Ok(Rc::Ok));
        {
            let Some(call) = self.calls.slots[idx as usize].call.as_mut() else {
                return Ok(());
            };
            let Op::Data(d) = &mut call.op else {
                return Ok(());
            };
            large = d.large();
            let (mr, base) = if large {
                (&self.buf, 0)
            } else {
                (&self.stage, idx as u64 * SMALL as u64)
            };
            if let Some(p) = d.rare.as_mut().and_then(|r| r.pre.take()) {
                let found = Word::unpack(mr.load_u64(base)?);
                rtt = Some(p.posted.elapsed());
                if found == p.from {
                    if let Some(r) = d.rare.as_mut() {
                        r.units = Some(p.to.units);
                    }
                    c.upd().auto_step = Some(p.step.saturating_mul(2).min(1 << 10));
                    again = true;
                } else if p.required || found.is_closed() {
                    // The GC closed the region (or, for a lease that had run
                    // out by the local check, it changed): no access, and no
                    // more attempts on this lease.
                    c.result = Ok(Rc::LeaseLocalExpiredErr);
                    c.upd().closed = true;
                    lost = true;
                    again = false;
                } else {
                    again = true;
                }
            } else {
                let chunk = if large { DATA_BUF } else { SMALL };
                match &d.kind {
                    DataKind::Read => {
                        if !d.staged && d.data.len() < d.total {
                            d.data.resize(d.total, 0);
                        }
                        let n = (d.total - d.done).min(chunk);
                        let at = d.done;
                        if d.staged && !large {
                            c.staged = Some(idx);
                        } else {
                            mr.read(base, &mut d.data[at..at + n])?;
                        }
                        d.done += n;
                        again = d.done < d.total;
                    }
                    DataKind::Write => {
                        d.done += (d.total - d.done).min(chunk);
                        again = d.done < d.total;
                    }
                    DataKind::Cas { .. } | DataKind::Faa { .. } => {
                        c.value = mr.load_u64(base)?;
                        again = false;
                    }
                    DataKind::Extend {
                        from,
                        to,
                        slot,
                        generation,
                    } => {
                        let found = Word::unpack(mr.load_u64(base)?);
                        if found == *from {
                            c.upd().units = Some(to.units);
                        } else {
                            let why = if found.is_closed() {
                                Refusal::Closed
                            } else {
                                Refusal::Changed(found)
                            };
                            tracing::debug!(?found, "extension refused");
                            c.result = Err(Error::Invalid(format!(
                                "extend of lease slot {slot} generation {generation} on node {} dir {} refused: {why}",
                                d.node, d.dir
                            )));
                        }
                        again = false;
                    }
                    DataKind::Batch { outs, .. } => {
                        for (len, off) in outs {
                            let mut v = vec![0u8; *len];
                            mr.read(base + off, &mut v)?;
                            c.batch.push(v);
                        }
                        again = false;
                    }
                }
            }
            if !again {
                if let Some(u) = d.rare.as_ref().and_then(|r| r.units) {
                    let x = c.upd();
                    x.units = x.units.or(Some(u));
                }
                match &d.kind {
                    DataKind::Read => {
                        c.data = std::mem::take(&mut d.data);
                        let cache = d.rare.as_ref().and_then(|r| r.cache);
                        if cache.is_some() {
                            c.upd().cache_insert = cache;
                        }
                    }
                    DataKind::Write => {
                        if let Some(off) = d.rare.as_ref().and_then(|r| r.cache) {
                            c.upd().cache_write = Some((off, std::mem::take(&mut d.data)));
                        }
                    }
                    _ => {}
                }
            }
        }
        if lost {
            self.note_lost();
        }
        if let Some(t) = rtt {
            let t = t.as_nanos().min(u64::MAX as u128) as u64;
            self.ext_rtt_ns = if self.ext_rtt_ns == 0 {
                t
            } else {
                (self.ext_rtt_ns * 7 + t) / 8
            };
        }
        if again {
            // The next chunk (or the access after the auto-extension).
            if !self.start(idx) {
                self.calls.backlog.push_front(idx);
            }
        } else {
            self.finish(idx, c);
        }
        Ok(())
    }

    fn on_reply(&mut self, idx: u32, m: Msg) -> Result<()> {
        let Some(call) = self.calls.slots[idx as usize].call.as_mut() else {
            return Ok(());
        };
        let Op::Rpc(r) = &mut call.op else {
            return Ok(());
        };
        let mut again = false;
        let mut magic = false;
        let mut c = Completion::new(0, Ok(Rc::Ok));
        match &mut **r {
            RpcOp::Acquire {
                write,
                node,
                dir,
                req,
                attempts,
                then,
                got,
            } => {
                if let Some(w) = got.take() {
                    // The upgrade's relinquish of the read lease.
                    match m {
                        Msg::RelinquishResp(x) if x.rc == Rc::Ok as u8 => {}
                        _ => {
                            c.result = Err(Error::Invalid(format!(
                                "upgrade on node {node} dir {dir}: the read lease could not be given back"
                            )))
                        }
                    }
                    c.upd().release = true;
                    c.lease = Some(w);
                } else {
                    match m {
                        Msg::AcquireResp(a) => {
                            *attempts += 1;
                            // A magic-MW fault (injected, PATRONUS.md §4.10)
                            // is retried transparently, as the original
                            // does; it cannot recur within 1 024 binds on
                            // one connection, so a few attempts suffice.
                            if a.status == St::MagicMwErr as u8 && *attempts < 8 {
                                magic = true;
                                again = true;
                            } else if a.status != St::Success as u8 {
                                c.lease = Some(Box::new(Lease::failed(a.status, *node, *dir)));
                            } else {
                                let l = Lease::granted(
                                    *node, *dir, req.size, *write, req.flag, req.ns, &a,
                                );
                                match then {
                                    Then::Upgrade(_) => {
                                        *got = Some(Box::new(l));
                                        again = true;
                                    }
                                    Then::Alloc => {
                                        let layout = self.sh.peer(*node)?.layout;
                                        c.value = l.buf_off(&layout).0;
                                        c.lease = Some(Box::new(l));
                                    }
                                    Then::Lease => c.lease = Some(Box::new(l)),
                                }
                            }
                        }
                        m => {
                            c.result = Err(Error::Invalid(format!(
                                "acquire on node {node} dir {dir} answered with another message: {m:?}"
                            )))
                        }
                    }
                }
            }
            RpcOp::Relinquish { node, dir, req } => match m {
                Msg::RelinquishResp(x) if x.rc == Rc::Ok as u8 => {}
                _ => {
                    c.result = Err(Error::Invalid(format!(
                        "relinquish of lease slot {} generation {} refused by node {node} dir {dir}: it is not this thread's lease",
                        req.slot, req.generation
                    )))
                }
            },
            RpcOp::Dealloc {
                node,
                dir,
                req,
                offset,
            } => match m {
                Msg::RelinquishResp(x) if x.rc == Rc::Ok as u8 => {}
                Msg::RelinquishResp(_) => {
                    c.result = Err(Error::Invalid(format!(
                        "dealloc of {} bytes at offset {offset:#x} (hint {}) on node {node} dir {dir} \
                         refused: not a live block of that allocator",
                        req.size, req.hint
                    )))
                }
                m => {
                    c.result = Err(Error::Invalid(format!(
                        "dealloc on node {node} dir {dir}: unexpected reply {m:?}"
                    )))
                }
            },
            RpcOp::Extend { node, dir, req } => match m {
                Msg::ExtendResp(x) if x.rc == Rc::Ok as u8 => {
                    c.upd().add_units = Some(u32::try_from(x.units).unwrap_or(u32::MAX));
                }
                _ => {
                    c.result = Err(Error::Invalid(format!(
                        "rpc_extend of lease slot {} generation {} on node {node} dir {dir} refused: \
                         it expired, was relinquished, has no protection region, or would pass the cap",
                        req.slot, req.generation
                    )))
                }
            },
            RpcOp::Mem {
                node,
                dir,
                req,
                total,
                done,
                data,
            } => match m {
                Msg::MemoryResp(x) => match Rc::from_u8(x.rc) {
                    Rc::Ok => {
                        let n = (*total - *done).min(msg::MAX_MEM_PAYLOAD);
                        match req.op {
                            MemOp::Read => {
                                if x.payload.len() != n {
                                    c.result = Err(Error::Invalid("short rpc_read reply".into()));
                                } else {
                                    data[*done..*done + n].copy_from_slice(&x.payload);
                                    *done += n;
                                    again = *done < *total;
                                    if !again {
                                        c.data = std::mem::take(data);
                                    }
                                }
                            }
                            MemOp::Write => {
                                *done += n;
                                again = *done < *total;
                            }
                            _ => c.value = x.old,
                        }
                    }
                    rc @ (Rc::RdmaProtectionErr | Rc::LeaseLocalExpiredErr) => {
                        c.result = Ok(rc);
                        c.value = x.old;
                    }
                    rc => {
                        c.result = Err(Error::Invalid(format!(
                            "memory RPC {:?} of {} bytes at offset {} on lease slot {} \
                             generation {} of node {node} dir {dir} refused ({rc:?}): no live lease of this thread",
                            req.op, req.size, req.offset, req.slot, req.generation
                        )))
                    }
                },
                m => {
                    c.result = Err(Error::Invalid(format!(
                        "memory RPC to node {node} dir {dir} answered with another message: {m:?}"
                    )))
                }
            },
            RpcOp::Admin { node, dir, req } => match m {
                Msg::AdminResp(x) if x.rc == 0 => c.value = x.value as u64,
                Msg::AdminResp(x) => {
                    c.result = Err(Error::Invalid(format!(
                        "admin {:?} on node {node} dir {dir} refused ({:?})",
                        req.op,
                        Rc::from_u8(x.rc)
                    )))
                }
                m => {
                    c.result = Err(Error::Invalid(format!(
                        "admin {:?}: unexpected reply {m:?}",
                        req.op
                    )))
                }
            },
        }
        if magic {
            self.magic_retries += 1;
        }
        if again {
            if !self.start(idx) {
                self.calls.backlog.push_front(idx);
            }
        } else {
            self.finish(idx, c);
        }
        Ok(())
    }
}

/// A batch's request with its local offset moved into the staging area.
fn rebase(op: WrOp, lkey: u32, base: u64) -> WrOp {
    let fix = |s: Sge| Sge {
        lkey,
        offset: base + s.offset,
        len: s.len,
    };
    match op {
        WrOp::Read { local, raddr, rkey } => WrOp::Read {
            local: fix(local),
            raddr,
            rkey,
        },
        WrOp::Write { local, raddr, rkey } => WrOp::Write {
            local: fix(local),
            raddr,
            rkey,
        },
        WrOp::Cas {
            local,
            raddr,
            rkey,
            compare,
            swap,
        } => WrOp::Cas {
            local: fix(local),
            raddr,
            rkey,
            compare,
            swap,
        },
        WrOp::Faa {
            local,
            raddr,
            rkey,
            add,
        } => WrOp::Faa {
            local: fix(local),
            raddr,
            rkey,
            add,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Completions and calls are moved through queues and slots per call:
    /// rare parts (a lease, what a lease learns, an auto-extension, a
    /// cache offset, a batch's requests, an RPC's state, a call decided at
    /// post time) are boxed so that the common ones stay small.
    #[test]
    fn completions_and_calls_stay_small() {
        assert!(
            std::mem::size_of::<Completion>() <= 128,
            "{}",
            std::mem::size_of::<Completion>()
        );
        assert!(
            std::mem::size_of::<Call>() <= 176,
            "{}",
            std::mem::size_of::<Call>()
        );
        // Posting moves a prepared call a few times: at most 128 bytes is
        // moved inline rather than through a memcpy call.
        assert!(
            std::mem::size_of::<Prepared>() <= 128,
            "{}",
            std::mem::size_of::<Prepared>()
        );
    }
}
