//! `patronus bench ycsb`: YCSB core workloads on the protected hash table
//! (`src/kv`), every protection mode side by side in one run (issue 15).
//!
//! By default an in-process two-node cluster: node 0 is the memory node (one
//! directory, the universal rkey offered so that `unprotected` can run),
//! node 1 runs `threads` client threads. The table is loaded once
//! (`records` records of `value_size` bytes, keys `user<fnv64(n)>` as
//! YCSB's hashed inserts) through `lease` handles with `put_many`, then
//! each workload runs for `budget` per protection mode on fresh handles
//! of that mode, in the order unprotected, lease, mr, rpc.
//!
//! Workloads (YCSB core): A 50 % read / 50 % update, B 95 / 5, C 100 %
//! read, D 95 % read / 5 % insert with the *latest* distribution, F 50 %
//! read / 50 % read-modify-write. Request distribution: YCSB's scrambled
//! Zipfian (constant 0.99, the generator of `ScrambledZipfianGenerator`:
//! a Zipfian over 10^10 items hashed with FNV-64 onto the records) or
//! uniform. D runs last, since it inserts.
//!
//! Calls in flight: each client thread draws `inflight` operations, and
//! posts them by kind: the reads together ([`KvTable::get_many`]), the
//! read-modify-writes (their reads together, then their writes), the
//! updates and inserts together ([`KvTable::put_many`]). An operation's
//! latency is the time of the wave it went in.
//!
//! Several client processes ([`run_processes`], `--processes N`): the
//! memory node is `patronus serve` and each client node a `patronus
//! client ... ycsb` process ([`run_client`]) of a cluster formed through
//! memcached; rank 0 creates the table, every process loads its share and
//! runs each cell at the same time as the others (a keeper barrier per
//! measurement), and rank 0 merges the processes' counts and histograms
//! ([`Peers`]).
//!
//! Also the shapes of the original's `bench_race_rdma_bootstrap` (a
//! tenant opens a handle on the table and closes it, no I/O) and
//! `bench_race_rdma_mortgage` (open, 8 operations of YCSB-A, close), per
//! mode: there the per-tenant cost of protection shows (leases acquired
//! and windows bound, or MRs registered, per handle).

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::client::ClientThread;
use crate::kv::{Access, KvParams, KvTable, Protection};
use crate::node::{Config, Patronus};
use crate::{Error, Result};

/// The protection modes, in the order they run (the baseline first).
pub const MODES: [Protection; 4] = [
    Protection::Unprotected,
    Protection::Lease,
    Protection::Mr,
    Protection::Rpc,
];

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opts {
    /// Records loaded.
    pub records: u64,
    /// Value bytes per record.
    pub value_size: usize,
    /// Client threads.
    pub threads: usize,
    /// Operations in flight per client thread.
    pub inflight: usize,
    /// Time per (workload, distribution, mode) cell and round.
    pub budget: Duration,
    /// Rounds: each runs every mode once, the order rotated by one mode
    /// per round (so that drift of a shared machine's load spreads over
    /// the modes); a cell's rate is the median of its rounds' rates, its
    /// latencies are over all rounds.
    pub rounds: usize,
    /// Workloads, of "a", "b", "c", "d", "f".
    pub workloads: Vec<char>,
    /// Distributions, of "zipfian", "uniform".
    pub dists: Vec<Dist>,
    /// Also the bootstrap and mortgage shapes.
    pub handles: bool,
    /// Progress lines on stderr while loading and running.
    pub progress: bool,
}

/// Request distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dist {
    /// YCSB's scrambled Zipfian, constant 0.99 (D: skewed latest).
    Zipfian,
    /// Uniform over the records (D: over the records inserted so far).
    Uniform,
}

impl Dist {
    fn name(self) -> &'static str {
        match self {
            Dist::Zipfian => "zipfian",
            Dist::Uniform => "uniform",
        }
    }
}

/// A mode's name in the output.
pub fn mode_name(m: Protection) -> &'static str {
    match m {
        Protection::Unprotected => "unprotected",
        Protection::Lease => "lease",
        Protection::Mr => "mr",
        Protection::Rpc => "rpc",
    }
}

/// One result row: a workload cell's operation type under one mode.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct YcsbRecord {
    /// "ycsb-a" ... "ycsb-f", "bootstrap", "mortgage".
    pub workload: String,
    /// "zipfian", "uniform" ("-" for bootstrap).
    pub dist: String,
    /// "unprotected", "lease", "mr", "rpc".
    pub mode: String,
    /// "all" (the cell's throughput), "read", "update", "insert", "rmw",
    /// "handle" (bootstrap/mortgage: one open..close cycle).
    pub op: String,
    /// Operations (or handle cycles) completed.
    pub ops: u64,
    /// Million operations per second (all threads): the median of the
    /// rounds' rates (handle shapes: over all rounds).
    pub mops: f64,
    /// Million operations per second over all rounds together (all
    /// operations over all the time).
    pub mops_pooled: f64,
    /// `mops` over the `unprotected` mode's of the same cell and op.
    pub vs_unprotected: f64,
    /// Median latency (ns).
    pub p50_ns: u64,
    /// 99th percentile latency (ns).
    pub p99_ns: u64,
    /// Reads that found no value (D: keys whose insert was not done yet).
    pub misses: u64,
    /// Client processes whose measurements the row merges.
    pub processes: u64,
}

// ---------------------------------------------------------------------
// YCSB generators

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 1_099_511_628_211;

/// YCSB's `Utils.fnvhash64`: FNV-1 over the 8 bytes of `v`, low byte
/// first, made non-negative as Java's `Math.abs` of a long.
pub fn fnvhash64(mut v: u64) -> u64 {
    let mut h = FNV_OFFSET;
    for _ in 0..8 {
        h ^= v & 0xff;
        h = h.wrapping_mul(FNV_PRIME);
        v >>= 8;
    }
    (h as i64).unsigned_abs()
}

/// A small fast generator (xorshift64*), seeded per thread.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded with `seed` (0 is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// YCSB's `ZipfianGenerator` (Gray et al.'s algorithm) over [0, items),
/// whose item count may grow (zeta is extended incrementally, as YCSB
/// does for the latest distribution).
#[derive(Clone, Debug)]
pub struct Zipfian {
    theta: f64,
    alpha: f64,
    zeta2: f64,
    zetan: f64,
    items: u64,
    eta: f64,
}

