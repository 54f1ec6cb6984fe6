//! RPC plumbing outside the call engine: a request to a directory and its
//! reply matched by RPC id (used by QP recovery, which runs inside the
//! engine's progress), and administrative requests.

use super::calls::{Op, Prepared, RpcOp};
use super::ClientThread;
use crate::lease::msg::{self, AdminOp, AdminReq, Header, Msg, MsgType};
use crate::lease::Rc;
use crate::{Error, Result};

impl ClientThread {
    /// Checks that (node, dir) is a directory of the cluster.
    pub(super) fn check_dir(&self, node: u16, dir: u16) -> Result<()> {
        let cfg = &self.sh.cfg;
        if node >= cfg.machine_nr || dir >= cfg.dir_nr {
            return Err(Error::Invalid(format!(
                "node {node} dir {dir} outside the cluster ({} nodes x {} dirs)",
                cfg.machine_nr, cfg.dir_nr
            )));
        }
        Ok(())
    }

    /// One RPC sent and waited for here, bypassing the call engine.
    fn rpc_direct(&mut self, node: u16, dir: u16, ty: MsgType, m: Msg) -> Result<Msg> {
        self.check_dir(node, dir)?;
        self.rpc_id += 1;
        let id = super::calls::rpc_tag(self.rpc_id, super::calls::RPC_TAG_DIRECT);
        let h = Header {
            ty,
            rpc_id: id,
            node: self.sh.node_id,
            thread: self.slot,
        };
        msg::encode(&h, &m, &mut self.out);
        let peer = self.sh.dir_index(node, dir);
        let out = std::mem::take(&mut self.out);
        let r = self.msgr.send(peer, &out);
        self.out = out;
        r?;
        let timeout = self.sh.cfg.rpc_timeout;
        let inc = self
            .msgr
            .recv_match(timeout, |i| {
                i.peer == peer && i.data.len() >= 16 && reply_id(&i.data) == id
            })?
            .ok_or_else(|| {
                Error::Timeout(format!(
                    "no reply from node {node} dir {dir} within {timeout:?}"
                ))
            })?;
        let (_, m) = msg::decode(&inc.data).map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(m)
    }

    pub(super) fn admin_direct(
        &mut self,
        node: u16,
        dir: u16,
        op: AdminOp,
        arg: u64,
    ) -> Result<i64> {
        match self.rpc_direct(
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

    /// A page of the leases re-keyed by this thread's last `QpReset` on
    /// (node, dir), from entry `from` on (directly, as recovery needs).
    pub(super) fn lease_keys_direct(
        &mut self,
        node: u16,
        dir: u16,
        from: u64,
    ) -> Result<msg::LeaseKeysResp> {
        let req = Msg::Admin(AdminReq {
            op: AdminOp::LeaseKeys,
            arg: from,
            dir,
        });
        match self.rpc_direct(node, dir, MsgType::Admin, req)? {
            Msg::LeaseKeysResp(r) if r.rc == 0 => Ok(r),
            m => Err(Error::Invalid(format!(
                "lease keys from node {node} dir {dir}: unexpected reply {m:?}"
            ))),
        }
    }

    /// Sends `bytes` as one message on this thread's RPC connection to
    /// directory `dir` of node `node`, as they are: what a hostile client can
    /// always do on its own connection (tests of the directory's defences
    /// use it to flood). Replies, if any, are dropped by the engine.
    #[doc(hidden)]
    pub fn raw_rpc_send(&mut self, node: u16, dir: u16, bytes: &[u8]) -> Result<()> {
        self.check_dir(node, dir)?;
        let peer = self.sh.dir_index(node, dir);
        self.msgr.send(peer, bytes)?;
        Ok(())
    }

    /// An administrative RPC to directory `dir` of node `node`; returns the
    /// reply value (e.g. live leases for [`AdminOp::Stats`]).
    pub fn admin(&mut self, node: u16, dir: u16, op: AdminOp, arg: u64) -> Result<i64> {
        self.check_dir(node, dir)?;
        let c = self.run(Ok(Prepared::Op(Op::Rpc(Box::new(RpcOp::Admin {
            node,
            dir,
            req: AdminReq { op, arg, dir },
        })))))?;
        c.result?;
        Ok(c.value as i64)
    }
}

/// The RPC id of a reply (bytes 8..16 of its header; the caller checks the
/// length).
fn reply_id(data: &[u8]) -> u64 {
    u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"))
}
