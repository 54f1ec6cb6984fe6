//! Client threads: leases (acquire, relinquish, one-sided and two-sided
//! extension), the one-sided data path with local expiry checks, two-sided
//! memory RPCs checked against the lease, and recovery of the data QP after a
//! protection fault (same QP, same thread, in microseconds).

use std::sync::Arc;
use std::time::Instant;

use crate::fabric::msg::Messenger;
use crate::fabric::{Access, Cq, Mr, Qp, QpEndpoint, SendWr, Sge, Wc, WcStatus, WrOp};
use crate::lease::flags::{acquire, modify, rw};
use crate::lease::msg::{
    self, AcquireReq, AdminOp, AdminReq, Header, MemOp, MemReq, ModifyReq, Msg, MsgType,
};
use crate::lease::AcquireStatus as St;
use crate::lease::Rc;
use crate::node::{ClientSlot, Shared, PR_WORD};
use crate::server::{pack, unpack, CLOSED};
use crate::{Error, Result};

/// An acquire with these flags creates a lease (ONLY_ALLOCATION does not).
fn holds_lease(flag: u64) -> bool {
    flag & acquire::ONLY_ALLOCATION == 0
}

/// How long a data-path wait polls without giving the core away.
const SPIN_FOR: std::time::Duration = std::time::Duration::from_micros(20);

/// Bytes of a client thread's registered data buffer.
pub const DATA_BUF: usize = 1 << 20;

/// A lease held by a client thread.
#[derive(Clone, Debug)]
pub struct Lease {
    /// Granted?
    pub status: u8,
    /// Memory node.
    pub node: u16,
    /// Directory.
    pub dir: u16,
    /// dsm offset of the object on the memory node.
    pub base: u64,
    /// Object bytes.
    pub size: u64,
    /// rkey of the object's window (or MR).
    pub rkey: u32,
    /// rkey of the protection-region window (0: none).
    pub pr_rkey: u32,
    /// dsm offset of the protection region.
    pub pr_off: u64,
    /// Server time at grant.
    pub begin: i64,
    /// Lease unit (ns).
    pub unit: i64,
    /// PR aba at grant.
    pub aba: u32,
    /// Units granted so far.
    pub units: u32,
    /// Deadline (i64::MAX: never).
    pub ddl: i64,
    /// Server slot and generation.
    pub slot: u32,
    /// Generation.
    pub generation: u64,
    /// Write lease?
    pub write: bool,
    /// Auto-extend step.
    pub auto_step: u32,
    /// Still held (false after relinquish).
    pub live: bool,
    /// `WITH_CACHE` entries (offset, bytes), most recently used first.
    pub cache: Vec<(u64, Vec<u8>)>,
}

/// Entries of a lease's cache.
pub const CACHE_ENTRIES: usize = 3;

impl Lease {
    fn cache_lookup(&mut self, offset: u64, dst: &mut [u8]) -> bool {
        let end = offset + dst.len() as u64;
        let Some(i) = self
            .cache
            .iter()
            .position(|(o, b)| *o <= offset && end <= o + b.len() as u64)
        else {
            return false;
        };
        let e = self.cache.remove(i);
        let at = (offset - e.0) as usize;
        dst.copy_from_slice(&e.1[at..at + dst.len()]);
        self.cache.insert(0, e);
        true
    }

    /// Write-through: every entry overlapping the written range takes the
    /// new bytes (the original left covering entries stale), then the range
    /// itself becomes the most recent entry.
    fn cache_write(&mut self, offset: u64, src: &[u8]) {
        let end = offset + src.len() as u64;
        for (o, b) in self.cache.iter_mut() {
            let (lo, hi) = (offset.max(*o), end.min(*o + b.len() as u64));
            if lo < hi {
                b[(lo - *o) as usize..(hi - *o) as usize]
                    .copy_from_slice(&src[(lo - offset) as usize..(hi - offset) as usize]);
            }
        }
        self.cache_insert(offset, src);
    }

    fn cache_insert(&mut self, offset: u64, src: &[u8]) {
        let end = offset + src.len() as u64;
        if let Some(i) = self
            .cache
            .iter()
            .position(|(o, b)| *o <= offset && end <= o + b.len() as u64)
        {
            let e = self.cache.remove(i);
            self.cache.insert(0, e);
            return;
        }
        if self.cache.len() >= CACHE_ENTRIES {
            self.cache.pop();
        }
        self.cache.insert(0, (offset, src.to_vec()));
    }

    /// Drops entries overlapping `[offset, offset+len)` (after atomics,
    /// whose result the cache does not know in advance).
    fn cache_invalidate(&mut self, offset: u64, len: u64) {
        let end = offset + len;
        self.cache
            .retain(|(o, b)| end <= *o || *o + b.len() as u64 <= offset);
    }
}