/// YCSB's constants for the scrambled Zipfian: 10^10 items, and their
/// zeta for 0.99.
const SCRAMBLED_ITEMS: u64 = 10_000_000_000;
const SCRAMBLED_ZETAN: f64 = 26.469_028_201_783_02;

fn zeta(from: u64, to: u64, theta: f64, start: f64) -> f64 {
    let mut s = start;
    for i in from..to {
        s += 1.0 / ((i + 1) as f64).powf(theta);
    }
    s
}

impl Zipfian {
    /// Over [0, items) with constant `theta` (zeta computed).
    pub fn new(items: u64, theta: f64) -> Zipfian {
        let zetan = zeta(0, items, theta, 0.0);
        Zipfian::with_zeta(items, theta, zetan)
    }

    /// Over [0, items) with a precomputed zeta(items, theta).
    pub fn with_zeta(items: u64, theta: f64, zetan: f64) -> Zipfian {
        let zeta2 = zeta(0, 2, theta, 0.0);
        let mut z = Zipfian {
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta2,
            zetan,
            items,
            eta: 0.0,
        };
        z.eta = z.eta_of();
        z
    }

    fn eta_of(&self) -> f64 {
        (1.0 - (2.0 / self.items as f64).powf(1.0 - self.theta)) / (1.0 - self.zeta2 / self.zetan)
    }

    /// A value in [0, items), extending to `items` first when it grew.
    pub fn next_in(&mut self, rng: &mut Rng, items: u64) -> u64 {
        if items > self.items {
            self.zetan = zeta(self.items, items, self.theta, self.zetan);
            self.items = items;
            self.eta = self.eta_of();
        }
        let u = rng.f64();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let v = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        v.min(self.items - 1)
    }

    /// A value in [0, items).
    pub fn next(&mut self, rng: &mut Rng) -> u64 {
        let n = self.items;
        self.next_in(rng, n)
    }
}

/// YCSB's `ScrambledZipfianGenerator` over [0, items) for constant 0.99:
/// a Zipfian over 10^10 items, hashed onto the records (popular items
/// scattered over the key space).
#[derive(Clone, Debug)]
pub struct ScrambledZipfian {
    z: Zipfian,
    items: u64,
}

impl ScrambledZipfian {
    /// Over [0, items).
    pub fn new(items: u64) -> ScrambledZipfian {
        ScrambledZipfian {
            z: Zipfian::with_zeta(SCRAMBLED_ITEMS, 0.99, SCRAMBLED_ZETAN),
            items,
        }
    }
    /// A value in [0, items).
    pub fn next(&mut self, rng: &mut Rng) -> u64 {
        fnvhash64(self.z.next(rng)) % self.items
    }
}

/// The key of record `n` (YCSB's hashed key order).
pub fn key_of(n: u64) -> Vec<u8> {
    format!("user{}", fnvhash64(n)).into_bytes()
}

/// The value of record `n`, version `ver`: `n` and `ver` little-endian,
/// then a pattern of both, `size` bytes in all.
fn value_of(n: u64, ver: u64, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size.max(16)];
    v[..8].copy_from_slice(&n.to_le_bytes());
    v[8..16].copy_from_slice(&ver.to_le_bytes());
    for (i, b) in v.iter_mut().enumerate().skip(16) {
        *b = (n as u8).wrapping_add(ver as u8).wrapping_add(i as u8);
    }
    v.truncate(size.max(16));
    v
}

/// An operation type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read,
    Update,
    Insert,
    Rmw,
}

const OPS: [(Op, &str); 4] = [
    (Op::Read, "read"),
    (Op::Update, "update"),
    (Op::Insert, "insert"),
    (Op::Rmw, "rmw"),
];

/// The fraction of reads and what the others are.
fn mix(w: char) -> Result<(f64, Op)> {
    Ok(match w {
        'a' => (0.5, Op::Update),
        'b' => (0.95, Op::Update),
        'c' => (1.0, Op::Update),
        'd' => (0.95, Op::Insert),
        'f' => (0.5, Op::Rmw),
        _ => {
            return Err(Error::Invalid(format!(
                "bench ycsb: workload {w:?}: one of a, b, c, d, f"
            )))
        }
    })
}

/// Picks record numbers.
enum Chooser {
    Scrambled(ScrambledZipfian),
    Latest(Zipfian),
    Uniform,
}

/// Shared state of a run: the records loaded and inserted.
struct Shared {
    /// The memory node with the table (directory 0).
    mem: u16,
    records: u64,
    /// Inserts this process made (see [`Shared::record`]).
    inserts: AtomicU64,
    rank: u64,
    stride: u64,
    /// Indexes (see [`Shared::record`]) below this are inserted (D's
    /// latest reads pick under it).
    acked: AtomicU64,
    /// Versions written (so that each update writes a new value).
    version: AtomicU64,
}

impl Shared {
    /// The record of index `i` of this process's view: the loaded records,
    /// then its own inserts (its k-th insert is record `records + rank +
    /// k * stride`: client processes insert disjoint records, and each
    /// reads back the records it inserted).
    fn record(&self, i: u64) -> u64 {
        if i < self.records {
            i
        } else {
            self.records + self.rank + (i - self.records) * self.stride
        }
    }
}

/// Per-thread results of a cell.
struct Tally {
    hist: Vec<Histogram<u64>>,
    ops: [u64; 4],
    misses: u64,
}

impl Tally {
    fn new() -> Result<Tally> {
        let h = || {
            Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
                .map_err(|e| Error::Invalid(format!("histogram: {e}")))
        };
        Ok(Tally {
            hist: vec![h()?, h()?, h()?, h()?],
            ops: [0; 4],
            misses: 0,
        })
    }
    fn add(&mut self, op: Op, n: u64, ns: u64) {
        let i = op as usize;
        self.ops[i] += n;
        let _ = self.hist[i].record_n(ns.max(1), n);
    }
    fn merge(&mut self, o: &Tally) {
        for i in 0..4 {
            let _ = self.hist[i].add(&o.hist[i]);
            self.ops[i] += o.ops[i];
        }
        self.misses += o.misses;
    }
}

