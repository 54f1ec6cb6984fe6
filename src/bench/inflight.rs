//! `patronus bench inflight`: calls in flight per client thread (issue 12).
//! On a two-node cluster, for 1, 4, 16 and 32 calls in flight, in one or
//! both layouts: `inproc` (both nodes in this process, the memory node's
//! directory on its own server thread) and `process` (the memory node in a
//! child process of the same binary, `__inflight-node`, meeting this one
//! through a keeper: `--keeper`, or a private memcached started for the
//! run; the child is killed and reaped on every exit path):
//! - `read`: 64 B READs through one lease (posted calls);
//! - `cycle-2bind`, `cycle-1bind`, `cycle-0bind`: lease cycles (acquire +
//!   relinquish) with the default two binds, NO_BIND_PR (one), NO_BIND_ANY
//!   (none), each on its own object;
//! - `task`: the original's bench_patronus_concurrent task (acquire, 16
//!   reads, relinquish) as async tasks on [`AsyncThread`];
//!
//! - `node-acquire`: the memory node's acquisitions per second (lease
//!   cycles with two binds) from two client threads with `inflight` cycles
//!   each: a node-wide rate, not a per-thread one;
//!
//! plus the soft fabric's own pipelined 64 B READ rate between two NICs (of
//! this process, or of this process and a child in the `process` layout):
//! one signalled request per post (the `floor` row), and
//! every free place posted as one chain signalled once (`floor-chain`), and
//! chains of 16 with the least bookkeeping a posted READ needs (a slot, a
//! completion carrying its bytes: `floor-api`, what the engine's READ could
//! cost at best). Every rate is reported against the same scenario's
//! and layout's 1-in-flight rate of the same run.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{ChildProc, LocalMemcached};
use crate::client::{AsyncThread, ClientThread, Lease, Post};
use crate::fabric::conformance::{Pair, Side};
use crate::fabric::soft::{LinkKind, SoftConfig, SoftNic};
use crate::fabric::{Nic, SendWr, Wc, WrOp};
use crate::lease::flags::acquire;
use crate::lease::Rc;
use crate::node::{Config, Patronus};
use crate::{Error, Result};

/// What to run.
#[derive(Clone, Debug)]
pub struct Opts {
    /// "shm" or "tcp".
    pub fabric: String,
    /// Time per measurement.
    pub budget: Duration,
    /// Calls in flight to measure.
    pub depths: Vec<usize>,
    /// Scenarios to run (empty: all).
    pub only: Vec<String>,
    /// Measurements per scenario and depth; the best one is reported (on
    /// a busy host the best is the one least disturbed). 0 counts as 1.
    pub best_of: usize,
    /// Layouts to measure, in order (empty: in-process only).
    pub layouts: Vec<Layout>,
    /// The keeper of the `process` layout (`memcached://HOST:PORT`); None
    /// starts a private memcached for the run.
    pub keeper: Option<String>,
    /// The `patronus` executable the `process` layout runs the memory node
    /// with (None: this executable).
    pub exe: Option<std::path::PathBuf>,
}

/// Where the memory node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Both nodes in this process.
    InProc,
    /// The memory node in a child process.
    Process,
}

impl Layout {
    /// "inproc" or "process".
    pub fn name(self) -> &'static str {
        match self {
            Layout::InProc => "inproc",
            Layout::Process => "process",
        }
    }
}

/// One measured rate.
#[derive(Clone, Debug, Serialize)]
pub struct InflightRecord {
    /// "read", "cycle-2bind", "cycle-1bind", "cycle-0bind", "task",
    /// "node-acquire" (the memory node's acquisitions per second from two
    /// client threads, `inflight` each: a node-wide rate), "floor".
    pub scenario: String,
    /// Fabric.
    pub fabric: String,
    /// "inproc" (memory node in this process) or "process" (in a child).
    pub layout: String,
    /// Calls in flight on the thread.
    pub inflight: usize,
    /// Million calls (or tasks, or cycles) per second on one thread.
    pub mops: f64,
    /// `mops` over the same scenario's (and layout's) 1-in-flight rate.
    pub vs_one: f64,
    /// READ rows: `mops` over the `floor-chain` rate of the same depth and
    /// layout, measured right after it (0 when that floor was not run).
    pub vs_floor: f64,
    /// Calls (tasks, cycles) completed.
    pub ops: u64,
}

