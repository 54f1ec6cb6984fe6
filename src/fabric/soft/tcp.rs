//! The tcp link: one TCP connection per (initiator QP → target QP) channel,
//! carrying framed requests one way and framed responses the other,
//! pipelined, TCP_NODELAY, many frames per syscall. Frames are validated
//! (magic, version, kind, header length, payload length against a maximum)
//! before anything is allocated; a bad frame closes that channel only.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::auth::{self, Hello, HelloLink, Identity, KEY_LEN};
use super::wire::{
    FrameKind, Prefix, ReqHeader, RespHeader, WireError, FRAME_PREFIX, REQ_LEN, RESP_LEN,
};
use crate::fabric::{FabricError, Result};

/// Input buffer size a new channel starts with.
const RBUF_MIN: usize = 16 << 10;
/// Size the buffers return to once a large frame has been consumed (and
/// that the input buffer may reach with small frames alone, by doubling
/// while reads fill it).
pub const BUF_STEADY: usize = 256 << 10;

/// A framed, non-blocking byte stream with input and output buffers.
///
/// Memory follows the bytes that arrived, never what a peer announced: the
/// input buffer starts small and doubles only when a read fills it (up to
/// the length of the frame being received, or [`BUF_STEADY`] for streams of
/// small frames), and both buffers shrink back to [`BUF_STEADY`] once they
/// are empty after a large frame.
pub struct Framed {
    /// The socket (non-blocking after set-up).
    pub sock: TcpStream,
    wbuf: Vec<u8>,
    wpos: usize,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    /// Total length of the incomplete frame at `rstart` (0: none known).
    want: usize,
    /// The last read found no room within its limit.
    starved: bool,
    /// Bytes read from the socket so far (progress, for the stall check).
    received: u64,
    /// The peer closed or broke the stream.
    pub dead: bool,
}

/// A parsed frame: its prefix, header bytes and payload range inside the
/// input buffer (valid until the next `read_some`).
pub struct Frame {
    /// Frame kind.
    pub kind: FrameKind,
    /// Header bytes (64 for requests, 32 for responses; only the prefix used).
    pub hdr: [u8; REQ_LEN],
    /// Payload start in the input buffer.
    pub payload: std::ops::Range<usize>,
}

impl Framed {
    /// Wraps a connected stream.
    pub fn new(sock: TcpStream) -> std::io::Result<Framed> {
        sock.set_nodelay(true)?;
        sock.set_nonblocking(true)?;
        Ok(Framed {
            sock,
            wbuf: Vec::with_capacity(RBUF_MIN),
            wpos: 0,
            rbuf: vec![0u8; RBUF_MIN],
            rstart: 0,
            rend: 0,
            want: 0,
            starved: false,
            received: 0,
            dead: false,
        })
    }

