//! `patronus bench fabric`: READ, WRITE and CAS through the soft NIC (the
//! memory node's NIC in another process), one at a time and pipelined, on
//! both links, next to the raw floors measured in the same run: a
//! shared-memory request/response through a server process (both
//! busy-polling) and a raw TCP ping-pong with TCP_NODELAY (both ends
//! busy-polling non-blocking sockets, as the soft NIC's tcp link does, so
//! the floor is the kernel's loopback path and not thread wake-ups).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{run_latency, run_rate, say, BenchRecord, ChildProc, Lat, Progress};
use crate::fabric::conformance::Side;
use crate::fabric::soft::floor::Floor;
use crate::fabric::soft::{LinkKind, SoftConfig, SoftNic};
use crate::fabric::{Access, Nic, QpEndpoint, SendWr, Wc, WcStatus, WrOp};
use crate::{Error, Result};

/// Options of the fabric benchmark.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Links to measure.
    pub links: Vec<LinkKind>,
    /// Ops per latency scenario.
    pub ops: u64,
    /// Ops per pipelined scenario.
    pub rate_ops: u64,
    /// Time budget per scenario.
    pub budget: Duration,
    /// The `patronus` executable (for child processes).
    pub exe: PathBuf,
    /// Only these operations ("read", "write", "cas"); empty: all.
    pub only_ops: Vec<String>,
    /// Only these sizes; empty: 8 B, 64 B and 4 KiB.
    pub only_sizes: Vec<u64>,
    /// Where to show progress (one step per scenario).
    pub progress: Progress,
}

impl Opts {
    fn sizes(&self) -> &[u64] {
        if self.only_sizes.is_empty() {
            &SIZES
        } else {
            &self.only_sizes
        }
    }
    /// The operations measured at `size` (CAS only at 8 B).
    fn ops_for(&self, size: u64) -> Vec<&'static str> {
        ["read", "write", "cas"]
            .into_iter()
            .filter(|op| self.only_ops.is_empty() || self.only_ops.iter().any(|o| o == op))
            .filter(|op| *op != "cas" || size == 8)
            .collect()
    }
}

const SIZES: [u64; 3] = [8, 64, 4096];
const DEPTH: u64 = 128;
const BATCH: u64 = 32;

/// `read_exact` on a non-blocking socket, spinning instead of sleeping.
fn spin_read_exact(s: &mut TcpStream, mut buf: &mut [u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match s.read(buf) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `write_all` on a non-blocking socket, spinning while the buffer is full.
fn spin_write_all(s: &mut TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Decodes an endpoint sent hex-encoded on the line protocol.
fn endpoint_from_hex(s: &str) -> Result<QpEndpoint> {
    let b =
        hex::decode(s).map_err(|e| Error::Invalid(format!("endpoint {s:?} is not hex: {e}")))?;
    Ok(QpEndpoint::decode(&b)?)
}

fn link_name(l: LinkKind) -> &'static str {
    match l {
        LinkKind::Shm => "shm",
        LinkKind::Tcp => "tcp",
    }
}

/// Child: the raw floor server (`__floor shm PID FD SIZE` or `__floor tcp SIZE`).
pub fn floor_main(args: &[String]) -> Result<()> {
    let limit = Duration::from_secs(600);
    match args.first().map(String::as_str) {
        Some("shm") => {
            let p = |i: usize| -> Result<i64> {
                args.get(i)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| Error::Invalid(format!("__floor shm: argument {i}")))
            };
            let f = Floor::open(p(1)? as u32, p(2)? as i32)?;
            say("READY");
            f.serve(p(3)? as usize, limit);
            Ok(())
        }
        Some("tcp") => {
            let size: usize = args
                .get(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Error::Invalid("__floor tcp SIZE".into()))?;
            let l = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("floor listen", e))?;
            let port = l
                .local_addr()
                .map_err(|e| Error::io("floor addr", e))?
                .port();
            say(&format!("PORT {port}"));
            let (mut s, _) = l.accept().map_err(|e| Error::io("floor accept", e))?;
            s.set_nodelay(true).map_err(|e| Error::io("nodelay", e))?;
            s.set_nonblocking(true)
                .map_err(|e| Error::io("nonblocking", e))?;
            let resp = vec![7u8; size];
            let mut req = [0u8; 16];
            let t0 = std::time::Instant::now();
            let mut parked = false;
            // Ends when the client closes (EOF) or after `limit`. A park
            // request switches to blocking reads until the next request.
            s.set_read_timeout(Some(limit))
                .map_err(|e| Error::io("read timeout", e))?;
            while t0.elapsed() < limit && spin_read_exact(&mut s, &mut req).is_ok() {
                if req == TCP_PARK {
                    s.set_nonblocking(false)
                        .map_err(|e| Error::io("blocking", e))?;
                    parked = true;
                    continue;
                }
                if parked {
                    s.set_nonblocking(true)
                        .map_err(|e| Error::io("nonblocking", e))?;
                    parked = false;
                }
                if spin_write_all(&mut s, &resp).is_err() {
                    break;
                }
            }
            Ok(())
        }
        _ => Err(Error::Invalid("__floor shm|tcp ...".into())),
    }
}