impl Lease {
    /// Granted and not relinquished.
    pub fn success(&self) -> bool {
        self.status == St::Success as u8 && self.live
    }
    /// Why it was not granted.
    pub fn ec(&self) -> u8 {
        self.status
    }
    pub(crate) fn failed(status: u8, node: u16, dir: u16) -> Lease {
        Lease {
            status,
            node,
            dir,
            base: 0,
            size: 0,
            rkey: 0,
            pr_rkey: 0,
            pr_off: 0,
            begin: 0,
            unit: 0,
            aba: 0,
            units: 0,
            ddl: 0,
            slot: u32::MAX,
            generation: 0,
            write: false,
            auto_step: 1,
            live: false,
            cache: Vec::new(),
        }
    }
}

/// A registered client thread.
pub struct ClientThread {
    sh: Arc<Shared>,
    slot: u16,
    msgr: Messenger,
    data: Vec<Arc<dyn Qp>>,
    data_remote: Vec<QpEndpoint>,
    data_cq: Arc<dyn Cq>,
    buf: Arc<Mr>,
    rpc_id: u64,
    out: Vec<u8>,
    magic_retries: u64,
}

impl Drop for ClientThread {
    /// Hands the slot (QPs, buffer) back to the node for the next
    /// `register_client_thread`.
    fn drop(&mut self) {
        // Drain completions of this thread so the next one starts clean.
        let mut wc = [Wc::default(); 16];
        while self.data_cq.poll(&mut wc) > 0 {}
        let slot = ClientSlot {
            msgr: self.msgr.take(),
            data: std::mem::take(&mut self.data),
            data_remote: std::mem::take(&mut self.data_remote),
            data_cq: self.data_cq.clone(),
            buf: Some(self.buf.clone()),
            rpc_id: self.rpc_id,
        };
        let mut l = self.sh.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = l.get_mut(self.slot as usize) {
            *s = Some(slot);
        }
    }
}

impl ClientThread {
    pub(crate) fn new(sh: Arc<Shared>, slot: u16, s: ClientSlot) -> Result<ClientThread> {
        let buf = match s.buf.clone() {
            Some(b) => b,
            None => match sh.nic.alloc_mr(sh.pd, DATA_BUF, Access::LOCAL_WRITE) {
                Ok(b) => b,
                Err(e) => {
                    // Give the slot back before failing.
                    sh.clients.lock().unwrap_or_else(|e| e.into_inner())[slot as usize] = Some(s);
                    return Err(e.into());
                }
            },
        };
        Ok(ClientThread {
            slot,
            msgr: s.msgr,
            data: s.data,
            data_remote: s.data_remote,
            data_cq: s.data_cq,
            buf,
            rpc_id: s.rpc_id,
            out: Vec::with_capacity(msg::MAX_MSG),
            magic_retries: 0,
            sh,
        })
    }

    /// Acquires this thread retried after an (injected) magic-MW fault
    /// (`Config::magic_mw_fault`).
    pub fn magic_retries(&self) -> u64 {
        self.magic_retries
    }

    /// This thread's slot id.
    pub fn get_thread_id(&self) -> u16 {
        self.slot
    }

    fn rpc(&mut self, node: u16, dir: u16, ty: MsgType, m: Msg) -> Result<Msg> {
        if node >= self.sh.cfg.machine_nr || dir >= self.sh.cfg.dir_nr {
            return Err(Error::Invalid(format!(
                "node {node} dir {dir} outside the cluster ({} nodes x {} dirs)",
                self.sh.cfg.machine_nr, self.sh.cfg.dir_nr
            )));
        }
        self.rpc_id += 1;
        let id = self.rpc_id;
        let h = Header {
            ty,
            rpc_id: id,
            node: self.sh.node_id,
            thread: self.slot,
        };
        msg::encode(&h, &m, &mut self.out);
        let peer = self.sh.client_index(node, dir);
        let out = std::mem::take(&mut self.out);
        let r = self.msgr.send(peer, &out);
        self.out = out;
        r?;
        let timeout = self.sh.cfg.rpc_timeout;
        let inc = self
            .msgr
            .recv_match(timeout, |i| {
                i.peer == peer
                    && i.data.len() >= 16
                    && u64::from_le_bytes(i.data[8..16].try_into().expect("8")) == id
            })?
            .ok_or_else(|| {
                Error::Timeout(format!(
                    "no reply from node {node} dir {dir} within {timeout:?}"
                ))
            })?;
        let (_, m) = msg::decode(&inc.data).map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(m)
    }

