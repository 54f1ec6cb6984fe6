//! The lease GC: due tasks from the deadline queue, decided by
//! `LeaseTable::gc_step` and carried out here.

use super::{Directory, PASS_WRS};
use crate::lease::table::GcStep;
use crate::Result;

/// Most GC tasks run per serve pass.
const GC_BATCH: usize = 64;

impl Directory {
    /// Revokes every live lease (closing its protection region first) and
    /// drops the GC queue: the end of serving. The unbinds go in chains of
    /// at most [`PASS_WRS`] operations.
    pub(super) fn revoke_all(&mut self) {
        for slot in self.table.live_slots() {
            if let Some(pr) = self.table.slot_pr(slot) {
                let _ = self.prs().close(self.pr_off(pr));
            }
            self.revoke(slot, true);
            if self.pass.ops.len() + 2 > PASS_WRS {
                self.commit();
                self.release_quarantine();
            }
        }
        self.commit();
        self.release_quarantine();
        self.ddl = Default::default();
    }

    /// Runs due GC tasks (at most [`GC_BATCH`], and only while the pass has
    /// room for their unbinds). A task is due once its deadline plus the
    /// cluster epsilon has passed on this node's clock: no client clock can
    /// still place the deadline ahead (clients stop at `now + epsilon <
    /// deadline`). A task whose lease was extended re-arms; otherwise the PR
    /// is closed by CAS (atomic with client extensions) and the lease
    /// revoked (its unbinds join the pass's chain, which completes before the
    /// pass replies to anyone).
    pub(super) fn run_gc(&mut self, now: i64) -> Result<usize> {
        let mut n = 0;
        let due = now.saturating_sub(self.sh.clock.epsilon());
        // A revocation queues up to 2 unbinds on the pass.
        while n < GC_BATCH && self.pass.ops.len() + 2 <= PASS_WRS {
            let Some((_, (slot, gen))) = self.ddl.pop_due(due) else {
                break;
            };
            n += 1;
            let pr = self.table.get(slot, gen).and_then(|e| e.pr);
            let word = match pr {
                Some(pr) => Some(self.prs().word(self.pr_off(pr))?),
                None => None,
            };
            match self.table.gc_step(slot, gen, word) {
                GcStep::Stale => {}
                GcStep::Rearm(at) => self.ddl.push(at, (slot, gen)),
                // An extension that lands between the load and the CAS
                // fails the CAS: look again now.
                GcStep::Close { from, to } => match pr {
                    Some(pr) if self.prs().cas(self.pr_off(pr), from, to)? != from => {
                        self.ddl.push(now, (slot, gen))
                    }
                    _ => {
                        self.revoke(slot, true);
                    }
                },
                GcStep::Revoke => {
                    self.revoke(slot, true);
                }
            }
        }
        Ok(n)
    }
}
