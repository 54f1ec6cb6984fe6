//! The soft NIC: key table, memory, QPs, and the threads that play the
//! hardware (connection set-up, the shm responder, the tcp responder).

use std::collections::HashMap;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use super::cq::SoftCq;
use super::keys::KeyTable;
use super::qp::{Inbound, QpInner, SendSide, SoftQp, MAX_BUFFERED_MSGS};
use super::responder::{self, Target};
use super::ring::flag;
use super::shm::{self, ctl, InShm, RespState};
use super::tcp::{self, Framed};
use super::wire::{
    FrameKind, ReqHeader, ReqOp, RespHeader, MAX_RDMA_LEN, MAX_SEND, REQ_LEN, RESP_LEN,
};
use super::LinkKind;
use crate::fabric::mem::{MemBlock, Mr};
use crate::fabric::{
    Access, Caps, Cq, FabricError, MwInfo, Nic, Pd, Qp, QpCap, QpState, Result, WcStatus,
};

/// Configuration of a soft NIC.
#[derive(Clone, Debug)]
pub struct SoftConfig {
    /// Link used by QPs of this NIC to reach peers.
    pub link: LinkKind,
    /// Address the tcp listener binds ("127.0.0.1:0" = any free loopback port).
    pub tcp_listen: String,
    /// Key-table slots (MRs + MWs).
    pub max_keys: u32,
}

impl Default for SoftConfig {
    fn default() -> Self {
        SoftConfig {
            link: LinkKind::Shm,
            tcp_listen: "127.0.0.1:0".into(),
            max_keys: 1 << 18,
        }
    }
}

/// How peers reach a NIC: both listeners' addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicAddr {
    /// Abstract Unix socket name (shm link).
    pub shm: Option<String>,
    /// host:port (tcp link).
    pub tcp: Option<String>,
}

impl NicAddr {
    /// "soft1;shm=NAME;tcp=HOST:PORT".
    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::from("soft1");
        if let Some(n) = &self.shm {
            s.push_str(";shm=");
            s.push_str(n);
        }
        if let Some(t) = &self.tcp {
            s.push_str(";tcp=");
            s.push_str(t);
        }
        s.into_bytes()
    }

    /// Parses an address written by `encode`.
    pub fn decode(b: &[u8]) -> Result<NicAddr> {
        let s = std::str::from_utf8(b)
            .map_err(|_| FabricError::Invalid("soft NIC address is not UTF-8".into()))?;
        let mut parts = s.split(';');
        if parts.next() != Some("soft1") {
            return Err(FabricError::Invalid(format!(
                "not a soft NIC address: {s:?}"
            )));
        }
        let mut a = NicAddr {
            shm: None,
            tcp: None,
        };
        for p in parts {
            match p.split_once('=') {
                Some(("shm", v)) => a.shm = Some(v.to_string()),
                Some(("tcp", v)) => a.tcp = Some(v.to_string()),
                _ => {
                    return Err(FabricError::Invalid(format!(
                        "bad soft NIC address part {p:?}"
                    )))
                }
            }
        }
        Ok(a)
    }
}

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

pub(crate) struct NicInner {
    pub(crate) caps: Caps,
    pub(crate) link: LinkKind,
    pub(crate) keys: KeyTable,
    pub(crate) addr: NicAddr,
    next_pd: AtomicU32,
    mrs: RwLock<Vec<Option<Arc<Mr>>>>,
    /// Bumped on every MR (de)registration: initiators cache lookups.
    pub(crate) mr_epoch: AtomicU64,
    blocks: Mutex<Vec<Arc<MemBlock>>>,
    pub(crate) qps: RwLock<HashMap<u32, Arc<QpInner>>>,
    next_qpn: AtomicU32,
    stop: AtomicBool,
    doorbell: OwnedFd,
    wake: OwnedFd,
    epoll: OwnedFd,
    in_shm: RwLock<Vec<Arc<InShm>>>,
    in_shm_ver: AtomicU64,
    in_tcp: Mutex<HashMap<u64, Arc<InTcp>>>,
    next_token: AtomicU64,
}

