//! The shm responder: one thread polls every inbound shm channel, executes
//! requests against the key table and the initiators' shared blocks, and
//! parks on the doorbell when idle.

use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::sys::efd_drain;
use super::{HookCache, NicInner};
use crate::fabric::mem::MemBlock;
use crate::fabric::soft::keys::KeyTable;
use crate::fabric::soft::qp::QpInner;
use crate::fabric::soft::responder::{self, Target};
use crate::fabric::soft::ring::flag;
use crate::fabric::soft::shm::{self, InShm, RespState};
use crate::fabric::soft::wire::{ReqHeader, ReqOp, RespHeader, REQ_LEN, RESP_LEN};
use crate::fabric::{QpState, WcStatus};

/// Requests one visit to a channel serves at most.
const REQ_BUDGET: u64 = 256;
/// Bytes (READ/WRITE lengths) one visit serves at most, past the first request.
const BYTE_BUDGET: u64 = 1 << 20;

impl NicInner {
    /// Serves up to a budget of requests on one shm channel towards local
    /// QP `q`. Returns work done.
    fn serve_shm(
        &self,
        ch: &InShm,
        q: &QpInner,
        st: &mut RespState,
        hook: &mut HookCache,
    ) -> usize {
        let t = self.target(q);
        let reset = q.state() == QpState::Reset;
        let avail = match st.req.available() {
            Ok(a) => a,
            Err(_) => {
                tracing::warn!("corrupt request ring index: closing the channel");
                ch.kill("corrupt request ring index");
                return 0;
            }
        };
        if avail == 0 {
            return 0;
        }
        let free = match st.resp.free() {
            Ok(f) => f as u64,
            Err(_) => {
                tracing::warn!("corrupt response ring index: closing the channel");
                ch.kill("corrupt response ring index");
                return 0;
            }
        };
        let n = avail.min(free).min(REQ_BUDGET);
        // Every request this visit serves was posted before the hook ran.
        hook.run(self);
        let v = ch.blocks_ver.load(Ordering::Acquire);
        if v != st.blocks_ver {
            st.blocks = ch
                .blocks
                .read()
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            st.blocks_ver = v;
        }
        let blocks = &st.blocks;
        // Fairness: past the first request, stop at the byte budget and let
        // the other channels have their turn.
        let mut bytes = 0u64;
        let mut served = 0u64;
        while served < n && (served == 0 || bytes < BYTE_BUDGET) {
            served += 1;
            let mut b = [0u8; REQ_LEN];
            st.req.pop_prefix::<{ REQ_LEN - 8 }, REQ_LEN>(&mut b);
            let (seq, epoch, op, status, value, len) = match ReqHeader::decode(&b) {
                Err((_, seq, epoch)) => (seq, epoch, 0u8, WcStatus::RemInvReqErr, 0, 0),
                Ok(h) => {
                    if st.err_epoch == Some(h.epoch) {
                        continue;
                    }
                    st.err_epoch = None;
                    let (s, v) = if reset {
                        (WcStatus::RemInvReqErr, 0)
                    } else {
                        exec_shm(&self.keys, &t, &h, blocks)
                    };
                    bytes += h.len as u64;
                    (h.seq, h.epoch, h.op as u8, s, v, h.len)
                }
            };
            if !status.is_ok() {
                st.err_epoch = Some(epoch);
            }
            let r = RespHeader {
                seq,
                status: status as u8,
                op,
                epoch,
                byte_len: if status.is_ok() { len } else { 0 },
                value,
            };
            let mut rb = [0u8; RESP_LEN];
            r.encode(&mut rb);
            st.resp.write_prefix::<{ RESP_LEN - 8 }, RESP_LEN>(&rb);
        }
        st.resp.publish();
        st.req.release();
        ch.req_head.store(st.req.head(), Ordering::Relaxed);
        served as usize
    }
}

