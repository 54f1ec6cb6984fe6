//! Soft RC queue pairs: the initiator side (posting, completion matching,
//! error and flush semantics) and the receive side.

mod complete;
mod post;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::auth::{refuse, KEY_LEN};
use super::cq::SoftCq;
use super::nic::{NicAddr, NicInner};
use super::shm::{InShm, OutShm};
use super::tcp::{self, Framed};
use super::wire::MAX_SEND;
use super::LinkKind;
use crate::fabric::mem::Mr;
use crate::fabric::{
    Access, FabricError, Qp, QpCap, QpEndpoint, QpState, RecvWr, Result, SendWr, Sge, WcOpcode,
    WcStatus,
};

/// The inbound channel attached to a QP by its peer.
#[derive(Clone)]
pub(crate) enum Inbound {
    Shm(Arc<InShm>),
    Tcp(Arc<super::nic::InTcp>),
}

impl Inbound {
    /// True until the channel died or was closed.
    fn alive(&self) -> bool {
        match self {
            Inbound::Shm(s) => !s.dead.load(Ordering::Acquire),
            Inbound::Tcp(t) => t.alive(),
        }
    }

    fn kill(&self, why: &str) {
        match self {
            Inbound::Shm(s) => s.kill(why),
            Inbound::Tcp(t) => t.kill(),
        }
    }
}

/// (NIC public key, QP number): who a peer QP is.
type PeerId = ([u8; KEY_LEN], u32);

/// Authenticated channels a QP holds back until it is connected to their
/// sender.
const MAX_HELD: usize = 4;