fn eventfd() -> Result<OwnedFd> {
    // SAFETY: plain syscall; result checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(FabricError::io("eventfd", std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just created and is owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn efd_signal(fd: RawFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: write 8 bytes to an eventfd.
    unsafe {
        libc::write(fd, one.as_ptr() as *const libc::c_void, 8);
    }
}

fn efd_drain(fd: RawFd) {
    let mut b = [0u8; 8];
    // SAFETY: read 8 bytes from a non-blocking eventfd.
    unsafe {
        libc::read(fd, b.as_mut_ptr() as *mut libc::c_void, 8);
    }
}

fn epoll_ctl(ep: RawFd, op: i32, fd: RawFd, events: u32, token: u64) -> std::io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: valid epoll fd and event struct.
    if unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

const STOP_TOKEN: u64 = u64::MAX;

impl NicInner {
    pub(crate) fn mr_by_lkey(&self, lkey: u32) -> Option<Arc<Mr>> {
        let l = self.mrs.read();
        let m = l.get((lkey >> 8) as usize)?.as_ref()?;
        if m.lkey() == lkey {
            Some(m.clone())
        } else {
            None
        }
    }

    fn set_mr(&self, idx: u32, m: Option<Arc<Mr>>) {
        let mut l = self.mrs.write();
        if l.len() <= idx as usize {
            l.resize(idx as usize + 1, None);
        }
        l[idx as usize] = m;
        self.mr_epoch.fetch_add(1, Ordering::Release);
    }

    fn target(&self, q: &QpInner) -> Target {
        Target {
            qpn: q.qpn,
            pd: q.pd,
            access: q.access(),
        }
    }

