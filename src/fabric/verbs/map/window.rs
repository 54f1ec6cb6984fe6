//! Per-window key bookkeeping of the verbs backend, with no device.
//!
//! `ibv_bind_mw(3)`: a bind's new rkey is valid only once the bind completed
//! successfully; on a failed completion the old key stays. So a window's
//! published rkey ([`Windows::rkey`]) changes only when its completion is
//! polled ([`Windows::complete`]), a window that is still bound is never
//! bound again (IBTA: MW_BIND_ERR and a QP in error) and a window that is not
//! bound is never invalidated (mlx5 invalidates with CHECK_QPN: MW_BIND_ERR).
//! Both are refused before anything is posted.
//!
//! Every bind and invalidate is posted signaled under an internal work-request
//! id (a *tag*); the completion with that tag updates the window and is handed
//! to the caller under the caller's own id, or swallowed when the caller had
//! not asked for it and it succeeded.
//!
//! Key tags: an rkey's low 8 bits are its tag. Within one `ibv_mw` the tags
//! of its successive keys are distinct as long as fewer than 256 tag steps
//! were taken since allocation, so a window is *retired* (replaced by a fresh
//! `ibv_mw` under the same handle) before a bind would take the 256th step
//! ([`Windows::retire_due`]).

use std::collections::HashMap;

use rdma_sys::ibv_mw;

use crate::fabric::{FabricError, Result, Wc, WcOpcode, WcStatus};

/// Where a window is in its bind/invalidate cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MwState {
    /// Not bound: may be bound, must not be invalidated.
    Unbound,
    /// A bind is posted; its completion has not been polled.
    BindPosted,
    /// Bound (its bind completed successfully): may be invalidated only.
    Bound,
    /// An invalidate is posted; its completion has not been polled.
    InvalidatePosted,
}

/// A bind or an invalidate, as posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyOp {
    /// A bind that, on success, makes `new` the window's rkey.
    Bind {
        /// The rkey the bind carries (type 2) or the provider chose (type 1).
        new: u32,
    },
    /// An invalidate after which the window's rkey is `next` (the same key
    /// for `IBV_WR_LOCAL_INV`; the provider's next key for a type-1 unbind).
    Invalidate {
        /// The window's rkey once the invalidate succeeded.
        next: u32,
    },
}

/// The most tag steps one `ibv_mw` may take: its keys are then all distinct.
pub const MAX_TAG_STEPS: u32 = 255;

/// One window: the `ibv_mw`, its published rkey and its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The verbs window.
    pub mw: *mut ibv_mw,
    /// The rkey of the latest successful completion (allocation's key
    /// before the first bind).
    pub rkey: u32,
    /// Where the window is in its cycle.
    pub state: MwState,
    /// Tag steps taken by this `ibv_mw` since it was allocated.
    pub steps: u32,
    /// Windows this handle retired so far.
    pub retired: u32,
    /// The QP its latest successful bind went through (0 when unbound).
    pub qpn: u32,
}

/// An outstanding bind or invalidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pending {
    handle: u32,
    qpn: u32,
    op: KeyOp,
    user_wr_id: u64,
    user_signaled: bool,
}

/// What polling a completion of a bind/invalidate means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completed {
    /// The completion for the caller (its own wr_id), or `None` when the
    /// caller posted the request unsignaled and it succeeded.
    pub deliver: Option<Wc>,
    /// The window and the rkey its `ibv_mw::rkey` must now hold (rxe sends
    /// that field as the window's identity; a failed bind restores it).
    pub sync: (*mut ibv_mw, u32),
}

/// Distance from tag `a` to tag `b`, forwards, in tag steps.
fn tag_steps(a: u32, b: u32) -> u32 {
    (b as u8).wrapping_sub(a as u8) as u32
}

/// The window table of one device: slots by handle and the outstanding
/// binds/invalidates by tag.
#[derive(Debug)]
pub struct Windows {
    slots: Vec<Option<Slot>>,
    pending: HashMap<u64, Pending>,
    salt: u64,
    seq: u64,
}

impl Windows {
    /// An empty table whose internal tags start with `salt`'s high 32 bits
    /// (random per device, so a caller's own wr_id is not mistaken for one).
    pub fn new(salt: u32) -> Windows {
        Windows {
            slots: Vec::new(),
            pending: HashMap::new(),
            salt: ((salt as u64) | 1 << 31) << 32,
            seq: 0,
        }
    }

    /// The high 32 bits every internal wr_id carries.
    pub fn tag_hi(&self) -> u32 {
        (self.salt >> 32) as u32
    }