    /// An administrative RPC to directory `dir` of node `node`; returns the
    /// reply value (e.g. live leases for [`AdminOp::Stats`]).
    pub fn admin(&mut self, node: u16, dir: u16, op: AdminOp, arg: u64) -> Result<i64> {
        match self.rpc(
            node,
            dir,
            MsgType::Admin,
            Msg::Admin(AdminReq { op, arg, dir }),
        )? {
            Msg::AdminResp(r) if r.rc == 0 => Ok(r.value),
            Msg::AdminResp(r) => Err(Error::Invalid(format!(
                "admin {op:?} on node {node} dir {dir} refused ({:?})",
                Rc::from_u8(r.rc)
            ))),
            m => Err(Error::Invalid(format!(
                "admin {op:?}: unexpected reply {m:?}"
            ))),
        }
    }

    /// Acquires a read (`write = false`) or write lease on `[offset,
    /// offset+size)` of node `node`'s buffer, for `ns` nanoseconds.
    #[allow(clippy::too_many_arguments)]
    pub fn get_lease(
        &mut self,
        write: bool,
        node: u16,
        dir: u16,
        offset: u64,
        size: u64,
        ns: u64,
        flag: u64,
    ) -> Result<Lease> {
        if flag & !((1 << 9) - 1) != 0 {
            return Err(Error::Invalid(format!(
                "unknown acquire flag bits {flag:#x}"
            )));
        }
        if flag & acquire::NO_RPC != 0 {
            let mut l = Lease::failed(0, node, dir);
            l.base = self.sh.layout.internal + offset;
            l.size = size;
            l.ddl = i64::MAX;
            l.write = write;
            l.live = true;
            return Ok(l);
        }
        let ty = if write {
            MsgType::AcquireW
        } else {
            MsgType::AcquireR
        };
        // A magic-MW fault (injected, PATRONUS.md §4.10) is retried
        // transparently, as the original does; it cannot recur within 1 024
        // binds on one connection, so a few attempts always suffice.
        let mut attempts = 0;
        let a = loop {
            let m = self.rpc(
                node,
                dir,
                ty,
                Msg::Acquire(AcquireReq {
                    key: offset,
                    size,
                    ns,
                    flag,
                    dir,
                }),
            )?;
            let Msg::AcquireResp(a) = m else {
                return Err(Error::Invalid(
                    "acquire answered with another message".into(),
                ));
            };
            attempts += 1;
            if a.status != St::MagicMwErr as u8 || attempts >= 8 {
                break a;
            }
            self.magic_retries += 1;
        };
        if a.status != 0 {
            return Ok(Lease::failed(a.status, node, dir));
        }
        let no_gc = flag & acquire::NO_GC != 0 || ns == 0;
        Ok(Lease {
            status: 0,
            node,
            dir,
            base: a.base,
            size,
            rkey: a.rkey,
            pr_rkey: a.pr_rkey,
            pr_off: a.pr_off,
            begin: a.begin_term,
            unit: a.ns_per_unit,
            aba: a.aba,
            units: 1,
            ddl: if no_gc {
                i64::MAX
            } else {
                a.begin_term.saturating_add(a.ns_per_unit)
            },
            slot: a.slot,
            generation: a.generation,
            write,
            auto_step: 1,
            live: holds_lease(flag),
            cache: Vec::new(),
        })
    }

    /// `get_rlease` of API.md: `offset` is the object's buffer offset
    /// (without allocation flags) and `alloc_hint` must be 0; with
    /// `WITH_ALLOCATION` the object is allocated by allocator `alloc_hint`
    /// and `offset` must be 0.
    #[allow(clippy::too_many_arguments)]
    pub fn get_rlease(
        &mut self,
        node: u16,
        dir: u16,
        offset: u64,
        alloc_hint: u64,
        size: u64,
        ns: u64,
        flag: u64,
    ) -> Result<Lease> {
        let key = Self::acquire_key(offset, alloc_hint, flag)?;
        self.get_lease(false, node, dir, key, size, ns, flag)
    }

    /// `get_wlease` of API.md (see [`ClientThread::get_rlease`]).
    #[allow(clippy::too_many_arguments)]
    pub fn get_wlease(
        &mut self,
        node: u16,
        dir: u16,
        offset: u64,
        alloc_hint: u64,
        size: u64,
        ns: u64,
        flag: u64,
    ) -> Result<Lease> {
        let key = Self::acquire_key(offset, alloc_hint, flag)?;
        self.get_lease(true, node, dir, key, size, ns, flag)
    }

    fn acquire_key(offset: u64, alloc_hint: u64, flag: u64) -> Result<u64> {
        if flag & (acquire::WITH_ALLOCATION | acquire::ONLY_ALLOCATION) != 0 {
            if offset != 0 {
                return Err(Error::Invalid(format!(
                    "bind_gaddr offset {offset:#x} with an allocation flag: the server chooses the address (pass a null gaddr)"
                )));
            }
            Ok(alloc_hint)
        } else {
            if alloc_hint != 0 {
                return Err(Error::Invalid(format!(
                    "alloc_hint {alloc_hint} without WITH_ALLOCATION/ONLY_ALLOCATION"
                )));
            }
            Ok(offset)
        }
    }

