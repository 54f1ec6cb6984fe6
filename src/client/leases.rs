//! Acquire, relinquish, upgrade, allocation and extension: the client's
//! control path. Each call sends one RPC (or one CAS, for the one-sided
//! extension) and feeds the reply to the lease state.

use super::calls::{DataKind, DataOp, Op, Post, Prepared, RpcOp, Then};
use super::data::done;
use super::ClientThread;
use crate::lease::flags::{acquire, modify};
use crate::lease::msg::{AcquireReq, ModifyReq};
use crate::lease::pr::Refusal;
use crate::lease::AcquireStatus as St;
use crate::lease::{BufOff, Lease, Rc};
use crate::{Error, Result};

impl ClientThread {
    #[allow(clippy::too_many_arguments)]
    fn prep_acquire(
        &mut self,
        write: bool,
        node: u16,
        dir: u16,
        offset: u64,
        size: u64,
        ns: u64,
        flag: u64,
        then: Then,
    ) -> Result<Prepared> {
        if flag & !acquire::ALL != 0 {
            return Err(Error::Invalid(format!(
                "unknown acquire flag bits {flag:#x}"
            )));
        }
        if flag & acquire::NO_RPC != 0 {
            let base = self.sh.peer(node)?.layout.region(BufOff(offset));
            let mut c = done(Rc::Ok);
            c.lease = Some(Box::new(Lease::local(node, dir, base, size, write)));
            return Ok(Prepared::Done(Box::new(c)));
        }
        self.check_dir(node, dir)?;
        Ok(Prepared::Op(Op::Rpc(Box::new(RpcOp::Acquire {
            write,
            node,
            dir,
            req: AcquireReq {
                key: offset,
                size,
                ns,
                flag,
                dir,
            },
            attempts: 0,
            then,
            got: None,
        }))))
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
        let p = self.prep_acquire(write, node, dir, offset, size, ns, flag, Then::Lease);
        self.run(p)?.into_lease()
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
        let key = acquire_key(offset, alloc_hint, flag)?;
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
        let key = acquire_key(offset, alloc_hint, flag)?;
        self.get_lease(true, node, dir, key, size, ns, flag)
    }

    /// Posts an acquisition of a read lease (see
    /// [`ClientThread::get_rlease`]): the completion's `lease` is the new
    /// lease, granted or not.
    #[allow(clippy::too_many_arguments)]
    pub fn post_get_rlease(
        &mut self,
        node: u16,
        dir: u16,
        offset: u64,
        alloc_hint: u64,
        size: u64,
        ns: u64,
        flag: u64,
        user_data: u64,
    ) -> Result<Post> {
        self.post(user_data, |t| {
            let key = acquire_key(offset, alloc_hint, flag)?;
            t.prep_acquire(false, node, dir, key, size, ns, flag, Then::Lease)
        })
    }

    /// Posts an acquisition of a write lease (see
    /// [`ClientThread::post_get_rlease`]).
    #[allow(clippy::too_many_arguments)]
    pub fn post_get_wlease(
        &mut self,
        node: u16,
        dir: u16,
        offset: u64,
        alloc_hint: u64,
        size: u64,
        ns: u64,
        flag: u64,
        user_data: u64,
    ) -> Result<Post> {
        self.post(user_data, |t| {
            let key = acquire_key(offset, alloc_hint, flag)?;
            t.prep_acquire(true, node, dir, key, size, ns, flag, Then::Lease)
        })
    }

    fn prep_alloc(&mut self, node: u16, dir: u16, size: u64, hint: u64) -> Result<Prepared> {
        self.prep_acquire(
            true,
            node,
            dir,
            hint,
            size,
            0,
            acquire::NO_GC | acquire::ONLY_ALLOCATION | acquire::NO_BIND_PR,
            Then::Alloc,
        )
    }

    /// Posts an allocation (see [`ClientThread::alloc`]): the completion's
    /// `value` is the block's buffer offset when its `lease` reports
    /// success (status 0), and the allocator had nothing otherwise.
    pub fn post_alloc(
        &mut self,
        node: u16,
        dir: u16,
        size: u64,
        hint: u64,
        user_data: u64,
    ) -> Result<Post> {
        self.post(user_data, |t| t.prep_alloc(node, dir, size, hint))
    }