    /// Corrects the key an outstanding request will publish (a type-1 bind
    /// or unbind, where the provider chose the key at post time).
    pub fn repredict(&mut self, tag: u64, key: u32) {
        if let Some(p) = self.pending.get_mut(&tag) {
            p.op = match p.op {
                KeyOp::Bind { .. } => KeyOp::Bind { new: key },
                KeyOp::Invalidate { .. } => KeyOp::Invalidate { next: key },
            };
        }
    }

    /// Adds a freshly allocated window; returns its handle.
    pub fn insert(&mut self, mw: *mut ibv_mw, rkey: u32) -> u32 {
        let s = Some(Slot {
            mw,
            rkey,
            state: MwState::Unbound,
            steps: 0,
            retired: 0,
            qpn: 0,
        });
        match self.slots.iter().position(Option::is_none) {
            Some(i) => {
                self.slots[i] = s;
                i as u32
            }
            None => {
                self.slots.push(s);
                self.slots.len() as u32 - 1
            }
        }
    }

    /// The window `handle`.
    pub fn get(&self, handle: u32) -> Option<Slot> {
        self.slots.get(handle as usize).copied().flatten()
    }

    /// The published rkey of `handle` (0 for an unknown handle).
    pub fn rkey(&self, handle: u32) -> u32 {
        self.get(handle).map(|s| s.rkey).unwrap_or(0)
    }

    /// Removes `handle` for deallocation; refused while a bind or
    /// invalidate of it is outstanding.
    pub fn take(&mut self, handle: u32) -> Result<Slot> {
        let s = self
            .get(handle)
            .ok_or_else(|| FabricError::Invalid(format!("unknown window {handle}")))?;
        if matches!(s.state, MwState::BindPosted | MwState::InvalidatePosted) {
            return Err(FabricError::Invalid(format!(
                "window {handle} has a {:?} outstanding: poll its completion before freeing it",
                s.state
            )));
        }
        self.slots[handle as usize] = None;
        Ok(s)
    }

    /// Every window, for teardown (outstanding requests are forgotten).
    pub fn drain(&mut self) -> Vec<*mut ibv_mw> {
        self.pending.clear();
        self.slots.drain(..).flatten().map(|s| s.mw).collect()
    }

    /// True when `handle` is unbound and a bind+invalidate cycle costing
    /// `cycle_steps` tag steps would take its `ibv_mw` past
    /// [`MAX_TAG_STEPS`]: the caller allocates a fresh `ibv_mw` and calls
    /// [`Windows::replace`] before binding.
    pub fn retire_due(&self, handle: u32, cycle_steps: u32) -> bool {
        self.get(handle)
            .is_some_and(|s| s.state == MwState::Unbound && s.steps + cycle_steps > MAX_TAG_STEPS)
    }

    /// Puts a fresh `ibv_mw` (key `rkey`) under an unbound `handle`; returns
    /// the retired one for deallocation.
    pub fn replace(&mut self, handle: u32, mw: *mut ibv_mw, rkey: u32) -> Result<*mut ibv_mw> {
        self.swap(handle, mw, rkey, MwState::Unbound, "retired")
    }

    /// Handles of the windows bound (their bind completed) through QP
    /// `qpn`, in handle order.
    pub fn bound_to(&self, qpn: u32) -> Vec<u32> {
        (0..self.slots.len() as u32)
            .filter(|&h| {
                self.get(h)
                    .is_some_and(|s| s.state == MwState::Bound && s.qpn == qpn)
            })
            .collect()
    }

    /// Puts the fresh `ibv_mw` `mw` (key `rkey`) under `handle`, a window
    /// bound through a QP that was just reset on a device whose windows do
    /// not survive RESET; returns the old `ibv_mw` for the caller to
    /// deallocate (`ibv_dealloc_mw` unbinds it if the device kept it
    /// bound, so the old key is dead either way). The handle is unbound
    /// afterwards and may be bound again at once.
    pub fn replace_bound(
        &mut self,
        handle: u32,
        mw: *mut ibv_mw,
        rkey: u32,
    ) -> Result<*mut ibv_mw> {
        self.swap(handle, mw, rkey, MwState::Bound, "renewed after a reset")
    }