/// Who may attach an inbound channel to a QP, and who did (under the
/// `peer` lock, taken after `inb`).
#[derive(Default)]
struct PeerState {
    /// The endpoint this QP is connected to.
    expect: Option<PeerId>,
    /// The authenticated peer of the attached channel and its epoch.
    live: Option<(PeerId, u64)>,
    /// The attached channel came before this QP was connected to anyone:
    /// it is closed if the QP then connects to another peer.
    provisional: bool,
    /// Authenticated channels from peers this QP is not connected to (yet):
    /// not served; attached when the QP connects to their sender.
    held: Vec<(PeerId, u64, Inbound)>,
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
    /// The shm channel as of `inb_ver` `.0` (polls skip the `inb` lock).
    chan: (u64, Option<Arc<InShm>>),
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
    /// Bumped after every change of `inb`: the receive side caches the
    /// channel and re-reads it only when this moved.
    inb_ver: AtomicU64,
    peer: Mutex<PeerState>,
    /// Epoch of this QP's latest outbound channel (sent in its hello).
    conn_epoch: AtomicU64,
    pub(crate) tcp_msgs: Mutex<VecDeque<Vec<u8>>>,
    /// Messages in `tcp_msgs` (read by pollers without its lock).
    pub(crate) tcp_queued: AtomicUsize,
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
                chan: (u64::MAX, None),
            }),
            inb: Mutex::new(None),
            inb_ver: AtomicU64::new(0),
            peer: Mutex::new(PeerState::default()),
            conn_epoch: AtomicU64::new(0),
            tcp_msgs: Mutex::new(VecDeque::new()),
            tcp_queued: AtomicUsize::new(0),
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

    /// Takes the channel an authenticated peer (NIC key `pk`, QP `qpn`)
    /// created towards this QP, with its connection epoch. It is attached
    /// (Ok(true): the caller starts serving it) when this QP is connected
    /// to that peer; a live channel is replaced only by a newer
    /// connection (epoch) of the same peer, never by a newcomer. Before
    /// the QP is connected to anyone, a channel attaches provisionally (a
    /// peer may use a QP before it connects back) and is closed if the QP
    /// then connects to someone else. A channel from a peer other than the
    /// one the QP is connected to is held back, unserved, until the QP
    /// connects to its sender (Ok(false)): as on hardware, where an RC QP
    /// drops what does not come from its peer and a connect never waits
    /// for the peer's.
    pub(crate) fn attach_inbound(
        &self,
        i: Inbound,
        pk: &[u8; KEY_LEN],
        qpn: u32,
        epoch: u64,
    ) -> std::result::Result<bool, u32> {
        let id = (*pk, qpn);
        let mut dropped = Vec::new();
        let attached = {
            let mut inb = self.inb.lock();
            let mut ps = self.peer.lock();
            let live = inb.as_ref().is_some_and(Inbound::alive);
            match ps.expect {
                Some(e) if e == id => {
                    if live && ps.live.is_some_and(|(l, le)| l == id && epoch <= le) {
                        return Err(refuse::LIVE);
                    }
                    ps.live = Some((id, epoch));
                    ps.provisional = false;
                    dropped.extend(inb.replace(i));
                    true
                }
                None => {
                    // Not connected yet: attached at once (a peer may use a
                    // QP before it connects back), provisionally.
                    if live && !ps.live.is_some_and(|(l, le)| l == id && epoch > le) {
                        return Err(refuse::LIVE);
                    }
                    ps.live = Some((id, epoch));
                    ps.provisional = true;
                    dropped.extend(inb.replace(i));
                    true
                }
                Some(_) => {
                    if ps.held.iter().any(|(h, he, _)| *h == id && *he >= epoch) {
                        return Err(refuse::LIVE);
                    }
                    let mut k = 0;
                    while k < ps.held.len() {
                        if ps.held[k].0 == id || ps.held.len() >= MAX_HELD {
                            dropped.push(ps.held.remove(k).2);
                        } else {
                            k += 1;
                        }
                    }
                    ps.held.push((id, epoch, i));
                    false
                }
            }
        };
        self.inb_ver.fetch_add(1, Ordering::AcqRel);
        for o in dropped {
            o.kill("replaced by a newer connection");
        }
        if attached && self.state() == QpState::Reset {
            self.set_state(QpState::Init);
        }
        Ok(attached)
    }

    /// Records the endpoint this QP is connected to and attaches (and
    /// starts serving) the newest channel held back from it.
    fn expect_peer(&self, pk: [u8; KEY_LEN], qpn: u32) {
        let id = (pk, qpn);
        let mut dropped = Vec::new();
        let promoted = {
            let mut inb = self.inb.lock();
            let mut ps = self.peer.lock();
            ps.expect = Some(id);
            if std::mem::take(&mut ps.provisional) && ps.live.is_some_and(|(l, _)| l != id) {
                ps.live = None;
                dropped.extend(inb.take());
            }
            let mut best: Option<(u64, Inbound)> = None;
            let mut k = 0;
            while k < ps.held.len() {
                if ps.held[k].0 != id {
                    k += 1;
                    continue;
                }
                let (_, e, ch) = ps.held.remove(k);
                match &best {
                    Some((be, _)) if *be >= e => dropped.push(ch),
                    _ => dropped.extend(best.replace((e, ch)).map(|b| b.1)),
                }
            }
            let live = inb.as_ref().is_some_and(Inbound::alive);
            match best {
                Some((e, _)) if live && ps.live.is_some_and(|(l, le)| l == id && e <= le) => {
                    dropped.extend(best.map(|b| b.1));
                    None
                }
                Some((e, ch)) => {
                    ps.live = Some((id, e));
                    ps.provisional = false;
                    dropped.extend(inb.replace(ch.clone()));
                    Some(ch)
                }
                None => None,
            }
        };
        self.inb_ver.fetch_add(1, Ordering::AcqRel);
        for o in dropped {
            o.kill("replaced by a newer connection");
        }
        if let Some(ch) = promoted {
            self.nic.serve_inbound(&ch);
            if self.state() == QpState::Reset {
                self.set_state(QpState::Init);
            }
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
            let pk = addr.require_pk()?;
            self.expect_peer(pk, remote.qpn);
            let epoch = self.conn_epoch.fetch_add(1, Ordering::Relaxed) + 1;
            let id = &self.nic.id;
            let out = match self.nic.link {
                LinkKind::Shm => {
                    let name = addr.shm.ok_or_else(|| {
                        FabricError::Invalid("remote NIC has no shm address".into())
                    })?;
                    Out::Shm(OutShm::connect(
                        &name, id, &pk, self.qpn, remote.qpn, epoch,
                    )?)
                }
                LinkKind::Tcp => {
                    let a = addr.tcp.ok_or_else(|| {
                        FabricError::Invalid("remote NIC has no tcp address".into())
                    })?;
                    Out::Tcp(tcp::connect(&a, id, &pk, self.qpn, remote.qpn, epoch)?)
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
        let gone = q.inb.lock().take();
        q.inb_ver.fetch_add(1, Ordering::AcqRel);
        if let Some(i) = gone {
            i.kill("QP destroyed");
        }
        for (_, _, i) in std::mem::take(&mut q.peer.lock().held) {
            i.kill("QP destroyed");
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
        let nic = &self.inner.nic;
        if !nic.caps.windows_survive_reset {
            // A device whose windows die with their QP's RESET.
            let n = nic.keys.invalidate_bound_to(self.inner.qpn);
            tracing::debug!(
                qpn = self.inner.qpn,
                windows = n,
                "reset invalidated windows"
            );
        }
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
