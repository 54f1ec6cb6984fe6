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
//!
//! Sends never block on one peer: a peer holds at most `per_qp` send slots
//! (its messages not yet completed, e.g. on a lossy link waiting for a
//! retransmission, or towards a peer that stopped reading); past that, or
//! when every slot is taken, its messages wait in its own backlog (at most
//! [`BACKLOG_MAX`]) and go out as its slots complete. A stalled peer delays
//! only its own messages, never another peer's.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    Access, Cq, FabricError, Mr, Nic, Pd, Qp, RecvWr, Result, SendWr, Sge, Wc, WcOpcode, WrOp,
};

/// Bytes per message slot (the fabric's SEND limit on every backend we have).
pub const SLOT: usize = 4096;
/// Messages one peer may have waiting for a send slot; past it a send to
/// that peer fails (`Exhausted`) and the message is dropped.
pub const BACKLOG_MAX: usize = 256;

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
    /// Per send slot, the peer whose message holds it.
    slot_peer: Vec<usize>,
    /// Per peer, send slots its messages hold.
    sending: Vec<u32>,
    /// Per peer, messages waiting for a send slot (in order).
    backlog: Vec<VecDeque<Vec<u8>>>,
    /// Peers with a backlog.
    backlogged: Vec<usize>,
    /// Received messages per peer with their receive slot (posted again
    /// when the message is taken).
    queues: Vec<VecDeque<(u32, Incoming)>>,
    /// Peers with queued messages, in round-robin order, each at most once
    /// (`listed`); a peer may be listed with a queue `recv_match` emptied.
    ready: VecDeque<usize>,
    listed: Vec<bool>,
    /// Messages taken so far (all peers).
    taken: u64,
    /// Per peer, `taken` when its oldest queued message became the oldest.
    head_since: Vec<u64>,
    /// Most messages of other peers taken while one peer's oldest message
    /// waited (see [`Messenger::max_head_wait`]).
    max_head_wait: u64,
    /// Most messages one peer had queued at once.
    max_queue: u64,
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
            slot_peer: std::mem::take(&mut self.slot_peer),
            sending: std::mem::take(&mut self.sending),
            backlog: std::mem::take(&mut self.backlog),
            backlogged: std::mem::take(&mut self.backlogged),
            queues: std::mem::take(&mut self.queues),
            ready: std::mem::take(&mut self.ready),
            listed: std::mem::take(&mut self.listed),
            taken: self.taken,
            head_since: std::mem::take(&mut self.head_since),
            max_head_wait: self.max_head_wait,
            max_queue: self.max_queue,
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
            slot_peer: vec![0; sends as usize],
            sending: Vec::new(),
            backlog: Vec::new(),
            backlogged: Vec::new(),
            queues: Vec::new(),
            ready: VecDeque::new(),
            listed: Vec::new(),
            taken: 0,
            head_since: Vec::new(),
            max_head_wait: 0,
            max_queue: 0,
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
        self.sending.push(0);
        self.backlog.push(VecDeque::new());
        self.queues.push(VecDeque::new());
        self.listed.push(false);
        self.head_since.push(0);
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

    /// Sends `msg` on `peer`'s QP (copied into a send slot first), or
    /// queues it behind the peer's earlier messages while the peer holds
    /// its share of send slots (or none is free); never waits.
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
        if !self.backlog[peer].is_empty() || !self.can_send(peer) {
            // Completions may have freed slots: take them, then send what
            // waits in order.
            self.progress()?;
        }
        if self.backlog[peer].is_empty() && self.can_send(peer) {
            return self.post(peer, msg);
        }
        if self.backlog[peer].len() >= BACKLOG_MAX {
            return Err(FabricError::Exhausted(format!(
                "{BACKLOG_MAX} messages to peer {peer} wait for its earlier sends to complete"
            )));
        }
        if self.backlog[peer].is_empty() {
            self.backlogged.push(peer);
        }
        self.backlog[peer].push_back(msg.to_vec());
        Ok(())
    }

    /// Messages waiting for a send slot, over all peers.
    pub fn backlogged(&self) -> usize {
        self.backlog.iter().map(VecDeque::len).sum()
    }

    fn can_send(&self, peer: usize) -> bool {
        !self.send_free.is_empty() && self.sending[peer] < self.per_qp.max(1)
    }

    /// Sends what the backlogs hold as slots allow, peer by peer in turn.
    fn drain_backlogs(&mut self) {
        let mut i = 0;
        while i < self.backlogged.len() && !self.send_free.is_empty() {
            let peer = self.backlogged[i];
            while self.can_send(peer) {
                let Some(m) = self.backlog[peer].pop_front() else {
                    break;
                };
                if let Err(e) = self.post(peer, &m) {
                    tracing::debug!(peer, "queued message not sent: {e}");
                }
            }
            if self.backlog[peer].is_empty() {
                self.backlogged.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Posts `msg` to `peer` in a free slot (the caller checked there is one).
    fn post(&mut self, peer: usize, msg: &[u8]) -> Result<()> {
        let slot = self
            .send_free
            .pop()
            .ok_or_else(|| FabricError::Exhausted("no send slot".into()))?;
        if let Err(e) = self.send_mr.write(slot as u64 * SLOT as u64, msg) {
            self.send_free.push(slot);
            return Err(e);
        }
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
        } else {
            self.slot_peer[slot as usize] = peer;
            self.sending[peer] += 1;
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
                let slot = (wc.wr_id & !SEND_TAG) as u32;
                if let Some(&peer) = self.slot_peer.get(slot as usize) {
                    self.sending[peer] = self.sending[peer].saturating_sub(1);
                    self.send_free.push(slot);
                }
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
                if self.queues[peer].is_empty() {
                    self.head_since[peer] = self.taken;
                }
                self.queues[peer].push_back((slot, Incoming { peer, data }));
                self.max_queue = self.max_queue.max(self.queues[peer].len() as u64);
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
        if !self.backlogged.is_empty() {
            self.drain_backlogs();
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
        if pos == 0 {
            let waited = self.taken - self.head_since[peer];
            self.max_head_wait = self.max_head_wait.max(waited);
            self.head_since[peer] = self.taken + 1;
        }
        self.taken += 1;
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

    /// The most messages of other peers taken while one peer's oldest
    /// queued message waited: the fairness the round-robin order keeps (at
    /// most the number of other peers with messages queued, one each).
    pub fn max_head_wait(&self) -> u64 {
        self.max_head_wait
    }

    /// The most messages one peer had queued here at once (at most its
    /// receive slots: its credit).
    pub fn max_queue(&self) -> u64 {
        self.max_queue
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

    /// A QP whose sends never complete: a peer that stopped acknowledging
    /// (on RC hardware, one that posts no receive keeps our SEND in RNR
    /// retry; a lossy link waits for retransmissions). The soft NIC
    /// completes a SEND when it is sent, so it cannot play this peer.
    struct BlackHole;

    impl Qp for BlackHole {
        fn qpn(&self) -> u32 {
            0xbad
        }
        fn state(&self) -> crate::fabric::QpState {
            crate::fabric::QpState::Rts
        }
        fn endpoint(&self) -> crate::fabric::QpEndpoint {
            unimplemented!("never connected in this test")
        }
        fn connect(&self, _: &crate::fabric::QpEndpoint) -> Result<()> {
            Ok(())
        }
        fn reset(&self) -> Result<()> {
            Ok(())
        }
        fn post_send(&self, _: &[SendWr]) -> Result<()> {
            Ok(())
        }
        fn post_recv(&self, _: &[RecvWr]) -> Result<()> {
            Ok(())
        }
    }

    /// A peer whose sends never complete holds its share of send slots
    /// (`per_qp`) and then a bounded backlog; messages to another peer go
    /// out at once (before: once the stalled peer held every slot, each
    /// send to anyone waited up to 5 s for one).
    #[test]
    fn a_stalled_peer_delays_only_its_own_messages() {
        let a: Arc<dyn Nic> = Arc::new(SoftNic::open(SoftConfig::default()).unwrap());
        let b: Arc<dyn Nic> = Arc::new(SoftNic::open(SoftConfig::default()).unwrap());
        let (pa, pb) = (a.alloc_pd().unwrap(), b.alloc_pd().unwrap());
        let cq = a.create_cq(1024).unwrap();
        let mut m = Messenger::new(&a, pa, cq.clone(), 2, 4, 8).unwrap();
        m.add_qp(Arc::new(BlackHole)).unwrap();
        let q = a.create_qp(pa, &cq, &cq, QpCap::default()).unwrap();
        let rcq = b.create_cq(64).unwrap();
        let r = b.create_qp(pb, &rcq, &rcq, QpCap::default()).unwrap();
        q.connect(&r.endpoint()).unwrap();
        r.connect(&q.endpoint()).unwrap();
        m.add_qp(q).unwrap();
        let rbuf = b.alloc_mr(pb, 4096, Access::LOCAL_WRITE).unwrap();
        let t0 = Instant::now();
        for i in 0..40u8 {
            m.send(0, &[i; 64]).unwrap();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "sends to a stalled peer waited {:?}",
            t0.elapsed()
        );
        assert_eq!(
            m.backlogged(),
            36,
            "4 in flight (its share), the rest waiting"
        );
        // A live peer gets its messages at once, one after another.
        for k in 0..8u8 {
            r.post_recv(&[RecvWr {
                wr_id: k as u64,
                local: Sge {
                    lkey: rbuf.lkey(),
                    offset: 0,
                    len: 4096,
                },
            }])
            .unwrap();
            let t1 = Instant::now();
            m.send(1, &[k; 64]).unwrap();
            let wc = crate::fabric::conformance::wait_wc(&*rcq, Duration::from_secs(5)).unwrap();
            assert!(wc.status.is_ok(), "{wc:?}");
            assert!(
                t1.elapsed() < Duration::from_secs(1),
                "message {k} to a live peer took {:?} behind a stalled one",
                t1.elapsed()
            );
            let mut got = [0u8; 64];
            rbuf.read(0, &mut got).unwrap();
            assert_eq!(got, [k; 64]);
        }
        // The stalled peer's backlog is bounded: past it a send fails at once.
        let refused = (0..BACKLOG_MAX)
            .filter(|_| m.send(0, &[0; 8]).is_err())
            .count();
        assert_eq!(refused, 36, "{} waiting", m.backlogged());
        assert_eq!(m.backlogged(), BACKLOG_MAX);
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
    fn a_queued_message_waits_for_one_message_of_each_other_peer() {
        let (mut m, s) = setup(3);
        for i in 0..5 {
            s[0].send(i);
        }
        s[1].send(10);
        s[2].send(20);
        wait_queued(&mut m, 7);
        assert_eq!(m.max_queue(), 5);
        let order: Vec<usize> = (0..7)
            .map(|_| m.try_recv().unwrap().unwrap().peer)
            .collect();
        assert_eq!(order, vec![0, 1, 2, 0, 0, 0, 0]);
        // Peer 2's message waited for one of peer 0 and one of peer 1; each
        // later message of peer 0 waited for none once it was the oldest.
        assert_eq!(m.max_head_wait(), 2);
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