/// Checks a value read for record `n` (its first 8 bytes name it).
fn check_value(n: u64, v: &[u8]) -> Result<()> {
    if v.len() < 8 || v[..8] != n.to_le_bytes() {
        return Err(Error::Invalid(format!(
            "bench ycsb: record {n} read back a value of another record or a torn one ({} \
             bytes)",
            v.len()
        )));
    }
    Ok(())
}

/// One thread's loop of workload `w` for `budget`.
#[allow(clippy::too_many_arguments)]
fn worker(
    ct: &mut ClientThread,
    t: &mut KvTable,
    w: char,
    dist: Dist,
    sh: &Shared,
    o: &Opts,
    seed: u64,
    until: Instant,
    max_ops: Option<u64>,
) -> Result<Tally> {
    let (read_frac, other) = mix(w)?;
    let mut rng = Rng::new(seed);
    let mut chooser = match (dist, w) {
        (Dist::Zipfian, 'd') => Chooser::Latest(Zipfian::new(sh.records, 0.99)),
        (Dist::Zipfian, _) => Chooser::Scrambled(ScrambledZipfian::new(sh.records)),
        (Dist::Uniform, _) => Chooser::Uniform,
    };
    let mut pick = |rng: &mut Rng| -> u64 {
        let n = sh.acked.load(Ordering::Relaxed).max(1);
        match &mut chooser {
            Chooser::Scrambled(z) => z.next(rng),
            Chooser::Latest(z) => sh.record(n - 1 - z.next_in(rng, n)),
            Chooser::Uniform if w == 'd' => sh.record(rng.below(n)),
            Chooser::Uniform => rng.below(sh.records),
        }
    };
    let mut tally = Tally::new()?;
    let mut done = 0u64;
    while Instant::now() < until && max_ops.is_none_or(|m| done < m) {
        let wave = max_ops.map_or(o.inflight as u64, |m| (m - done).min(o.inflight as u64));
        let mut reads = Vec::new();
        let mut others = Vec::new();
        // Inserts: one past the highest index this wave inserts.
        let mut top = 0;
        for _ in 0..wave {
            if rng.f64() < read_frac {
                reads.push(pick(&mut rng));
            } else if other == Op::Insert {
                let i = sh.records + sh.inserts.fetch_add(1, Ordering::Relaxed);
                top = top.max(i + 1);
                others.push(sh.record(i));
            } else {
                others.push(pick(&mut rng));
            }
        }
        done += wave;
        if !reads.is_empty() {
            let ks: Vec<Vec<u8>> = reads.iter().map(|&n| key_of(n)).collect();
            let refs: Vec<&[u8]> = ks.iter().map(|k| &k[..]).collect();
            let t0 = Instant::now();
            let got = t.get_many(ct, &refs)?;
            let ns = t0.elapsed().as_nanos() as u64;
            for (&n, v) in reads.iter().zip(&got) {
                match v {
                    Some(v) => check_value(n, v)?,
                    None => tally.misses += 1,
                }
            }
            tally.add(Op::Read, reads.len() as u64, ns);
        }
        if !others.is_empty() {
            let ks: Vec<Vec<u8>> = others.iter().map(|&n| key_of(n)).collect();
            let refs: Vec<&[u8]> = ks.iter().map(|k| &k[..]).collect();
            let t0 = Instant::now();
            if other == Op::Rmw {
                for (&n, v) in others.iter().zip(t.get_many(ct, &refs)?) {
                    match v {
                        Some(v) => check_value(n, &v)?,
                        None => tally.misses += 1,
                    }
                }
            }
            let ver = sh.version.fetch_add(1, Ordering::Relaxed);
            let vs: Vec<Vec<u8>> = others
                .iter()
                .map(|&n| value_of(n, ver, o.value_size))
                .collect();
            let items: Vec<(&[u8], &[u8])> =
                refs.iter().zip(&vs).map(|(k, v)| (*k, &v[..])).collect();
            t.put_many(ct, &items)?;
            let ns = t0.elapsed().as_nanos() as u64;
            if other == Op::Insert {
                sh.acked.fetch_max(top, Ordering::Relaxed);
            }
            tally.add(other, others.len() as u64, ns);
        }
    }
    Ok(tally)
}

/// Table parameters sized for `records` (about half the slots used,
/// room for one doubling).
pub fn table_params(records: u64) -> KvParams {
    let initial_depth = 5u32;
    let groups = (records * 2)
        .div_ceil(16 << initial_depth)
        .next_power_of_two()
        .max(16);
    KvParams {
        base: 0,
        groups,
        initial_depth,
        max_depth: initial_depth + 1,
        lease_ns: 0,
        patience: Duration::from_secs(30),
        free_ring_nodes: 4,
        free_ring_len: 1024,
        ..KvParams::default()
    }
}

fn say(o: &Opts, t0: Instant, what: &str) {
    if o.progress {
        eprintln!("[{:7.1} s] {what}", t0.elapsed().as_secs_f64());
    }
}

static RUN: AtomicU64 = AtomicU64::new(0);

/// What a run needs of the memory node: the table's parameters, its
/// region's bytes, a KV block's bytes and the allocation buffer's bytes.
#[derive(Clone, Debug)]
pub struct Sizes {
    /// The table's parameters.
    pub params: KvParams,
    /// Bytes of the table region (in the lease buffer).
    pub region: u64,
    /// Bytes of one KV block (the allocator class to offer).
    pub block: u64,
    /// Bytes of the allocation buffer the records (and D's inserts) need.
    pub alloc: u64,
}

