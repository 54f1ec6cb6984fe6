//! `patronus bench soak`: a long run of acquisitions, data calls,
//! extensions and expiry from several threads and processes against one
//! memory node, reporting per interval each process's counters, RSS and
//! open fds (and the memory node's live leases and GC backlog), and at the
//! end whether memory and fds stayed flat and every outcome was expected.
//!
//! Expected outcomes: `Ok`, and `LeaseLocalExpiredErr` on a lease left to
//! expire on purpose or whose deadline the local clock confirms had passed
//! when the call returned (a thread descheduled past its term: counted as
//! `late`). Everything else is unexpected: any `Err`, `RdmaProtectionErr`,
//! a byte mismatch, an FAA sum mismatch, a refused extension of a lease
//! whose deadline had not passed, a failed allocation.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::start_memcached;
use crate::client::{ClientThread, Lease};
use crate::lease::flags::rw;
use crate::lease::msg::AdminOp;
use crate::lease::Rc;
use crate::node::{Config, Patronus};
use crate::{Error, Result};

/// Growth of private (anonymous: heap, stacks, arenas) resident memory
/// allowed from the first interval's record to the last, per process (the
/// first interval is the warm-up: pools, caches, arenas). Shared memory
/// (the shm fabric's rings and the memory node's registered buffer, memfd
/// mappings of fixed size) is reported but not judged: its resident part
/// grows as a ring's head first passes a page or a lease first touches a
/// block, up to the mapping's size, and then stays.
pub const RSS_BOUND_KIB: u64 = 8 * 1024;
/// Bytes of the memory node's lease buffer each client thread owns.
const SLOT: u64 = 64 * 1024;

/// Options of a soak run.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Run length.
    pub duration: Duration,
    /// Client threads per client process.
    pub threads: u16,
    /// Client processes (0: one in-process client node).
    pub processes: u16,
    /// memcached://HOST:PORT, or None (start one when processes > 0).
    pub keeper: Option<String>,
    /// Reporting interval.
    pub interval: Duration,
    /// shm or tcp.
    pub fabric: String,
    /// Directories of the memory node.
    pub dirs: u16,
    /// This binary (re-run as the client processes).
    pub exe: PathBuf,
    /// Fault injection for testing the checks: "leak", "fd", "error".
    pub inject: Option<String>,
}

/// One record: a process's state at the end of an interval ("interval"),
/// at its end ("final"), or the run's summary (printed separately).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    /// "interval" or "final".
    pub kind: String,
    /// "memory" or "client-N".
    pub proc: String,
    /// Process id.
    pub pid: u32,
    /// Seconds since the process started its workload.
    pub elapsed_s: f64,
    /// Calls made (acquires, data calls, extensions, relinquishes, allocs).
    pub ops: u64,
    /// Leases acquired.
    pub acquires: u64,
    /// Leases left to expire that the local check then refused.
    pub expiries: u64,
    /// One-sided extensions honoured.
    pub extensions: u64,
    /// Leases WITH_AUTO_EXTEND could not keep alive (the thread came back
    /// after the GC closed them): counted in `late` as well.
    pub auto_extend_lost: u64,
    /// LeaseLocalExpiredErr after the deadline passed on a lease not meant
    /// to expire (the thread overslept its term): expected, reported.
    pub late: u64,
    /// Unexpected outcomes.
    pub unexpected: u64,
    /// VmRSS in KiB.
    pub rss_kib: u64,
    /// RssAnon in KiB (private memory: what the bound judges).
    #[serde(default)]
    pub anon_kib: u64,
    /// RssShmem in KiB (the fabric's fixed-size shared mappings).
    #[serde(default)]
    pub shmem_kib: u64,
    /// Entries of /proc/self/fd.
    pub fds: u64,
    /// Live leases per directory (memory node only).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub live_leases: Vec<i64>,
    /// GC tasks queued per directory (memory node only).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub gc_queued: Vec<i64>,
    /// The first unexpected outcomes, described.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub errors: Vec<String>,
}

