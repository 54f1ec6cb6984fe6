//! Acquire, relinquish (and dealloc) and two-sided extension: the lease
//! table's grant path driven through windows and protection regions.

use super::pass::PendingAcquire;
use super::Directory;
use crate::fabric::Access;
use crate::lease::flags::{acquire, modify};
use crate::lease::msg::{AcquireReq, AcquireResp, ModifyReq};
use crate::lease::pr::{self, Term};
use crate::lease::table::Entry;
use crate::lease::AcquireStatus as St;
use crate::lease::{BufOff, Rc};
use crate::Error;

/// An acquire that failed after it took resources.
enum Failed {
    /// Out of windows or protection regions.
    NoMw(String),
    /// Registering the USE_MR region failed.
    RegMr(Error),
    /// Binding a window failed.
    Bind(Error),
}

impl Directory {
    pub(super) fn acquire(&mut self, peer: usize, a: &AcquireReq, write: bool) -> AcquireResp {
        let fail = |s: St| AcquireResp {
            status: s as u8,
            slot: u32::MAX,
            ..Default::default()
        };
        if a.flag & !acquire::ALL != 0 || a.dir != self.id {
            return fail(St::Reserved);
        }
        let f = a.flag;
        let lay = self.sh.layout;
        let now = self.sh.clock.now();
        let term = Term::new(now, a.ns);
        // Admission: the whole range must lie in the server buffer.
        let in_range = lay.admits(BufOff(a.key), a.size);
        if f & acquire::DEBUG_SERVER_DO_NOTHING != 0 {
            return if in_range {
                AcquireResp {
                    status: 0,
                    base: lay.region(BufOff(a.key)).0,
                    begin_term: now,
                    ns_per_unit: term.unit,
                    slot: u32::MAX,
                    ..Default::default()
                }
            } else {
                fail(St::AddressOutOfRangeErr)
            };
        }
        let mut allocated = None;
        let mut key = BufOff(a.key);
        if f & (acquire::WITH_ALLOCATION | acquire::ONLY_ALLOCATION) != 0 {
            let bad_combo = f & acquire::WITH_ALLOCATION != 0
                && f & (acquire::ONLY_ALLOCATION
                    | acquire::WITH_CONFLICT_DETECT
                    | acquire::NO_BIND_ANY)
                    != 0;
            if bad_combo || a.size == 0 {
                return fail(St::Reserved);
            }
            let node = self.quotas.node_of(peer);
            if !self.ledger.admits(&self.quotas, node, a.size) {
                tracing::debug!(
                    dir = self.id,
                    node,
                    size = a.size,
                    "allocation quota reached"
                );
                return fail(St::NoMem);
            }
            let Some(al) = self.allocs.get_mut(&a.key) else {
                tracing::debug!(dir = self.id, hint = a.key, "no allocator for this hint");
                return fail(St::NoMem);
            };
            let Some(off) = al.alloc(a.size) else {
                return fail(St::NoMem);
            };
            self.ledger.record(node, a.key, BufOff(off), a.size);
            if f & acquire::ONLY_ALLOCATION != 0 {
                return AcquireResp {
                    status: 0,
                    base: lay.region(BufOff(off)).0,
                    begin_term: now,
                    slot: u32::MAX,
                    ..Default::default()
                };
            }
            allocated = Some((a.key, BufOff(off), a.size));
            key = BufOff(off);
        } else if !in_range {
            return fail(St::AddressOutOfRangeErr);
        }
        // Gives the allocation back when the acquire fails after it.
        let node = self.quotas.node_of(peer);
        let release = |d: &mut Directory| {
            if let Some((hint, off, size)) = allocated {
                d.free_alloc(node, hint, off, size);
            }
        };
        // Quotas: one client thread (or node) cannot take the windows and
        // protection regions every other client needs.
        let q = self.quotas;
        if self.table.held_by(peer) >= q.leases_per_thread
            || self.table.held_by_all(q.peers_of(node)) >= q.leases_per_node
        {
            tracing::debug!(dir = self.id, peer, node, "lease quota reached");
            release(self);
            return fail(St::NoMw);
        }
        let base = lay.region(key);
        let lock = if f & acquire::WITH_CONFLICT_DETECT != 0 {
            if !self.sh.locks.try_lock(key) {
                return fail(St::LockedErr);
            }
            Some(key)
        } else {
            None
        };
        let Some(slot) = self.table.take_slot() else {
            if let Some(k) = lock {
                self.sh.locks.unlock(k);
            }
            release(self);
            return fail(St::NoMw);
        };
        let no_bind = f & acquire::NO_BIND_ANY != 0;
        let with_pr = !no_bind && f & acquire::NO_BIND_PR == 0;
        let mut e = Entry {
            gen: self
                .sh
                .next_gen
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            peer,
            write,
            base,
            size: a.size,
            lock,
            no_gc: f & acquire::NO_GC != 0 || a.ns == 0,
            term,
            expect_units: 1,
            alloc: allocated,
            ..Default::default()
        };
        let mut resp = AcquireResp {
            status: 0,
            base: base.0,
            begin_term: now,
            ns_per_unit: term.unit,
            slot,
            ..Default::default()
        };
        // The pending acquire this lease's binds belong to (it is recorded
        // only when binds were queued).
        let owner = self.pass.acquires.len();
        let ops_before = self.pass.ops.len();
        let r = self.bind_lease(&mut e, &mut resp, slot, f, with_pr, no_bind, owner);
        let (gen, ddl) = (e.gen, (!e.no_gc).then(|| term.deadline(1)));
        let (mw_buf, mw_pr, peer_of) = (e.mw_buf, e.mw_pr, e.peer);
        self.table.install(slot, e);
        let magic = match r {
            Ok(magic) => magic,
            Err(err) => {
                // Binds it queued run, then are unbound by its revocation.
                for o in &mut self.pass.ops[ops_before..] {
                    o.owner = None;
                }
                self.revoke(slot, true);
                release(self);
                return fail(match err {
                    Failed::NoMw(why) => {
                        tracing::debug!(dir = self.id, "acquire failed: {why}");
                        St::NoMw
                    }
                    Failed::RegMr(err) => {
                        tracing::debug!(dir = self.id, "acquire failed: {err}");
                        St::RegMrErr
                    }
                    Failed::Bind(err) => {
                        tracing::debug!(dir = self.id, "acquire failed: {err}");
                        St::BindErr
                    }
                });
            }
        };
        resp.generation = gen;
        if self.pass.ops.len() > ops_before || magic {
            // Finished once the pass's chains completed (`finish_acquires`).
            self.pass.bind_requests += 1;
            self.pass.acquires.push(PendingAcquire {
                peer: peer_of,
                reply: self.pass.replies.len(),
                slot,
                gen,
                resp,
                ddl,
                mw_buf,
                mw_pr,
                magic,
            });
            return resp;
        }
        if let Some(at) = ddl {
            self.ddl.push(at, (slot, gen));
        }
        resp
    }

