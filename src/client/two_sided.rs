//! Two-sided memory RPCs (rpc_read/write/cas/faa): the memory node checks
//! each against the caller's lease (range, access, expiry) exactly like a
//! one-sided access, unlike the original. Transfers larger than one message
//! are always split into chunks (the original needed
//! `USE_TWO_SIDED_AUTO_PACKING` for that; the flag is accepted and implied).

use super::ClientThread;
use crate::lease::msg::{self, MemOp, MemReq, Msg, MsgType};
use crate::lease::{Lease, Rc};
use crate::{Error, Result};

impl ClientThread {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rpc_mem(
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
            Msg::MemoryResp(r) => match Rc::from_u8(r.rc) {
                rc @ (Rc::Ok | Rc::RdmaProtectionErr | Rc::LeaseLocalExpiredErr) => {
                    Ok((rc, r.old, r.payload))
                }
                rc => Err(Error::Invalid(format!(
                    "memory RPC {op:?} of {size} bytes at offset {offset} on lease slot {} \
                     generation {} of node {} dir {} refused ({rc:?}): no live lease of this thread",
                    lease.slot, lease.generation, lease.node, lease.dir
                ))),
            },
            m => Err(Error::Invalid(format!(
                "memory RPC to node {} dir {} answered with another message: {m:?}",
                lease.node, lease.dir
            ))),
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
