//! Verbs RC queue pairs: the state machine towards a peer and posting.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use rdma_sys::*;

use super::cq::as_verbs;
use super::device::{errno_text, Inner};
use super::map::{self, KeyOp, Resolve, VerbsAddr};
use crate::fabric::{
    inc_rkey, Access, Cq, FabricError, Psns, Qp, QpCap, QpEndpoint, QpState, RecvWr, Result,
    SendWr, Wc, WrOp, PSN_MASK,
};

/// How long a recovery waits for the flush completions of its QP's
/// outstanding binds/invalidates after moving it to ERR.
const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_millis(500);

/// A verbs RC queue pair.
pub struct VerbsQp {
    pub(super) qp: *mut ibv_qp,
    pub(super) inner: Arc<Inner>,
    /// This QP's send PSN: chosen at creation (published in its
    /// endpoint), replaced by [`Qp::connect_psns`].
    pub(super) psn: AtomicU32,
    /// The PSN to expect from the peer, set by [`Qp::connect_psns`]
    /// (0: the one in the peer's endpoint).
    pub(super) peer_psn: AtomicU32,
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
            nic: self.inner.addr(self.psn.load(Ordering::Acquire)).encode(),
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
        a.rq_psn = match self.peer_psn.load(Ordering::Acquire) {
            0 => ra.psn,
            p => p,
        };
        let (rd_atomic, dest_rd_atomic) = self.inner.limits.rd_atomic();
        a.max_dest_rd_atomic = dest_rd_atomic;
        a.min_rnr_timer = 12;
        a.ah_attr.dlid = ra.lid;
        a.ah_attr.sl = 0;
        a.ah_attr.src_path_bits = 0;
        a.ah_attr.port_num = self.inner.port;
        if self.inner.ethernet && !ra.needs_grh() {
            return Err(FabricError::Invalid(format!(
                "peer endpoint of QP {} has a zero GID: RoCE needs a GRH with the peer's GID",
                self.qpn_raw()
            )));
        }
        // RoCE: always a GRH (the kernel refuses RoCE address vectors
        // without one); InfiniBand: only when the peer gave a GID.
        if self.inner.ethernet || ra.needs_grh() {
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
        a.sq_psn = self.psn.load(Ordering::Acquire);
        a.max_rd_atomic = rd_atomic;
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

    fn connect_psns(&self, remote: &QpEndpoint, psns: Psns) -> Result<()> {
        for p in [psns.send, psns.recv] {
            if p == 0 || p > PSN_MASK {
                return Err(FabricError::Invalid(format!(
                    "PSN {p:#x} for QP {} is not a non-zero 24-bit PSN",
                    self.qpn_raw()
                )));
            }
        }
        self.psn.store(psns.send, Ordering::Release);
        self.peer_psn.store(psns.recv, Ordering::Release);
        self.connect(remote)
    }

    /// RESET discards the QP's completions on mlx5 (`mlx5_cq_clean`), so
    /// a QP with binds/invalidates outstanding first goes to ERR, where
    /// they complete with `WR_FLUSH_ERR`; those completions are drained
    /// into the send CQ's stash (the caller polls them as usual) until none
    /// is outstanding or [`DRAIN_DEADLINE`] passes; any still missing then
    /// are completed as flushed (old keys kept) before RESET.
    fn reset(&self) -> Result<()> {
        let qpn = self.qpn_raw();
        let st = self.state();
        if st != QpState::Reset && self.inner.windows().outstanding(qpn) > 0 {
            if st != QpState::Error {
                // SAFETY: zeroed attributes are valid; only the state is read.
                let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
                a.qp_state = ibv_qp_state::IBV_QPS_ERR;
                self.modify(&mut a, ibv_qp_attr_mask::IBV_QP_STATE, "ERR")?;
            }
            self.drain_keyed(qpn);
        }
        // SAFETY: zeroed attributes are valid; only the state is read.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_RESET;
        self.modify(&mut a, ibv_qp_attr_mask::IBV_QP_STATE, "RESET")?;
        if !self.inner.windows_survive_reset {
            self.renew_windows(qpn);
        }
        Ok(())
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
        // Binds read a window's current rkey and record the next one: two
        // posts binding the same window must not interleave.
        let _g = self.post.lock().unwrap_or_else(|e| e.into_inner());
        for w in wrs {
            if let WrOp::Bind { mw, len, .. } = w.op {
                self.inner.limits.check_window_len(len)?;
                self.retire_if_due(mw)?;
            }
        }
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
    /// of length 0); other requests are posted in order around them. The
    /// provider moves `ibv_mw::rkey` on at post time; the table publishes
    /// it only when the completion succeeds and restores it otherwise.
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
            let (bind_info, op) = match lkey {
                Some(k) => (
                    map::bind_info(&*self.inner, k, off, len, access)?,
                    KeyOp::Bind {
                        new: inc_rkey(win.rkey),
                    },
                ),
                // An unbind is a zero-length bind (the provider bumps the tag).
                None => (
                    ibv_mw_bind_info {
                        mr: std::ptr::null_mut(),
                        addr: 0,
                        length: 0,
                        mw_access_flags: 0,
                    },
                    KeyOp::Invalidate {
                        next: inc_rkey(win.rkey),
                    },
                ),
            };
            let tag = self
                .inner
                .windows()
                .begin(mw, op, self.qpn_raw(), w.wr_id, w.signaled)?;
            let mut b = ibv_mw_bind {
                wr_id: tag,
                // Always signaled: the completion publishes the key.
                send_flags: ibv_send_flags::IBV_SEND_SIGNALED.0,
                bind_info,
            };
            // SAFETY: qp, mw and mr are objects of this context; b is valid.
            let rc = unsafe { ibv_bind_mw(self.qp, win.mw, &mut b) };
            if rc != 0 {
                self.inner.windows().abort(tag);
                return Err(FabricError::io(
                    "ibv_bind_mw",
                    std::io::Error::from_raw_os_error(rc),
                ));
            }
            // SAFETY: the provider set the key it bound with; the window is
            // ours and no other post of it runs (the post lock is held).
            let chosen = unsafe { (*win.mw).rkey };
            self.inner.windows().repredict(tag, chosen);
        }
        self.post_chain(&wrs[start..])
    }

