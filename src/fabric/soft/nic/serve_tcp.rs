//! The tcp responder: one thread waits on epoll for every inbound tcp
//! channel (reading the busy one directly while no other is active), checks
//! frames and executes requests.
//!
//! Bounds against a hostile peer: each visit serves at most a budget of
//! requests and bytes of one channel, then moves on (a channel with frames
//! left is queued for the next pass), so a flooding peer gets its share of
//! this thread and no more; a channel's buffers grow with the bytes that
//! arrived up to one maximal frame, and all channels together up to the
//! NIC's `tcp_buffer_total`, past which a channel is read only into the
//! buffer it has and, once that is full, not at all until memory frees.
//! A channel that holds buffered input (an unfinished frame, or frames it
//! cannot be served yet) while not one new byte arrives for the NIC's
//! `tcp_stall_timeout` is closed and its buffers freed: the loop scans for
//! such channels about every [`STALL_SCAN`], comparing each one's byte
//! count between scans, so the data path reads no clock for it.
//! After a refusal the rest of the refused epoch is skipped (those frames
//! were posted before the requester learnt of it, as RC flushes them); a
//! requester can have at most its send queue's depth of them in flight,
//! so a channel that sends more than [`SKIP_LIMIT`] frames into a refused
//! epoch is flooding and is closed: skipping costs this host the socket
//! reads, and a flooder would otherwise keep a core busy with them. Its
//! peer (the NIC key its hello proved) gets no new channel for 100 ms,
//! doubling with each further flood up to 10 s (its hellos are held
//! unanswered until the hello deadline), so re-authenticating does not buy
//! it another flood at once.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::sys::{epoll_ctl, STOP_TOKEN};
use super::{HookCache, NicInner};
use crate::fabric::soft::auth::KEY_LEN;
use crate::fabric::soft::qp::{QpInner, MAX_BUFFERED_MSGS};
use crate::fabric::soft::responder;
use crate::fabric::soft::tcp::Framed;
use crate::fabric::soft::wire::{FrameKind, ReqHeader, ReqOp, RespHeader, MAX_FRAME};
use crate::fabric::{QpState, WcStatus};

/// Target side of a tcp channel.
pub struct InTcp {
    st: Mutex<InTcpState>,
    dead: AtomicBool,
    target: std::sync::Weak<QpInner>,
    /// The peer NIC's public key (authenticated by its hello).
    peer: [u8; KEY_LEN],
    token: u64,
    fd: RawFd,
    /// The responder pass that served this channel last (responder only).
    pass: AtomicU32,
}

struct InTcpState {
    f: Framed,
    err_epoch: Option<u8>,
    /// Frames skipped in a row in the refused epoch.
    skipped: u32,
    /// The epoll events registered for the socket now.
    interest: u32,
    /// Buffer bytes of this channel counted in the NIC's total.
    counted: usize,
    /// While input is buffered: the byte count a stall scan saw and when
    /// it first saw it (see `NicInner::close_stalled`).
    watch: Option<(u64, Instant)>,
}

/// What one visit to a channel may serve: requests, payload bytes (in and
/// out, past the first request, which always runs) and bytes read from the
/// socket.
#[derive(Clone, Copy)]
struct Budget {
    reqs: usize,
    bytes: usize,
    read: usize,
}

/// Frames a channel may send into an epoch its QP refused before it is
/// closed as flooding: twice the deepest send queue a soft QP can have
/// ([`shm::REQ_SLOTS`](crate::fabric::soft::shm::REQ_SLOTS)), so an honest
/// requester, whose QP errs at the refusal and flushes everything after
/// it locally, never comes near.
pub(crate) const SKIP_LIMIT: u32 = 2 * crate::fabric::soft::shm::REQ_SLOTS;

/// While other channels are active: small visits, so that a request of
/// another channel waits for at most one short visit of a flooding one.
const CONTENDED: Budget = Budget {
    reqs: 16,
    bytes: 16 << 10,
    read: 16 << 10,
};
/// A single busy channel (the hot fast path): large visits, few syscalls.
const ALONE: Budget = Budget {
    reqs: 256,
    bytes: 256 << 10,
    read: 256 << 10,
};
/// Output bytes a channel may have pending before it is neither read nor
/// served until the peer takes them.
const OUT_CAP: usize = 8 << 20;
/// Largest input buffer of one channel: one maximal frame and some slack.
const IN_CAP: usize = MAX_FRAME + (64 << 10);
/// How often the loop looks for channels whose buffered input stalled.
pub(super) const STALL_SCAN: Duration = Duration::from_millis(100);