    /// Relinquished leases leave their GC tasks queued until their deadline;
    /// when they outnumber the live leases, drop them (O(n), amortised over
    /// at least 1024 grants), so the queue stays bounded by the live leases.
    pub(super) fn purge_stale_gc(&mut self) {
        if self.ddl.len() > 2 * self.table.live() + 1024 {
            let table = &self.table;
            self.ddl
                .retain(|&(slot, gen)| table.get(slot, gen).is_some());
        }
    }

    /// Takes the protection region and windows of a new lease and queues
    /// their binds (for pending acquire `owner`); what it took is recorded
    /// in `e` so that a failure revokes it. Returns true when a bind has the
    /// magic index (`Config::magic_mw_fault`).
    #[allow(clippy::too_many_arguments)]
    fn bind_lease(
        &mut self,
        e: &mut Entry,
        resp: &mut AcquireResp,
        slot: u32,
        f: u64,
        with_pr: bool,
        no_bind: bool,
        owner: usize,
    ) -> std::result::Result<bool, Failed> {
        let access = if e.write {
            Access::WRITE_WINDOW
        } else {
            Access::READ_WINDOW
        };
        if with_pr {
            let pr = self
                .table
                .take_pr()
                .ok_or_else(|| Failed::NoMw("no protection region left".into()))?;
            e.pr = Some(pr);
            let at = self.pr_off(pr);
            let w = self.prs().grant(at, e.term).map_err(Failed::Bind)?;
            resp.pr_off = at.0;
            resp.aba = w.aba;
        }
        if no_bind {
            return Ok(false);
        }
        let mut magic = false;
        if f & acquire::USE_MR != 0 {
            let mr = self
                .sh
                .nic
                .reg_sub_mr(&self.sh.region, e.base.0, e.size, access)
                .map_err(|err| Failed::RegMr(err.into()))?;
            resp.rkey = mr.rkey();
            self.mrs[slot as usize] = Some(mr);
        } else {
            let mw = self
                .mws
                .pop()
                .ok_or_else(|| Failed::NoMw("no window left".into()))?;
            e.mw_buf = Some(mw);
            magic |= self.bind(e.peer, mw, e.base, e.size, access, owner);
        }
        if let Some(pr) = e.pr {
            let mw = self
                .mws
                .pop()
                .ok_or_else(|| Failed::NoMw("no window left".into()))?;
            e.mw_pr = Some(mw);
            let at = self.pr_off(pr);
            magic |= self.bind(
                e.peer,
                mw,
                at,
                pr::SIZE,
                Access::REMOTE_READ | Access::REMOTE_ATOMIC,
                owner,
            );
        }
        Ok(magic)
    }

