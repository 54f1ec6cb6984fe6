//! Client threads: drivers of the client's lease state (`lease::client`).
//!
//! - `mod.rs`: a client thread's resources and registration;
//! - `rpc.rs`: RPC plumbing to directories, admin requests;
//! - `leases.rs`: acquire, relinquish, upgrade, allocation, extension;
//! - `data.rs`: the one-sided data path with local expiry checks and
//!   recovery of the data QP after a protection fault (same QP, same
//!   thread, in microseconds);
//! - `two_sided.rs`: memory RPCs checked by the memory node against the lease;
//! - `batch.rs`: batches of one-sided operations posted as one chain;
//! - `calls.rs`: the per-thread engine every call runs on (calls in flight,
//!   completions, recovery among them);
//! - `aio.rs`: async forms of the calls and a one-thread executor.

use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::fabric::msg::Messenger;
use crate::fabric::{Access, Cq, Mr, Nic, Pd, Qp, QpEndpoint, Wc};
use crate::lease::msg;
use crate::lease::{BufOff, NodeMemory};
use crate::time::Clock;
use crate::{Error, Result};

mod aio;
mod batch;
mod calls;
mod data;
mod leases;
mod rpc;
mod two_sided;

pub use crate::lease::cache::CACHE_ENTRIES;
pub use crate::lease::Lease;
pub use aio::AsyncThread;
pub use batch::{Batch, BATCH_MAX};
pub(crate) use calls::RPC_PER_DIR;
pub use calls::{Completion, Post, DEFAULT_MAX_INFLIGHT, MAX_INFLIGHT};

/// Bytes of a client thread's registered data buffer.
pub const DATA_BUF: usize = 1 << 20;

/// One client thread slot's connections: its RPC messenger and, per
/// directory of the cluster, the data QP its leases' windows are bound to.
pub struct ClientSlot {
    /// RPC messenger (one QP per directory of the cluster).
    pub msgr: Messenger,
    /// Data QPs towards every directory.
    pub data: Vec<Arc<dyn Qp>>,
    /// Their remote endpoints (for recovery).
    pub data_remote: Vec<QpEndpoint>,
    /// CQ of the data QPs.
    pub data_cq: Arc<dyn Cq>,
    /// The thread's registered data buffer (kept across registrations).
    pub buf: Option<Arc<Mr>>,
    /// Its registered staging slots of calls in flight (kept likewise).
    pub stage: Option<Arc<Mr>>,
    /// Last RPC id used on this slot (ids never repeat across threads).
    pub rpc_id: u64,
}

/// What every client thread of a node shares (handed over by `src/node`).
pub struct ClientShared {
    /// The node's configuration.
    pub cfg: Config,
    /// This node's id.
    pub node_id: u16,
    /// The NIC.
    pub nic: Arc<dyn Nic>,
    /// Protection domain of the thread buffers.
    pub pd: Pd,
    /// What every node of the cluster published about its memory.
    pub peers: Vec<NodeMemory>,
    /// The node's clock.
    pub clock: Arc<Clock>,
    /// Free client thread slots (a registered thread holds its slot).
    pub slots: Mutex<Vec<Option<ClientSlot>>>,
}

impl ClientShared {
    /// Index of (node, dir) in a client slot's QP vectors.
    pub fn dir_index(&self, node: u16, dir: u16) -> usize {
        node as usize * self.cfg.dir_nr as usize + dir as usize
    }

    /// True while some client thread of this node is registered.
    pub fn has_client_threads(&self) -> bool {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(Option::is_none)
    }

    /// Takes a free slot and makes it a client thread.
    pub fn register(self: &Arc<Self>) -> Result<ClientThread> {
        let (i, slot) = take_free(&self.slots).ok_or_else(|| {
            Error::NoMem(format!(
                "all {} client thread slots are taken (Config::client_threads)",
                self.cfg.client_threads
            ))
        })?;
        ClientThread::new(self.clone(), i as u16, slot)
    }

    /// What node `node` published, or an error naming the cluster's shape.
    fn peer(&self, node: u16) -> Result<&NodeMemory> {
        self.peers.get(node as usize).ok_or_else(|| {
            Error::Invalid(format!(
                "node {node} is outside the cluster ({} nodes)",
                self.cfg.machine_nr
            ))
        })
    }
}

/// Takes the first free entry of a pool of pre-built per-thread resources
/// (client thread slots, directories) with its index.
pub(crate) fn take_free<T>(pool: &Mutex<Vec<Option<T>>>) -> Option<(usize, T)> {
    pool.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter_mut()
        .enumerate()
        .find_map(|(i, s)| s.take().map(|s| (i, s)))
}

