//! Two-sided messaging over RC SEND/RECV: one completion queue shared by a
//! set of QPs, registered receive slots posted on every QP, and send slots
//! reclaimed on completion. Used for the Patronus RPCs (client threads and
//! directories); the one-sided data path uses separate QPs so that a
//! protection fault never breaks the RPC channel.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    Access, Cq, FabricError, Mr, Nic, Pd, Qp, RecvWr, Result, SendWr, Sge, Wc, WcOpcode, WrOp,
};

/// Bytes per message slot (the fabric's SEND limit on every backend we have).
pub const SLOT: usize = 4096;

/// A received message: which QP it came on and its bytes.
#[derive(Debug)]
pub struct Incoming {
    /// Index of the QP (as returned by [`Messenger::add_qp`]).
    pub peer: usize,
    /// Message bytes.
    pub data: Vec<u8>,
}

/// A set of QPs sharing one CQ for SEND/RECV.
pub struct Messenger {
    cq: Arc<dyn Cq>,
    qps: Vec<Arc<dyn Qp>>,
    recv_mr: Arc<Mr>,
    send_mr: Arc<Mr>,
    per_qp: u32,
    send_free: Vec<u32>,
    inbox: VecDeque<Incoming>,
    wc: [Wc; 32],
    max_qps: usize,
}

const SEND_TAG: u64 = 1 << 63;

impl Messenger {
    /// Moves this messenger's state out (for handing a thread's resources
    /// back to its node), leaving `self` without QPs.
    pub fn take(&mut self) -> Messenger {
        Messenger {
            cq: self.cq.clone(),
            qps: std::mem::take(&mut self.qps),
            recv_mr: self.recv_mr.clone(),
            send_mr: self.send_mr.clone(),
            per_qp: self.per_qp,
            send_free: std::mem::take(&mut self.send_free),
            inbox: std::mem::take(&mut self.inbox),
            wc: self.wc,
            max_qps: self.max_qps,
        }
    }

    /// A messenger for up to `max_qps` QPs (created with `cq` as both their
    /// send and receive CQ), `per_qp` receive slots each and `sends` send
    /// slots.
    pub fn new(
        nic: &Arc<dyn Nic>,
        pd: Pd,
        cq: Arc<dyn Cq>,
        max_qps: usize,
        per_qp: u32,
        sends: u32,
    ) -> Result<Messenger> {
        let recv_mr = nic.alloc_mr(
            pd,
            max_qps.max(1) * per_qp as usize * SLOT,
            Access::LOCAL_WRITE,
        )?;
        let send_mr = nic.alloc_mr(pd, sends as usize * SLOT, Access::LOCAL_WRITE)?;
        Ok(Messenger {
            cq,
            qps: Vec::new(),
            recv_mr,
            send_mr,
            per_qp,
            send_free: (0..sends).rev().collect(),
            inbox: VecDeque::new(),
            wc: [Wc::default(); 32],
            max_qps,
        })
    }

    /// The shared CQ (create QPs with it before adding them).
    pub fn cq(&self) -> &Arc<dyn Cq> {
        &self.cq
    }

    /// Adds a QP and posts its receive slots; returns its peer index.
    pub fn add_qp(&mut self, qp: Arc<dyn Qp>) -> Result<usize> {
        let i = self.qps.len();
        if i >= self.max_qps {
            return Err(FabricError::Exhausted(format!(
                "messenger holds at most {} QPs",
                self.max_qps
            )));
        }
        self.qps.push(qp);
        for s in 0..self.per_qp {
            self.post_recv(i, s)?;
        }
        Ok(i)
    }

    /// The QP of a peer index.
    pub fn qp(&self, peer: usize) -> Option<&Arc<dyn Qp>> {
        self.qps.get(peer)
    }