    /// Serves up to a batch of requests on one shm channel towards local
    /// QP `q`. Returns work done.
    fn serve_shm(&self, ch: &InShm, q: &QpInner, st: &mut RespState) -> usize {
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
        let n = avail.min(free).min(256);
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
        for _ in 0..n {
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
        n as usize
    }

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

/// A software RNIC.
pub struct SoftNic {
    inner: Arc<NicInner>,
    threads: Vec<JoinHandle<()>>,
}

static NIC_SEQ: AtomicU64 = AtomicU64::new(0);

impl SoftNic {
    /// Opens a soft NIC: listeners for both links and the hardware threads.
    pub fn open(cfg: SoftConfig) -> Result<SoftNic> {
        let name = format!(
            "patronus-nic-{}-{}-{:x}",
            std::process::id(),
            NIC_SEQ.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let ul = {
            use std::os::linux::net::SocketAddrExt;
            let sa = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .map_err(|e| FabricError::io("abstract socket name", e))?;
            UnixListener::bind_addr(&sa).map_err(|e| FabricError::io("binding shm listener", e))?
        };
        let tl = TcpListener::bind(&cfg.tcp_listen)
            .map_err(|e| FabricError::io(format!("binding tcp listener {}", cfg.tcp_listen), e))?;
        let tcp_addr = tl
            .local_addr()
            .map_err(|e| FabricError::io("tcp listener address", e))?
            .to_string();
        // SAFETY: plain syscall; result checked.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(FabricError::io(
                "epoll_create1",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: ep was just created and is owned here.
        let epoll = unsafe { OwnedFd::from_raw_fd(ep) };
        let wake = eventfd()?;
        epoll_ctl(
            ep,
            libc::EPOLL_CTL_ADD,
            wake.as_raw_fd(),
            libc::EPOLLIN as u32,
            STOP_TOKEN,
        )
        .map_err(|e| FabricError::io("epoll_ctl", e))?;
        let link_name = match cfg.link {
            LinkKind::Shm => "soft-shm",
            LinkKind::Tcp => "soft-tcp",
        };
        let inner = Arc::new(NicInner {
            caps: Caps {
                name: link_name.into(),
                mw_type2: true,
                atomics: true,
                max_msg_size: MAX_RDMA_LEN as u64,
                max_send_size: MAX_SEND,
                max_qp_wr: shm::REQ_SLOTS,
                max_mw: cfg.max_keys,
                modify_qp_access: true,
                rereg_mr: true,
                peer_errs_with_requester: false,
            },
            link: cfg.link,
            keys: KeyTable::new(cfg.max_keys),
            addr: NicAddr {
                shm: Some(name),
                tcp: Some(tcp_addr),
            },
            next_pd: AtomicU32::new(1),
            mrs: RwLock::new(Vec::new()),
            mr_epoch: AtomicU64::new(0),
            blocks: Mutex::new(Vec::new()),
            qps: RwLock::new(HashMap::new()),
            next_qpn: AtomicU32::new(1),
            stop: AtomicBool::new(false),
            doorbell: eventfd()?,
            wake,
            epoll,
            in_shm: RwLock::new(Vec::new()),
            in_shm_ver: AtomicU64::new(0),
            in_tcp: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
        });
        let mut threads = Vec::new();
        let i = inner.clone();
        threads.push(spawn("nic-ctl", move || control_loop(i, ul, tl))?);
        let i = inner.clone();
        threads.push(spawn("nic-shm", move || shm_loop(i))?);
        let i = inner.clone();
        threads.push(spawn("nic-tcp", move || tcp_loop(i))?);
        Ok(SoftNic { inner, threads })
    }

    /// This NIC's address bytes (as in every QP endpoint).
    pub fn address(&self) -> Vec<u8> {
        self.inner.addr.encode()
    }

    /// Number of live inbound channels (for tests and diagnostics).
    pub fn inbound_channels(&self) -> usize {
        self.inner
            .in_shm
            .read()
            .iter()
            .filter(|c| !c.dead.load(Ordering::Relaxed))
            .count()
            + self.inner.in_tcp.lock().len()
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| FabricError::io(format!("spawning {name} thread"), e))
}

impl Drop for SoftNic {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        efd_signal(self.inner.wake.as_raw_fd());
        efd_signal(self.inner.doorbell.as_raw_fd());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for c in self.inner.in_shm.write().drain(..) {
            c.kill("NIC closed");
        }
        for (_, c) in self.inner.in_tcp.lock().drain() {
            c.kill();
        }
    }
}

fn control_loop(nic: Arc<NicInner>, ul: UnixListener, tl: TcpListener) {
    let _ = ul.set_nonblocking(true);
    let _ = tl.set_nonblocking(true);
    while !nic.stop.load(Ordering::Acquire) {
        let chans: Vec<Arc<InShm>> = nic
            .in_shm
            .read()
            .iter()
            .filter(|c| !c.dead.load(Ordering::Relaxed))
            .cloned()
            .collect();
        let mut fds = vec![
            libc::pollfd {
                fd: nic.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: ul.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: tl.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        for c in &chans {
            fds.push(libc::pollfd {
                fd: c.ctrl.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: fds is a valid array of pollfd for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
        if n <= 0 {
            continue;
        }
        if fds[1].revents != 0 {
            while let Ok((s, _)) = ul.accept() {
                accept_shm(&nic, s);
            }
        }
        if fds[2].revents != 0 {
            while let Ok((s, _)) = tl.accept() {
                accept_tcp(&nic, s);
            }
        }
        let mut removed = false;
        for (c, f) in chans.iter().zip(&fds[3..]) {
            if f.revents == 0 {
                continue;
            }
            if f.revents & libc::POLLIN != 0 && handle_ctl(c).is_ok() {
                continue;
            }
            c.kill("initiator closed its control socket");
            removed = true;
        }
        if removed {
            nic.in_shm
                .write()
                .retain(|c| !c.dead.load(Ordering::Relaxed));
            nic.in_shm_ver.fetch_add(1, Ordering::Release);
        }
    }
}

fn handle_ctl(c: &InShm) -> std::io::Result<()> {
    let mut m = [0u8; 32];
    let fd = shm::recv_with_fd(&c.ctrl, &mut m)?;
    let (kind, id, len, _) = shm::ctl_parse(&m);
    if kind != ctl::BLOCK {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    let ok = fd
        .filter(shm::check_sealed)
        .and_then(|fd| MemBlock::from_fd(fd, len as usize, id).ok());
    match ok {
        Some(b) => {
            c.blocks.write().insert(id, Arc::new(b));
            c.blocks_ver.fetch_add(1, Ordering::Release);
            shm::reply(&c.ctrl, ctl::OK, 0, None);
        }
        None => shm::reply(&c.ctrl, ctl::ERR, 1, None),
    }
    Ok(())
}

fn accept_shm(nic: &Arc<NicInner>, s: UnixStream) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut m = [0u8; 32];
    let Ok(fd) = shm::recv_with_fd(&s, &mut m) else {
        return;
    };
    let (kind, dst, _src, len) = shm::ctl_parse(&m);
    let q = nic.qps.read().get(&dst).cloned();
    // Refusal codes: 1 no such QP, 2 bad segment, 3 mapping failed,
    // 4 not a hello, 5 no segment fd.
    if kind != ctl::HELLO {
        shm::reply(&s, ctl::ERR, 4, None);
        return;
    }
    let Some(fd) = fd else {
        shm::reply(&s, ctl::ERR, 5, None);
        return;
    };
    let Some(q) = q else {
        // Code 1: no such QP on this NIC.
        shm::reply(&s, ctl::ERR, 1, None);
        return;
    };
    if !shm::check_sealed(&fd)
        || (len as usize) < shm::seg_len()
        || len as usize > shm::seg_len() + 4096
    {
        shm::reply(&s, ctl::ERR, 2, None);
        return;
    }
    let ch = MemBlock::from_fd(fd, len as usize, 0).and_then(|b| {
        InShm::new(
            Arc::new(b),
            s.try_clone().map_err(|e| FabricError::io("dup", e))?,
            Arc::downgrade(&q),
        )
    });
    match ch {
        Ok(ch) => {
            let ch = Arc::new(ch);
            q.attach_inbound(Inbound::Shm(ch.clone()));
            nic.in_shm.write().push(ch);
            nic.in_shm_ver.fetch_add(1, Ordering::Release);
            shm::reply(&s, ctl::OK, 0, Some(nic.doorbell.as_raw_fd()));
            efd_signal(nic.doorbell.as_raw_fd());
        }
        Err(e) => {
            tracing::warn!("refusing shm channel: {e}");
            shm::reply(&s, ctl::ERR, 3, None);
        }
    }
}

fn accept_tcp(nic: &Arc<NicInner>, mut s: std::net::TcpStream) {
    use std::io::{Read, Write};
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut h = [0u8; 16];
    if s.read_exact(&mut h).is_err() {
        return;
    }
    let Ok((dst, _src)) = tcp::parse_hello(&h) else {
        let _ = s.write_all(&tcp::hello_reply(false));
        return;
    };
    let Some(q) = nic.qps.read().get(&dst).cloned() else {
        let _ = s.write_all(&tcp::hello_reply(false));
        return;
    };
    if s.write_all(&tcp::hello_reply(true)).is_err() {
        return;
    }
    let _ = s.set_read_timeout(None);
    let fd = s.as_raw_fd();
    let Ok(f) = Framed::new(s) else { return };
    let token = nic.next_token.fetch_add(1, Ordering::Relaxed);
    let ch = Arc::new(InTcp {
        st: Mutex::new(InTcpState {
            f,
            err_epoch: None,
            want_out: false,
        }),
        dead: AtomicBool::new(false),
        target: Arc::downgrade(&q),
        token,
        fd,
    });
    q.attach_inbound(Inbound::Tcp(ch.clone()));
    nic.in_tcp.lock().insert(token, ch);
    if let Err(e) = epoll_ctl(
        nic.epoll.as_raw_fd(),
        libc::EPOLL_CTL_ADD,
        fd,
        libc::EPOLLIN as u32,
        token,
    ) {
        tracing::warn!("epoll add: {e}");
    }
}

fn shm_loop(nic: Arc<NicInner>) {
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
                work += nic.serve_shm(&s.ch, &s.q, &mut s.st);
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

fn tcp_loop(nic: Arc<NicInner>) {
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

impl Nic for SoftNic {
    fn caps(&self) -> &Caps {
        &self.inner.caps
    }

    fn alloc_pd(&self) -> Result<Pd> {
        Ok(Pd(self.inner.next_pd.fetch_add(1, Ordering::Relaxed)))
    }

    fn alloc_mr(&self, pd: Pd, len: usize, access: Access) -> Result<Arc<Mr>> {
        let block = Arc::new(MemBlock::new(len, "mr")?);
        let key = self
            .inner
            .keys
            .add_mr(pd.0, block.as_ptr() as u64, len as u64, access)?;
        let mr = Arc::new(Mr::new(
            block.clone(),
            0,
            len as u64,
            (key, key),
            access,
            pd.0 as u64,
        ));
        self.inner.set_mr(key >> 8, Some(mr.clone()));
        self.inner.blocks.lock().push(block);
        Ok(mr)
    }

    fn reg_sub_mr(&self, parent: &Mr, offset: u64, len: u64, access: Access) -> Result<Arc<Mr>> {
        match offset.checked_add(len) {
            Some(end) if end <= parent.len() && len > 0 => {}
            _ => {
                return Err(FabricError::Invalid(format!(
                    "sub-MR [{offset}, +{len}) outside a region of {} bytes",
                    parent.len()
                )))
            }
        }
        let pd = parent.handle as u32;
        let key = self
            .inner
            .keys
            .add_mr(pd, parent.addr() + offset, len, access)?;
        let mr = Arc::new(Mr::new(
            parent.block().clone(),
            parent.block_offset() + offset,
            len,
            (key, key),
            access,
            pd as u64,
        ));
        self.inner.set_mr(key >> 8, Some(mr.clone()));
        Ok(mr)
    }

    fn dereg_mr(&self, mr: &Mr) -> Result<()> {
        let key = mr.lkey();
        self.inner.keys.remove(key)?;
        self.inner.set_mr(key >> 8, None);
        Ok(())
    }

    fn rereg_mr(&self, mr: &Mr, access: Access) -> Result<(u32, u32)> {
        let key = self.inner.keys.rereg_mr(mr.lkey(), access)?;
        mr.set_keys(key, key, access);
        Ok((key, key))
    }

    fn alloc_mw(&self, pd: Pd) -> Result<MwInfo> {
        let (handle, rkey) = self.inner.keys.add_mw(pd.0)?;
        Ok(MwInfo { handle, rkey })
    }

    fn dealloc_mw(&self, handle: u32) -> Result<()> {
        let k = self.inner.keys.mw_rkey(handle);
        if k == 0 {
            return Err(FabricError::Invalid(format!("{handle} is not a window")));
        }
        self.inner.keys.remove(k)
    }

    fn mw_rkey(&self, handle: u32) -> u32 {
        self.inner.keys.mw_rkey(handle)
    }

    fn create_cq(&self, depth: u32) -> Result<Arc<dyn Cq>> {
        Ok(Arc::new(SoftCq::new(depth)))
    }

    fn create_qp(
        &self,
        pd: Pd,
        send_cq: &Arc<dyn Cq>,
        recv_cq: &Arc<dyn Cq>,
        cap: QpCap,
    ) -> Result<Arc<dyn Qp>> {
        let as_soft = |c: &Arc<dyn Cq>| -> Result<Arc<SoftCq>> {
            let any: Arc<dyn std::any::Any + Send + Sync> = c.clone();
            any.downcast::<SoftCq>()
                .map_err(|_| FabricError::Invalid("CQ of another backend".into()))
        };
        if cap.max_send_wr == 0 || cap.max_send_wr > shm::REQ_SLOTS || cap.max_recv_wr > 1 << 16 {
            return Err(FabricError::Invalid(format!(
                "QP capacity {cap:?} outside 1..={} send WRs",
                shm::REQ_SLOTS
            )));
        }
        let scq = as_soft(send_cq)?;
        let rcq = as_soft(recv_cq)?;
        let qpn = self.inner.next_qpn.fetch_add(1, Ordering::Relaxed);
        let q = Arc::new(QpInner::new(
            qpn,
            pd.0,
            self.inner.clone(),
            scq.clone(),
            rcq.clone(),
            cap,
        ));
        scq.attach(&q, Some(SendSide::new(cap)), false);
        rcq.attach(&q, None, true);
        self.inner.qps.write().insert(qpn, q.clone());
        Ok(Arc::new(SoftQp { inner: q }))
    }
}