    /// Posts a free of a block (see [`ClientThread::dealloc`]).
    pub fn post_dealloc(
        &mut self,
        node: u16,
        dir: u16,
        offset: u64,
        size: u64,
        hint: u64,
        user_data: u64,
    ) -> Result<Post> {
        self.post(user_data, |t| t.prep_dealloc(node, dir, offset, size, hint))
    }

    /// Allocates `size` bytes on directory `dir` of node `node` with the
    /// allocator registered for `hint` (0: the default slab); returns the
    /// buffer offset, or None when the allocator has nothing.
    pub fn alloc(&mut self, node: u16, dir: u16, size: u64, hint: u64) -> Result<Option<u64>> {
        let p = self.prep_alloc(node, dir, size, hint);
        let c = self.run(p)?;
        let value = c.value;
        let l = c.into_lease()?;
        if l.status != St::Success as u8 {
            return Ok(None);
        }
        Ok(Some(value))
    }

    /// Frees a block from [`ClientThread::alloc`]; the memory node checks
    /// that it is a live block of that allocator (an error naming the block
    /// if not).
    pub fn dealloc(
        &mut self,
        node: u16,
        dir: u16,
        offset: u64,
        size: u64,
        hint: u64,
    ) -> Result<Rc> {
        let p = self.prep_dealloc(node, dir, offset, size, hint);
        let c = self.run(p)?;
        c.result
    }

    fn prep_dealloc(
        &mut self,
        node: u16,
        dir: u16,
        offset: u64,
        size: u64,
        hint: u64,
    ) -> Result<Prepared> {
        let addr = self.sh.peer(node)?.layout.region(BufOff(offset));
        self.check_dir(node, dir)?;
        Ok(Prepared::Op(Op::Rpc(Box::new(RpcOp::Dealloc {
            node,
            dir,
            req: ModifyReq {
                slot: u32::MAX,
                generation: 0,
                ns: 0,
                hint,
                flag: modify::NO_RELINQUISH_UNBIND_ANY | modify::ONLY_DEALLOCATION,
                addr: addr.0,
                size,
                dir,
            },
            offset,
        }))))
    }

    /// Turns a read lease into a write lease on the same range: acquires
    /// the write lease first (same term), then relinquishes the read lease.
    /// When the write lease is refused the read lease is kept and the
    /// failed lease is returned.
    pub fn upgrade(&mut self, lease: &mut Lease, flag: u64) -> Result<Lease> {
        let p = self.prep_upgrade(lease, flag);
        let c = self.run(p)?;
        c.apply(lease);
        c.into_lease()
    }

    fn prep_upgrade(&mut self, lease: &Lease, flag: u64) -> Result<Prepared> {
        if !lease.live {
            return Err(Error::Invalid("upgrade of a lease that is not held".into()));
        }
        if lease.write {
            return Err(Error::Invalid("the lease is already a write lease".into()));
        }
        let offset = lease.buf_off(&self.sh.peer(lease.node)?.layout);
        let (ns, nf) = if lease.never_expires() {
            (0, acquire::NO_GC)
        } else {
            (lease.term.unit as u64, 0)
        };
        let give_back = ModifyReq {
            slot: lease.slot,
            generation: lease.generation,
            ns: 0,
            hint: 0,
            flag: 0,
            addr: lease.base.0,
            size: lease.size,
            dir: lease.dir,
        };
        let then = if lease.has_server_context() {
            Then::Upgrade(give_back)
        } else {
            Then::Lease
        };
        self.prep_acquire(
            true,
            lease.node,
            lease.dir,
            offset.0,
            lease.size,
            ns,
            flag | nf,
            then,
        )
    }

    fn prep_relinquish(&mut self, lease: &mut Lease, hint: u64, flag: u64) -> Result<Prepared> {
        if flag & !modify::ALL != 0 || flag & modify::ONLY_DEALLOCATION != 0 {
            return Err(Error::Invalid(format!(
                "relinquish flag {flag:#x}: unknown bits or ONLY_DEALLOCATION (use dealloc)"
            )));
        }
        if !lease.live {
            return Ok(Prepared::Done(Box::new(done(Rc::Ok))));
        }
        lease.release();
        self.forget_keys(lease);
        if flag & modify::NO_RPC != 0 || !lease.has_server_context() {
            return Ok(Prepared::Done(Box::new(done(Rc::Ok))));
        }
        Ok(Prepared::Op(Op::Rpc(Box::new(RpcOp::Relinquish {
            node: lease.node,
            dir: lease.dir,
            req: ModifyReq {
                slot: lease.slot,
                generation: lease.generation,
                ns: 0,
                hint,
                flag,
                addr: lease.base.0,
                size: lease.size,
                dir: lease.dir,
            },
        }))))
    }

