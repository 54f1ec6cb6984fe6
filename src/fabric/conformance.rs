//! The fabric conformance suite, written once against the contract.
//!
//! CI runs it on the soft NIC (shm and tcp links); on RDMA hardware
//! `patronus selftest --fabric verbs` runs the same checks against verbs.
//! Every check returns a descriptive error instead of panicking, so the CLI
//! can report which property failed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::{
    Access, Cq, FabricError, Mr, MwInfo, Nic, Pd, Qp, QpCap, RecvWr, Result, SendWr, Sge, Wc,
    WcOpcode, WcStatus, WrOp,
};

/// How long a single completion may take before a check fails.
pub const WC_TIMEOUT: Duration = Duration::from_secs(10);

fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(FabricError::Invalid(msg.into()))
}

/// One side of a connection: NIC, PD, CQ, QP, and a local buffer.
pub struct Side {
    /// The NIC.
    pub nic: Arc<dyn Nic>,
    /// Protection domain.
    pub pd: Pd,
    /// Send and receive CQ.
    pub cq: Arc<dyn Cq>,
    /// The QP.
    pub qp: Arc<dyn Qp>,
    /// A registered local buffer.
    pub buf: Arc<Mr>,
}

impl Side {
    /// Creates a side with a `buf_len`-byte local buffer.
    pub fn new(nic: Arc<dyn Nic>, pd: Pd, buf_len: usize) -> Result<Side> {
        let cq = nic.create_cq(1024)?;
        let qp = nic.create_qp(
            pd,
            &cq,
            &cq,
            QpCap {
                max_send_wr: 512,
                max_recv_wr: 128,
            },
        )?;
        let buf = nic.alloc_mr(pd, buf_len, Access::ALL)?;
        Ok(Side {
            nic,
            pd,
            cq,
            qp,
            buf,
        })
    }

    /// Polls one completion, failing after [`WC_TIMEOUT`].
    pub fn wait(&self) -> Result<Wc> {
        wait_wc(&*self.cq, WC_TIMEOUT)
    }

    /// Posts one work request and waits for its completion.
    pub fn run(&self, op: WrOp) -> Result<Wc> {
        self.qp.post_send(&[SendWr {
            wr_id: 1,
            op,
            signaled: true,
        }])?;
        self.wait()
    }

    /// Reset + reconnect (recovery of the same QP). On hardware a remote
    /// access error also moves the responder's QP to error, so the peer is
    /// reset and reconnected too when it is not ready to send.
    pub fn recover(&self, remote: &Side) -> Result<()> {
        self.qp.reset()?;
        drain(&*self.cq);
        if remote.qp.state() != super::QpState::Rts {
            remote.qp.reset()?;
            drain(&*remote.cq);
            remote.qp.connect(&self.qp.endpoint())?;
        }
        self.qp.connect(&remote.qp.endpoint())
    }

    /// An SGE over `[off, off+len)` of the local buffer.
    pub fn sge(&self, off: u64, len: u32) -> Sge {
        Sge {
            lkey: self.buf.lkey(),
            offset: off,
            len,
        }
    }
}

/// Polls one completion or fails after `timeout`.
pub fn wait_wc(cq: &dyn Cq, timeout: Duration) -> Result<Wc> {
    let end = Instant::now() + timeout;
    let mut wc = [Wc::default(); 1];
    loop {
        if cq.poll(&mut wc) == 1 {
            return Ok(wc[0]);
        }
        if Instant::now() > end {
            return Err(FabricError::PeerLost(format!(
                "no completion within {timeout:?}"
            )));
        }
        cq.wait(Duration::from_micros(100));
    }
}

/// Drains every completion currently available.
pub fn drain(cq: &dyn Cq) -> usize {
    let mut wc = [Wc::default(); 32];
    let mut n = 0;
    loop {
        let k = cq.poll(&mut wc);
        if k == 0 {
            return n;
        }
        n += k;
    }
}

/// A memory node with an exposed region and a client connected to it.
pub struct Pair {
    /// The memory node's side (its QP is connected to the client's).
    pub server: Side,
    /// The client's side.
    pub client: Side,
    /// The exposed region on the server (ALL access, incl. MW_BIND).
    pub region: Arc<Mr>,
}

