//! The Patronus RPC messages (two-sided SEND/RECV between a client thread
//! and a directory), little endian, fixed layouts, validated on decode.
//!
//! Every message starts with a 24-byte header: magic "PL", version, type,
//! body length, the client's RPC id (echoed in the reply) and the sender's
//! node and thread. Unlike the original, every time and size is 64-bit on
//! the wire (ns_per_unit as u32 truncated leases over 4.29 s), and debug and
//! release builds speak the same protocol.

/// Header magic ("PL").
pub const MAGIC: u16 = 0x4c50;
/// Protocol version.
pub const VERSION: u8 = 1;
/// Header length.
pub const HDR_LEN: usize = 24;
/// Largest message (header + body), the fabric's SEND limit.
pub const MAX_MSG: usize = 4096;
/// Largest two-sided memory payload in one message.
pub const MAX_MEM_PAYLOAD: usize = MAX_MSG - HDR_LEN - MemReq::FIXED;

/// Message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MsgType {
    /// Acquire a read lease.
    AcquireR = 0,
    /// Acquire a write lease.
    AcquireW = 1,
    /// Reply to an acquire.
    AcquireResp = 3,
    /// Relinquish a lease (or dealloc).
    Relinquish = 4,
    /// Reply to a relinquish.
    RelinquishResp = 5,
    /// Two-sided extension.
    Extend = 6,
    /// Reply to an extension.
    ExtendResp = 7,
    /// Administrative request (exit, QP flags, QP reset, time).
    Admin = 9,
    /// Reply to an administrative request.
    AdminResp = 10,
    /// Two-sided memory access (rpc_read/write/cas/faa).
    Memory = 11,
    /// Reply to a memory access.
    MemoryResp = 12,
}

impl MsgType {
    /// Total decoding.
    pub fn from_u8(v: u8) -> Option<MsgType> {
        Some(match v {
            0 => MsgType::AcquireR,
            1 => MsgType::AcquireW,
            3 => MsgType::AcquireResp,
            4 => MsgType::Relinquish,
            5 => MsgType::RelinquishResp,
            6 => MsgType::Extend,
            7 => MsgType::ExtendResp,
            9 => MsgType::Admin,
            10 => MsgType::AdminResp,
            11 => MsgType::Memory,
            12 => MsgType::MemoryResp,
            _ => return None,
        })
    }
}

/// Why a message was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadMsg(pub String);

impl std::fmt::Display for BadMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed message: {}", self.0)
    }
}

/// A little-endian writer over a byte vector.
#[derive(Default)]
pub struct W(pub Vec<u8>);
impl W {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn i64(&mut self, v: i64) -> &mut Self {
        self.u64(v as u64)
    }
}

/// A bounds-checked little-endian reader.
pub struct R<'a> {
    b: &'a [u8],
    at: usize,
}
impl<'a> R<'a> {
    /// Reads from `b`.
    pub fn new(b: &'a [u8]) -> R<'a> {
        R { b, at: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], BadMsg> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                BadMsg(format!(
                    "truncated at byte {} (+{n} of {})",
                    self.at,
                    self.b.len()
                ))
            })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, BadMsg> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, BadMsg> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, BadMsg> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, BadMsg> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn i64(&mut self) -> Result<i64, BadMsg> {
        Ok(self.u64()? as i64)
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.b[self.at..];
        self.at = self.b.len();
        s
    }
}

/// The common header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Message type.
    pub ty: MsgType,
    /// Client-chosen id, echoed by the reply.
    pub rpc_id: u64,
    /// Sender node.
    pub node: u16,
    /// Sender thread slot.
    pub thread: u16,
}

/// Acquire request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcquireReq {
    /// Buffer offset to bind, or the allocator hint with allocation flags.
    pub key: u64,
    /// Bytes.
    pub size: u64,
    /// Requested lease unit in ns (0 with NO_GC: forever).
    pub ns: u64,
    /// AcquireRequestFlag bits.
    pub flag: u64,
    /// Directory the request is addressed to.
    pub dir: u16,
}

/// Acquire reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AcquireResp {
    /// AcquireRequestStatus value.
    pub status: u8,
    /// rkey of the buffer window (or MR).
    pub rkey: u32,
    /// rkey of the protection-region window (0: none).
    pub pr_rkey: u32,
    /// dsm offset of the object.
    pub base: u64,
    /// dsm offset of the protection region.
    pub pr_off: u64,
    /// Server time at grant.
    pub begin_term: i64,
    /// Lease unit (ns).
    pub ns_per_unit: i64,
    /// Lease context slot.
    pub slot: u32,
    /// Lease generation (never reused).
    pub generation: u64,
    /// PR aba generation at grant.
    pub aba: u32,
}

