//! A serve pass: the directory takes up to [`PASS_REQUESTS`] requests
//! (round-robin across client threads), decides each against the lease
//! table, queues the window binds and unbinds they and the due GC tasks
//! need, posts them as one work-request chain per data QP with only the
//! chain's last request signalled, waits for every chain's last completion,
//! and only then sends the pass's replies.
//!
//! A chain that fails part-way (a bind refused, a QP in error) fails only
//! the operations that failed: on RC the NIC flushes everything after the
//! failing request, so flushed operations are posted again after the QP is
//! reset (windows stay bound across a reset). An acquire whose bind failed
//! gets `BIND_ERR` and gives its slot, windows and region back.
//!
//! Resources a revocation frees (windows, protection regions, conflict
//! locks) are quarantined until the pass's chains completed: on hardware,
//! chains on different QPs run in any order, so a window unbound on one QP
//! must not be bound on another in the same pass, and a region or lock must
//! not serve a new lease while its old holder can still reach it.

use std::time::{Duration, Instant};

use super::Directory;
use crate::fabric::{QpState, SendWr, Wc, WcStatus, WrOp};
use crate::lease::msg::{AcquireResp, Header, Msg, MsgType};
use crate::lease::{AcquireStatus as St, BufOff};

/// Most requests one pass takes (the original's `kHandleRequestBatchLimit`).
pub const PASS_REQUESTS: usize = 32;

/// Most window operations one pass queues before its GC stops taking due
/// tasks (the original's batch of 128 bind/unbind descriptors). Requests
/// take at most 2 each, so a full pass still leaves the GC half.
pub const PASS_WRS: usize = 128;

/// How often a flushed window operation is posted again.
const ROUNDS: usize = 3;

/// How long a pass waits for its chains.
const CHAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Counters of one directory's passes (read with [`Directory::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Passes that served at least one request or GC task.
    pub passes: u64,
    /// Requests served.
    pub requests: u64,
    /// Passes that served more than one request.
    pub multi_request_passes: u64,
    /// Most requests one pass served.
    pub max_requests_per_pass: u64,
    /// Work-request chains posted (one per data QP per round of a pass).
    pub chains: u64,
    /// Window binds posted (each bind once, re-posts not counted).
    pub binds: u64,
    /// Window unbinds posted (re-posts not counted).
    pub unbinds: u64,
    /// Most window operations one pass posted, over all its chains.
    pub max_pass_wrs: u64,
    /// Most chains one pass waited for together.
    pub max_pass_chains: u64,
    /// Most requests whose binds one pass posted before one wait.
    pub max_pass_bind_requests: u64,
    /// Window operations that failed (not flushed).
    pub failed_wrs: u64,
    /// Flushed window operations posted again after a QP reset.
    pub reposted_wrs: u64,
    /// Most requests of other clients the directory took while one
    /// client's oldest request waited (its fairness: one per other client
    /// with requests queued, however fast any of them sends).
    pub max_head_wait: u64,
    /// Most requests of one client queued at once (at most its receive
    /// slots).
    pub max_queue: u64,
    /// Time `server_serve` spent in passes that did work (the directory's
    /// busy time; `busy_ns / requests` is its cost per request).
    pub busy_ns: u64,
}

/// A window operation of the pass.
pub(super) struct WinOp {
    pub peer: usize,
    pub op: WrOp,
    /// The pending acquire (index in `Pass::acquires`) this bind serves.
    pub owner: Option<usize>,
    /// None until it completed.
    pub done: Option<std::result::Result<(), String>>,
}

/// An acquire waiting for its binds.
pub(super) struct PendingAcquire {
    pub peer: usize,
    /// Index of its reply in `Pass::replies`.
    pub reply: usize,
    pub slot: u32,
    pub gen: u64,
    pub resp: AcquireResp,
    /// GC deadline to arm when it succeeds.
    pub ddl: Option<i64>,
    /// Windows whose new rkeys the reply carries.
    pub mw_buf: Option<u32>,
    pub mw_pr: Option<u32>,
    /// A bind hit the magic index (`Config::magic_mw_fault`).
    pub magic: bool,
}