    /// The leased object's buffer offset on its node (its GlobalAddress
    /// offset).
    pub fn get_gaddr(&self, lease: &Lease) -> (u16, u64) {
        (
            lease.node,
            lease.base.saturating_sub(self.sh.layout.internal),
        )
    }

    /// Allocates `size` bytes on directory `dir` of node `node` with the
    /// allocator registered for `hint` (0: the default slab); returns the
    /// buffer offset, or None when the allocator has nothing.
    pub fn alloc(&mut self, node: u16, dir: u16, size: u64, hint: u64) -> Result<Option<u64>> {
        let l = self.get_lease(
            true,
            node,
            dir,
            hint,
            size,
            0,
            acquire::NO_GC | acquire::ONLY_ALLOCATION | acquire::NO_BIND_PR,
        )?;
        Ok((l.status == 0).then(|| l.base.saturating_sub(self.sh.layout.internal)))
    }

    /// Frees a block from [`ClientThread::alloc`]; the memory node checks
    /// that it is a live block of that allocator (`Rc::Invalid` if not).
    pub fn dealloc(
        &mut self,
        node: u16,
        dir: u16,
        offset: u64,
        size: u64,
        hint: u64,
    ) -> Result<Rc> {
        let m = self.rpc(
            node,
            dir,
            MsgType::Relinquish,
            Msg::Relinquish(ModifyReq {
                slot: u32::MAX,
                generation: 0,
                ns: 0,
                hint,
                flag: modify::NO_RELINQUISH_UNBIND_ANY | modify::ONLY_DEALLOCATION,
                addr: self.sh.layout.internal.saturating_add(offset),
                size,
                dir,
            }),
        )?;
        Ok(match m {
            Msg::RelinquishResp(r) => Rc::from_u8(r.rc),
            _ => Rc::Invalid,
        })
    }

    /// Turns a read lease into a write lease on the same range: acquires
    /// the write lease first (same term), then relinquishes the read lease.
    /// When the write lease is refused the read lease is kept and the
    /// failed lease is returned.
    pub fn upgrade(&mut self, lease: &mut Lease, flag: u64) -> Result<Lease> {
        if !lease.live {
            return Err(Error::Invalid("upgrade of a lease that is not held".into()));
        }
        if lease.write {
            return Err(Error::Invalid("the lease is already a write lease".into()));
        }
        let offset = lease.base.saturating_sub(self.sh.layout.internal);
        let ns = if lease.ddl == i64::MAX {
            0
        } else {
            lease.unit as u64
        };
        let nf = if lease.ddl == i64::MAX {
            acquire::NO_GC
        } else {
            0
        };
        let w = self.get_lease(
            true,
            lease.node,
            lease.dir,
            offset,
            lease.size,
            ns,
            flag | nf,
        )?;
        if w.success() {
            self.relinquish(lease, 0, 0)?;
        }
        Ok(w)
    }

    /// Gives a lease back; the memory node revokes its windows before it
    /// answers.
    pub fn relinquish(&mut self, lease: &mut Lease, hint: u64, flag: u64) -> Result<Rc> {
        if flag & !modify::ALL != 0 || flag & modify::ONLY_DEALLOCATION != 0 {
            return Err(Error::Invalid(format!(
                "relinquish flag {flag:#x}: unknown bits or ONLY_DEALLOCATION (use dealloc)"
            )));
        }
        if !lease.live {
            return Ok(Rc::Ok);
        }
        lease.live = false;
        lease.cache.clear();
        if flag & modify::NO_RPC != 0 || lease.slot == u32::MAX {
            return Ok(Rc::Ok);
        }
        let m = self.rpc(
            lease.node,
            lease.dir,
            MsgType::Relinquish,
            Msg::Relinquish(ModifyReq {
                slot: lease.slot,
                generation: lease.generation,
                ns: 0,
                hint,
                flag,
                addr: lease.base,
                size: lease.size,
                dir: lease.dir,
            }),
        )?;
        Ok(match m {
            Msg::RelinquishResp(r) if r.rc == 0 => Rc::Ok,
            _ => Rc::Invalid,
        })
    }

    fn expired(&self, lease: &Lease) -> bool {
        lease.ddl != i64::MAX && !self.sh.clock.before_deadline(lease.ddl)
    }

    /// Recovery after a failed one-sided request: the same QP is reset and
    /// reconnected in place, so the windows bound to it (this thread's other
    /// leases) stay valid and the thread keeps its identity. Where the fabric
    /// also errs the responder's QP (hardware RC), the directory resets its
    /// end first through an admin RPC on the (separate) RPC connection.
    fn recover_data_qp(&mut self, node: u16, dir: u16) -> Result<()> {
        let i = self.sh.client_index(node, dir);
        let qp = self.data[i].clone();
        qp.reset()?;
        let mut wc = [Wc::default(); 8];
        while self.data_cq.poll(&mut wc) > 0 {}
        if self.sh.nic.caps().peer_errs_with_requester {
            self.admin(node, dir, AdminOp::QpReset, 0)?;
        }
        qp.connect(&self.data_remote[i])?;
        Ok(())
    }

