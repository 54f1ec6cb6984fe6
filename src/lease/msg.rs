//! The Patronus RPC messages (two-sided SEND/RECV between a client thread
//! and a directory), little endian, fixed layouts, validated on decode.
//!
//! Every message starts with a 24-byte header: magic "PL", version, type,
//! body length, the client's RPC id (echoed in the reply) and the sender's
//! node and thread. Unlike the original, every time and size is 64-bit on
//! the wire (ns_per_unit as u32 truncated leases over 4.29 s), and debug and
//! release builds speak the same protocol.

use bytes::{Buf, BufMut, TryGetError};

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
    /// Reply to [`AdminOp::LeaseKeys`]: a page of re-keyed leases.
    LeaseKeysResp = 13,
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
            13 => MsgType::LeaseKeysResp,
            _ => return None,
        })
    }
}

/// Why a message was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed message: {0}")]
pub struct BadMsg(pub String);

impl From<TryGetError> for BadMsg {
    fn from(e: TryGetError) -> BadMsg {
        BadMsg(format!(
            "truncated: a field needs {} bytes, {} are left",
            e.requested, e.available
        ))
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
    /// Reset and reconnect the directory's QP towards the sender. `arg`:
    /// the connection's fresh PSNs ([`ConnPsns::encode`](crate::fabric::ConnPsns::encode);
    /// 0: keep the PSNs of the last connect). Reply value: how many of the
    /// sender's leases on this directory were re-bound with new rkeys (on a
    /// NIC whose windows do not survive the reset; 0 otherwise), to fetch
    /// with [`AdminOp::LeaseKeys`].
    QpReset = 4,
    /// Live leases in the directory (reply value).
    Stats = 5,
    /// GC tasks queued in the directory (reply value): with the live
    /// leases, shows that relinquished leases leave no backlog.
    GcQueued = 6,
    /// Protection-region CASes the directory made through its loopback QP
    /// (reply value; -1 when it changes them with CPU atomics).
    PrNicAtomics = 7,
    /// The new rkeys of the leases the sender's last `QpReset` re-bound,
    /// from entry `arg` on, at most [`KEYS_PER_MSG`] per reply
    /// ([`MsgType::LeaseKeysResp`]).
    LeaseKeys = 8,
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

/// One lease re-bound by a `QpReset`: its generation, and its windows'
/// rkeys before and after (0 for a window the lease does not have).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LeaseKey {
    /// Lease generation (unique on the memory node).
    pub generation: u64,
    /// The object window's rkey before the reset.
    pub old_rkey: u32,
    /// Its rkey now.
    pub rkey: u32,
    /// The protection-region window's rkey before the reset.
    pub old_pr_rkey: u32,
    /// Its rkey now.
    pub pr_rkey: u32,
}

impl LeaseKey {
    /// Encoded bytes of one entry.
    pub const LEN: usize = 24;
}

/// Most [`LeaseKey`]s one [`LeaseKeysResp`] carries (it fits
/// [`MAX_MSG`]).
pub const KEYS_PER_MSG: usize = 160;

/// A page of the re-keyed leases of the sender's last `QpReset`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LeaseKeysResp {
    /// RC value.
    pub rc: u8,
    /// Entries the reset re-keyed in all.
    pub total: u32,
    /// Index of this page's first entry.
    pub from: u32,
    /// At most [`KEYS_PER_MSG`] entries.
    pub keys: Vec<LeaseKey>,
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
    /// Re-keyed leases (reply to [`AdminOp::LeaseKeys`]).
    LeaseKeysResp(LeaseKeysResp),
}

fn enc_modify(w: &mut Vec<u8>, m: &ModifyReq) {
    w.put_u32_le(m.slot);
    w.put_u64_le(m.generation);
    w.put_u64_le(m.ns);
    w.put_u64_le(m.hint);
    w.put_u64_le(m.flag);
    w.put_u64_le(m.addr);
    w.put_u64_le(m.size);
    w.put_u16_le(m.dir);
}

fn dec_modify(r: &mut &[u8]) -> Result<ModifyReq, BadMsg> {
    Ok(ModifyReq {
        slot: r.try_get_u32_le()?,
        generation: r.try_get_u64_le()?,
        ns: r.try_get_u64_le()?,
        hint: r.try_get_u64_le()?,
        flag: r.try_get_u64_le()?,
        addr: r.try_get_u64_le()?,
        size: r.try_get_u64_le()?,
        dir: r.try_get_u16_le()?,
    })
}

