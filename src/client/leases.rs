//! Acquire, relinquish, upgrade, allocation and extension: the client's
//! control path. Each call sends one RPC (or one CAS, for the one-sided
//! extension) and feeds the reply to the lease state.

use super::ClientThread;
use crate::fabric::{Sge, WrOp};
use crate::lease::flags::{acquire, modify};
use crate::lease::msg::{AcquireReq, ModifyReq, Msg, MsgType};
use crate::lease::pr::{Refusal, Word};
use crate::lease::AcquireStatus as St;
use crate::lease::{BufOff, Lease, Rc};
use crate::{Error, Result};

impl ClientThread {
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
        if flag & !acquire::ALL != 0 {
            return Err(Error::Invalid(format!(
                "unknown acquire flag bits {flag:#x}"
            )));
        }
        if flag & acquire::NO_RPC != 0 {
            let base = self.sh.peer(node)?.layout.region(BufOff(offset));
            return Ok(Lease::local(node, dir, base, size, write));
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
                return Err(Error::Invalid(format!(
                    "acquire on node {node} dir {dir} answered with another message"
                )));
            };
            attempts += 1;
            if a.status != St::MagicMwErr as u8 || attempts >= 8 {
                break a;
            }
            self.magic_retries += 1;
        };
        if a.status != St::Success as u8 {
            return Ok(Lease::failed(a.status, node, dir));
        }
        Ok(Lease::granted(node, dir, size, write, flag, ns, &a))
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
        if l.status != St::Success as u8 {
            return Ok(None);
        }
        Ok(Some(l.buf_off(&self.sh.peer(node)?.layout).0))
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
        let addr = self.sh.peer(node)?.layout.region(BufOff(offset));
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
                addr: addr.0,
                size,
                dir,
            }),
        )?;
        match m {
            Msg::RelinquishResp(r) if r.rc == Rc::Ok as u8 => Ok(Rc::Ok),
            Msg::RelinquishResp(_) => Err(Error::Invalid(format!(
                "dealloc of {size} bytes at offset {offset:#x} (hint {hint}) on node {node} dir {dir} \
                 refused: not a live block of that allocator"
            ))),
            m => Err(Error::Invalid(format!(
                "dealloc on node {node} dir {dir}: unexpected reply {m:?}"
            ))),
        }
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
        let offset = lease.buf_off(&self.sh.peer(lease.node)?.layout);
        let (ns, nf) = if lease.never_expires() {
            (0, acquire::NO_GC)
        } else {
            (lease.term.unit as u64, 0)
        };
        let w = self.get_lease(
            true,
            lease.node,
            lease.dir,
            offset.0,
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
        lease.release();
        if flag & modify::NO_RPC != 0 || !lease.has_server_context() {
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
                addr: lease.base.0,
                size: lease.size,
                dir: lease.dir,
            }),
        )?;
        match m {
            Msg::RelinquishResp(r) if r.rc == Rc::Ok as u8 => Ok(Rc::Ok),
            _ => Err(Error::Invalid(format!(
                "relinquish of lease slot {} generation {} refused by node {} dir {}: it is not this thread's lease",
                lease.slot, lease.generation, lease.node, lease.dir
            ))),
        }
    }

    /// One-sided extension: CAS on the lease's protection region, checked
    /// against the word the client expects. A refusal (the lease has no
    /// region, passed the cap, or was closed by the memory node) is an
    /// error naming why.
    pub fn extend(&mut self, lease: &mut Lease, ns: u64, _flag: u64) -> Result<Rc> {
        let (from, to) = lease
            .extension(ns)
            .map_err(|r| refused("extend", lease, r))?;
        let raddr = self.sh.peer(lease.node)?.region_addr + lease.pr_word().0;
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
                compare: from.pack(),
                swap: to.pack(),
            },
        )?;
        if rc != Rc::Ok {
            return Ok(rc);
        }
        let found = Word::unpack(self.buf.load_u64(0)?);
        if found != from {
            let why = if found.is_closed() {
                Refusal::Closed
            } else {
                Refusal::Changed(found)
            };
            tracing::debug!(?found, "extension refused");
            return Err(refused("extend", lease, why));
        }
        lease.set_units(to.units);
        Ok(Rc::Ok)
    }

    /// Two-sided extension.
    pub fn rpc_extend(&mut self, lease: &mut Lease, ns: u64, flag: u64) -> Result<Rc> {
        if !lease.live {
            return Err(refused("rpc_extend", lease, Refusal::NoTerm));
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
            Msg::ExtendResp(r) if r.rc == Rc::Ok as u8 => {
                let more = u32::try_from(r.units).unwrap_or(u32::MAX);
                lease.set_units(lease.units.saturating_add(more));
                Ok(Rc::Ok)
            }
            _ => Err(Error::Invalid(format!(
                "rpc_extend of lease slot {} generation {} on node {} dir {} refused: \
                 it expired, was relinquished, has no protection region, or would pass the cap",
                lease.slot, lease.generation, lease.node, lease.dir
            ))),
        }
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