static RUN: AtomicU64 = AtomicU64::new(0);

fn bad(what: &str, rc: Rc) -> Error {
    Error::Invalid(format!("bench inflight: {what} returned {rc:?}"))
}

/// A measurement's time budget, read from the clock every 64th round (a
/// clock read costs about what a poll does): true while it runs, and false
/// for good once it ran out.
struct Budget {
    t0: Instant,
    budget: Duration,
    round: u32,
    running: bool,
}

impl Budget {
    fn new(budget: Duration) -> Budget {
        Budget {
            t0: Instant::now(),
            budget,
            round: 0,
            running: true,
        }
    }

    /// Counts a round; whether the budget still runs.
    fn running(&mut self) -> bool {
        self.round = self.round.wrapping_add(1);
        if self.running && self.round % 64 == 0 {
            self.running = self.t0.elapsed() < self.budget;
        }
        self.running
    }
}

/// Keeps `depth` 64 B READs in flight on one lease for `budget`.
fn reads(c: &mut ClientThread, l: &mut Lease, depth: usize, budget: Duration) -> Result<u64> {
    let mut b = Budget::new(budget);
    let mut done = 0u64;
    // Completions are polled into one vector and their buffers recycled:
    // the loop allocates nothing per READ.
    let mut got = Vec::with_capacity(64);
    while b.running() {
        while c.inflight() < depth {
            if c.post_read(l, 64, 0, 0, 0)? == Post::Retry {
                break;
            }
        }
        if c.poll_into(&mut got, 64)? == 0 {
            continue;
        }
        for x in got.drain(..) {
            if x.rc() != Rc::Ok {
                return Err(bad("read", x.rc()));
            }
            done += 1;
            c.recycle(x);
        }
    }
    while c.inflight() > 0 {
        c.wait(64, Duration::from_secs(5))?;
    }
    Ok(done)
}

/// Keeps `depth` lease cycles in flight, each on its own object (objects
/// from `first` on) of memory node `srv`.
fn cycles(
    c: &mut ClientThread,
    srv: u16,
    flag: u64,
    depth: usize,
    budget: Duration,
    first: u64,
) -> Result<u64> {
    let mut done = 0u64;
    let mut free: Vec<u64> = (0..depth as u64).collect();
    let mut held: Vec<Option<Lease>> = (0..depth).map(|_| None).collect();
    let obj = |k: u64| (first + k) * 4096;
    let mut got = Vec::with_capacity(64);
    let mut nheld = 0usize;
    let mut b = Budget::new(budget);
    loop {
        let running = b.running();
        if running {
            while let Some(k) = free.pop() {
                let p = c.post_get_wlease(srv, 0, obj(k), 0, 64, 0, flag | acquire::NO_GC, k)?;
                if p == Post::Retry {
                    free.push(k);
                    break;
                }
            }
        }
        if c.inflight() == 0 && !running {
            return Ok(done);
        }
        c.poll_into(&mut got, 64)?;
        for x in got.drain(..) {
            let k = x.user_data & 0xffff;
            if x.user_data & (1 << 32) != 0 {
                // A relinquish came back: the cycle is done.
                if x.rc() != Rc::Ok {
                    return Err(bad("relinquish", x.rc()));
                }
                done += 1;
                free.push(k);
                continue;
            }
            let rc = x.rc();
            let mut l = x.lease.ok_or_else(|| bad("acquire", rc))?;
            if !l.success() {
                return Err(Error::Invalid(format!(
                    "bench inflight: acquire refused ({})",
                    l.ec()
                )));
            }
            match c.post_relinquish(&mut l, 0, 0, k | 1 << 32)? {
                Post::Posted => {}
                Post::Retry => {
                    // Cannot happen (a completion was just taken); keep it.
                    held[k as usize] = Some(*l);
                    nheld += 1;
                }
            }
        }
        if nheld > 0 {
            for (k, h) in held.iter_mut().enumerate() {
                if let Some(mut l) = h.take() {
                    if c.post_relinquish(&mut l, 0, 0, k as u64 | 1 << 32)? == Post::Retry {
                        *h = Some(l);
                    } else {
                        nheld -= 1;
                    }
                }
            }
        }
    }
}

