//! Soft completion queues: polling drives the attached QPs' progress in the
//! caller's thread (no extra thread on the initiator side).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spin::mutex::{SpinMutex, SpinMutexGuard};
use spin::relax::Yield;

use super::qp::{QpInner, SendSide};
use crate::fabric::{Cq, Wc};

/// The QPs whose completions a CQ collects, with the send side of each
/// send QP.
#[derive(Default)]
pub(crate) struct Attached {
    send: Vec<(Arc<QpInner>, SendSide)>,
    recv: Vec<Arc<QpInner>>,
}

impl Attached {
    /// The send side of `qp`, if it is attached here.
    pub(crate) fn send_side(&mut self, qp: &QpInner) -> Option<&mut SendSide> {
        let hint = qp.send_slot.load(Ordering::Relaxed);
        let i = match self.send.get(hint) {
            Some((q, _)) if std::ptr::eq(Arc::as_ptr(q), qp) => hint,
            _ => self
                .send
                .iter()
                .position(|(q, _)| std::ptr::eq(Arc::as_ptr(q), qp))?,
        };
        Some(&mut self.send[i].1)
    }
}

/// A completion queue of the soft NIC.
///
/// The send sides of its QPs live under its lock: a poll takes one lock
/// for the CQ and every QP on it, and a post takes the same lock (so QPs
/// sharing a CQ also share a lock, as they normally share a thread). It is
/// a spin lock that yields under contention, released by a plain store;
/// pollers only try it (a second thread polling the same CQ at that moment
/// finds nothing rather than waiting, the first collects the completions).
pub struct SoftCq {
    qps: SpinMutex<Attached, Yield>,
    depth: u32,
}

impl SoftCq {
    pub(crate) fn new(depth: u32) -> SoftCq {
        SoftCq {
            qps: SpinMutex::new(Attached::default()),
            depth,
        }
    }

    /// Attaches `qp` for its send completions (with its send side) and/or
    /// its receive completions.
    pub(crate) fn attach(&self, qp: &Arc<QpInner>, send: Option<SendSide>, recv: bool) {
        let mut l = self.qps.lock();
        if let Some(sq) = send {
            qp.send_slot.store(l.send.len(), Ordering::Relaxed);
            l.send.push((qp.clone(), sq));
        }
        if recv {
            l.recv.push(qp.clone());
        }
    }

    /// Detaches `qp`; returns its send side if it was attached here (drop
    /// it after the call: closing a link takes system calls).
    pub(crate) fn detach(&self, qp: &QpInner) -> Option<SendSide> {
        let mut l = self.qps.lock();
        l.recv.retain(|q| !std::ptr::eq(Arc::as_ptr(q), qp));
        let i = l
            .send
            .iter()
            .position(|(q, _)| std::ptr::eq(Arc::as_ptr(q), qp))?;
        let (_, sq) = l.send.remove(i);
        for (k, (q, _)) in l.send.iter().enumerate().skip(i) {
            q.send_slot.store(k, Ordering::Relaxed);
        }
        Some(sq)
    }

    /// Takes the lock (for posting).
    pub(crate) fn lock(&self) -> SpinMutexGuard<'_, Attached, Yield> {
        self.qps.lock()
    }

    /// Configured depth.
    pub fn depth(&self) -> u32 {
        self.depth
    }
}

impl Cq for SoftCq {
    fn poll(&self, out: &mut [Wc]) -> usize {
        let mut n = 0;
        let Some(mut l) = self.qps.try_lock() else {
            return 0;
        };
        let l = &mut *l;
        for (q, sq) in l.send.iter_mut() {
            if n == out.len() {
                return n;
            }
            if q.send_ready(sq) {
                n += q.progress_send(sq, &mut out[n..]);
            }
        }
        for q in &l.recv {
            if n == out.len() {
                break;
            }
            if q.recv_ready() {
                n += q.progress_recv(&mut out[n..]);
            }
        }
        n
    }

    fn wait(&self, timeout: Duration) {
        // Progress happens in poll(), so waiting must not outlast a round
        // trip: spin about a microsecond, then give the core away once (the
        // caller polls again right after).
        let spin = timeout.min(Duration::from_micros(1));
        let end = Instant::now() + spin;
        while Instant::now() < end {
            for _ in 0..16 {
                std::hint::spin_loop();
            }
        }
        if timeout > spin {
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::fabric::conformance::{wait_wc, Side};
    use crate::fabric::{open_nic, Access, QpCap, SendWr, WcStatus, WrOp};
    use std::time::Duration;

    /// Several QPs share one CQ; destroying some of them renumbers the
    /// others' places in the CQ's list, and posting and polling on the
    /// survivors still finds their own send sides (each READ lands in its
    /// own QP's buffer slot, completions carry the right QP number).
    #[test]
    fn qps_sharing_a_cq_survive_their_neighbours_destruction() {
        for fabric in ["shm", "tcp"] {
            let server = open_nic(fabric, "127.0.0.1:0", 1024).unwrap();
            let client = open_nic(fabric, "127.0.0.1:0", 1024).unwrap();
            let spd = server.alloc_pd().unwrap();
            let region = server.alloc_mr(spd, 4096, Access::ALL).unwrap();
            let cpd = client.alloc_pd().unwrap();
            let cq = client.create_cq(256).unwrap();
            let buf = client.alloc_mr(cpd, 8 * 64, Access::ALL).unwrap();
            let mut qps = Vec::new();
            let mut peers = Vec::new();
            for _ in 0..5 {
                let qp = client.create_qp(cpd, &cq, &cq, QpCap::default()).unwrap();
                let s = Side::new(server.clone(), spd, 64).unwrap();
                s.qp.connect(&qp.endpoint()).unwrap();
                qp.connect(&s.qp.endpoint()).unwrap();
                qps.push(Some(qp));
                peers.push(s);
            }
            for i in 0..5u64 {
                region.write(i * 64, &[i as u8 + 1; 64]).unwrap();
            }
            // Destroy the first and the middle QP: the others move up.
            qps[0] = None;
            qps[2] = None;
            for round in 0..3 {
                for (i, qp) in qps.iter().enumerate() {
                    let Some(qp) = qp else { continue };
                    buf.write(i as u64 * 64, &[0u8; 64]).unwrap();
                    qp.post_send(&[SendWr {
                        wr_id: i as u64,
                        op: WrOp::Read {
                            local: crate::fabric::Sge {
                                lkey: buf.lkey(),
                                offset: i as u64 * 64,
                                len: 64,
                            },
                            raddr: region.addr() + i as u64 * 64,
                            rkey: region.rkey(),
                        },
                        signaled: true,
                    }])
                    .unwrap();
                    let wc = wait_wc(&*cq, Duration::from_secs(10)).unwrap();
                    assert_eq!(wc.status, WcStatus::Success, "{fabric} round {round}");
                    assert_eq!((wc.wr_id, wc.qpn), (i as u64, qp.qpn()));
                    let mut got = [0u8; 64];
                    buf.read(i as u64 * 64, &mut got).unwrap();
                    assert_eq!(got, [i as u8 + 1; 64], "{fabric}: QP {i} read");
                }
                // A new QP joins the CQ after the renumbering.
                if round == 0 {
                    let qp = client.create_qp(cpd, &cq, &cq, QpCap::default()).unwrap();
                    qp.connect(&peers[0].qp.endpoint()).unwrap();
                    peers[0].qp.reset().unwrap();
                    peers[0].qp.connect(&qp.endpoint()).unwrap();
                    qps[0] = Some(qp);
                }
            }
        }
    }
}
