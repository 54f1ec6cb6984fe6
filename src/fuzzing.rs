//! Bodies of the fuzz targets, shared by the libFuzzer targets in `fuzz/`
//! (nightly, cargo-fuzz) and the stable smoke test `tests/fuzz_corpus.rs`
//! (every corpus file plus seeded random mutations).
//!
//! Each body takes untrusted bytes, runs one decoder the way the code that
//! receives those bytes runs it, and panics only when an invariant that
//! code relies on is broken (a decoder panicking, accepting what it must
//! refuse, or not round-tripping what it accepted). [`seeds`] returns
//! valid encodings of every message kind, the corpus the generator in
//! `tests/fuzz_corpus.rs` writes to `fuzz/corpus/<target>/`.

#![doc(hidden)]

use std::cell::RefCell;
use std::io::{ErrorKind, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fabric::mem::MemBlock;
use crate::fabric::soft::auth;
use crate::fabric::soft::ring::{flag, Consumer, Producer, RingLayout, CTRL};
use crate::fabric::soft::shm::MSG_SLOT;
use crate::fabric::soft::tcp::Framed;
use crate::fabric::soft::wire::{
    FrameKind, Prefix, ReqHeader, ReqOp, RespHeader, FRAME_PREFIX, MAX_RDMA_LEN, MAX_SEND, REQ_LEN,
    RESP_LEN,
};
use crate::fabric::soft::NicAddr;
use crate::fabric::QpEndpoint;
use crate::lease::addr::{BufOff, Layout, NodeMemory, RegionOff};
use crate::lease::msg::{self, Msg};
use crate::time::{ClockInfo, SyncSample, CLOCK_MAGIC};

/// A fuzz target body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its libFuzzer target and corpus directory.
/// `clock_estimate` is left out: it has a known, unfixed finding (see
/// [`clock_estimate`]); the smoke test runs it on its seeds only.
pub const TARGETS: &[(&str, Target)] = &[
    ("lease_msg", lease_msg),
    ("wire_headers", wire_headers),
    ("tcp_frames", tcp_frames),
    ("tcp_hello", tcp_hello),
    ("shm_ring", shm_ring),
    ("endpoint", endpoint),
    ("node_memory", node_memory),
    ("clock_info", clock_info),
    ("clock_estimate", clock_estimate),
];

/// Copies up to `N` bytes of `data` into a zero-padded array.
fn padded<const N: usize>(data: &[u8]) -> [u8; N] {
    let mut b = [0u8; N];
    let n = data.len().min(N);
    b[..n].copy_from_slice(&data[..n]);
    b
}

/// The lease RPC codec: decode, and for what decodes, encode again and
/// decode the encoding. The encoding equals the input except the header's
/// reserved word (bytes 20..24), which decode ignores.
pub fn lease_msg(data: &[u8]) {
    let Ok((h, m)) = msg::decode(data) else {
        return;
    };
    assert_eq!(h.ty as u8, data[3], "decoded type differs from the wire");
    let mut out = Vec::new();
    let n = msg::encode(&h, &m, &mut out);
    assert_eq!(n, out.len());
    let mut want = data.to_vec();
    want[20..24].fill(0);
    assert_eq!(out, want, "re-encoding differs from the accepted input");
    assert_eq!(msg::decode(&out), Ok((h, m.clone())), "round trip");
    if let Msg::Memory(r) = &m {
        // What the directory relies on before it touches memory.
        match r.op {
            msg::MemOp::Write => assert_eq!(r.payload.len(), r.size as usize),
            msg::MemOp::Read => assert!(r.size as usize <= msg::MAX_MEM_PAYLOAD),
            msg::MemOp::Cas | msg::MemOp::Faa => assert_eq!(r.size, 8),
        }
    }
}

/// What the responder relies on in a request header that decoded.
fn check_req(h: &ReqHeader) {
    match h.op {
        ReqOp::Cas | ReqOp::Faa => assert!(h.len == 8 && h.raddr % 8 == 0, "{h:?}"),
        ReqOp::Send => assert!(h.len <= MAX_SEND, "{h:?}"),
        ReqOp::Read | ReqOp::Write => assert!(h.len <= MAX_RDMA_LEN, "{h:?}"),
    }
}

/// The soft NIC's fixed headers: byte 0 picks the decoder (request header,
/// response header, tcp frame prefix), the rest is the header, zero-padded.
pub fn wire_headers(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 3 {
        0 => {
            let b: [u8; REQ_LEN] = padded(rest);
            match ReqHeader::decode(&b) {
                Ok(h) => {
                    check_req(&h);
                    // Reserved bytes are checked, so an accepted header is
                    // exactly its encoding.
                    let mut e = [0u8; REQ_LEN];
                    h.encode(&mut e);
                    assert_eq!(e, b, "request header re-encoding");
                }
                Err((_, seq, epoch)) => {
                    // The responder answers the failed request by these.
                    assert_eq!(seq, u64::from_le_bytes(padded(&b[8..16])));
                    assert_eq!(epoch, b[1]);
                }
            }
        }
        1 => {
            let b: [u8; RESP_LEN] = padded(rest);
            let r = RespHeader::decode(&b);
            let mut e = [0u8; RESP_LEN];
            r.encode(&mut e);
            assert_eq!(RespHeader::decode(&e), r, "response header round trip");
        }
        _ => {
            let b: [u8; FRAME_PREFIX] = padded(rest);
            if let Ok(p) = Prefix::decode(&b) {
                assert!(p.payload_len <= MAX_RDMA_LEN);
                assert_eq!(
                    Prefix::encode(p.kind, p.payload_len),
                    b,
                    "prefix re-encoding"
                );
            }
        }
    }
}

/// The authenticated hello (88 bytes) and the 40-byte challenge, answer,
/// refusal and acceptance messages of both links, as each side parses them
/// before anything is attached: decoding is total, and what decodes
/// re-encodes to the same value.
pub fn tcp_hello(data: &[u8]) {
    let b: [u8; auth::HELLO_LEN] = padded(data);
    if let Ok(h) = auth::Hello::decode(&b) {
        assert_eq!(
            auth::Hello::decode(&h.encode()).ok(),
            Some(h),
            "hello round trip"
        );
    }
    let m: [u8; auth::MSG_LEN] = padded(data);
    if let Ok((kind, word, body)) = auth::parse_msg(&m) {
        assert_eq!(
            auth::parse_msg(&auth::msg(kind, word, &body)).ok(),
            Some((kind, word, body)),
            "message round trip"
        );
    }
}

thread_local! {
    /// A loopback tcp connection per thread (client end, server end),
    /// reused by every `tcp_frames` run.
    static LOOPBACK: RefCell<Option<(TcpStream, TcpStream)>> = const { RefCell::new(None) };
}

fn loopback() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let c = TcpStream::connect(l.local_addr().expect("local addr")).expect("connect loopback");
    let (s, _) = l.accept().expect("accept loopback");
    c.set_nonblocking(true).expect("non-blocking");
    (c, s)
}