/// `depth` async tasks, each looping acquire, 16 reads, relinquish (on
/// memory node `srv`).
fn tasks(t: &AsyncThread, srv: u16, depth: usize, budget: Duration) -> Result<u64> {
    let t0 = Instant::now();
    let one = |k: usize| async move {
        let mut n = 0u64;
        while t0.elapsed() < budget {
            let mut l = t
                .get_rlease(srv, 0, k as u64 * 4096, 0, 64, 0, acquire::NO_GC)
                .await?;
            if !l.success() {
                return Err(Error::Invalid(format!(
                    "task: acquire refused ({})",
                    l.ec()
                )));
            }
            for _ in 0..16 {
                let (rc, _) = t.read(&mut l, 64, 0, 0).await?;
                if rc != Rc::Ok {
                    return Err(bad("task read", rc));
                }
            }
            t.relinquish(&mut l, 0, 0).await?;
            n += 1;
        }
        Ok::<u64, Error>(n)
    };
    let all = t.block_on(futures::future::join_all((0..depth).map(one)));
    all.into_iter().sum()
}

/// Two NICs of this process, connected.
fn floor_pair(link: LinkKind) -> Result<Pair> {
    let cfg = SoftConfig {
        link,
        ..SoftConfig::default()
    };
    let a: Arc<dyn Nic> = Arc::new(SoftNic::open(cfg.clone())?);
    let b: Arc<dyn Nic> = Arc::new(SoftNic::open(cfg)?);
    Ok(Pair::new(a, b, 1 << 16)?)
}

/// A client QP of the soft fabric and the remote region it reads: two
/// NICs of this process, or a memory node in a child process.
struct FloorTarget {
    side: Side,
    raddr: u64,
    rkey: u32,
    /// What keeps the remote end alive: the pair, or the child.
    _pair: Option<Box<Pair>>,
    _child: Option<ChildProc>,
}

impl FloorTarget {
    fn open(layout: Layout, link: LinkKind, exe: &std::path::Path) -> Result<FloorTarget> {
        Ok(match layout {
            Layout::InProc => {
                let p = floor_pair(link)?;
                let side = Side {
                    nic: p.client.nic.clone(),
                    pd: p.client.pd,
                    cq: p.client.cq.clone(),
                    qp: p.client.qp.clone(),
                    buf: p.client.buf.clone(),
                };
                FloorTarget {
                    raddr: p.region.addr(),
                    rkey: p.region.rkey(),
                    side,
                    _pair: Some(Box::new(p)),
                    _child: None,
                }
            }
            Layout::Process => {
                let (side, raddr, rkey, child) = super::fabric::remote_side(exe, link, 1 << 16)?;
                FloorTarget {
                    side,
                    raddr,
                    rkey,
                    _pair: None,
                    _child: Some(child),
                }
            }
        })
    }
}

/// The soft fabric's pipelined 64 B READ rate with `depth` outstanding.
fn floor(p: &FloorTarget, depth: usize, budget: Duration) -> Result<u64> {
    let (raddr, rkey) = (p.raddr, p.rkey);
    let post = |slot: u64| {
        p.side.qp.post_send(&[SendWr {
            wr_id: slot,
            op: WrOp::Read {
                local: p.side.sge(slot * 64, 64),
                raddr,
                rkey,
            },
            signaled: true,
        }])
    };
    let mut out = 0usize;
    let mut done = 0u64;
    let mut wc = [Wc::default(); 32];
    let mut b = Budget::new(budget);
    loop {
        let running = b.running();
        while running && out < depth {
            post(out as u64)?;
            out += 1;
        }
        let n = p.side.cq.poll(&mut wc);
        for w in &wc[..n] {
            if !w.status.is_ok() {
                return Err(Error::Invalid(format!("floor read: {w:?}")));
            }
        }
        out -= n;
        done += n as u64;
        if !running && out == 0 {
            return Ok(done);
        }
    }
}