impl Pair {
    /// Builds and connects a pair.
    pub fn new(server: Arc<dyn Nic>, client: Arc<dyn Nic>, region_len: usize) -> Result<Pair> {
        let spd = server.alloc_pd()?;
        let cpd = client.alloc_pd()?;
        let region = server.alloc_mr(spd, region_len, Access::ALL)?;
        let s = Side::new(server, spd, 64 << 10)?;
        let c = Side::new(client, cpd, (2 << 20) + 4096)?;
        s.qp.connect(&c.qp.endpoint())?;
        c.qp.connect(&s.qp.endpoint())?;
        Ok(Pair {
            server: s,
            client: c,
            region,
        })
    }

    /// Another client QP (on `client`) connected to the same memory node,
    /// PD and region: a second connection to the same memory.
    pub fn share(&self, client: &Arc<dyn Nic>) -> Result<Pair> {
        let s = Side::new(self.server.nic.clone(), self.server.pd, 64 << 10)?;
        let c = Side::new(client.clone(), client.alloc_pd()?, (2 << 20) + 4096)?;
        s.qp.connect(&c.qp.endpoint())?;
        c.qp.connect(&s.qp.endpoint())?;
        Ok(Pair {
            server: s,
            client: c,
            region: self.region.clone(),
        })
    }

    /// Binds a fresh window over `[off, off+len)` of the region towards the
    /// client; returns (window, rkey).
    pub fn bind(&self, off: u64, len: u64, access: Access) -> Result<(MwInfo, u32)> {
        let mw = self.server.nic.alloc_mw(self.server.pd)?;
        let rkey = self.rebind(mw, off, len, access)?;
        Ok((mw, rkey))
    }

    /// Rebinds an existing window; returns the new rkey.
    pub fn rebind(&self, mw: MwInfo, off: u64, len: u64, access: Access) -> Result<u32> {
        let wc = self.server.run(WrOp::Bind {
            mw: mw.handle,
            lkey: self.region.lkey(),
            offset: off,
            len,
            access,
        })?;
        if wc.status != WcStatus::Success || wc.opcode != WcOpcode::BindMw {
            return fail(format!("bind completed with {wc:?}"));
        }
        Ok(self.server.nic.mw_rkey(mw.handle))
    }

    /// Invalidates a window.
    pub fn unbind(&self, mw: MwInfo) -> Result<()> {
        let wc = self.server.run(WrOp::Invalidate { mw: mw.handle })?;
        if wc.status != WcStatus::Success {
            return fail(format!("invalidate completed with {wc:?}"));
        }
        Ok(())
    }

    /// Client READ of `len` bytes at region offset `roff` into local `loff`.
    pub fn read(&self, rkey: u32, roff: u64, loff: u64, len: u32) -> Result<WcStatus> {
        Ok(self
            .client
            .run(WrOp::Read {
                local: self.client.sge(loff, len),
                raddr: self.region.addr() + roff,
                rkey,
            })?
            .status)
    }

    /// Client WRITE.
    pub fn write(&self, rkey: u32, roff: u64, loff: u64, len: u32) -> Result<WcStatus> {
        Ok(self
            .client
            .run(WrOp::Write {
                local: self.client.sge(loff, len),
                raddr: self.region.addr() + roff,
                rkey,
            })?
            .status)
    }

    /// Client CAS; returns (status, old value).
    pub fn cas(&self, rkey: u32, roff: u64, compare: u64, swap: u64) -> Result<(WcStatus, u64)> {
        let st = self
            .client
            .run(WrOp::Cas {
                local: self.client.sge(0, 8),
                raddr: self.region.addr() + roff,
                rkey,
                compare,
                swap,
            })?
            .status;
        Ok((
            st,
            self.client
                .buf
                .load_u64(0)
                .map_err(|e| FabricError::Invalid(e.to_string()))?,
        ))
    }

