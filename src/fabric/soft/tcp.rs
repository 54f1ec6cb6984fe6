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

/// A framed, non-blocking byte stream with input and output buffers.
pub struct Framed {
    /// The socket (non-blocking after set-up).
    pub sock: TcpStream,
    wbuf: Vec<u8>,
    wpos: usize,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
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
            wbuf: Vec::with_capacity(64 << 10),
            wpos: 0,
            rbuf: vec![0u8; 256 << 10],
            rstart: 0,
            rend: 0,
            dead: false,
        })
    }

    /// Bytes waiting to be written.
    pub fn pending_out(&self) -> usize {
        self.wbuf.len() - self.wpos
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
        }
        Ok(())
    }

    /// Reads what is available. Returns bytes read (0: nothing now).
    pub fn read_some(&mut self) -> std::io::Result<usize> {
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        }
        // Keep room for at least one maximal header + some payload.
        if self.rbuf.len() - self.rend < 64 << 10 {
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        let mut total = 0;
        loop {
            if self.rend == self.rbuf.len() {
                return Ok(total);
            }
            match self.sock.read(&mut self.rbuf[self.rend..]) {
                Ok(0) => {
                    self.dead = true;
                    return if total > 0 {
                        Ok(total)
                    } else {
                        Err(ErrorKind::UnexpectedEof.into())
                    };
                }
                Ok(n) => {
                    let room = self.rbuf.len() - self.rend;
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

    /// The next complete frame, if buffered. A frame that fails validation
    /// is an error (the caller closes the channel). Grows the input buffer up
    /// to the frame size when a large payload is announced. A frame of the
    /// wrong kind for this direction is rejected as soon as its prefix arrives.
    pub fn next_frame(
        &mut self,
        expect: FrameKind,
    ) -> std::result::Result<Option<Frame>, WireError> {
        let avail = self.rend - self.rstart;
        if avail < FRAME_PREFIX {
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
            if self.rbuf.len() < total + (64 << 10) {
                // payload_len was validated against the maximum above.
                self.rbuf.resize(total + (64 << 10), 0);
            }
            return Ok(None);
        }
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