    /// Gives a lease back; the memory node revokes its windows before it
    /// answers.
    pub fn relinquish(&mut self, lease: &mut Lease, hint: u64, flag: u64) -> Result<Rc> {
        let p = self.prep_relinquish(lease, hint, flag);
        self.run(p)?.result
    }

    fn prep_extend(&mut self, lease: &Lease, ns: u64) -> Result<Prepared> {
        let (from, to) = lease
            .extension(ns)
            .map_err(|r| refused("extend", lease, r))?;
        let raddr = self.sh.peer(lease.node)?.region_addr + lease.pr_word().0;
        Ok(Prepared::Op(Op::Data(DataOp {
            node: lease.node,
            dir: lease.dir,
            kind: DataKind::Extend {
                from,
                to,
                slot: lease.slot,
                generation: lease.generation,
            },
            raddr,
            rkey: self.lease_keys(lease).1,
            total: 8,
            done: 0,
            data: Vec::new(),
            rare: None,
            // The extension was sent against the deadline the lease had:
            // refused once that deadline is in doubt, the GC's close won
            // the race (the lease expired in flight), not a protection
            // fault.
            ddl: (!lease.never_expires()).then_some(lease.ddl),
            auto: false,
            staged: false,
        })))
    }

    /// One-sided extension: CAS on the lease's protection region, checked
    /// against the word the client expects. A refusal (the lease has no
    /// region, passed the cap, or was closed by the memory node) is an
    /// error naming why.
    pub fn extend(&mut self, lease: &mut Lease, ns: u64, _flag: u64) -> Result<Rc> {
        let p = self.prep_extend(lease, ns);
        let c = self.run(p)?;
        c.apply(lease);
        c.result
    }

    fn prep_rpc_extend(&mut self, lease: &Lease, ns: u64, flag: u64) -> Result<Prepared> {
        if !lease.live {
            return Err(refused("rpc_extend", lease, Refusal::NoTerm));
        }
        Ok(Prepared::Op(Op::Rpc(Box::new(RpcOp::Extend {
            node: lease.node,
            dir: lease.dir,
            req: ModifyReq {
                slot: lease.slot,
                generation: lease.generation,
                ns,
                hint: 0,
                flag,
                addr: 0,
                size: 0,
                dir: lease.dir,
            },
        }))))
    }

    /// Two-sided extension.
    pub fn rpc_extend(&mut self, lease: &mut Lease, ns: u64, flag: u64) -> Result<Rc> {
        let p = self.prep_rpc_extend(lease, ns, flag);
        let c = self.run(p)?;
        c.apply(lease);
        c.result
    }

    /// Posts a relinquish (the lease is marked given back at once).
    pub fn post_relinquish(
        &mut self,
        lease: &mut Lease,
        hint: u64,
        flag: u64,
        user_data: u64,
    ) -> Result<Post> {
        self.post(user_data, |t| t.prep_relinquish(lease, hint, flag))
    }

    /// Posts a one-sided extension; [`Completion::apply`] records the new
    /// term in the lease.
    pub fn post_extend(
        &mut self,
        lease: &mut Lease,
        ns: u64,
        _flag: u64,
        user_data: u64,
    ) -> Result<Post> {
        self.post(user_data, |t| t.prep_extend(lease, ns))
    }

    /// Posts a two-sided extension.
    pub fn post_rpc_extend(
        &mut self,
        lease: &mut Lease,
        ns: u64,
        flag: u64,
        user_data: u64,
    ) -> Result<Post> {
        self.post(user_data, |t| t.prep_rpc_extend(lease, ns, flag))
    }

    /// Posts an upgrade: the completion's `lease` is the write lease;
    /// [`Completion::apply`] marks the read lease given back when it was
    /// granted.
    pub fn post_upgrade(&mut self, lease: &mut Lease, flag: u64, user_data: u64) -> Result<Post> {
        self.post(user_data, |t| t.prep_upgrade(lease, flag))
    }
}

fn refused(what: &str, l: &Lease, why: Refusal) -> Error {
    Error::Invalid(format!(
        "{what} of lease slot {} generation {} on node {} dir {} refused: {why}",
        l.slot, l.generation, l.node, l.dir
    ))
}

/// The acquire request's key: the object's offset, or the allocator hint
/// with an allocation flag.
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
