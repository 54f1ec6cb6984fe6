//! Verbs completion queues, polled by the caller's thread.
//!
//! Completions of binds and invalidates (posted under internal wr_ids, see
//! [`Windows`](super::map::Windows)) update their window's key and state
//! here, before the caller sees them under its own wr_id.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rdma_sys::*;

use super::device::Inner;
use super::map;
use crate::fabric::{Cq, FabricError, Result, Wc};

pub(super) fn verbs_cq(cq: &Arc<dyn Cq>) -> Result<*mut ibv_cq> {
    as_verbs(cq)
        .map(|c| c.cq)
        .ok_or_else(|| FabricError::Invalid("the CQ belongs to another backend".into()))
}

pub(super) fn as_verbs(cq: &Arc<dyn Cq>) -> Option<&VerbsCq> {
    let any: &dyn std::any::Any = &**cq;
    any.downcast_ref::<VerbsCq>()
}

/// A verbs completion queue, polled by the caller.
pub struct VerbsCq {
    pub(super) cq: *mut ibv_cq,
    pub(super) _inner: Arc<Inner>,
    /// Completions a QP's recovery drained (or synthesised for requests
    /// whose completions a RESET discarded), handed out before new ones.
    pub(super) stash: Mutex<VecDeque<Wc>>,
    pub(super) stashed: AtomicBool,
}

// SAFETY: CQs may be polled from any thread (libibverbs locks internally).
unsafe impl Send for VerbsCq {}
// SAFETY: as above.
unsafe impl Sync for VerbsCq {}

impl VerbsCq {
    pub(super) fn new(cq: *mut ibv_cq, inner: Arc<Inner>) -> VerbsCq {
        VerbsCq {
            cq,
            _inner: inner,
            stash: Mutex::new(VecDeque::new()),
            stashed: AtomicBool::new(false),
        }
    }

    fn stash(&self) -> std::sync::MutexGuard<'_, VecDeque<Wc>> {
        self.stash.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `wcs` for the caller's next polls.
    pub(super) fn push_stash(&self, wcs: impl IntoIterator<Item = Wc>) {
        let mut s = self.stash();
        s.extend(wcs);
        self.stashed.store(!s.is_empty(), Ordering::Release);
    }

    /// Polls the device CQ (not the stash) into `out`.
    pub(super) fn poll_device(&self, out: &mut [Wc]) -> usize {
        const CHUNK: usize = 16;
        let inner = &self._inner;
        let mut done = 0;
        while done < out.len() {
            // SAFETY: ibv_wc is plain data; zeroed is valid.
            let mut raw: [ibv_wc; CHUNK] = unsafe { std::mem::zeroed() };
            let want = (out.len() - done).min(CHUNK);
            // SAFETY: raw has room for `want` completions; cq is valid.
            let n = unsafe { ibv_poll_cq(self.cq, want as i32, raw.as_mut_ptr()) };
            if n < 0 {
                tracing::error!(rc = n, "ibv_poll_cq failed: the CQ is unusable");
                break;
            }
            if n == 0 {
                break;
            }
            done += map::translate_wcs(
                &raw[..n as usize],
                &mut out[done..],
                inner.tag_hi,
                |id, qpn, st| inner.windows().complete(id, qpn, st),
                |c| inner.sync(c),
            );
            if (n as usize) < want {
                break;
            }
        }
        done
    }
}

impl Cq for VerbsCq {
    fn poll(&self, out: &mut [Wc]) -> usize {
        let mut done = 0;
        if self.stashed.load(Ordering::Acquire) {
            let mut s = self.stash();
            while done < out.len() {
                match s.pop_front() {
                    Some(w) => {
                        out[done] = w;
                        done += 1;
                    }
                    None => break,
                }
            }
            self.stashed.store(!s.is_empty(), Ordering::Release);
        }
        done + self.poll_device(&mut out[done..])
    }
}

impl Drop for VerbsCq {
    fn drop(&mut self) {
        // SAFETY: every QP using this CQ holds an Arc to it, so none is
        // left; destroyed once.
        unsafe { ibv_destroy_cq(self.cq) };
    }
}