/// The run's verdict.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    /// "summary".
    pub kind: String,
    /// Seconds asked for.
    pub seconds: f64,
    /// Client processes and threads per process.
    pub processes: u16,
    /// Threads per client process.
    pub threads: u16,
    /// Totals over the client processes.
    pub ops: u64,
    /// Leases acquired.
    pub acquires: u64,
    /// Deliberate expiries observed.
    pub expiries: u64,
    /// One-sided extensions honoured.
    pub extensions: u64,
    /// Late (overslept) expiries.
    pub late: u64,
    /// Unexpected outcomes.
    pub unexpected: u64,
    /// Bound on RSS growth per process, KiB.
    pub rss_bound_kib: u64,
    /// Per process: (name, private RSS of the first record, of the last,
    /// growth), KiB.
    pub rss: Vec<(String, u64, u64, i64)>,
    /// Per process: (name, shared RSS first, last, growth), KiB.
    #[serde(default)]
    pub shmem: Vec<(String, u64, u64, i64)>,
    /// Per process: (name, fds first, last, growth).
    pub fds: Vec<(String, u64, u64, i64)>,
    /// The memory node's live leases per directory at the end, after the
    /// drain.
    pub final_live_leases: Vec<i64>,
    /// GC tasks queued per directory at the end.
    pub final_gc_queued: Vec<i64>,
    /// Milliseconds the drain took (live leases back to 0).
    pub drain_ms: f64,
    /// Why the run failed (empty: passed).
    pub failures: Vec<String>,
    /// True when `failures` is empty.
    pub pass: bool,
}

/// This process's resident memory and open fds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// RssAnon, KiB.
    pub anon_kib: u64,
    /// RssShmem, KiB.
    pub shmem_kib: u64,
    /// Entries of /proc/self/fd.
    pub fds: u64,
}

/// Reads [`Usage`] from /proc/self (zeros where it cannot).
pub fn usage() -> Usage {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    Usage {
        rss_kib: field("VmRSS:"),
        anon_kib: field("RssAnon:"),
        shmem_kib: field("RssShmem:"),
        fds: std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as u64)
            .unwrap_or(0),
    }
}

/// Counters shared by a process's client threads.
#[derive(Default)]
pub struct Counters {
    ops: AtomicU64,
    acquires: AtomicU64,
    expiries: AtomicU64,
    extensions: AtomicU64,
    auto_lost: AtomicU64,
    late: AtomicU64,
    unexpected: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Counters {
    fn bad(&self, what: String) {
        self.unexpected.fetch_add(1, Relaxed);
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() < 20 {
            tracing::warn!("soak: unexpected: {what}");
            e.push(what);
        }
    }

    fn record(&self, kind: &str, proc: &str, t0: Instant) -> Record {
        let u = usage();
        Record {
            kind: kind.into(),
            proc: proc.into(),
            pid: std::process::id(),
            elapsed_s: t0.elapsed().as_secs_f64(),
            ops: self.ops.load(Relaxed),
            acquires: self.acquires.load(Relaxed),
            expiries: self.expiries.load(Relaxed),
            extensions: self.extensions.load(Relaxed),
            auto_extend_lost: self.auto_lost.load(Relaxed),
            late: self.late.load(Relaxed),
            unexpected: self.unexpected.load(Relaxed),
            rss_kib: u.rss_kib,
            anon_kib: u.anon_kib,
            shmem_kib: u.shmem_kib,
            fds: u.fds,
            errors: self
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            ..Default::default()
        }
    }
}

/// One client thread's workload.
struct Worker<'a> {
    p: &'a Patronus,
    c: ClientThread,
    k: &'a Counters,
    node: u16,
    dir: u16,
    /// Buffer offset of this thread's slot.
    base: u64,
    id: u64,
    /// FAAs honoured on the thread's counter (word 0 of its slot).
    faa: u64,
    /// The pattern last written at base + 4096.
    last: Vec<u8>,
    rng: u64,
}

