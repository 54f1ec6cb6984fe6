//! Two-sided messaging over RC SEND/RECV: one completion queue shared by a
//! set of QPs, registered receive slots posted on every QP, and send slots
//! reclaimed on completion. Used for the Patronus RPCs (client threads and
//! directories); the one-sided data path uses separate QPs so that a
//! protection fault never breaks the RPC channel.
//!
//! Fairness: received messages queue per peer and [`Messenger::try_recv`]
//! takes them round-robin across peers, and a receive slot is posted again
//! only once its message was taken. A peer's receive slots are its credit:
//! however fast one peer floods, at most `per_qp` of its messages wait
//! here, and a message of any other peer waits for at most one message of
//! each busy peer.

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
    /// Received messages per peer with their receive slot (posted again
    /// when the message is taken).
    queues: Vec<VecDeque<(u32, Incoming)>>,
    /// Peers with queued messages, in round-robin order, each at most once
    /// (`listed`); a peer may be listed with a queue `recv_match` emptied.
    ready: VecDeque<usize>,
    listed: Vec<bool>,
    wc: [Wc; 32],
    max_qps: usize,
    /// Message buffers given back ([`Messenger::give_back`]).
    pool: Vec<Vec<u8>>,
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
            queues: std::mem::take(&mut self.queues),
            ready: std::mem::take(&mut self.ready),
            listed: std::mem::take(&mut self.listed),
            wc: self.wc,
            max_qps: self.max_qps,
            pool: Vec::new(),
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
            queues: Vec::new(),
            ready: VecDeque::new(),
            listed: Vec::new(),
            wc: [Wc::default(); 32],
            max_qps,
            pool: Vec::new(),
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
        self.queues.push(VecDeque::new());
        self.listed.push(false);
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
        if peer >= self.qps.len() {
            return Err(FabricError::Invalid(format!("no QP {peer}")));
        }
        // The clock only when a slot must be waited for.
        if self.send_free.is_empty() {
            let t0 = Instant::now();
            while self.send_free.is_empty() {
                self.progress()?;
                if t0.elapsed() > Duration::from_secs(5) {
                    return Err(FabricError::PeerLost(
                        "no send completion within 5 s".into(),
                    ));
                }
            }
        }
        let slot = self.send_free.pop().expect("free slot");
        self.send_mr.write(slot as u64 * SLOT as u64, msg)?;
        let r = self.qps[peer].post_send(&[SendWr {
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

    /// Drains the CQ: reclaims send slots, queues received messages by
    /// peer (their slots are posted again when they are taken). Returns
    /// completions seen.
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
                let len = (wc.byte_len as usize).min(SLOT);
                let mut data = match self.pool.pop() {
                    Some(mut v) => {
                        v.resize(len, 0);
                        v
                    }
                    None => vec![0u8; len],
                };
                self.recv_mr.read(idx * SLOT as u64, &mut data)?;
                self.queues[peer].push_back((slot, Incoming { peer, data }));
                if !self.listed[peer] {
                    self.listed[peer] = true;
                    self.ready.push_back(peer);
                }
            } else if wc.status != super::WcStatus::WrFlushErr {
                // Failed without a message: the slot is free again (a
                // flushed one stays down with its broken QP).
                self.repost(peer, slot);
            }
        }
        Ok(n)
    }

    /// Posts a taken message's slot again. A QP that refuses it is broken:
    /// the slot stays down with it (logged), the other peers are unaffected.
    fn repost(&self, peer: usize, slot: u32) {
        if let Err(e) = self.post_recv(peer, slot) {
            tracing::debug!(peer, slot, "receive slot not posted again: {e}");
        }
    }

    /// Takes the next message of `peer`'s queue, posting its slot again.
    fn take_msg(&mut self, peer: usize, pos: usize) -> Option<Incoming> {
        let (slot, inc) = self.queues.get_mut(peer)?.remove(pos)?;
        self.repost(peer, slot);
        Some(inc)
    }

    /// Next received message, if any (non-blocking), round-robin across
    /// peers.
    pub fn try_recv(&mut self) -> Result<Option<Incoming>> {
        if self.ready.is_empty() {
            self.progress()?;
        }
        while let Some(peer) = self.ready.pop_front() {
            let inc = self.take_msg(peer, 0);
            if self.queues[peer].is_empty() {
                self.listed[peer] = false;
            } else {
                self.ready.push_back(peer);
            }
            if let Some(inc) = inc {
                return Ok(Some(inc));
            } // else emptied by recv_match: next peer
        }
        Ok(None)
    }

    /// Gives a taken message's buffer back for a later message (a
    /// receiver that gives its buffers back allocates nothing per message).
    pub fn give_back(&mut self, mut data: Vec<u8>) {
        if data.capacity() >= 64 && data.capacity() <= SLOT && self.pool.len() < 64 {
            data.clear();
            self.pool.push(data);
        }
    }

    /// Messages received and not yet taken (all peers).
    pub fn queued(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// Waits for a message matching `pred` for at most `timeout`; others
    /// stay queued.
    pub fn recv_match(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Incoming) -> bool,
    ) -> Result<Option<Incoming>> {
        let t0 = Instant::now();
        let mut spins = 0u32;
        loop {
            let hit = self
                .queues
                .iter()
                .enumerate()
                .find_map(|(p, q)| q.iter().position(|(_, inc)| pred(inc)).map(|i| (p, i)));
            if let Some((p, i)) = hit {
                return Ok(self.take_msg(p, i));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::soft::{SoftConfig, SoftNic};
    use crate::fabric::QpCap;

    struct Sender {
        qp: Arc<dyn Qp>,
        cq: Arc<dyn Cq>,
        buf: Arc<Mr>,
    }

    impl Sender {
        fn send(&self, byte: u8) {
            self.buf.write(0, &[byte; 64]).unwrap();
            self.qp
                .post_send(&[SendWr {
                    wr_id: 0,
                    op: WrOp::Send {
                        local: Sge {
                            lkey: self.buf.lkey(),
                            offset: 0,
                            len: 64,
                        },
                    },
                    signaled: true,
                }])
                .unwrap();
            let wc =
                crate::fabric::conformance::wait_wc(&*self.cq, Duration::from_secs(5)).unwrap();
            assert!(wc.status.is_ok(), "{wc:?}");
        }
    }

    /// A messenger with `peers` QPs of 8 slots, each connected to a sender.
    fn setup(peers: usize) -> (Messenger, Vec<Sender>) {
        let a: Arc<dyn Nic> = Arc::new(SoftNic::open(SoftConfig::default()).unwrap());
        let b: Arc<dyn Nic> = Arc::new(SoftNic::open(SoftConfig::default()).unwrap());
        let (pa, pb) = (a.alloc_pd().unwrap(), b.alloc_pd().unwrap());
        let cq = a.create_cq(1024).unwrap();
        let mut m = Messenger::new(&a, pa, cq.clone(), peers, 8, 8).unwrap();
        let mut senders = Vec::new();
        for _ in 0..peers {
            let q = a.create_qp(pa, &cq, &cq, QpCap::default()).unwrap();
            let scq = b.create_cq(64).unwrap();
            let s = b.create_qp(pb, &scq, &scq, QpCap::default()).unwrap();
            q.connect(&s.endpoint()).unwrap();
            s.connect(&q.endpoint()).unwrap();
            m.add_qp(q).unwrap();
            senders.push(Sender {
                qp: s,
                cq: scq,
                buf: b.alloc_mr(pb, 4096, Access::LOCAL_WRITE).unwrap(),
            });
        }
        (m, senders)
    }

    fn wait_queued(m: &mut Messenger, n: usize) {
        let t0 = Instant::now();
        while m.queued() < n {
            m.progress().unwrap();
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{} of {n} queued",
                m.queued()
            );
        }
    }

    #[test]
    fn a_flooding_peer_gets_one_turn_in_each_round() {
        let (mut m, s) = setup(3);
        // Peer 0 floods: 8 messages (its whole credit) plus 8 more that wait
        // in the NIC for slots; peers 1 and 2 send one each, after it.
        for i in 0..16 {
            s[0].send(i);
        }
        s[1].send(100);
        s[2].send(200);
        wait_queued(&mut m, 10);
        assert_eq!(m.queued(), 10, "peer 0 holds at most its 8 slots");
        let first: Vec<usize> = (0..3)
            .map(|_| m.try_recv().unwrap().unwrap().peer)
            .collect();
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            vec![0, 1, 2],
            "one message of each peer first: {first:?}"
        );
        // The flood's messages all arrive, in order, as its slots come back.
        let mut got = Vec::new();
        let t0 = Instant::now();
        while got.len() < 15 && t0.elapsed() < Duration::from_secs(5) {
            if let Some(inc) = m.try_recv().unwrap() {
                assert_eq!(inc.peer, 0);
                got.push(inc.data[0]);
            }
        }
        assert_eq!(got, (1..16).collect::<Vec<u8>>());
    }

    #[test]
    fn recv_match_takes_from_any_peer_and_keeps_the_rest_fair() {
        let (mut m, s) = setup(2);
        for i in 0..3 {
            s[0].send(i);
        }
        s[1].send(7);
        wait_queued(&mut m, 4);
        let hit = m
            .recv_match(Duration::from_secs(1), |i| i.data[0] == 7)
            .unwrap()
            .unwrap();
        assert_eq!(hit.peer, 1);
        s[1].send(8);
        wait_queued(&mut m, 4);
        let order: Vec<(usize, u8)> = (0..4)
            .map(|_| {
                let i = m.try_recv().unwrap().unwrap();
                (i.peer, i.data[0])
            })
            .collect();
        assert_eq!(order, vec![(0, 0), (1, 8), (0, 1), (0, 2)]);
        assert!(m.try_recv().unwrap().is_none());
    }
}