    fn swap(
        &mut self,
        handle: u32,
        mw: *mut ibv_mw,
        rkey: u32,
        from: MwState,
        what: &str,
    ) -> Result<*mut ibv_mw> {
        let s = self
            .slots
            .get_mut(handle as usize)
            .and_then(Option::as_mut)
            .ok_or_else(|| FabricError::Invalid(format!("unknown window {handle}")))?;
        if s.state != from {
            return Err(FabricError::Invalid(format!(
                "window {handle} is {:?}: only a {from:?} window is {what}",
                s.state
            )));
        }
        let old = s.mw;
        *s = Slot {
            mw,
            rkey,
            state: MwState::Unbound,
            steps: 0,
            retired: s.retired + 1,
            qpn: 0,
        };
        Ok(old)
    }

    /// Records a bind or invalidate of `handle` about to be posted on QP
    /// `qpn`; returns the internal wr_id to post it with. A bind of a window
    /// that is not unbound, or an invalidate of one that is not bound, is
    /// refused here, before anything is posted.
    pub fn begin(
        &mut self,
        handle: u32,
        op: KeyOp,
        qpn: u32,
        user_wr_id: u64,
        user_signaled: bool,
    ) -> Result<u64> {
        let s = self
            .slots
            .get_mut(handle as usize)
            .and_then(Option::as_mut)
            .ok_or_else(|| FabricError::Invalid(format!("unknown window {handle}")))?;
        match (op, s.state) {
            (KeyOp::Bind { .. }, MwState::Unbound) => s.state = MwState::BindPosted,
            (KeyOp::Invalidate { .. }, MwState::Bound) => s.state = MwState::InvalidatePosted,
            (KeyOp::Bind { .. }, st) => {
                return Err(FabricError::Invalid(format!(
                    "BIND of window {handle} refused: it is {st:?} (a bound window \
                     must be invalidated and its invalidate completed first)"
                )))
            }
            (KeyOp::Invalidate { .. }, st) => {
                return Err(FabricError::Invalid(format!(
                    "INVALIDATE of window {handle} refused: it is {st:?}, not bound"
                )))
            }
        }
        self.seq += 1;
        let tag = self.salt | (self.seq & 0xffff_ffff);
        self.pending.insert(
            tag,
            Pending {
                handle,
                qpn,
                op,
                user_wr_id,
                user_signaled,
            },
        );
        Ok(tag)
    }

    /// Forgets a request that was not posted (the post failed): the window
    /// goes back to the state it had.
    pub fn abort(&mut self, tag: u64) {
        if let Some(p) = self.pending.remove(&tag) {
            if let Some(Some(s)) = self.slots.get_mut(p.handle as usize) {
                s.state = match p.op {
                    KeyOp::Bind { .. } => MwState::Unbound,
                    KeyOp::Invalidate { .. } => MwState::Bound,
                };
            }
        }
    }

    /// Number of binds/invalidates outstanding on QP `qpn`.
    pub fn outstanding(&self, qpn: u32) -> usize {
        self.pending.values().filter(|p| p.qpn == qpn).count()
    }

    /// Applies a polled completion. `None` when `wr_id` is not one of this
    /// table's tags (a plain request: the caller gets it as it is).
    pub fn complete(&mut self, wr_id: u64, qpn: u32, status: WcStatus) -> Option<Completed> {
        let p = *self.pending.get(&wr_id)?;
        if p.qpn != qpn {
            return None;
        }
        self.pending.remove(&wr_id);
        let ok = status == WcStatus::Success;
        let s = self
            .slots
            .get_mut(p.handle as usize)
            .and_then(Option::as_mut)?;
        let opcode = match p.op {
            KeyOp::Bind { new } => {
                if ok {
                    s.steps += tag_steps(s.rkey, new);
                    s.rkey = new;
                    s.state = MwState::Bound;
                    s.qpn = qpn;
                } else {
                    // Keep the old key: the window was not bound by it.
                    s.state = MwState::Unbound;
                }
                WcOpcode::BindMw
            }
            KeyOp::Invalidate { next } => {
                if ok {
                    s.steps += tag_steps(s.rkey, next);
                    s.rkey = next;
                    s.state = MwState::Unbound;
                    s.qpn = 0;
                } else {
                    // The key was not revoked: the window is still bound.
                    s.state = MwState::Bound;
                }
                WcOpcode::LocalInv
            }
        };
        let deliver = (p.user_signaled || !ok).then_some(Wc {
            wr_id: p.user_wr_id,
            status,
            opcode,
            byte_len: 0,
            qpn,
        });
        Some(Completed {
            deliver,
            sync: (s.mw, s.rkey),
        })
    }