    /// Bytes waiting to be written.
    pub fn pending_out(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Bytes received and not yet consumed as frames.
    pub fn pending_in(&self) -> usize {
        self.rend - self.rstart
    }

    /// Size of the input buffer.
    pub fn in_capacity(&self) -> usize {
        self.rbuf.len()
    }

    /// The last read found the input buffer full and not allowed to grow
    /// (it holds frames not yet taken, or the start of a frame too large
    /// for the limit).
    pub fn input_starved(&self) -> bool {
        self.starved
    }

    /// Bytes this stream's buffers hold allocated (input and output).
    pub fn footprint(&self) -> usize {
        self.rbuf.len() + self.wbuf.capacity()
    }

    /// Bytes read from the socket since the stream was made: it grows
    /// whenever the peer's data arrives (the responder's stall check
    /// compares it between scans; nothing on the data path reads a clock).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Drops both buffers and whatever they held (the stream is dead or
    /// about to be closed): its footprint becomes 0.
    pub fn release(&mut self) {
        self.rbuf = Vec::new();
        self.wbuf = Vec::new();
        self.rstart = 0;
        self.rend = 0;
        self.wpos = 0;
        self.want = 0;
        self.dead = true;
    }

    /// Appends a request frame.
    pub fn push_req(&mut self, h: &ReqHeader, payload: &[u8]) {
        self.wbuf
            .extend_from_slice(&Prefix::encode(FrameKind::Req, payload.len() as u32));
        let mut hb = [0u8; REQ_LEN];
        h.encode(&mut hb);
        self.wbuf.extend_from_slice(&hb);
        self.wbuf.extend_from_slice(payload);
    }

    /// Appends a response frame; returns where its payload goes so the
    /// caller can fill `len` bytes in place.
    pub fn push_resp(&mut self, r: &RespHeader, payload_len: usize) -> &mut [u8] {
        self.wbuf
            .extend_from_slice(&Prefix::encode(FrameKind::Resp, payload_len as u32));
        let mut hb = [0u8; RESP_LEN];
        r.encode(&mut hb);
        self.wbuf.extend_from_slice(&hb);
        let at = self.wbuf.len();
        self.wbuf.resize(at + payload_len, 0);
        &mut self.wbuf[at..]
    }

    /// Writes as much pending output as the socket takes.
    pub fn flush(&mut self) -> std::io::Result<()> {
        while self.wpos < self.wbuf.len() {
            match self.sock.write(&self.wbuf[self.wpos..]) {
                Ok(0) => {
                    self.dead = true;
                    return Err(ErrorKind::WriteZero.into());
                }
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.dead = true;
                    return Err(e);
                }
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
            if self.wbuf.capacity() > BUF_STEADY {
                // A large response went out: do not keep its buffer.
                self.wbuf = Vec::with_capacity(BUF_STEADY);
            }
        }
        Ok(())
    }

    /// Reads what is available, the input buffer growing as needed up to
    /// the frame being received. Returns bytes read (0: nothing now).
    pub fn read_some(&mut self) -> std::io::Result<usize> {
        self.read_some_within(usize::MAX, usize::MAX)
    }

    /// As [`Framed::read_some`], but the input buffer grows past its current
    /// size only up to `limit` bytes (at the limit with no room left the
    /// stream is not read: back-pressure, the peer's data waits in the
    /// kernel and, once that fills, in the peer), and one call reads about
    /// `max` bytes at most (a flooding peer's bytes cost one visit no more).
    pub fn read_some_within(&mut self, limit: usize, max: usize) -> std::io::Result<usize> {
        let mut total = 0;
        self.starved = false;
        loop {
            if total >= max {
                return Ok(total);
            }
            if !self.make_room(limit) {
                self.starved = true;
                return Ok(total);
            }
            let end = self.rbuf.len().min(self.rend.saturating_add(max - total));
            let room = end - self.rend;
            match self.sock.read(&mut self.rbuf[self.rend..end]) {
                Ok(0) => {
                    self.dead = true;
                    return if total > 0 {
                        Ok(total)
                    } else {
                        Err(ErrorKind::UnexpectedEof.into())
                    };
                }
                Ok(n) => {
                    self.rend += n;
                    self.received += n as u64;
                    total += n;
                    if n < room {
                        // A short read drained the socket: asking again
                        // would only return EAGAIN, one more system call
                        // on the critical path of every round trip.
                        return Ok(total);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(total),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.dead = true;
                    return Err(e);
                }
            }
        }
    }

    /// Makes room at the end of the input buffer: shrinks an emptied large
    /// buffer, compacts, and grows (doubling) only when the buffered bytes
    /// fill it. Returns false when there is no room within `limit`.
    fn make_room(&mut self, limit: usize) -> bool {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
            if self.rbuf.len() > BUF_STEADY {
                // The large frame was consumed: give its memory back.
                self.rbuf = vec![0u8; BUF_STEADY];
            }
        }
        let len = self.rbuf.len();
        if len - self.rend >= len / 4 {
            return true;
        }
        if self.rstart > 0 {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        if self.rend < len / 2 {
            return true;
        }
        // More than half full of received bytes: grow, towards the frame
        // being received (its length was validated against the maximum) or,
        // for a stream of small frames, towards the steady size.
        let cap = self.want.max(BUF_STEADY).min(limit.max(len));
        if cap > len {
            let new = (len * 2).min(cap);
            self.rbuf.resize(new, 0);
        }
        self.rend < self.rbuf.len()
    }

    /// The next complete frame, if buffered. A frame that fails validation
    /// is an error (the caller closes the channel). A frame of the wrong kind
    /// for this direction is rejected as soon as its prefix arrives. An
    /// announced length allocates nothing: the input buffer grows only as
    /// the payload arrives.
    pub fn next_frame(
        &mut self,
        expect: FrameKind,
    ) -> std::result::Result<Option<Frame>, WireError> {
        let avail = self.rend - self.rstart;
        if avail < FRAME_PREFIX {
            self.want = 0;
            return Ok(None);
        }
        let pb: [u8; FRAME_PREFIX] = self.rbuf[self.rstart..self.rstart + FRAME_PREFIX]
            .try_into()
            .expect("prefix");
        let p = Prefix::decode(&pb)?;
        if p.kind != expect {
            return Err(WireError::BadKind(p.kind as u8));
        }
        let hl = p.hdr_len();
        let total = FRAME_PREFIX + hl + p.payload_len as usize;
        if avail < total {
            self.want = total;
            return Ok(None);
        }
        self.want = 0;
        let mut hdr = [0u8; REQ_LEN];
        let h0 = self.rstart + FRAME_PREFIX;
        hdr[..hl].copy_from_slice(&self.rbuf[h0..h0 + hl]);
        let payload = h0 + hl..h0 + hl + p.payload_len as usize;
        self.rstart += total;
        Ok(Some(Frame {
            kind: p.kind,
            hdr,
            payload,
        }))
    }

    /// Payload bytes of a frame returned by `next_frame`.
    pub fn payload(&self, f: &Frame) -> &[u8] {
        &self.rbuf[f.payload.clone()]
    }
}

/// Connects a channel: the authenticated hello (see `auth`), then the
/// framed stream.
pub fn connect(
    addr: &str,
    id: &Identity,
    remote_pk: &[u8; KEY_LEN],
    src_qpn: u32,
    dst_qpn: u32,
    epoch: u64,
) -> Result<Framed> {
    let s = connect_stream(addr, id, remote_pk, src_qpn, dst_qpn, epoch)?;
    Framed::new(s).map_err(|e| FabricError::io("configuring tcp channel", e))
}

/// Connects and authenticates a tcp channel; returns the blocking stream
/// right after the responder's OK.
pub fn connect_stream(
    addr: &str,
    id: &Identity,
    remote_pk: &[u8; KEY_LEN],
    src_qpn: u32,
    dst_qpn: u32,
    epoch: u64,
) -> Result<TcpStream> {
    let sa: SocketAddr = addr
        .to_socket_addrs()
        .map_err(|e| FabricError::io(format!("resolving tcp NIC address {addr}"), e))?
        .next()
        .ok_or_else(|| {
            FabricError::Invalid(format!("tcp NIC address {addr} resolves to nothing"))
        })?;
    let key = id.pairwise(remote_pk).ok_or_else(|| {
        FabricError::Invalid(format!("tcp NIC {addr} has an unusable public key"))
    })?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(3))
        .map_err(|e| FabricError::PeerLost(format!("connecting to tcp NIC {addr}: {e}")))?;
    s.set_nodelay(true)
        .map_err(|e| FabricError::io("TCP_NODELAY", e))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| FabricError::io("set_read_timeout", e))?;
    let h = Hello::new(id, HelloLink::Tcp, dst_qpn, src_qpn, epoch);
    let nic = format!("tcp NIC {addr}");
    let lost = |what: &str, e: std::io::Error| FabricError::PeerLost(format!("{what} {nic}: {e}"));
    let mut r = [0u8; auth::MSG_LEN];
    s.write_all(&h.encode()).map_err(|e| lost("hello to", e))?;
    s.read_exact(&mut r)
        .map_err(|e| lost("hello challenge from", e))?;
    let challenge = auth::expect_msg(&r, auth::kind::CHAL, &nic, dst_qpn)?;
    let mac = h.answer(&key, &challenge, remote_pk);
    s.write_all(&auth::msg(auth::kind::AUTH, 0, &mac))
        .map_err(|e| lost("hello answer to", e))?;
    s.read_exact(&mut r)
        .map_err(|e| lost("hello reply from", e))?;
    auth::expect_msg(&r, auth::kind::OK, &nic, dst_qpn)?;
    s.set_read_timeout(None)
        .map_err(|e| FabricError::io("set_read_timeout", e))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Instant;

