//! Soft completion queues: polling drives the attached QPs' progress in the
//! caller's thread (no extra thread on the initiator side).

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use super::qp::QpInner;
use crate::fabric::{Cq, Wc};

/// The QPs whose completions a CQ collects.
#[derive(Default)]
struct Attached {
    send: Vec<Arc<QpInner>>,
    recv: Vec<Arc<QpInner>>,
}

/// A completion queue of the soft NIC.
pub struct SoftCq {
    /// Held for reading across a whole poll: a QP replacing its link waits
    /// for the write side before unmapping the old one (see
    /// `QpInner::send_ready`).
    qps: RwLock<Attached>,
    depth: u32,
}

impl SoftCq {
    pub(crate) fn new(depth: u32) -> SoftCq {
        SoftCq {
            qps: RwLock::new(Attached::default()),
            depth,
        }
    }

    pub(crate) fn attach(&self, qp: &Arc<QpInner>, send: bool, recv: bool) {
        let mut l = self.qps.write();
        if send {
            l.send.push(qp.clone());
        }
        if recv {
            l.recv.push(qp.clone());
        }
    }

    pub(crate) fn detach(&self, qpn: u32) {
        let mut l = self.qps.write();
        l.send.retain(|q| q.qpn != qpn);
        l.recv.retain(|q| q.qpn != qpn);
    }

    /// Waits until no poll is in progress (returns the write guard; drop it
    /// at once).
    pub(crate) fn quiesce(&self) -> impl Drop + '_ {
        self.qps.write()
    }

    /// Configured depth.
    pub fn depth(&self) -> u32 {
        self.depth
    }
}

impl Cq for SoftCq {
    fn poll(&self, out: &mut [Wc]) -> usize {
        let mut n = 0;
        let l = self.qps.read();
        for w in &l.send {
            if n == out.len() {
                return n;
            }
            // SAFETY: `l` is this CQ's list read guard, held while the hint
            // is read (send_ready's contract).
            if unsafe { w.send_ready() } {
                n += w.progress_send(&mut out[n..]);
            }
        }
        for w in &l.recv {
            if n == out.len() {
                break;
            }
            if w.recv_ready() {
                n += w.progress_recv(&mut out[n..]);
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