    /// Completes every request still outstanding on `qpn` with
    /// `WR_FLUSH_ERR` (their completions were discarded, e.g. by a RESET
    /// after the drain deadline); returns what to deliver and to sync.
    pub fn flush_lost(&mut self, qpn: u32) -> Vec<Completed> {
        let mut tags: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.qpn == qpn)
            .map(|(&t, _)| t)
            .collect();
        tags.sort_unstable();
        tags.into_iter()
            .filter_map(|t| self.complete(t, qpn, WcStatus::WrFlushErr))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QPN: u32 = 7;

    fn mw(n: usize) -> *mut ibv_mw {
        std::ptr::without_provenance_mut(n)
    }

    /// A fake completion feed: each posted tag completes with the given
    /// status, as `ibv_poll_cq` would report it.
    fn feed(w: &mut Windows, tag: u64, st: WcStatus) -> Completed {
        w.complete(tag, QPN, st).expect("one of our tags")
    }

    #[test]
    fn rkey_is_published_only_on_a_successful_bind() {
        let mut w = Windows::new(0xabc);
        let h = w.insert(mw(0x10), 0x4400);
        let t = w
            .begin(h, KeyOp::Bind { new: 0x4401 }, QPN, 5, true)
            .unwrap();
        assert_ne!(t, 5);
        // Posted, not completed: the old key is still the published one.
        assert_eq!(w.rkey(h), 0x4400);
        assert_eq!(w.get(h).unwrap().state, MwState::BindPosted);
        // MW_BIND_ERR: the old key stays, ibv_mw::rkey is restored to it, the
        // caller sees its own wr_id with the error, the window is unbound.
        let c = feed(&mut w, t, WcStatus::MwBindErr);
        assert_eq!(w.rkey(h), 0x4400);
        assert_eq!(c.sync, (mw(0x10), 0x4400));
        assert_eq!(c.deliver.unwrap().wr_id, 5);
        assert_eq!(c.deliver.unwrap().status, WcStatus::MwBindErr);
        assert_eq!(c.deliver.unwrap().opcode, WcOpcode::BindMw);
        assert_eq!(w.get(h).unwrap().state, MwState::Unbound);
        // A flushed bind (QP in error) is the same.
        let t = w
            .begin(h, KeyOp::Bind { new: 0x4401 }, QPN, 6, true)
            .unwrap();
        let c = feed(&mut w, t, WcStatus::WrFlushErr);
        assert_eq!((w.rkey(h), c.sync.1), (0x4400, 0x4400));
        // Success publishes the new key and syncs ibv_mw::rkey (rxe).
        let t = w
            .begin(h, KeyOp::Bind { new: 0x4401 }, QPN, 7, true)
            .unwrap();
        let c = feed(&mut w, t, WcStatus::Success);
        assert_eq!((w.rkey(h), c.sync.1), (0x4401, 0x4401));
        assert_eq!(w.get(h).unwrap().state, MwState::Bound);
        // A second completion of the same tag is not ours any more.
        assert!(w.complete(t, QPN, WcStatus::Success).is_none());
        assert_eq!(w.outstanding(QPN), 0);
    }

    /// A device whose windows do not survive RESET: the windows bound
    /// through the reset QP (only those) get fresh `ibv_mw`s under the same
    /// handles, are unbound and can be bound again with new keys.
    #[test]
    fn windows_bound_through_a_reset_qp_are_renewed() {
        let mut w = Windows::new(3);
        let a = w.insert(mw(0x30), 0x300);
        let b = w.insert(mw(0x40), 0x400);
        let other = w.insert(mw(0x50), 0x500);
        let idle = w.insert(mw(0x60), 0x600);
        for (h, new, q) in [(a, 0x301, QPN), (b, 0x401, QPN), (other, 0x501, QPN + 1)] {
            let t = w.begin(h, KeyOp::Bind { new }, q, 0, false).unwrap();
            assert!(w.complete(t, q, WcStatus::Success).is_some());
        }
        assert_eq!(w.bound_to(QPN), vec![a, b]);
        assert_eq!(w.bound_to(QPN + 1), vec![other]);
        // An unbound window is not "renewed" (and a bound one not retired).
        assert!(w.replace_bound(idle, mw(0x61), 0x6100).is_err());
        assert!(w.replace(a, mw(0x31), 0x3100).is_err());
        let old = w.replace_bound(a, mw(0x31), 0x3100).unwrap();
        assert_eq!(old, mw(0x30));
        let s = w.get(a).unwrap();
        assert_eq!(
            (s.mw, s.rkey, s.state, s.qpn, s.retired),
            (mw(0x31), 0x3100, MwState::Unbound, 0, 1)
        );
        assert_eq!(w.bound_to(QPN), vec![b]);
        // Bound again with the fresh window's next key.
        let t = w
            .begin(a, KeyOp::Bind { new: 0x3101 }, QPN, 0, false)
            .unwrap();
        w.complete(t, QPN, WcStatus::Success).unwrap();
        assert_eq!(w.rkey(a), 0x3101);
        // An invalidate forgets the QP.
        let t = w
            .begin(b, KeyOp::Invalidate { next: 0x401 }, QPN, 0, false)
            .unwrap();
        w.complete(t, QPN, WcStatus::Success).unwrap();
        assert_eq!(w.bound_to(QPN), vec![a]);
    }