/// Largest stream `tcp_frames` feeds (it must fit the input buffer).
pub const MAX_FRAMES_INPUT: usize = 64 << 10;

/// Tcp frame parsing, through the real [`Framed`] over a loopback socket:
/// byte 0 picks the direction (even: requests, odd: responses), the rest
/// is the byte stream a peer sent. Every frame `next_frame` returns is
/// compared with an independent walk over the stream.
pub fn tcp_frames(data: &[u8]) {
    let Some((&sel, stream)) = data.split_first() else {
        return;
    };
    let stream = &stream[..stream.len().min(MAX_FRAMES_INPUT)];
    let expect = if sel % 2 == 0 {
        FrameKind::Req
    } else {
        FrameKind::Resp
    };
    LOOPBACK.with(|lb| {
        let mut lb = lb.borrow_mut();
        let (client, server) = lb.get_or_insert_with(loopback);
        // A fresh Framed (empty buffers) on the same connection: each run
        // reads back exactly the bytes it wrote, so the stream stays aligned.
        let mut f = Framed::new(server.try_clone().expect("dup socket")).expect("framed");
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut sent, mut got) = (0, 0);
        while got < stream.len() {
            if sent < stream.len() {
                match client.write(&stream[sent..]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("loopback write: {e}"),
                }
            }
            got += f.read_some().expect("loopback read");
            assert!(Instant::now() < deadline, "loopback stalled");
        }
        let mut at = 0;
        loop {
            let r = f.next_frame(expect);
            // The reference walk.
            let rest = &stream[at..];
            if rest.len() < FRAME_PREFIX {
                assert!(matches!(r, Ok(None)), "short prefix must wait");
                break;
            }
            let p = Prefix::decode(&padded(rest));
            let p = match p {
                Ok(p) if p.kind == expect => p,
                _ => {
                    assert!(r.is_err(), "a bad or wrong-kind prefix must be refused");
                    break;
                }
            };
            let total = FRAME_PREFIX + p.hdr_len() + p.payload_len as usize;
            if rest.len() < total {
                assert!(matches!(r, Ok(None)), "a partial frame must wait");
                break;
            }
            let fr = r.expect("a whole valid frame").expect("a whole frame");
            assert_eq!(fr.kind, expect);
            let hl = p.hdr_len();
            assert_eq!(fr.hdr[..hl], rest[FRAME_PREFIX..FRAME_PREFIX + hl]);
            assert_eq!(f.payload(&fr), &rest[FRAME_PREFIX + hl..total]);
            match expect {
                FrameKind::Req => {
                    if let Ok(h) = ReqHeader::decode(&fr.hdr) {
                        check_req(&h);
                    }
                }
                FrameKind::Resp => {
                    let _ = RespHeader::decode(&padded(&fr.hdr));
                }
            }
            at += total;
        }
    });
}

