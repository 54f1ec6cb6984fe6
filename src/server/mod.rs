//! Directories: the memory node's server threads. A directory serves
//! acquire / relinquish / extend / two-sided memory RPCs from every client
//! thread, binds and revokes memory windows on its data QP towards the
//! holder (so a window works only for that client thread), keeps lease
//! contexts with 64-bit generations, and runs the lease GC from a deadline
//! queue whose revoke decision is atomic with the protection region: the
//! directory CASes the region's word to CLOSED before it unbinds, so a racing
//! one-sided extension either lands first (and the GC re-arms) or fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fabric::msg::Messenger;
use crate::fabric::{Access, Mr, Qp, QpEndpoint, SendWr, Wc, WcStatus, WrOp};
use crate::lease::flags::{acquire, modify};
use crate::lease::msg::{
    self, AcquireReq, AcquireResp, AdminOp, AdminReq, AdminResp, Header, MemOp, MemReq, MemResp,
    ModifyReq, ModifyResp, Msg, MsgType,
};
use crate::lease::AcquireStatus as St;
use crate::lease::Rc;
use crate::node::{DirSlot, Shared, PR_SIZE, PR_WORD};
use crate::time::DdlQueue;

pub mod alloc;
use crate::{Error, Result};
pub use alloc::{Allocator, RefillableSlab, SlabAllocator};

/// Unit count that closes a protection region (no extension possible).
pub const CLOSED: u32 = u32::MAX;
/// Most units a lease may be extended to (caps client extensions).
pub const MAX_UNITS: u32 = 1 << 20;

/// Packs a protection-region word: low 32 bits aba, high 32 bits units.
pub fn pack(aba: u32, units: u32) -> u64 {
    aba as u64 | (units as u64) << 32
}
/// Unpacks a protection-region word into (aba, units).
pub fn unpack(w: u64) -> (u32, u32) {
    (w as u32, (w >> 32) as u32)
}

#[derive(Default)]
struct Ctx {
    gen: u64,
    valid: bool,
    peer: usize,
    write: bool,
    base: u64,
    size: u64,
    mw_buf: Option<u32>,
    mw_pr: Option<u32>,
    mr_buf: Option<Arc<Mr>>,
    pr: Option<u32>,
    lock: Option<u64>,
    no_gc: bool,
    begin: i64,
    unit: i64,
    expect_units: u32,
    /// (hint, buffer offset, size) of memory allocated with the lease.
    alloc: Option<(u64, u64, u64)>,
}

/// One server thread's directory.
pub struct Directory {
    sh: Arc<Shared>,
    id: u16,
    msgr: Messenger,
    data: Vec<Arc<dyn Qp>>,
    data_remote: Vec<QpEndpoint>,
    bind_cq: Arc<dyn crate::fabric::Cq>,
    mws: Vec<u32>,
    ctxs: Vec<Ctx>,
    free_ctx: Vec<u32>,
    free_pr: Vec<u32>,
    ddl: DdlQueue<(u32, u64)>,
    allocs: std::collections::HashMap<u64, Box<dyn Allocator>>,
    out: Vec<u8>,
    /// Binds posted per connection (the magic-MW fault's index; counted only
    /// with `Config::magic_mw_fault`).
    binds: Vec<u64>,
    /// A bind of the current acquire hit the magic index.
    magic_hit: bool,
}