    /// Runs one one-sided work request on the data QP to the lease's
    /// directory; a failed completion recovers the QP before returning.
    fn one_sided(&mut self, lease: &Lease, op: WrOp) -> Result<Rc> {
        let i = self.sh.client_index(lease.node, lease.dir);
        let qp = self.data[i].clone();
        qp.post_send(&[SendWr {
            wr_id: 1,
            op,
            signaled: true,
        }])?;
        let mut wc = [Wc::default(); 1];
        let t0 = Instant::now();
        let st = loop {
            if self.data_cq.poll(&mut wc) == 1 {
                break wc[0].status;
            }
            let waited = t0.elapsed();
            if waited > self.sh.cfg.rpc_timeout {
                break WcStatus::RetryExcErr;
            }
            // A round trip is a few hundred ns on shm: poll hot first, give
            // the core away only when the answer is late.
            if waited > SPIN_FOR {
                self.data_cq.wait(std::time::Duration::from_micros(50));
            } else {
                std::hint::spin_loop();
            }
        };
        if st == WcStatus::Success {
            return Ok(Rc::Ok);
        }
        self.recover_data_qp(lease.node, lease.dir)?;
        Ok(Rc::RdmaProtectionErr)
    }

    fn check_rw(&mut self, lease: &mut Lease, flag: u64) -> Result<Option<Rc>> {
        if flag & !((1 << 7) - 1) != 0 {
            return Err(Error::Invalid(format!("unknown RW flag bits {flag:#x}")));
        }
        if !lease.live {
            return Err(Error::Invalid(
                "the lease was relinquished or never granted".into(),
            ));
        }
        if flag & rw::NO_LOCAL_EXPIRE_CHECK == 0 && self.expired(lease) {
            return Ok(Some(Rc::LeaseLocalExpiredErr));
        }
        if flag & rw::WITH_AUTO_EXTEND != 0 && lease.ddl != i64::MAX {
            let left = lease.ddl - self.sh.now();
            let margin = (2 * lease.unit).max(100_000);
            if left > self.sh.clock.epsilon() + 2_000 && left <= margin {
                let step = lease.auto_step;
                let ns = lease.unit as u64 * step as u64;
                if self.extend(lease, ns, 0)? == Rc::Ok {
                    lease.auto_step = step.saturating_mul(2).min(1 << 10);
                }
            }
        }
        Ok(None)
    }

    fn remote(&self, lease: &Lease, offset: u64, flag: u64) -> (u64, u32) {
        let p = &self.sh.peers[lease.node as usize];
        let rkey = if flag & rw::USE_UNIVERSAL_RKEY != 0 {
            p.region_rkey
        } else {
            lease.rkey
        };
        (
            p.region_addr.wrapping_add(lease.base).wrapping_add(offset),
            rkey,
        )
    }

    /// Reads `dst.len()` bytes at `offset` of the leased object.
    pub fn read(
        &mut self,
        lease: &mut Lease,
        dst: &mut [u8],
        offset: u64,
        flag: u64,
    ) -> Result<Rc> {
        if flag & rw::USE_TWO_SIDED != 0 {
            return self.rpc_read(lease, dst, offset);
        }
        if let Some(rc) = self.check_rw(lease, flag)? {
            return Ok(rc);
        }
        if flag & rw::WITH_CACHE != 0 && lease.cache_lookup(offset, dst) {
            return Ok(Rc::Ok);
        }
        let mut done = 0usize;
        while done < dst.len() {
            let n = (dst.len() - done).min(DATA_BUF);
            let (raddr, rkey) = self.remote(lease, offset + done as u64, flag);
            let rc = self.one_sided(
                lease,
                WrOp::Read {
                    local: Sge {
                        lkey: self.buf.lkey(),
                        offset: 0,
                        len: n as u32,
                    },
                    raddr,
                    rkey,
                },
            )?;
            if rc != Rc::Ok {
                return Ok(rc);
            }
            self.buf.read(0, &mut dst[done..done + n])?;
            done += n;
        }
        if flag & rw::WITH_CACHE != 0 {
            lease.cache_insert(offset, dst);
        }
        Ok(Rc::Ok)
    }

