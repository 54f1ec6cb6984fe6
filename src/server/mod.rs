//! Directories: the memory node's server threads, drivers of the lease
//! table (`lease::table`). A directory serves acquire / relinquish / extend
//! / two-sided memory RPCs from every client thread, binds and revokes
//! memory windows on its data QP towards the holder (so a window works only
//! for that client thread), and runs the lease GC from a deadline queue
//! whose revoke decision is atomic with the protection region: the
//! directory CASes the region's word to CLOSED before it unbinds, so a
//! racing one-sided extension either lands first (and the GC re-arms) or
//! fails.
//!
//! - `mod.rs`: the directory's resources, the serve loop and dispatch;
//! - `pass.rs`: a serve pass: up to 32 requests, their binds and unbinds
//!   (and the due GC tasks') posted as one chain per data QP signalled
//!   once, replies after the chains completed;
//! - `grant.rs`: acquire, relinquish, dealloc and two-sided extension;
//! - `windows.rs`: binding and revoking windows, revoking a lease;
//! - `gc.rs`: the deadline-driven GC;
//! - `memory.rs`: two-sided memory access and admin requests;
//! - `rekey.rs`: the admin QP reset (fresh PSNs; re-binding the peer's
//!   leases where windows do not survive a reset);
//! - `region.rs`: protection-region words in memory;
//! - `alloc.rs`: allocators for allocation leases.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::fabric::msg::Messenger;
use crate::fabric::{Cq, Mr, Nic, Pd, Qp, QpEndpoint};
use crate::lease::msg::{self, Header, ModifyResp, Msg, MsgType};
use crate::lease::quota::{AllocLedger, Quotas};
use crate::lease::table::{ConflictLocks, LeaseTable};
use crate::lease::{BufOff, Layout};
use crate::time::{Clock, DdlQueue};
use crate::Result;

pub mod alloc;
mod gc;
mod grant;
mod memory;
mod nic_atomics;
mod pass;
mod region;
mod rekey;
mod windows;

pub use alloc::{Allocator, RefillableSlab, SlabAllocator};
pub use pass::{DirStats, PASS_REQUESTS, PASS_WRS};

/// What every directory of a node shares (handed over by `src/node`).
pub struct DirShared {
    /// The node's configuration.
    pub cfg: Config,
    /// This node's id.
    pub node_id: u16,
    /// The NIC.
    pub nic: Arc<dyn Nic>,
    /// The protection domain of the node's region and windows.
    pub pd: Pd,
    /// The node's registered region.
    pub region: Arc<Mr>,
    /// Its layout.
    pub layout: Layout,
    /// Conflict locks across the node's directories.
    pub locks: ConflictLocks,
    /// The next lease generation (node-wide, never reused).
    pub next_gen: AtomicU64,
    /// The node's clock.
    pub clock: Arc<Clock>,
}

impl DirShared {
    /// Index of (node, thread) in a directory's QP vectors.
    pub fn peer_index(&self, node: u16, thread: u16) -> usize {
        node as usize * self.cfg.client_threads as usize + thread as usize
    }
}

/// One directory's connections: its RPC messenger and, per client thread
/// of the cluster, the data QP its windows are bound on.
pub struct DirSlot {
    /// RPC messenger (one QP per client thread of the cluster).
    pub msgr: Messenger,
    /// Data QPs towards every client thread.
    pub data: Vec<Arc<dyn Qp>>,
    /// Their remote endpoints (for reconnects).
    pub data_remote: Vec<QpEndpoint>,
    /// CQ of the binds and invalidates.
    pub bind_cq: Arc<dyn Cq>,
}

/// When a serving directory stops: the node's run protocol.
pub trait ServeControl: Send + Sync {
    /// Asked every 20 ms while the directory is idle: true once serving for
    /// `key` is over (every node finished); `Error::NodesDied` when every
    /// other node finished or died and some died.
    fn done(&self, key: u64) -> Result<bool>;
}

