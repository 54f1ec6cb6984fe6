//! Wire formats of the soft RNIC, shared by the shm and tcp links.
//!
//! A request header is 64 bytes, a response header 32 bytes, little endian.
//! On the tcp link each header travels in a frame: a 16-byte prefix (magic,
//! version, kind, header length, payload length) followed by the header and
//! the payload. Everything a peer sends is validated here before anything
//! is allocated, copied or executed.

/// Protocol version carried in every tcp frame and shm segment.
pub const VERSION: u8 = 1;
/// Frame magic ("PT").
pub const MAGIC: u16 = 0x5054;
/// Size of an encoded request header.
pub const REQ_LEN: usize = 64;
/// Size of an encoded response header.
pub const RESP_LEN: usize = 32;
/// Size of a tcp frame prefix.
pub const FRAME_PREFIX: usize = 16;
/// Largest READ/WRITE payload of one request (1 MiB up to 16 MiB is allowed).
pub const MAX_RDMA_LEN: u32 = 16 << 20;
/// Largest SEND payload.
pub const MAX_SEND: u32 = 4096;

/// Request opcodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ReqOp {
    /// RDMA READ.
    Read = 1,
    /// RDMA WRITE (payload = data).
    Write = 2,
    /// 8-byte compare and swap.
    Cas = 3,
    /// 8-byte fetch and add.
    Faa = 4,
    /// SEND (tcp only; payload = message).
    Send = 5,
}

impl ReqOp {
    /// Total decoding: None for unknown opcodes.
    pub fn from_u8(v: u8) -> Option<ReqOp> {
        Some(match v {
            1 => ReqOp::Read,
            2 => ReqOp::Write,
            3 => ReqOp::Cas,
            4 => ReqOp::Faa,
            5 => ReqOp::Send,
            _ => return None,
        })
    }
}

/// A decoded, validated request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReqHeader {
    /// Operation.
    pub op: ReqOp,
    /// QP epoch (bumped by every reset) so stale requests are recognised.
    pub epoch: u8,
    /// Length in bytes (READ/WRITE/SEND), 8 for atomics.
    pub len: u32,
    /// Initiator's sequence number, echoed in the response.
    pub seq: u64,
    /// Remote virtual address.
    pub raddr: u64,
    /// Remote key.
    pub rkey: u32,
    /// shm: initiator's memory block id holding the local buffer.
    pub lblock: u32,
    /// shm: offset of the local buffer in that block.
    pub loff: u64,
    /// CAS compare value / FAA addend.
    pub arg0: u64,
    /// CAS swap value.
    pub arg1: u64,
}

/// Why a header was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Unknown opcode.
    BadOpcode(u8),
    /// Reserved bits set.
    Reserved,
    /// A length over the maximum or inconsistent with the opcode.
    BadLength(u64),
    /// Atomic on an address that is not 8-aligned.
    Misaligned(u64),
    /// Frame prefix: wrong magic.
    BadMagic(u16),
    /// Frame prefix: unsupported version.
    BadVersion(u8),
    /// Frame prefix: unknown kind.
    BadKind(u8),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::BadOpcode(o) => write!(f, "unknown opcode {o}"),
            WireError::Reserved => write!(f, "reserved bits set"),
            WireError::BadLength(l) => write!(f, "bad length {l}"),
            WireError::Misaligned(a) => write!(f, "atomic at unaligned address {a:#x}"),
            WireError::BadMagic(m) => write!(f, "bad frame magic {m:#x}"),
            WireError::BadVersion(v) => write!(f, "unsupported protocol version {v}"),
            WireError::BadKind(k) => write!(f, "unknown frame kind {k}"),
        }
    }
}

#[inline]
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}
#[inline]
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

