//! Two-sided memory RPCs (rpc_read/write/cas/faa): the memory node checks
//! each against the caller's lease (range, access, expiry) exactly like a
//! one-sided access, unlike the original. Transfers larger than one message
//! are always split into chunks (the original needed
//! `USE_TWO_SIDED_AUTO_PACKING` for that; the flag is accepted and implied).

use super::calls::{Op, Post, Prepared, RpcOp};
use super::ClientThread;
use crate::lease::msg::{MemOp, MemReq};
use crate::lease::{Lease, Rc};
use crate::Result;

impl ClientThread {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn prep_mem(
        &mut self,
        lease: &Lease,
        op: MemOp,
        offset: u64,
        size: usize,
        a0: u64,
        a1: u64,
        data: Vec<u8>,
    ) -> Result<Prepared> {
        self.check_dir(lease.node, lease.dir)?;
        Ok(Prepared::Op(Op::Rpc(Box::new(RpcOp::Mem {
            node: lease.node,
            dir: lease.dir,
            req: MemReq {
                op,
                slot: lease.slot,
                generation: lease.generation,
                offset,
                size: size.min(u32::MAX as usize) as u32,
                arg0: a0,
                arg1: a1,
                dir: lease.dir,
                payload: Vec::new(),
            },
            total: size,
            done: 0,
            data,
        }))))
    }

    pub(super) fn prep_rpc_read(
        &mut self,
        lease: &Lease,
        len: usize,
        offset: u64,
    ) -> Result<Prepared> {
        self.prep_mem(lease, MemOp::Read, offset, len, 0, 0, vec![0u8; len])
    }

    pub(super) fn prep_rpc_write(
        &mut self,
        lease: &Lease,
        src: &[u8],
        offset: u64,
    ) -> Result<Prepared> {
        self.prep_mem(lease, MemOp::Write, offset, src.len(), 0, 0, src.to_vec())
    }

    /// Two-sided read, checked by the memory node against the lease.
    pub fn rpc_read(&mut self, lease: &mut Lease, dst: &mut [u8], offset: u64) -> Result<Rc> {
        let p = self.prep_rpc_read(lease, dst.len(), offset);
        let c = self.run(p)?;
        if matches!(c.result, Ok(Rc::Ok)) && c.data.len() == dst.len() {
            dst.copy_from_slice(&c.data);
        }
        c.result
    }

    /// Two-sided write, checked by the memory node against the lease.
    pub fn rpc_write(&mut self, lease: &mut Lease, src: &[u8], offset: u64) -> Result<Rc> {
        let p = self.prep_rpc_write(lease, src, offset);
        self.run(p)?.result
    }

    /// Posts a two-sided read: the completion's `data` holds the bytes.
    pub fn post_rpc_read(
        &mut self,
        lease: &mut Lease,
        len: usize,
        offset: u64,
        user_data: u64,
    ) -> Result<Post> {
        self.post(user_data, |t| t.prep_rpc_read(lease, len, offset))
    }

    /// Posts a two-sided write (`src` is copied at once).
    pub fn post_rpc_write(
        &mut self,
        lease: &mut Lease,
        src: &[u8],
        offset: u64,
        user_data: u64,
    ) -> Result<Post> {
        self.post(user_data, |t| t.prep_rpc_write(lease, src, offset))
    }

    /// Posts a two-sided CAS: the completion's `value` is the old value.
    pub fn post_rpc_cas(
        &mut self,
        lease: &mut Lease,
        offset: u64,
        compare: u64,
        swap: u64,
        user_data: u64,
    ) -> Result<Post> {
        self.post(user_data, |t| {
            t.prep_mem(lease, MemOp::Cas, offset, 8, compare, swap, vec![])
        })
    }

    /// Posts a two-sided FAA: the completion's `value` is the old value.
    pub fn post_rpc_faa(
        &mut self,
        lease: &mut Lease,
        offset: u64,
        add: i64,
        user_data: u64,
    ) -> Result<Post> {
        self.post(user_data, |t| {
            t.prep_mem(lease, MemOp::Faa, offset, 8, add as u64, 0, vec![])
        })
    }
}