/// Checks `o` and sizes the run.
pub fn sizes(o: &Opts) -> Result<Sizes> {
    if o.records < 16 || o.threads == 0 || o.inflight == 0 {
        return Err(Error::Invalid(
            "bench ycsb: at least 16 records, 1 thread and 1 call in flight".into(),
        ));
    }
    for &w in &o.workloads {
        mix(w)?;
    }
    let inserts = if o.workloads.contains(&'d') {
        // D inserts 5 % of its operations: room for what a thread doing
        // 1 M operations per second (about twice what the soft fabric
        // does) inserts in every cell of D, and never less than half the
        // records or 200 000. The table is sized for them too (a table
        // sized for the records alone filled up in a short run).
        let cells = (o.rounds * 4 * o.dists.len().max(1)) as f64;
        let est = 0.05e6 * o.threads as f64 * o.budget.as_secs_f64() * cells;
        (o.records / 2).max(200_000).max(est.ceil() as u64)
    } else {
        0
    };
    let params = table_params(o.records + inserts);
    let region = params.region_bytes()?;
    // Blocks: header 8 + key (<= 24) + value + checksum 8, in 64 B units.
    let block = (16 + 24 + o.value_size).div_ceil(64) as u64 * 64;
    let alloc = (o.records + inserts) * block * 2 + (64 << 20);
    Ok(Sizes {
        params,
        region,
        block,
        alloc,
    })
}

/// The lease buffer a memory node needs for a table region of `region`
/// bytes (whole MiB, one spare).
pub fn lease_buffer_for(region: u64) -> u64 {
    region.div_ceil(1 << 20) * (1 << 20) + (1 << 20)
}

/// Runs everything `o` asks for in this process (memory node and client
/// node); the rows in run order.
pub fn run(o: &Opts) -> Result<Vec<YcsbRecord>> {
    let sz = sizes(o)?;
    let cfg = Config {
        machine_nr: 2,
        dir_nr: 1,
        client_threads: (o.threads + 2) as u16,
        cluster: format!(
            "bench-ycsb-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        ),
        fabric: "shm".into(),
        keeper: None,
        leases_per_dir: 4096,
        lease_buffer_size: lease_buffer_for(sz.region),
        alloc_buffer_size: sz.alloc,
        alloc_classes: vec![(sz.block, 1)],
        alloc_quota_per_node: sz.alloc,
        max_inflight: 256,
        allow_universal_rkey: true,
        ..Config::default()
    };
    let t0 = Instant::now();
    say(
        o,
        t0,
        &format!(
            "starting: {} records of {} B, table region {} MiB, allocation buffer {} MiB",
            o.records,
            o.value_size,
            sz.region >> 20,
            sz.alloc >> 20
        ),
    );
    let nodes = super::start_nodes(&cfg)?;
    let (server, client) = (&nodes[0], &nodes[1]);
    super::with_served_dir(server, client, || {
        run_on(client, &Peers::alone(client), 0, o, &sz.params, t0)
    })
}

/// One client process of a multi-process run (`patronus client ...
/// ycsb`): `rank` of `n` client processes, the table on memory node
/// `mem` (directory 0). Every process loads its share of the records and
/// runs every cell at the same time as the others; rank 0 returns the
/// rows merged over all of them (the others an empty list).
pub fn run_client(
    p: &Patronus,
    mem: u16,
    rank: usize,
    n: usize,
    o: &Opts,
) -> Result<Vec<YcsbRecord>> {
    let sz = sizes(o)?;
    let lay = p.register_client_thread()?.peer_memory(mem)?.layout;
    if lay.lease < sz.region || lay.alloc < sz.alloc {
        return Err(Error::Invalid(format!(
            "bench ycsb: memory node {mem} has a lease buffer of {} MiB and an allocation \
             buffer of {} MiB; {} records of {} B need {} MiB and {} MiB (start it with \
             `patronus serve --lease-buffer-mib {} --alloc-buffer-mib {} --alloc-class {} \
             --alloc-quota-mib {} --allow-universal-rkey`)",
            lay.lease >> 20,
            lay.alloc >> 20,
            o.records,
            o.value_size,
            sz.region.div_ceil(1 << 20),
            sz.alloc.div_ceil(1 << 20),
            lease_buffer_for(sz.region) >> 20,
            sz.alloc.div_ceil(1 << 20),
            sz.block,
            sz.alloc.div_ceil(1 << 20),
        )));
    }
    let co = Peers::new(p, rank, n)?;
    run_on(p, &co, mem, o, &sz.params, Instant::now())
}

/// The client processes of a run and this one's place among them: they
/// meet before every measurement (a keeper barrier), and each hands its
/// part of it to rank 0, which merges them. A process alone uses no
/// keeper.
pub struct Peers<'a> {
    p: &'a Patronus,
    rank: usize,
    n: usize,
    seq: std::cell::Cell<u64>,
}

