//! Verbs RC queue pairs: the state machine towards a peer and posting.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use rdma_sys::*;

use super::device::Inner;
use super::map::{self, Resolve, VerbsAddr};
use crate::fabric::{
    Access, Cq, FabricError, Qp, QpCap, QpEndpoint, QpState, RecvWr, Result, SendWr, WrOp,
};

/// A verbs RC queue pair.
pub struct VerbsQp {
    pub(super) qp: *mut ibv_qp,
    pub(super) inner: Arc<Inner>,
    pub(super) psn: u32,
    pub(super) access: AtomicU32,
    pub(super) cap: QpCap,
    /// Serialises posts that bind or invalidate windows with the
    /// publication of the windows' new rkeys.
    pub(super) post: Mutex<()>,
    /// The QP's CQs, kept alive until it is destroyed.
    pub(super) _cqs: (Arc<dyn Cq>, Arc<dyn Cq>),
}

// SAFETY: verbs QPs may be posted to from any thread; posting is serialised.
unsafe impl Send for VerbsQp {}
// SAFETY: as above.
unsafe impl Sync for VerbsQp {}

impl VerbsQp {
    fn qpn_raw(&self) -> u32 {
        // SAFETY: the QP is valid for self's lifetime.
        unsafe { (*self.qp).qp_num }
    }