impl Directory {
    pub(crate) fn new(sh: Arc<Shared>, id: u16, slot: DirSlot) -> Result<Directory> {
        let n = sh.cfg.leases_per_dir;
        let mut mws = Vec::with_capacity(2 * n as usize);
        for _ in 0..2 * n {
            mws.push(sh.nic.alloc_mw(sh.pd)?.handle);
        }
        let slot_peers = slot.data.len();
        let lay = sh.layout;
        let slice = lay.alloc / sh.cfg.dir_nr as u64;
        let mut allocs: std::collections::HashMap<u64, Box<dyn Allocator>> = Default::default();
        allocs.insert(
            0,
            Box::new(SlabAllocator::new(
                lay.lease + id as u64 * slice,
                slice,
                &sh.cfg.alloc_classes,
            )),
        );
        Ok(Directory {
            allocs,
            id,
            msgr: slot.msgr,
            data: slot.data,
            data_remote: slot.data_remote,
            bind_cq: slot.bind_cq,
            mws,
            ctxs: (0..n).map(|_| Ctx::default()).collect(),
            free_ctx: (0..n).rev().collect(),
            free_pr: (0..n).rev().collect(),
            ddl: DdlQueue::default(),
            out: Vec::with_capacity(msg::MAX_MSG),
            binds: vec![0; slot_peers],
            magic_hit: false,
            sh,
        })
    }

    /// Directory id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Registers the allocator that serves allocation requests with `hint`
    /// on this directory (hint 0 is the default slab over this directory's
    /// slice of the alloc buffer; registering 0 replaces it). Offsets are
    /// server-buffer offsets; allocations must lie inside the buffer.
    pub fn reg_allocator(&mut self, hint: u64, a: Box<dyn Allocator>) {
        self.allocs.insert(hint, a);
    }