/// A registered client thread.
pub struct ClientThread {
    sh: Arc<ClientShared>,
    slot: u16,
    msgr: Messenger,
    data: Vec<Arc<dyn Qp>>,
    data_remote: Vec<QpEndpoint>,
    data_cq: Arc<dyn Cq>,
    buf: Arc<Mr>,
    stage: Arc<Mr>,
    rpc_id: u64,
    out: Vec<u8>,
    magic_retries: u64,
    calls: calls::Calls,
    /// Smoothed round trip of this thread's auto-extension CASes (ns; 0
    /// until one completed): part of the margin at which auto-extend acts.
    ext_rtt_ns: u64,
    /// Auto-extend could not keep a lease alive (told once per thread).
    ext_warned: std::cell::Cell<bool>,
    /// Leases auto-extend could not keep alive (found revoked when it came
    /// to revive them, expired in flight, or past a cap it could not
    /// extend beyond).
    auto_extend_lost: std::cell::Cell<u64>,
    /// Per directory, the PSNs of the last coordinated reset of its data
    /// QP (the next one picks others).
    psns: Vec<Option<crate::fabric::ConnPsns>>,
    /// Per directory, the leases the last reset of its data QP re-bound
    /// (by generation; empty where windows survive resets).
    rekeys: Vec<std::collections::HashMap<u64, msg::LeaseKey>>,
}

impl Drop for ClientThread {
    /// Hands the slot (QPs, buffer) back to the node for the next
    /// `register_client_thread`.
    fn drop(&mut self) {
        // Let calls still in flight finish (each within its deadline), so
        // that none completes into the next thread's engine; then drain.
        self.settle();
        let mut wc = [Wc::default(); 16];
        while self.data_cq.poll(&mut wc) > 0 {}
        let slot = ClientSlot {
            msgr: self.msgr.take(),
            data: std::mem::take(&mut self.data),
            data_remote: std::mem::take(&mut self.data_remote),
            data_cq: self.data_cq.clone(),
            buf: Some(self.buf.clone()),
            stage: Some(self.stage.clone()),
            rpc_id: self.rpc_id,
        };
        let mut l = self.sh.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = l.get_mut(self.slot as usize) {
            *s = Some(slot);
        }
    }
}

impl ClientThread {
    fn new(sh: Arc<ClientShared>, slot: u16, s: ClientSlot) -> Result<ClientThread> {
        let calls = calls::Calls::new(
            sh.cfg.max_inflight,
            sh.cfg.machine_nr as usize * sh.cfg.dir_nr as usize,
        );
        let stage_len = calls.slots() * calls::SMALL;
        let dirs = sh.cfg.machine_nr as usize * sh.cfg.dir_nr as usize;
        let mrs = (|| -> Result<(Arc<Mr>, Arc<Mr>)> {
            let buf = match s.buf.clone() {
                Some(b) => b,
                None => sh.nic.alloc_mr(sh.pd, DATA_BUF, Access::LOCAL_WRITE)?,
            };
            let stage = match s.stage.clone() {
                Some(b) if b.len() >= stage_len as u64 => b,
                _ => sh.nic.alloc_mr(sh.pd, stage_len, Access::LOCAL_WRITE)?,
            };
            Ok((buf, stage))
        })();
        let (buf, stage) = match mrs {
            Ok(x) => x,
            Err(e) => {
                // Give the slot back before failing.
                sh.slots.lock().unwrap_or_else(|e| e.into_inner())[slot as usize] = Some(s);
                return Err(e);
            }
        };
        Ok(ClientThread {
            stage,
            calls,
            slot,
            msgr: s.msgr,
            data: s.data,
            data_remote: s.data_remote,
            data_cq: s.data_cq,
            buf,
            rpc_id: s.rpc_id,
            out: Vec::with_capacity(msg::MAX_MSG),
            magic_retries: 0,
            ext_rtt_ns: 0,
            auto_extend_lost: std::cell::Cell::new(0),
            ext_warned: std::cell::Cell::new(false),
            psns: vec![None; dirs],
            rekeys: vec![Default::default(); dirs],
            sh,
        })
    }

    /// Acquires this thread retried after an (injected) magic-MW fault
    /// (`Config::magic_mw_fault`).
    pub fn magic_retries(&self) -> u64 {
        self.magic_retries
    }

    /// Leases that auto-extend (`WITH_AUTO_EXTEND`) could not keep alive:
    /// the thread came back to a lease the memory node had already closed
    /// (its term plus epsilon had passed, e.g. a 1 ms term on a thread
    /// descheduled for longer), a call ran out of its lease while in
    /// flight, or the lease had no protection region or reached its cap and
    /// expired. Counted per call (a lease that ran out under several calls
    /// in flight counts once for each), and warned about once per thread;
    /// every such call returns LEASE_LOCAL_EXPIRED_ERR.
    pub fn auto_extend_lost(&self) -> u64 {
        self.auto_extend_lost.get()
    }

    /// What node `node` published about its memory (where its region is,
    /// its layout, whether it offers the universal rkey), or an error
    /// naming the cluster's shape.
    pub fn peer_memory(&self, node: u16) -> Result<NodeMemory> {
        self.sh.peer(node).copied()
    }

    /// The id of the node this thread belongs to.
    pub fn node_id(&self) -> u16 {
        self.sh.node_id
    }

    /// This thread's slot id.
    pub fn get_thread_id(&self) -> u16 {
        self.slot
    }

    /// The leased object's buffer offset on its node (its GlobalAddress
    /// offset), converted with that node's layout.
    pub fn get_gaddr(&self, lease: &Lease) -> (u16, u64) {
        let off = self
            .sh
            .peers
            .get(lease.node as usize)
            .map_or(BufOff(0), |p| lease.buf_off(&p.layout));
        (lease.node, off.0)
    }
}
