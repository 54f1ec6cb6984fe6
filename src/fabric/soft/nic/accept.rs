//! Connection set-up: the control thread authenticates hellos (see
//! `soft::auth`), attaches shm and tcp channels to local QPs, and maps the
//! memory blocks initiators share.
//!
//! Hellos are handled without blocking: every not-yet-authenticated socket
//! is a small state machine driven by the control loop's poll, with a
//! deadline, and their number is capped, so no number of slow or silent
//! sockets delays a legitimate one.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::serve_tcp::InTcp;
use super::sys::{efd_signal, epoll_ctl};
use super::NicInner;
use crate::fabric::mem::MemBlock;
use crate::fabric::soft::auth::{self, kind, refuse, Hello, HelloLink, HELLO_LEN, KEY_LEN};
use crate::fabric::soft::qp::{Inbound, QpInner};
use crate::fabric::soft::shm::{self, ctl, InShm};
use crate::fabric::soft::tcp::Framed;
use crate::fabric::FabricError;

/// Most sockets held before they authenticated; past it new ones are
/// closed at once.
pub(crate) const MAX_PENDING: usize = 256;
/// Time a socket has to complete its hello.
pub(crate) const HELLO_DEADLINE: Duration = Duration::from_secs(2);

enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Sock {
    fn fd(&self) -> RawFd {
        match self {
            Sock::Tcp(s) => s.as_raw_fd(),
            Sock::Unix(s) => s.as_raw_fd(),
        }
    }

    fn link(&self) -> HelloLink {
        match self {
            Sock::Tcp(_) => HelloLink::Tcp,
            Sock::Unix(_) => HelloLink::Shm,
        }
    }

    /// Sends one whole hello-exchange message (with an fd on shm); a
    /// fresh socket takes 40 bytes at once, anything else is a failure.
    fn send(&self, m: &[u8], fd: Option<RawFd>) -> bool {
        match self {
            Sock::Tcp(s) => matches!((&*s).write(m), Ok(n) if n == m.len()),
            Sock::Unix(s) => shm::send_with_fd(s, m, fd).is_ok(),
        }
    }

    /// One non-blocking read into `buf`: Ok(0) when nothing is there now.
    fn recv(&self, buf: &mut [u8], fd: &mut Option<OwnedFd>) -> std::io::Result<usize> {
        let r = match self {
            Sock::Tcp(s) => match (&*s).read(buf) {
                Ok(0) => Err(ErrorKind::UnexpectedEof.into()),
                r => r,
            },
            Sock::Unix(s) => shm::recv_some_with_fd(s, buf).map(|(n, f)| {
                if fd.is_none() {
                    *fd = f;
                }
                n
            }),
        };
        match r {
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(0),
            r => r,
        }
    }
}

enum Phase {
    /// Reading the hello.
    Hello,
    /// Challenge sent; reading the answer.
    Auth {
        h: Hello,
        q: Weak<QpInner>,
        key: [u8; KEY_LEN],
        challenge: [u8; KEY_LEN],
    },
    /// A banned peer's hello: held unanswered (what it sends is drained)
    /// until the hello deadline closes it, so a flooder that reconnects at
    /// once gets one attempt per deadline instead of one per round trip.
    Tarpit,
}

/// A socket that has not authenticated yet.
struct Pending {
    sock: Option<Sock>,
    deadline: Instant,
    phase: Phase,
    buf: [u8; HELLO_LEN],
    got: usize,
    fd: Option<OwnedFd>,
}

impl Pending {
    fn need(&self) -> usize {
        match self.phase {
            Phase::Hello | Phase::Tarpit => HELLO_LEN,
            Phase::Auth { .. } => auth::MSG_LEN,
        }
    }

    fn refuse(&mut self, code: u32, why: &str) {
        tracing::debug!("refusing a hello: {why} (code {code})");
        if let Some(s) = self.sock.take() {
            s.send(&auth::refusal(code), None);
        }
    }

    /// Advances with what arrived; false once the socket is finished
    /// (attached, refused or gone).
    fn step(&mut self, nic: &Arc<NicInner>) -> bool {
        loop {
            let Some(s) = &self.sock else { return false };
            let need = self.need();
            let n = match s.recv(&mut self.buf[self.got..need], &mut self.fd) {
                Ok(0) => return true,
                Ok(n) => n,
                Err(_) => {
                    self.sock = None;
                    return false;
                }
            };
            if matches!(self.phase, Phase::Tarpit) {
                continue; // drained, never answered
            }
            let was = self.got;
            self.got += n;
            if matches!(self.phase, Phase::Hello) && was < 4 && self.got >= 4 {
                // Old versions and garbage are refused at once.
                if auth::check_prefix(&self.buf[..4]) != Ok(kind::HELLO) {
                    self.refuse(refuse::BAD_HELLO, "not a version-2 hello");
                    return false;
                }
            }
            if self.got < need {
                continue;
            }
            self.got = 0;
            match std::mem::replace(&mut self.phase, Phase::Hello) {
                Phase::Hello => {
                    if !self.on_hello(nic) {
                        return false;
                    }
                }
                Phase::Auth {
                    h,
                    q,
                    key,
                    challenge,
                } => {
                    self.on_answer(nic, h, q, key, challenge);
                    return false;
                }
                Phase::Tarpit => self.phase = Phase::Tarpit,
            }
        }
    }