/// One QP's chain in a round.
struct Chain {
    peer: usize,
    /// Indices in `Pass::ops`, in posting order.
    ops: Vec<usize>,
    /// First operation that failed or was flushed.
    first_bad: Option<usize>,
    /// Its last completion arrived (or it was never posted).
    over: bool,
}

/// A reply of the pass.
pub(super) struct Reply {
    pub peer: usize,
    pub hdr: Header,
    pub ty: MsgType,
    pub msg: Msg,
}

/// What one pass accumulated (buffers reused across passes).
#[derive(Default)]
pub(super) struct Pass {
    pub ops: Vec<WinOp>,
    pub acquires: Vec<PendingAcquire>,
    pub replies: Vec<Reply>,
    /// Freed by this pass's revocations; given back once its chains
    /// completed.
    pub mws: Vec<u32>,
    pub prs: Vec<u32>,
    pub locks: Vec<BufOff>,
    /// Operations posted by this pass so far (for the stats).
    pub posted: u64,
    pub chains: u64,
    pub bind_requests: u64,
    /// Scratch of `finish_acquires`: per acquire, its first failed op.
    pub failed: Vec<Option<usize>>,
}

impl Directory {
    /// Queues window operation `op` towards `peer`; `owner` is the pending
    /// acquire it serves.
    pub(super) fn queue_op(&mut self, peer: usize, op: WrOp, owner: Option<usize>) {
        match op {
            WrOp::Bind { .. } => self.stats.binds += 1,
            _ => self.stats.unbinds += 1,
        }
        self.pass.ops.push(WinOp {
            peer,
            op,
            owner,
            done: None,
        });
    }

    /// Posts every open window operation of the pass, one chain per data
    /// QP (signalled once, at its end), and waits for every chain's last
    /// completion; flushed operations are posted again (up to [`ROUNDS`]
    /// times) after their QP is reset. Every operation is done afterwards.
    pub(super) fn commit(&mut self) {
        for round in 0..ROUNDS {
            if !self.post_round(round > 0) {
                break;
            }
        }
        for w in self.pass.ops.iter_mut().filter(|w| w.done.is_none()) {
            w.done = Some(Err("flushed on every attempt".into()));
            self.stats.failed_wrs += 1;
        }
    }