    /// Writes `src` at `offset` of the leased object.
    pub fn write(&mut self, lease: &mut Lease, src: &[u8], offset: u64, flag: u64) -> Result<Rc> {
        if flag & rw::USE_TWO_SIDED != 0 {
            return self.rpc_write(lease, src, offset);
        }
        if let Some(rc) = self.check_rw(lease, flag)? {
            return Ok(rc);
        }
        let mut done = 0usize;
        while done < src.len() {
            let n = (src.len() - done).min(DATA_BUF);
            self.buf.write(0, &src[done..done + n])?;
            let (raddr, rkey) = self.remote(lease, offset + done as u64, flag);
            let rc = self.one_sided(
                lease,
                WrOp::Write {
                    local: Sge {
                        lkey: self.buf.lkey(),
                        offset: 0,
                        len: n as u32,
                    },
                    raddr,
                    rkey,
                },
            )?;
            if rc != Rc::Ok {
                lease.cache_invalidate(offset, src.len() as u64);
                return Ok(rc);
            }
            done += n;
        }
        if flag & rw::WITH_CACHE != 0 {
            lease.cache_write(offset, src);
        } else {
            lease.cache_invalidate(offset, src.len() as u64);
        }
        Ok(Rc::Ok)
    }

    fn atomic(
        &mut self,
        lease: &mut Lease,
        offset: u64,
        a0: u64,
        a1: u64,
        cas: bool,
        flag: u64,
    ) -> Result<(Rc, u64)> {
        if flag & rw::USE_TWO_SIDED != 0 {
            let op = if cas { MemOp::Cas } else { MemOp::Faa };
            return self
                .rpc_mem(lease, op, offset, 8, a0, a1, vec![])
                .map(|(rc, old, _)| (rc, old));
        }
        if let Some(rc) = self.check_rw(lease, flag)? {
            return Ok((rc, 0));
        }
        let (raddr, rkey) = self.remote(lease, offset, flag);
        let local = Sge {
            lkey: self.buf.lkey(),
            offset: 0,
            len: 8,
        };
        let op = if cas {
            WrOp::Cas {
                local,
                raddr,
                rkey,
                compare: a0,
                swap: a1,
            }
        } else {
            WrOp::Faa {
                local,
                raddr,
                rkey,
                add: a0,
            }
        };
        let rc = self.one_sided(lease, op)?;
        lease.cache_invalidate(offset, 8);
        Ok((rc, self.buf.load_u64(0)?))
    }

    /// 8-byte compare-and-swap; returns the code and the old value.
    pub fn cas(
        &mut self,
        lease: &mut Lease,
        offset: u64,
        compare: u64,
        swap: u64,
        flag: u64,
    ) -> Result<(Rc, u64)> {
        self.atomic(lease, offset, compare, swap, true, flag)
    }

    /// 8-byte fetch-and-add; returns the code and the old value.
    pub fn faa(
        &mut self,
        lease: &mut Lease,
        offset: u64,
        add: i64,
        flag: u64,
    ) -> Result<(Rc, u64)> {
        self.atomic(lease, offset, add as u64, 0, false, flag)
    }

    /// One-sided extension: CAS on the lease's protection region, checked.
    pub fn extend(&mut self, lease: &mut Lease, ns: u64, _flag: u64) -> Result<Rc> {
        if !lease.live || lease.pr_rkey == 0 || lease.unit <= 0 {
            return Ok(Rc::Invalid);
        }
        let units = ns
            .div_ceil(lease.unit as u64)
            .min(crate::server::MAX_UNITS as u64) as u32;
        let new_units = lease.units.saturating_add(units);
        if new_units > crate::server::MAX_UNITS {
            return Ok(Rc::Invalid);
        }
        let expect = pack(lease.aba, lease.units);
        let p = &self.sh.peers[lease.node as usize];
        let raddr = p.region_addr + lease.pr_off + PR_WORD;
        let rc = self.one_sided(
            lease,
            WrOp::Cas {
                local: Sge {
                    lkey: self.buf.lkey(),
                    offset: 0,
                    len: 8,
                },
                raddr,
                rkey: lease.pr_rkey,
                compare: expect,
                swap: pack(lease.aba, new_units),
            },
        )?;
        if rc != Rc::Ok {
            return Ok(rc);
        }
        let old = self.buf.load_u64(0)?;
        if old != expect {
            let (aba, units) = unpack(old);
            tracing::debug!(aba, units, closed = units == CLOSED, "extension refused");
            return Ok(Rc::Invalid);
        }
        lease.units = new_units;
        lease.ddl = lease
            .begin
            .saturating_add(lease.unit.saturating_mul(new_units as i64));
        Ok(Rc::Ok)
    }

