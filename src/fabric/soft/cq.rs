//! Soft completion queues: polling drives the attached QPs' progress in the
//! caller's thread (no extra thread on the initiator side).

use std::sync::Arc;
use std::time::{Duration, Instant};

use spin::mutex::SpinMutex;
use spin::relax::Yield;

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
    /// Held across a whole poll: a QP replacing its link takes it before
    /// unmapping the old one (see `QpInner::send_ready`). A spin lock
    /// (yielding under contention) taken with `try_lock` by pollers: a poll
    /// costs one locked instruction, and a second thread polling the same
    /// CQ at that moment finds nothing rather than waiting (the first one
    /// collects the completions).
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

    pub(crate) fn attach(&self, qp: &Arc<QpInner>, send: bool, recv: bool) {
        let mut l = self.qps.lock();
        if send {
            l.send.push(qp.clone());
        }
        if recv {
            l.recv.push(qp.clone());
        }
    }

    pub(crate) fn detach(&self, qpn: u32) {
        let mut l = self.qps.lock();
        l.send.retain(|q| q.qpn != qpn);
        l.recv.retain(|q| q.qpn != qpn);
    }

    /// Waits until no poll is in progress (returns the write guard; drop it
    /// at once).
    pub(crate) fn quiesce(&self) -> impl Drop + '_ {
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
        let Some(l) = self.qps.try_lock() else {
            return 0;
        };
        for w in &l.send {
            if n == out.len() {
                return n;
            }
            // SAFETY: `l` is this CQ's list guard, held while the hint is
            // read (send_ready's contract).
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
