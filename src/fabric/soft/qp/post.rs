//! Posting: send work requests start on the link (or complete at once for
//! local operations and early failures) under the send CQ's lock.

use std::sync::atomic::Ordering;

use bytes::BufMut;

use super::{Out, Pending, QpInner, SendSide};
use crate::fabric::soft::wire::{ReqHeader, ReqOp, MAX_RDMA_LEN, MAX_SEND, REQ_LEN};
use crate::fabric::{FabricError, QpState, Result, SendWr, Sge, WcOpcode, WcStatus, WrOp};

impl QpInner {
    fn post_one(&self, sq: &mut SendSide, wr: &SendWr) -> Result<()> {
        if sq.pending.len() >= self.cap.max_send_wr as usize {
            return Err(FabricError::QueueFull {
                qpn: self.qpn,
                which: "send",
                depth: self.cap.max_send_wr,
            });
        }
        let state = self.state();
        let (op, len, remote) = match wr.op {
            WrOp::Read { local, .. } => (WcOpcode::Read, local.len, true),
            WrOp::Write { local, .. } => (WcOpcode::Write, local.len, true),
            WrOp::Cas { .. } => (WcOpcode::CompSwap, 8, true),
            WrOp::Faa { .. } => (WcOpcode::FetchAdd, 8, true),
            WrOp::Send { local } => (WcOpcode::Send, local.len, false),
            WrOp::Bind { .. } => (WcOpcode::BindMw, 0, false),
            WrOp::Invalidate { .. } => (WcOpcode::LocalInv, 0, false),
        };
        let seq = sq.next_seq;
        sq.next_seq += 1;
        let mut p = Pending {
            seq,
            wr_id: wr.wr_id,
            op,
            signaled: wr.signaled,
            remote,
            len,
            status: None,
            dst: None,
        };
        match state {
            QpState::Rts => {}
            QpState::Error => {
                p.status = Some(WcStatus::WrFlushErr);
                sq.pending.push_back(p);
                return Ok(());
            }
            s => {
                return Err(FabricError::BadState {
                    qpn: self.qpn,
                    op: "post_send",
                    state: s,
                })
            }
        }
        let idx = sq.pending.len();
        let status = self.start(sq, wr, &mut p);
        let ok = status.is_none() || status == Some(WcStatus::Success);
        if !remote && status.is_none() {
            p.status = Some(WcStatus::Success);
        } else if !remote || !ok {
            p.status = status;
        }
        sq.pending.push_back(p);
        if !ok {
            let s = sq.pending[idx].status.unwrap_or(WcStatus::GeneralErr);
            self.fail(sq, idx, s);
        }
        Ok(())
    }

    /// Starts a work request. Returns Some(status) when it completed (local
    /// operations, or failures detected before anything was sent).
    fn start(&self, sq: &mut SendSide, wr: &SendWr, p: &mut Pending) -> Option<WcStatus> {
        let keys = &self.nic.keys;
        let (rop, local, raddr, rkey, a0, a1) = match wr.op {
            WrOp::Bind {
                mw,
                lkey,
                offset,
                len,
                access,
            } => {
                let Some(mr) = self.nic.mr_by_lkey(lkey) else {
                    return Some(WcStatus::MwBindErr);
                };
                let Some(addr) = mr.addr().checked_add(offset) else {
                    return Some(WcStatus::MwBindErr);
                };
                return match keys.bind_mw(mw, self.pd, self.qpn, lkey, addr, len, access) {
                    Ok(_) => None,
                    Err(e) => {
                        tracing::debug!(qpn = self.qpn, "bind failed: {e}");
                        Some(WcStatus::MwBindErr)
                    }
                };
            }
            WrOp::Invalidate { mw } => {
                return match keys.invalidate_mw(mw) {
                    Ok(_) => None,
                    Err(_) => Some(WcStatus::MwBindErr),
                };
            }
            WrOp::Send { local } => return self.start_send(sq, local, p),
            WrOp::Read { local, raddr, rkey } => (ReqOp::Read, local, raddr, rkey, 0, 0),
            WrOp::Write { local, raddr, rkey } => (ReqOp::Write, local, raddr, rkey, 0, 0),
            WrOp::Cas {
                local,
                raddr,
                rkey,
                compare,
                swap,
            } => (ReqOp::Cas, local, raddr, rkey, compare, swap),
            WrOp::Faa {
                local,
                raddr,
                rkey,
                add,
            } => (ReqOp::Faa, local, raddr, rkey, add, 0),
        };
        if matches!(rop, ReqOp::Cas | ReqOp::Faa) && local.len != 8 {
            return Some(WcStatus::LocLenErr);
        }
        if local.len > MAX_RDMA_LEN {
            return Some(WcStatus::LocLenErr);
        }
        let epoch = self.nic.mr_epoch.load(Ordering::Acquire);
        // The cache is borrowed, not cloned: a reference count round trip
        // per post is a locked instruction on the critical path.
        if !matches!(&sq.mr_cache, Some((k, e, _)) if *k == local.lkey && *e == epoch) {
            match self.nic.mr_by_lkey(local.lkey) {
                Some(m) => sq.mr_cache = Some((local.lkey, epoch, m)),
                None => return Some(WcStatus::LocProtErr),
            }
        }
        let Some((_, _, mr)) = &sq.mr_cache else {
            return Some(WcStatus::LocProtErr);
        };
        match local.offset.checked_add(local.len as u64) {
            Some(end) if end <= mr.len() => {}
            _ => return Some(WcStatus::LocProtErr),
        }
        let mut h = ReqHeader {
            op: rop,
            epoch: sq.epoch,
            len: local.len,
            seq: p.seq,
            raddr,
            rkey,
            lblock: 0,
            loff: 0,
            arg0: a0,
            arg1: a1,
        };
        match sq.out.as_deref_mut() {
            Some(Out::Shm(o)) => {
                if let Err(e) = o.share(mr.block()) {
                    tracing::warn!(qpn = self.qpn, "{e}");
                    return Some(WcStatus::RetryExcErr);
                }
                h.lblock = mr.block().id();
                h.loff = mr.block_offset() + local.offset;
                match o.req.free() {
                    Ok(0) => return Some(WcStatus::GeneralErr),
                    Ok(_) => {}
                    Err(_) => return Some(WcStatus::RetryExcErr),
                }
                let mut hb = [0u8; 64];
                h.encode(&mut hb);
                o.req.write_prefix::<{ REQ_LEN - 8 }, REQ_LEN>(&hb);
            }
            Some(Out::Tcp(f)) => {
                if rop == ReqOp::Write {
                    let mut tmp = vec![0u8; local.len as usize];
                    if mr.read(local.offset, &mut tmp).is_err() {
                        return Some(WcStatus::LocProtErr);
                    }
                    f.push_req(&h, &tmp);
                } else {
                    f.push_req(&h, &[]);
                }
                if rop != ReqOp::Write {
                    p.dst = Some((mr.clone(), local.offset));
                }
            }
            None => return Some(WcStatus::RetryExcErr),
        }
        None
    }

