//! The tcp link: one TCP connection per (initiator QP → target QP) channel,
//! carrying framed requests one way and framed responses the other,
//! pipelined, TCP_NODELAY, many frames per syscall. Frames are validated
//! (magic, version, kind, header length, payload length against a maximum)
//! before anything is allocated; a bad frame closes that channel only.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{Buf, BufMut};

use super::wire::{
    FrameKind, Prefix, ReqHeader, RespHeader, WireError, FRAME_PREFIX, REQ_LEN, RESP_LEN,
};
use crate::fabric::{FabricError, Result};

/// Hello: magic u16, version u8, kind 0x10, dst qpn u32, src qpn u32, pad.
const HELLO_KIND: u8 = 0x10;
/// Reply kinds.
const HELLO_OK: u8 = 0x11;
const HELLO_ERR: u8 = 0x12;

/// Encodes a hello.
pub fn hello(dst_qpn: u32, src_qpn: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    let mut w = &mut b[..];
    w.put_u16_le(super::wire::MAGIC);
    w.put_u8(super::wire::VERSION);
    w.put_u8(HELLO_KIND);
    w.put_u32_le(dst_qpn);
    w.put_u32_le(src_qpn);
    b
}

/// Parses a hello; returns (dst qpn, src qpn).
pub fn parse_hello(b: &[u8; 16]) -> std::result::Result<(u32, u32), WireError> {
    // Every read lies inside the 16-byte array.
    let mut r = &b[..];
    let magic = r.get_u16_le();
    let version = r.get_u8();
    let kind = r.get_u8();
    if magic != super::wire::MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    if version != super::wire::VERSION {
        return Err(WireError::BadVersion(version));
    }
    if kind != HELLO_KIND {
        return Err(WireError::BadKind(kind));
    }
    Ok((r.get_u32_le(), r.get_u32_le()))
}

/// Reply to a hello.
pub fn hello_reply(ok: bool) -> [u8; 16] {
    let mut b = hello(0, 0);
    b[3] = if ok { HELLO_OK } else { HELLO_ERR };
    b
}

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

/// Connects a channel: hello, wait for the target's answer.
pub fn connect(addr: &str, src_qpn: u32, dst_qpn: u32) -> Result<Framed> {
    let sa: SocketAddr = addr
        .to_socket_addrs()
        .map_err(|e| FabricError::io(format!("resolving tcp NIC address {addr}"), e))?
        .next()
        .ok_or_else(|| {
            FabricError::Invalid(format!("tcp NIC address {addr} resolves to nothing"))
        })?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(3))
        .map_err(|e| FabricError::PeerLost(format!("connecting to tcp NIC {addr}: {e}")))?;
    s.set_nodelay(true)
        .map_err(|e| FabricError::io("TCP_NODELAY", e))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| FabricError::io("set_read_timeout", e))?;
    s.write_all(&hello(dst_qpn, src_qpn))
        .map_err(|e| FabricError::PeerLost(format!("hello to {addr}: {e}")))?;
    let mut r = [0u8; 16];
    s.read_exact(&mut r)
        .map_err(|e| FabricError::PeerLost(format!("hello reply from {addr}: {e}")))?;
    if r[3] != HELLO_OK {
        return Err(FabricError::PeerLost(format!(
            "tcp NIC {addr} refused the connection to QP {dst_qpn}"
        )));
    }
    s.set_read_timeout(None)
        .map_err(|e| FabricError::io("set_read_timeout", e))?;
    Framed::new(s).map_err(|e| FabricError::io("configuring tcp channel", e))
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

    /// The hello layout byte for byte (recorded from the hand-written codec
    /// this one replaced), its reply, and what a target refuses.
    #[test]
    fn hello_is_byte_identical_and_validated() {
        let h = hello(0x0102_0304, 0x0506_0708);
        assert_eq!(hex::encode(h), "54500110040302010807060500000000");
        assert_eq!(parse_hello(&h).unwrap(), (0x0102_0304, 0x0506_0708));
        assert_eq!(hello_reply(true)[3], HELLO_OK);
        assert!(matches!(
            parse_hello(&hello_reply(false)),
            Err(WireError::BadKind(HELLO_ERR))
        ));
        let mut bad = h;
        bad[0] ^= 1;
        assert!(matches!(parse_hello(&bad), Err(WireError::BadMagic(_))));
        bad = h;
        bad[2] = 9;
        assert!(matches!(parse_hello(&bad), Err(WireError::BadVersion(9))));
    }
}