    /// Two-sided extension.
    pub fn rpc_extend(&mut self, lease: &mut Lease, ns: u64, flag: u64) -> Result<Rc> {
        if !lease.live {
            return Ok(Rc::Invalid);
        }
        let m = self.rpc(
            lease.node,
            lease.dir,
            MsgType::Extend,
            Msg::Extend(ModifyReq {
                slot: lease.slot,
                generation: lease.generation,
                ns,
                hint: 0,
                flag,
                addr: 0,
                size: 0,
                dir: lease.dir,
            }),
        )?;
        match m {
            Msg::ExtendResp(r) if r.rc == 0 => {
                lease.units = lease.units.saturating_add(r.units as u32);
                lease.ddl = lease
                    .begin
                    .saturating_add(lease.unit.saturating_mul(lease.units as i64));
                Ok(Rc::Ok)
            }
            _ => Ok(Rc::Invalid),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rpc_mem(
        &mut self,
        lease: &Lease,
        op: MemOp,
        offset: u64,
        size: u32,
        a0: u64,
        a1: u64,
        payload: Vec<u8>,
    ) -> Result<(Rc, u64, Vec<u8>)> {
        let m = self.rpc(
            lease.node,
            lease.dir,
            MsgType::Memory,
            Msg::Memory(MemReq {
                op,
                slot: lease.slot,
                generation: lease.generation,
                offset,
                size,
                arg0: a0,
                arg1: a1,
                dir: lease.dir,
                payload,
            }),
        )?;
        match m {
            Msg::MemoryResp(r) => {
                let rc = match r.rc {
                    0 => Rc::Ok,
                    6 => Rc::RdmaProtectionErr,
                    8 => Rc::LeaseLocalExpiredErr,
                    _ => Rc::Invalid,
                };
                Ok((rc, r.old, r.payload))
            }
            _ => Err(Error::Invalid(
                "memory RPC answered with another message".into(),
            )),
        }
    }

    /// Two-sided read, checked by the memory node against the lease.
    pub fn rpc_read(&mut self, lease: &mut Lease, dst: &mut [u8], offset: u64) -> Result<Rc> {
        let mut done = 0;
        while done < dst.len() {
            let n = (dst.len() - done).min(msg::MAX_MEM_PAYLOAD);
            let (rc, _, p) = self.rpc_mem(
                lease,
                MemOp::Read,
                offset + done as u64,
                n as u32,
                0,
                0,
                vec![],
            )?;
            if rc != Rc::Ok {
                return Ok(rc);
            }
            if p.len() != n {
                return Err(Error::Invalid("short rpc_read reply".into()));
            }
            dst[done..done + n].copy_from_slice(&p);
            done += n;
        }
        Ok(Rc::Ok)
    }

    /// Two-sided write, checked by the memory node against the lease.
    pub fn rpc_write(&mut self, lease: &mut Lease, src: &[u8], offset: u64) -> Result<Rc> {
        let mut done = 0;
        while done < src.len() {
            let n = (src.len() - done).min(msg::MAX_MEM_PAYLOAD);
            let (rc, _, _) = self.rpc_mem(
                lease,
                MemOp::Write,
                offset + done as u64,
                n as u32,
                0,
                0,
                src[done..done + n].to_vec(),
            )?;
            if rc != Rc::Ok {
                return Ok(rc);
            }
            done += n;
        }
        Ok(Rc::Ok)
    }
}

/// Most operations in one batch (the original's limit).
pub const BATCH_MAX: usize = 16;

#[derive(Clone, Debug)]
enum BatchOp {
    Read { len: usize },
    Write,
    Atomic,
}

/// A batch of one-sided operations on leases of one directory, posted as one
/// chain and completed by one signalled completion (`commit`).
#[derive(Debug, Default)]
pub struct Batch {
    target: Option<(u16, u16)>,
    wrs: Vec<WrOp>,
    kinds: Vec<(BatchOp, u64)>,
    used: u64,
    results: Vec<Vec<u8>>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }
    /// Operations prepared.
    pub fn len(&self) -> usize {
        self.wrs.len()
    }
    /// True when nothing is prepared.
    pub fn is_empty(&self) -> bool {
        self.wrs.is_empty()
    }
    /// Result bytes of operation `i` of the last commit (READ data, or the
    /// old value of a CAS/FAA as 8 little-endian bytes).
    pub fn result(&self, i: usize) -> Option<&[u8]> {
        self.results.get(i).map(Vec::as_slice)
    }
}

impl ClientThread {
    fn prepare(
        &mut self,
        b: &mut Batch,
        lease: &Lease,
        op: WrOp,
        kind: BatchOp,
        bytes: u64,
    ) -> Result<Rc> {
        if !lease.live {
            return Err(Error::Invalid(
                "the lease was relinquished or never granted".into(),
            ));
        }
        if b.wrs.len() >= BATCH_MAX {
            return Ok(Rc::NoMem);
        }
        match b.target {
            Some(t) if t != (lease.node, lease.dir) => {
                return Err(Error::Invalid(format!(
                    "a batch targets one directory: node {} dir {} vs node {} dir {}",
                    t.0, t.1, lease.node, lease.dir
                )))
            }
            _ => b.target = Some((lease.node, lease.dir)),
        }
        if b.used + bytes.next_multiple_of(8) > DATA_BUF as u64 {
            return Ok(Rc::NoMem);
        }
        b.kinds.push((kind, b.used));
        b.used += bytes.next_multiple_of(8);
        b.wrs.push(op);
        Ok(Rc::Ok)
    }