    #[test]
    fn still_bound_and_not_bound_are_refused_before_posting() {
        let mut w = Windows::new(1);
        let h = w.insert(mw(0x20), 0x100);
        // Invalidate of a never-bound window.
        let e = w
            .begin(h, KeyOp::Invalidate { next: 0x100 }, QPN, 1, true)
            .unwrap_err();
        assert!(e.to_string().contains("not bound"), "{e}");
        let t = w
            .begin(h, KeyOp::Bind { new: 0x101 }, QPN, 1, true)
            .unwrap();
        // A second bind while the first is outstanding, then while bound.
        assert!(w
            .begin(h, KeyOp::Bind { new: 0x102 }, QPN, 2, true)
            .is_err());
        feed(&mut w, t, WcStatus::Success);
        let e = w
            .begin(h, KeyOp::Bind { new: 0x102 }, QPN, 2, true)
            .unwrap_err();
        assert!(e.to_string().contains("Bound"), "{e}");
    }

    #[test]
    fn failed_invalidate_leaves_the_window_bound() {
        let mut w = Windows::new(1);
        let h = w.insert(mw(0x30), 0x200);
        let t = w
            .begin(h, KeyOp::Bind { new: 0x201 }, QPN, 1, true)
            .unwrap();
        feed(&mut w, t, WcStatus::Success);
        let t = w
            .begin(h, KeyOp::Invalidate { next: 0x201 }, QPN, 2, false)
            .unwrap();
        assert!(w.take(h).is_err(), "freed with an invalidate outstanding");
        let c = feed(&mut w, t, WcStatus::WrFlushErr);
        // Unsignaled by the caller, but an error: delivered.
        assert_eq!(c.deliver.unwrap().status, WcStatus::WrFlushErr);
        assert_eq!(w.get(h).unwrap().state, MwState::Bound);
        assert_eq!(w.rkey(h), 0x201);
        // The retry succeeds; unsignaled success is swallowed.
        let t = w
            .begin(h, KeyOp::Invalidate { next: 0x201 }, QPN, 3, false)
            .unwrap();
        let c = feed(&mut w, t, WcStatus::Success);
        assert!(c.deliver.is_none());
        assert_eq!(w.get(h).unwrap().state, MwState::Unbound);
        // An aborted post restores the state it had.
        let t = w
            .begin(h, KeyOp::Bind { new: 0x202 }, QPN, 4, true)
            .unwrap();
        w.abort(t);
        assert_eq!(w.get(h).unwrap().state, MwState::Unbound);
        assert_eq!(w.outstanding(QPN), 0);
    }