/// Encodes a message into `out` (cleared first). Returns the length.
pub fn encode(h: &Header, m: &Msg, out: &mut Vec<u8>) -> usize {
    out.clear();
    let w = out;
    w.put_u16_le(MAGIC);
    w.put_u8(VERSION);
    w.put_u8(h.ty as u8);
    w.put_u32_le(0); // body length, filled in below
    w.put_u64_le(h.rpc_id);
    w.put_u16_le(h.node);
    w.put_u16_le(h.thread);
    w.put_u32_le(0);
    match m {
        Msg::Acquire(a) => {
            w.put_u64_le(a.key);
            w.put_u64_le(a.size);
            w.put_u64_le(a.ns);
            w.put_u64_le(a.flag);
            w.put_u16_le(a.dir);
        }
        Msg::AcquireResp(a) => {
            w.put_u8(a.status);
            w.put_u32_le(a.rkey);
            w.put_u32_le(a.pr_rkey);
            w.put_u64_le(a.base);
            w.put_u64_le(a.pr_off);
            w.put_i64_le(a.begin_term);
            w.put_i64_le(a.ns_per_unit);
            w.put_u32_le(a.slot);
            w.put_u64_le(a.generation);
            w.put_u32_le(a.aba);
        }
        Msg::Relinquish(m) | Msg::Extend(m) => enc_modify(w, m),
        Msg::RelinquishResp(m) | Msg::ExtendResp(m) => {
            w.put_u8(m.rc);
            w.put_u64_le(m.units);
        }
        Msg::Admin(a) => {
            w.put_u8(a.op as u8);
            w.put_u64_le(a.arg);
            w.put_u16_le(a.dir);
        }
        Msg::AdminResp(a) => {
            w.put_u8(a.rc);
            w.put_i64_le(a.value);
        }
        Msg::Memory(m) => {
            w.put_u8(m.op as u8);
            w.put_u32_le(m.slot);
            w.put_u64_le(m.generation);
            w.put_u64_le(m.offset);
            w.put_u32_le(m.size);
            w.put_u64_le(m.arg0);
            w.put_u64_le(m.arg1);
            w.put_u16_le(m.dir);
            w.put_slice(&m.payload);
        }
        Msg::MemoryResp(m) => {
            w.put_u8(m.rc);
            w.put_u64_le(m.old);
            w.put_slice(&m.payload);
        }
        Msg::LeaseKeysResp(k) => {
            // The encoder never writes more than a message holds.
            let n = k.keys.len().min(KEYS_PER_MSG);
            w.put_u8(k.rc);
            w.put_u32_le(k.total);
            w.put_u32_le(k.from);
            w.put_u16_le(n as u16);
            for e in &k.keys[..n] {
                w.put_u64_le(e.generation);
                w.put_u32_le(e.old_rkey);
                w.put_u32_le(e.rkey);
                w.put_u32_le(e.old_pr_rkey);
                w.put_u32_le(e.pr_rkey);
            }
        }
    }
    let body = (w.len() - HDR_LEN) as u32;
    (&mut w[4..8]).put_u32_le(body);
    w.len()
}

