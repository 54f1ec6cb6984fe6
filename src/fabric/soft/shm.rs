//! The shm link: a channel is one sealed memfd segment created by the
//! initiator, handed to the target NIC over a Unix socket (SCM_RIGHTS).
//!
//! Segment layout (offsets in bytes):
//! ```text
//! 0      header: magic u64, version u32
//! 64     nic_sleep u32   (target's responder is parked; ring its doorbell)
//! 4096   request ring   (initiator -> target responder), REQ_SLOTS x 64 B
//! ...    response ring  (target responder -> initiator), REQ_SLOTS x 32 B
//! ...    message ring   (initiator SENDs -> target QP's receive queue)
//! ```
//! The initiator's local buffers (its MR blocks) are shared lazily over the
//! same Unix socket the first time a request names them, so the responder
//! can place READ data and take WRITE data directly. The memory node's
//! exposed memory is never shared with anyone.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Buf, BufMut};
use parking_lot::{Mutex, RwLock};

use super::auth::{self, Hello, HelloLink, Identity};
use super::ring::{Consumer, Producer, RingLayout};
use super::wire::{MAX_SEND, REQ_LEN, RESP_LEN};
use crate::fabric::mem::MemBlock;
use crate::fabric::{FabricError, Result};

/// Segment magic.
pub const SEG_MAGIC: u64 = 0x5041_5452_4f4e_5553; // "PATRONUS"
/// Request/response ring slots (bounds the QP depth).
pub const REQ_SLOTS: u32 = 1024;
/// Message ring slots.
pub const MSG_SLOTS: u32 = 64;
/// Message slot: 16-byte header (len u32) + payload.
pub const MSG_SLOT: usize = 16 + MAX_SEND as usize + 8;
/// Offset of the nic_sleep flag.
pub const NIC_SLEEP: usize = 64;

/// Ring layouts inside a segment.
pub fn layouts() -> (RingLayout, RingLayout, RingLayout) {
    // Request headers end in 8 reserved bytes and responses in 8 reserved
    // bytes: those hold the ring stamps.
    let req = RingLayout {
        off: 4096,
        slots: REQ_SLOTS,
        slot: REQ_LEN,
    };
    let resp = RingLayout {
        off: req.off + req.bytes(),
        slots: REQ_SLOTS,
        slot: RESP_LEN,
    };
    let msg = RingLayout {
        off: (resp.off + resp.bytes()).next_multiple_of(64),
        slots: MSG_SLOTS,
        slot: MSG_SLOT,
    };
    (req, resp, msg)
}

/// Total segment size.
pub fn seg_len() -> usize {
    let (_, _, m) = layouts();
    m.off + m.bytes()
}

/// Control message kinds on the Unix socket.
pub mod ctl {
    /// Version-1 hello (refused since hellos are authenticated; see `auth`).
    pub const HELLO: u32 = 1;
    /// Initiator -> target: map a memory block (fd = block).
    pub const BLOCK: u32 = 2;
    /// Target -> initiator: OK (fd = doorbell on HELLO).
    pub const OK: u32 = 100;
    /// Target -> initiator: refused (no such QP, bad segment, ...).
    pub const ERR: u32 = 101;
}

/// A 32-byte control message: kind, a, b, c.
pub fn ctl_msg(kind: u32, a: u32, b: u64, c: u64) -> [u8; 32] {
    let mut m = [0u8; 32];
    let mut w = &mut m[..];
    w.put_u32_le(kind);
    w.put_u32_le(a);
    w.put_u64_le(b);
    w.put_u64_le(c);
    w.put_u8(super::wire::VERSION);
    m
}

/// Decodes a control message.
pub fn ctl_parse(m: &[u8; 32]) -> (u32, u32, u64, u64) {
    // Every read lies inside the 32-byte array.
    let mut r = &m[..];
    (
        r.get_u32_le(),
        r.get_u32_le(),
        r.get_u64_le(),
        r.get_u64_le(),
    )
}

/// Sends `data` with up to one fd attached.
pub fn send_with_fd(sock: &UnixStream, data: &[u8], fd: Option<RawFd>) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // CMSG space for one int, u64-aligned.
    let mut cbuf = [0u64; 4];
    // SAFETY: a zeroed msghdr is a valid "empty" value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space;
        // SAFETY: msg_control points to a buffer of `space` bytes (<= 32).
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut RawFd, fd);
        }
    }
    // SAFETY: msg describes valid buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if n as usize != data.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "short control message",
        ));
    }
    Ok(())
}