    /// Builds and posts one `ibv_send_wr` chain. Its binds/invalidates are
    /// recorded in the window table first (refused there, before anything
    /// is posted, when a window is in the wrong state) and posted signaled
    /// under internal wr_ids; those verbs refused are forgotten again.
    fn post_chain(&self, wrs: &[SendWr]) -> Result<()> {
        if wrs.is_empty() {
            return Ok(());
        }
        let mut chain = map::build_send_chain(&*self.inner, wrs)?;
        let tags = if chain.new_rkeys.is_empty() {
            Vec::new()
        } else {
            map::tag_chain(&mut self.inner.windows(), &mut chain, wrs, self.qpn_raw())?
        };
        let head = chain.link();
        let mut bad: *mut ibv_send_wr = std::ptr::null_mut();
        // SAFETY: the chain, its sges and every buffer they name (registered
        // memory kept alive by the key table) are valid during the call.
        let rc = unsafe { ibv_post_send(self.qp, head, &mut bad) };
        if rc != 0 {
            // `bad` points at the first refused request of the chain.
            let posted = chain
                .wrs
                .iter()
                .position(|w| std::ptr::eq(w, bad))
                .unwrap_or(0);
            let mut t = self.inner.windows();
            for &(i, tag) in &tags {
                if i >= posted {
                    t.abort(tag);
                }
            }
            return Err(self.post_error(rc, "send"));
        }
        Ok(())
    }