/// Ring geometry for `shm_ring`: the shm link's slot sizes, fewer slots.
const RING_SLOTS: u32 = 8;
const MSG_SLOTS: u32 = 4;
const REQ_RING: RingLayout = RingLayout {
    off: 0,
    slots: RING_SLOTS,
    slot: REQ_LEN,
};
const RESP_RING: RingLayout = RingLayout {
    off: CTRL + RING_SLOTS as usize * REQ_LEN,
    slots: RING_SLOTS,
    slot: RESP_LEN,
};
const MSG_RING: RingLayout = RingLayout {
    off: RESP_RING.off + CTRL + RING_SLOTS as usize * RESP_LEN,
    slots: MSG_SLOTS,
    slot: MSG_SLOT,
};
const RING_BLOCK: usize = MSG_RING.off + CTRL + MSG_SLOTS as usize * MSG_SLOT;

thread_local! {
    static RING_MEM: Arc<MemBlock> =
        Arc::new(MemBlock::new(RING_BLOCK, "fuzz-ring").expect("ring block"));
}

/// Ops of the `shm_ring` script (op byte % 8).
pub mod ring_op {
    /// Hostile u32 store: word index (u16), value (u32).
    pub const POKE: u8 = 0;
    /// Hostile entry: ring (0 req, 1 msg, 2 resp), k (the k-th slot past
    /// the honest consumer's head), n (payload bytes, up to 64), bytes;
    /// then the matching stamp.
    pub const FORGE: u8 = 1;
    /// Responder serves the request ring.
    pub const SERVE: u8 = 2;
    /// Receiver takes messages off the message ring.
    pub const RECV: u8 = 3;
    /// Responder writes count (u8 % 9) responses.
    pub const RESPOND: u8 = 4;
    /// Initiator takes responses.
    pub const COMPLETE: u8 = 5;
    /// Hostile u64 store into a ring index: ring, 0 head / 1 tail, value.
    pub const INDEX: u8 = 6;
    /// Every honest side releases; peekers look.
    pub const RELEASE: u8 = 7;
}

