//! Soft RC queue pairs: the initiator side (posting, completion matching,
//! error and flush semantics) and the receive side.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Buf, BufMut};
use parking_lot::Mutex;

use super::cq::SoftCq;
use super::nic::{NicAddr, NicInner};
use super::shm::{InShm, OutShm};
use super::tcp::{self, Framed};
use super::wire::{
    FrameKind, ReqHeader, ReqOp, RespHeader, MAX_RDMA_LEN, MAX_SEND, REQ_LEN, RESP_LEN,
};
use super::LinkKind;
use crate::fabric::mem::Mr;
use crate::fabric::{
    Access, FabricError, Qp, QpCap, QpEndpoint, QpState, RecvWr, Result, SendWr, Sge, Wc, WcOpcode,
    WcStatus, WrOp,
};

/// The inbound channel attached to a QP by its peer.
pub(crate) enum Inbound {
    Shm(Arc<InShm>),
    Tcp(Arc<super::nic::InTcp>),
}

enum Out {
    Shm(OutShm),
    Tcp(Framed),
}

struct Pending {
    seq: u64,
    wr_id: u64,
    op: WcOpcode,
    signaled: bool,
    remote: bool,
    len: u32,
    status: Option<WcStatus>,
    /// Where READ data / atomic results land (tcp) and the MR kept alive.
    dst: Option<(Arc<Mr>, u64)>,
}

/// The send side of a QP. It lives in its send CQ's list, under the CQ's
/// lock: a poll then needs one lock for the CQ and every QP on it, and a
/// post takes the same lock (see `SoftCq`).
pub(crate) struct SendSide {
    epoch: u8,
    next_seq: u64,
    pending: VecDeque<Pending>,
    out: Option<Box<Out>>,
    remote: Option<QpEndpoint>,
    idle_polls: u32,
    /// Last local MR looked up: (lkey, NIC MR epoch, MR).
    mr_cache: Option<(u32, u64, Arc<Mr>)>,
    /// Index in `pending` where the search for the next open remote request
    /// starts (responses arrive in order, so everything before it is done).
    cursor: usize,
    /// Polls that skipped progress since it last ran.
    skipped: u32,
}

impl SendSide {
    pub(crate) fn new(cap: QpCap) -> SendSide {
        SendSide {
            epoch: 0,
            next_seq: 1,
            pending: VecDeque::with_capacity(cap.max_send_wr as usize),
            out: None,
            remote: None,
            idle_polls: 0,
            cursor: 0,
            mr_cache: None,
            skipped: 0,
        }
    }
}

struct RecvSide {
    posted: VecDeque<(u64, Arc<Mr>, u64, u32)>,
    scratch: Vec<u8>,
}

/// A waiting shm QP runs progress at least every this many polls even when
/// no response is stamped, for its peer liveness check.
const SKIP_LIMIT: u32 = 64;

/// Shared state of one QP.
pub struct QpInner {
    /// Receive WRs posted and not yet consumed (read by pollers without
    /// the receive lock: only then can progress match a message).
    recv_posted: AtomicU32,
    /// Where this QP's send side probably sits in its send CQ's list.
    pub(crate) send_slot: AtomicUsize,
    pub(crate) qpn: u32,
    pub(crate) pd: u32,
    nic: Arc<NicInner>,
    state: AtomicU8,
    access: AtomicU32,
    cap: QpCap,
    send_cq: Arc<SoftCq>,
    recv_cq: Arc<SoftCq>,
    rq: Mutex<RecvSide>,
    pub(crate) inb: Mutex<Option<Inbound>>,
    pub(crate) tcp_msgs: Mutex<VecDeque<Vec<u8>>>,
}

/// Messages a tcp receiver buffers before answering RNR errors.
pub(crate) const MAX_BUFFERED_MSGS: usize = 4096;