    /// Client FAA; returns (status, old value).
    pub fn faa(&self, rkey: u32, roff: u64, add: u64) -> Result<(WcStatus, u64)> {
        let st = self
            .client
            .run(WrOp::Faa {
                local: self.client.sge(0, 8),
                raddr: self.region.addr() + roff,
                rkey,
                add,
            })?
            .status;
        Ok((st, self.client.buf.load_u64(0)?))
    }

    /// Expects `st` to be a remote access error, then recovers the client QP.
    pub fn expect_denied(&self, st: WcStatus, what: &str) -> Result<()> {
        if st != WcStatus::RemAccessErr {
            return fail(format!("{what}: expected RemAccessErr, got {st:?}"));
        }
        self.client.recover(&self.server)
    }
}

/// A checksum of the whole region (FNV-1a over 64 KiB chunks).
pub fn checksum(mr: &Mr) -> Result<u64> {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut buf = vec![0u8; 64 << 10];
    let mut off = 0;
    while off < mr.len() {
        let n = buf.len().min((mr.len() - off) as usize);
        mr.read(off, &mut buf[..n])?;
        for b in &buf[..n] {
            h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
        }
        off += n as u64;
    }
    Ok(h)
}

/// READ/WRITE are byte-exact from 1 B to 1 MiB at unaligned offsets, through
/// both an MR rkey and a window; the memory node sees the same bytes.
pub fn check_rw_byte_exact(p: &Pair) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(0x9e37_79b9_7f4a_7c15);
    let (_, wkey) = p.bind(0, p.region.len(), Access::WRITE_WINDOW)?;
    let sizes = [
        1u32,
        3,
        7,
        8,
        9,
        63,
        64,
        65,
        4095,
        4096,
        4097,
        65_537,
        1 << 20,
    ];
    for (i, &len) in sizes.iter().enumerate() {
        for &(roff, loff) in &[(0u64, 0u64), (13, 5), (4093, 1021)] {
            let rkey = if i % 2 == 0 { p.region.rkey() } else { wkey };
            let mut data = vec![0u8; len as usize];
            rng.fill_bytes(&mut data);
            p.client.buf.write(loff, &data)?;
            let st = p.write(rkey, roff, loff, len)?;
            if st != WcStatus::Success {
                return fail(format!("WRITE {len} B at {roff}: {st:?}"));
            }
            let mut seen = vec![0u8; len as usize];
            p.region.read(roff, &mut seen)?;
            if seen != data {
                return fail(format!(
                    "WRITE {len} B at {roff}: memory node sees other bytes"
                ));
            }
            let back = loff + len as u64 + 8;
            p.client.buf.fill(back, len as u64, 0xee)?;
            let st = p.read(rkey, roff, back, len)?;
            if st != WcStatus::Success {
                return fail(format!("READ {len} B at {roff}: {st:?}"));
            }
            p.client.buf.read(back, &mut seen)?;
            if seen != data {
                return fail(format!("READ {len} B at {roff}: bytes differ"));
            }
        }
    }
    Ok(())
}

/// CAS returns the old value and swaps only on a match; FAA adds; both are
/// atomic with the memory node's own CPU atomics on the same word.
pub fn check_atomics(p: &Pair) -> Result<()> {
    let rkey = p.region.rkey();
    p.region.store_u64(64, 10)?;
    let (st, old) = p.cas(rkey, 64, 10, 20)?;
    if st != WcStatus::Success || old != 10 || p.region.load_u64(64)? != 20 {
        return fail(format!("CAS hit: {st:?} old {old}"));
    }
    let (st, old) = p.cas(rkey, 64, 10, 30)?;
    if st != WcStatus::Success || old != 20 || p.region.load_u64(64)? != 20 {
        return fail(format!("CAS miss: {st:?} old {old}"));
    }
    let (st, old) = p.faa(rkey, 64, 5)?;
    if st != WcStatus::Success || old != 20 || p.region.load_u64(64)? != 25 {
        return fail(format!("FAA: {st:?} old {old}"));
    }
    let (st, _) = p.faa(rkey, 68, 1)?;
    if st == WcStatus::Success {
        return fail("FAA at an unaligned address succeeded");
    }
    p.client.recover(&p.server)?;
    // Remote FAAs racing the memory node's own CPU FAAs on one word.
    p.region.store_u64(128, 0)?;
    let n = 20_000u64;
    let region = p.region.clone();
    let cpu = std::thread::spawn(move || {
        for _ in 0..n {
            region.faa_u64(128, 1).expect("faa");
        }
    });
    let batch = 64;
    let mut done = 0;
    while done < n {
        let k = batch.min(n - done);
        let wrs: Vec<SendWr> = (0..k)
            .map(|i| SendWr {
                wr_id: i,
                op: WrOp::Faa {
                    local: p.client.sge(8 * (i % 64), 8),
                    raddr: p.region.addr() + 128,
                    rkey,
                    add: 1,
                },
                signaled: i == k - 1,
            })
            .collect();
        p.client.qp.post_send(&wrs)?;
        let wc = p.client.wait()?;
        if wc.status != WcStatus::Success {
            return fail(format!("pipelined FAA: {wc:?}"));
        }
        done += k;
    }
    cpu.join()
        .map_err(|_| FabricError::Invalid("cpu FAA thread panicked".into()))?;
    let v = p.region.load_u64(128)?;
    if v != 2 * n {
        return fail(format!("remote + local FAA: {v}, expected {}", 2 * n));
    }
    Ok(())
}