    /// Serves until every node called `finished(key)` and no lease is left to
    /// collect. A node with no client thread registered (a pure memory
    /// node) counts as finished for `key` by serving, so it serves until every
    /// client node finished; the first such check comes 20 ms after serving
    /// starts. A node that is also a client (client threads registered, e.g.
    /// a one-node cluster) must call `finished(key)` itself when its clients
    /// are done, as in the original; register its client threads before
    /// serving starts.
    pub fn server_serve(&mut self, key: u64) -> Result<()> {
        // Idle policy bounded in time: yield, then short sleeps.
        let mut idle_since: Option<Instant> = None;
        let mut last_check = Instant::now();
        loop {
            let did = self.serve_once()?;
            if did > 0 {
                idle_since = None;
                continue;
            }
            let idle = idle_since.get_or_insert_with(Instant::now).elapsed();
            if last_check.elapsed() > Duration::from_millis(20) {
                last_check = Instant::now();
                if !crate::node::has_client_threads(&self.sh) {
                    crate::node::finished(&self.sh, key)?;
                }
                if crate::node::should_exit(&self.sh, key) && self.ddl.is_empty() {
                    return Ok(());
                }
            }
            // Never a pure spin: RPCs arrive through the NIC thread and are
            // answered through another NIC thread, which need the core more
            // than an idle directory does (2 cores here).
            // Longer idleness sleeps longer (an idle directory used 30 % of
            // a core with 50 us naps): the first RPC after 50 ms of silence
            // waits at most 1 ms, GC tasks run at most 1 ms late.
            if idle > Duration::from_millis(50) {
                std::thread::sleep(Duration::from_millis(1));
            } else if idle > Duration::from_millis(5) {
                std::thread::sleep(Duration::from_micros(200));
            } else if idle > Duration::from_micros(500) {
                std::thread::sleep(Duration::from_micros(50));
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Handles what is pending now; returns the work done.
    pub fn serve_once(&mut self) -> Result<usize> {
        let mut n = self.run_gc(self.sh.now())?;
        while let Some(inc) = self.msgr.try_recv()? {
            n += 1;
            let (h, m) = match msg::decode(&inc.data) {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(dir = self.id, peer = inc.peer, "{e}");
                    continue;
                }
            };
            // The sender must be who the QP belongs to.
            if self.sh.dir_index(h.node, h.thread) != inc.peer {
                tracing::debug!(dir = self.id, "message claims another sender");
                continue;
            }
            let reply = self.handle(inc.peer, &h, m);
            if let Some((ty, r)) = reply {
                let rh = Header {
                    ty,
                    rpc_id: h.rpc_id,
                    node: self.sh.node_id,
                    thread: self.id,
                };
                msg::encode(&rh, &r, &mut self.out);
                let out = std::mem::take(&mut self.out);
                let res = self.msgr.send(inc.peer, &out);
                self.out = out;
                if let Err(e) = res {
                    tracing::debug!(dir = self.id, "reply lost: {e}");
                }
            }
        }
        Ok(n)
    }

    fn handle(&mut self, peer: usize, h: &Header, m: Msg) -> Option<(MsgType, Msg)> {
        match m {
            Msg::Acquire(a) => Some((
                MsgType::AcquireResp,
                Msg::AcquireResp(self.acquire(peer, &a, h.ty == MsgType::AcquireW)),
            )),
            Msg::Relinquish(r) => Some((
                MsgType::RelinquishResp,
                Msg::RelinquishResp(ModifyResp {
                    rc: self.relinquish(peer, &r) as u8,
                    units: 0,
                }),
            )),
            Msg::Extend(r) => {
                let (rc, units) = self.rpc_extend(peer, &r);
                Some((
                    MsgType::ExtendResp,
                    Msg::ExtendResp(ModifyResp {
                        rc: rc as u8,
                        units,
                    }),
                ))
            }
            Msg::Memory(r) => Some((MsgType::MemoryResp, Msg::MemoryResp(self.memory(peer, &r)))),
            Msg::Admin(a) => Some((MsgType::AdminResp, Msg::AdminResp(self.admin(peer, &a)))),
            _ => None,
        }
    }

    fn bind(&mut self, peer: usize, mw: u32, off: u64, len: u64, access: Access) -> Result<u32> {
        let wr = SendWr {
            wr_id: mw as u64,
            op: WrOp::Bind {
                mw,
                lkey: self.sh.region.lkey(),
                offset: off,
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
        if qp.state() != crate::fabric::QpState::Rts {
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
                        Err(Error::Invalid(format!("window operation failed: {w:?}")))
                    };
                }
            }
            if t0.elapsed() > Duration::from_secs(1) {
                return Err(Error::Timeout("window operation did not complete".into()));
            }
        }
    }

    fn pr_off(&self, pr: u32) -> u64 {
        self.sh.layout.pr(self.id, pr as u64)
    }

    fn acquire(&mut self, peer: usize, a: &AcquireReq, write: bool) -> AcquireResp {
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
        let now = self.sh.now();
        // Admission: the whole range must lie in the server buffer.
        let in_range = a.size > 0
            && a.key
                .checked_add(a.size)
                .map(|e| e <= lay.buffer())
                .unwrap_or(false);
        if f & acquire::DEBUG_SERVER_DO_NOTHING != 0 {
            return if in_range {
                AcquireResp {
                    status: 0,
                    base: lay.internal + a.key,
                    begin_term: now,
                    ns_per_unit: a.ns as i64,
                    slot: u32::MAX,
                    ..Default::default()
                }
            } else {
                fail(St::AddressOutOfRangeErr)
            };
        }
        let mut allocated = None;
        let mut key = a.key;
        if f & (acquire::WITH_ALLOCATION | acquire::ONLY_ALLOCATION) != 0 {
            let bad_combo = f & acquire::WITH_ALLOCATION != 0
                && f & (acquire::ONLY_ALLOCATION
                    | acquire::WITH_CONFLICT_DETECT
                    | acquire::NO_BIND_ANY)
                    != 0;
            if bad_combo || a.size == 0 {
                return fail(St::Reserved);
            }
            let Some(al) = self.allocs.get_mut(&a.key) else {
                tracing::debug!(dir = self.id, hint = a.key, "no allocator for this hint");
                return fail(St::NoMem);
            };
            let Some(off) = al.alloc(a.size) else {
                return fail(St::NoMem);
            };
            if f & acquire::ONLY_ALLOCATION != 0 {
                return AcquireResp {
                    status: 0,
                    base: lay.internal + off,
                    begin_term: now,
                    slot: u32::MAX,
                    ..Default::default()
                };
            }
            allocated = Some((a.key, off, a.size));
            key = off;
        } else if !in_range {
            return fail(St::AddressOutOfRangeErr);
        }
        // Gives the allocation back when the acquire fails after it.
        let release = |d: &mut Directory| {
            if let Some((hint, off, size)) = allocated {
                if let Some(al) = d.allocs.get_mut(&hint) {
                    al.free(off, size);
                }
            }
        };
        let base = lay.internal + key;
        let lock = if f & acquire::WITH_CONFLICT_DETECT != 0 {
            let mut l = self.sh.locks.lock().unwrap_or_else(|e| e.into_inner());
            if !l.insert(key) {
                return fail(St::LockedErr);
            }
            Some(key)
        } else {
            None
        };
        let unlock = |sh: &Shared| {
            if let Some(k) = lock {
                sh.locks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&k);
            }
        };
        let Some(slot) = self.free_ctx.pop() else {
            unlock(&self.sh);
            release(self);
            return fail(St::NoMw);
        };
        let no_bind = f & acquire::NO_BIND_ANY != 0;
        let with_pr = !no_bind && f & acquire::NO_BIND_PR == 0;
        let mut c = Ctx {
            gen: self
                .sh
                .next_gen
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            valid: true,
            peer,
            write,
            base,
            size: a.size,
            lock,
            no_gc: f & acquire::NO_GC != 0 || a.ns == 0,
            begin: now,
            unit: a.ns as i64,
            expect_units: 1,
            alloc: allocated,
            ..Default::default()
        };
        let mut resp = AcquireResp {
            status: 0,
            base,
            begin_term: now,
            ns_per_unit: a.ns as i64,
            slot,
            ..Default::default()
        };
        let access = if write {
            Access::WRITE_WINDOW
        } else {
            Access::READ_WINDOW
        };
        let r: Result<()> = (|| {
            if with_pr {
                let pr = self
                    .free_pr
                    .pop()
                    .ok_or_else(|| Error::NoMem("no PR".into()))?;
                c.pr = Some(pr);
                let off = self.pr_off(pr);
                let (aba, _) = unpack(self.sh.region.load_u64(off + PR_WORD)?);
                self.sh.region.write(off + 8, &now.to_le_bytes())?;
                self.sh
                    .region
                    .write(off + 16, &(a.ns as i64).to_le_bytes())?;
                self.sh.region.store_u64(off + PR_WORD, pack(aba, 1))?;
                self.sh.region.write(off, &[1])?;
                resp.pr_off = off;
                resp.aba = aba;
            }
            if no_bind {
                return Ok(());
            }
            if f & acquire::USE_MR != 0 {
                let mr = self
                    .sh
                    .nic
                    .reg_sub_mr(&self.sh.region, base, a.size, access)?;
                resp.rkey = mr.rkey();
                c.mr_buf = Some(mr);
            } else {
                let mw = self.mws.pop().ok_or_else(|| Error::NoMem("no MW".into()))?;
                c.mw_buf = Some(mw);
                resp.rkey = self.bind(peer, mw, base, a.size, access)?;
            }
            if let Some(pr) = c.pr {
                let mw = self.mws.pop().ok_or_else(|| Error::NoMem("no MW".into()))?;
                c.mw_pr = Some(mw);
                let off = self.pr_off(pr);
                resp.pr_rkey = self.bind(
                    peer,
                    mw,
                    off,
                    PR_SIZE,
                    Access::REMOTE_READ | Access::REMOTE_ATOMIC,
                )?;
            }
            Ok(())
        })();
        let magic = std::mem::take(&mut self.magic_hit);
        if r.is_err() || magic {
            self.ctxs[slot as usize] = c;
            self.revoke(slot, true);
            release(self);
            return fail(match r {
                Ok(()) => St::MagicMwErr,
                Err(Error::NoMem(e)) => {
                    tracing::debug!(dir = self.id, "acquire failed: {e}");
                    St::NoMw
                }
                Err(e) => {
                    tracing::debug!(dir = self.id, "acquire failed: {e}");
                    St::BindErr
                }
            });
        }
        resp.generation = c.gen;
        if !c.no_gc {
            self.ddl.push(now + c.unit, (slot, c.gen));
        }
        self.ctxs[slot as usize] = c;
        resp
    }