    #[test]
    fn completions_of_another_qp_or_a_plain_request_are_not_ours() {
        let mut w = Windows::new(9);
        let h = w.insert(mw(0x40), 0x300);
        let t = w
            .begin(h, KeyOp::Bind { new: 0x301 }, QPN, 1, true)
            .unwrap();
        assert!(w.complete(t, QPN + 1, WcStatus::Success).is_none());
        assert!(w.complete(1, QPN, WcStatus::Success).is_none());
        assert_eq!(w.get(h).unwrap().state, MwState::BindPosted);
        // Lost across a RESET: flushed, old key kept.
        let lost = w.flush_lost(QPN);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].deliver.unwrap().status, WcStatus::WrFlushErr);
        assert_eq!(w.rkey(h), 0x300);
        assert_eq!(w.get(h).unwrap().state, MwState::Unbound);
    }

    /// Cycles one handle 10 000 times through bind+invalidate with type-2
    /// steps (1 per cycle) and type-1 steps (2 per cycle), retiring as told:
    /// no (ibv_mw, rkey) pair is ever bound twice.
    #[test]
    fn tags_never_recur_within_one_window() {
        for cycle_steps in [1u32, 2] {
            let mut w = Windows::new(3);
            let mut next_mw = 0x1000usize;
            let h = w.insert(mw(next_mw), 0x5500);
            let mut seen = std::collections::HashSet::new();
            for i in 0..10_000u64 {
                if w.retire_due(h, cycle_steps) {
                    next_mw += 1;
                    let old = w.replace(h, mw(next_mw), 0x5500).unwrap();
                    assert_eq!(old, mw(next_mw - 1));
                }
                let s = w.get(h).unwrap();
                let new = crate::fabric::inc_rkey(s.rkey);
                let t = w.begin(h, KeyOp::Bind { new }, QPN, i, true).unwrap();
                feed(&mut w, t, WcStatus::Success);
                assert!(seen.insert((s.mw as usize, new)), "key {new:#x} recurred");
                let next = if cycle_steps == 2 {
                    crate::fabric::inc_rkey(new)
                } else {
                    new
                };
                let t = w
                    .begin(h, KeyOp::Invalidate { next }, QPN, i, true)
                    .unwrap();
                feed(&mut w, t, WcStatus::Success);
                assert!(w.get(h).unwrap().steps <= MAX_TAG_STEPS);
            }
            let retired = w.get(h).unwrap().retired;
            assert_eq!(retired, (10_000 - 1) / (MAX_TAG_STEPS / cycle_steps));
            // A replace of a bound window is refused.
            let new = crate::fabric::inc_rkey(w.rkey(h));
            let t = w.begin(h, KeyOp::Bind { new }, QPN, 0, true).unwrap();
            feed(&mut w, t, WcStatus::Success);
            assert!(w.replace(h, mw(1), 0).is_err());
        }
    }
}

/// Records the binds/invalidates of `chain` (built from `wrs`) for QP
/// `qpn` before it is posted: each gets an internal wr_id and is made
/// signaled. If one is refused (wrong window state) the ones recorded before
/// it are forgotten and nothing may be posted. Returns (WR index, tag).
pub fn tag_chain(
    w: &mut Windows,
    chain: &mut super::SendChain,
    wrs: &[crate::fabric::SendWr],
    qpn: u32,
) -> Result<Vec<(usize, u64)>> {
    let mut tags = Vec::with_capacity(chain.new_rkeys.len());
    for k in &chain.new_rkeys {
        let u = &wrs[k.index];
        match w.begin(k.handle, k.op, qpn, u.wr_id, u.signaled) {
            Ok(tag) => {
                chain.wrs[k.index].wr_id = tag;
                chain.wrs[k.index].send_flags |= rdma_sys::ibv_send_flags::IBV_SEND_SIGNALED.0;
                tags.push((k.index, tag));
            }
            Err(e) => {
                for &(_, tag) in &tags {
                    w.abort(tag);
                }
                return Err(e);
            }
        }
    }
    Ok(tags)
}

/// Translates polled `ibv_wc`s into contract completions in `out`
/// (`out.len() >= raw.len()`); returns how many were delivered. A
/// completion whose wr_id carries `tag_hi` goes through `complete` (the
/// window table, locked only then); its [`Completed`] is passed to `sync`
/// and delivered under the caller's wr_id, or swallowed.
pub fn translate_wcs(
    raw: &[rdma_sys::ibv_wc],
    out: &mut [Wc],
    tag_hi: u32,
    mut complete: impl FnMut(u64, u32, WcStatus) -> Option<Completed>,
    mut sync: impl FnMut(&Completed),
) -> usize {
    let mut done = 0;
    for w in raw {
        let status = super::status_from_ibv(w.status);
        if (w.wr_id >> 32) as u32 == tag_hi {
            if let Some(c) = complete(w.wr_id, w.qp_num, status) {
                sync(&c);
                if let Some(d) = c.deliver {
                    out[done] = d;
                    done += 1;
                }
                continue;
            }
        }
        out[done] = Wc {
            wr_id: w.wr_id,
            status,
            // Verbs leaves the opcode undefined on errors.
            opcode: super::opcode_from_ibv(w.opcode).unwrap_or(WcOpcode::Send),
            byte_len: w.byte_len,
            qpn: w.qp_num,
        };
        done += 1;
    }
    done
}

#[cfg(test)]
mod feed_tests {
    use super::*;
    use crate::fabric::{Access, SendWr, WrOp};
    use rdma_sys::{ibv_send_flags, ibv_wc, ibv_wc_opcode, ibv_wc_status};

