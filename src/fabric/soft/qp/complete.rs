//! Completion: responses matched in order to the requests they answer,
//! completions emitted in posting order, incoming messages matched with
//! posted receives.

use std::sync::atomic::Ordering;

use bytes::Buf;

use super::{Inbound, Out, QpInner, SendSide};
use crate::fabric::soft::wire::{FrameKind, RespHeader, MAX_SEND, RESP_LEN};
use crate::fabric::{FabricError, Wc, WcOpcode, WcStatus};

impl QpInner {
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
        let Some(mut guard) = self.rq.try_lock() else {
            return 0;
        };
        let rq = &mut *guard;
        if rq.posted.is_empty() || out.is_empty() {
            return 0;
        }
        let ver = self.inb_ver.load(Ordering::Acquire);
        if rq.chan.0 != ver {
            rq.chan = (
                ver,
                match &*self.inb.lock() {
                    Some(Inbound::Shm(s)) => Some(s.clone()),
                    _ => None,
                },
            );
        }
        let mut n = 0;
        // Only a stamped slot at the consumer's head means a message: a
        // poll that finds none takes no lock.
        let inb = rq
            .chan
            .1
            .as_ref()
            .filter(|ch| ch.msg_peek.ready(ch.msg_head.load(Ordering::Acquire)));
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
            ch.msg_head.store(c.head(), Ordering::Release);
        }
        if self.tcp_queued.load(Ordering::Acquire) == 0 {
            self.recv_posted
                .store(rq.posted.len() as u32, Ordering::Relaxed);
            return n;
        }
        let mut msgs = self.tcp_msgs.lock();
        while n < out.len() && !rq.posted.is_empty() {
            let Some(m) = msgs.pop_front() else { break };
            self.tcp_queued.fetch_sub(1, Ordering::AcqRel);
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
}
