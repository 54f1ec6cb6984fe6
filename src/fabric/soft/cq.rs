//! Soft completion queues: polling drives the attached QPs' progress in the
//! caller's thread (no extra thread on the initiator side).

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use super::qp::QpInner;
use crate::fabric::{Cq, Wc};

/// A completion queue of the soft NIC.
pub struct SoftCq {
    send_qps: RwLock<Vec<Arc<QpInner>>>,
    recv_qps: RwLock<Vec<Arc<QpInner>>>,
    depth: u32,
}

impl SoftCq {
    pub(crate) fn new(depth: u32) -> SoftCq {
        SoftCq {
            send_qps: RwLock::new(Vec::new()),
            recv_qps: RwLock::new(Vec::new()),
            depth,
        }
    }

    pub(crate) fn attach(&self, qp: &Arc<QpInner>, send: bool, recv: bool) {
        if send {
            self.send_qps.write().push(qp.clone());
        }
        if recv {
            self.recv_qps.write().push(qp.clone());
        }
    }

    pub(crate) fn detach(&self, qpn: u32) {
        for l in [&self.send_qps, &self.recv_qps] {
            l.write().retain(|q| q.qpn != qpn);
        }
    }

    /// Configured depth.
    pub fn depth(&self) -> u32 {
        self.depth
    }
}

impl Cq for SoftCq {
    fn poll(&self, out: &mut [Wc]) -> usize {
        let mut n = 0;
        {
            let l = self.send_qps.read();
            for w in l.iter() {
                if n == out.len() {
                    return n;
                }
                n += w.progress_send(&mut out[n..]);
            }
        }
        let l = self.recv_qps.read();
        for w in l.iter() {
            if n == out.len() {
                break;
            }
            n += w.progress_recv(&mut out[n..]);
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