/// Under contention exactly one CAS per round wins.
pub fn check_cas_contention(pairs: &[Pair], rounds: u64) -> Result<()> {
    let region = &*pairs[0].region;
    region.store_u64(256, 0)?;
    let winners = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = pairs
            .iter()
            .map(|p| {
                let winners = &winners;
                s.spawn(move || -> Result<u64> {
                    let mut won = 0;
                    for r in 0..rounds {
                        // Wait until the word reaches round r, then race.
                        loop {
                            let (st, old) = p.cas(p.region.rkey(), 256, r, r)?;
                            if st != WcStatus::Success {
                                return fail(format!("CAS poll: {st:?}"));
                            }
                            if old >= r {
                                break;
                            }
                        }
                        let (st, old) = p.cas(p.region.rkey(), 256, r, r + 1)?;
                        if st != WcStatus::Success {
                            return fail(format!("CAS race: {st:?}"));
                        }
                        if old == r {
                            won += 1;
                            winners.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    Ok(won)
                })
            })
            .collect();
        for h in hs {
            h.join()
                .map_err(|_| FabricError::Invalid("CAS thread panicked".into()))??;
        }
        Ok(())
    })?;
    let w = winners.load(std::sync::atomic::Ordering::SeqCst);
    if w != rounds || region.load_u64(256)? != rounds {
        return fail(format!("{w} CAS winners over {rounds} rounds"));
    }
    Ok(())
}