/// Relinquish / extend request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModifyReq {
    /// Lease context slot.
    pub slot: u32,
    /// Lease generation.
    pub generation: u64,
    /// Extension (ns) for Extend.
    pub ns: u64,
    /// Allocator hint (dealloc).
    pub hint: u64,
    /// LeaseModifyFlag bits.
    pub flag: u64,
    /// dsm offset (only-dealloc).
    pub addr: u64,
    /// Bytes (only-dealloc).
    pub size: u64,
    /// Directory.
    pub dir: u16,
}

/// Relinquish / extend reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ModifyResp {
    /// RC value.
    pub rc: u8,
    /// Units added (Extend).
    pub units: u64,
}

/// Two-sided memory operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MemOp {
    /// Read `size` bytes.
    Read = 0,
    /// Write the payload.
    Write = 1,
    /// 8-byte compare-and-swap.
    Cas = 2,
    /// 8-byte fetch-and-add.
    Faa = 3,
}

/// Two-sided memory request, checked against the caller's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemReq {
    /// Operation.
    pub op: MemOp,
    /// Lease slot (u32::MAX for NO_RPC leases, which the server refuses
    /// unless they are universal-key leases: see server).
    pub slot: u32,
    /// Lease generation.
    pub generation: u64,
    /// Offset inside the lease.
    pub offset: u64,
    /// Bytes to read (Read) or payload length (Write); 8 for atomics.
    pub size: u32,
    /// CAS compare / FAA addend.
    pub arg0: u64,
    /// CAS swap.
    pub arg1: u64,
    /// Directory.
    pub dir: u16,
    /// Write payload.
    pub payload: Vec<u8>,
}

impl MemReq {
    /// Fixed body bytes before the payload.
    pub const FIXED: usize = 1 + 4 + 8 + 8 + 4 + 8 + 8 + 2;
}

/// Two-sided memory reply.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MemResp {
    /// RC value.
    pub rc: u8,
    /// Old value (CAS/FAA).
    pub old: u64,
    /// Read payload.
    pub payload: Vec<u8>,
}

/// Administrative operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum AdminOp {
    /// The sender finished sync key `arg`.
    Finished = 0,
    /// Ask for the receiver's clock (reply value = its PatronusTime).
    Time = 1,
    /// Restrict the directory's QP towards the sender to remote read only.
    QpToRo = 2,
    /// Give it read+write+atomic back.
    QpToRw = 3,
    /// Reset and reconnect the directory's QP towards the sender.
    QpReset = 4,
    /// Live leases in the directory (reply value).
    Stats = 5,
}

/// Administrative request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminReq {
    /// Operation.
    pub op: AdminOp,
    /// Argument.
    pub arg: u64,
    /// Directory.
    pub dir: u16,
}

/// Administrative reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AdminResp {
    /// RC value.
    pub rc: u8,
    /// Value (time for Time).
    pub value: i64,
}

/// A decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// Acquire (type says R or W).
    Acquire(AcquireReq),
    /// Acquire reply.
    AcquireResp(AcquireResp),
    /// Relinquish.
    Relinquish(ModifyReq),
    /// Relinquish reply.
    RelinquishResp(ModifyResp),
    /// Extension.
    Extend(ModifyReq),
    /// Extension reply.
    ExtendResp(ModifyResp),
    /// Admin request.
    Admin(AdminReq),
    /// Admin reply.
    AdminResp(AdminResp),
    /// Memory request.
    Memory(MemReq),
    /// Memory reply.
    MemoryResp(MemResp),
}

fn enc_modify(w: &mut W, m: &ModifyReq) {
    w.u32(m.slot)
        .u64(m.generation)
        .u64(m.ns)
        .u64(m.hint)
        .u64(m.flag)
        .u64(m.addr)
        .u64(m.size)
        .u16(m.dir);
}

fn dec_modify(r: &mut R) -> Result<ModifyReq, BadMsg> {
    Ok(ModifyReq {
        slot: r.u32()?,
        generation: r.u64()?,
        ns: r.u64()?,
        hint: r.u64()?,
        flag: r.u64()?,
        addr: r.u64()?,
        size: r.u64()?,
        dir: r.u16()?,
    })
}