    struct Res(std::sync::Mutex<Windows>);
    impl super::super::Resolve for Res {
        fn mr(&self, lkey: u32) -> Option<super::super::LocalMr> {
            (lkey == 0x11).then_some(super::super::LocalMr {
                addr: 0x1000_0000,
                len: 1 << 20,
                mr: std::ptr::without_provenance_mut(0x5000),
            })
        }
        fn mw(&self, handle: u32) -> Option<super::super::LocalMw> {
            self.0
                .lock()
                .unwrap()
                .get(handle)
                .map(|s| super::super::LocalMw {
                    mw: s.mw,
                    rkey: s.rkey,
                })
        }
    }

    fn raw(wr_id: u64, status: u32, opcode: u32, qpn: u32) -> ibv_wc {
        // SAFETY (test): ibv_wc is plain data.
        let mut w: ibv_wc = unsafe { std::mem::zeroed() };
        w.wr_id = wr_id;
        w.status = status;
        w.opcode = opcode;
        w.qp_num = qpn;
        w
    }

    fn bind(mw: u32, wr_id: u64, signaled: bool) -> SendWr {
        SendWr {
            wr_id,
            op: WrOp::Bind {
                mw,
                lkey: 0x11,
                offset: 0,
                len: 64,
                access: Access::READ_WINDOW,
            },
            signaled,
        }
    }

    /// The path a post and a poll take, with a fake CQ feeding
    /// MW_BIND_ERR, WR_FLUSH_ERR and success.
    #[test]
    fn fake_cq_feed_drives_the_keys() {
        const QPN: u32 = 21;
        let r = Res(std::sync::Mutex::new(Windows::new(0x77)));
        let h =
            r.0.lock()
                .unwrap()
                .insert(std::ptr::without_provenance_mut(0x6000), 0x3300);
        let tag_hi = r.0.lock().unwrap().tag_hi();
        let post = |wrs: &[SendWr]| -> Result<(super::super::SendChain, Vec<(usize, u64)>)> {
            let mut c = super::super::build_send_chain(&r, wrs)?;
            let t = tag_chain(&mut r.0.lock().unwrap(), &mut c, wrs, QPN)?;
            Ok((c, t))
        };
        let poll = |feed: &[ibv_wc]| -> (Vec<Wc>, Vec<(usize, u32)>) {
            let mut out = vec![Wc::default(); feed.len()];
            let mut synced = Vec::new();
            let n = translate_wcs(
                feed,
                &mut out,
                tag_hi,
                |id, q, st| r.0.lock().unwrap().complete(id, q, st),
                |c| synced.push((c.sync.0 as usize, c.sync.1)),
            );
            out.truncate(n);
            (out, synced)
        };
        // 1. A bind posted unsignaled by the caller: posted signaled under
        //    an internal id; MW_BIND_ERR comes back under the caller's id,
        //    the old key stays and is written back to ibv_mw::rkey.
        let (c, t) = post(&[bind(h, 40, false)]).unwrap();
        assert_eq!(c.wrs[0].wr_id, t[0].1);
        assert_ne!(c.wrs[0].send_flags & ibv_send_flags::IBV_SEND_SIGNALED.0, 0);
        // A plain completion in between is passed through untouched.
        let (out, synced) = poll(&[
            raw(
                7,
                ibv_wc_status::IBV_WC_SUCCESS,
                ibv_wc_opcode::IBV_WC_RDMA_READ,
                QPN,
            ),
            raw(t[0].1, ibv_wc_status::IBV_WC_MW_BIND_ERR, 0xdead, QPN),
        ]);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].wr_id, out[0].opcode), (7, WcOpcode::Read));
        assert_eq!(
            (out[1].wr_id, out[1].status, out[1].opcode),
            (40, WcStatus::MwBindErr, WcOpcode::BindMw)
        );
        assert_eq!(synced, vec![(0x6000, 0x3300)]);
        assert_eq!(r.0.lock().unwrap().rkey(h), 0x3300);
        // 2. Flushed (QP in error): same.
        let (_, t) = post(&[bind(h, 41, true)]).unwrap();
        let (out, _) = poll(&[raw(t[0].1, ibv_wc_status::IBV_WC_WR_FLUSH_ERR, 0, QPN)]);
        assert_eq!((out[0].wr_id, out[0].status), (41, WcStatus::WrFlushErr));
        assert_eq!(r.0.lock().unwrap().rkey(h), 0x3300);
        // 3. Success, unsignaled by the caller: swallowed, key published
        //    and synced.
        let (_, t) = post(&[bind(h, 42, false)]).unwrap();
        let (out, synced) = poll(&[raw(
            t[0].1,
            ibv_wc_status::IBV_WC_SUCCESS,
            ibv_wc_opcode::IBV_WC_BIND_MW,
            QPN,
        )]);
        assert!(out.is_empty());
        assert_eq!(synced, vec![(0x6000, 0x3301)]);
        assert_eq!(r.0.lock().unwrap().rkey(h), 0x3301);
        // 4. Now bound: a second bind, or a bind+invalidate chain, is
        //    refused before posting and leaves nothing outstanding.
        assert!(post(&[bind(h, 43, true)]).is_err());
        let h2 =
            r.0.lock()
                .unwrap()
                .insert(std::ptr::without_provenance_mut(0x7000), 0x4400);
        let e = post(&[
            bind(h2, 44, true),
            SendWr {
                wr_id: 45,
                op: WrOp::Invalidate { mw: h2 },
                signaled: true,
            },
        ]);
        assert!(e.is_err());
        assert_eq!(r.0.lock().unwrap().outstanding(QPN), 0);
        assert_eq!(r.0.lock().unwrap().get(h2).unwrap().state, MwState::Unbound);
        // 5. The invalidate of the bound window carries its bound key.
        let (c, t) = post(&[SendWr {
            wr_id: 46,
            op: WrOp::Invalidate { mw: h },
            signaled: true,
        }])
        .unwrap();
        // SAFETY (test): reading the union member written for LOCAL_INV.
        let inv = unsafe { c.wrs[0].imm_data_invalidated_rkey_union.invalidated_rkey };
        assert_eq!(inv, 0x3301);
        let (out, _) = poll(&[raw(t[0].1, ibv_wc_status::IBV_WC_WR_FLUSH_ERR, 0, QPN)]);
        assert_eq!((out[0].wr_id, out[0].opcode), (46, WcOpcode::LocalInv));
        assert_eq!(r.0.lock().unwrap().get(h).unwrap().state, MwState::Bound);
    }
}