impl ReqHeader {
    /// Encodes into 64 bytes.
    #[inline]
    pub fn encode(&self, b: &mut [u8; REQ_LEN]) {
        b[0] = self.op as u8;
        b[1] = self.epoch;
        b[2] = 0;
        b[3] = 0;
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.raddr.to_le_bytes());
        b[24..28].copy_from_slice(&self.rkey.to_le_bytes());
        b[28..32].copy_from_slice(&self.lblock.to_le_bytes());
        b[32..40].copy_from_slice(&self.loff.to_le_bytes());
        b[40..48].copy_from_slice(&self.arg0.to_le_bytes());
        b[48..56].copy_from_slice(&self.arg1.to_le_bytes());
        b[56..64].fill(0);
    }

    /// Decodes and validates 64 untrusted bytes. Returns the sequence number
    /// and epoch even on failure when they could be read, so the responder can
    /// answer the right request.
    #[inline]
    pub fn decode(b: &[u8; REQ_LEN]) -> Result<ReqHeader, (WireError, u64, u8)> {
        let seq = u64_at(b, 8);
        let epoch = b[1];
        let fail = |e| Err((e, seq, epoch));
        let Some(op) = ReqOp::from_u8(b[0]) else {
            return fail(WireError::BadOpcode(b[0]));
        };
        if b[2] != 0 || b[3] != 0 || b[56..64].iter().any(|&x| x != 0) {
            return fail(WireError::Reserved);
        }
        let h = ReqHeader {
            op,
            epoch,
            len: u32_at(b, 4),
            seq,
            raddr: u64_at(b, 16),
            rkey: u32_at(b, 24),
            lblock: u32_at(b, 28),
            loff: u64_at(b, 32),
            arg0: u64_at(b, 40),
            arg1: u64_at(b, 48),
        };
        match op {
            ReqOp::Read | ReqOp::Write if h.len > MAX_RDMA_LEN => {
                fail(WireError::BadLength(h.len as u64))
            }
            ReqOp::Send if h.len > MAX_SEND => fail(WireError::BadLength(h.len as u64)),
            ReqOp::Cas | ReqOp::Faa if h.len != 8 => fail(WireError::BadLength(h.len as u64)),
            ReqOp::Cas | ReqOp::Faa if h.raddr % 8 != 0 => fail(WireError::Misaligned(h.raddr)),
            _ => Ok(h),
        }
    }
}

/// A response header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RespHeader {
    /// Sequence number of the request answered.
    pub seq: u64,
    /// Completion status (a `WcStatus` value).
    pub status: u8,
    /// Opcode of the request answered.
    pub op: u8,
    /// Epoch of the request answered.
    pub epoch: u8,
    /// Bytes transferred (READ data follows on tcp).
    pub byte_len: u32,
    /// Old value for CAS/FAA.
    pub value: u64,
}

impl RespHeader {
    /// Encodes into 32 bytes.
    #[inline]
    pub fn encode(&self, b: &mut [u8; RESP_LEN]) {
        b[0..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8] = self.status;
        b[9] = self.op;
        b[10] = self.epoch;
        b[11] = 0;
        b[12..16].copy_from_slice(&self.byte_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.value.to_le_bytes());
        b[24..32].fill(0);
    }

    /// Decodes 32 bytes (validation of meaning is up to the initiator, which
    /// compares against what it has outstanding).
    #[inline]
    pub fn decode(b: &[u8; RESP_LEN]) -> RespHeader {
        RespHeader {
            seq: u64_at(b, 0),
            status: b[8],
            op: b[9],
            epoch: b[10],
            byte_len: u32_at(b, 12),
            value: u64_at(b, 16),
        }
    }
}

/// Kinds of tcp frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A request header (+ WRITE/SEND payload).
    Req = 1,
    /// A response header (+ READ payload).
    Resp = 2,
}

/// A decoded tcp frame prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// Frame kind.
    pub kind: FrameKind,
    /// Payload bytes following the header.
    pub payload_len: u32,
}

impl Prefix {
    /// Header length implied by the kind.
    pub fn hdr_len(&self) -> usize {
        match self.kind {
            FrameKind::Req => REQ_LEN,
            FrameKind::Resp => RESP_LEN,
        }
    }