/// Ring-entry validation on the shm link. The block stands for a shared
/// segment whose other side is hostile: a script of hostile stores (any
/// word, forged entries, forged indices) interleaved with the honest
/// sides doing what the responder (`serve_shm`), the receiver
/// (`progress_recv`) and the initiator (`progress_send`) do with the
/// entries: copy out, validate, decode. Checked: nothing panics, no side
/// ever sees more entries than a ring holds, and decoded entries satisfy
/// the validators' guarantees.
pub fn shm_ring(data: &[u8]) {
    let b = RING_MEM.with(Arc::clone);
    for w in (0..RING_BLOCK).step_by(4) {
        flag(&b, w).store(0, Ordering::Relaxed);
    }
    let mut req = Consumer::new(b.clone(), REQ_RING);
    let mut msgs = Consumer::new(b.clone(), MSG_RING);
    let mut resp_out = Producer::new(b.clone(), RESP_RING, true);
    let mut resp_in = Consumer::new(b.clone(), RESP_RING);
    let layouts = [REQ_RING, MSG_RING, RESP_RING];
    let mut r = data;
    let mut next = |n: usize| -> Option<&[u8]> {
        if r.len() < n {
            return None;
        }
        let (a, rest) = r.split_at(n);
        r = rest;
        Some(a)
    };
    let store64 = |off: usize, v: u64| {
        flag(&b, off).store(v as u32, Ordering::Relaxed);
        flag(&b, off + 4).store((v >> 32) as u32, Ordering::Release);
    };
    let mut slot = [0u8; MSG_SLOT];
    while let Some(&[op]) = next(1) {
        match op % 8 {
            ring_op::POKE => {
                let Some(a) = next(6) else { break };
                let w = u16::from_le_bytes([a[0], a[1]]) as usize % (RING_BLOCK / 4);
                let v = u32::from_le_bytes([a[2], a[3], a[4], a[5]]);
                flag(&b, w * 4).store(v, Ordering::Release);
            }
            ring_op::FORGE => {
                let Some(&[ring, k, n]) = next(3) else { break };
                let l = layouts[ring as usize % 3];
                let head = match ring % 3 {
                    0 => req.head(),
                    1 => msgs.head(),
                    _ => resp_in.head(),
                };
                let idx = head + (k % 8) as u64;
                let n = (n as usize % 65).min(l.slot - 8);
                let Some(bytes) = next(n) else { break };
                let at = l.off + CTRL + (idx & (l.slots as u64 - 1)) as usize * l.slot;
                for (i, c) in bytes.chunks(4).enumerate() {
                    let v = u32::from_le_bytes(padded(c));
                    flag(&b, at + 4 * i).store(v, Ordering::Relaxed);
                }
                store64(at + l.slot - 8, idx + 1);
            }
            ring_op::SERVE => {
                // As serve_shm: available, then pop and decode each entry.
                let Ok(n) = req.available() else { continue };
                assert!(n <= (RING_SLOTS as u64 / 4).max(1), "{n} requests offered");
                for _ in 0..n {
                    let mut e = [0u8; REQ_LEN];
                    req.pop_prefix::<{ REQ_LEN - 8 }, REQ_LEN>(&mut e);
                    if let Ok(h) = ReqHeader::decode(&e) {
                        check_req(&h);
                    }
                }
                req.release();
            }
            ring_op::RECV => {
                // As progress_recv: length first, refused past MAX_SEND.
                let Ok(n) = msgs.available() else { continue };
                assert!(n <= (MSG_SLOTS as u64 / 4).max(1), "{n} messages offered");
                for _ in 0..n {
                    let mut lb = [0u8; 4];
                    assert!(msgs.peek_into(0, &mut lb), "length of an available message");
                    let len = u32::from_le_bytes(lb);
                    if len > MAX_SEND {
                        break;
                    }
                    assert!(
                        msgs.peek_into(16, &mut slot[..len as usize]),
                        "a {len}-byte message fits its slot"
                    );
                    msgs.pop_into(&mut []);
                }
                msgs.release();
            }
            ring_op::RESPOND => {
                let Some(&[c]) = next(1) else { break };
                let Ok(free) = resp_out.free() else { continue };
                assert!(free <= RING_SLOTS, "{free} free slots");
                for i in 0..(c % 9).min(free as u8) {
                    let rh = RespHeader {
                        seq: i as u64,
                        status: 0,
                        op: 1,
                        epoch: 0,
                        byte_len: 8,
                        value: 0,
                    };
                    let mut e = [0u8; RESP_LEN];
                    rh.encode(&mut e);
                    resp_out.write_prefix::<{ RESP_LEN - 8 }, RESP_LEN>(&e);
                }
                resp_out.publish();
                assert!(resp_out.in_flight() <= RING_SLOTS as u64, "ring overrun");
            }
            ring_op::COMPLETE => {
                let Ok(n) = resp_in.available() else { continue };
                assert!(n <= (RING_SLOTS as u64 / 4).max(1), "{n} responses offered");
                for _ in 0..n {
                    let mut e = [0u8; RESP_LEN];
                    resp_in.pop_prefix::<{ RESP_LEN - 8 }, RESP_LEN>(&mut e);
                    let _ = RespHeader::decode(&e);
                }
                resp_in.release();
            }
            ring_op::INDEX => {
                let Some(a) = next(10) else { break };
                let l = layouts[a[0] as usize % 3];
                let off = l.off + if a[1] % 2 == 0 { 0 } else { 64 };
                store64(off, u64::from_le_bytes(padded(&a[2..])));
            }
            _ => {
                req.release();
                msgs.release();
                resp_in.release();
                let _ = (req.peeker().ready(req.head()), msgs.ready());
            }
        }
    }
}