/// Encodes a message into `out` (cleared first). Returns the length.
pub fn encode(h: &Header, m: &Msg, out: &mut Vec<u8>) -> usize {
    out.clear();
    let mut w = W(std::mem::take(out));
    w.u16(MAGIC).u8(VERSION).u8(h.ty as u8).u32(0);
    w.u64(h.rpc_id).u16(h.node).u16(h.thread).u32(0);
    match m {
        Msg::Acquire(a) => {
            w.u64(a.key).u64(a.size).u64(a.ns).u64(a.flag).u16(a.dir);
        }
        Msg::AcquireResp(a) => {
            w.u8(a.status)
                .u32(a.rkey)
                .u32(a.pr_rkey)
                .u64(a.base)
                .u64(a.pr_off)
                .i64(a.begin_term)
                .i64(a.ns_per_unit)
                .u32(a.slot)
                .u64(a.generation)
                .u32(a.aba);
        }
        Msg::Relinquish(m) | Msg::Extend(m) => enc_modify(&mut w, m),
        Msg::RelinquishResp(m) | Msg::ExtendResp(m) => {
            w.u8(m.rc).u64(m.units);
        }
        Msg::Admin(a) => {
            w.u8(a.op as u8).u64(a.arg).u16(a.dir);
        }
        Msg::AdminResp(a) => {
            w.u8(a.rc).i64(a.value);
        }
        Msg::Memory(m) => {
            w.u8(m.op as u8)
                .u32(m.slot)
                .u64(m.generation)
                .u64(m.offset)
                .u32(m.size)
                .u64(m.arg0)
                .u64(m.arg1)
                .u16(m.dir);
            w.0.extend_from_slice(&m.payload);
        }
        Msg::MemoryResp(m) => {
            w.u8(m.rc).u64(m.old);
            w.0.extend_from_slice(&m.payload);
        }
    }
    let body = (w.0.len() - HDR_LEN) as u32;
    w.0[4..8].copy_from_slice(&body.to_le_bytes());
    *out = w.0;
    out.len()
}