/// As [`floor`], posting every free place as one chain with only its last
/// request signalled (what the engine's doorbell batching does): the
/// fabric's best pipelined rate.
fn floor_chain(p: &FloorTarget, depth: usize, budget: Duration) -> Result<u64> {
    let (raddr, rkey) = (p.raddr, p.rkey);
    let mut out = 0usize;
    let mut done = 0u64;
    let mut wc = [Wc::default(); 32];
    let mut chains: std::collections::VecDeque<usize> = Default::default();
    let mut wrs: Vec<SendWr> = Vec::with_capacity(depth);
    let mut b = Budget::new(budget);
    loop {
        let running = b.running();
        if running && out < depth {
            wrs.clear();
            for i in out..depth {
                wrs.push(SendWr {
                    wr_id: i as u64,
                    op: WrOp::Read {
                        local: p.side.sge((i % 1024) as u64 * 64, 64),
                        raddr,
                        rkey,
                    },
                    signaled: i + 1 == depth,
                });
            }
            p.side.qp.post_send(&wrs)?;
            chains.push_back(wrs.len());
            out = depth;
        }
        let n = p.side.cq.poll(&mut wc);
        for w in &wc[..n] {
            if !w.status.is_ok() {
                return Err(Error::Invalid(format!("floor read: {w:?}")));
            }
            let c = chains.pop_front().unwrap_or(0);
            out -= c;
            done += c as u64;
        }
        if !running && out == 0 {
            return Ok(done);
        }
    }
}

/// What one posted READ's completion carries at the least: its tag, its
/// status and its bytes (padded to the engine's `Completion`, 128 bytes).
struct MinCompletion {
    user_data: u64,
    ok: bool,
    data: Vec<u8>,
    _rest: [u64; 10],
}

/// As [`floor_chain`] with the least bookkeeping a posted READ needs: a
/// slot (its staging place) from a free list, the request chained (16 per
/// chain, the last one signalled) and remembered in posting order, and on
/// a completion every READ before it finished: its bytes copied into a
/// recycled buffer of a completion pushed to a ready vector, which the
/// caller swaps out, reads and recycles. No lease check, deadline or
/// recovery: what the engine's READ could cost at best (`floor-api`).
fn floor_api(p: &FloorTarget, depth: usize, budget: Duration) -> Result<u64> {
    const CHAIN: usize = 16;
    let (raddr, rkey) = (p.raddr, p.rkey);
    let mut done = 0u64;
    let mut wc = [Wc::default(); 32];
    let mut free: Vec<u32> = (0..depth as u32).rev().collect();
    let mut order: std::collections::VecDeque<(u32, u64)> = Default::default();
    let mut pend: Vec<SendWr> = Vec::with_capacity(CHAIN);
    let mut ready: Vec<MinCompletion> = Vec::with_capacity(64);
    let mut got: Vec<MinCompletion> = Vec::with_capacity(64);
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let mut tag = 0u64;
    let mut b = Budget::new(budget);
    loop {
        let running = b.running();
        // The caller's posts: a slot each, chained.
        if running {
            while let Some(slot) = free.pop() {
                tag += 1;
                pend.push(SendWr {
                    wr_id: slot as u64,
                    op: WrOp::Read {
                        local: p.side.sge(slot as u64 * 64, 64),
                        raddr,
                        rkey,
                    },
                    signaled: false,
                });
                order.push_back((slot, tag));
                if pend.len() >= CHAIN {
                    if let Some(l) = pend.last_mut() {
                        l.signaled = true;
                    }
                    p.side.qp.post_send(&pend)?;
                    pend.clear();
                }
            }
        }
        // The caller's poll: the rest of the chain out, then completions
        // in order.
        if let Some(l) = pend.last_mut() {
            l.signaled = true;
            p.side.qp.post_send(&pend)?;
            pend.clear();
        }
        let n = p.side.cq.poll(&mut wc);
        for w in &wc[..n] {
            if !w.status.is_ok() {
                return Err(Error::Invalid(format!("floor read: {w:?}")));
            }
            while let Some((slot, user_data)) = order.pop_front() {
                let mut data = pool.pop().unwrap_or_default();
                data.resize(64, 0);
                p.side.buf.read(slot as u64 * 64, &mut data)?;
                ready.push(MinCompletion {
                    user_data,
                    ok: true,
                    data,
                    _rest: [0; 10],
                });
                free.push(slot);
                if slot as u64 == w.wr_id {
                    break;
                }
            }
        }
        std::mem::swap(&mut got, &mut ready);
        for c in got.drain(..) {
            if !c.ok || c.user_data == 0 {
                return Err(Error::Invalid("floor-api: a bad completion".into()));
            }
            done += 1;
            let mut v = c.data;
            v.clear();
            pool.push(v);
        }
        if !running && order.is_empty() {
            return Ok(done);
        }
    }
}