    fn modify(&self, attr: &mut ibv_qp_attr, mask: ibv_qp_attr_mask, what: &str) -> Result<()> {
        // SAFETY: attr is a valid attribute struct; the QP is valid.
        let rc = unsafe { ibv_modify_qp(self.qp, attr, mask.0 as i32) };
        if rc != 0 {
            return Err(FabricError::io(
                format!("ibv_modify_qp({what}) of QP {}", self.qpn_raw()),
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        Ok(())
    }
}

impl VerbsQp {
    /// A failed `ibv_post_*`: ENOMEM is a full queue, anything else (EINVAL
    /// for a QP not in RTS, say) an I/O error naming the call.
    fn post_error(&self, rc: i32, which: &'static str) -> FabricError {
        if rc == libc::ENOMEM {
            FabricError::QueueFull {
                qpn: self.qpn_raw(),
                which,
                depth: if which == "send" {
                    self.cap.max_send_wr
                } else {
                    self.cap.max_recv_wr
                },
            }
        } else {
            FabricError::io(
                format!("ibv_post_{which} on QP {}", self.qpn_raw()),
                std::io::Error::from_raw_os_error(rc),
            )
        }
    }
}

impl Qp for VerbsQp {
    fn qpn(&self) -> u32 {
        self.qpn_raw()
    }

    fn state(&self) -> QpState {
        // SAFETY: zeroed attribute structs are valid out parameters.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut init: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the QP is valid; out pointers are valid.
        let rc = unsafe {
            ibv_query_qp(
                self.qp,
                &mut attr,
                ibv_qp_attr_mask::IBV_QP_STATE.0 as i32,
                &mut init,
            )
        };
        if rc != 0 {
            return QpState::Error;
        }
        map::qp_state_from_ibv(attr.qp_state)
    }

    fn endpoint(&self) -> QpEndpoint {
        QpEndpoint {
            nic: self.inner.addr(self.psn).encode(),
            qpn: self.qpn_raw(),
        }
    }

    fn connect(&self, remote: &QpEndpoint) -> Result<()> {
        let ra = VerbsAddr::of(remote)?;
        let st = self.state();
        if st != QpState::Reset {
            self.reset()?;
        }
        use ibv_qp_attr_mask as m;
        // RESET → INIT.
        // SAFETY: zeroed attributes are valid; only masked fields are read.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_INIT;
        a.pkey_index = 0;
        a.port_num = self.inner.port;
        a.qp_access_flags = map::qp_access_to_ibv(Access(self.access.load(Ordering::Acquire)));
        self.modify(
            &mut a,
            m::IBV_QP_STATE | m::IBV_QP_PKEY_INDEX | m::IBV_QP_PORT | m::IBV_QP_ACCESS_FLAGS,
            "INIT",
        )?;
        // INIT → RTR.
        // SAFETY: as above.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_RTR;
        a.path_mtu = self.inner.mtu.min(ra.mtu as u32);
        a.dest_qp_num = remote.qpn;
        a.rq_psn = ra.psn;
        a.max_dest_rd_atomic = 16;
        a.min_rnr_timer = 12;
        a.ah_attr.dlid = ra.lid;
        a.ah_attr.sl = 0;
        a.ah_attr.src_path_bits = 0;
        a.ah_attr.port_num = self.inner.port;
        if ra.needs_grh() {
            a.ah_attr.is_global = 1;
            a.ah_attr.grh.dgid.raw = ra.gid;
            a.ah_attr.grh.sgid_index = self.inner.gid_index;
            a.ah_attr.grh.hop_limit = 64;
        }
        self.modify(
            &mut a,
            m::IBV_QP_STATE
                | m::IBV_QP_AV
                | m::IBV_QP_PATH_MTU
                | m::IBV_QP_DEST_QPN
                | m::IBV_QP_RQ_PSN
                | m::IBV_QP_MAX_DEST_RD_ATOMIC
                | m::IBV_QP_MIN_RNR_TIMER,
            "RTR",
        )?;
        // RTR → RTS.
        // SAFETY: as above.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_RTS;
        a.timeout = 14;
        a.retry_cnt = 7;
        a.rnr_retry = 7;
        a.sq_psn = self.psn;
        a.max_rd_atomic = 16;
        self.modify(
            &mut a,
            m::IBV_QP_STATE
                | m::IBV_QP_TIMEOUT
                | m::IBV_QP_RETRY_CNT
                | m::IBV_QP_RNR_RETRY
                | m::IBV_QP_SQ_PSN
                | m::IBV_QP_MAX_QP_RD_ATOMIC,
            "RTS",
        )?;
        Ok(())
    }

    fn reset(&self) -> Result<()> {
        // SAFETY: zeroed attributes are valid; only the state is read.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_RESET;
        self.modify(&mut a, ibv_qp_attr_mask::IBV_QP_STATE, "RESET")
    }

    fn modify_access(&self, access: Access) -> Result<()> {
        self.access.store(access.0, Ordering::Release);
        // SAFETY: zeroed attributes are valid; only masked fields are read.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_access_flags = map::qp_access_to_ibv(access);
        self.modify(
            &mut a,
            ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS,
            "access flags",
        )
    }

    fn post_send(&self, wrs: &[SendWr]) -> Result<()> {
        if wrs.is_empty() {
            return Ok(());
        }
        let keyed = wrs
            .iter()
            .any(|w| matches!(w.op, WrOp::Bind { .. } | WrOp::Invalidate { .. }));
        if !keyed {
            // READ/WRITE/atomics/SEND touch no window key: no lock.
            return self.post_chain(wrs);
        }
        // Binds read a window's current rkey and publish the next one: two
        // posts binding the same window must not interleave.
        let _g = self.post.lock().unwrap_or_else(|e| e.into_inner());
        if self.inner.mw_type2 {
            self.post_chain(wrs)
        } else {
            self.post_type1(wrs)
        }
    }

    fn post_recv(&self, wrs: &[RecvWr]) -> Result<()> {
        if wrs.is_empty() {
            return Ok(());
        }
        let mut chain = map::build_recv_chain(&*self.inner, wrs)?;
        let head = chain.link();
        let mut bad: *mut ibv_recv_wr = std::ptr::null_mut();
        // SAFETY: as in post_send.
        let rc = unsafe { ibv_post_recv(self.qp, head, &mut bad) };
        if rc != 0 {
            return Err(self.post_error(rc, "recv"));
        }
        Ok(())
    }
}

impl VerbsQp {
    /// Type-1 windows: binds go through `ibv_bind_mw` (an unbind is a bind
    /// of length 0); other requests are posted in order around them.
    fn post_type1(&self, wrs: &[SendWr]) -> Result<()> {
        let mut start = 0;
        for (i, w) in wrs.iter().enumerate() {
            let (mw, lkey, off, len, access) = match w.op {
                WrOp::Bind {
                    mw,
                    lkey,
                    offset,
                    len,
                    access,
                } => (mw, Some(lkey), offset, len, access),
                WrOp::Invalidate { mw } => (mw, None, 0, 0, Access::NONE),
                _ => continue,
            };
            self.post_chain(&wrs[start..i])?;
            start = i + 1;
            let win = self
                .inner
                .mw(mw)
                .ok_or_else(|| FabricError::Invalid(format!("unknown window {mw}")))?;
            let bind_info = match lkey {
                Some(k) => map::bind_info(&*self.inner, k, off, len, access)?,
                // An unbind is a zero-length bind.
                None => ibv_mw_bind_info {
                    mr: std::ptr::null_mut(),
                    addr: 0,
                    length: 0,
                    mw_access_flags: 0,
                },
            };
            let mut b = ibv_mw_bind {
                wr_id: w.wr_id,
                send_flags: if w.signaled {
                    ibv_send_flags::IBV_SEND_SIGNALED.0
                } else {
                    0
                },
                bind_info,
            };
            // SAFETY: qp, mw and mr are objects of this context; b is valid.
            let rc = unsafe { ibv_bind_mw(self.qp, win.mw, &mut b) };
            if rc != 0 {
                return Err(FabricError::io(
                    "ibv_bind_mw",
                    std::io::Error::from_raw_os_error(rc),
                ));
            }
            // SAFETY: the provider updated the window's rkey.
            self.inner.set_rkey(mw, unsafe { (*win.mw).rkey });
        }
        self.post_chain(&wrs[start..])
    }

    /// Builds and posts one `ibv_send_wr` chain, then publishes the rkeys
    /// of the binds/invalidates that were accepted (all of them, or those
    /// before the request verbs refused).
    fn post_chain(&self, wrs: &[SendWr]) -> Result<()> {
        if wrs.is_empty() {
            return Ok(());
        }
        let mut chain = map::build_send_chain(&*self.inner, wrs)?;
        let head = chain.link();
        let mut bad: *mut ibv_send_wr = std::ptr::null_mut();
        // SAFETY: the chain, its sges and every buffer they name (registered
        // memory kept alive by the key table) are valid during the call.
        let rc = unsafe { ibv_post_send(self.qp, head, &mut bad) };
        let posted = if rc == 0 {
            wrs.len()
        } else {
            // `bad` points at the first refused request of the chain.
            chain
                .wrs
                .iter()
                .position(|w| std::ptr::eq(w, bad))
                .unwrap_or(0)
        };
        for &(i, h, k) in &chain.new_rkeys {
            if i < posted {
                self.inner.set_rkey(h, k);
            }
        }
        if rc != 0 {
            return Err(self.post_error(rc, "send"));
        }
        Ok(())
    }
}

impl Drop for VerbsQp {
    fn drop(&mut self) {
        // SAFETY: destroyed once; its CQs (held in `_cqs`) outlive it.
        unsafe { ibv_destroy_qp(self.qp) };
    }
}