/// Receives exactly `buf.len()` bytes, returning an fd if one was attached.
pub fn recv_with_fd(sock: &UnixStream, buf: &mut [u8]) -> std::io::Result<Option<OwnedFd>> {
    let (n, fd) = recv_some_with_fd(sock, buf)?;
    if n < buf.len() {
        // The rest arrives without fds.
        (&*sock).read_exact(&mut buf[n..])?;
    }
    Ok(fd)
}

/// One `recvmsg` into `buf`: the bytes received (at least 1; EOF is an
/// error) and the first fd attached, if any (extras are closed). On a
/// non-blocking socket with nothing to read this is `WouldBlock`.
pub fn recv_some_with_fd(
    sock: &UnixStream,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: a zeroed msghdr is a valid "empty" value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: msg describes valid buffers for the duration of the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fd = None;
    // SAFETY: the kernel filled msg_control; we walk it with the CMSG macros
    // and take ownership of every fd it carries (closing extras).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let nfd =
                    ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                for i in 0..nfd {
                    let f = std::ptr::read_unaligned((data as *const RawFd).add(i));
                    let owned = OwnedFd::from_raw_fd(f);
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let n = n as usize;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "peer closed the control socket",
        ));
    }
    Ok((n, fd))
}

/// Seals a memfd so the peer can trust its size (no shrink -> no SIGBUS).
pub fn seal(fd: &OwnedFd) -> Result<()> {
    // SAFETY: fcntl on a valid fd.
    let rc = unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
        )
    };
    if rc != 0 {
        return Err(FabricError::io(
            "sealing memfd",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Checks a peer's memfd is sealed against shrinking.
pub fn check_sealed(fd: &OwnedFd) -> bool {
    // SAFETY: fcntl on a valid fd.
    let s = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    s >= 0 && s & libc::F_SEAL_SHRINK != 0
}

/// Target side of a shm channel (attached to a local QP).
pub struct InShm {
    /// The segment.
    pub seg: Arc<MemBlock>,
    /// Responder state, taken once by the NIC's shm loop (the channel's
    /// only responder), which then owns it without locking.
    pub resp: Mutex<Option<RespState>>,
    /// Message ring consumer (read by the target QP's receive side).
    pub msg: Mutex<Consumer>,
    /// Lock-free view of the message ring and the consumer's head as of
    /// its last pass: a poll that finds nothing takes no lock.
    pub msg_peek: super::ring::Peeker,
    /// See `msg_peek`.
    pub msg_head: std::sync::atomic::AtomicU64,
    /// Initiator blocks mapped here, by the initiator's block id.
    pub blocks: RwLock<HashMap<u32, Arc<MemBlock>>>,
    /// Bumped whenever `blocks` changes.
    pub blocks_ver: std::sync::atomic::AtomicU64,
    /// Set when the initiator died or misbehaved.
    pub dead: AtomicBool,
    /// Control socket (kept for shutdown on corruption).
    pub ctrl: UnixStream,
    /// The local QP the channel reaches.
    pub target: std::sync::Weak<super::qp::QpInner>,
    /// Lock-free view of the request ring, and the responder's head as of
    /// its last pass: the NIC's idle loop polls these instead of locking.
    pub req_peek: super::ring::Peeker,
    /// See `req_peek`.
    pub req_head: std::sync::atomic::AtomicU64,
}

impl InShm {
    /// True when a request may be waiting (no lock taken).
    #[inline]
    pub fn has_request(&self) -> bool {
        self.req_peek.ready(self.req_head.load(Ordering::Relaxed))
    }
}

/// Responder-private state of a channel.
pub struct RespState {
    /// Request ring consumer.
    pub req: Consumer,
    /// Response ring producer.
    pub resp: Producer,
    /// Epoch whose later requests are discarded after an error.
    pub err_epoch: Option<u8>,
    /// The responder's copy of the mapped blocks.
    pub blocks: Vec<(u32, Arc<MemBlock>)>,
    /// Version of that copy.
    pub blocks_ver: u64,
}

impl InShm {
    /// Attaches to a segment received from an initiator.
    pub fn new(
        seg: Arc<MemBlock>,
        ctrl: UnixStream,
        target: std::sync::Weak<super::qp::QpInner>,
    ) -> Result<InShm> {
        let (req, resp, msg) = layouts();
        if seg.len() < seg_len() {
            return Err(FabricError::Invalid(format!(
                "shm segment of {} bytes, need {}",
                seg.len(),
                seg_len()
            )));
        }
        let mut magic = [0u8; 8];
        // SAFETY: the segment has at least 8 bytes.
        unsafe { std::ptr::copy_nonoverlapping(seg.as_ptr(), magic.as_mut_ptr(), 8) };
        if u64::from_le_bytes(magic) != SEG_MAGIC {
            return Err(FabricError::Invalid("shm segment has a bad magic".into()));
        }
        let consumer = Consumer::new(seg.clone(), req);
        let req_peek = consumer.peeker();
        let req_head = std::sync::atomic::AtomicU64::new(consumer.head());
        let msgc = Consumer::new(seg.clone(), msg);
        let msg_peek = msgc.peeker();
        let msg_head = std::sync::atomic::AtomicU64::new(msgc.head());
        Ok(InShm {
            req_peek,
            req_head,
            msg_peek,
            msg_head,
            resp: Mutex::new(Some(RespState {
                req: consumer,
                resp: Producer::new(seg.clone(), resp, false),
                err_epoch: None,
                blocks: Vec::new(),
                blocks_ver: 0,
            })),
            msg: Mutex::new(msgc),
            seg,
            blocks: RwLock::new(HashMap::new()),
            blocks_ver: std::sync::atomic::AtomicU64::new(0),
            dead: AtomicBool::new(false),
            ctrl,
            target,
        })
    }

    /// Marks the channel dead and tells the initiator (EOF on its socket).
    pub fn kill(&self, why: &str) {
        if !self.dead.swap(true, Ordering::AcqRel) {
            tracing::debug!("shm channel closed: {why}");
            let _ = self.ctrl.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Initiator side of a shm channel.
pub struct OutShm {
    /// The segment.
    pub seg: Arc<MemBlock>,
    /// Request ring producer.
    pub req: Producer,
    /// Response ring consumer.
    pub resp: Consumer,
    /// Message ring producer.
    pub msg: Producer,
    /// Control socket to the target NIC.
    pub ctrl: UnixStream,
    /// The target NIC's doorbell (eventfd).
    pub doorbell: OwnedFd,
    /// Blocks already shared with the target.
    pub shared: Vec<u32>,
    /// Target NIC id + QP number this channel reaches.
    pub remote: (String, u32),
}

impl OutShm {
    /// Creates a segment and attaches it to `dst_qpn` at the NIC listening on
    /// the abstract Unix address `addr`, whose public key is `remote_pk`,
    /// after the authenticated hello (see `auth`).
    pub fn connect(
        addr: &str,
        id: &Identity,
        remote_pk: &[u8; auth::KEY_LEN],
        src_qpn: u32,
        dst_qpn: u32,
        epoch: u64,
    ) -> Result<OutShm> {
        use std::os::linux::net::SocketAddrExt;
        let key = id.pairwise(remote_pk).ok_or_else(|| {
            FabricError::Invalid(format!("shm NIC {addr} has an unusable public key"))
        })?;
        let sa = std::os::unix::net::SocketAddr::from_abstract_name(addr.as_bytes())
            .map_err(|e| FabricError::io(format!("shm address {addr}"), e))?;
        let ctrl = UnixStream::connect_addr(&sa)
            .map_err(|e| FabricError::PeerLost(format!("connecting to shm NIC {addr}: {e}")))?;
        ctrl.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .map_err(|e| FabricError::io("set_read_timeout", e))?;
        let seg = MemBlock::new(seg_len(), "shm-channel")?;
        // SAFETY: the segment is at least 4096 bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(SEG_MAGIC.to_le_bytes().as_ptr(), seg.as_ptr(), 8);
        }
        seal(seg.fd())?;
        let seg = Arc::new(seg);
        let (rq, rs, ms) = layouts();
        let req = Producer::new(seg.clone(), rq, true);
        let resp = Consumer::new(seg.clone(), rs);
        let msg = Producer::new(seg.clone(), ms, true);
        let h = Hello::new(id, HelloLink::Shm, dst_qpn, src_qpn, epoch);
        let nic = format!("shm NIC {addr}");
        let lost =
            |what: &str, e: std::io::Error| FabricError::PeerLost(format!("{what} {nic}: {e}"));
        send_with_fd(&ctrl, &h.encode(), None).map_err(|e| lost("hello to", e))?;
        let mut r = [0u8; auth::MSG_LEN];
        recv_with_fd(&ctrl, &mut r).map_err(|e| lost("hello challenge from", e))?;
        let challenge = auth::expect_msg(&r, auth::kind::CHAL, &nic, dst_qpn)?;
        let mac = h.answer(&key, &challenge, remote_pk);
        let answer = auth::msg(auth::kind::AUTH, seg.len() as u32, &mac);
        send_with_fd(&ctrl, &answer, Some(seg.fd().as_raw_fd()))
            .map_err(|e| lost("hello answer to", e))?;
        let fd = recv_with_fd(&ctrl, &mut r).map_err(|e| lost("hello reply from", e))?;
        auth::expect_msg(&r, auth::kind::OK, &nic, dst_qpn)?;
        let doorbell = fd.ok_or_else(|| {
            FabricError::PeerLost(format!("NIC {addr} sent no doorbell with its reply"))
        })?;
        Ok(OutShm {
            seg,
            req,
            resp,
            msg,
            ctrl,
            doorbell,
            shared: Vec::new(),
            remote: (addr.to_string(), dst_qpn),
        })
    }

    /// Makes sure the target has mapped `block`.
    pub fn share(&mut self, block: &MemBlock) -> Result<()> {
        if self.shared.contains(&block.id()) {
            return Ok(());
        }
        if !check_sealed(block.fd()) {
            seal(block.fd())?;
        }
        let m = ctl_msg(ctl::BLOCK, block.id(), block.len() as u64, 0);
        send_with_fd(&self.ctrl, &m, Some(block.fd().as_raw_fd()))
            .map_err(|e| FabricError::PeerLost(format!("sharing block {}: {e}", block.id())))?;
        let mut reply = [0u8; 32];
        recv_with_fd(&self.ctrl, &mut reply)
            .map_err(|e| FabricError::PeerLost(format!("sharing block {}: {e}", block.id())))?;
        if ctl_parse(&reply).0 != ctl::OK {
            return Err(FabricError::PeerLost(format!(
                "NIC refused to map block {}",
                block.id()
            )));
        }
        self.shared.push(block.id());
        Ok(())
    }

    /// Rings the target's doorbell when its responder is parked.
    #[inline]
    pub fn kick(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if super::ring::flag(&self.seg, NIC_SLEEP).load(Ordering::Relaxed) != 0 {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writing 8 bytes to an eventfd we own a duplicate of.
            unsafe {
                libc::write(
                    self.doorbell.as_raw_fd(),
                    one.as_ptr() as *const libc::c_void,
                    8,
                );
            }
        }
    }

    /// True while the target NIC's end of the control socket is open.
    pub fn alive(&self) -> bool {
        let mut b = [0u8; 1];
        // SAFETY: recv into a 1-byte buffer on a valid socket, non-blocking peek.
        let n = unsafe {
            libc::recv(
                self.ctrl.as_raw_fd(),
                b.as_mut_ptr() as *mut libc::c_void,
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n == 0 {
            return false;
        }
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return e.kind() == std::io::ErrorKind::WouldBlock;
        }
        true
    }
}

/// Writes a control reply (best effort: the initiator may be gone).
pub fn reply(sock: &UnixStream, kind: u32, code: u32, fd: Option<RawFd>) {
    let m = ctl_msg(kind, code, 0, 0);
    if let Err(e) = send_with_fd(sock, &m, fd) {
        tracing::debug!("control reply failed: {e}");
    }
    let _ = (&*sock).flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The control-message layout byte for byte (recorded from the
    /// hand-written codec this one replaced).
    #[test]
    fn control_messages_are_byte_identical() {
        let m = ctl_msg(
            ctl::BLOCK,
            0x0102_0304,
            0x1112_1314_1516_1718,
            0x2122_2324_2526_2728,
        );
        assert_eq!(
            hex::encode(m),
            "0200000004030201181716151413121128272625242322210100000000000000"
        );
        assert_eq!(
            ctl_parse(&m),
            (
                ctl::BLOCK,
                0x0102_0304,
                0x1112_1314_1516_1718,
                0x2122_2324_2526_2728
            )
        );
    }
}