    /// Relinquish (and the dealloc path). Flags of the original that have
    /// no effect here: `FORCE_UNBIND` (a relinquish always ignores client
    /// extensions: the region is closed first), `WAIT_UNTIL_SUCCESS` (the
    /// reply always follows the revocation), `NO_RELINQUISH_UNBIND_PR` (the
    /// protection-region window is always unbound: a region still bound to
    /// its old holder would let that holder extend the region's next lease).
    pub(super) fn relinquish(&mut self, peer: usize, r: &ModifyReq) -> Rc {
        if r.flag & !modify::ALL != 0 {
            return Rc::Invalid;
        }
        if r.flag & modify::SERVER_DO_NOTHING != 0 {
            return Rc::Ok;
        }
        if r.flag & modify::ONLY_DEALLOCATION != 0 {
            // Only the client node that allocated a block may free it.
            let node = self.quotas.node_of(peer);
            let lay = self.sh.layout;
            let freed = lay
                .buf(crate::lease::RegionOff(r.addr))
                .is_some_and(|off| self.free_alloc(node, r.hint, off, r.size));
            return if freed { Rc::Ok } else { Rc::Invalid };
        }
        let pr = match self.table.owned(peer, r.slot, r.generation) {
            Ok(e) => e.pr,
            Err(crate::lease::table::Denied::NotOwner { .. }) => return Rc::Invalid,
            Err(_) => return Rc::Ok, // stale or expired: nothing to do
        };
        // Close the PR first so no extension can succeed any more.
        if let Some(pr) = pr {
            let _ = self.prs().close(self.pr_off(pr));
        }
        let unbind = r.flag & modify::NO_RELINQUISH_UNBIND_ANY == 0;
        if let Some(e) = self.revoke(r.slot, unbind) {
            if r.flag & modify::WITH_DEALLOCATION != 0 {
                if let Some((hint, off, size)) = e.alloc {
                    self.free_alloc(self.quotas.node_of(e.peer), hint, off, size);
                }
            }
        }
        Rc::Ok
    }

    /// Two-sided extension: the directory CASes the region's word itself.
    pub(super) fn rpc_extend(&mut self, peer: usize, r: &ModifyReq) -> (Rc, u64) {
        let Ok(e) = self.table.owned(peer, r.slot, r.generation) else {
            return (Rc::Invalid, 0);
        };
        let (Some(pr), term) = (e.pr, e.term) else {
            return (Rc::Invalid, 0);
        };
        if r.flag & modify::DEBUG_EXTEND_DO_NOTHING != 0 {
            return (Rc::Ok, 0);
        }
        let Some(more) = term.units_for(r.ns) else {
            return (Rc::Invalid, 0);
        };
        let at = self.pr_off(pr);
        loop {
            let Ok(w) = self.prs().word(at) else {
                return (Rc::Internal, 0);
            };
            let Ok(next) = w.extended(more) else {
                return (Rc::Invalid, 0);
            };
            match self.prs().cas(at, w, next) {
                Ok(found) if found == w => return (Rc::Ok, more as u64),
                Ok(_) => continue,
                Err(_) => return (Rc::Internal, 0),
            }
        }
    }
}
