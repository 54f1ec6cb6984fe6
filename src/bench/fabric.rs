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

use super::{hex, run_latency, run_rate, say, unhex, BenchRecord, ChildProc};
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
}

impl Opts {
    fn sizes(&self) -> Vec<u64> {
        if self.only_sizes.is_empty() {
            SIZES.to_vec()
        } else {
            self.only_sizes.clone()
        }
    }
    fn wants(&self, op: &str, size: u64) -> bool {
        (self.only_ops.is_empty() || self.only_ops.iter().any(|o| o == op))
            && self.sizes().contains(&size)
            && (op != "cas" || size == 8)
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
            // Ends when the client closes (EOF) or after `limit`.
            while t0.elapsed() < limit && spin_read_exact(&mut s, &mut req).is_ok() {
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
        let ep = QpEndpoint::decode(&unhex(line.trim())?)?;
        let s = Side::new(nic.clone(), pd, 4096)?;
        s.qp.connect(&ep)?;
        say(&format!("EP {}", hex(&s.qp.endpoint().encode())));
        sides.push(s);
        line.clear();
    }
    Ok(())
}

fn floor_records(o: &Opts, link: LinkKind, out: &mut Vec<BenchRecord>) -> Result<()> {
    for size in o.sizes() {
        let (lat, mops, n) = match link {
            LinkKind::Shm => {
                let f = Floor::create()?;
                let pid = std::process::id().to_string();
                let fd = f.fd().to_string();
                let sz = size.to_string();
                let mut child = ChildProc::spawn(&o.exe, &["__floor", "shm", &pid, &fd, &sz])?;
                child.line()?;
                let mut seq = 0u64;
                let lat = run_latency(o.ops, o.budget, || {
                    seq += 1;
                    f.round_trip(seq);
                    Ok(())
                })?;
                let (mops, n) = run_rate(o.rate_ops, o.budget, 4096, |k| {
                    seq = f.pipelined(seq, k, DEPTH);
                    Ok(k)
                })?;
                f.stop();
                (lat, mops, n)
            }
            LinkKind::Tcp => {
                let sz = size.to_string();
                let mut child = ChildProc::spawn(&o.exe, &["__floor", "tcp", &sz])?;
                let port = child.line()?.get(1).cloned().unwrap_or_default();
                let mut s = TcpStream::connect(format!("127.0.0.1:{port}"))
                    .map_err(|e| Error::io("floor connect", e))?;
                s.set_nodelay(true).map_err(|e| Error::io("nodelay", e))?;
                s.set_nonblocking(true)
                    .map_err(|e| Error::io("nonblocking", e))?;
                let mut buf = vec![0u8; size as usize * BATCH as usize];
                let req = [1u8; 16];
                let lat = run_latency(o.ops, o.budget, || {
                    spin_write_all(&mut s, &req).map_err(|e| Error::io("floor write", e))?;
                    spin_read_exact(&mut s, &mut buf[..size as usize])
                        .map_err(|e| Error::io("floor read", e))
                })?;
                let reqs = vec![1u8; 16 * BATCH as usize];
                let (mops, n) = run_rate(o.rate_ops, o.budget, BATCH, |_| {
                    spin_write_all(&mut s, &reqs).map_err(|e| Error::io("floor write", e))?;
                    spin_read_exact(&mut s, &mut buf).map_err(|e| Error::io("floor read", e))?;
                    Ok(BATCH)
                })?;
                (lat, mops, n)
            }
        };
        out.push(BenchRecord {
            scenario: "floor".into(),
            fabric: link_name(link).into(),
            op: "rr".into(),
            size,
            p50_ns: lat.p50(),
            p99_ns: lat.p99(),
            mops: lat.mops(),
            baseline: true,
            p50_vs_floor: None,
            mops_vs_floor: None,
            ops: lat.ops,
        });
        out.push(BenchRecord {
            scenario: "floor-pipe".into(),
            fabric: link_name(link).into(),
            op: "rr".into(),
            size,
            p50_ns: 0,
            p99_ns: 0,
            mops,
            baseline: true,
            p50_vs_floor: None,
            mops_vs_floor: None,
            ops: n,
        });
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

fn fabric_records(o: &Opts, link: LinkKind, out: &mut Vec<BenchRecord>) -> Result<()> {
    let mut node = ChildProc::spawn(&o.exe, &["__bench-node", link_name(link)])?;
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
    let c = Side::new(nic, pd, 64 * 4096)?;
    node.send(&hex(&c.qp.endpoint().encode()))?;
    let ep = node.line()?;
    c.qp.connect(&QpEndpoint::decode(&unhex(
        ep.get(1).map(String::as_str).unwrap_or(""),
    )?)?)?;
    let mut wc = [Wc::default(); 16];
    for op in ["read", "write", "cas"] {
        for size in o.sizes() {
            if !o.wants(op, size) {
                continue;
            }
            let one = op_wr(&c, op, size, addr, rkey, 0);
            let lat = run_latency(o.ops, o.budget, || {
                c.qp.post_send(&[SendWr {
                    wr_id: 0,
                    op: one,
                    signaled: true,
                }])?;
                loop {
                    if c.cq.poll(&mut wc[..1]) == 1 {
                        if wc[0].status != WcStatus::Success {
                            return Err(Error::Invalid(format!("bench {op}: {:?}", wc[0])));
                        }
                        return Ok(());
                    }
                }
            })?;
            let wrs: Vec<SendWr> = (0..BATCH)
                .map(|i| SendWr {
                    wr_id: i,
                    op: op_wr(&c, op, size, addr + (i % 8) * 4096 % (1 << 20), rkey, i),
                    signaled: i == BATCH - 1,
                })
                .collect();
            let mut outstanding = 0u64;
            let (mops, n) = run_rate(o.rate_ops, o.budget, 4096, |k| {
                let mut done = 0;
                while done < k {
                    while outstanding + BATCH <= DEPTH {
                        c.qp.post_send(&wrs)?;
                        outstanding += BATCH;
                    }
                    let got = c.cq.poll(&mut wc);
                    for w in &wc[..got] {
                        if w.status != WcStatus::Success {
                            return Err(Error::Invalid(format!("bench {op}: {w:?}")));
                        }
                    }
                    outstanding -= got as u64 * BATCH;
                    done += got as u64 * BATCH;
                }
                Ok(done)
            })?;
            // Drain what is still in flight so the next scenario starts clean.
            while outstanding > 0 {
                let got = c.cq.poll(&mut wc);
                outstanding -= got as u64 * BATCH;
            }
            let fl = |scen: &str| {
                out.iter()
                    .find(|f| {
                        f.baseline
                            && f.scenario == scen
                            && f.fabric == link_name(link)
                            && f.size == size
                    })
                    .cloned()
            };
            let (f_lat, f_pipe) = (fl("floor"), fl("floor-pipe"));
            out.push(BenchRecord {
                scenario: "latency".into(),
                fabric: link_name(link).into(),
                op: op.into(),
                size,
                p50_ns: lat.p50(),
                p99_ns: lat.p99(),
                mops: lat.mops(),
                baseline: false,
                p50_vs_floor: f_lat.map(|f| lat.p50() as f64 / f.p50_ns.max(1) as f64),
                mops_vs_floor: None,
                ops: lat.ops,
            });
            out.push(BenchRecord {
                scenario: "pipelined".into(),
                fabric: link_name(link).into(),
                op: op.into(),
                size,
                p50_ns: 0,
                p99_ns: 0,
                mops,
                baseline: false,
                p50_vs_floor: None,
                mops_vs_floor: f_pipe.map(|f| mops / f.mops.max(1e-9)),
                ops: n,
            });
        }
    }
    Ok(())
}

/// Runs the whole fabric benchmark.
pub fn run(o: &Opts) -> Result<Vec<BenchRecord>> {
    let mut out = Vec::new();
    for &link in &o.links {
        floor_records(o, link, &mut out)?;
        fabric_records(o, link, &mut out)?;
    }
    Ok(out)
}