    /// Encodes a prefix.
    pub fn encode(kind: FrameKind, payload_len: u32) -> [u8; FRAME_PREFIX] {
        let mut b = [0u8; FRAME_PREFIX];
        b[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        b[2] = VERSION;
        b[3] = kind as u8;
        let hl = match kind {
            FrameKind::Req => REQ_LEN,
            FrameKind::Resp => RESP_LEN,
        } as u16;
        b[4..6].copy_from_slice(&hl.to_le_bytes());
        b[8..12].copy_from_slice(&payload_len.to_le_bytes());
        b
    }

    /// Validates a prefix against the maxima before anything is allocated.
    pub fn decode(b: &[u8; FRAME_PREFIX]) -> Result<Prefix, WireError> {
        let magic = u16::from_le_bytes([b[0], b[1]]);
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        if b[2] != VERSION {
            return Err(WireError::BadVersion(b[2]));
        }
        let kind = match b[3] {
            1 => FrameKind::Req,
            2 => FrameKind::Resp,
            k => return Err(WireError::BadKind(k)),
        };
        let hl = u16::from_le_bytes([b[4], b[5]]) as usize;
        let payload_len = u32_at(b, 8);
        let p = Prefix { kind, payload_len };
        if hl != p.hdr_len() {
            return Err(WireError::BadLength(hl as u64));
        }
        if b[6] != 0 || b[7] != 0 || b[12..16].iter().any(|&x| x != 0) {
            return Err(WireError::Reserved);
        }
        if payload_len > MAX_RDMA_LEN {
            return Err(WireError::BadLength(payload_len as u64));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> ReqHeader {
        ReqHeader {
            op: ReqOp::Cas,
            epoch: 3,
            len: 8,
            seq: 99,
            raddr: 0x1000,
            rkey: 0x1234,
            lblock: 5,
            loff: 64,
            arg0: 1,
            arg1: 2,
        }
    }

    #[test]
    fn round_trips() {
        let mut b = [0u8; REQ_LEN];
        sample().encode(&mut b);
        assert_eq!(ReqHeader::decode(&b).unwrap(), sample());
        let r = RespHeader {
            seq: 7,
            status: 10,
            op: 1,
            epoch: 2,
            byte_len: 64,
            value: 42,
        };
        let mut rb = [0u8; RESP_LEN];
        r.encode(&mut rb);
        assert_eq!(RespHeader::decode(&rb), r);
        let p = Prefix::encode(FrameKind::Req, 100);
        assert_eq!(
            Prefix::decode(&p).unwrap(),
            Prefix {
                kind: FrameKind::Req,
                payload_len: 100
            }
        );
    }

    #[test]
    fn rejects_bad_headers() {
        let mut b = [0u8; REQ_LEN];
        let mut h = sample();
        h.raddr = 0x1004;
        h.encode(&mut b);
        assert!(matches!(
            ReqHeader::decode(&b),
            Err((WireError::Misaligned(_), 99, 3))
        ));
        h = sample();
        h.op = ReqOp::Read;
        h.len = MAX_RDMA_LEN + 1;
        h.encode(&mut b);
        assert!(ReqHeader::decode(&b).is_err());
        sample().encode(&mut b);
        b[60] = 1;
        assert!(matches!(
            ReqHeader::decode(&b),
            Err((WireError::Reserved, _, _))
        ));
        let mut p = Prefix::encode(FrameKind::Resp, 1);
        p[8..12].copy_from_slice(&(MAX_RDMA_LEN + 1).to_le_bytes());
        assert!(Prefix::decode(&p).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), REQ_LEN)) {
            let b: [u8; REQ_LEN] = bytes.clone().try_into().unwrap();
            if let Ok(h) = ReqHeader::decode(&b) {
                // Whatever decodes satisfies the invariants the responder relies on.
                match h.op {
                    ReqOp::Cas | ReqOp::Faa => prop_assert!(h.len == 8 && h.raddr % 8 == 0),
                    ReqOp::Send => prop_assert!(h.len <= MAX_SEND),
                    _ => prop_assert!(h.len <= MAX_RDMA_LEN),
                }
            }
            let pb: [u8; FRAME_PREFIX] = bytes[..FRAME_PREFIX].try_into().unwrap();
            if let Ok(p) = Prefix::decode(&pb) {
                prop_assert!(p.payload_len <= MAX_RDMA_LEN);
            }
        }
    }
}