    /// Revokes everything a context holds and frees it.
    fn revoke(&mut self, slot: u32, unbind: bool) {
        let c = std::mem::take(&mut self.ctxs[slot as usize]);
        for mw in [c.mw_buf, c.mw_pr].into_iter().flatten() {
            if unbind {
                if let Err(e) = self.unbind(c.peer, mw) {
                    tracing::warn!(dir = self.id, "unbind failed: {e}");
                }
            }
            self.mws.push(mw);
        }
        if let Some(mr) = c.mr_buf {
            let _ = self.sh.nic.dereg_mr(&mr);
        }
        if let Some(k) = c.lock {
            self.sh
                .locks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&k);
        }
        if let Some(pr) = c.pr {
            let off = self.pr_off(pr);
            if let Ok(w) = self.sh.region.load_u64(off + PR_WORD) {
                let (aba, _) = unpack(w);
                let _ = self
                    .sh
                    .region
                    .store_u64(off + PR_WORD, pack(aba.wrapping_add(1), 0));
            }
            let _ = self.sh.region.write(off, &[0]);
            self.free_pr.push(pr);
        }
        self.free_ctx.push(slot);
    }

    fn owned(&self, peer: usize, slot: u32, gen: u64) -> Option<&Ctx> {
        self.ctxs
            .get(slot as usize)
            .filter(|c| c.valid && c.gen == gen && c.peer == peer)
    }

    fn relinquish(&mut self, peer: usize, r: &ModifyReq) -> Rc {
        if r.flag & !modify::ALL != 0 {
            return Rc::Invalid;
        }
        if r.flag & modify::SERVER_DO_NOTHING != 0 {
            return Rc::Ok;
        }
        if r.flag & modify::ONLY_DEALLOCATION != 0 {
            let off = r.addr.wrapping_sub(self.sh.layout.internal);
            let freed = r.addr >= self.sh.layout.internal
                && self
                    .allocs
                    .get_mut(&r.hint)
                    .is_some_and(|al| al.free(off, r.size));
            return if freed { Rc::Ok } else { Rc::Invalid };
        }
        match self.ctxs.get(r.slot as usize) {
            Some(c) if c.valid && c.gen == r.generation => {
                if c.peer != peer {
                    return Rc::Invalid; // someone else's lease
                }
            }
            _ => return Rc::Ok, // stale or expired: nothing to do
        }
        // Close the PR first so no extension can succeed any more.
        if let Some(pr) = self.ctxs[r.slot as usize].pr {
            let off = self.pr_off(pr) + PR_WORD;
            if let Ok(w) = self.sh.region.load_u64(off) {
                let _ = self.sh.region.store_u64(off, pack(unpack(w).0, CLOSED));
            }
        }
        let unbind = r.flag & modify::NO_RELINQUISH_UNBIND_ANY == 0;
        let alloc = self.ctxs[r.slot as usize].alloc;
        self.revoke(r.slot, unbind);
        if r.flag & modify::WITH_DEALLOCATION != 0 {
            if let Some((hint, off, size)) = alloc {
                if let Some(al) = self.allocs.get_mut(&hint) {
                    al.free(off, size);
                }
            }
        }
        Rc::Ok
    }

    fn rpc_extend(&mut self, peer: usize, r: &ModifyReq) -> (Rc, u64) {
        let Some(c) = self.owned(peer, r.slot, r.generation) else {
            return (Rc::Invalid, 0);
        };
        let (Some(pr), unit) = (c.pr, c.unit) else {
            return (Rc::Invalid, 0);
        };
        if r.flag & modify::DEBUG_EXTEND_DO_NOTHING != 0 {
            return (Rc::Ok, 0);
        }
        if unit <= 0 {
            return (Rc::Invalid, 0);
        }
        let units = r.ns.div_ceil(unit as u64).min(MAX_UNITS as u64) as u32;
        let off = self.pr_off(pr) + PR_WORD;
        loop {
            let Ok(w) = self.sh.region.load_u64(off) else {
                return (Rc::Internal, 0);
            };
            let (aba, cur) = unpack(w);
            if cur == CLOSED || cur.saturating_add(units) > MAX_UNITS {
                return (Rc::Invalid, 0);
            }
            if self.sh.region.cas_u64(off, w, pack(aba, cur + units)).ok() == Some(w) {
                return (Rc::Ok, units as u64);
            }
        }
    }

    fn memory(&mut self, peer: usize, r: &MemReq) -> MemResp {
        let bad = |rc: Rc| MemResp {
            rc: rc as u8,
            ..Default::default()
        };
        let now = self.sh.now();
        let Some(c) = self.owned(peer, r.slot, r.generation) else {
            return bad(Rc::Invalid);
        };
        if !c.no_gc && self.deadline(c) <= now {
            return bad(Rc::LeaseLocalExpiredErr);
        }
        let len = r.size as u64;
        let inside = r
            .offset
            .checked_add(len)
            .map(|e| e <= c.size)
            .unwrap_or(false);
        if !inside || (r.op != MemOp::Read && !c.write) {
            return bad(Rc::RdmaProtectionErr);
        }
        let at = c.base + r.offset;
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

    fn admin(&mut self, peer: usize, a: &AdminReq) -> AdminResp {
        let ok = |value: i64| AdminResp { rc: 0, value };
        let qp = &self.data[peer];
        let res = match a.op {
            AdminOp::Stats => return ok(self.live_leases() as i64),
            AdminOp::Time => return ok(self.sh.now()),
            AdminOp::Finished => return ok(0),
            AdminOp::QpToRo => qp.modify_access(Access::REMOTE_READ),
            AdminOp::QpToRw => qp.modify_access(Access::WRITE_WINDOW),
            AdminOp::QpReset => {
                let remote = self.data_remote[peer].clone();
                qp.reset().and_then(|_| qp.connect(&remote))
            }
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

    /// Leases currently granted by this directory.
    pub fn live_leases(&self) -> usize {
        self.ctxs.len() - self.free_ctx.len()
    }

    fn deadline(&self, c: &Ctx) -> i64 {
        let units = match c.pr {
            Some(pr) => self
                .sh
                .region
                .load_u64(self.pr_off(pr) + PR_WORD)
                .map(|w| unpack(w).1)
                .unwrap_or(1),
            None => 1,
        };
        if units == CLOSED {
            return i64::MIN;
        }
        c.begin.saturating_add(c.unit.saturating_mul(units as i64))
    }

    /// Runs due GC tasks. A task whose lease was extended re-arms; otherwise
    /// the PR is closed by CAS (atomic with client extensions) and the lease
    /// revoked.
    fn run_gc(&mut self, now: i64) -> Result<usize> {
        let mut n = 0;
        while n < 64 {
            let Some((_, (slot, gen))) = self.ddl.pop_due(now) else {
                break;
            };
            n += 1;
            let Some(c) = self
                .ctxs
                .get(slot as usize)
                .filter(|c| c.valid && c.gen == gen)
            else {
                continue; // stale task: the lease is gone or the slot reused
            };
            if let Some(pr) = c.pr {
                let off = self.pr_off(pr) + PR_WORD;
                let w = self.sh.region.load_u64(off)?;
                let (aba, units) = unpack(w);
                if units != c.expect_units && units != CLOSED {
                    let (begin, unit) = (c.begin, c.unit);
                    self.ctxs[slot as usize].expect_units = units;
                    self.ddl.push(
                        begin.saturating_add(unit.saturating_mul(units as i64)),
                        (slot, gen),
                    );
                    continue;
                }
                if units != CLOSED && self.sh.region.cas_u64(off, w, pack(aba, CLOSED))? != w {
                    // An extension landed between the load and the CAS.
                    self.ddl.push(now, (slot, gen));
                    continue;
                }
            }
            self.revoke(slot, true);
        }
        Ok(n)
    }
}