    fn local(&self, off: u64, len: u64) -> Sge {
        Sge {
            lkey: self.buf.lkey(),
            offset: off,
            len: len as u32,
        }
    }

    /// Adds a READ of `len` bytes at `offset` (no expiry check, as the original).
    pub fn prepare_read(
        &mut self,
        b: &mut Batch,
        lease: &Lease,
        len: usize,
        offset: u64,
        flag: u64,
    ) -> Result<Rc> {
        let (raddr, rkey) = self.remote(lease, offset, flag);
        let op = WrOp::Read {
            local: self.local(b.used, len as u64),
            raddr,
            rkey,
        };
        self.prepare(b, lease, op, BatchOp::Read { len }, len as u64)
    }

    /// Adds a WRITE of `src` at `offset`.
    pub fn prepare_write(
        &mut self,
        b: &mut Batch,
        lease: &Lease,
        src: &[u8],
        offset: u64,
        flag: u64,
    ) -> Result<Rc> {
        if b.used + (src.len() as u64).next_multiple_of(8) <= DATA_BUF as u64
            && b.wrs.len() < BATCH_MAX
        {
            self.buf.write(b.used, src)?;
        }
        let (raddr, rkey) = self.remote(lease, offset, flag);
        let op = WrOp::Write {
            local: self.local(b.used, src.len() as u64),
            raddr,
            rkey,
        };
        self.prepare(b, lease, op, BatchOp::Write, src.len() as u64)
    }

    /// Adds an 8-byte CAS.
    pub fn prepare_cas(
        &mut self,
        b: &mut Batch,
        lease: &Lease,
        offset: u64,
        compare: u64,
        swap: u64,
        flag: u64,
    ) -> Result<Rc> {
        let (raddr, rkey) = self.remote(lease, offset, flag);
        let op = WrOp::Cas {
            local: self.local(b.used, 8),
            raddr,
            rkey,
            compare,
            swap,
        };
        self.prepare(b, lease, op, BatchOp::Atomic, 8)
    }

    /// Adds an 8-byte FAA.
    pub fn prepare_faa(
        &mut self,
        b: &mut Batch,
        lease: &Lease,
        offset: u64,
        add: i64,
        flag: u64,
    ) -> Result<Rc> {
        let (raddr, rkey) = self.remote(lease, offset, flag);
        let op = WrOp::Faa {
            local: self.local(b.used, 8),
            raddr,
            rkey,
            add: add as u64,
        };
        self.prepare(b, lease, op, BatchOp::Atomic, 8)
    }

    /// Posts the batch as one chain (only the last request signalled) and
    /// waits. An empty batch is OK. The batch is cleared either way; results
    /// are available through [`Batch::result`] on success.
    pub fn commit(&mut self, b: &mut Batch) -> Result<Rc> {
        b.results.clear();
        let Some((node, dir)) = b.target else {
            return Ok(Rc::Ok);
        };
        let i = self.sh.client_index(node, dir);
        let qp = self.data[i].clone();
        let n = b.wrs.len();
        let wrs: Vec<SendWr> = b
            .wrs
            .iter()
            .enumerate()
            .map(|(k, op)| SendWr {
                wr_id: 100 + k as u64,
                op: *op,
                signaled: k + 1 == n,
            })
            .collect();
        let kinds = std::mem::take(&mut b.kinds);
        b.wrs.clear();
        b.target = None;
        b.used = 0;
        qp.post_send(&wrs)?;
        let mut wc = [Wc::default(); 1];
        let t0 = Instant::now();
        let mut failed = false;
        loop {
            if self.data_cq.poll(&mut wc) == 1 {
                if !wc[0].status.is_ok() {
                    failed = true;
                }
                if wc[0].wr_id == 100 + n as u64 - 1 {
                    break;
                }
                continue;
            }
            let waited = t0.elapsed();
            if waited > self.sh.cfg.rpc_timeout {
                failed = true;
                break;
            }
            if waited > SPIN_FOR {
                self.data_cq.wait(std::time::Duration::from_micros(50));
            } else {
                std::hint::spin_loop();
            }
        }
        if failed {
            self.recover_data_qp(node, dir)?;
            return Ok(Rc::RdmaProtectionErr);
        }
        for (k, off) in kinds {
            let mut v = match k {
                BatchOp::Read { len } => vec![0u8; len],
                BatchOp::Atomic => vec![0u8; 8],
                BatchOp::Write => Vec::new(),
            };
            self.buf.read(off, &mut v)?;
            b.results.push(v);
        }
        Ok(Rc::Ok)
    }
}