    fn on_hello(&mut self, nic: &Arc<NicInner>) -> bool {
        let hb: &[u8; HELLO_LEN] = &self.buf;
        let h = match Hello::decode(hb) {
            Ok(h) => h,
            Err(e) => {
                self.refuse(refuse::BAD_HELLO, &format!("bad hello: {e}"));
                return false;
            }
        };
        if Some(h.link) != self.sock.as_ref().map(Sock::link) {
            self.refuse(refuse::BAD_HELLO, "hello names another link");
            return false;
        }
        let Some(q) = nic.qps.read().get(&h.dst).cloned() else {
            self.refuse(refuse::NO_QP, &format!("no QP {}", h.dst));
            return false;
        };
        // Before the key agreement: a banned peer costs this NIC no DH, and
        // gets no answer (a hello naming someone else's key is held the same
        // way; that key's owner is banned anyway).
        if nic.banned(&h.pk) {
            tracing::debug!("hello of a peer banned for flooding: held until its deadline");
            self.phase = Phase::Tarpit;
            return true;
        }
        let Some(key) = nic.id.pairwise(&h.pk) else {
            self.refuse(refuse::BAD_KEY, "non-contributory public key");
            return false;
        };
        let challenge = auth::nonce();
        let sent = self
            .sock
            .as_ref()
            .is_some_and(|s| s.send(&auth::msg(kind::CHAL, 0, &challenge), None));
        if !sent {
            return false;
        }
        self.phase = Phase::Auth {
            h,
            q: Arc::downgrade(&q),
            key,
            challenge,
        };
        true
    }

    fn on_answer(
        &mut self,
        nic: &Arc<NicInner>,
        h: Hello,
        q: Weak<QpInner>,
        key: [u8; KEY_LEN],
        challenge: [u8; KEY_LEN],
    ) {
        let mb: [u8; auth::MSG_LEN] = self.buf[..auth::MSG_LEN]
            .try_into()
            .expect("40-byte prefix of the buffer");
        let (seg_len, mac) = match auth::parse_msg(&mb) {
            Ok((kind::AUTH, w, mac)) => (w, mac),
            _ => return self.refuse(refuse::BAD_HELLO, "no hello answer"),
        };
        if !h.verify(&key, &challenge, &nic.id.public(), &mac) {
            return self.refuse(
                refuse::BAD_MAC,
                &format!("MAC for QP {} from QP {} does not verify", h.dst, h.src),
            );
        }
        let Some(q) = q.upgrade() else {
            return self.refuse(refuse::NO_QP, &format!("QP {} went away", h.dst));
        };
        match self.sock.take() {
            Some(Sock::Tcp(s)) => attach_tcp(nic, s, &q, &h),
            Some(Sock::Unix(s)) => {
                let fd = self.fd.take();
                attach_shm(nic, s, fd, seg_len, &q, &h)
            }
            None => {}
        }
    }
}