/// Child: a memory node for the benchmark (`__bench-node LINK`): exposes
/// 1 MiB and connects one QP per endpoint line it reads.
pub fn node_main(link: LinkKind) -> Result<()> {
    let nic: Arc<dyn Nic> = Arc::new(SoftNic::open(SoftConfig {
        link,
        ..SoftConfig::default()
    })?);
    let pd = nic.alloc_pd()?;
    let region = nic.alloc_mr(pd, 1 << 20, Access::ALL)?;
    say(&format!("REGION {} {}", region.addr(), region.rkey()));
    let mut sides = Vec::new();
    let mut line = String::new();
    while std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Error::io("stdin", e))?
        > 0
    {
        let ep = endpoint_from_hex(line.trim())?;
        let s = Side::new(nic.clone(), pd, 4096)?;
        s.qp.connect(&ep)?;
        say(&format!("EP {}", hex::encode(s.qp.endpoint().encode())));
        sides.push(s);
        line.clear();
    }
    Ok(())
}

fn op_wr(c: &Side, op: &str, size: u64, raddr: u64, rkey: u32, slot: u64) -> WrOp {
    let local = c.sge((slot % 64) * 4096, size as u32);
    match op {
        "read" => WrOp::Read { local, raddr, rkey },
        "write" => WrOp::Write { local, raddr, rkey },
        _ => WrOp::Cas {
            local: c.sge((slot % 64) * 8, 8),
            raddr,
            rkey,
            compare: 0,
            swap: 0,
        },
    }
}

/// Rounds of interleaved floor and fabric blocks per latency scenario.
const ROUNDS: u32 = 20;
/// Each block first warms up this long (a parked floor server or soft NIC
/// wakes, the other side parks) and at least `WARMUP_OPS` operations.
const WARMUP: Duration = Duration::from_micros(600);
const WARMUP_OPS: u64 = 200;

/// A raw floor server for one link and size, alive across the rounds and
/// parked (sleeping) while the fabric is measured.
enum FloorSrv {
    Shm {
        f: Floor,
        seq: u64,
        _child: ChildProc,
    },
    Tcp {
        s: TcpStream,
        buf: Vec<u8>,
        size: usize,
        _child: ChildProc,
    },
}

/// Park request on the tcp floor (requests are otherwise all ones).
const TCP_PARK: [u8; 16] = [0xff; 16];