/// Decodes and validates untrusted bytes.
pub fn decode(b: &[u8]) -> Result<(Header, Msg), BadMsg> {
    if b.len() > MAX_MSG {
        return Err(BadMsg(format!(
            "{} bytes exceed the {MAX_MSG}-byte maximum",
            b.len()
        )));
    }
    let mut r = b;
    let magic = r.try_get_u16_le()?;
    if magic != MAGIC {
        return Err(BadMsg(format!("bad magic {magic:#x}")));
    }
    let v = r.try_get_u8()?;
    if v != VERSION {
        return Err(BadMsg(format!("unsupported version {v}")));
    }
    let t = r.try_get_u8()?;
    let ty = MsgType::from_u8(t).ok_or_else(|| BadMsg(format!("unknown type {t}")))?;
    let body = r.try_get_u32_le()? as usize;
    if body != b.len() - HDR_LEN.min(b.len()) {
        return Err(BadMsg(format!(
            "body length {body} does not match {} received bytes",
            b.len()
        )));
    }
    let rpc_id = r.try_get_u64_le()?;
    let node = r.try_get_u16_le()?;
    let thread = r.try_get_u16_le()?;
    r.try_get_u32_le()?;
    let h = Header {
        ty,
        rpc_id,
        node,
        thread,
    };
    let r = &mut r;
    let m = match ty {
        MsgType::AcquireR | MsgType::AcquireW => Msg::Acquire(AcquireReq {
            key: r.try_get_u64_le()?,
            size: r.try_get_u64_le()?,
            ns: r.try_get_u64_le()?,
            flag: r.try_get_u64_le()?,
            dir: r.try_get_u16_le()?,
        }),
        MsgType::AcquireResp => Msg::AcquireResp(AcquireResp {
            status: r.try_get_u8()?,
            rkey: r.try_get_u32_le()?,
            pr_rkey: r.try_get_u32_le()?,
            base: r.try_get_u64_le()?,
            pr_off: r.try_get_u64_le()?,
            begin_term: r.try_get_i64_le()?,
            ns_per_unit: r.try_get_i64_le()?,
            slot: r.try_get_u32_le()?,
            generation: r.try_get_u64_le()?,
            aba: r.try_get_u32_le()?,
        }),
        MsgType::Relinquish => Msg::Relinquish(dec_modify(r)?),
        MsgType::Extend => Msg::Extend(dec_modify(r)?),
        MsgType::RelinquishResp | MsgType::ExtendResp => {
            let m = ModifyResp {
                rc: r.try_get_u8()?,
                units: r.try_get_u64_le()?,
            };
            if ty == MsgType::RelinquishResp {
                Msg::RelinquishResp(m)
            } else {
                Msg::ExtendResp(m)
            }
        }
        MsgType::Admin => {
            let op = match r.try_get_u8()? {
                0 => AdminOp::Finished,
                1 => AdminOp::Time,
                2 => AdminOp::QpToRo,
                3 => AdminOp::QpToRw,
                4 => AdminOp::QpReset,
                5 => AdminOp::Stats,
                6 => AdminOp::GcQueued,
                7 => AdminOp::PrNicAtomics,
                8 => AdminOp::LeaseKeys,
                o => return Err(BadMsg(format!("unknown admin op {o}"))),
            };
            Msg::Admin(AdminReq {
                op,
                arg: r.try_get_u64_le()?,
                dir: r.try_get_u16_le()?,
            })
        }
        MsgType::AdminResp => Msg::AdminResp(AdminResp {
            rc: r.try_get_u8()?,
            value: r.try_get_i64_le()?,
        }),
        MsgType::Memory => {
            let op = match r.try_get_u8()? {
                0 => MemOp::Read,
                1 => MemOp::Write,
                2 => MemOp::Cas,
                3 => MemOp::Faa,
                o => return Err(BadMsg(format!("unknown memory op {o}"))),
            };
            let mut m = MemReq {
                op,
                slot: r.try_get_u32_le()?,
                generation: r.try_get_u64_le()?,
                offset: r.try_get_u64_le()?,
                size: r.try_get_u32_le()?,
                arg0: r.try_get_u64_le()?,
                arg1: r.try_get_u64_le()?,
                dir: r.try_get_u16_le()?,
                payload: Vec::new(),
            };
            let p = std::mem::take(r);
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
            rc: r.try_get_u8()?,
            old: r.try_get_u64_le()?,
            payload: std::mem::take(r).to_vec(),
        }),
        MsgType::LeaseKeysResp => {
            let rc = r.try_get_u8()?;
            let total = r.try_get_u32_le()?;
            let from = r.try_get_u32_le()?;
            let n = r.try_get_u16_le()? as usize;
            // Checked before anything is allocated.
            if n > KEYS_PER_MSG || r.remaining() != n * LeaseKey::LEN {
                return Err(BadMsg(format!(
                    "lease-key page of {n} entries (at most {KEYS_PER_MSG}) carries {} bytes",
                    r.remaining()
                )));
            }
            let mut keys = Vec::with_capacity(n);
            for _ in 0..n {
                keys.push(LeaseKey {
                    generation: r.try_get_u64_le()?,
                    old_rkey: r.try_get_u32_le()?,
                    rkey: r.try_get_u32_le()?,
                    old_pr_rkey: r.try_get_u32_le()?,
                    pr_rkey: r.try_get_u32_le()?,
                });
            }
            Msg::LeaseKeysResp(LeaseKeysResp {
                rc,
                total,
                from,
                keys,
            })
        }
    };
    if r.has_remaining() {
        return Err(BadMsg(format!("{} trailing bytes", r.remaining())));
    }
    Ok((h, m))
}

#[cfg(test)]
mod tests;