impl QpInner {
    pub(crate) fn new(
        qpn: u32,
        pd: u32,
        nic: Arc<NicInner>,
        send_cq: Arc<SoftCq>,
        recv_cq: Arc<SoftCq>,
        cap: QpCap,
    ) -> QpInner {
        QpInner {
            recv_posted: AtomicU32::new(0),
            send_slot: AtomicUsize::new(0),
            qpn,
            pd,
            nic,
            state: AtomicU8::new(QpState::Reset as u8),
            access: AtomicU32::new(
                (Access::REMOTE_READ | Access::REMOTE_WRITE | Access::REMOTE_ATOMIC).0,
            ),
            cap,
            send_cq,
            recv_cq,
            rq: Mutex::new(RecvSide {
                posted: VecDeque::with_capacity(cap.max_recv_wr as usize),
                scratch: vec![0u8; MAX_SEND as usize],
            }),
            inb: Mutex::new(None),
            tcp_msgs: Mutex::new(VecDeque::new()),
        }
    }

    /// Runs `f` on this QP's send side under its send CQ's lock; None once
    /// the QP left the CQ (destroyed).
    fn with_sq<R>(&self, f: impl FnOnce(&mut SendSide) -> R) -> Option<R> {
        let mut g = self.send_cq.lock();
        g.send_side(self).map(f)
    }

    /// True when send progress may have something to do: a completed WR at
    /// the front, a stamped response, a tcp link (its progress is the
    /// socket I/O), or a waiting QP's periodic liveness check.
    #[inline]
    pub(crate) fn send_ready(&self, sq: &mut SendSide) -> bool {
        let Some(front) = sq.pending.front() else {
            return false;
        };
        if front.status.is_some() {
            return true;
        }
        match sq.out.as_deref() {
            Some(Out::Shm(o)) if !o.resp.ready() => {
                sq.skipped += 1;
                if sq.skipped >= SKIP_LIMIT {
                    sq.skipped = 0;
                    return true;
                }
                false
            }
            _ => true,
        }
    }

    /// True when receive WRs are posted (only then can progress match one).
    #[inline]
    pub(crate) fn recv_ready(&self) -> bool {
        self.recv_posted.load(Ordering::Relaxed) > 0
    }

    /// Current state.
    pub(crate) fn state(&self) -> QpState {
        QpState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, s: QpState) {
        self.state.store(s as u8, Ordering::Release);
    }

    /// Remote access rights this QP grants its peer.
    pub(crate) fn access(&self) -> Access {
        Access(self.access.load(Ordering::Relaxed))
    }

    /// Attaches the channel the peer created towards this QP.
    pub(crate) fn attach_inbound(&self, i: Inbound) {
        let old = self.inb.lock().replace(i);
        if let Some(Inbound::Shm(o)) = old {
            o.kill("replaced by a new connection");
        }
        if self.state() == QpState::Reset {
            self.set_state(QpState::Init);
        }
    }

    fn local_mr(&self, sge: &Sge) -> std::result::Result<Arc<Mr>, WcStatus> {
        let mr = self.nic.mr_by_lkey(sge.lkey).ok_or(WcStatus::LocProtErr)?;
        match sge.offset.checked_add(sge.len as u64) {
            Some(end) if end <= mr.len() => Ok(mr),
            _ => Err(WcStatus::LocProtErr),
        }
    }

    /// Marks every open request from index `from` as flushed.
    fn flush_from(sq: &mut SendSide, from: usize, status: WcStatus) {
        for p in sq.pending.iter_mut().skip(from) {
            if p.status.is_none() {
                p.status = Some(status);
            }
        }
    }

    fn fail(&self, sq: &mut SendSide, idx: usize, status: WcStatus) {
        if let Some(p) = sq.pending.get_mut(idx) {
            p.status = Some(status);
        }
        self.set_state(QpState::Error);
        Self::flush_from(sq, idx + 1, WcStatus::WrFlushErr);
    }

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

    fn post_send_impl(&self, wrs: &[SendWr]) -> Result<()> {
        self.with_sq(|sq| self.post_locked(sq, wrs))
            .unwrap_or(Err(FabricError::BadState {
                qpn: self.qpn,
                op: "post_send",
                state: QpState::Error,
            }))
    }