    /// Before a bind: when the window's `ibv_mw` has used up its key tags
    /// ([`map::Windows::retire_due`]), a fresh one is allocated on the same
    /// PD, put under the same handle, and the old one freed.
    fn retire_if_due(&self, handle: u32) -> Result<()> {
        let cycle = if self.inner.mw_type2 { 1 } else { 2 };
        let mut t = self.inner.windows();
        if !t.retire_due(handle, cycle) {
            return Ok(());
        }
        let old = t
            .get(handle)
            .ok_or_else(|| FabricError::Invalid(format!("unknown window {handle}")))?;
        let (fresh, rkey) = alloc_like(old.mw).map_err(|e| {
            FabricError::Exhausted(format!(
                "ibv_alloc_mw to retire window {handle} (its key tags are used up) failed: {e}"
            ))
        })?;
        let retired = t.replace(handle, fresh, rkey)?;
        drop(t);
        // SAFETY: the retired window is unbound and left the table: freed once.
        let rc = unsafe { ibv_dealloc_mw(retired) };
        if rc != 0 {
            tracing::warn!(handle, rc, "ibv_dealloc_mw of a retired window failed");
        }
        Ok(())
    }

    /// After a RESET on a device whose windows do not survive it: every
    /// window bound through this QP gets a fresh `ibv_mw` under its handle
    /// (unbound, so the directory can bind it again) and the old one is
    /// deallocated, which unbinds it if the device kept it bound: its key
    /// is dead whatever the device does. A window that cannot be renewed
    /// stays as it was (its re-bind is then refused before posting).
    fn renew_windows(&self, qpn: u32) {
        let _g = self.post.lock().unwrap_or_else(|e| e.into_inner());
        let handles = self.inner.windows().bound_to(qpn);
        for h in handles {
            let Some(old) = self.inner.windows().get(h) else {
                continue;
            };
            let (fresh, rkey) = match alloc_like(old.mw) {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(qpn, handle = h, "window not renewed after RESET: {e}");
                    continue;
                }
            };
            let swapped = self.inner.windows().replace_bound(h, fresh, rkey);
            let dead = match swapped {
                Ok(old) => old,
                Err(e) => {
                    tracing::warn!(qpn, handle = h, "window not renewed after RESET: {e}");
                    fresh
                }
            };
            // SAFETY: `dead` left the table (or never entered it): freed once.
            let rc = unsafe { ibv_dealloc_mw(dead) };
            if rc != 0 {
                tracing::warn!(handle = h, rc, "ibv_dealloc_mw after RESET failed");
            }
        }
    }

    /// After ERR: polls the send CQ into its stash until no bind/invalidate
    /// of `qpn` is outstanding or the deadline passes; completes the rest as
    /// flushed.
    fn drain_keyed(&self, qpn: u32) {
        let Some(cq) = as_verbs(&self._cqs.0) else {
            return;
        };
        let t0 = std::time::Instant::now();
        let mut buf = [Wc::default(); 16];
        while self.inner.windows().outstanding(qpn) > 0 && t0.elapsed() < DRAIN_DEADLINE {
            let n = cq.poll_device(&mut buf);
            if n > 0 {
                cq.push_stash(buf[..n].iter().copied());
            } else {
                std::thread::yield_now();
            }
        }
        let lost = self.inner.windows().flush_lost(qpn);
        if !lost.is_empty() {
            tracing::warn!(
                qpn,
                lost = lost.len(),
                "binds/invalidates without a completion after ERR: treated as flushed"
            );
        }
        for c in &lost {
            self.inner.sync(c);
        }
        cq.push_stash(lost.iter().filter_map(|c| c.deliver));
    }
}

/// A fresh window on the PD and of the type of `old`, with its key.
fn alloc_like(old: *mut ibv_mw) -> std::result::Result<(*mut ibv_mw, u32), String> {
    // SAFETY: old is a live window of this context; its pd and type fields
    // are set by the provider at allocation.
    let (pd, ty) = unsafe { ((*old).pd, (*old).type_) };
    // SAFETY: pd is a PD of this context.
    let fresh = unsafe { ibv_alloc_mw(pd, ty) }.unwrap_or(std::ptr::null_mut());
    if fresh.is_null() {
        return Err(errno_text());
    }
    // SAFETY: fresh is a valid window just allocated.
    Ok((fresh, unsafe { (*fresh).rkey }))
}

impl Drop for VerbsQp {
    fn drop(&mut self) {
        // SAFETY: destroyed once; its CQs (held in `_cqs`) outlive it.
        unsafe { ibv_destroy_qp(self.qp) };
    }
}