/// Queue-pair endpoints from the keeper: one endpoint, a list, and each
/// endpoint's soft NIC address. Accepted encodings are canonical.
pub fn endpoint(data: &[u8]) {
    if let Ok(e) = QpEndpoint::decode(data) {
        assert_eq!(e.encode(), data, "endpoint re-encoding");
    }
    if let Ok(v) = QpEndpoint::decode_list(data) {
        assert_eq!(
            QpEndpoint::encode_list(&v),
            data,
            "endpoint list re-encoding"
        );
        for e in &v {
            if let Ok(a) = NicAddr::decode(&e.nic) {
                assert_eq!(
                    NicAddr::decode(&a.encode()).ok(),
                    Some(a),
                    "NIC address round trip"
                );
            }
        }
    }
    if let Ok(a) = NicAddr::decode(data) {
        assert_eq!(
            NicAddr::decode(&a.encode()).ok(),
            Some(a),
            "NIC address round trip"
        );
    }
}

/// A peer's published memory (keeper text) and what a client computes
/// from a peer's layout.
pub fn node_memory(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Some(m) = NodeMemory::decode(s) else {
        return;
    };
    assert_eq!(NodeMemory::decode(&m.encode()), Some(m), "round trip");
    let l: Layout = m.layout;
    let (_, _) = (l.buffer(), l.total());
    for off in [0, 1, l.lease, l.buffer(), u64::MAX] {
        let r = l.region(BufOff(off));
        if r.0 != u64::MAX {
            assert_eq!(l.buf(r), Some(BufOff(off)), "region/buffer offsets");
        }
        let _ = l.admits(BufOff(off), 8);
    }
    let _ = l.buf(RegionOff(l.internal.saturating_sub(1)));
}