/// Decodes and validates untrusted bytes.
pub fn decode(b: &[u8]) -> Result<(Header, Msg), BadMsg> {
    if b.len() > MAX_MSG {
        return Err(BadMsg(format!(
            "{} bytes exceed the {MAX_MSG}-byte maximum",
            b.len()
        )));
    }
    let mut r = R::new(b);
    let magic = r.u16()?;
    if magic != MAGIC {
        return Err(BadMsg(format!("bad magic {magic:#x}")));
    }
    let v = r.u8()?;
    if v != VERSION {
        return Err(BadMsg(format!("unsupported version {v}")));
    }
    let t = r.u8()?;
    let ty = MsgType::from_u8(t).ok_or_else(|| BadMsg(format!("unknown type {t}")))?;
    let body = r.u32()? as usize;
    if body != b.len() - HDR_LEN.min(b.len()) {
        return Err(BadMsg(format!(
            "body length {body} does not match {} received bytes",
            b.len()
        )));
    }
    let rpc_id = r.u64()?;
    let node = r.u16()?;
    let thread = r.u16()?;
    r.u32()?;
    let h = Header {
        ty,
        rpc_id,
        node,
        thread,
    };
    let m = match ty {
        MsgType::AcquireR | MsgType::AcquireW => Msg::Acquire(AcquireReq {
            key: r.u64()?,
            size: r.u64()?,
            ns: r.u64()?,
            flag: r.u64()?,
            dir: r.u16()?,
        }),
        MsgType::AcquireResp => Msg::AcquireResp(AcquireResp {
            status: r.u8()?,
            rkey: r.u32()?,
            pr_rkey: r.u32()?,
            base: r.u64()?,
            pr_off: r.u64()?,
            begin_term: r.i64()?,
            ns_per_unit: r.i64()?,
            slot: r.u32()?,
            generation: r.u64()?,
            aba: r.u32()?,
        }),
        MsgType::Relinquish => Msg::Relinquish(dec_modify(&mut r)?),
        MsgType::Extend => Msg::Extend(dec_modify(&mut r)?),
        MsgType::RelinquishResp | MsgType::ExtendResp => {
            let m = ModifyResp {
                rc: r.u8()?,
                units: r.u64()?,
            };
            if ty == MsgType::RelinquishResp {
                Msg::RelinquishResp(m)
            } else {
                Msg::ExtendResp(m)
            }
        }
        MsgType::Admin => {
            let op = r.u8()?;
            let op = match op {
                0 => AdminOp::Finished,
                1 => AdminOp::Time,
                2 => AdminOp::QpToRo,
                3 => AdminOp::QpToRw,
                4 => AdminOp::QpReset,
                5 => AdminOp::Stats,
                o => return Err(BadMsg(format!("unknown admin op {o}"))),
            };
            Msg::Admin(AdminReq {
                op,
                arg: r.u64()?,
                dir: r.u16()?,
            })
        }
        MsgType::AdminResp => Msg::AdminResp(AdminResp {
            rc: r.u8()?,
            value: r.i64()?,
        }),
        MsgType::Memory => {
            let op = match r.u8()? {
                0 => MemOp::Read,
                1 => MemOp::Write,
                2 => MemOp::Cas,
                3 => MemOp::Faa,
                o => return Err(BadMsg(format!("unknown memory op {o}"))),
            };
            let mut m = MemReq {
                op,
                slot: r.u32()?,
                generation: r.u64()?,
                offset: r.u64()?,
                size: r.u32()?,
                arg0: r.u64()?,
                arg1: r.u64()?,
                dir: r.u16()?,
                payload: Vec::new(),
            };
            let p = r.rest();
            match op {
                MemOp::Write if p.len() != m.size as usize => {
                    return Err(BadMsg(format!(
                        "write of {} bytes carries {}",
                        m.size,
                        p.len()
                    )))
                }
                MemOp::Read if m.size as usize > MAX_MEM_PAYLOAD => {
                    return Err(BadMsg(format!(
                        "read of {} bytes exceeds one message",
                        m.size
                    )))
                }
                MemOp::Cas | MemOp::Faa if m.size != 8 => {
                    return Err(BadMsg(format!("atomic of {} bytes", m.size)))
                }
                _ => {}
            }
            m.payload = p.to_vec();
            Msg::Memory(m)
        }
        MsgType::MemoryResp => Msg::MemoryResp(MemResp {
            rc: r.u8()?,
            old: r.u64()?,
            payload: r.rest().to_vec(),
        }),
    };
    if r.at != b.len() {
        return Err(BadMsg(format!("{} trailing bytes", b.len() - r.at)));
    }
    Ok((h, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hdr(ty: MsgType) -> Header {
        Header {
            ty,
            rpc_id: 42,
            node: 3,
            thread: 7,
        }
    }

    #[test]
    fn round_trips() {
        let cases = vec![
            (
                MsgType::AcquireW,
                Msg::Acquire(AcquireReq {
                    key: 4096,
                    size: 64,
                    ns: 5_000_000_000,
                    flag: 3,
                    dir: 1,
                }),
            ),
            (
                MsgType::AcquireResp,
                Msg::AcquireResp(AcquireResp {
                    status: 0,
                    rkey: 0x1234,
                    pr_rkey: 0x5678,
                    base: 1 << 40,
                    pr_off: 99,
                    begin_term: -5,
                    ns_per_unit: 10_000_000_000,
                    slot: 17,
                    generation: u64::MAX - 1,
                    aba: 9,
                }),
            ),
            (
                MsgType::Memory,
                Msg::Memory(MemReq {
                    op: MemOp::Write,
                    slot: 1,
                    generation: 2,
                    offset: 3,
                    size: 5,
                    arg0: 0,
                    arg1: 0,
                    dir: 0,
                    payload: b"hello".to_vec(),
                }),
            ),
            (
                MsgType::AdminResp,
                Msg::AdminResp(AdminResp {
                    rc: 0,
                    value: i64::MIN,
                }),
            ),
        ];
        let mut buf = Vec::new();
        for (t, m) in cases {
            encode(&hdr(t), &m, &mut buf);
            let (h, d) = decode(&buf).unwrap();
            assert_eq!(h, hdr(t));
            assert_eq!(d, m);
            // Truncation anywhere is an error, never a panic.
            for cut in 0..buf.len() {
                assert!(decode(&buf[..cut]).is_err());
            }
        }
    }

    #[test]
    fn ns_per_unit_is_64_bit() {
        let mut buf = Vec::new();
        let m = Msg::AcquireResp(AcquireResp {
            ns_per_unit: 10_000_000_000, // 10 s: did not fit the original's u32
            ..Default::default()
        });
        encode(&hdr(MsgType::AcquireResp), &m, &mut buf);
        match decode(&buf).unwrap().1 {
            Msg::AcquireResp(a) => assert_eq!(a.ns_per_unit, 10_000_000_000),
            _ => panic!("wrong type"),
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&b);
        }

        #[test]
        fn decode_mutated_never_panics(i in 0usize..60, v in any::<u8>()) {
            let mut buf = Vec::new();
            encode(&hdr(MsgType::Relinquish), &Msg::Relinquish(ModifyReq {
                slot: 1, generation: 2, ns: 3, hint: 4, flag: 5, addr: 6, size: 7, dir: 0,
            }), &mut buf);
            let i = i % buf.len();
            buf[i] = v;
            let _ = decode(&buf);
        }
    }
}