/// Window semantics: bound connection only, bounds, flush after an error,
/// recovery keeps the window, read windows refuse writes and atomics,
/// 1000 bind/unbind cycles never revive a stale rkey.
pub fn check_windows(p: &Pair, other: &Pair) -> Result<()> {
    let (mw, rkey) = p.bind(4096, 256, Access::WRITE_WINDOW)?;
    if p.read(rkey, 4096, 0, 256)? != WcStatus::Success {
        return fail("read through the bound connection failed");
    }
    // Same rkey from another connection (another QP of the same PD) fails.
    let st = other.read(rkey, 4096, 0, 8)?;
    if st != WcStatus::RemAccessErr {
        return fail(format!("window used from another connection: {st:?}"));
    }
    other.client.recover(&other.server)?;
    // Outside the window: error, QP in error, later requests flushed.
    let wrs = [
        SendWr {
            wr_id: 1,
            op: WrOp::Read {
                local: p.client.sge(0, 8),
                raddr: p.region.addr() + 4096 + 252,
                rkey,
            },
            signaled: true,
        },
        SendWr {
            wr_id: 2,
            op: WrOp::Read {
                local: p.client.sge(8, 8),
                raddr: p.region.addr() + 4096,
                rkey,
            },
            signaled: true,
        },
        SendWr {
            wr_id: 3,
            op: WrOp::Write {
                local: p.client.sge(8, 8),
                raddr: p.region.addr() + 4096,
                rkey,
            },
            signaled: true,
        },
    ];
    p.client.qp.post_send(&wrs)?;
    let a = p.client.wait()?;
    let b = p.client.wait()?;
    let c = p.client.wait()?;
    if (a.wr_id, a.status) != (1, WcStatus::RemAccessErr)
        || (b.wr_id, b.status) != (2, WcStatus::WrFlushErr)
        || (c.wr_id, c.status) != (3, WcStatus::WrFlushErr)
    {
        return fail(format!("error + flush order: {a:?} {b:?} {c:?}"));
    }
    if p.client.qp.state() != super::QpState::Error {
        return fail(format!("QP state after error: {:?}", p.client.qp.state()));
    }
    // Posting in error state flushes too.
    let wc = p.client.run(WrOp::Read {
        local: p.client.sge(0, 8),
        raddr: p.region.addr() + 4096,
        rkey,
    })?;
    if wc.status != WcStatus::WrFlushErr {
        return fail(format!("post in error state: {wc:?}"));
    }
    p.client.recover(&p.server)?;
    if p.read(rkey, 4096, 0, 256)? != WcStatus::Success {
        return fail("window unusable after QP recovery");
    }
    // Read windows refuse WRITE, CAS and FAA.
    let (_, rk) = p.bind(8192, 64, Access::READ_WINDOW)?;
    if p.read(rk, 8192, 0, 64)? != WcStatus::Success {
        return fail("read window refused a read");
    }
    p.expect_denied(p.write(rk, 8192, 0, 8)?, "WRITE through a read window")?;
    p.expect_denied(p.cas(rk, 8192, 0, 1)?.0, "CAS through a read window")?;
    p.expect_denied(p.faa(rk, 8192, 1)?.0, "FAA through a read window")?;
    // 1000 bind/unbind cycles.
    let mut stale = vec![rkey];
    p.unbind(mw)?;
    for i in 0..1000u64 {
        let k = p.rebind(mw, (i % 16) * 64, 64, Access::WRITE_WINDOW)?;
        if p.read(k, (i % 16) * 64, 0, 8)? != WcStatus::Success {
            return fail(format!("cycle {i}: fresh rkey refused"));
        }
        p.unbind(mw)?;
        if i % 50 == 0 {
            for s in stale.iter().rev().take(8).chain(std::iter::once(&k)) {
                p.expect_denied(p.read(*s, (i % 16) * 64, 0, 8)?, "stale rkey")?;
            }
        }
        stale.push(k);
    }
    Ok(())
}

/// `n` forged rkeys are all refused and the exposed memory is unchanged.
pub fn check_forged_rkeys(p: &Pair, n: u64) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(0x1234_5678_9abc_def1);
    let (_, good) = p.bind(0, 4096, Access::WRITE_WINDOW)?;
    p.region.fill(0, p.region.len(), 0x5a)?;
    let before = checksum(&p.region)?;
    p.client.buf.fill(0, 4096, 0xa5)?;
    let mut refused = 0;
    for i in 0..n {
        let mut rkey = rng.next_u64() as u32;
        if rkey == good || rkey == p.region.rkey() {
            rkey ^= 0x100;
        }
        let off = (rng.next_u64() % (p.region.len() - 64)) & !7;
        let st = match i % 3 {
            0 => p.write(rkey, off, 0, 64)?,
            1 => p.faa(rkey, off, 1)?.0,
            _ => p.cas(rkey, off, 0x5a5a_5a5a_5a5a_5a5a, 1)?.0,
        };
        if st == WcStatus::Success {
            return fail(format!("forged rkey {rkey:#x} was accepted"));
        }
        refused += 1;
        p.client.recover(&p.server)?;
    }
    if checksum(&p.region)? != before {
        return fail("exposed memory changed under forged rkeys");
    }
    if refused != n {
        return fail("not every forged rkey was tried");
    }
    Ok(())
}

