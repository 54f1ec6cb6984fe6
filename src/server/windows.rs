//! Binding and revoking memory windows on the directory's data QP towards a
//! lease's holder, and revoking everything a lease holds.

use std::time::{Duration, Instant};

use super::region::Prs;
use super::Directory;
use crate::fabric::{Access, QpState, SendWr, Wc, WcStatus, WrOp};
use crate::lease::table::Entry;
use crate::lease::RegionOff;
use crate::{Error, Result};

impl Directory {
    pub(super) fn prs(&self) -> Prs<'_> {
        Prs {
            region: &self.sh.region,
        }
    }

    /// Region offset of this directory's protection region `pr`.
    pub(super) fn pr_off(&self, pr: u32) -> RegionOff {
        self.sh.layout.pr(self.id, pr as u64)
    }

    /// Binds window `mw` over `[at, at + len)` towards `peer`; returns its
    /// new rkey.
    pub(super) fn bind(
        &mut self,
        peer: usize,
        mw: u32,
        at: RegionOff,
        len: u64,
        access: Access,
    ) -> Result<u32> {
        let wr = SendWr {
            wr_id: mw as u64,
            op: WrOp::Bind {
                mw,
                lkey: self.sh.region.lkey(),
                offset: at.0,
                len,
                access,
            },
            signaled: true,
        };
        self.post_local(peer, wr)?;
        if self.sh.cfg.magic_mw_fault {
            if let Some(n) = self.binds.get_mut(peer) {
                self.magic_hit |= *n % 1024 == 682;
                *n += 1;
            }
        }
        Ok(self.sh.nic.mw_rkey(mw))
    }

    fn unbind(&mut self, peer: usize, mw: u32) -> Result<()> {
        self.post_local(
            peer,
            SendWr {
                wr_id: mw as u64,
                op: WrOp::Invalidate { mw },
                signaled: true,
            },
        )
    }

    /// Posts a bind/invalidate on the data QP towards `peer` and waits for
    /// its completion (the QP is reset first if it is in error).
    fn post_local(&mut self, peer: usize, wr: SendWr) -> Result<()> {
        let qp = self.data[peer].clone();
        if qp.state() != QpState::Rts {
            qp.reset()?;
            qp.connect(&self.data_remote[peer])?;
        }
        qp.post_send(&[wr])?;
        let mut wc = [Wc::default(); 4];
        let t0 = Instant::now();
        loop {
            let n = self.bind_cq.poll(&mut wc);
            for w in &wc[..n] {
                if w.wr_id == wr.wr_id {
                    return if w.status == WcStatus::Success {
                        Ok(())
                    } else {
                        Err(Error::Invalid(format!(
                            "window operation on dir {} towards peer {peer} failed: {w:?}",
                            self.id
                        )))
                    };
                }
            }
            if t0.elapsed() > Duration::from_secs(1) {
                return Err(Error::Timeout(format!(
                    "window operation on dir {} towards peer {peer} did not complete in 1 s",
                    self.id
                )));
            }
        }
    }

    /// Revokes everything the lease in `slot` holds and frees its slot.
    pub(super) fn revoke(&mut self, slot: u32, unbind: bool) -> Option<Entry> {
        let e = self.table.remove(slot)?;
        let mr = self.mrs.get_mut(slot as usize).and_then(Option::take);
        for mw in [e.mw_buf, e.mw_pr].into_iter().flatten() {
            if unbind {
                if let Err(err) = self.unbind(e.peer, mw) {
                    tracing::warn!(dir = self.id, "unbind failed: {err}");
                }
            }
            self.mws.push(mw);
        }
        if let Some(mr) = mr {
            let _ = self.sh.nic.dereg_mr(&mr);
        }
        if let Some(k) = e.lock {
            self.sh.locks.unlock(k);
        }
        if let Some(pr) = e.pr {
            let _ = self.prs().retire(self.pr_off(pr));
        }
        Some(e)
    }
}