    fn post_recv(&self, peer: usize, slot: u32) -> Result<()> {
        let idx = peer as u64 * self.per_qp as u64 + slot as u64;
        self.qps[peer].post_recv(&[RecvWr {
            wr_id: idx,
            local: Sge {
                lkey: self.recv_mr.lkey(),
                offset: idx * SLOT as u64,
                len: SLOT as u32,
            },
        }])
    }

    /// Sends `msg` on `peer`'s QP (copied into a send slot first).
    pub fn send(&mut self, peer: usize, msg: &[u8]) -> Result<()> {
        if msg.len() > SLOT {
            return Err(FabricError::Invalid(format!(
                "message of {} bytes exceeds {SLOT}",
                msg.len()
            )));
        }
        let qp = self
            .qps
            .get(peer)
            .ok_or_else(|| FabricError::Invalid(format!("no QP {peer}")))?
            .clone();
        let t0 = Instant::now();
        while self.send_free.is_empty() {
            self.progress()?;
            if t0.elapsed() > Duration::from_secs(5) {
                return Err(FabricError::PeerLost(
                    "no send completion within 5 s".into(),
                ));
            }
        }
        let slot = self.send_free.pop().expect("free slot");
        self.send_mr.write(slot as u64 * SLOT as u64, msg)?;
        let r = qp.post_send(&[SendWr {
            wr_id: SEND_TAG | slot as u64,
            op: WrOp::Send {
                local: Sge {
                    lkey: self.send_mr.lkey(),
                    offset: slot as u64 * SLOT as u64,
                    len: msg.len() as u32,
                },
            },
            signaled: true,
        }]);
        if r.is_err() {
            self.send_free.push(slot);
        }
        r
    }

    /// Drains the CQ: reclaims send slots, moves received messages to the
    /// inbox (reposting their slots). Returns completions seen.
    pub fn progress(&mut self) -> Result<usize> {
        let n = self.cq.poll(&mut self.wc);
        for i in 0..n {
            let wc = self.wc[i];
            if wc.wr_id & SEND_TAG != 0 {
                self.send_free.push((wc.wr_id & !SEND_TAG) as u32);
                if !wc.status.is_ok() {
                    tracing::debug!("send failed: {wc:?}");
                }
                continue;
            }
            if wc.opcode != WcOpcode::Recv && wc.status.is_ok() {
                continue;
            }
            let idx = wc.wr_id;
            let peer = (idx / self.per_qp as u64) as usize;
            let slot = (idx % self.per_qp as u64) as u32;
            if peer >= self.qps.len() {
                continue;
            }
            if wc.status.is_ok() {
                let mut data = vec![0u8; (wc.byte_len as usize).min(SLOT)];
                self.recv_mr.read(idx * SLOT as u64, &mut data)?;
                self.inbox.push_back(Incoming { peer, data });
            }
            // Repost unless the QP is broken (flushed receives).
            if wc.status != super::WcStatus::WrFlushErr {
                self.post_recv(peer, slot)?;
            }
        }
        Ok(n)
    }

    /// Next received message, if any (non-blocking).
    pub fn try_recv(&mut self) -> Result<Option<Incoming>> {
        if self.inbox.is_empty() {
            self.progress()?;
        }
        Ok(self.inbox.pop_front())
    }

    /// Waits for a message matching `pred` for at most `timeout`; others
    /// stay in the inbox.
    pub fn recv_match(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Incoming) -> bool,
    ) -> Result<Option<Incoming>> {
        let t0 = Instant::now();
        let mut spins = 0u32;
        loop {
            if let Some(i) = self.inbox.iter().position(&mut pred) {
                return Ok(self.inbox.remove(i));
            }
            if self.progress()? > 0 {
                spins = 0;
                continue;
            }
            if t0.elapsed() > timeout {
                return Ok(None);
            }
            spins += 1;
            if spins > 64 && t0.elapsed() > Duration::from_millis(1) {
                std::thread::sleep(Duration::from_micros(20));
            } else {
                self.cq.wait(Duration::from_micros(5));
            }
        }
    }
}