/// Executes one validated request on the shm link.
fn exec_shm(
    keys: &KeyTable,
    t: &Target,
    h: &ReqHeader,
    blocks: &[(u32, Arc<MemBlock>)],
) -> (WcStatus, u64) {
    if h.op == ReqOp::Send {
        return (WcStatus::RemInvReqErr, 0);
    }
    let p = match responder::check(keys, t, h) {
        Ok(p) => p,
        Err(s) => return (s, 0),
    };
    // Few blocks per peer: a linear scan beats hashing.
    let Some(local) = blocks
        .iter()
        .find(|(id, _)| *id == h.lblock)
        .map(|(_, b)| b)
        .and_then(|b| b.range(h.loff, h.len as u64))
    else {
        return (WcStatus::RemInvReqErr, 0);
    };
    match h.op {
        ReqOp::Read => {
            // SAFETY: both ranges were bounds-checked for h.len bytes.
            unsafe { std::ptr::copy(p, local, h.len as usize) };
            (WcStatus::Success, 0)
        }
        ReqOp::Write => {
            // SAFETY: both ranges were bounds-checked for h.len bytes.
            unsafe { std::ptr::copy(local, p, h.len as usize) };
            (WcStatus::Success, 0)
        }
        _ => {
            let v = responder::atomic(p, h);
            // SAFETY: `local` is valid for 8 bytes (h.len == 8 for atomics).
            unsafe { std::ptr::copy_nonoverlapping(v.to_le_bytes().as_ptr(), local, 8) };
            (WcStatus::Success, v)
        }
    }
}

pub(super) fn shm_loop(nic: Arc<NicInner>) {
    // Each channel with its target QP, held strongly until the channel
    // leaves the NIC's list (a dead channel is skipped meanwhile), and its
    // responder state, owned here: serving a request takes no lock and no
    // reference-count round trip.
    struct Served {
        ch: Arc<InShm>,
        q: Arc<QpInner>,
        st: RespState,
    }
    let mut list: Vec<Served> = Vec::new();
    let mut ver = u64::MAX;
    // Adaptive polling bounded in time, not iterations: the machine may
    // have two cores shared by several NICs, directories and clients, and
    // a long spin starves exactly the thread that would produce work (an
    // in-process cluster runs two NICs, a directory and clients on two
    // cores: a 30 us spin made the first READ after an RPC wait ~20 us).
    const SPIN: Duration = Duration::from_micros(5);
    const YIELD: Duration = Duration::from_micros(300);
    let mut idle_since: Option<Instant> = None;
    let mut spins = 0u32;
    let mut hook = HookCache::default();
    while !nic.stop.load(Ordering::Acquire) {
        let v = nic.in_shm_ver.load(Ordering::Acquire);
        if v != ver {
            ver = v;
            let mut old = std::mem::take(&mut list);
            for c in nic.in_shm.read().iter() {
                if let Some(i) = old.iter().position(|s| Arc::ptr_eq(&s.ch, c)) {
                    list.push(old.swap_remove(i));
                    continue;
                }
                let Some(q) = c.target.upgrade() else {
                    c.kill("target QP destroyed");
                    continue;
                };
                // Taken exactly once: only this loop serves shm channels.
                if let Some(st) = c.resp.lock().take() {
                    list.push(Served {
                        ch: c.clone(),
                        q,
                        st,
                    });
                }
            }
        }
        let mut work = 0;
        for s in &mut list {
            // The lock-free peek keeps the idle spin to a few loads per
            // channel, so a request is seen within nanoseconds.
            if s.ch.has_request() && !s.ch.dead.load(Ordering::Relaxed) {
                work += nic.serve_shm(&s.ch, &s.q, &mut s.st, &mut hook);
            }
        }
        if work > 0 {
            idle_since = None;
            spins = 0;
            continue;
        }
        // Read the clock only every 32 idle passes.
        spins += 1;
        if idle_since.is_some() && spins % 32 != 0 {
            std::hint::spin_loop();
            continue;
        }
        let idle = idle_since.get_or_insert_with(Instant::now).elapsed();
        if idle < SPIN {
            std::hint::spin_loop();
            continue;
        }
        if idle < YIELD {
            std::thread::yield_now();
            continue;
        }
        // Park: announce, re-check, then sleep on the doorbell.
        for s in &list {
            flag(&s.ch.seg, shm::NIC_SLEEP).store(1, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
        let pending = list
            .iter()
            .any(|s| !s.ch.dead.load(Ordering::Relaxed) && s.ch.has_request());
        if !pending && nic.in_shm_ver.load(Ordering::Acquire) == ver {
            let mut pfd = libc::pollfd {
                fd: nic.doorbell.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 100) };
            efd_drain(nic.doorbell.as_raw_fd());
        }
        for s in &list {
            flag(&s.ch.seg, shm::NIC_SLEEP).store(0, Ordering::Relaxed);
        }
        // Awake again: spin briefly for the request that woke us.
        idle_since = None;
    }
}