    /// One round of [`Directory::commit`]; false when nothing was open.
    fn post_round(&mut self, retry: bool) -> bool {
        self.chain_seq = self.chain_seq.wrapping_add(1);
        let seq = (self.chain_seq as u64) << 32;
        // Open operations grouped by peer, in queue order: one chain each.
        let mut chains: Vec<Chain> = Vec::new();
        for (i, w) in self.pass.ops.iter().enumerate() {
            if w.done.is_some() {
                continue;
            }
            match chains.iter_mut().find(|c| c.peer == w.peer) {
                Some(c) => c.ops.push(i),
                None => chains.push(Chain {
                    peer: w.peer,
                    ops: vec![i],
                    first_bad: None,
                    over: false,
                }),
            }
        }
        if chains.is_empty() {
            return false;
        }
        let mut wrs: Vec<SendWr> = Vec::new();
        for c in chains.iter_mut() {
            wrs.clear();
            wrs.extend(c.ops.iter().map(|&i| SendWr {
                wr_id: seq | i as u64,
                op: self.pass.ops[i].op,
                signaled: false,
            }));
            if let Some(last) = wrs.last_mut() {
                last.signaled = true;
            }
            if retry {
                self.stats.reposted_wrs += wrs.len() as u64;
            }
            let qp = self.data[c.peer].clone();
            let ready = if qp.state() != QpState::Rts {
                qp.reset()
                    .and_then(|_| qp.connect(&self.data_remote[c.peer]))
            } else {
                Ok(())
            };
            if let Err(e) = ready.and_then(|_| qp.post_send(&wrs)) {
                // Part of the chain may be on the QP: reset it, so what was
                // posted completes as flushed (completions of this round
                // for a chain that is over are ignored); the chain goes
                // again in the next round.
                tracing::warn!(dir = self.id, peer = c.peer, "window chain not posted: {e}");
                let _ = qp.reset();
                c.over = true;
                continue;
            }
            self.pass.posted += wrs.len() as u64;
            self.pass.chains += 1;
            self.stats.chains += 1;
        }
        let mut wc = [Wc::default(); 64];
        let t0 = Instant::now();
        while chains.iter().any(|c| !c.over) {
            let n = self.bind_cq.poll(&mut wc);
            for w in &wc[..n] {
                if w.wr_id & !0xffff_ffff != seq {
                    continue; // a completion of an earlier round or pass
                }
                let i = (w.wr_id & 0xffff_ffff) as usize;
                let Some(c) = chains.iter_mut().find(|c| !c.over && c.ops.contains(&i)) else {
                    continue;
                };
                let Some(op) = self.pass.ops.get_mut(i) else {
                    continue;
                };
                match w.status {
                    WcStatus::Success => op.done = Some(Ok(())),
                    // Never executed: open for the next round.
                    WcStatus::WrFlushErr => {
                        c.first_bad.get_or_insert(i);
                    }
                    s => {
                        self.stats.failed_wrs += 1;
                        c.first_bad.get_or_insert(i);
                        op.done = Some(Err(format!(
                            "window operation on dir {} towards peer {} failed: {s:?}",
                            self.id, op.peer
                        )));
                    }
                }
                if c.ops.last() == Some(&i) {
                    // The chain is over. Completions come in order: every
                    // operation before the first failed or flushed one
                    // executed (unsignalled, so silently); from it on, they
                    // were flushed and stay open.
                    c.over = true;
                    for &k in &c.ops {
                        if c.first_bad.is_some_and(|b| k >= b) {
                            break;
                        }
                        let op = &mut self.pass.ops[k];
                        if op.done.is_none() {
                            op.done = Some(Ok(()));
                        }
                    }
                }
            }
            if n == 0 {
                if t0.elapsed() > CHAIN_TIMEOUT {
                    for c in chains.iter_mut().filter(|c| !c.over) {
                        c.over = true;
                        tracing::warn!(
                            dir = self.id,
                            peer = c.peer,
                            "window chain did not complete in {CHAIN_TIMEOUT:?}"
                        );
                        for &k in &c.ops {
                            let op = &mut self.pass.ops[k];
                            if op.done.is_none() {
                                op.done = Some(Err("window chain timed out".into()));
                                self.stats.failed_wrs += 1;
                            }
                        }
                        // Flush what is left: its completions carry this
                        // round's tag, which no later round uses.
                        let _ = self.data[c.peer].reset();
                    }
                    break;
                }
                std::hint::spin_loop();
            }
        }
        self.pass.ops.iter().any(|w| w.done.is_none())
    }