/// One server thread's directory.
pub struct Directory {
    sh: Arc<DirShared>,
    control: Arc<dyn ServeControl>,
    id: u16,
    msgr: Messenger,
    data: Vec<Arc<dyn Qp>>,
    data_remote: Vec<QpEndpoint>,
    bind_cq: Arc<dyn Cq>,
    /// Free windows (handles).
    mws: Vec<u32>,
    table: LeaseTable,
    /// MRs of USE_MR leases, by slot.
    mrs: Vec<Option<Arc<Mr>>>,
    ddl: DdlQueue<(u32, u64)>,
    allocs: std::collections::HashMap<u64, Box<dyn Allocator>>,
    /// Per-client limits.
    quotas: Quotas,
    /// Who allocated each live block.
    ledger: AllocLedger,
    out: Vec<u8>,
    /// Binds posted per connection (the magic-MW fault's index; counted only
    /// with `Config::magic_mw_fault`).
    binds: Vec<u64>,
    /// The pass being served.
    pass: pass::Pass,
    /// Windows that may still be bound (left bound by
    /// NO_RELINQUISH_UNBIND_ANY, or whose invalidate did not complete),
    /// with the connection they are bound to: invalidated by a later pass
    /// before they return to the pool (binding a bound window fails on
    /// hardware).
    dirty: Vec<(usize, u32)>,
    /// Tag of the current chain round (in the high half of wr_ids).
    chain_seq: u32,
    stats: DirStats,
    /// Test hook: the next bind towards this peer is posted with a bad key.
    bind_fault: Option<usize>,
    /// Protection-region CAS through the NIC (atomics not atomic with CPU
    /// atomics, or `Config::pr_atomics_through_nic`).
    nic_atomics: Option<nic_atomics::NicAtomics>,
    /// Per peer, the leases its last `QpReset` re-bound (old and new
    /// rkeys), until it fetched them (`AdminOp::LeaseKeys`); at most its
    /// lease quota.
    rekeyed: std::collections::HashMap<usize, Vec<msg::LeaseKey>>,
}

impl Directory {
    /// Directory `id` of the node, serving through `slot` until `control`
    /// says so.
    pub fn new(
        sh: Arc<DirShared>,
        control: Arc<dyn ServeControl>,
        id: u16,
        slot: DirSlot,
    ) -> Result<Directory> {
        let n = sh.cfg.leases_per_dir;
        let mut mws = Vec::with_capacity(2 * n as usize);
        for _ in 0..2 * n {
            mws.push(sh.nic.alloc_mw(sh.pd)?.handle);
        }
        let peers = slot.data.len();
        let lay = sh.layout;
        let nic_atomics = if !sh.nic.caps().atomics_glob || sh.cfg.pr_atomics_through_nic {
            let first = lay.pr(id, 0);
            let len = lay.pr(id, n as u64).0 - first.0;
            Some(nic_atomics::NicAtomics::open(&sh, first, len)?)
        } else {
            None
        };
        let slice = lay.alloc / sh.cfg.dir_nr as u64;
        let mut allocs: std::collections::HashMap<u64, Box<dyn Allocator>> = Default::default();
        allocs.insert(
            0,
            Box::new(SlabAllocator::new(
                lay.lease + id as u64 * slice,
                slice,
                &sh.cfg.alloc_classes,
            )),
        );
        Ok(Directory {
            allocs,
            quotas: sh.cfg.quotas(),
            ledger: AllocLedger::default(),
            id,
            msgr: slot.msgr,
            data: slot.data,
            data_remote: slot.data_remote,
            bind_cq: slot.bind_cq,
            mws,
            table: LeaseTable::new(n),
            mrs: (0..n).map(|_| None).collect(),
            ddl: DdlQueue::default(),
            out: Vec::with_capacity(msg::MAX_MSG),
            binds: vec![0; peers],
            pass: Default::default(),
            dirty: Vec::new(),
            chain_seq: 0,
            stats: DirStats::default(),
            bind_fault: None,
            nic_atomics,
            rekeyed: Default::default(),
            control,
            sh,
        })
    }