/// Releases device objects at teardown (the real one calls verbs).
pub trait Release {
    /// `ibv_dealloc_mw`.
    fn dealloc_mw(&mut self, mw: *mut ibv_mw);
    /// `ibv_dereg_mr`.
    fn dereg_mr(&mut self, mr: *mut rdma_sys::ibv_mr);
    /// `ibv_dealloc_pd`.
    fn dealloc_pd(&mut self, pd: *mut rdma_sys::ibv_pd);
    /// `ibv_close_device`.
    fn close(&mut self);
}

/// Tears a device down in the order verbs demands: windows first
/// (`ibv_alloc_mw(3)`: deregistering an MR fails while a window is bound
/// to it), then MRs, then PDs, then the context.
pub fn teardown(
    r: &mut dyn Release,
    mws: Vec<*mut ibv_mw>,
    mrs: Vec<*mut rdma_sys::ibv_mr>,
    pds: Vec<*mut rdma_sys::ibv_pd>,
) {
    for m in mws {
        r.dealloc_mw(m);
    }
    for m in mrs {
        r.dereg_mr(m);
    }
    for p in pds {
        r.dealloc_pd(p);
    }
    r.close();
}

#[cfg(test)]
mod teardown_tests {
    use super::*;

    fn p<T>(n: usize) -> *mut T {
        std::ptr::without_provenance_mut(n)
    }

    #[derive(Default)]
    struct Log(Vec<String>);
    impl Release for Log {
        fn dealloc_mw(&mut self, mw: *mut ibv_mw) {
            self.0.push(format!("mw{}", mw as usize));
        }
        fn dereg_mr(&mut self, mr: *mut rdma_sys::ibv_mr) {
            self.0.push(format!("mr{}", mr as usize));
        }
        fn dealloc_pd(&mut self, pd: *mut rdma_sys::ibv_pd) {
            self.0.push(format!("pd{}", pd as usize));
        }
        fn close(&mut self) {
            self.0.push("close".into());
        }
    }

    #[test]
    fn windows_go_before_their_mrs() {
        let mut w = Windows::new(0);
        w.insert(p(1), 0x100);
        let h = w.insert(p(2), 0x200);
        let t = w.begin(h, KeyOp::Bind { new: 0x201 }, 1, 0, true).unwrap();
        w.complete(t, 1, WcStatus::Success).unwrap();
        let mut log = Log::default();
        teardown(&mut log, w.drain(), vec![p(3)], vec![p(4)]);
        assert_eq!(log.0, ["mw1", "mw2", "mr3", "pd4", "close"]);
    }
}