/// SEND/RECV: in order, byte exact, receive too small = LocLenErr.
pub fn check_send_recv(p: &Pair) -> Result<()> {
    for i in 0..64u64 {
        p.server.qp.post_recv(&[RecvWr {
            wr_id: i,
            local: p.server.sge(i * 512, 512),
        }])?;
    }
    for i in 0..64u64 {
        let msg = vec![i as u8; (i as usize * 7) % 500 + 1];
        p.client.buf.write(0, &msg)?;
        let wc = p.client.run(WrOp::Send {
            local: p.client.sge(0, msg.len() as u32),
        })?;
        if wc.status != WcStatus::Success {
            return fail(format!("SEND {i}: {wc:?}"));
        }
        let r = p.server.wait()?;
        if r.opcode != WcOpcode::Recv || r.wr_id != i || r.byte_len as usize != msg.len() {
            return fail(format!("RECV {i}: {r:?}"));
        }
        let mut got = vec![0u8; msg.len()];
        p.server.buf.read(i * 512, &mut got)?;
        if got != msg {
            return fail(format!("RECV {i}: bytes differ"));
        }
    }
    p.server.qp.post_recv(&[RecvWr {
        wr_id: 99,
        local: p.server.sge(0, 4),
    }])?;
    p.client.buf.write(0, &[1u8; 100])?;
    p.client.run(WrOp::Send {
        local: p.client.sge(0, 100),
    })?;
    let r = p.server.wait()?;
    if r.status != WcStatus::LocLenErr {
        return fail(format!("oversized message: {r:?}"));
    }
    Ok(())
}