    /// Directory id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Registers the allocator that serves allocation requests with `hint`
    /// on this directory (hint 0 is the default slab over this directory's
    /// slice of the alloc buffer; registering 0 replaces it). Offsets are
    /// server-buffer offsets; allocations must lie inside the buffer.
    pub fn reg_allocator(&mut self, hint: u64, a: Box<dyn Allocator>) {
        self.allocs.insert(hint, a);
    }

    /// Leases currently granted by this directory.
    pub fn live_leases(&self) -> usize {
        self.table.live()
    }

    /// Serves until every node called `finished(key)`, then revokes the
    /// leases still live (their holders are done) and returns. A node with
    /// no client thread registered (a pure memory node) counts as finished
    /// for `key` by serving, so it serves until every client node finished;
    /// the first such check comes 20 ms after serving starts. A node that
    /// dies before `finished` (its heartbeat through the keeper stops for
    /// `Config::peer_dead_after`) counts as gone: once every other node
    /// finished or died, serving revokes every lease and returns
    /// `Error::NodesDied` naming the dead. A node that is also a client (client threads registered, e.g.
    /// a one-node cluster) must call `finished(key)` itself when its clients
    /// are done, as in the original; register its client threads before
    /// serving starts.
    pub fn server_serve(&mut self, key: u64) -> Result<()> {
        let mut idle_since: Option<Instant> = None;
        let mut last_check = Instant::now();
        loop {
            let t0 = Instant::now();
            let did = self.serve_once()?;
            if did > 0 {
                self.stats.busy_ns += t0.elapsed().as_nanos() as u64;
                idle_since = None;
                continue;
            }
            let idle = idle_since.get_or_insert_with(Instant::now).elapsed();
            if last_check.elapsed() > Duration::from_millis(20) {
                last_check = Instant::now();
                match self.control.done(key) {
                    Ok(false) => {}
                    Ok(true) => {
                        self.revoke_all();
                        return Ok(());
                    }
                    // Some nodes died before finishing, the rest finished:
                    // nothing is left to serve.
                    Err(e @ crate::Error::NodesDied(_)) => {
                        self.revoke_all();
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            // Never a pure spin: RPCs arrive through the NIC thread and are
            // answered through another NIC thread, which need the core more
            // than an idle directory does (2 cores here).
            // Longer idleness sleeps longer (an idle directory used 30 % of
            // a core with 50 us naps): the first RPC after 50 ms of silence
            // waits at most 1 ms, GC tasks run at most 1 ms late.
            if idle > Duration::from_millis(50) {
                std::thread::sleep(Duration::from_millis(1));
            } else if idle > Duration::from_millis(5) {
                std::thread::sleep(Duration::from_micros(200));
            } else if idle > Duration::from_micros(500) {
                std::thread::sleep(Duration::from_micros(50));
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Counters of this directory's passes.
    pub fn stats(&self) -> DirStats {
        DirStats {
            max_head_wait: self.msgr.max_head_wait(),
            max_queue: self.msgr.max_queue(),
            ..self.stats
        }
    }

    /// Requests received and not yet served (drains the RPC completion
    /// queue first). For tests that let requests pile up before a pass.
    pub fn queued_requests(&mut self) -> Result<usize> {
        self.msgr.progress()?;
        Ok(self.msgr.queued())
    }

    /// Fault injection for tests: the next bind this directory posts
    /// towards client thread `(node, thread)` names an invalid memory
    /// region, so the NIC fails it (and flushes what follows it on that
    /// QP).
    #[doc(hidden)]
    pub fn inject_bind_fault(&mut self, node: u16, thread: u16) {
        self.bind_fault = Some(self.sh.peer_index(node, thread));
    }

    /// Serves one pass: up to [`PASS_REQUESTS`] pending requests (taken
    /// round-robin across client threads) and the due GC tasks, their
    /// window operations posted as one chain per data QP and completed
    /// before any reply of the pass is sent. Returns the requests and GC
    /// tasks handled.
    pub fn serve_once(&mut self) -> Result<usize> {
        // Windows left bound earlier: invalidated in this pass's chains
        // (half the pass at most), back in the pool after it.
        let n = self.dirty.len().min(pass::PASS_WRS / 2);
        for (peer, mw) in self.dirty.drain(..n).collect::<Vec<_>>() {
            self.queue_op(peer, crate::fabric::WrOp::Invalidate { mw }, None);
            self.pass.mws.push(mw);
        }
        let mut reqs = 0;
        while reqs < PASS_REQUESTS {
            let Some(inc) = self.msgr.try_recv()? else {
                break;
            };
            reqs += 1;
            let decoded = msg::decode(&inc.data);
            self.msgr.give_back(inc.data);
            let (h, m) = match decoded {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(dir = self.id, peer = inc.peer, "{e}");
                    continue;
                }
            };
            // The sender must be who the QP belongs to.
            if self.sh.peer_index(h.node, h.thread) != inc.peer {
                tracing::debug!(dir = self.id, "message claims another sender");
                continue;
            }
            let Some((ty, r)) = self.handle(inc.peer, &h, m) else {
                continue;
            };
            let hdr = Header {
                ty,
                rpc_id: h.rpc_id,
                node: self.sh.node_id,
                thread: self.id,
            };
            self.pass.replies.push(pass::Reply {
                peer: inc.peer,
                hdr,
                ty,
                msg: r,
            });
        }
        let gc = self.run_gc(self.sh.clock.now());
        // Binds of the acquires, unbinds of relinquishes and of the GC.
        self.commit();
        // Acquires whose binds failed give back what they took: their
        // unbinds form a second chain before anyone is answered.
        self.finish_acquires();
        self.commit();
        self.release_quarantine();
        if reqs > 0 {
            self.purge_stale_gc();
        }
        self.count_pass(reqs, *gc.as_ref().unwrap_or(&0));
        self.send_replies();
        Ok(reqs + gc?)
    }

    fn send_replies(&mut self) {
        let mut replies = std::mem::take(&mut self.pass.replies);
        for r in replies.drain(..) {
            msg::encode(&r.hdr, &r.msg, &mut self.out);
            let out = std::mem::take(&mut self.out);
            let res = self.msgr.send(r.peer, &out);
            self.out = out;
            if let Err(e) = res {
                tracing::debug!(dir = self.id, ty = ?r.ty, "reply lost: {e}");
            }
        }
        self.pass.replies = replies;
    }

    fn handle(&mut self, peer: usize, h: &Header, m: Msg) -> Option<(MsgType, Msg)> {
        Some(match m {
            Msg::Acquire(a) => (
                MsgType::AcquireResp,
                Msg::AcquireResp(self.acquire(peer, &a, h.ty == MsgType::AcquireW)),
            ),
            Msg::Relinquish(r) => (
                MsgType::RelinquishResp,
                Msg::RelinquishResp(ModifyResp {
                    rc: self.relinquish(peer, &r) as u8,
                    units: 0,
                }),
            ),
            Msg::Extend(r) => {
                let (rc, units) = self.rpc_extend(peer, &r);
                (
                    MsgType::ExtendResp,
                    Msg::ExtendResp(ModifyResp {
                        rc: rc as u8,
                        units,
                    }),
                )
            }
            Msg::Memory(r) => (MsgType::MemoryResp, Msg::MemoryResp(self.memory(peer, &r))),
            Msg::Admin(a) if a.op == msg::AdminOp::LeaseKeys => (
                MsgType::LeaseKeysResp,
                Msg::LeaseKeysResp(self.lease_keys(peer, a.arg)),
            ),
            Msg::Admin(a) => (MsgType::AdminResp, Msg::AdminResp(self.admin(peer, &a))),
            _ => return None,
        })
    }

    /// Frees block `(hint, off)` of `size` bytes if client node `node`
    /// allocated it; false (nothing freed) otherwise.
    fn free_alloc(&mut self, node: u16, hint: u64, off: BufOff, size: u64) -> bool {
        if !self.ledger.release(node, hint, off, size) {
            return false;
        }
        let freed = self
            .allocs
            .get_mut(&hint)
            .is_some_and(|al| al.free(off.0, size));
        if !freed {
            tracing::warn!(
                dir = self.id,
                hint,
                off = off.0,
                size,
                "allocator refused a recorded block"
            );
        }
        freed
    }
}