/// The two-node cluster of a run (`keeper`: None for the in-process one).
fn node_config(fabric: &str, cluster: String, keeper: Option<String>) -> Config {
    Config {
        machine_nr: 2,
        dir_nr: 1,
        client_threads: 2,
        cluster,
        fabric: fabric.into(),
        keeper,
        leases_per_dir: 4096,
        lease_quota_per_thread: 1024,
        max_inflight: 64,
        // A node that never joins fails the run in bounded time.
        keeper_timeout: Duration::from_secs(20),
        ..Config::default()
    }
}

fn cluster_name() -> String {
    format!(
        "bench-inflight-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    )
}

fn link_of(fabric: &str) -> Result<LinkKind> {
    match fabric {
        "shm" => Ok(LinkKind::Shm),
        "tcp" => Ok(LinkKind::Tcp),
        f => Err(Error::Invalid(format!(
            "bench inflight: fabric {f}: shm or tcp"
        ))),
    }
}

/// Runs every scenario at every depth, in every layout asked for.
pub fn run(o: &Opts) -> Result<Vec<InflightRecord>> {
    let link = link_of(&o.fabric)?;
    let layouts = if o.layouts.is_empty() {
        vec![Layout::InProc]
    } else {
        o.layouts.clone()
    };
    let mut out: Vec<InflightRecord> = Vec::new();
    for l in layouts {
        match l {
            Layout::InProc => run_inproc(o, link, &mut out)?,
            Layout::Process => run_process(o, link, &mut out)?,
        }
    }
    let ones: Vec<(String, String, f64)> = out
        .iter()
        .filter(|r| r.inflight == 1)
        .map(|r| (r.layout.clone(), r.scenario.clone(), r.mops))
        .collect();
    let chains: Vec<(String, usize, f64)> = out
        .iter()
        .filter(|r| r.scenario == "floor-chain")
        .map(|r| (r.layout.clone(), r.inflight, r.mops))
        .collect();
    for r in &mut out {
        if let Some((_, _, one)) = ones
            .iter()
            .find(|(l, s, _)| *l == r.layout && *s == r.scenario)
        {
            r.vs_one = r.mops / one.max(1e-12);
        }
        if r.scenario == "read" {
            if let Some((_, _, f)) = chains
                .iter()
                .find(|(l, d, _)| *l == r.layout && *d == r.inflight)
            {
                r.vs_floor = r.mops / f.max(1e-12);
            }
        }
    }
    // Grouped by layout and scenario for the table (READ and the floors
    // were measured interleaved).
    let rank = |s: &str| SCENARIOS.iter().position(|x| *x == s).unwrap_or(usize::MAX);
    out.sort_by_key(|r| (r.layout != "inproc", rank(&r.scenario), r.inflight));
    Ok(out)
}

/// Both nodes in this process; the memory node's directory on a thread.
fn run_inproc(o: &Opts, link: LinkKind, out: &mut Vec<InflightRecord>) -> Result<()> {
    let cfg = node_config(&o.fabric, cluster_name(), None);
    let nodes = super::start_nodes(&cfg)?;
    let (server, client) = (&nodes[0], &nodes[1]);
    let srv = server.get_node_id();
    let exe = std::path::PathBuf::new();
    super::with_served_dir(server, client, || {
        measure(
            o,
            client,
            srv,
            || FloorTarget::open(Layout::InProc, link, &exe),
            Layout::InProc,
            out,
        )
    })
}

/// The memory node in a child process (`__inflight-node`), this process
/// the client node. The child is killed and reaped on every path out.
fn run_process(o: &Opts, link: LinkKind, out: &mut Vec<InflightRecord>) -> Result<()> {
    let exe = match &o.exe {
        Some(e) => e.clone(),
        None => std::env::current_exe().map_err(|e| Error::io("current_exe", e))?,
    };
    let mut _mc = None;
    let keeper = match &o.keeper {
        Some(k) => k.clone(),
        None => _mc.insert(LocalMemcached::start()?).url.clone(),
    };
    let cluster = cluster_name();
    let mut child = ChildProc::spawn(&exe, &["__inflight-node", &o.fabric, &keeper, &cluster])?;
    let client = Patronus::new(node_config(&o.fabric, cluster, Some(keeper)))?;
    let srv = 1 - client.get_node_id().min(1);
    let r = measure(
        o,
        &client,
        srv,
        || FloorTarget::open(Layout::Process, link, &exe),
        Layout::Process,
        out,
    );
    let fin = client.finished(0);
    // The memory node stops once both nodes finished (or, past the bound,
    // is killed); dropping `child` kills it on the error paths above.
    let clean = child.wait_exit(Duration::from_secs(10))?;
    drop(client);
    r?;
    fin?;
    if !clean {
        return Err(Error::Invalid(
            "bench inflight: the memory node process did not stop cleanly".into(),
        ));
    }
    Ok(())
}

/// Child of the `process` layout: a memory node (`__inflight-node FABRIC
/// KEEPER CLUSTER`) serving one directory until both nodes finished. It
/// exits at once when its stdin closes (the parent went away).
pub fn node_main(args: &[String]) -> Result<()> {
    let [fabric, keeper, cluster] = args else {
        return Err(Error::Invalid(
            "usage: __inflight-node FABRIC KEEPER CLUSTER".into(),
        ));
    };
    std::thread::spawn(|| {
        let mut l = String::new();
        while matches!(std::io::stdin().read_line(&mut l), Ok(n) if n > 0) {
            l.clear();
        }
        std::process::exit(3);
    });
    let p = Patronus::new(node_config(fabric, cluster.clone(), Some(keeper.clone())))?;
    super::say(&format!("NODE {}", p.get_node_id()));
    let mut d = p.register_server_thread()?;
    d.server_serve(0)?;
    super::say("DONE");
    Ok(())
}

/// Every scenario at every depth against memory node `srv`, from client
/// node `client`; the floors against what `floor_target` opens.
fn measure(
    o: &Opts,
    client: &Patronus,
    srv: u16,
    floor_target: impl FnOnce() -> Result<FloorTarget>,
    layout: Layout,
    out: &mut Vec<InflightRecord>,
) -> Result<()> {
    let depths: Vec<usize> = if o.depths.is_empty() {
        vec![1, 4, 16, 32]
    } else {
        o.depths.clone()
    };
    let mut push = |scenario: &str, inflight: usize, ops: u64, secs: f64| {
        out.push(InflightRecord {
            scenario: scenario.into(),
            fabric: o.fabric.clone(),
            layout: layout.name().into(),
            inflight,
            mops: ops as f64 / secs / 1e6,
            vs_one: 0.0,
            vs_floor: 0.0,
            ops,
        })
    };
    let secs = o.budget.as_secs_f64();
    let want = |s: &str| o.only.is_empty() || o.only.iter().any(|x| x == s);
    let best = |f: &mut dyn FnMut() -> Result<u64>| -> Result<u64> {
        let mut top = 0;
        for _ in 0..o.best_of.max(1) {
            top = top.max(f()?);
        }
        Ok(top)
    };
    let mut c = client.register_client_thread()?;
    // READ and the fabric's floors depth by depth, back to back: this
    // host's speed changes between minutes (see the README), and READ is
    // judged against the floors of the same minute.
    let floors = want("floor") || want("floor-chain") || want("floor-api");
    let mut open = Some(floor_target);
    let mut ft = None;
    let mut l = None;
    if want("read") {
        l = Some(c.get_rlease(srv, 0, 1 << 20, 0, 64, 0, acquire::NO_GC)?);
    }
    for &d in &depths {
        if let Some(l) = l.as_mut() {
            let n = best(&mut || reads(&mut c, l, d, o.budget))?;
            push("read", d, n, secs);
        }
        if !floors {
            continue;
        }
        if let Some(f) = open.take() {
            ft = Some(f()?);
        }
        let p = ft.as_ref().expect("opened above");
        if want("floor") {
            let n = best(&mut || floor(p, d, o.budget))?;
            push("floor", d, n, secs);
        }
        if want("floor-chain") {
            let n = best(&mut || floor_chain(p, d, o.budget))?;
            push("floor-chain", d, n, secs);
        }
        if want("floor-api") {
            let n = best(&mut || floor_api(p, d, o.budget))?;
            push("floor-api", d, n, secs);
        }
    }
    drop(ft);
    if let Some(mut l) = l {
        c.relinquish(&mut l, 0, 0)?;
    }
    for (name, flag) in [
        ("cycle-2bind", 0),
        ("cycle-1bind", acquire::NO_BIND_PR),
        ("cycle-0bind", acquire::NO_BIND_ANY),
    ] {
        for &d in depths.iter().filter(|_| want(name)) {
            let n = best(&mut || cycles(&mut c, srv, flag, d, o.budget, 0))?;
            push(name, d, n, secs);
        }
    }
    let t = AsyncThread::new(c);
    for &d in depths.iter().filter(|_| want("task")) {
        let n = best(&mut || tasks(&t, srv, d, o.budget))?;
        push("task", d, n, secs);
    }
    drop(t);
    // The memory node's acquire rate: both client threads, each with `d`
    // lease cycles (two binds) in flight; one in flight per thread is how
    // a node was driven before calls in flight (one request per directory
    // pass).
    for &d in depths.iter().filter(|_| want("node-acquire")) {
        let n = best(&mut || {
            std::thread::scope(|s2| -> Result<u64> {
                let hs: Vec<_> = (0..2u64)
                    .map(|t| {
                        s2.spawn(move || -> Result<u64> {
                            let mut c = client.register_client_thread()?;
                            cycles(&mut c, srv, 0, d, o.budget, 64 + t * 64)
                        })
                    })
                    .collect();
                let mut sum = 0;
                for h in hs {
                    sum += h
                        .join()
                        .map_err(|_| Error::Invalid("client thread panicked".into()))??;
                }
                Ok(sum)
            })
        })?;
        push("node-acquire", d, n, secs);
    }
    Ok(())
}

/// Every scenario, in table order.
pub const SCENARIOS: [&str; 9] = [
    "read",
    "cycle-2bind",
    "cycle-1bind",
    "cycle-0bind",
    "task",
    "node-acquire",
    "floor",
    "floor-chain",
    "floor-api",
];

/// A table: one row per scenario and depth.
pub fn print_table(w: &mut dyn Write, recs: &[InflightRecord]) -> std::io::Result<()> {
    writeln!(
        w,
        "{:<12} {:<5} {:<7} {:>9} {:>12} {:>9} {:>10} {:>9}",
        "scenario", "fab", "layout", "inflight", "Mops/thread", "vs 1", "ops", "vs chain"
    )?;
    for r in recs {
        let vs_floor = if r.vs_floor > 0.0 {
            format!("{:.2}x", r.vs_floor)
        } else {
            String::new()
        };
        writeln!(
            w,
            "{:<12} {:<5} {:<7} {:>9} {:>12.3} {:>8.2}x {:>10} {:>9}",
            r.scenario, r.fabric, r.layout, r.inflight, r.mops, r.vs_one, r.ops, vs_floor
        )?;
    }
    Ok(())
}