/// A CQ polled without pause by one thread while another thread moves the
/// QP between two peers `cycles` times (reset, connect elsewhere): nothing
/// crashes or hangs, work in flight completes or is flushed, and afterwards
/// the QP reads byte-exact again. (The soft NIC swaps a QP's link under
/// the lock its CQ's pollers hold.) Soft fabric:
/// on hardware a reset QP must also meet a reset peer (PSNs), see
/// [`Side::recover`].
pub fn check_reconnect_under_polling(p: &Pair, cycles: u32) -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let other = Side::new(p.server.nic.clone(), p.server.pd, 4096)?;
    other.qp.connect(&p.client.qp.endpoint())?;
    let stop = AtomicBool::new(false);
    let completed = AtomicU64::new(0);
    let read = WrOp::Read {
        local: p.client.sge(0, 64),
        raddr: p.region.addr(),
        rkey: p.region.rkey(),
    };
    std::thread::scope(|sc| -> Result<()> {
        sc.spawn(|| {
            let mut wc = [Wc::default(); 16];
            let mut wr_id = 0;
            while !stop.load(Ordering::Relaxed) {
                // Refused while the QP is being reset or when full: fine.
                let _ = p.client.qp.post_send(&[SendWr {
                    wr_id,
                    op: read,
                    signaled: true,
                }]);
                wr_id += 1;
                for _ in 0..32 {
                    let n = p.client.cq.poll(&mut wc) as u64;
                    completed.fetch_add(n, Ordering::Relaxed);
                }
            }
        });
        let res = (|| {
            for i in 0..cycles {
                let to = if i % 2 == 0 { &other } else { &p.server };
                p.client.qp.reset()?;
                p.client.qp.connect(&to.qp.endpoint())?;
                // Let some work run on this connection.
                let t = Instant::now();
                let c0 = completed.load(Ordering::Relaxed);
                while completed.load(Ordering::Relaxed) < c0 + 4
                    && t.elapsed() < Duration::from_millis(100)
                {
                    std::thread::yield_now();
                }
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        res
    })?;
    // At least one completion per two connections (normally four per
    // connection): progress went on throughout, under a loaded machine too.
    if completed.load(Ordering::Relaxed) < cycles as u64 / 2 {
        return fail(format!(
            "only {} completions over {cycles} reconnects: the poller stalled",
            completed.load(Ordering::Relaxed)
        ));
    }
    p.client.qp.reset()?;
    drain(&*p.client.cq);
    p.client.qp.connect(&p.server.qp.endpoint())?;
    let data: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
    p.region.write(128, &data)?;
    p.client.buf.fill(4096, 64, 0)?;
    let st = p.read(p.region.rkey(), 128, 4096, 64)?;
    let mut got = vec![0u8; 64];
    p.client.buf.read(4096, &mut got)?;
    if st != WcStatus::Success || got != data {
        return fail(format!("READ after the reconnect storm: {st:?}"));
    }
    Ok(())
}

/// The capabilities a backend advertises match what it does.
pub fn check_caps(p: &Pair) -> Result<()> {
    let caps = p.client.nic.caps().clone();
    if !caps.atomics || caps.max_send_size == 0 || caps.max_qp_wr == 0 {
        return fail(format!("implausible capabilities {caps:?}"));
    }
    if caps.modify_qp_access {
        // The memory node restricts what its QP grants the client.
        p.server.qp.modify_access(Access::REMOTE_READ)?;
        let rkey = p.region.rkey();
        let r = p.read(rkey, 0, 0, 8)?;
        let w = p.write(rkey, 0, 0, 8)?;
        p.server
            .qp
            .modify_access(Access::REMOTE_READ | Access::REMOTE_WRITE | Access::REMOTE_ATOMIC)?;
        if r != WcStatus::Success || w != WcStatus::RemAccessErr {
            return fail(format!(
                "modify_qp_access advertised, read {r:?} write {w:?}"
            ));
        }
        p.client.recover(&p.server)?;
        if p.write(rkey, 0, 0, 8)? != WcStatus::Success {
            return fail("write refused after the QP access was restored");
        }
    } else if p.server.qp.modify_access(Access::REMOTE_READ).is_ok() {
        return fail("modify_qp_access not advertised but accepted");
    }
    if caps.rereg_mr {
        let sub = p.server.nic.reg_sub_mr(&p.region, 0, 4096, Access::ALL)?;
        let old = sub.rkey();
        if p.read(old, 0, 0, 8)? != WcStatus::Success {
            return fail("sub-MR rkey refused");
        }
        let (_, new) = p.server.nic.rereg_mr(&sub, Access::REMOTE_READ)?;
        p.expect_denied(p.read(old, 0, 0, 8)?, "old key after rereg")?;
        if p.read(new, 0, 0, 8)? != WcStatus::Success {
            return fail("new key after rereg refused");
        }
        p.expect_denied(p.write(new, 0, 0, 8)?, "write after rereg to read-only")?;
        p.server.nic.dereg_mr(&sub)?;
        p.expect_denied(p.read(new, 0, 0, 8)?, "key after dereg")?;
    }
    // SENDs up to max_send_size pass, larger ones fail.
    let max = caps.max_send_size;
    if (max as u64) < p.client.buf.len() {
        p.server.qp.post_recv(&[RecvWr {
            wr_id: 7,
            local: p.server.sge(0, max.min(60 << 10)),
        }])?;
        let wc = p.client.run(WrOp::Send {
            local: p.client.sge(0, max),
        })?;
        if wc.status != WcStatus::Success || p.server.wait()?.byte_len != max {
            return fail(format!("SEND of max_send_size {max}: {wc:?}"));
        }
        let wc = p.client.run(WrOp::Send {
            local: p.client.sge(0, max + 1),
        })?;
        if wc.status == WcStatus::Success {
            return fail("SEND above max_send_size succeeded");
        }
        p.client.recover(&p.server)?;
    }
    Ok(())
}

/// Runs every single-pair check on fresh pairs of the given NICs.
pub fn run_all(server: Arc<dyn Nic>, client: Arc<dyn Nic>, forged: u64) -> Result<Vec<String>> {
    let mut passed = Vec::new();
    let mk = || Pair::new(server.clone(), client.clone(), 4 << 20);
    check_rw_byte_exact(&mk()?)?;
    passed.push("rw_byte_exact".to_string());
    check_atomics(&mk()?)?;
    passed.push("atomics".to_string());
    let p = mk()?;
    check_windows(&p, &p.share(&client)?)?;
    passed.push("windows".to_string());
    check_send_recv(&mk()?)?;
    passed.push("send_recv".to_string());
    check_caps(&mk()?)?;
    passed.push("caps".to_string());
    check_forged_rkeys(&mk()?, forged)?;
    passed.push(format!("forged_rkeys x{forged}"));
    let first = mk()?;
    let second = first.share(&client)?;
    check_cas_contention(&[first, second], 200)?;
    passed.push("cas_contention".to_string());
    Ok(passed)
}