    /// Completes the pass's acquires after their binds: a failed bind (or
    /// the magic index) fails its acquire, which gives back what it took;
    /// the others get their windows' rkeys and their GC task.
    pub(super) fn finish_acquires(&mut self) {
        let mut acquires = std::mem::take(&mut self.pass.acquires);
        // Each acquire's first failed operation, in one walk over the ops
        // (not one walk per acquire).
        let mut failed = std::mem::take(&mut self.pass.failed);
        failed.clear();
        failed.resize(acquires.len(), None);
        for (i, o) in self.pass.ops.iter().enumerate() {
            if let (Some(k), Some(Err(_))) = (o.owner, &o.done) {
                if let Some(f) = failed.get_mut(k) {
                    f.get_or_insert(i);
                }
            }
        }
        for (k, a) in acquires.iter_mut().enumerate() {
            let err = failed[k].and_then(|i| match &self.pass.ops[i].done {
                Some(Err(e)) => Some(e.clone()),
                _ => None,
            });
            let live = self.table.get(a.slot, a.gen).is_some();
            let status = match (&err, a.magic) {
                (Some(e), _) => {
                    tracing::debug!(dir = self.id, "acquire failed: {e}");
                    Some(St::BindErr)
                }
                (None, true) => Some(St::MagicMwErr),
                (None, false) => None,
            };
            if let Some(st) = status {
                if live {
                    // Windows whose bind failed or never completed are not
                    // bound: only the others are invalidated.
                    let unbound: Vec<u32> = self
                        .pass
                        .ops
                        .iter()
                        .filter(|o| o.owner == Some(k) && !matches!(o.done, Some(Ok(()))))
                        .filter_map(|o| match o.op {
                            WrOp::Bind { mw, .. } => Some(mw),
                            _ => None,
                        })
                        .collect();
                    if let Some(e) = self.revoke_except(a.slot, true, &unbound) {
                        if let Some((hint, off, size)) = e.alloc {
                            self.free_alloc(self.quotas.node_of(e.peer), hint, off, size);
                        }
                    }
                }
                a.resp = AcquireResp {
                    status: st as u8,
                    slot: u32::MAX,
                    ..Default::default()
                };
            } else {
                if let Some(mw) = a.mw_buf {
                    a.resp.rkey = self.sh.nic.mw_rkey(mw);
                }
                if let Some(mw) = a.mw_pr {
                    a.resp.pr_rkey = self.sh.nic.mw_rkey(mw);
                }
                if let (Some(at), true) = (a.ddl, live) {
                    self.ddl.push(at, (a.slot, a.gen));
                }
            }
            if let Some(r) = self.pass.replies.get_mut(a.reply) {
                debug_assert_eq!(r.peer, a.peer);
                r.msg = Msg::AcquireResp(a.resp);
            }
        }
        acquires.clear();
        self.pass.acquires = acquires;
        self.pass.failed = failed;
    }

    /// Gives back what the pass's revocations freed (their unbinds are
    /// done) and forgets the pass's operations.
    pub(super) fn release_quarantine(&mut self) {
        // A window whose invalidate failed or never completed may still be
        // bound: it waits in `dirty` for another invalidate, not in the pool.
        let mut stuck: Vec<(usize, u32)> = Vec::new();
        for o in &self.pass.ops {
            if let WrOp::Invalidate { mw } = o.op {
                if !matches!(o.done, Some(Ok(()))) {
                    stuck.push((o.peer, mw));
                }
            }
        }
        if stuck.is_empty() {
            self.mws.append(&mut self.pass.mws);
        } else {
            let pool = &mut self.mws;
            pool.extend(
                self.pass
                    .mws
                    .drain(..)
                    .filter(|m| !stuck.iter().any(|(_, s)| s == m)),
            );
            self.dirty.extend(stuck);
        }
        for pr in std::mem::take(&mut self.pass.prs) {
            let _ = self.prs().retire(self.pr_off(pr));
            self.table.give_pr(pr);
        }
        for k in self.pass.locks.drain(..) {
            self.sh.locks.unlock(k);
        }
        for o in &self.pass.ops {
            if let Some(Err(e)) = &o.done {
                if matches!(o.op, WrOp::Invalidate { .. }) {
                    tracing::warn!(dir = self.id, "unbind failed: {e}");
                }
            }
        }
        self.pass.ops.clear();
    }

    /// Counts a finished pass.
    pub(super) fn count_pass(&mut self, requests: usize, gc: usize) {
        let s = &mut self.stats;
        if requests + gc > 0 {
            s.passes += 1;
        }
        s.requests += requests as u64;
        if requests > 1 {
            s.multi_request_passes += 1;
        }
        s.max_requests_per_pass = s.max_requests_per_pass.max(requests as u64);
        s.max_pass_wrs = s.max_pass_wrs.max(self.pass.posted);
        s.max_pass_chains = s.max_pass_chains.max(self.pass.chains);
        s.max_pass_bind_requests = s.max_pass_bind_requests.max(self.pass.bind_requests);
        self.pass.posted = 0;
        self.pass.chains = 0;
        self.pass.bind_requests = 0;
    }
}