impl Worker<'_> {
    fn rand(&mut self) -> u64 {
        // xorshift64*: deterministic per thread, no shared state.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Classifies a data call's outcome on a lease meant to stay alive.
    fn check(&self, what: &str, r: Result<Rc>, l: &Lease) -> bool {
        self.k.ops.fetch_add(1, Relaxed);
        match r {
            Ok(Rc::Ok) => true,
            Ok(Rc::LeaseLocalExpiredErr) if self.p.now() + self.p.epsilon() >= l.ddl => {
                self.k.late.fetch_add(1, Relaxed);
                false
            }
            Ok(rc) => {
                self.k.bad(format!(
                    "thread {} {what}: {rc:?} (deadline in {} ns)",
                    self.id,
                    l.ddl - self.p.now()
                ));
                false
            }
            Err(e) => {
                self.k.bad(format!("thread {} {what}: {e}", self.id));
                false
            }
        }
    }

    fn acquire(&mut self, write: bool, off: u64, size: u64, ns: u64) -> Option<Lease> {
        self.k.ops.fetch_add(1, Relaxed);
        match self
            .c
            .get_lease(write, self.node, self.dir, off, size, ns, 0)
        {
            Ok(l) if l.success() => {
                self.k.acquires.fetch_add(1, Relaxed);
                Some(l)
            }
            Ok(l) => {
                self.k.bad(format!(
                    "thread {} acquire at {off:#x}: status {}",
                    self.id,
                    l.ec()
                ));
                None
            }
            Err(e) => {
                self.k.bad(format!("thread {} acquire: {e}", self.id));
                None
            }
        }
    }

    fn relinquish(&mut self, l: &mut Lease) {
        self.k.ops.fetch_add(1, Relaxed);
        match self.c.relinquish(l, 0, 0) {
            Ok(Rc::Ok) => {}
            r => self.k.bad(format!("thread {} relinquish: {r:?}", self.id)),
        }
    }

    /// Write lease: FAA, a pattern written and read back byte-exact.
    fn write_verify(&mut self) {
        let len = 1 + (self.rand() % 4096) as usize;
        let seed = self.rand() as u8;
        let pat: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ self.id as u8)
            .collect();
        let Some(mut l) = self.acquire(true, self.base, 8192, 200_000_000) else {
            return;
        };
        let r = self.c.faa(&mut l, 0, 1, 0).map(|(rc, _)| rc);
        if self.check("faa", r, &l) {
            self.faa += 1;
        }
        let r = self.c.write(&mut l, &pat, 4096, 0);
        if self.check("write", r, &l) {
            self.last = pat;
            let mut back = vec![0u8; self.last.len()];
            let r = self.c.read(&mut l, &mut back, 4096, 0);
            if self.check("read", r, &l) && back != self.last {
                self.k
                    .bad(format!("thread {} read back differs ({len} B)", self.id));
            }
        }
        self.relinquish(&mut l);
    }

    /// Read lease: the last pattern is still there.
    fn read_verify(&mut self) {
        if self.last.is_empty() {
            return;
        }
        let Some(mut l) = self.acquire(false, self.base + 4096, 4096, 200_000_000) else {
            return;
        };
        let mut back = vec![0u8; self.last.len()];
        let r = self.c.read(&mut l, &mut back, 0, 0);
        if self.check("read (read lease)", r, &l) && back != self.last {
            self.k.bad(format!(
                "thread {} read lease sees other bytes than written",
                self.id
            ));
        }
        self.relinquish(&mut l);
    }

    /// A 2 ms read lease left to expire: once the local clock says so,
    /// the read is refused locally; the GC revokes it (no relinquish).
    fn expire(&mut self) {
        let Some(mut l) = self.acquire(false, self.base + 32768, 64, 2_000_000) else {
            return;
        };
        let mut b = [0u8; 64];
        let t0 = Instant::now();
        while self.p.now() + self.p.epsilon() < l.ddl && t0.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_micros(500));
        }
        self.k.ops.fetch_add(1, Relaxed);
        match self.c.read(&mut l, &mut b, 0, 0) {
            Ok(Rc::LeaseLocalExpiredErr) => {
                self.k.expiries.fetch_add(1, Relaxed);
            }
            r => self.k.bad(format!(
                "thread {} read past an expired lease: {r:?}",
                self.id
            )),
        }
    }

    /// A 20 ms write lease extended one-sided by 200 ms; read after its
    /// first deadline (the GC honoured the extension), then relinquished.
    fn extend(&mut self) {
        let Some(mut l) = self.acquire(true, self.base, 8192, 20_000_000) else {
            return;
        };
        let first = l.ddl;
        self.k.ops.fetch_add(1, Relaxed);
        match self.c.extend(&mut l, 200_000_000, 0) {
            Ok(Rc::Ok) if l.ddl > first => {
                self.k.extensions.fetch_add(1, Relaxed);
            }
            // An extension CAS that loses the race with the GC's close
            // completes as LeaseLocalExpiredErr (it expired in flight);
            // RdmaProtectionErr is always unexpected.
            Err(_) | Ok(Rc::LeaseLocalExpiredErr) if self.p.now() >= first => {
                // Descheduled past the first term: the GC closed it.
                self.k.late.fetch_add(1, Relaxed);
                return;
            }
            r => {
                self.k.bad(format!(
                    "thread {} extend: {r:?} (ddl {} -> {})",
                    self.id, first, l.ddl
                ));
                self.relinquish(&mut l);
                return;
            }
        }
        let t0 = Instant::now();
        while self.p.now() < first + self.p.epsilon() + 2_000_000
            && t0.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut b = [0u8; 8];
        let r = self.c.read(&mut l, &mut b, 0, 0);
        self.check("read past the first term of an extended lease", r, &l);
        self.relinquish(&mut l);
    }

    /// A 5 ms write lease kept alive by WITH_AUTO_EXTEND over ~20 ms of
    /// FAAs; relinquished.
    fn auto_extend(&mut self) {
        let Some(mut l) = self.acquire(true, self.base, 8192, 5_000_000) else {
            return;
        };
        let lost0 = self.c.auto_extend_lost();
        for i in 0..20 {
            let r = self.c.faa(&mut l, 0, 1, rw::WITH_AUTO_EXTEND);
            self.k.ops.fetch_add(1, Relaxed);
            match r {
                Ok((Rc::Ok, _)) => self.faa += 1,
                // Reported lost (a thread descheduled past its term, or the
                // lease ran out while the FAA was in flight).
                Ok((Rc::LeaseLocalExpiredErr, _)) if self.c.auto_extend_lost() > lost0 => {
                    self.k.auto_lost.fetch_add(1, Relaxed);
                    self.k.late.fetch_add(1, Relaxed);
                    return;
                }
                r => {
                    self.k
                        .bad(format!("thread {} auto-extended faa {i}: {r:?}", self.id));
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.relinquish(&mut l);
    }

    /// Allocates a 64 B block and frees it.
    fn alloc(&mut self) {
        self.k.ops.fetch_add(2, Relaxed);
        match self.c.alloc(self.node, self.dir, 64, 0) {
            Ok(Some(off)) => match self.c.dealloc(self.node, self.dir, off, 64, 0) {
                Ok(Rc::Ok) => {}
                r => self.k.bad(format!("thread {} dealloc: {r:?}", self.id)),
            },
            r => self.k.bad(format!("thread {} alloc: {r:?}", self.id)),
        }
    }

    /// The counter word holds exactly the FAAs honoured.
    fn final_check(&mut self, start: u64) {
        let Some(mut l) = self.acquire(false, self.base, 8, 200_000_000) else {
            return;
        };
        let mut b = [0u8; 8];
        let r = self.c.read(&mut l, &mut b, 0, 0);
        if self.check("final read", r, &l) {
            let got = u64::from_le_bytes(b).wrapping_sub(start);
            if got != self.faa {
                self.k.bad(format!(
                    "thread {} FAA sum {got}, {} honoured",
                    self.id, self.faa
                ));
            }
        }
        self.relinquish(&mut l);
    }

    fn run(&mut self, deadline: Instant, inject_error: bool) {
        let start = {
            let Some(mut l) = self.acquire(false, self.base, 8, 200_000_000) else {
                return;
            };
            let mut b = [0u8; 8];
            let r = self.c.read(&mut l, &mut b, 0, 0);
            self.check("first read", r, &l);
            self.relinquish(&mut l);
            u64::from_le_bytes(b)
        };
        let mut i = 0u64;
        while Instant::now() < deadline {
            match i % 8 {
                0 | 4 => self.write_verify(),
                1 | 5 => self.read_verify(),
                2 => self.expire(),
                3 => self.extend(),
                6 => self.auto_extend(),
                _ => self.alloc(),
            }
            if inject_error && i % 200 == 50 {
                // A read outside the lease: the NIC refuses it.
                if let Some(mut l) = self.acquire(false, self.base, 64, 200_000_000) {
                    let mut b = [0u8; 64];
                    let r = self.c.read(&mut l, &mut b, 64, 0);
                    self.check("injected read outside the lease", r, &l);
                    self.relinquish(&mut l);
                }
            }
            i += 1;
        }
        self.final_check(start);
    }
}

/// Where a process's workers run: the memory node, its directories, the
/// first lease-buffer slot of this process and its thread count.
#[derive(Clone, Copy)]
struct Target {
    node: u16,
    dirs: u16,
    first_slot: u64,
    threads: u16,
}

/// Runs `t.threads` workers on `p` against `t.node` until `deadline`.
fn run_workers(
    p: &Patronus,
    t: Target,
    deadline: Instant,
    k: &Counters,
    inject: &str,
) -> Result<()> {
    let Target {
        node,
        dirs,
        first_slot,
        threads,
    } = t;
    let inject_error = inject == "error";
    std::thread::scope(|s| -> Result<()> {
        if inject == "leak" || inject == "fd" {
            s.spawn(move || leak(inject, deadline));
        }
        let mut hs = Vec::new();
        for t in 0..threads as u64 {
            let c = p.register_client_thread()?;
            let id = first_slot + t;
            let mut w = Worker {
                p,
                c,
                k,
                node,
                dir: (id % dirs as u64) as u16,
                base: id * SLOT,
                id,
                faa: 0,
                last: Vec::new(),
                rng: 0x9e37_79b9_7f4a_7c15 ^ (id + 1).wrapping_mul(0xff51_afd7_ed55_8ccd),
            };
            hs.push(s.spawn(move || w.run(deadline, inject_error)));
        }
        for h in hs {
            h.join()
                .map_err(|_| Error::Invalid("a soak thread panicked".into()))?;
        }
        Ok(())
    })
}

/// Fault injection that the checks must catch: 16 steps spread over the
/// run, each keeping 1 MiB of touched memory ("leak") or one open fd
/// ("fd") until the process ends, so a run of any length ends 16 MiB
/// (twice the bound) or 16 fds up.
fn leak(what: &str, deadline: Instant) {
    let step = deadline.saturating_duration_since(Instant::now()) / 17;
    let mut keep: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    for _ in 0..16 {
        std::thread::sleep(step);
        if what == "leak" {
            keep.push(Box::new(vec![1u8; 1 << 20]));
        } else if let Ok(f) = std::fs::File::open("/dev/null") {
            keep.push(Box::new(f));
        }
    }
    std::mem::forget(keep);
}

fn emit(r: &impl Serialize) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{}", serde_json::to_string(r).unwrap_or_default());
    let _ = o.flush();
}

/// Prints the counters every `interval` until `stop`.
fn reporter(
    k: &Counters,
    name: &str,
    t0: Instant,
    interval: Duration,
    stop: &AtomicU64,
    sink: &dyn Fn(Record),
) {
    let mut next = t0 + interval;
    while stop.load(Relaxed) == 0 {
        if Instant::now() >= next {
            sink(k.record("interval", name, t0));
            next += interval;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Arguments of a client process (`__soak-client`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChildArgs {
    /// Keeper URL.
    pub keeper: String,
    /// Cluster name.
    pub cluster: String,
    /// Nodes in the cluster.
    pub machines: u16,
    /// Directories of the memory node.
    pub dirs: u16,
    /// Client threads.
    pub threads: u16,
    /// Index of this client process.
    pub index: u16,
    /// Workload seconds.
    pub seconds: f64,
    /// Reporting interval in seconds.
    pub interval_s: f64,
    /// shm or tcp.
    pub fabric: String,
    /// Fault injection.
    pub inject: Option<String>,
}

fn node_config(
    fabric: &str,
    keeper: Option<String>,
    cluster: &str,
    m: u16,
    d: u16,
    t: u16,
) -> Config {
    Config {
        machine_nr: m,
        dir_nr: d,
        client_threads: t.max(1) + 1,
        fabric: fabric.into(),
        keeper,
        cluster: cluster.into(),
        keeper_timeout: Duration::from_secs(60),
        ..Default::default()
    }
}

/// A client process: joins the cluster, runs its threads, reports, calls
/// finished.
pub fn child_main(a: &ChildArgs) -> Result<()> {
    let cfg = node_config(
        &a.fabric,
        Some(a.keeper.clone()),
        &a.cluster,
        a.machines,
        a.dirs,
        a.threads,
    );
    let p = Patronus::new(cfg)?;
    let mem: u16 = String::from_utf8_lossy(&p.get("soak/memory")?)
        .parse()
        .map_err(|_| Error::Invalid("soak/memory is not a node id".into()))?;
    let name = format!("client-{}", a.index);
    let k = Counters::default();
    let stop = AtomicU64::new(0);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(a.seconds);
    let interval = Duration::from_secs_f64(a.interval_s);
    let inject = a.inject.clone().unwrap_or_default();
    let r = std::thread::scope(|s| {
        s.spawn(|| reporter(&k, &name, t0, interval, &stop, &|r| emit(&r)));
        let t = Target {
            node: mem,
            dirs: a.dirs,
            first_slot: a.index as u64 * a.threads as u64,
            threads: a.threads,
        };
        let r = run_workers(&p, t, deadline, &k, &inject);
        stop.store(1, Relaxed);
        r
    });
    emit(&k.record("final", &name, t0));
    r?;
    p.finished(0)?;
    Ok(())
}

/// The memory node's per-directory live leases and GC queue.
fn dir_stats(c: &mut ClientThread, node: u16, dirs: u16) -> (Vec<i64>, Vec<i64>) {
    let mut live = Vec::new();
    let mut gc = Vec::new();
    for d in 0..dirs {
        live.push(c.admin(node, d, AdminOp::Stats, 0).unwrap_or(-1));
        gc.push(c.admin(node, d, AdminOp::GcQueued, 0).unwrap_or(-1));
    }
    (live, gc)
}

/// Runs the soak; calls `out` with every record as it arrives and returns
/// the summary.
pub fn run(o: &Opts, out: &mut dyn FnMut(&Record)) -> Result<Summary> {
    let cluster = format!(
        "soak-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() % 1_000_000_000)
            .unwrap_or(0)
    );
    let (tx, rx) = std::sync::mpsc::channel::<Record>();
    let mut all: Vec<Record> = Vec::new();
    let mut take = |r: Record, all: &mut Vec<Record>| {
        out(&r);
        all.push(r);
    };
    let mut mc = None;
    let keeper = if o.processes == 0 {
        None
    } else if let Some(k) = &o.keeper {
        Some(k.clone())
    } else {
        let m = start_memcached()?;
        let u = m.1.clone();
        mc = Some(m);
        Some(u)
    };
    let machines = 1 + o.processes.max(1);
    let mut children = Vec::new();
    for i in 0..o.processes {
        let a = ChildArgs {
            keeper: keeper.clone().unwrap_or_default(),
            cluster: cluster.clone(),
            machines,
            dirs: o.dirs,
            threads: o.threads,
            index: i,
            seconds: o.duration.as_secs_f64(),
            interval_s: o.interval.as_secs_f64(),
            fabric: o.fabric.clone(),
            inject: o.inject.clone(),
        };
        let json = serde_json::to_string(&a).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut ch = Command::new(&o.exe)
            .args(["__soak-client", &json])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(format!("spawning {}", o.exe.display()), e))?;
        let so = ch.stdout.take();
        let tx = tx.clone();
        std::thread::spawn(move || {
            if let Some(so) = so {
                for l in BufReader::new(so).lines().map_while(|l| l.ok()) {
                    if let Ok(r) = serde_json::from_str::<Record>(&l) {
                        let _ = tx.send(r);
                    }
                }
            }
        });
        children.push(ch);
    }
    struct Reap(Vec<Child>);
    impl Drop for Reap {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut children = Reap(children);
    let cfg = node_config(&o.fabric, keeper, &cluster, machines, o.dirs, o.threads);
    let nodes = if o.processes == 0 {
        super::start_nodes(&cfg)?
    } else {
        vec![Patronus::new(cfg)?]
    };
    let mem = &nodes[0];
    let mem_id = mem.get_node_id();
    mem.put("soak/memory", mem_id.to_string().as_bytes())?;
    let k = Counters::default(); // in-process client node (processes 0)
    let stop = AtomicU64::new(0);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(o.duration.as_secs_f64());
    let mut failures = Vec::new();
    let mut drain_ms = 0.0;
    let mut final_mem = Record::default();
    std::thread::scope(|s| -> Result<()> {
        let mut serving = Vec::new();
        for _ in 0..o.dirs {
            let mut d = mem.register_server_thread()?;
            serving.push(s.spawn(move || d.server_serve(0)));
        }
        let inproc = (o.processes == 0).then(|| {
            let (k, stop, n) = (&k, &stop, &nodes[1]);
            let inject = o.inject.clone().unwrap_or_default();
            let tx = tx.clone();
            s.spawn(move || {
                let r = std::thread::scope(|s2| {
                    let sink = move |r| {
                        let _ = tx.send(r);
                    };
                    let lk = s2.spawn(move || reporter(k, "client-0", t0, o.interval, stop, &sink));
                    let t = Target {
                        node: mem_id,
                        dirs: o.dirs,
                        first_slot: 0,
                        threads: o.threads,
                    };
                    let r = run_workers(n, t, deadline, k, &inject);
                    stop.store(1, Relaxed);
                    let _ = lk.join();
                    r
                });
                let fin = k.record("final", "client-0", t0);
                (r, fin)
            })
        });
        // The monitor: a client thread of the memory node (or of the
        // in-process client node) asking the directories for their stats.
        let mon_node = if o.processes == 0 { &nodes[1] } else { mem };
        let mut mon = mon_node.register_client_thread()?;
        let mon_k = Counters::default();
        let mem_rec = |mon: &mut ClientThread, kind: &str| {
            let mut r = mon_k.record(kind, "memory", t0);
            (r.live_leases, r.gc_queued) = dir_stats(mon, mem_id, o.dirs);
            r
        };
        let hard = deadline + Duration::from_secs(120);
        let mut next = t0 + o.interval;
        let mut inproc = inproc;
        loop {
            while let Ok(r) = rx.try_recv() {
                take(r, &mut all);
            }
            if Instant::now() >= next {
                let r = mem_rec(&mut mon, "interval");
                take(r, &mut all);
                next += o.interval;
            }
            let kids_done = children
                .0
                .iter_mut()
                .all(|c| matches!(c.try_wait(), Ok(Some(_))));
            let inproc_done = inproc.as_ref().is_none_or(|h| h.is_finished());
            if kids_done && inproc_done && Instant::now() >= deadline {
                break;
            }
            if Instant::now() > hard {
                failures.push("client processes still running 120 s after the deadline".into());
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(h) = inproc.take() {
            let (r, fin) = h
                .join()
                .map_err(|_| Error::Invalid("the client node panicked".into()))?;
            if let Err(e) = r {
                failures.push(format!("client-0: {e}"));
            }
            take(fin, &mut all);
        }
        for (i, c) in children.0.iter_mut().enumerate() {
            match c.try_wait() {
                Ok(Some(st)) if st.success() => {}
                st => failures.push(format!("client-{i} exited with {st:?}")),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
        while let Ok(r) = rx.try_recv() {
            take(r, &mut all);
        }
        // Drain: every lease was relinquished or left to expire (2 ms):
        // live leases reach 0 within seconds.
        let td = Instant::now();
        loop {
            let (live, gc) = dir_stats(&mut mon, mem_id, o.dirs);
            if live.iter().all(|&v| v == 0) && gc.iter().all(|&v| v == 0) {
                break;
            }
            if td.elapsed() > Duration::from_secs(10) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        drain_ms = td.elapsed().as_secs_f64() * 1e3;
        final_mem = mem_rec(&mut mon, "final");
        take(final_mem.clone(), &mut all);
        drop(mon);
        // Every node of this process says it is done (the in-process
        // client node too), so the directories end.
        for n in &nodes {
            n.finished(0)?;
        }
        for h in serving {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failures.push(format!("memory node: {e}")),
                Err(_) => failures.push("a directory panicked".into()),
            }
        }
        Ok(())
    })?;
    drop(nodes);
    drop(mc);
    Ok(summarize(o, &all, &final_mem, drain_ms, failures))
}

fn summarize(
    o: &Opts,
    all: &[Record],
    mem: &Record,
    drain_ms: f64,
    mut failures: Vec<String>,
) -> Summary {
    let mut s = Summary {
        kind: "summary".into(),
        seconds: o.duration.as_secs_f64(),
        processes: o.processes,
        threads: o.threads,
        rss_bound_kib: RSS_BOUND_KIB,
        final_live_leases: mem.live_leases.clone(),
        final_gc_queued: mem.gc_queued.clone(),
        drain_ms,
        ..Default::default()
    };
    let mut names: Vec<&str> = all.iter().map(|r| r.proc.as_str()).collect();
    names.sort();
    names.dedup();
    for n in names {
        let recs: Vec<&Record> = all.iter().filter(|r| r.proc == n).collect();
        if let Some(f) = recs.iter().rev().find(|r| r.kind == "final") {
            s.ops += f.ops;
            s.acquires += f.acquires;
            s.expiries += f.expiries;
            s.extensions += f.extensions;
            s.late += f.late;
            s.unexpected += f.unexpected;
            for e in &f.errors {
                failures.push(format!("{n}: {e}"));
            }
        } else {
            failures.push(format!("{n}: no final record"));
        }
        let (first, last) = (recs[0], recs[recs.len() - 1]);
        if recs.len() < 3 {
            failures.push(format!(
                "{n}: {} records, too few to judge growth (run at least two intervals)",
                recs.len()
            ));
        }
        let g = last.anon_kib as i64 - first.anon_kib as i64;
        s.rss.push((n.into(), first.anon_kib, last.anon_kib, g));
        let sg = last.shmem_kib as i64 - first.shmem_kib as i64;
        s.shmem
            .push((n.into(), first.shmem_kib, last.shmem_kib, sg));
        if g > RSS_BOUND_KIB as i64 {
            failures.push(format!(
                "{n}: private RSS grew {g} KiB from the first interval to the end (bound {RSS_BOUND_KIB} KiB)"
            ));
        }
        let fg = last.fds as i64 - first.fds as i64;
        s.fds.push((n.into(), first.fds, last.fds, fg));
        if fg > 0 {
            failures.push(format!("{n}: open fds grew {} -> {}", first.fds, last.fds));
        }
    }
    if s.unexpected > 0 {
        failures.insert(0, format!("{} unexpected outcomes", s.unexpected));
    }
    if mem
        .live_leases
        .iter()
        .chain(&mem.gc_queued)
        .any(|&v| v != 0)
    {
        failures.push(format!(
            "memory node: live leases {:?}, GC queued {:?} after the drain",
            mem.live_leases, mem.gc_queued
        ));
    }
    s.pass = failures.is_empty();
    s.failures = failures;
    s
}

/// One table line of a record.
pub fn table_line(out: &mut dyn Write, r: &Record) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<8} {:<9} {:>7.1} {:>9} {:>8} {:>7} {:>6} {:>4} {:>4} {:>8} {:>9} {:>4}  {}",
        r.kind,
        r.proc,
        r.elapsed_s,
        r.ops,
        r.acquires,
        r.expiries,
        r.extensions,
        r.late,
        r.unexpected,
        r.anon_kib,
        r.shmem_kib,
        r.fds,
        if r.live_leases.is_empty() {
            String::new()
        } else {
            format!("live {:?} gc {:?}", r.live_leases, r.gc_queued)
        }
    )
}

/// The table's header.
pub fn table_header(out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<8} {:<9} {:>7} {:>9} {:>8} {:>7} {:>6} {:>4} {:>4} {:>8} {:>9} {:>4}  memory node",
        "kind",
        "proc",
        "t_s",
        "ops",
        "acquires",
        "expired",
        "extend",
        "late",
        "unex",
        "anon_kib",
        "shmem_kib",
        "fds"
    )
}
