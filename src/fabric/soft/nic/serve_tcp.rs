//! The tcp responder: one thread waits on epoll for every inbound tcp
//! channel (reading the busiest one directly while it stays busy), checks
//! frames and executes requests.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::sys::{epoll_ctl, STOP_TOKEN};
use super::NicInner;
use crate::fabric::soft::qp::{QpInner, MAX_BUFFERED_MSGS};
use crate::fabric::soft::responder;
use crate::fabric::soft::tcp::Framed;
use crate::fabric::soft::wire::{FrameKind, ReqHeader, ReqOp, RespHeader};
use crate::fabric::{QpState, WcStatus};

/// Target side of a tcp channel.
pub struct InTcp {
    st: Mutex<InTcpState>,
    dead: AtomicBool,
    target: std::sync::Weak<QpInner>,
    token: u64,
    fd: RawFd,
}

struct InTcpState {
    f: Framed,
    err_epoch: Option<u8>,
    want_out: bool,
}

impl InTcp {
    pub(crate) fn token(&self) -> u64 {
        self.token
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd
    }

    /// True until the channel died or was closed.
    pub fn alive(&self) -> bool {
        !self.dead.load(Ordering::Acquire)
    }

    /// Closes the channel (the initiator sees EOF).
    pub fn kill(&self) {
        if !self.dead.swap(true, Ordering::AcqRel) {
            // SAFETY: shutdown on a socket fd that `st.f.sock` keeps open.
            unsafe {
                libc::shutdown(self.fd, libc::SHUT_RDWR);
            }
        }
    }
}

impl InTcp {
    pub(super) fn new(f: Framed, target: std::sync::Weak<QpInner>, token: u64, fd: RawFd) -> InTcp {
        InTcp {
            st: Mutex::new(InTcpState {
                f,
                err_epoch: None,
                want_out: false,
            }),
            dead: AtomicBool::new(false),
            target,
            token,
            fd,
        }
    }
}

impl NicInner {
    /// Serves a tcp channel (ready by epoll, or polled directly while it is
    /// the hot one); returns true when it read new input.
    fn serve_tcp(&self, ch: &InTcp) -> bool {
        let Some(q) = ch.target.upgrade() else {
            ch.kill();
            return false;
        };
        let t = self.target(&q);
        let mut st = ch.st.lock();
        let st = &mut *st;
        const BACKPRESSURE: usize = 8 << 20;
        if st.f.flush().is_err() {
            ch.kill();
            return false;
        }
        let mut input = false;
        if st.f.pending_out() < BACKPRESSURE {
            match st.f.read_some() {
                Ok(n) => input = n > 0,
                Err(_) if st.f.dead => input = true,
                Err(_) => {
                    ch.kill();
                    return false;
                }
            }
        }
        while st.f.pending_out() < BACKPRESSURE {
            let fr = match st.f.next_frame(FrameKind::Req) {
                Ok(Some(fr)) if fr.kind == FrameKind::Req => fr,
                Ok(None) => break,
                Ok(Some(_)) | Err(_) => {
                    tracing::warn!(qpn = t.qpn, "malformed tcp frame: closing the channel");
                    ch.kill();
                    return input;
                }
            };
            let h = match ReqHeader::decode(&fr.hdr) {
                Ok(h) => h,
                Err((e, seq, epoch)) => {
                    tracing::debug!(qpn = t.qpn, "bad request header: {e}");
                    let r = RespHeader {
                        seq,
                        status: WcStatus::RemInvReqErr as u8,
                        op: 0,
                        epoch,
                        byte_len: 0,
                        value: 0,
                    };
                    st.f.push_resp(&r, 0);
                    st.err_epoch = Some(epoch);
                    continue;
                }
            };
            if st.err_epoch == Some(h.epoch) {
                continue;
            }
            st.err_epoch = None;
            let plen = fr.payload.len();
            let expect = match h.op {
                ReqOp::Write | ReqOp::Send => h.len as usize,
                _ => 0,
            };
            if plen != expect {
                tracing::warn!(
                    qpn = t.qpn,
                    "frame payload {plen} B, header says {expect}: closing"
                );
                ch.kill();
                return input;
            }
            let mut r = RespHeader {
                seq: h.seq,
                status: WcStatus::Success as u8,
                op: h.op as u8,
                epoch: h.epoch,
                byte_len: h.len,
                value: 0,
            };
            let checked = if q.state() == QpState::Reset {
                Err(WcStatus::RemInvReqErr)
            } else if h.op == ReqOp::Send {
                Ok(std::ptr::null_mut())
            } else {
                responder::check(&self.keys, &t, &h)
            };
            match checked {
                Err(s) => {
                    r.status = s as u8;
                    r.byte_len = 0;
                    st.err_epoch = Some(h.epoch);
                    st.f.push_resp(&r, 0);
                }
                Ok(p) => match h.op {
                    ReqOp::Read => {
                        let dst = st.f.push_resp(&r, h.len as usize);
                        // SAFETY: `p` is valid for h.len bytes (key check),
                        // dst is a fresh buffer of h.len bytes.
                        unsafe { std::ptr::copy(p, dst.as_mut_ptr(), h.len as usize) };
                    }
                    ReqOp::Write => {
                        let src = &st.f.payload(&fr)[..h.len as usize];
                        // SAFETY: `p` is valid for h.len bytes (key check).
                        unsafe { std::ptr::copy(src.as_ptr(), p, src.len()) };
                        st.f.push_resp(&r, 0);
                    }
                    ReqOp::Cas | ReqOp::Faa => {
                        r.value = responder::atomic(p, &h);
                        st.f.push_resp(&r, 0);
                    }
                    ReqOp::Send => {
                        let mut m = q.tcp_msgs.lock();
                        if m.len() >= MAX_BUFFERED_MSGS {
                            r.status = WcStatus::RnrRetryExcErr as u8;
                            st.err_epoch = Some(h.epoch);
                        } else {
                            m.push_back(st.f.payload(&fr).to_vec());
                        }
                        st.f.push_resp(&r, 0);
                    }
                },
            }
        }
        if st.f.flush().is_err() || st.f.dead {
            ch.kill();
            return input;
        }
        let want_out = st.f.pending_out() > 0;
        if want_out != st.want_out {
            st.want_out = want_out;
            let ev = if want_out {
                libc::EPOLLOUT as u32
            } else {
                libc::EPOLLIN as u32
            };
            let _ = epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_MOD,
                ch.fd,
                ev,
                ch.token,
            );
        }
        input
    }
}