impl FloorSrv {
    fn start(o: &Opts, link: LinkKind, size: u64) -> Result<FloorSrv> {
        let sz = size.to_string();
        Ok(match link {
            LinkKind::Shm => {
                let f = Floor::create()?;
                let pid = std::process::id().to_string();
                let fd = f.fd().to_string();
                let mut child = ChildProc::spawn(&o.exe, &["__floor", "shm", &pid, &fd, &sz])?;
                child.line()?;
                FloorSrv::Shm {
                    f,
                    seq: 0,
                    _child: child,
                }
            }
            LinkKind::Tcp => {
                let mut child = ChildProc::spawn(&o.exe, &["__floor", "tcp", &sz])?;
                let port = child.line()?.get(1).cloned().unwrap_or_default();
                let s = TcpStream::connect(format!("127.0.0.1:{port}"))
                    .map_err(|e| Error::io("floor connect", e))?;
                s.set_nodelay(true).map_err(|e| Error::io("nodelay", e))?;
                s.set_nonblocking(true)
                    .map_err(|e| Error::io("nonblocking", e))?;
                FloorSrv::Tcp {
                    s,
                    buf: vec![0u8; size as usize * BATCH as usize],
                    size: size as usize,
                    _child: child,
                }
            }
        })
    }

    fn round_trip(&mut self) -> Result<()> {
        match self {
            FloorSrv::Shm { f, seq, .. } => {
                *seq += 1;
                f.round_trip(*seq);
                Ok(())
            }
            FloorSrv::Tcp { s, buf, size, .. } => {
                spin_write_all(s, &[1u8; 16]).map_err(|e| Error::io("floor write", e))?;
                spin_read_exact(s, &mut buf[..*size]).map_err(|e| Error::io("floor read", e))
            }
        }
    }

    /// Lets the server sleep; the next round trip (or `resume`) wakes it.
    fn park(&mut self) -> Result<()> {
        match self {
            FloorSrv::Shm { f, .. } => {
                f.park();
                Ok(())
            }
            FloorSrv::Tcp { s, .. } => {
                spin_write_all(s, &TCP_PARK).map_err(|e| Error::io("floor write", e))
            }
        }
    }

    fn resume(&mut self) {
        if let FloorSrv::Shm { f, .. } = self {
            f.resume();
        }
    }

    /// The pipelined floor rate (Mops, ops).
    fn rate(&mut self, o: &Opts) -> Result<(f64, u64)> {
        match self {
            FloorSrv::Shm { f, seq, .. } => run_rate(o.rate_ops, o.budget, 4096, |k| {
                *seq = f.pipelined(*seq, k, DEPTH);
                Ok(k)
            }),
            FloorSrv::Tcp { s, buf, .. } => {
                let reqs = vec![1u8; 16 * BATCH as usize];
                run_rate(o.rate_ops, o.budget, BATCH, |_| {
                    spin_write_all(s, &reqs).map_err(|e| Error::io("floor write", e))?;
                    spin_read_exact(s, buf).map_err(|e| Error::io("floor read", e))?;
                    Ok(BATCH)
                })
            }
        }
    }
}

impl Drop for FloorSrv {
    fn drop(&mut self) {
        if let FloorSrv::Shm { f, .. } = self {
            f.resume();
            f.stop();
        }
    }
}

/// Runs `f` for the warm-up time (and at least `WARMUP_OPS` times).
fn warm_up(mut f: impl FnMut() -> Result<()>) -> Result<()> {
    let t = std::time::Instant::now();
    let mut n = 0;
    while n < WARMUP_OPS || t.elapsed() < WARMUP {
        f()?;
        n += 1;
    }
    Ok(())
}

/// Latency of `op` and of the floor, measured in alternating blocks so
/// both see the same machine state (this VM's core-to-core latency drifts
/// by tens of percent within seconds). Returns (fabric, floor).
fn interleaved(
    o: &Opts,
    fl: &mut FloorSrv,
    mut op: impl FnMut() -> Result<()>,
) -> Result<(Lat, Lat)> {
    let per = (o.ops / ROUNDS as u64).max(100);
    let budget = o.budget / (2 * ROUNDS);
    let (mut fab, mut flo) = (Lat::new()?, Lat::new()?);
    for _ in 0..ROUNDS {
        fl.resume();
        warm_up(|| fl.round_trip())?;
        flo.merge(&run_latency(per, budget, || fl.round_trip())?)?;
        fl.park()?;
        warm_up(&mut op)?;
        fab.merge(&run_latency(per, budget, &mut op)?)?;
    }
    Ok((fab, flo))
}

