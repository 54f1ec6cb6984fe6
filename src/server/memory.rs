//! Two-sided memory access (rpc_read/write/cas/faa), checked against the
//! caller's lease exactly like one-sided access, and administrative
//! requests.

use super::Directory;
use crate::fabric::Access;
use crate::lease::msg::{AdminOp, AdminReq, AdminResp, MemOp, MemReq, MemResp};
use crate::lease::table::{self, Entry};
use crate::lease::Rc;

impl Directory {
    /// The deadline of `e` as its protection region says now.
    fn deadline(&self, e: &Entry) -> i64 {
        let word = e.pr.map(|pr| self.prs().word(self.pr_off(pr)));
        match word {
            Some(Ok(w)) => table::deadline(e, Some(w)),
            // An unreadable region cannot be extended: one unit.
            Some(Err(_)) | None => table::deadline(e, None),
        }
    }

    pub(super) fn memory(&mut self, peer: usize, r: &MemReq) -> MemResp {
        let bad = |rc: Rc| MemResp {
            rc: rc as u8,
            ..Default::default()
        };
        let now = self.sh.clock.now();
        let Ok(e) = self.table.owned(peer, r.slot, r.generation) else {
            return bad(Rc::Invalid);
        };
        let ddl = self.deadline(e);
        let write = r.op != MemOp::Read;
        let at = match table::check_access(e, now, ddl, r.offset, r.size as u64, write) {
            Ok(at) => at.0,
            Err(d) => return bad(d.rc()),
        };
        let reg = &self.sh.region;
        let res = match r.op {
            MemOp::Read => {
                let mut p = vec![0u8; r.size as usize];
                reg.read(at, &mut p).map(|_| MemResp {
                    rc: 0,
                    old: 0,
                    payload: p,
                })
            }
            MemOp::Write => reg.write(at, &r.payload).map(|_| MemResp::default()),
            MemOp::Cas => reg.cas_u64(at, r.arg0, r.arg1).map(|old| MemResp {
                rc: 0,
                old,
                payload: vec![],
            }),
            MemOp::Faa => reg.faa_u64(at, r.arg0).map(|old| MemResp {
                rc: 0,
                old,
                payload: vec![],
            }),
        };
        res.unwrap_or_else(|_| bad(Rc::Invalid))
    }

    pub(super) fn admin(&mut self, peer: usize, a: &AdminReq) -> AdminResp {
        let ok = |value: i64| AdminResp { rc: 0, value };
        let qp = &self.data[peer];
        let res = match a.op {
            AdminOp::Stats => return ok(self.live_leases() as i64),
            AdminOp::GcQueued => return ok(self.ddl.len() as i64),
            AdminOp::PrNicAtomics => {
                return ok(self.nic_atomics.as_ref().map_or(-1, |n| {
                    n.done.load(std::sync::atomic::Ordering::Relaxed) as i64
                }))
            }
            AdminOp::Time => return ok(self.sh.clock.now()),
            AdminOp::Finished => return ok(0),
            AdminOp::QpToRo => qp.modify_access(Access::REMOTE_READ),
            AdminOp::QpToRw => qp.modify_access(Access::WRITE_WINDOW),
            AdminOp::QpReset => {
                let psns = match crate::fabric::ConnPsns::decode(a.arg) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!(dir = self.id, "admin QpReset: {e}");
                        return AdminResp {
                            rc: Rc::Invalid as u8,
                            value: 0,
                        };
                    }
                };
                return match self.qp_reset(peer, psns) {
                    Ok(n) => ok(n as i64),
                    Err(e) => {
                        tracing::debug!(dir = self.id, "admin QpReset: {e}");
                        AdminResp {
                            rc: Rc::Invalid as u8,
                            value: 0,
                        }
                    }
                };
            }
            // Answered with a LeaseKeysResp (`Directory::handle`).
            AdminOp::LeaseKeys => Err(crate::fabric::FabricError::Invalid(
                "LeaseKeys is not an AdminResp request".into(),
            )),
        };
        match res {
            Ok(()) => ok(0),
            Err(e) => {
                tracing::debug!(dir = self.id, "admin {:?}: {e}", a.op);
                AdminResp {
                    rc: Rc::Invalid as u8,
                    value: 0,
                }
            }
        }
    }
}