    fn post_locked(&self, sq: &mut SendSide, wrs: &[SendWr]) -> Result<()> {
        let mut res = Ok(());
        for wr in wrs {
            if let Err(e) = self.post_one(sq, wr) {
                res = Err(e);
                break;
            }
        }
        match sq.out.as_deref_mut() {
            Some(Out::Shm(o)) => {
                o.req.publish();
                o.kick();
            }
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

    /// Applies one response to the first open remote request.
    fn apply(&self, sq: &mut SendSide, r: &RespHeader, payload: Option<&[u8]>) {
        let from = sq.cursor.min(sq.pending.len());
        let Some(i) = sq
            .pending
            .range(from..)
            .position(|p| p.remote && p.status.is_none())
            .map(|k| k + from)
        else {
            sq.cursor = sq.pending.len();
            return; // late response of a flushed request
        };
        sq.cursor = i;
        let p = &sq.pending[i];
        if r.seq < p.seq {
            return; // stale (before a reset)
        }
        if r.seq > p.seq || r.epoch != sq.epoch {
            self.fail(sq, i, WcStatus::BadRespErr);
            return;
        }
        let mut status = WcStatus::from_u8(r.status);
        if status.is_ok() {
            if let Some((mr, off)) = &p.dst {
                let res = match p.op {
                    WcOpcode::Read => match payload {
                        Some(d) if d.len() == p.len as usize => mr.write(*off, d),
                        _ => Err(FabricError::Invalid("read payload length".into())),
                    },
                    WcOpcode::CompSwap | WcOpcode::FetchAdd => {
                        mr.write(*off, &r.value.to_le_bytes())
                    }
                    _ => Ok(()),
                };
                if res.is_err() {
                    status = WcStatus::BadRespErr;
                }
            }
        }
        if status.is_ok() {
            let p = &mut sq.pending[i];
            p.status = Some(status);
            p.dst = None;
        } else {
            self.fail(sq, i, status);
        }
    }

    /// Drains responses and emits completions in order (called by the send
    /// CQ's poll, which holds the lock `sq` lives under).
    pub(crate) fn progress_send(&self, sq: &mut SendSide, out: &mut [Wc]) -> usize {
        let mut got = 0usize;
        let mut link = sq.out.take();
        match link.as_deref_mut() {
            Some(Out::Shm(o)) => {
                let mut bad = false;
                loop {
                    match o.resp.available() {
                        Ok(0) => break,
                        Ok(n) => {
                            for _ in 0..n {
                                let mut b = [0u8; RESP_LEN];
                                o.resp.pop_prefix::<{ RESP_LEN - 8 }, RESP_LEN>(&mut b);
                                self.apply(sq, &RespHeader::decode(&b), None);
                                got += 1;
                            }
                        }
                        Err(_) => {
                            bad = true;
                            break;
                        }
                    }
                }
                o.resp.release();
                let open = got == 0
                    && sq
                        .pending
                        .range(sq.cursor.min(sq.pending.len())..)
                        .any(|p| p.remote && p.status.is_none());
                if bad {
                    if let Some(i) = sq.pending.iter().position(|p| p.status.is_none()) {
                        self.fail(sq, i, WcStatus::BadRespErr);
                    }
                } else if got == 0 && open {
                    sq.idle_polls += 1;
                    if sq.idle_polls % 1024 == 0 && !o.alive() {
                        if let Some(i) = sq.pending.iter().position(|p| p.status.is_none()) {
                            self.fail(sq, i, WcStatus::RetryExcErr);
                        }
                    }
                } else {
                    sq.idle_polls = 0;
                }
            }
            Some(Out::Tcp(f)) => {
                let _ = f.flush();
                let _ = f.read_some();
                loop {
                    match f.next_frame(FrameKind::Resp) {
                        Ok(Some(fr)) if fr.kind == FrameKind::Resp => {
                            let hb: [u8; RESP_LEN] = fr.hdr[..RESP_LEN].try_into().expect("32");
                            let r = RespHeader::decode(&hb);
                            let payload = f.payload(&fr).to_vec();
                            self.apply(sq, &r, Some(&payload));
                        }
                        Ok(None) => break,
                        Ok(Some(_)) | Err(_) => {
                            f.dead = true;
                            break;
                        }
                    }
                }
                if f.dead {
                    if let Some(i) = sq.pending.iter().position(|p| p.status.is_none()) {
                        self.fail(sq, i, WcStatus::RetryExcErr);
                    }
                }
            }
            None => {}
        }
        sq.out = link;
        let mut n = 0;
        while n < out.len() {
            match sq.pending.front() {
                Some(p) if p.status.is_some() => {
                    let p = sq.pending.pop_front().expect("front");
                    sq.cursor = sq.cursor.saturating_sub(1);
                    let st = p.status.expect("done");
                    if p.signaled || !st.is_ok() {
                        out[n] = Wc {
                            wr_id: p.wr_id,
                            status: st,
                            opcode: p.op,
                            byte_len: if st.is_ok() { p.len } else { 0 },
                            qpn: self.qpn,
                        };
                        n += 1;
                    }
                }
                _ => break,
            }
        }
        n
    }

    /// Matches incoming messages with posted receives.
    pub(crate) fn progress_recv(&self, out: &mut [Wc]) -> usize {
        let Some(mut rq) = self.rq.try_lock() else {
            return 0;
        };
        if rq.posted.is_empty() || out.is_empty() {
            return 0;
        }
        let inb = match &*self.inb.lock() {
            Some(Inbound::Shm(s)) => Some(s.clone()),
            _ => None,
        };
        let mut n = 0;
        if let Some(ch) = inb {
            let mut c = ch.msg.lock();
            while n < out.len() && !rq.posted.is_empty() {
                match c.available() {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => {
                        ch.kill("corrupt message ring");
                        break;
                    }
                }
                let mut lb = [0u8; 4];
                c.peek_into(0, &mut lb);
                let len = (&lb[..]).get_u32_le();
                if len > MAX_SEND {
                    ch.kill("message longer than the maximum");
                    break;
                }
                let (wr_id, mr, off, cap) = rq.posted.pop_front().expect("posted");
                let status = if len > cap {
                    WcStatus::LocLenErr
                } else {
                    let scratch = &mut rq.scratch[..len as usize];
                    c.peek_into(16, scratch);
                    if mr.write(off, scratch).is_ok() {
                        WcStatus::Success
                    } else {
                        WcStatus::LocProtErr
                    }
                };
                let mut skip = [0u8; 0];
                c.pop_into(&mut skip);
                out[n] = Wc {
                    wr_id,
                    status,
                    opcode: WcOpcode::Recv,
                    byte_len: len,
                    qpn: self.qpn,
                };
                n += 1;
            }
            c.release();
        }
        let mut msgs = self.tcp_msgs.lock();
        while n < out.len() && !rq.posted.is_empty() {
            let Some(m) = msgs.pop_front() else { break };
            let (wr_id, mr, off, cap) = rq.posted.pop_front().expect("posted");
            let status = if m.len() as u64 > cap as u64 {
                WcStatus::LocLenErr
            } else if mr.write(off, &m).is_ok() {
                WcStatus::Success
            } else {
                WcStatus::LocProtErr
            };
            out[n] = Wc {
                wr_id,
                status,
                opcode: WcOpcode::Recv,
                byte_len: m.len() as u32,
                qpn: self.qpn,
            };
            n += 1;
        }
        self.recv_posted
            .store(rq.posted.len() as u32, Ordering::Relaxed);
        n
    }

    fn connect_impl(&self, remote: &QpEndpoint) -> Result<()> {
        let keep = self
            .with_sq(|sq| {
                let alive = match sq.out.as_deref() {
                    Some(Out::Shm(o)) => o.alive(),
                    Some(Out::Tcp(f)) => !f.dead,
                    None => false,
                };
                alive && sq.remote.as_ref() == Some(remote)
            })
            .ok_or(FabricError::BadState {
                qpn: self.qpn,
                op: "connect",
                state: QpState::Error,
            })?;
        if !keep {
            // The new link is built without the CQ lock (a handshake with
            // the peer NIC), then swapped in; the old one is closed after.
            let addr = NicAddr::decode(&remote.nic)?;
            let out = match self.nic.link {
                LinkKind::Shm => {
                    let name = addr.shm.ok_or_else(|| {
                        FabricError::Invalid("remote NIC has no shm address".into())
                    })?;
                    Out::Shm(OutShm::connect(&name, self.qpn, remote.qpn)?)
                }
                LinkKind::Tcp => {
                    let a = addr.tcp.ok_or_else(|| {
                        FabricError::Invalid("remote NIC has no tcp address".into())
                    })?;
                    Out::Tcp(tcp::connect(&a, self.qpn, remote.qpn)?)
                }
            };
            let old = self.with_sq(|sq| {
                sq.remote = Some(remote.clone());
                sq.skipped = 0;
                sq.out.replace(Box::new(out))
            });
            drop(old);
        }
        self.set_state(QpState::Rts);
        Ok(())
    }

    fn reset_impl(&self) {
        self.with_sq(|sq| {
            Self::flush_from(sq, 0, WcStatus::WrFlushErr);
            sq.epoch = sq.epoch.wrapping_add(1);
        });
        self.set_state(QpState::Reset);
    }
}

/// The user's handle of a soft QP.
pub struct SoftQp {
    pub(crate) inner: Arc<QpInner>,
}

impl Drop for SoftQp {
    fn drop(&mut self) {
        let q = &self.inner;
        q.nic.qps.write().remove(&q.qpn);
        // The send side (and its outbound link) leaves with the CQ entry;
        // it is closed here, outside the CQ's lock.
        let sq = q.send_cq.detach(q);
        q.recv_cq.detach(q);
        if let Some(i) = q.inb.lock().take() {
            match i {
                Inbound::Shm(s) => s.kill("QP destroyed"),
                Inbound::Tcp(t) => t.kill(),
            }
        }
        drop(sq);
    }
}

impl Qp for SoftQp {
    fn qpn(&self) -> u32 {
        self.inner.qpn
    }
    fn state(&self) -> QpState {
        self.inner.state()
    }
    fn endpoint(&self) -> QpEndpoint {
        QpEndpoint {
            nic: self.inner.nic.addr.encode(),
            qpn: self.inner.qpn,
        }
    }
    fn connect(&self, remote: &QpEndpoint) -> Result<()> {
        self.inner.connect_impl(remote)
    }
    fn reset(&self) -> Result<()> {
        self.inner.reset_impl();
        Ok(())
    }
    fn modify_access(&self, access: Access) -> Result<()> {
        self.inner.access.store(access.0, Ordering::Relaxed);
        Ok(())
    }
    fn post_send(&self, wrs: &[SendWr]) -> Result<()> {
        self.inner.post_send_impl(wrs)
    }
    fn post_recv(&self, wrs: &[RecvWr]) -> Result<()> {
        let q = &self.inner;
        let mut rq = q.rq.lock();
        for wr in wrs {
            if rq.posted.len() >= q.cap.max_recv_wr as usize {
                return Err(FabricError::QueueFull {
                    qpn: q.qpn,
                    which: "recv",
                    depth: q.cap.max_recv_wr,
                });
            }
            let mr = q.local_mr(&wr.local).map_err(|_| {
                FabricError::Invalid(format!(
                    "post_recv: lkey {:#x} [{}, +{}) is not a registered range",
                    wr.local.lkey, wr.local.offset, wr.local.len
                ))
            })?;
            rq.posted
                .push_back((wr.wr_id, mr, wr.local.offset, wr.local.len));
            q.recv_posted
                .store(rq.posted.len() as u32, Ordering::Relaxed);
        }
        Ok(())
    }
}