impl<'a> Peers<'a> {
    /// This process alone.
    pub fn alone(p: &'a Patronus) -> Peers<'a> {
        Peers {
            p,
            rank: 0,
            n: 1,
            seq: std::cell::Cell::new(0),
        }
    }

    /// Rank `rank` of `n` client processes.
    pub fn new(p: &'a Patronus, rank: usize, n: usize) -> Result<Peers<'a>> {
        if rank >= n {
            return Err(Error::Invalid(format!(
                "bench ycsb: rank {rank} of {n} client processes"
            )));
        }
        Ok(Peers {
            rank,
            n,
            ..Peers::alone(p)
        })
    }

    fn next(&self) -> u64 {
        let s = self.seq.get();
        self.seq.set(s + 1);
        s
    }

    /// Waits until every client process got here.
    fn meet(&self) -> Result<()> {
        let s = self.next();
        if self.n > 1 {
            self.p
                .keeper_barrier_n(&format!("ycsb/meet/{s}"), self.n as u64)?;
        }
        Ok(())
    }

    /// Every process's part of a measurement, at rank 0 (the others get
    /// their own part back).
    fn gather(&self, part: Part) -> Result<Vec<Part>> {
        let s = self.next();
        if self.n == 1 {
            return Ok(vec![part]);
        }
        let js = serde_json::to_vec(&part).map_err(|e| Error::Invalid(e.to_string()))?;
        self.p.put(&format!("ycsb/part/{s}/{}", self.rank), &js)?;
        if self.rank != 0 {
            return Ok(vec![part]);
        }
        (0..self.n)
            .map(|r| {
                let v = self.p.get(&format!("ycsb/part/{s}/{r}"))?;
                serde_json::from_slice(&v).map_err(|e| {
                    Error::Invalid(format!("bench ycsb: client process {r}'s results: {e}"))
                })
            })
            .collect()
    }
}

/// One process's part of a measurement, as it travels through the keeper.
#[derive(Serialize, Deserialize)]
struct Part {
    ops: [u64; 4],
    misses: u64,
    secs: f64,
    /// Per operation type: (latency ns, count) of the recorded values.
    hist: Vec<Vec<(u64, u64)>>,
}

impl Part {
    fn of(t: &Tally, secs: f64) -> Part {
        Part {
            ops: t.ops,
            misses: t.misses,
            secs,
            hist: t
                .hist
                .iter()
                .map(|h| {
                    h.iter_recorded()
                        .map(|v| (v.value_iterated_to(), v.count_at_value()))
                        .collect()
                })
                .collect(),
        }
    }

    /// The parts merged: operations and latencies of all, the longest
    /// time, and how many parts.
    fn merge(parts: &[Part]) -> Result<(Tally, f64, u64)> {
        let mut t = Tally::new()?;
        let mut secs = 0f64;
        for p in parts {
            for (i, h) in p.hist.iter().enumerate().take(4) {
                for &(v, c) in h {
                    let _ = t.hist[i].record_n(v.max(1), c);
                }
                t.ops[i] += p.ops[i];
            }
            t.misses += p.misses;
            secs = secs.max(p.secs);
        }
        Ok((t, secs, parts.len() as u64))
    }
}

/// Runs YCSB with the memory node and `processes` client nodes each in a
/// process of its own, through memcached (`keeper`, or one started for
/// the run): `exe serve` with the buffers the run needs and `exe client
/// ... ycsb` per client node; the rows client rank 0 merged (on its
/// stdout as JSON). Every child is killed and reaped on any error, and
/// the whole run is bounded in time.
pub fn run_processes(
    o: &Opts,
    processes: u16,
    exe: &std::path::Path,
    keeper: Option<String>,
) -> Result<Vec<YcsbRecord>> {
    use std::io::{BufReader, Read};
    use std::process::{Child, Command, Stdio};
    let sz = sizes(o)?;
    if processes == 0 {
        return Err(Error::Invalid(
            "bench ycsb: at least one client process".into(),
        ));
    }
    let mut own = None;
    let keeper = match keeper {
        Some(k) => k,
        None => {
            let m = super::start_memcached()?;
            let url = m.1.clone();
            own = Some(m);
            url
        }
    };
    let cluster = format!(
        "ycsb-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    );
    let machines = (processes + 1).to_string();
    let mib = |b: u64| b.div_ceil(1 << 20).to_string();
    let node = |threads: usize| -> Vec<String> {
        [
            "--keeper",
            &keeper,
            "--fabric",
            "shm",
            "--machines",
            &machines,
            "--cluster",
            &cluster,
            "--threads",
            &(threads + 2).to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    struct Reap(Vec<Child>);
    impl Drop for Reap {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut kids = Reap(Vec::new());
    let mut serve = vec!["serve".to_string()];
    serve.extend(node(o.threads));
    serve.extend([
        "--lease-buffer-mib".into(),
        mib(lease_buffer_for(sz.region)),
        "--alloc-buffer-mib".into(),
        mib(sz.alloc),
        "--alloc-class".into(),
        sz.block.to_string(),
        "--alloc-quota-mib".into(),
        mib(sz.alloc),
        "--allow-universal-rkey".into(),
    ]);
    kids.0.push(
        Command::new(exe)
            .args(&serve)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| Error::io(format!("spawning {} serve", exe.display()), e))?,
    );
    let mut client = vec!["client".to_string()];
    client.extend(node(o.threads));
    client.extend(
        [
            "ycsb",
            "--json",
            "--records",
            &o.records.to_string(),
            "--value-size",
            &o.value_size.to_string(),
            "--threads",
            &o.threads.to_string(),
            "--inflight",
            &o.inflight.to_string(),
            "--seconds",
            &o.budget.as_secs_f64().to_string(),
            "--rounds",
            &o.rounds.to_string(),
            "--dist",
            match (
                o.dists.contains(&Dist::Zipfian),
                o.dists.contains(&Dist::Uniform),
            ) {
                (true, true) => "both",
                (false, true) => "uniform",
                _ => "zipfian",
            },
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    for w in &o.workloads {
        client.extend(["--workload".to_string(), w.to_string()]);
    }
    if !o.handles {
        client.push("--no-handles".into());
    }
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for _ in 0..processes {
        let mut c = Command::new(exe)
            .args(&client)
            .stdout(Stdio::piped())
            .stderr(if o.progress {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .map_err(|e| Error::io(format!("spawning {} client", exe.display()), e))?;
        let so = c.stdout.take();
        kids.0.push(c);
        let tx = tx.clone();
        std::thread::spawn(move || {
            if let Some(so) = so {
                let mut all = String::new();
                let _ = BufReader::new(so).read_to_string(&mut all);
                let _ = tx.send(all);
            }
        });
    }
    drop(tx);
    // Bounded: start-up and loading, then every cell's time with slack.
    let cells = (o.workloads.len() * o.dists.len() + if o.handles { 2 } else { 0 })
        * o.rounds.max(1)
        * MODES.len();
    let limit = Duration::from_secs(180 + o.records / 5_000)
        + (o.budget + Duration::from_secs(10)) * cells as u32;
    let t0 = Instant::now();
    let mut outs = Vec::new();
    let mut failed = Vec::new();
    loop {
        let mut running = false;
        for (i, c) in kids.0.iter_mut().enumerate().skip(1) {
            match c.try_wait() {
                Ok(Some(st)) if !st.success() => {
                    failed.push(format!("client process {i} exited with {st}"))
                }
                Ok(Some(_)) => {}
                _ => running = true,
            }
        }
        if !failed.is_empty() {
            break;
        }
        if !running {
            break;
        }
        if t0.elapsed() > limit {
            failed.push(format!("client processes still running after {limit:?}"));
            break;
        }
        if let Ok(Some(st)) = kids.0[0].try_wait() {
            failed.push(format!("the memory node exited early with {st}"));
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !failed.is_empty() {
        return Err(Error::Invalid(format!("bench ycsb: {}", failed.join("; "))));
    }
    while let Ok(s) = rx.recv_timeout(Duration::from_secs(10)) {
        outs.push(s);
    }
    // The memory node ends once every client finished.
    let t1 = Instant::now();
    while t1.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = kids.0[0].try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(kids);
    drop(own);
    let mut recs = Vec::new();
    for l in outs.iter().flat_map(|s| s.lines()) {
        if let Ok(r) = serde_json::from_str::<YcsbRecord>(l) {
            recs.push(r);
        }
    }
    if recs.is_empty() {
        return Err(Error::Invalid(
            "bench ycsb: the client processes reported no rows".into(),
        ));
    }
    Ok(recs)
}

fn run_on(
    client: &Patronus,
    co: &Peers,
    mem: u16,
    o: &Opts,
    params: &KvParams,
    t0: Instant,
) -> Result<Vec<YcsbRecord>> {
    // Rank 0 speaks for the run.
    let quiet;
    let o = if co.rank == 0 {
        o
    } else {
        quiet = Opts {
            progress: false,
            ..o.clone()
        };
        &quiet
    };
    let sh = Shared {
        mem,
        records: o.records,
        inserts: AtomicU64::new(0),
        rank: co.rank as u64,
        stride: co.n as u64,
        acked: AtomicU64::new(o.records),
        version: AtomicU64::new(1),
    };
    if co.rank == 0 {
        let mut ct = client.register_client_thread()?;
        let mut t = KvTable::create(&mut ct, mem, 0, params.clone(), Protection::Lease)?;
        t.relinquish(&mut ct)?;
    }
    co.meet()?;
    // This process's share of the records.
    let share = (co.rank as u64 * o.records / co.n as u64)
        ..((co.rank as u64 + 1) * o.records / co.n as u64);
    load(client, &sh, share, o, params, t0)?;
    co.meet()?;
    let mut out = Vec::new();
    // D inserts: it runs last.
    let mut ws = o.workloads.clone();
    ws.sort_by_key(|&w| (w == 'd', w));
    for &w in &ws {
        for &dist in &o.dists {
            // Per mode: every round's samples, and per round the rate of
            // each operation type and of all.
            let mut acc: Vec<(Tally, f64, Vec<[f64; 5]>, u64)> = Vec::new();
            for _ in MODES {
                acc.push((Tally::new()?, 0.0, Vec::new(), 0));
            }
            for round in 0..o.rounds.max(1) {
                for k in 0..MODES.len() {
                    let mi = (k + round) % MODES.len();
                    let mode = MODES[mi];
                    say(
                        o,
                        t0,
                        &format!(
                            "ycsb-{w} {} {} (round {}/{})",
                            dist.name(),
                            mode_name(mode),
                            round + 1,
                            o.rounds.max(1)
                        ),
                    );
                    co.meet()?;
                    let (t, secs) = cell(client, o, params, &sh, w, dist, mode)?;
                    let (t, secs, procs) = Part::merge(&co.gather(Part::of(&t, secs))?)?;
                    let s = secs.max(1e-9);
                    let mut r = [0f64; 5];
                    for (i, x) in r.iter_mut().take(4).enumerate() {
                        *x = t.ops[i] as f64 / s / 1e6;
                    }
                    r[4] = t.ops.iter().sum::<u64>() as f64 / s / 1e6;
                    acc[mi].0.merge(&t);
                    acc[mi].1 += secs;
                    acc[mi].2.push(r);
                    acc[mi].3 = procs;
                }
            }
            let first = out.len();
            for (mi, (t, secs, rates, procs)) in acc.iter().enumerate() {
                out.extend(rows(w, dist, MODES[mi], t, *secs, rates, *procs)?);
            }
            ratios(&mut out[first..]);
        }
    }
    if o.handles {
        for shape in ["bootstrap", "mortgage"] {
            // Per mode: cycles, seconds and latencies over all rounds.
            let mut acc: Vec<(Tally, f64, u64)> = Vec::new();
            for _ in MODES {
                acc.push((Tally::new()?, 0.0, 0));
            }
            for round in 0..o.rounds.max(1) {
                for k in 0..MODES.len() {
                    let mi = (k + round) % MODES.len();
                    let mode = MODES[mi];
                    say(
                        o,
                        t0,
                        &format!("{shape} {} (round {})", mode_name(mode), round + 1),
                    );
                    co.meet()?;
                    let (t, secs) = handles(client, o, params, &sh, shape, mode)?;
                    let (t, secs, procs) = Part::merge(&co.gather(Part::of(&t, secs))?)?;
                    acc[mi].0.merge(&t);
                    acc[mi].1 += secs;
                    acc[mi].2 = procs;
                }
            }
            let first = out.len();
            for (mi, (t, secs, procs)) in acc.iter().enumerate() {
                let n = t.ops[0];
                let rate = n as f64 / secs.max(1e-9) / 1e6;
                out.push(YcsbRecord {
                    workload: shape.into(),
                    dist: if shape == "mortgage" { "zipfian" } else { "-" }.into(),
                    mode: mode_name(MODES[mi]).into(),
                    op: "handle".into(),
                    ops: n,
                    mops: rate,
                    mops_pooled: rate,
                    vs_unprotected: 0.0,
                    p50_ns: t.hist[0].value_at_quantile(0.5),
                    p99_ns: t.hist[0].value_at_quantile(0.99),
                    misses: 0,
                    processes: *procs,
                });
            }
            ratios(&mut out[first..]);
        }
    }
    say(o, t0, "done");
    Ok(if co.rank == 0 { out } else { Vec::new() })
}

/// Loads records `share` from `threads` threads, `put_many` 64 at a
/// time.
fn load(
    client: &Patronus,
    sh: &Shared,
    share: std::ops::Range<u64>,
    o: &Opts,
    params: &KvParams,
    t0: Instant,
) -> Result<()> {
    let loaded = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let total = share.end - share.start;
    let per = total.div_ceil(o.threads as u64);
    let started = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = (0..o.threads as u64)
            .map(|ti| {
                let (loaded, stop) = (&loaded, &stop);
                let from = share.start;
                s.spawn(move || -> Result<()> {
                    let r = (|| {
                        let mut ct = client.register_client_thread()?;
                        let mut t = KvTable::open(
                            &mut ct,
                            sh.mem,
                            0,
                            params.clone(),
                            Protection::Lease,
                            Access::ReadWrite,
                        )?;
                        let end = (from + (ti + 1) * per).min(from + total);
                        let mut n = from + ti * per;
                        while n < end && !stop.load(Ordering::Relaxed) {
                            let m = (n + 64).min(end);
                            let ks: Vec<Vec<u8>> = (n..m).map(key_of).collect();
                            let vs: Vec<Vec<u8>> =
                                (n..m).map(|i| value_of(i, 0, o.value_size)).collect();
                            let items: Vec<(&[u8], &[u8])> =
                                ks.iter().zip(&vs).map(|(k, v)| (&k[..], &v[..])).collect();
                            t.put_many(&mut ct, &items)?;
                            loaded.fetch_add(m - n, Ordering::Relaxed);
                            n = m;
                        }
                        t.relinquish(&mut ct)
                    })();
                    if r.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        let mut last = Instant::now();
        while !hs.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
            if last.elapsed() >= Duration::from_secs(1) {
                last = Instant::now();
                let n = loaded.load(Ordering::Relaxed);
                say(
                    o,
                    t0,
                    &format!(
                        "loading: {n}/{total} records ({:.0} records/s)",
                        n as f64 / started.elapsed().as_secs_f64()
                    ),
                );
            }
        }
        for h in hs {
            h.join()
                .map_err(|_| Error::Invalid("loader thread panicked".into()))??;
        }
        Ok(())
    })?;
    say(
        o,
        t0,
        &format!(
            "loaded {total} records in {:.1} s",
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}

/// One round of a (workload, distribution, mode) cell: `threads` threads
/// on fresh handles for `budget`; what they did and the longest thread's
/// time.
fn cell(
    client: &Patronus,
    o: &Opts,
    params: &KvParams,
    sh: &Shared,
    w: char,
    dist: Dist,
    mode: Protection,
) -> Result<(Tally, f64)> {
    let total = Mutex::new(Tally::new()?);
    let start = std::sync::Barrier::new(o.threads);
    let wall = Mutex::new(Duration::ZERO);
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = (0..o.threads as u64)
            .map(|ti| {
                let (total, start, wall) = (&total, &start, &wall);
                s.spawn(move || -> Result<()> {
                    let mut ct = client.register_client_thread()?;
                    let opened =
                        KvTable::open(&mut ct, sh.mem, 0, params.clone(), mode, Access::ReadWrite);
                    // Every thread reaches the barrier, opened or not.
                    start.wait();
                    let mut t = opened?;
                    let t0 = Instant::now();
                    let seed = (ti + 1) * 0x1234_5678 + w as u64 * 977 + mode as u64;
                    let r = worker(&mut ct, &mut t, w, dist, sh, o, seed, t0 + o.budget, None);
                    let el = t0.elapsed();
                    t.relinquish(&mut ct)?;
                    let tally = r?;
                    total
                        .lock()
                        .map_err(|_| Error::Invalid("tally lock".into()))?
                        .merge(&tally);
                    let mut wl = wall
                        .lock()
                        .map_err(|_| Error::Invalid("wall lock".into()))?;
                    *wl = (*wl).max(el);
                    Ok(())
                })
            })
            .collect();
        for h in hs {
            h.join()
                .map_err(|_| Error::Invalid("ycsb thread panicked".into()))??;
        }
        Ok(())
    })?;
    let tally = total
        .into_inner()
        .map_err(|_| Error::Invalid("tally lock".into()))?;
    let secs = wall
        .into_inner()
        .map_err(|_| Error::Invalid("wall lock".into()))?
        .as_secs_f64();
    Ok((tally, secs))
}

/// The rows of one mode's cell: "all", then per operation type.
fn rows(
    w: char,
    dist: Dist,
    mode: Protection,
    tally: &Tally,
    secs: f64,
    rates: &[[f64; 5]],
    processes: u64,
) -> Result<Vec<YcsbRecord>> {
    let secs = secs.max(1e-9);
    let median = |i: usize| {
        let mut v: Vec<f64> = rates.iter().map(|r| r[i]).collect();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    };
    let row = |op: &str, i: usize, ops: u64, p50: u64, p99: u64| YcsbRecord {
        workload: format!("ycsb-{w}"),
        dist: dist.name().into(),
        mode: mode_name(mode).into(),
        op: op.into(),
        ops,
        mops: median(i),
        mops_pooled: ops as f64 / secs / 1e6,
        vs_unprotected: 0.0,
        p50_ns: p50,
        p99_ns: p99,
        misses: tally.misses,
        processes,
    };
    let mut all = Tally::new()?;
    for i in 0..4 {
        let _ = all.hist[0].add(&tally.hist[i]);
    }
    let n: u64 = tally.ops.iter().sum();
    let mut out = vec![row(
        "all",
        4,
        n,
        all.hist[0].value_at_quantile(0.5),
        all.hist[0].value_at_quantile(0.99),
    )];
    for (op, name) in OPS {
        let i = op as usize;
        if tally.ops[i] > 0 {
            out.push(row(
                name,
                i,
                tally.ops[i],
                tally.hist[i].value_at_quantile(0.5),
                tally.hist[i].value_at_quantile(0.99),
            ));
        }
    }
    Ok(out)
}

/// The bootstrap (open + close, no I/O) or mortgage (open, 8 operations
/// of YCSB-A, close) shape: `threads` threads cycling handles for
/// `budget`; the cycles and their latencies (as the first operation type
/// of a tally), and the time taken.
fn handles(
    client: &Patronus,
    o: &Opts,
    params: &KvParams,
    sh: &Shared,
    shape: &str,
    mode: Protection,
) -> Result<(Tally, f64)> {
    let total = Mutex::new((
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
            .map_err(|e| Error::Invalid(format!("histogram: {e}")))?,
        0u64,
    ));
    let t_all = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = (0..o.threads as u64)
            .map(|ti| {
                let total = &total;
                s.spawn(move || -> Result<()> {
                    let mut ct = client.register_client_thread()?;
                    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
                        .map_err(|e| Error::Invalid(format!("histogram: {e}")))?;
                    let until = Instant::now() + o.budget;
                    let mut n = 0u64;
                    let one = Opts {
                        inflight: 1,
                        ..o.clone()
                    };
                    while Instant::now() < until {
                        let t0 = Instant::now();
                        let mut t = KvTable::open(
                            &mut ct,
                            sh.mem,
                            0,
                            params.clone(),
                            mode,
                            Access::ReadWrite,
                        )?;
                        let r = if shape == "mortgage" {
                            worker(
                                &mut ct,
                                &mut t,
                                'a',
                                Dist::Zipfian,
                                sh,
                                &one,
                                (ti + 1) * 31 + n,
                                until + Duration::from_secs(60),
                                Some(8),
                            )
                            .map(|_| ())
                        } else {
                            Ok(())
                        };
                        t.relinquish(&mut ct)?;
                        r?;
                        let _ = h.record(t0.elapsed().as_nanos() as u64);
                        n += 1;
                    }
                    let mut tot = total
                        .lock()
                        .map_err(|_| Error::Invalid("tally lock".into()))?;
                    let _ = tot.0.add(&h);
                    tot.1 += n;
                    Ok(())
                })
            })
            .collect();
        for h in hs {
            h.join()
                .map_err(|_| Error::Invalid("handle thread panicked".into()))??;
        }
        Ok(())
    })?;
    let secs = t_all.elapsed().as_secs_f64().max(1e-9);
    let (h, n) = total
        .into_inner()
        .map_err(|_| Error::Invalid("tally lock".into()))?;
    let mut t = Tally::new()?;
    t.ops[0] = n;
    t.hist[0] = h;
    Ok((t, secs))
}

/// Fills `vs_unprotected` of a cell's rows.
fn ratios(rows: &mut [YcsbRecord]) {
    let base: Vec<(String, f64)> = rows
        .iter()
        .filter(|r| r.mode == "unprotected")
        .map(|r| (r.op.clone(), r.mops))
        .collect();
    for r in rows {
        if let Some((_, b)) = base.iter().find(|(op, _)| *op == r.op) {
            r.vs_unprotected = r.mops / b.max(1e-12);
        }
    }
}

/// A table: one row per workload, distribution, mode and operation type
/// ("Mops med": the median of the rounds' rates, which the ratios use;
/// "Mops all": all rounds' operations over all their time), then per
/// workload cell the lease mode against unprotected and rpc.
pub fn print_table(w: &mut dyn Write, recs: &[YcsbRecord]) -> std::io::Result<()> {
    writeln!(
        w,
        "{:<10} {:<8} {:<12} {:<7} {:>10} {:>9} {:>9} {:>9} {:>10} {:>10} {:>7}",
        "workload",
        "dist",
        "mode",
        "op",
        "ops",
        "Mops med",
        "vs unprot",
        "Mops all",
        "p50 us",
        "p99 us",
        "misses"
    )?;
    for r in recs {
        writeln!(
            w,
            "{:<10} {:<8} {:<12} {:<7} {:>10} {:>9.4} {:>8.3}x {:>9.4} {:>10.1} {:>10.1} {:>7}",
            r.workload,
            r.dist,
            r.mode,
            r.op,
            r.ops,
            r.mops,
            r.vs_unprotected,
            r.mops_pooled,
            r.p50_ns as f64 / 1e3,
            r.p99_ns as f64 / 1e3,
            r.misses
        )?;
    }
    writeln!(w)?;
    let mut cells: Vec<(&str, &str)> = Vec::new();
    for r in recs {
        if !cells.contains(&(&r.workload, &r.dist)) {
            cells.push((&r.workload, &r.dist));
        }
    }
    for (wl, d) in cells {
        let get = |m: &str| {
            recs.iter()
                .find(|r| {
                    r.workload == wl
                        && r.dist == d
                        && r.mode == m
                        && (r.op == "all" || r.op == "handle")
                })
                .map(|r| r.mops)
        };
        if let (Some(u), Some(l), Some(m), Some(p)) =
            (get("unprotected"), get("lease"), get("mr"), get("rpc"))
        {
            writeln!(
                w,
                "{wl} {d}: lease/unprotected {:.3}x, lease/rpc {:.2}x, mr/unprotected {:.3}x",
                l / u.max(1e-12),
                l / p.max(1e-12),
                m / u.max(1e-12)
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_ycsb() {
        // YCSB Utils.fnvhash64(0): FNV-1 of eight zero bytes.
        let mut h = FNV_OFFSET;
        for _ in 0..8 {
            h = h.wrapping_mul(FNV_PRIME);
        }
        assert_eq!(fnvhash64(0), (h as i64).unsigned_abs());
        assert_ne!(fnvhash64(1), fnvhash64(2));
    }

    #[test]
    fn scrambled_zeta_constant_is_zeta_of_its_items() {
        // The constant YCSB hard-codes, recomputed over a prefix and
        // bounded by the tail integral (the full sum is 10^10 terms).
        let prefix = zeta(0, 1_000_000, 0.99, 0.0);
        let tail = (1e10f64.powf(0.01) - 1e6f64.powf(0.01)) / 0.01;
        assert!(
            (prefix + tail - SCRAMBLED_ZETAN).abs() < 0.01,
            "{}",
            prefix + tail
        );
    }

    #[test]
    fn zipfian_is_skewed_and_in_range() {
        let mut z = Zipfian::new(1000, 0.99);
        let mut rng = Rng::new(7);
        let mut counts = vec![0u64; 1000];
        for _ in 0..200_000 {
            counts[z.next(&mut rng) as usize] += 1;
        }
        // P(0) = 1/zeta(1000) ~ 0.134; item 1 about half that.
        let p0 = counts[0] as f64 / 200_000.0;
        assert!((p0 - 1.0 / zeta(0, 1000, 0.99, 0.0)).abs() < 0.01, "{p0}");
        assert!(counts[1] * 3 > counts[0] && counts[1] < counts[0]);
        let mut s = ScrambledZipfian::new(1000);
        let mut c2 = vec![0u64; 1000];
        for _ in 0..100_000 {
            c2[s.next(&mut rng) as usize] += 1;
        }
        let max = *c2.iter().max().unwrap_or(&0);
        // Skewed: the hottest record gets several percent of the draws.
        assert!(max > 3_000, "{max}");
        // Growing the item count keeps values in range.
        for n in [1000, 1500, 4000] {
            for _ in 0..1000 {
                assert!(z.next_in(&mut rng, n) < n);
            }
        }
    }
}
