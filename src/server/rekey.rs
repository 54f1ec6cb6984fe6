//! The admin `QpReset`: the directory resets and reconnects its data QP
//! towards the sender with the PSNs the sender chose, and, on a NIC whose
//! windows do not survive a reset of their QP
//! ([`Caps::windows_survive_reset`](crate::fabric::Caps::windows_survive_reset)
//! false), re-binds the windows of every lease the sender holds here with
//! fresh key tags (same ranges, same access; generations, deadlines and
//! protection regions untouched) and keeps the (old, new) rkeys for the
//! sender to fetch with `AdminOp::LeaseKeys`.
//!
//! Only leases live in the table are re-bound: a relinquished or revoked
//! lease left it before. A lease past its deadline is re-bound like the
//! others (every window of the peer must be bound again or revoked, or a
//! later invalidate would find it unbound) and the GC revokes it as usual.
//! A lease whose re-bind fails is revoked at once.

use super::Directory;
use crate::fabric::{Access, ConnPsns, WrOp};
use crate::lease::msg::{LeaseKey, LeaseKeysResp, KEYS_PER_MSG};
use crate::lease::pr;
use crate::lease::Rc;
use crate::Result;

/// A live lease of the peer, as it was before the reset.
struct Before {
    slot: u32,
    gen: u64,
    mw_buf: Option<u32>,
    mw_pr: Option<u32>,
    old_rkey: u32,
    old_pr_rkey: u32,
}

