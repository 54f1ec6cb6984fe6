//! Binding and revoking memory windows on the directory's data QP towards a
//! lease's holder, and revoking everything a lease holds: both queue their
//! window operations on the current pass (`pass.rs` posts them).

use super::region::Prs;
use super::Directory;
use crate::fabric::{Access, WrOp};
use crate::lease::table::Entry;
use crate::lease::RegionOff;

impl Directory {
    pub(super) fn prs(&self) -> Prs<'_> {
        Prs {
            region: &self.sh.region,
            nic: self.nic_atomics.as_ref(),
        }
    }

    /// Region offset of this directory's protection region `pr`.
    pub(super) fn pr_off(&self, pr: u32) -> RegionOff {
        self.sh.layout.pr(self.id, pr as u64)
    }

    /// Queues the bind of window `mw` over `[at, at + len)` towards `peer`
    /// for pending acquire `owner` (posted by the pass's commit). Returns
    /// true when the bind has the magic index (`Config::magic_mw_fault`).
    pub(super) fn bind(
        &mut self,
        peer: usize,
        mw: u32,
        at: RegionOff,
        len: u64,
        access: Access,
        owner: usize,
    ) -> bool {
        let mut lkey = self.sh.region.lkey();
        if self.bind_fault == Some(peer) {
            self.bind_fault = None;
            lkey = !lkey; // no such region: the NIC refuses the bind
        }
        let op = WrOp::Bind {
            mw,
            lkey,
            offset: at.0,
            len,
            access,
        };
        self.queue_op(peer, op, Some(owner));
        let mut magic = false;
        if self.sh.cfg.magic_mw_fault {
            if let Some(n) = self.binds.get_mut(peer) {
                magic = *n % 1024 == 682;
                *n += 1;
            }
        }
        magic
    }

    /// Revokes everything the lease in `slot` holds and frees its slot. Its
    /// unbinds join the pass's chain (when `unbind`); its windows,
    /// protection region and conflict lock are given back once the pass's
    /// chains completed.
    pub(super) fn revoke(&mut self, slot: u32, unbind: bool) -> Option<Entry> {
        self.revoke_except(slot, unbind, &[])
    }

    /// As [`Directory::revoke`]; the windows in `unbound` (their bind did
    /// not complete) are not invalidated (invalidating an unbound window
    /// fails on hardware), only given back.
    pub(super) fn revoke_except(
        &mut self,
        slot: u32,
        unbind: bool,
        unbound: &[u32],
    ) -> Option<Entry> {
        let e = self.table.remove_keeping_pr(slot)?;
        let mr = self.mrs.get_mut(slot as usize).and_then(Option::take);
        for mw in [e.mw_buf, e.mw_pr].into_iter().flatten() {
            if unbound.contains(&mw) {
                self.pass.mws.push(mw);
            } else if unbind {
                self.queue_op(e.peer, WrOp::Invalidate { mw }, None);
                self.pass.mws.push(mw);
            } else {
                // Still bound (NO_RELINQUISH_UNBIND_ANY): a later pass
                // invalidates it before anyone can bind it again.
                self.dirty.push((e.peer, mw));
            }
        }
        if let Some(mr) = mr {
            let _ = self.sh.nic.dereg_mr(&mr);
        }
        if let Some(k) = e.lock {
            self.pass.locks.push(k);
        }
        if let Some(pr) = e.pr {
            self.pass.prs.push(pr);
        }
        Some(e)
    }
}