    fn start_send(&self, sq: &mut SendSide, local: Sge, p: &mut Pending) -> Option<WcStatus> {
        if local.len > MAX_SEND {
            return Some(WcStatus::LocLenErr);
        }
        let mr = match self.local_mr(&local) {
            Ok(m) => m,
            Err(s) => return Some(s),
        };
        match sq.out.as_deref_mut() {
            Some(Out::Shm(o)) => {
                match o.msg.free() {
                    Ok(0) => return Some(WcStatus::RnrRetryExcErr),
                    Ok(_) => {}
                    Err(_) => return Some(WcStatus::RetryExcErr),
                }
                let mut bad = false;
                o.msg.write_with(|s| {
                    let mut hdr = &mut s[..16];
                    hdr.put_u32_le(local.len);
                    hdr.put_bytes(0, 12);
                    bad = mr
                        .read(local.offset, &mut s[16..16 + local.len as usize])
                        .is_err();
                });
                o.msg.publish();
                if bad {
                    return Some(WcStatus::LocProtErr);
                }
                None
            }
            Some(Out::Tcp(f)) => {
                let mut tmp = vec![0u8; local.len as usize];
                if mr.read(local.offset, &mut tmp).is_err() {
                    return Some(WcStatus::LocProtErr);
                }
                let h = ReqHeader {
                    op: ReqOp::Send,
                    epoch: sq.epoch,
                    len: local.len,
                    seq: p.seq,
                    raddr: 0,
                    rkey: 0,
                    lblock: 0,
                    loff: 0,
                    arg0: 0,
                    arg1: 0,
                };
                f.push_req(&h, &tmp);
                p.remote = true;
                None
            }
            None => Some(WcStatus::RetryExcErr),
        }
    }

    pub(super) fn post_send_impl(&self, wrs: &[SendWr]) -> Result<()> {
        self.with_sq(|sq| self.post_locked(sq, wrs))
            .unwrap_or(Err(FabricError::BadState {
                qpn: self.qpn,
                op: "post_send",
                state: QpState::Error,
            }))
    }

    fn post_locked(&self, sq: &mut SendSide, wrs: &[SendWr]) -> Result<()> {
        let reqs = match sq.out.as_deref() {
            Some(Out::Shm(o)) => o.req.written(),
            _ => 0,
        };
        let mut res = Ok(());
        for wr in wrs {
            if let Err(e) = self.post_one(sq, wr) {
                res = Err(e);
                break;
            }
        }
        match sq.out.as_deref_mut() {
            // Only one-sided requests go to the target's responder; a SEND
            // goes to the message ring, which the receiving QP's own poller
            // drains: waking a parked responder for it (which then spins
            // and yields for a while) only takes a core from the threads
            // that do the work.
            Some(Out::Shm(o)) if o.req.written() != reqs => {
                o.req.publish();
                o.kick();
            }
            Some(Out::Shm(_)) => {}
            Some(Out::Tcp(f)) => {
                let broken = f.flush().is_err();
                let first_open = sq.pending.iter().position(|p| p.status.is_none());
                if let (true, Some(i)) = (broken, first_open) {
                    self.fail(sq, i, WcStatus::RetryExcErr);
                }
            }
            None => {}
        }
        res
    }
}