impl Directory {
    /// Resets the data QP towards `peer` and reconnects it (with `psns`'
    /// responder half when given); re-binds the peer's leases where the
    /// NIC's windows died with the reset. Returns how many leases were
    /// re-keyed.
    pub(super) fn qp_reset(&mut self, peer: usize, psns: Option<ConnPsns>) -> Result<usize> {
        let rebind = !self.sh.nic.caps().windows_survive_reset;
        // The keys the peer holds now (read before the reset changes them).
        let before: Vec<Before> = if rebind {
            self.table
                .live_slots()
                .into_iter()
                .filter_map(|slot| {
                    let e = self.table.entry(slot)?;
                    if e.peer != peer || (e.mw_buf.is_none() && e.mw_pr.is_none()) {
                        return None;
                    }
                    let key = |mw: Option<u32>| mw.map_or(0, |m| self.sh.nic.mw_rkey(m));
                    Some(Before {
                        slot,
                        gen: e.gen,
                        mw_buf: e.mw_buf,
                        mw_pr: e.mw_pr,
                        old_rkey: key(e.mw_buf),
                        old_pr_rkey: key(e.mw_pr),
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        let qp = self.data[peer].clone();
        let remote = self.data_remote[peer].clone();
        qp.reset()?;
        match psns {
            Some(p) => qp.connect_psns(&remote, p.responder_end())?,
            None => qp.connect(&remote)?,
        }
        self.rekeyed.remove(&peer);
        if !rebind {
            return Ok(0);
        }
        self.forget_dead_windows(peer);
        // Windows an acquire of this pass is about to bind (queued, not
        // posted): they were unbound at the reset and their bind follows.
        let queued: Vec<u32> = self
            .pass
            .ops
            .iter()
            .filter(|o| o.peer == peer && o.done.is_none())
            .filter_map(|o| match o.op {
                WrOp::Bind { mw, .. } => Some(mw),
                _ => None,
            })
            .collect();
        // The pass's own operations wait while the re-binds run in chains
        // of their own (at most PASS_WRS operations each).
        let saved = std::mem::take(&mut self.pass.ops);
        let mut keys = Vec::with_capacity(before.len());
        let mut failed: Vec<(u32, u64, Vec<u32>)> = Vec::new();
        for chunk in before.chunks(super::PASS_WRS / 2) {
            let mut owners = Vec::new();
            for b in chunk {
                let Some(e) = self.table.get(b.slot, b.gen) else {
                    continue;
                };
                let access = if e.write {
                    Access::WRITE_WINDOW
                } else {
                    Access::READ_WINDOW
                };
                let (base, size, pr) = (e.base, e.size, e.pr);
                let first = self.pass.ops.len();
                let lkey = self.sh.region.lkey();
                if let Some(mw) = b.mw_buf.filter(|m| !queued.contains(m)) {
                    let op = WrOp::Bind {
                        mw,
                        lkey,
                        offset: base.0,
                        len: size,
                        access,
                    };
                    self.queue_op(peer, op, None);
                }
                if let (Some(mw), Some(pr)) = (b.mw_pr.filter(|m| !queued.contains(m)), pr) {
                    let op = WrOp::Bind {
                        mw,
                        lkey,
                        offset: self.pr_off(pr).0,
                        len: pr::SIZE,
                        access: Access::REMOTE_READ | Access::REMOTE_ATOMIC,
                    };
                    self.queue_op(peer, op, None);
                }
                owners.push((b, first..self.pass.ops.len()));
            }
            self.commit();
            for (b, ops) in owners {
                let unbound: Vec<u32> = self.pass.ops[ops.clone()]
                    .iter()
                    .filter(|o| !matches!(o.done, Some(Ok(()))))
                    .filter_map(|o| match o.op {
                        WrOp::Bind { mw, .. } => Some(mw),
                        _ => None,
                    })
                    .collect();
                if !unbound.is_empty() {
                    failed.push((b.slot, b.gen, unbound));
                    continue;
                }
                let key = |mw: Option<u32>| mw.map_or(0, |m| self.sh.nic.mw_rkey(m));
                keys.push(LeaseKey {
                    generation: b.gen,
                    old_rkey: b.old_rkey,
                    rkey: key(b.mw_buf),
                    old_pr_rkey: b.old_pr_rkey,
                    pr_rkey: key(b.mw_pr),
                });
            }
            self.pass.ops.clear();
        }
        self.pass.ops = saved;
        // A lease whose window could not be bound again is unusable: it is
        // revoked now (its other window is invalidated by this pass).
        for (slot, gen, unbound) in failed {
            if self.table.get(slot, gen).is_none() {
                continue;
            }
            tracing::warn!(
                dir = self.id,
                peer,
                slot,
                gen,
                "re-bind after a QP reset failed: lease revoked"
            );
            if let Some(pr) = self.table.slot_pr(slot) {
                let _ = self.prs().close(self.pr_off(pr));
            }
            if let Some(e) = self.revoke_except(slot, true, &unbound) {
                if let Some((hint, off, size)) = e.alloc {
                    self.free_alloc(self.quotas.node_of(e.peer), hint, off, size);
                }
            }
        }
        let n = keys.len();
        if n > 0 {
            self.rekeyed.insert(peer, keys);
        }
        Ok(n)
    }

    /// After a reset that killed the windows bound on the QP towards
    /// `peer`: invalidates this pass queued for them are dropped, and
    /// windows left bound earlier (`dirty`) go back to the pool; all of
    /// them are unbound now (an invalidate would be refused on verbs).
    fn forget_dead_windows(&mut self, peer: usize) {
        for o in self.pass.ops.iter_mut() {
            if o.peer == peer && o.done.is_none() && matches!(o.op, WrOp::Invalidate { .. }) {
                o.done = Some(Ok(()));
            }
        }
        let mut i = 0;
        while i < self.dirty.len() {
            if self.dirty[i].0 == peer {
                let (_, mw) = self.dirty.swap_remove(i);
                self.mws.push(mw);
            } else {
                i += 1;
            }
        }
    }

    /// A page of the re-keyed leases of `peer`'s last `QpReset`, from
    /// entry `from` on. The list is dropped once its last page was served.
    pub(super) fn lease_keys(&mut self, peer: usize, from: u64) -> LeaseKeysResp {
        let Some(list) = self.rekeyed.get(&peer) else {
            return LeaseKeysResp::default();
        };
        let total = list.len();
        let from = (from as usize).min(total);
        let end = (from + KEYS_PER_MSG).min(total);
        let r = LeaseKeysResp {
            rc: Rc::Ok as u8,
            total: total as u32,
            from: from as u32,
            keys: list[from..end].to_vec(),
        };
        if end == total {
            self.rekeyed.remove(&peer);
        }
        r
    }
}
