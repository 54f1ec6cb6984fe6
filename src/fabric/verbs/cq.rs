//! Verbs completion queues, polled by the caller's thread.

use std::sync::Arc;

use rdma_sys::*;

use super::device::Inner;
use super::map;
use crate::fabric::{Cq, FabricError, Result, Wc, WcOpcode};

pub(super) fn verbs_cq(cq: &Arc<dyn Cq>) -> Result<*mut ibv_cq> {
    let any: &dyn std::any::Any = &**cq;
    any.downcast_ref::<VerbsCq>()
        .map(|c| c.cq)
        .ok_or_else(|| FabricError::Invalid("the CQ belongs to another backend".into()))
}

/// A verbs completion queue, polled by the caller.
pub struct VerbsCq {
    pub(super) cq: *mut ibv_cq,
    pub(super) _inner: Arc<Inner>,
}

// SAFETY: CQs may be polled from any thread (libibverbs locks internally).
unsafe impl Send for VerbsCq {}
// SAFETY: as above.
unsafe impl Sync for VerbsCq {}

impl Cq for VerbsCq {
    fn poll(&self, out: &mut [Wc]) -> usize {
        const CHUNK: usize = 16;
        let mut done = 0;
        while done < out.len() {
            // SAFETY: ibv_wc is plain data; zeroed is valid.
            let mut raw: [ibv_wc; CHUNK] = unsafe { std::mem::zeroed() };
            let want = (out.len() - done).min(CHUNK);
            // SAFETY: raw has room for `want` completions; cq is valid.
            let n = unsafe { ibv_poll_cq(self.cq, want as i32, raw.as_mut_ptr()) };
            if n <= 0 {
                break;
            }
            for w in &raw[..n as usize] {
                let status = map::status_from_ibv(w.status);
                out[done] = Wc {
                    wr_id: w.wr_id,
                    status,
                    // Verbs leaves the opcode undefined on errors.
                    opcode: map::opcode_from_ibv(w.opcode).unwrap_or(WcOpcode::Send),
                    byte_len: w.byte_len,
                    qpn: w.qp_num,
                };
                done += 1;
            }
            if (n as usize) < want {
                break;
            }
        }
        done
    }
}

impl Drop for VerbsCq {
    fn drop(&mut self) {
        // SAFETY: every QP using this CQ holds an Arc to it, so none is
        // left; destroyed once.
        unsafe { ibv_destroy_cq(self.cq) };
    }
}