pub(super) fn tcp_loop(nic: Arc<NicInner>) {
    let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
    // Adaptive polling, as on the shm link: after work, poll the sockets
    // without sleeping for SPIN, then yield the core between polls until
    // YIELD, and only then block in epoll_wait (a wake-up costs tens of
    // microseconds on a VM; a busy NIC never pays it).
    const SPIN: Duration = Duration::from_micros(30);
    const YIELD: Duration = Duration::from_micros(300);
    // While polling, the channel served last is read directly (one system
    // call finds and fetches its next request, where epoll_wait and then
    // read take two on the critical path); epoll_wait runs every
    // HOT_EVERY-th pass for the other channels.
    const HOT_EVERY: u32 = 8;
    let mut hot: Option<(u64, Arc<InTcp>)> = None;
    let mut passes = 0u32;
    let reap = |token: u64, ch: &InTcp| {
        if ch.dead.load(Ordering::Acquire) {
            let _ = epoll_ctl(nic.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, ch.fd, 0, 0);
            nic.in_tcp.lock().remove(&token);
            true
        } else {
            false
        }
    };
    let mut idle_since: Option<Instant> = None;
    while !nic.stop.load(Ordering::Acquire) {
        let timeout = match idle_since.map(|t| t.elapsed()) {
            Some(idle) if idle >= YIELD => 200,
            Some(idle) if idle >= SPIN => {
                std::thread::yield_now();
                0
            }
            _ => 0,
        };
        if timeout == 0 {
            // Every HOT_EVERY-th pass goes to epoll even while the hot
            // channel is busy, so it cannot starve the others.
            passes = passes.wrapping_add(1);
            let mut input = false;
            if let Some((token, ch)) = &hot {
                input = nic.serve_tcp(ch);
                if reap(*token, ch) {
                    hot = None;
                }
            }
            if hot.is_some() && passes % HOT_EVERY != 0 {
                if input {
                    idle_since = None;
                } else {
                    idle_since.get_or_insert_with(Instant::now);
                }
                continue;
            }
        }
        // SAFETY: evs is a valid buffer of 64 events.
        let n = unsafe { libc::epoll_wait(nic.epoll.as_raw_fd(), evs.as_mut_ptr(), 64, timeout) };
        if n <= 0 {
            if timeout > 0 {
                // Woken by the timeout with nothing to do: stay parked.
                idle_since = Some(Instant::now() - YIELD);
            } else {
                idle_since.get_or_insert_with(Instant::now);
            }
            continue;
        }
        idle_since = None;
        for ev in &evs[..n as usize] {
            let token = ev.u64;
            if token == STOP_TOKEN {
                continue;
            }
            let ch = nic.in_tcp.lock().get(&token).cloned();
            let Some(ch) = ch else { continue };
            nic.serve_tcp(&ch);
            if reap(token, &ch) {
                if hot.as_ref().is_some_and(|(t, _)| *t == token) {
                    hot = None;
                }
            } else {
                hot = Some((token, ch));
            }
        }
    }
}