/// What one visit to a channel did.
#[derive(Clone, Copy, Default)]
struct Visit {
    /// New input was read.
    input: bool,
    /// The budget ran out with frames left: serve it again soon.
    more: bool,
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
    pub(super) fn new(
        f: Framed,
        target: std::sync::Weak<QpInner>,
        peer: [u8; KEY_LEN],
        token: u64,
        fd: RawFd,
    ) -> InTcp {
        InTcp {
            st: Mutex::new(InTcpState {
                f,
                err_epoch: None,
                skipped: 0,
                interest: libc::EPOLLIN as u32,
                counted: 0,
                watch: None,
            }),
            dead: AtomicBool::new(false),
            target,
            peer,
            token,
            fd,
            pass: AtomicU32::new(0),
        }
    }
}

impl NicInner {
    /// Serves a tcp channel (ready by epoll, queued with frames left, or
    /// polled directly while it is the only busy one), within a budget.
    fn serve_tcp(&self, ch: &InTcp, b: Budget, hook: &mut HookCache) -> Visit {
        let Some(q) = ch.target.upgrade() else {
            ch.kill();
            return Visit::default();
        };
        let mut st = ch.st.lock();
        let st = &mut *st;
        let v = self.serve_frames(ch, &q, st, b, hook);
        self.account(st);
        if ch.dead.load(Ordering::Relaxed) {
            return v;
        }
        // Level-triggered interest: output waiting, or input, unless the
        // input buffer is full of an incomplete frame it may not grow for
        // (then only hang-ups, until memory frees: see `tcp_loop`).
        let stalled = !v.more && st.f.input_starved() && st.f.pending_in() == st.f.in_capacity();
        let interest = if st.f.pending_out() > 0 {
            libc::EPOLLOUT as u32
        } else if stalled {
            libc::EPOLLRDHUP as u32
        } else {
            libc::EPOLLIN as u32
        };
        if interest != st.interest {
            st.interest = interest;
            if stalled {
                tracing::debug!(
                    token = ch.token,
                    buffered = self.tcp_buffered.load(Ordering::Relaxed),
                    "tcp buffer budget spent: channel not read until memory frees"
                );
            }
            let _ = epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_MOD,
                ch.fd,
                interest,
                ch.token,
            );
        }
        v
    }

    /// Brings the NIC's total of buffered bytes up to date with `st`.
    fn account(&self, st: &mut InTcpState) {
        let now = st.f.footprint();
        if now > st.counted {
            self.tcp_buffered
                .fetch_add(now - st.counted, Ordering::Relaxed);
        } else {
            self.tcp_buffered
                .fetch_sub(st.counted - now, Ordering::Relaxed);
        }
        st.counted = now;
    }

    /// Closes the channels that have held buffered input without a new
    /// byte arriving for `tcp_stall_timeout` (as seen by scans at `now`,
    /// about every [`STALL_SCAN`]): their buffers are freed and their bytes
    /// leave the NIC's total at once. Returns them for the loop to reap.
    fn close_stalled(&self, now: Instant) -> Vec<(u64, Arc<InTcp>)> {
        let chans: Vec<(u64, Arc<InTcp>)> = self
            .in_tcp
            .lock()
            .iter()
            .map(|(t, c)| (*t, c.clone()))
            .collect();
        let mut closed = Vec::new();
        for (token, ch) in chans {
            let Some(mut st) = ch.st.try_lock() else {
                continue;
            };
            let st = &mut *st;
            if !ch.alive() || st.f.pending_in() == 0 {
                st.watch = None;
                continue;
            }
            let rx = st.f.received();
            match st.watch {
                Some((seen, since)) if seen == rx => {
                    if now.saturating_duration_since(since) < self.tcp_stall_timeout {
                        continue;
                    }
                    tracing::warn!(
                        token,
                        buffered = st.f.pending_in(),
                        "tcp channel's buffered input made no progress for {:?}: closing it",
                        self.tcp_stall_timeout
                    );
                    ch.kill();
                    st.f.release();
                    self.account(st);
                    st.watch = None;
                    self.tcp_stalled_closed.fetch_add(1, Ordering::Relaxed);
                    closed.push((token, ch.clone()));
                }
                _ => st.watch = Some((rx, now)),
            }
        }
        closed
    }

    /// Whether a stalled channel may be read again.
    fn tcp_budget_left(&self) -> bool {
        self.tcp_buffered.load(Ordering::Relaxed) < self.tcp_buffer_total
    }

    fn serve_frames(
        &self,
        ch: &InTcp,
        q: &QpInner,
        st: &mut InTcpState,
        b: Budget,
        hook: &mut HookCache,
    ) -> Visit {
        let t = self.target(q);
        let mut v = Visit::default();
        if st.f.flush().is_err() {
            ch.kill();
            return v;
        }
        if st.f.pending_out() < OUT_CAP {
            // Grow the input buffer only into what the NIC-wide budget has left.
            let left = self
                .tcp_buffer_total
                .saturating_sub(self.tcp_buffered.load(Ordering::Relaxed));
            let limit = IN_CAP.min(st.f.in_capacity() + left);
            match st.f.read_some_within(limit, b.read) {
                Ok(n) => v.input = n > 0,
                Err(_) if st.f.dead => v.input = true,
                Err(_) => {
                    ch.kill();
                    return v;
                }
            }
        }
        // Every frame this visit serves was read (so sent) before the hook
        // ran: frames are served only from what the reads above buffered.
        if st.f.pending_in() > 0 {
            hook.run(self);
        }
        let mut reqs = 0usize;
        let mut bytes = 0usize;
        while st.f.pending_out() < OUT_CAP {
            if reqs >= b.reqs || (reqs > 0 && bytes >= b.bytes) {
                v.more = st.f.pending_in() > 0;
                break;
            }
            if reqs > 0 && st.f.pending_out() > 0 && !self.tcp_budget_left() {
                // Over the NIC-wide budget: let this output drain first.
                v.more = st.f.pending_in() > 0;
                break;
            }
            let fr = match st.f.next_frame(FrameKind::Req) {
                Ok(Some(fr)) if fr.kind == FrameKind::Req => fr,
                Ok(None) => break,
                Ok(Some(_)) | Err(_) => {
                    tracing::warn!(qpn = t.qpn, "malformed tcp frame: closing the channel");
                    ch.kill();
                    return v;
                }
            };
            reqs += 1;
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
                // Skipped, but paid for: the visit's byte budget counts it.
                bytes += fr.payload.len();
                st.skipped += 1;
                if st.skipped > SKIP_LIMIT {
                    tracing::warn!(
                        qpn = t.qpn,
                        "more than {SKIP_LIMIT} frames into a refused epoch: closing the channel"
                    );
                    self.tcp_flood_closed.fetch_add(1, Ordering::Relaxed);
                    self.ban_flooder(&ch.peer);
                    ch.kill();
                    return v;
                }
                continue;
            }
            st.err_epoch = None;
            st.skipped = 0;
            let plen = fr.payload.len();
            bytes += plen;
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
                return v;
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
                        bytes += h.len as usize;
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
                            q.tcp_queued.fetch_add(1, Ordering::Release);
                        }
                        st.f.push_resp(&r, 0);
                    }
                },
            }
        }
        if st.f.flush().is_err() || st.f.dead {
            ch.kill();
        }
        v
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
    // While polling with one busy channel, that channel is read directly
    // (one system call finds and fetches its next request, where epoll_wait
    // and then read take two on the critical path); epoll_wait runs every
    // HOT_EVERY-th pass for the other channels. Once a pass served more than
    // one channel, every pass goes to epoll for QUIET passes (others are
    // waiting: the busy channel gets its budget per pass like everyone).
    const HOT_EVERY: u32 = 8;
    const QUIET: u32 = 64;
    let mut hot: Option<(u64, Arc<InTcp>)> = None;
    // Channels whose budget ran out with frames left, served next pass.
    let mut backlog: VecDeque<(u64, Arc<InTcp>)> = VecDeque::new();
    // Channels not read for lack of buffer memory, retried as it frees.
    let mut stalled: Vec<(u64, Arc<InTcp>)> = Vec::new();
    let mut passes = 0u32;
    let mut last_multi = 0u32;
    let reap = |token: u64, ch: &InTcp| {
        if ch.dead.load(Ordering::Acquire) {
            let _ = epoll_ctl(nic.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, ch.fd, 0, 0);
            let mut st = ch.st.lock();
            nic.tcp_buffered.fetch_sub(st.counted, Ordering::Relaxed);
            st.counted = 0;
            drop(st);
            nic.in_tcp.lock().remove(&token);
            true
        } else {
            false
        }
    };
    let mut idle_since: Option<Instant> = None;
    let mut last_scan = Instant::now();
    // The last epoll_wait blocked (the NIC is parked, passes are rare).
    let mut parked = false;
    let mut hook = HookCache::default();
    while !nic.stop.load(Ordering::Acquire) {
        passes = passes.wrapping_add(1);
        // The stall scan: the clock is read for it every 256th pass while
        // busy or spinning, and after every parked wait.
        if (passes % 256 == 0 || parked) && last_scan.elapsed() >= STALL_SCAN {
            last_scan = Instant::now();
            let closed = nic.close_stalled(last_scan);
            if !closed.is_empty() {
                for (token, ch) in &closed {
                    reap(*token, ch);
                }
                backlog.retain(|(_, c)| c.alive());
                stalled.retain(|(_, c)| c.alive());
                hot = hot.filter(|(_, c)| c.alive());
            }
        }
        if !stalled.is_empty() && nic.tcp_budget_left() {
            // Memory freed: read the stalled channels again.
            backlog.extend(stalled.drain(..));
        }
        let mut timeout = match idle_since.map(|t| t.elapsed()) {
            // Parked: woken by a socket, or after one stall-scan period.
            Some(idle) if idle >= YIELD => STALL_SCAN.as_millis() as i32,
            Some(idle) if idle >= SPIN => {
                std::thread::yield_now();
                0
            }
            _ => 0,
        };
        if !backlog.is_empty() {
            timeout = 0;
        }
        let alone = backlog.is_empty() && passes.wrapping_sub(last_multi) > QUIET;
        if timeout == 0 && alone {
            let mut input = false;
            let mut more = false;
            if let Some((token, ch)) = &hot {
                let v = nic.serve_tcp(ch, ALONE, &mut hook);
                input = v.input || v.more;
                more = v.more;
                if reap(*token, ch) {
                    hot = None;
                } else if ch.st.lock().interest == libc::EPOLLRDHUP as u32 {
                    stalled.extend(hot.take());
                    continue;
                }
            }
            // Every HOT_EVERY-th pass goes to epoll even while the hot
            // channel is busy, so it cannot starve the others.
            if hot.is_some() && passes % HOT_EVERY != 0 {
                if input {
                    idle_since = None;
                } else {
                    idle_since.get_or_insert_with(Instant::now);
                }
                continue;
            }
            if let Some((token, ch)) = hot.as_ref().filter(|_| more) {
                // Its frames are in our buffer, not the socket: epoll will
                // not report them, so queue it before another takes `hot`.
                backlog.push_back((*token, ch.clone()));
                timeout = 0;
            }
        }
        parked = timeout > 0;
        // SAFETY: evs is a valid buffer of 64 events.
        let n = unsafe { libc::epoll_wait(nic.epoll.as_raw_fd(), evs.as_mut_ptr(), 64, timeout) };
        // Small visits while more than one channel wants serving, or did
        // within the last QUIET passes.
        let ready = &evs[..n.max(0) as usize];
        let budget = if passes.wrapping_sub(last_multi) <= QUIET
            || backlog.len() > 1
            || ready
                .iter()
                .filter(|e| e.u64 != STOP_TOKEN && backlog.front().is_none_or(|(t, _)| *t != e.u64))
                .count()
                + backlog.len()
                > 1
        {
            CONTENDED
        } else {
            ALONE
        };
        let mut served = 0u32;
        let mut last: Option<(u64, Arc<InTcp>)> = None;
        let mut visit = |token: u64, ch: Arc<InTcp>, hup: bool, backlog: &mut VecDeque<_>| {
            if ch.pass.swap(passes, Ordering::Relaxed) == passes {
                return; // already served this pass
            }
            served += 1;
            let v = nic.serve_tcp(&ch, budget, &mut hook);
            if hup && ch.st.lock().interest == libc::EPOLLRDHUP as u32 {
                // Stalled on an incomplete frame and the peer hung up: that
                // frame can never complete.
                ch.kill();
            }
            if reap(token, &ch) {
                if hot.as_ref().is_some_and(|(t, _)| *t == token) {
                    hot = None;
                }
                return;
            }
            let interest = ch.st.lock().interest;
            if v.more {
                backlog.push_back((token, ch.clone()));
            } else if interest == libc::EPOLLRDHUP as u32 {
                stalled.push((token, ch.clone()));
            }
            last = Some((token, ch));
        };
        for _ in 0..backlog.len() {
            let Some((token, ch)) = backlog.pop_front() else {
                break;
            };
            visit(token, ch, false, &mut backlog);
        }
        if n > 0 {
            for ev in &evs[..n as usize] {
                let token = ev.u64;
                if token == STOP_TOKEN {
                    continue;
                }
                let ch = nic.in_tcp.lock().get(&token).cloned();
                let Some(ch) = ch else { continue };
                let hup =
                    ev.events & (libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP) as u32 != 0;
                visit(token, ch, hup, &mut backlog);
            }
        }
        if served > 1 {
            last_multi = passes;
        }
        if let Some(l) = last {
            hot = Some(l);
        }
        if served == 0 {
            if timeout > 0 {
                // Woken by the timeout with nothing to do: stay parked.
                idle_since = Some(Instant::now() - YIELD);
            } else {
                idle_since.get_or_insert_with(Instant::now);
            }
            continue;
        }
        idle_since = None;
    }
}