pub(super) fn control_loop(nic: Arc<NicInner>, ul: UnixListener, tl: TcpListener) {
    let _ = ul.set_nonblocking(true);
    let _ = tl.set_nonblocking(true);
    let mut pending: Vec<Pending> = Vec::new();
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
        let first_pending = fds.len();
        for p in &pending {
            fds.push(libc::pollfd {
                fd: p.sock.as_ref().map_or(-1, Sock::fd),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let now = Instant::now();
        let timeout = pending
            .iter()
            .map(|p| p.deadline.saturating_duration_since(now).as_millis() as i32 + 1)
            .min()
            .unwrap_or(200)
            .min(200);
        // SAFETY: fds is a valid array of pollfd for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n > 0 {
            for (p, f) in pending.iter_mut().zip(&fds[first_pending..]) {
                if f.revents != 0 && !p.step(&nic) {
                    p.sock = None;
                }
            }
            if fds[1].revents != 0 {
                while let Ok((s, _)) = ul.accept() {
                    admit(&nic, &mut pending, Sock::Unix(s));
                }
            }
            if fds[2].revents != 0 {
                while let Ok((s, _)) = tl.accept() {
                    // Past the channel cap a new connection is closed at
                    // once (dropping `s`), before any hello work.
                    if nic.admit_tcp() {
                        admit(&nic, &mut pending, Sock::Tcp(s));
                    }
                }
            }
            let mut removed = false;
            for (c, f) in chans.iter().zip(&fds[3..first_pending]) {
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
        let now = Instant::now();
        pending.retain(|p| {
            if p.sock.is_some() && now >= p.deadline {
                tracing::debug!("dropping a socket that sent no hello within {HELLO_DEADLINE:?}");
                return false;
            }
            p.sock.is_some()
        });
    }
}

/// Takes a new socket into the hello state machine (closing it at once
/// past the cap) and reads what it already sent.
fn admit(nic: &Arc<NicInner>, pending: &mut Vec<Pending>, s: Sock) {
    if pending.len() >= MAX_PENDING {
        tracing::debug!("{MAX_PENDING} sockets have not authenticated yet: closing a new one");
        return;
    }
    let ok = match &s {
        Sock::Tcp(t) => t.set_nonblocking(true),
        Sock::Unix(u) => u.set_nonblocking(true),
    };
    if ok.is_err() {
        return;
    }
    let mut p = Pending {
        sock: Some(s),
        deadline: Instant::now() + HELLO_DEADLINE,
        phase: Phase::Hello,
        buf: [0u8; HELLO_LEN],
        got: 0,
        fd: None,
    };
    if p.step(nic) {
        pending.push(p);
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

impl NicInner {
    /// Starts serving a channel attached to one of this NIC's QPs.
    pub(crate) fn serve_inbound(&self, i: &Inbound) {
        match i {
            Inbound::Shm(ch) => {
                self.in_shm.write().push(ch.clone());
                self.in_shm_ver.fetch_add(1, Ordering::Release);
                efd_signal(self.doorbell.as_raw_fd());
            }
            Inbound::Tcp(ch) => {
                self.in_tcp.lock().insert(ch.token(), ch.clone());
                if let Err(e) = epoll_ctl(
                    self.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    ch.fd(),
                    libc::EPOLLIN as u32,
                    ch.token(),
                ) {
                    tracing::warn!("epoll add: {e}");
                }
            }
        }
    }
}

fn attach_shm(
    nic: &Arc<NicInner>,
    s: UnixStream,
    fd: Option<OwnedFd>,
    len: u32,
    q: &Arc<QpInner>,
    h: &Hello,
) {
    let deny = |code: u32, why: &str| {
        tracing::debug!("refusing an shm channel to QP {}: {why}", h.dst);
        let _ = shm::send_with_fd(&s, &auth::refusal(code), None);
    };
    let Some(fd) = fd else {
        return deny(refuse::BAD_SEGMENT, "no segment fd");
    };
    if !shm::check_sealed(&fd)
        || (len as usize) < shm::seg_len()
        || len as usize > shm::seg_len() + 4096
    {
        return deny(refuse::BAD_SEGMENT, "segment unsealed or of a bad size");
    }
    // The control socket goes back to blocking reads (block sharing).
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let ch = MemBlock::from_fd(fd, len as usize, 0).and_then(|b| {
        InShm::new(
            Arc::new(b),
            s.try_clone().map_err(|e| FabricError::io("dup", e))?,
            Arc::downgrade(q),
        )
    });
    let ch = match ch {
        Ok(ch) => Arc::new(ch),
        Err(e) => {
            tracing::warn!("refusing shm channel: {e}");
            return deny(refuse::BAD_SEGMENT, "segment cannot be mapped");
        }
    };
    let attached = match q.attach_inbound(Inbound::Shm(ch.clone()), &h.pk, h.src, h.epoch) {
        Ok(a) => a,
        Err(code) => return deny(code, auth::refusal_reason(code)),
    };
    let ok = auth::msg(kind::OK, 0, &[0u8; KEY_LEN]);
    if let Err(e) = shm::send_with_fd(&s, &ok, Some(nic.doorbell.as_raw_fd())) {
        tracing::debug!("shm hello reply failed: {e}");
        ch.kill("hello reply failed");
        return;
    }
    if attached {
        nic.serve_inbound(&Inbound::Shm(ch));
    }
}

fn attach_tcp(nic: &Arc<NicInner>, s: TcpStream, q: &Arc<QpInner>, h: &Hello) {
    let Ok(w) = s.try_clone() else { return };
    let fd = s.as_raw_fd();
    let Ok(f) = Framed::new(s) else { return };
    let token = nic.next_token.fetch_add(1, Ordering::Relaxed);
    let ch = Arc::new(InTcp::new(f, Arc::downgrade(q), h.pk, token, fd));
    let attached = match q.attach_inbound(Inbound::Tcp(ch.clone()), &h.pk, h.src, h.epoch) {
        Ok(a) => a,
        Err(code) => {
            tracing::debug!(
                "refusing a tcp channel to QP {}: {}",
                h.dst,
                auth::refusal_reason(code)
            );
            let _ = (&w).write(&auth::refusal(code));
            return;
        }
    };
    if !matches!(
        (&w).write(&auth::msg(kind::OK, 0, &[0u8; KEY_LEN])),
        Ok(auth::MSG_LEN)
    ) {
        ch.kill();
        return;
    }
    if attached {
        nic.serve_inbound(&Inbound::Tcp(ch));
    }
}