/// A QP of a soft NIC in this process (with a `buf`-byte local buffer)
/// connected to a memory node in a child process (`exe __bench-node`):
/// the side, the node's 1 MiB region (address, rkey) and the child, which
/// is killed and reaped when dropped (and exits once its stdin closes).
pub(crate) fn remote_side(
    exe: &std::path::Path,
    link: LinkKind,
    buf: usize,
) -> Result<(Side, u64, u32, ChildProc)> {
    let mut node = ChildProc::spawn(exe, &["__bench-node", link_name(link)])?;
    let r = node.line()?;
    let parse = |i: usize| -> Result<u64> {
        r.get(i)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Invalid("bench node REGION line".into()))
    };
    let (addr, rkey) = (parse(1)?, parse(2)? as u32);
    let nic: Arc<dyn Nic> = Arc::new(SoftNic::open(SoftConfig {
        link,
        ..SoftConfig::default()
    })?);
    let pd = nic.alloc_pd()?;
    let c = Side::new(nic, pd, buf)?;
    node.send(&hex::encode(c.qp.endpoint().encode()))?;
    let ep = node.line()?;
    c.qp.connect(&endpoint_from_hex(
        ep.get(1).map(String::as_str).unwrap_or(""),
    )?)?;
    Ok((c, addr, rkey, node))
}

/// The benchmark's client: a QP of a soft NIC in this process connected
/// to a memory node (`__bench-node`) in another.
struct FabricSide {
    c: Side,
    addr: u64,
    rkey: u32,
    wc: [Wc; 16],
    _node: ChildProc,
}

impl FabricSide {
    fn start(o: &Opts, link: LinkKind) -> Result<FabricSide> {
        let (c, addr, rkey, node) = remote_side(&o.exe, link, 64 * 4096)?;
        Ok(FabricSide {
            c,
            addr,
            rkey,
            wc: [Wc::default(); 16],
            _node: node,
        })
    }

    /// One operation, posted and polled to completion.
    fn one(&mut self, op: &str, size: u64) -> Result<()> {
        let wr = op_wr(&self.c, op, size, self.addr, self.rkey, 0);
        self.c.qp.post_send(&[SendWr {
            wr_id: 0,
            op: wr,
            signaled: true,
        }])?;
        // Busy-polls as the floor's client does (pause between polls).
        loop {
            if self.c.cq.poll(&mut self.wc[..1]) == 1 {
                if self.wc[0].status != WcStatus::Success {
                    return Err(Error::Invalid(format!("bench {op}: {:?}", self.wc[0])));
                }
                return Ok(());
            }
            std::hint::spin_loop();
        }
    }

    /// Pipelined rate: batches of `BATCH` (one signaled), up to `DEPTH`
    /// outstanding. Returns (Mops, ops).
    fn rate(&mut self, o: &Opts, op: &str, size: u64) -> Result<(f64, u64)> {
        let wrs: Vec<SendWr> = (0..BATCH)
            .map(|i| SendWr {
                wr_id: i,
                op: op_wr(
                    &self.c,
                    op,
                    size,
                    self.addr + (i % 8) * 4096 % (1 << 20),
                    self.rkey,
                    i,
                ),
                signaled: i == BATCH - 1,
            })
            .collect();
        let (c, wc) = (&self.c, &mut self.wc);
        let mut outstanding = 0u64;
        let res = run_rate(o.rate_ops, o.budget, 4096, |k| {
            let mut done = 0;
            while done < k {
                while outstanding + BATCH <= DEPTH {
                    c.qp.post_send(&wrs)?;
                    outstanding += BATCH;
                }
                let got = c.cq.poll(wc);
                for w in &wc[..got] {
                    if w.status != WcStatus::Success {
                        return Err(Error::Invalid(format!("bench {op}: {w:?}")));
                    }
                }
                outstanding -= got as u64 * BATCH;
                done += got as u64 * BATCH;
            }
            Ok(done)
        });
        // Drain what is still in flight so the next scenario starts clean.
        let t = std::time::Instant::now();
        while outstanding > 0 && t.elapsed() < Duration::from_secs(5) {
            let got = c.cq.poll(wc);
            outstanding -= got as u64 * BATCH;
        }
        res
    }
}