/// The time parent's ClockInfo (32 bytes, zero-padded), as a syncing node
/// reads it: decode (total), and check the fields are where the layout
/// says.
pub fn clock_info(data: &[u8]) {
    let b: [u8; 32] = padded(data);
    let c = ClockInfo::decode(&b);
    let mut e = [0u8; 32];
    e[0..8].copy_from_slice(&c.ns.to_le_bytes());
    e[8..16].copy_from_slice(&c.flags.to_le_bytes());
    e[16..24].copy_from_slice(&c.request.to_le_bytes());
    e[24..32].copy_from_slice(&c.magic.to_le_bytes());
    assert_eq!(e, b, "ClockInfo field layout");
}

/// A live ClockInfo (32 bytes) and a read window (`lo`: u64 >> 2, `hi - lo`:
/// u32; plausible local monotonic times) turned into an offset estimate,
/// as `TimeSyncer::sync_once` does with a fresh value.
///
/// Finding F1 (fixed): `SyncSample::estimate` computed `parent_ns - mid`
/// unchecked, so a parent value near `i64::MIN` overflowed; it now rejects
/// such samples.
pub fn clock_estimate(data: &[u8]) {
    let b: [u8; 48] = padded(data);
    let c = ClockInfo::decode(&padded(&b));
    if c.magic != CLOCK_MAGIC {
        return;
    }
    let lo = (u64::from_le_bytes(padded(&b[32..40])) >> 2) as i64;
    let hi = lo + u32::from_le_bytes(padded(&b[40..44])) as i64;
    if let Some((_, eps)) = (SyncSample {
        lo,
        hi,
        parent_ns: c.ns,
    })
    .estimate()
    {
        assert!(eps > 0);
    }
}