    fn stream_pair() -> (TcpStream, Framed) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let tx = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (rx, _) = l.accept().unwrap();
        (tx, Framed::new(rx).unwrap())
    }

    /// Reads until `f` has taken `n` bytes in total, within 10 s.
    fn read_until(f: &mut Framed, limit: usize, n: usize, taken: &mut usize) {
        let t = Instant::now();
        while *taken < n {
            *taken += f.read_some_within(limit, usize::MAX).unwrap();
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "stream stalled at {taken}"
            );
        }
    }

    /// The input buffer follows the bytes that arrived, not the length a
    /// frame announced; grows (doubling) to hold a large frame that does
    /// arrive; gives the memory back once the frame is consumed; and stops
    /// growing at the caller's limit.
    #[test]
    fn input_buffer_follows_arrived_bytes() {
        let (mut tx, mut f) = stream_pair();
        let len = 4 << 20;
        let h = ReqHeader {
            op: super::super::wire::ReqOp::Write,
            epoch: 0,
            len: len as u32,
            seq: 1,
            raddr: 0,
            rkey: 0,
            lblock: 0,
            loff: 0,
            arg0: 0,
            arg1: 0,
        };
        let mut hb = [0u8; REQ_LEN];
        h.encode(&mut hb);
        tx.write_all(&Prefix::encode(FrameKind::Req, len as u32))
            .unwrap();
        tx.write_all(&hb).unwrap();
        tx.write_all(&[7u8; 1000]).unwrap();
        let mut taken = 0;
        read_until(
            &mut f,
            usize::MAX,
            FRAME_PREFIX + REQ_LEN + 1000,
            &mut taken,
        );
        assert!(f.next_frame(FrameKind::Req).unwrap().is_none());
        assert_eq!(f.in_capacity(), RBUF_MIN, "an announced length allocated");
        // The rest arrives: the buffer grows to hold the frame, no further.
        let w = std::thread::spawn(move || {
            tx.write_all(&vec![7u8; len - 1000]).unwrap();
            tx
        });
        let total = FRAME_PREFIX + REQ_LEN + len;
        let t = Instant::now();
        let fr = loop {
            taken += f.read_some().unwrap();
            if let Some(fr) = f.next_frame(FrameKind::Req).unwrap() {
                break fr;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "frame never completed"
            );
        };
        assert_eq!(fr.payload.len(), len);
        assert!(f.payload(&fr).iter().all(|b| *b == 7));
        assert!(f.in_capacity() >= total && f.in_capacity() <= 2 * total);
        let mut tx = w.join().unwrap();
        // Consumed: the next read gives the memory back.
        tx.write_all(&Prefix::encode(FrameKind::Req, 0)).unwrap();
        tx.write_all(&hb).unwrap();
        read_until(
            &mut f,
            usize::MAX,
            taken + FRAME_PREFIX + REQ_LEN,
            &mut taken,
        );
        assert_eq!(
            f.in_capacity(),
            BUF_STEADY,
            "a consumed large frame kept its buffer"
        );
        assert!(f.next_frame(FrameKind::Req).unwrap().is_some());
        // With a limit, the buffer stays at it and the stream is not read.
        tx.write_all(&Prefix::encode(FrameKind::Req, len as u32))
            .unwrap();
        tx.write_all(&hb).unwrap();
        tx.write_all(&vec![7u8; 1 << 20]).unwrap();
        let t = Instant::now();
        while !f.input_starved() {
            f.read_some_within(BUF_STEADY, usize::MAX).unwrap();
            assert!(f.next_frame(FrameKind::Req).unwrap().is_none());
            assert!(t.elapsed() < Duration::from_secs(10), "buffer never filled");
        }
        assert_eq!(f.in_capacity(), BUF_STEADY);
        assert_eq!(f.read_some_within(BUF_STEADY, usize::MAX).unwrap(), 0);
    }

    /// A framed stream carries frames; the hello lives in `auth`.
    #[test]
    fn connect_refuses_a_closed_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let id = Identity::generate();
        let peer = Identity::generate().public();
        assert!(matches!(
            connect(&addr, &id, &peer, 1, 2, 1),
            Err(FabricError::PeerLost(_))
        ));
    }
}