#[allow(clippy::too_many_arguments)]
fn record(
    scenario: &str,
    link: LinkKind,
    op: &str,
    size: u64,
    lat: Option<&Lat>,
    mops: f64,
    ops: u64,
    baseline: bool,
) -> BenchRecord {
    BenchRecord {
        scenario: scenario.into(),
        fabric: link_name(link).into(),
        op: op.into(),
        size,
        p50_ns: lat.map(Lat::p50),
        p99_ns: lat.map(Lat::p99),
        mops: lat.map_or(mops, Lat::mops),
        baseline,
        p50_vs_floor: None,
        mops_vs_floor: None,
        floor_p50_ns: None,
        ops: lat.map_or(ops, |l| l.ops),
    }
}

/// Runs the whole fabric benchmark: per link and size, the floor and every
/// operation's latency in interleaved rounds, then the pipelined rates.
pub fn run(o: &Opts) -> Result<Vec<BenchRecord>> {
    if o.sizes().iter().all(|&size| o.ops_for(size).is_empty()) {
        return Err(Error::Invalid(
            "no scenario selected: CAS is measured at 8 B only".into(),
        ));
    }
    let pr = &o.progress;
    for _ in &o.links {
        for &size in o.sizes() {
            let n = o.ops_for(size).len() as u64;
            if n > 0 {
                pr.add_steps(2 * n + 1);
            }
        }
    }
    let mut out = Vec::new();
    for &link in &o.links {
        let mut fab = FabricSide::start(o, link)?;
        for &size in o.sizes() {
            let ops = o.ops_for(size);
            if ops.is_empty() {
                continue;
            }
            let mut fl = FloorSrv::start(o, link, size)?;
            let mut floor_all = Lat::new()?;
            let mut lat = Vec::new();
            for &op in &ops {
                pr.running(format!("{} {op} {size} B latency", link_name(link)));
                let (f, l) = interleaved(o, &mut fl, || fab.one(op, size))?;
                pr.step_done();
                floor_all.merge(&l)?;
                let mut r = record("latency", link, op, size, Some(&f), 0.0, 0, false);
                r.p50_vs_floor = Some(f.p50() as f64 / l.p50().max(1) as f64);
                r.floor_p50_ns = Some(l.p50());
                lat.push(r);
            }
            pr.running(format!("{} {size} B floor pipelined", link_name(link)));
            fl.resume();
            warm_up(|| fl.round_trip())?;
            let (fmops, fn_) = fl.rate(o)?;
            drop(fl);
            pr.step_done();
            out.push(record(
                "floor",
                link,
                "rr",
                size,
                Some(&floor_all),
                0.0,
                0,
                true,
            ));
            out.push(record(
                "floor-pipe",
                link,
                "rr",
                size,
                None,
                fmops,
                fn_,
                true,
            ));
            for (op, r) in ops.iter().zip(lat) {
                out.push(r);
                pr.running(format!("{} {op} {size} B pipelined", link_name(link)));
                let (mops, n) = fab.rate(o, op, size)?;
                pr.step_done();
                let mut p = record("pipelined", link, op, size, None, mops, n, false);
                p.mops_vs_floor = Some(mops / fmops.max(1e-9));
                out.push(p);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_travel_as_hex() {
        let ep = QpEndpoint {
            nic: b"soft1;tcp=127.0.0.1:1".to_vec(),
            qpn: 9,
        };
        let line = hex::encode(ep.encode());
        assert_eq!(endpoint_from_hex(&line).unwrap(), ep);
        // Odd lengths, non-hex and non-ASCII input are errors, never panics.
        for bad in ["0", "zz", "é1", "1é1", &line[..line.len() - 2]] {
            assert!(endpoint_from_hex(bad).is_err(), "{bad:?}");
        }
    }
}