/// Valid encodings of every message kind, per target (the corpus).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "lease_msg" => seed_msgs(),
        "wire_headers" => seed_wire(),
        "tcp_frames" => seed_frames(),
        "tcp_hello" => {
            let h = |link, dst, src, epoch| {
                auth::Hello {
                    dst,
                    src,
                    link,
                    epoch,
                    nonce: [7; auth::KEY_LEN],
                    pk: [9; auth::KEY_LEN],
                }
                .encode()
                .to_vec()
            };
            let m = |kind, word| auth::msg(kind, word, &[5; auth::KEY_LEN]).to_vec();
            vec![
                h(auth::HelloLink::Tcp, 1, 2, 1),
                h(auth::HelloLink::Shm, u32::MAX, 0, u64::MAX),
                m(auth::kind::CHAL, 0),
                m(auth::kind::AUTH, 0),
                m(auth::kind::REFUSE, auth::refuse::BAD_MAC),
                m(auth::kind::OK, 0),
            ]
        }
        "shm_ring" => seed_ring(),
        "endpoint" => seed_endpoints(),
        "node_memory" => [
            Layout::new(1, 64, 1 << 20, 1 << 20, 0),
            Layout::new(4, 4096, 64 << 20, 16 << 20, 4096),
        ]
        .iter()
        .map(|&layout| {
            NodeMemory {
                region_addr: 0x7f00_0000_0000,
                region_rkey: 0x1234,
                clock_rkey: 0x201,
                request_rkey: 0x302,
                layout,
            }
            .encode()
            .into_bytes()
        })
        .collect(),
        "clock_info" | "clock_estimate" => [(0i64, 0u64), (1_700_000_000_000_000_000, 9)]
            .iter()
            .map(|&(ns, req)| {
                let mut v = Vec::new();
                v.extend_from_slice(&ns.to_le_bytes());
                v.extend_from_slice(&0i64.to_le_bytes());
                v.extend_from_slice(&req.to_le_bytes());
                v.extend_from_slice(&CLOCK_MAGIC.to_le_bytes());
                v.extend_from_slice(&1_000_000_000u64.to_le_bytes());
                v.extend_from_slice(&5_000u64.to_le_bytes());
                v
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn seed_msgs() -> Vec<Vec<u8>> {
    use msg::*;
    let acq = AcquireReq {
        key: 4096,
        size: 64,
        ns: 1_000_000,
        flag: 0,
        dir: 1,
    };
    let modify = ModifyReq {
        slot: 3,
        generation: 9,
        ns: 1000,
        hint: 0,
        flag: 0,
        addr: 4096,
        size: 64,
        dir: 1,
    };
    let mem = |op, size: u32, payload: Vec<u8>| MemReq {
        op,
        slot: 3,
        generation: 9,
        offset: 8,
        size,
        arg0: 1,
        arg1: 2,
        dir: 0,
        payload,
    };
    let mut cases = vec![
        (MsgType::AcquireR, Msg::Acquire(acq)),
        (MsgType::AcquireW, Msg::Acquire(acq)),
        (
            MsgType::AcquireResp,
            Msg::AcquireResp(AcquireResp {
                status: 0,
                rkey: 0x100,
                pr_rkey: 0x200,
                base: 8192,
                pr_off: 4096,
                begin_term: 123,
                ns_per_unit: 1_000_000,
                slot: 3,
                generation: 9,
                aba: 1,
            }),
        ),
        (MsgType::Relinquish, Msg::Relinquish(modify)),
        (MsgType::Extend, Msg::Extend(modify)),
        (
            MsgType::RelinquishResp,
            Msg::RelinquishResp(ModifyResp { rc: 0, units: 0 }),
        ),
        (
            MsgType::ExtendResp,
            Msg::ExtendResp(ModifyResp { rc: 0, units: 2 }),
        ),
        (
            MsgType::AdminResp,
            Msg::AdminResp(AdminResp { rc: 0, value: 77 }),
        ),
        (MsgType::Memory, Msg::Memory(mem(MemOp::Read, 16, vec![]))),
        (
            MsgType::Memory,
            Msg::Memory(mem(MemOp::Write, 5, b"hello".to_vec())),
        ),
        (MsgType::Memory, Msg::Memory(mem(MemOp::Cas, 8, vec![]))),
        (MsgType::Memory, Msg::Memory(mem(MemOp::Faa, 8, vec![]))),
        (
            MsgType::MemoryResp,
            Msg::MemoryResp(MemResp {
                rc: 0,
                old: 5,
                payload: vec![7; 16],
            }),
        ),
    ];
    for op in [
        AdminOp::Finished,
        AdminOp::Time,
        AdminOp::QpToRo,
        AdminOp::QpToRw,
        AdminOp::QpReset,
        AdminOp::Stats,
        AdminOp::GcQueued,
        AdminOp::PrNicAtomics,
    ] {
        cases.push((MsgType::Admin, Msg::Admin(AdminReq { op, arg: 1, dir: 0 })));
    }
    cases
        .into_iter()
        .map(|(ty, m)| {
            let h = Header {
                ty,
                rpc_id: 42,
                node: 1,
                thread: 2,
            };
            let mut out = Vec::new();
            encode(&h, &m, &mut out);
            out
        })
        .collect()
}

fn seed_req_headers() -> Vec<ReqHeader> {
    [
        (ReqOp::Read, 64),
        (ReqOp::Write, 100),
        (ReqOp::Cas, 8),
        (ReqOp::Faa, 8),
        (ReqOp::Send, 200),
    ]
    .iter()
    .map(|&(op, len)| ReqHeader {
        op,
        epoch: 1,
        len,
        seq: 7,
        raddr: 0x1000,
        rkey: 0x0102_0304,
        lblock: 2,
        loff: 64,
        arg0: 1,
        arg1: 2,
    })
    .collect()
}

fn seed_resp_header(op: u8, byte_len: u32) -> RespHeader {
    RespHeader {
        seq: 7,
        status: 0,
        op,
        epoch: 1,
        byte_len,
        value: 5,
    }
}

fn seed_wire() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for h in seed_req_headers() {
        let mut b = [0u8; REQ_LEN];
        h.encode(&mut b);
        v.push([&[0u8][..], &b].concat());
    }
    let mut b = [0u8; RESP_LEN];
    seed_resp_header(1, 64).encode(&mut b);
    v.push([&[1u8][..], &b].concat());
    for (kind, len) in [(FrameKind::Req, 100), (FrameKind::Resp, 64)] {
        v.push([&[2u8][..], &Prefix::encode(kind, len)].concat());
    }
    v
}

fn seed_frames() -> Vec<Vec<u8>> {
    // Requests: every op, WRITE and SEND with their payloads, in one stream
    // and one per file; responses: a READ's data, an atomic's.
    let mut all = vec![0u8];
    let mut v = Vec::new();
    for h in seed_req_headers() {
        let n = match h.op {
            ReqOp::Write | ReqOp::Send => h.len as usize,
            _ => 0,
        };
        let mut b = [0u8; REQ_LEN];
        h.encode(&mut b);
        let frame = [
            &Prefix::encode(FrameKind::Req, n as u32)[..],
            &b,
            &vec![0xab; n],
        ]
        .concat();
        all.extend_from_slice(&frame);
        v.push([&[0u8][..], &frame].concat());
    }
    v.push(all);
    let mut resp = vec![1u8];
    for (op, n) in [(1u8, 64usize), (3, 0)] {
        let mut b = [0u8; RESP_LEN];
        seed_resp_header(op, n as u32).encode(&mut b);
        resp.extend_from_slice(&Prefix::encode(FrameKind::Resp, n as u32));
        resp.extend_from_slice(&b);
        resp.extend_from_slice(&vec![0xcd; n]);
    }
    v.push(resp);
    v
}

fn seed_ring() -> Vec<Vec<u8>> {
    use ring_op::*;
    let mut v = Vec::new();
    // Forged valid requests of every op, served.
    let mut s = Vec::new();
    for (k, h) in seed_req_headers().iter().enumerate() {
        let mut b = [0u8; REQ_LEN];
        h.encode(&mut b);
        s.extend_from_slice(&[FORGE, 0, k as u8, (REQ_LEN - 8) as u8]);
        s.extend_from_slice(&b[..REQ_LEN - 8]);
    }
    s.push(SERVE);
    s.push(SERVE);
    v.push(s);
    // A forged message (length 8 + payload), received.
    let mut s = vec![FORGE, 1, 0, 24];
    s.extend_from_slice(&8u32.to_le_bytes());
    s.extend_from_slice(&[0; 12]);
    s.extend_from_slice(b"payload!");
    s.push(RECV);
    v.push(s);
    // Responses written and completed, then a hostile head.
    let mut s = vec![RESPOND, 8, COMPLETE, COMPLETE, RESPOND, 4, RELEASE];
    s.extend_from_slice(&[INDEX, 2, 0]);
    s.extend_from_slice(&100u64.to_le_bytes());
    s.extend_from_slice(&[RESPOND, 8, POKE, 0, 0, 1, 0, 0, 0, SERVE]);
    v.push(s);
    v
}

fn seed_endpoints() -> Vec<Vec<u8>> {
    let tcp = NicAddr {
        shm: None,
        tcp: Some("127.0.0.1:4000".into()),
        pk: Some([3; auth::KEY_LEN]),
    };
    let both = NicAddr {
        shm: Some("patronus-nic-1".into()),
        tcp: Some("127.0.0.1:4001".into()),
        pk: Some([4; auth::KEY_LEN]),
    };
    let eps: Vec<QpEndpoint> = [(tcp, 7), (both, 8)]
        .into_iter()
        .map(|(a, qpn)| QpEndpoint {
            nic: a.encode(),
            qpn,
        })
        .collect();
    let mut v: Vec<Vec<u8>> = eps.iter().map(QpEndpoint::encode).collect();
    v.push(QpEndpoint::encode_list(&eps));
    v.push(eps[1].nic.clone());
    v
}
