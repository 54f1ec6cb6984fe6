//! The `patronus` command line: demo, bench, info, and the internal child
//! processes the benchmarks start.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use patronus::bench::inflight::Layout;
use patronus::bench::{self, fabric};
use patronus::fabric::soft::LinkKind;

#[derive(Parser)]
#[command(
    name = "patronus",
    version,
    about = "Protected remote memory with leases (Patronus, FAST'23) on a software RNIC or RDMA"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum FabricArg {
    Shm,
    Tcp,
    /// RDMA hardware (build with --features verbs); `bench lease` only.
    Verbs,
    All,
}

/// Where `bench inflight` runs the memory node.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LayoutArg {
    /// In this process.
    Inproc,
    /// In a child process.
    Process,
    /// Both, one set of rows each.
    Both,
}

#[derive(Subcommand)]
enum Cmd {
    /// Walk through protected remote memory on the embedded default
    /// (in-process, soft NIC, shm link unless PATRONUS_FABRIC=tcp).
    Demo,
    /// Benchmarks, each reported against a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// Version, ABI version, compiled-in fabrics, RDMA devices found and
    /// shared-memory space (/dev/shm).
    Info {
        /// One JSON object instead of lines of text.
        #[arg(long)]
        json: bool,
    },
    /// Runs a memory node of a multi-process cluster: serves every
    /// directory until every node called finished(key).
    Serve {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Runs a client node of a multi-process cluster with a workload.
    Client {
        #[command(flatten)]
        node: NodeArgs,
        #[command(subcommand)]
        workload: WorkloadCmd,
    },
    /// Runs the fabric conformance suite (the same checks CI runs on the
    /// soft NIC) against a fabric: two NICs in this process.
    Selftest {
        /// shm, tcp (soft NIC links) or verbs (RDMA hardware).
        #[arg(long, default_value = "shm")]
        fabric: String,
        /// Forged rkeys to try.
        #[arg(long, default_value_t = 10_000)]
        forged: u64,
    },
    #[command(name = "__floor", hide = true)]
    Floor { args: Vec<String> },
    #[command(name = "__bench-node", hide = true)]
    BenchNode { link: String },
    #[command(name = "__inflight-node", hide = true)]
    InflightNode { args: Vec<String> },
    #[command(name = "__soak-client", hide = true)]
    SoakClient { args: String },
}

/// Cluster membership shared by `serve` and `client`.
#[derive(clap::Args, Clone)]
struct NodeArgs {
    /// memcached://HOST:PORT (default: env PATRONUS_KEEPER; required for
    /// several processes).
    #[arg(long, env = "PATRONUS_KEEPER")]
    keeper: Option<String>,
    /// shm or tcp.
    #[arg(long, env = "PATRONUS_FABRIC", default_value = "shm")]
    fabric: String,
    /// Nodes in the cluster (memory and client nodes together).
    #[arg(long, default_value_t = 2)]
    machines: u16,
    /// Directories (server threads) per memory node.
    #[arg(long, default_value_t = 1)]
    dirs: u16,
    /// Client thread slots per node.
    #[arg(long, default_value_t = 4)]
    threads: u16,
    /// Key namespace in the keeper (runs of one name share nothing).
    #[arg(long, default_value = "default")]
    cluster: String,
    /// Leases (and protection regions) per directory.
    #[arg(long, default_value_t = 4096)]
    leases_per_dir: u32,
    /// Timeout of every RPC, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    rpc_timeout_ms: u64,
    /// tcp fabric listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Publish the universal rkey (an UNPROTECTED baseline for benchmarks:
    /// any client then reaches the lease and allocation buffers without a
    /// lease; never the protection regions or the time area).
    #[arg(long)]
    allow_universal_rkey: bool,
    /// Sync key of server_serve / finished.
    #[arg(long, default_value_t = 0)]
    key: u64,
    /// Lease buffer of a memory node, MiB (leases and kv tables live there).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    lease_buffer_mib: u64,
    /// Allocation buffer of a memory node, MiB (`alloc` blocks, kv values).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    alloc_buffer_mib: u64,
    /// An allocator class of the memory node's directories, block bytes
    /// (repeatable, equal shares; default 64, 4096 and 2 MiB).
    #[arg(long = "alloc-class", value_parser = clap::value_parser!(u64).range(8..))]
    alloc_classes: Vec<u64>,
    /// Bytes one client node may hold allocated per directory, MiB (0:
    /// half the directory's slice).
    #[arg(long, default_value_t = 0)]
    alloc_quota_mib: u64,
    /// Synchronise clocks by measurement even with nodes on the same kernel
    /// (whose offset is exactly 0): exercises the estimator and re-sync.
    #[arg(long)]
    measured_time_sync: bool,
    /// Period of the clock re-sync of nodes other than the time parent, in
    /// milliseconds (at least 10).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    time_resync_ms: u64,
    /// A node whose heartbeat (through the keeper) stood still this many
    /// milliseconds is dead: a memory node then stops waiting for it.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(600..))]
    peer_dead_after_ms: u64,
}

impl NodeArgs {
    fn config(&self) -> patronus::node::Config {
        patronus::node::Config {
            machine_nr: self.machines,
            dir_nr: self.dirs,
            client_threads: self.threads,
            leases_per_dir: self.leases_per_dir,
            fabric: self.fabric.clone(),
            keeper: self.keeper.clone(),
            listen_addr: self.listen.clone(),
            cluster: self.cluster.clone(),
            rpc_timeout: Duration::from_millis(self.rpc_timeout_ms.max(1)),
            allow_universal_rkey: self.allow_universal_rkey,
            measured_time_sync: self.measured_time_sync,
            time_resync: Duration::from_millis(self.time_resync_ms),
            peer_dead_after: Duration::from_millis(self.peer_dead_after_ms),
            lease_buffer_size: self.lease_buffer_mib << 20,
            alloc_buffer_size: self.alloc_buffer_mib << 20,
            alloc_classes: if self.alloc_classes.is_empty() {
                patronus::node::Config::default().alloc_classes
            } else {
                self.alloc_classes.iter().map(|&b| (b, 1)).collect()
            },
            alloc_quota_per_node: self.alloc_quota_mib << 20,
            ..Default::default()
        }
    }
}

/// Where `kv-split-die` stops its split.
#[derive(Clone, Copy, ValueEnum)]
enum PhaseArg {
    /// The subtable frozen, the new subtables filled.
    Frozen,
    /// The directory names the new subtables; the split still pending.
    Published,
}

#[derive(Subcommand, Clone)]
enum WorkloadCmd {
    /// Concurrent FAA under write leases; prints faa_total=.
    Faa {
        #[arg(long, default_value_t = 4)]
        threads: u16,
        #[arg(long, default_value_t = 10_000)]
        ops: u64,
    },
    /// Holds leases, prints held=, idles until killed.
    Hold {
        #[arg(long, default_value_t = 1000)]
        leases: u32,
        #[arg(long, default_value_t = 200)]
        term_ms: u64,
        #[arg(long, default_value_t = 60)]
        idle_s: u64,
    },
    /// Waits for keys held and killed, then measures revocation.
    Watch {
        #[arg(long, default_value_t = 30)]
        limit_s: u64,
    },
    /// Reads until the memory node disappears; reports error latencies.
    DeadServer {
        #[arg(long, default_value_t = 30)]
        limit_s: u64,
    },
    /// Pattern write/read on every directory of every memory node.
    Multi,
    /// YCSB on the protected hash table of the first memory node with
    /// every client node of the cluster: each loads its share, all run
    /// every cell together, the lowest client node prints the merged rows.
    Ycsb(YcsbArgs),
    /// Creates a small hash table, fills it, dies in the middle of a
    /// split holding the resize lock (prints died lock_ddl_ns=), idles
    /// until killed (fault tests; see kv-recover).
    KvSplitDie {
        #[arg(long, default_value_t = 150)]
        keys: u64,
        #[arg(long, default_value_t = 1000)]
        lock_ms: u64,
        #[arg(long, value_enum, default_value = "frozen")]
        phase: PhaseArg,
        #[arg(long, default_value_t = 60)]
        idle_s: u64,
    },
    /// Waits for kv-split-die's node to die (keys died, killed), finishes
    /// its split, checks every key (prints recovered_late_ms=, kv_checked=).
    KvRecover {
        #[arg(long, default_value_t = 150)]
        keys: u64,
        #[arg(long, default_value_t = 1000)]
        lock_ms: u64,
    },
    /// Rounds of acquire / FAA / pattern write + read-verify / relinquish
    /// for a bounded time, tolerating errors; prints counts (fault tests).
    FaultLoop {
        /// Stops after this many seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Stops after this many rounds.
        #[arg(long, default_value_t = 1_000_000)]
        rounds: u64,
        /// Term of every lease, in milliseconds.
        #[arg(long, default_value_t = 500)]
        term_ms: u64,
        /// FAAs per round.
        #[arg(long, default_value_t = 4)]
        faa_per_round: u64,
        /// Client nodes that meet at the end, before this one reads the
        /// FAA word (faa_word=); 0: no final read.
        #[arg(long, default_value_t = 0)]
        peers: u64,
        /// Wait for this many live leases on the memory node, then report
        /// when they are gone (revoked_unix_us=); 0: off.
        #[arg(long, default_value_t = 0)]
        watch_live: u64,
        /// Period of the progress lines, in milliseconds.
        #[arg(long, default_value_t = 100)]
        progress_ms: u64,
        /// Also stop early once standard input reads `stop` or ends.
        #[arg(long)]
        stdin_stop: bool,
    },
}

impl From<WorkloadCmd> for patronus::app::Workload {
    fn from(w: WorkloadCmd) -> Self {
        use patronus::app::Workload as W;
        match w {
            WorkloadCmd::Faa { threads, ops } => W::Faa { threads, ops },
            WorkloadCmd::Hold {
                leases,
                term_ms,
                idle_s,
            } => W::Hold {
                leases,
                term_ms,
                idle_s,
            },
            WorkloadCmd::Watch { limit_s } => W::Watch { limit_s },
            WorkloadCmd::DeadServer { limit_s } => W::DeadServer { limit_s },
            WorkloadCmd::Multi => W::Multi,
            WorkloadCmd::Ycsb(a) => W::Ycsb {
                opts: a.opts(),
                json: a.json,
            },
            WorkloadCmd::KvSplitDie {
                keys,
                lock_ms,
                phase,
                idle_s,
            } => W::KvSplitDie {
                keys,
                lock_ms,
                phase: match phase {
                    PhaseArg::Frozen => patronus::kv::SplitPhase::Frozen,
                    PhaseArg::Published => patronus::kv::SplitPhase::Published,
                },
                idle_s,
            },
            WorkloadCmd::KvRecover { keys, lock_ms } => W::KvRecover { keys, lock_ms },
            WorkloadCmd::FaultLoop {
                seconds,
                rounds,
                term_ms,
                faa_per_round,
                peers,
                watch_live,
                progress_ms,
                stdin_stop,
            } => W::FaultLoop(patronus::app::FaultLoop {
                seconds,
                rounds,
                term_ms,
                faa_per_round,
                peers,
                watch_live,
                progress_ms,
                stdin_stop,
            }),
        }
    }
}

#[derive(Subcommand)]
enum BenchCmd {
    /// READ/WRITE/CAS at 8 B, 64 B, 4 KiB, latency and pipelined, vs raw floors.
    Fabric {
        /// One JSON object per line instead of the table.
        #[arg(long)]
        json: bool,
        /// Which link.
        #[arg(long, value_enum, default_value = "all")]
        fabric: FabricArg,
        /// Small counts (CI smoke run).
        #[arg(long)]
        quick: bool,
        /// Ops per latency scenario (at least 1).
        #[arg(long, default_value_t = 200_000, allow_negative_numbers = true, value_parser = parse_count)]
        ops: u64,
        /// Time budget per scenario, seconds (more than 0).
        #[arg(long, default_value_t = 3.0, allow_negative_numbers = true, value_parser = parse_seconds)]
        seconds: f64,
        /// Only this operation (repeatable; default read, write and cas).
        #[arg(long = "op", value_parser = ["read", "write", "cas"])]
        only_ops: Vec<String>,
        /// Only this transfer size in bytes, 1 to 4096 (repeatable; default 8, 64, 4096).
        #[arg(long = "size", allow_negative_numbers = true, value_parser = parse_size)]
        only_sizes: Vec<u64>,
        /// Also write SVG charts into this directory (latency by size per fabric).
        #[arg(long, value_name = "DIR")]
        plot: Option<PathBuf>,
    },
    /// Lease cycle, protection competitors, extension, recovery and the
    /// protection overhead, each against a baseline of the same run.
    Lease {
        /// One JSON object per line instead of the table.
        #[arg(long)]
        json: bool,
        /// Which link.
        #[arg(long, value_enum, default_value = "shm")]
        fabric: FabricArg,
        /// Small counts (CI smoke run).
        #[arg(long)]
        quick: bool,
        /// Ops per scenario (at least 1).
        #[arg(long, default_value_t = 20_000, allow_negative_numbers = true, value_parser = parse_count)]
        ops: u64,
        /// Time budget per scenario, seconds (more than 0).
        #[arg(long, default_value_t = 2.0, allow_negative_numbers = true, value_parser = parse_seconds)]
        seconds: f64,
        /// Also write SVG charts into this directory (each variant against
        /// its group's baseline, per fabric).
        #[arg(long, value_name = "DIR")]
        plot: Option<PathBuf>,
        /// Only the per-memory-node acquire rate with this many client
        /// threads (repeatable), instead of the other scenarios.
        #[arg(long = "client-threads", value_parser = clap::value_parser!(u16).range(1..=64))]
        client_threads: Vec<u16>,
    },
    /// Calls in flight per client thread (1, 4, 16, 32): 64 B READs, lease
    /// cycles with 2/1/0 binds, the concurrent task, and the fabric's own
    /// pipelined READ, each against its 1-in-flight rate.
    Inflight {
        /// One JSON object per line instead of the table.
        #[arg(long)]
        json: bool,
        /// Which link (shm or tcp).
        #[arg(long, value_enum, default_value = "shm")]
        fabric: FabricArg,
        /// Small counts (CI smoke run).
        #[arg(long)]
        quick: bool,
        /// Time per measurement, seconds (more than 0).
        #[arg(long, default_value_t = 1.0, allow_negative_numbers = true, value_parser = parse_seconds)]
        seconds: f64,
        /// Calls in flight to measure (repeatable; default 1, 4, 16, 32).
        #[arg(long = "depth", value_parser = clap::value_parser!(u64).range(1..=64))]
        depths: Vec<u64>,
        /// Scenarios to run (repeatable; default all): read, cycle-2bind,
        /// cycle-1bind, cycle-0bind, task, node-acquire, floor, floor-chain,
        /// floor-api.
        #[arg(long = "only")]
        only: Vec<String>,
        /// Measure each scenario and depth this many times and report the
        /// best (for a busy host: the run least disturbed by others).
        #[arg(long, default_value_t = 1)]
        best_of: usize,
        /// Where the memory node runs: inproc (this process), process (a
        /// child process of this binary), or both (both sets of rows).
        #[arg(long, value_enum, default_value = "inproc")]
        layout: LayoutArg,
        /// The keeper the process layout's two nodes meet through
        /// (memcached://HOST:PORT; default: a private memcached started
        /// for the run).
        #[arg(long)]
        keeper: Option<String>,
    },
    /// YCSB core workloads A, B, C, D, F on the protected hash table
    /// (src/kv), every protection mode side by side (unprotected, lease,
    /// mr, rpc), plus the original's RACE bootstrap and mortgage shapes.
    Ycsb {
        #[command(flatten)]
        a: YcsbArgs,
        /// Client processes, each a client node of its own, with the
        /// memory node (`patronus serve`) in another process, through
        /// memcached; rank 0's merged results are reported (0: one
        /// process, in-process keeper).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=16))]
        processes: u16,
        /// memcached://HOST:PORT for --processes (default: start memcached
        /// from PATH for the run).
        #[arg(long)]
        keeper: Option<String>,
    },
    /// A long run of acquisitions, data calls, extensions and expiry from
    /// several threads and processes: RSS, fds, live leases and error
    /// counts per interval; fails on unexpected outcomes or growth.
    Soak(SoakArgs),
}

/// `bench ycsb`'s and `client ycsb`'s workload options.
#[derive(clap::Args, Clone)]
struct YcsbArgs {
    /// One JSON object per line instead of the table.
    #[arg(long)]
    json: bool,
    /// Records loaded (at least 16).
    #[arg(long, default_value_t = 1_000_000, allow_negative_numbers = true, value_parser = parse_count)]
    records: u64,
    /// Value bytes per record (16 to 4096).
    #[arg(long = "value-size", default_value_t = 64, value_parser = clap::value_parser!(u64).range(16..=4096))]
    value_size: u64,
    /// Client threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=32))]
    threads: u64,
    /// Operations in flight per client thread.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=128))]
    inflight: u64,
    /// Time per workload, distribution, mode and round, seconds (more than 0).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true, value_parser = parse_seconds)]
    seconds: f64,
    /// Rounds per workload: each runs every mode, in an order rotated
    /// by one per round; rates are the median of the rounds', latencies
    /// over all rounds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=100))]
    rounds: u64,
    /// Workload (repeatable; default a, b, c, d, f).
    #[arg(long = "workload", value_parser = ["a", "b", "c", "d", "f"])]
    workloads: Vec<String>,
    /// Request distribution.
    #[arg(long, value_parser = ["zipfian", "uniform", "both"], default_value = "zipfian")]
    dist: String,
    /// Leave out the bootstrap and mortgage shapes.
    #[arg(long = "no-handles")]
    no_handles: bool,
}

impl YcsbArgs {
    fn opts(&self) -> patronus::bench::ycsb::Opts {
        use patronus::bench::ycsb;
        let workloads: Vec<char> = if self.workloads.is_empty() {
            vec!['a', 'b', 'c', 'd', 'f']
        } else {
            self.workloads
                .iter()
                .filter_map(|w| w.chars().next())
                .collect()
        };
        let dists = match self.dist.as_str() {
            "uniform" => vec![ycsb::Dist::Uniform],
            "both" => vec![ycsb::Dist::Zipfian, ycsb::Dist::Uniform],
            _ => vec![ycsb::Dist::Zipfian],
        };
        ycsb::Opts {
            records: self.records,
            value_size: self.value_size as usize,
            threads: self.threads as usize,
            inflight: self.inflight as usize,
            budget: Duration::from_secs_f64(self.seconds),
            rounds: self.rounds as usize,
            workloads,
            dists,
            handles: !self.no_handles,
            progress: true,
        }
    }
}

/// `bench soak`'s options.
#[derive(clap::Args)]
struct SoakArgs {
    /// Run length in minutes (or --seconds).
    #[arg(long, value_parser = parse_minutes, conflicts_with = "seconds")]
    minutes: Option<f64>,
    /// Run length in seconds (default 120).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_seconds)]
    seconds: Option<f64>,
    /// Client threads per client process.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=32))]
    threads: u16,
    /// Client processes (0: one in-process client node, in-process keeper).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(0..=16))]
    processes: u16,
    /// memcached://HOST:PORT (default: start memcached from PATH for the run).
    #[arg(long)]
    keeper: Option<String>,
    /// Seconds between reports.
    #[arg(long = "interval-s", default_value_t = 10.0, allow_negative_numbers = true, value_parser = parse_seconds)]
    interval_s: f64,
    /// Directories of the memory node.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    dirs: u16,
    /// One JSON object per line instead of the table.
    #[arg(long)]
    json: bool,
    /// Which link.
    #[arg(long, default_value = "shm", value_parser = ["shm", "tcp"])]
    fabric: String,
    /// Fault injection that the checks must catch (leak: 16 MiB per
    /// client process over the run; fd: 16 fds over the run; error: a read
    /// outside the lease every 200 operations).
    #[arg(long, hide = true, value_parser = ["leak", "fd", "error"])]
    inject: Option<String>,
}

/// `--minutes`: more than 0, at most a day.
fn parse_minutes(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of minutes"))?;
    if v.is_finite() && v > 0.0 && v <= 1440.0 {
        Ok(v)
    } else {
        Err(format!("{s} minutes: give more than 0 and at most 1440"))
    }
}

fn soak(a: SoakArgs) -> Result<bool, Box<dyn std::error::Error>> {
    let secs = a.minutes.map(|m| m * 60.0).or(a.seconds).unwrap_or(120.0);
    let o = bench::soak::Opts {
        duration: Duration::from_secs_f64(secs),
        threads: a.threads,
        processes: a.processes,
        keeper: a.keeper,
        interval: Duration::from_secs_f64(a.interval_s),
        fabric: a.fabric,
        dirs: a.dirs,
        exe: std::env::current_exe()?,
        inject: a.inject,
    };
    let json = a.json;
    if !json {
        bench::soak::table_header(&mut std::io::stdout())?;
    }
    let s = bench::soak::run(&o, &mut |r| {
        let mut out = std::io::stdout().lock();
        if json {
            let _ = bench::print_json(&mut out, std::slice::from_ref(r));
        } else {
            let _ = bench::soak::table_line(&mut out, r);
        }
    })?;
    let mut out = std::io::stdout().lock();
    if json {
        bench::print_json(&mut out, std::slice::from_ref(&s))?;
    } else {
        use std::io::Write;
        writeln!(
            out,
            "summary: {} s, {} processes x {} threads: {} ops, {} acquires, {} expired, {} extended, {} late, {} unexpected; drain {:.0} ms, live leases {:?}, GC queued {:?}",
            s.seconds, s.processes, s.threads, s.ops, s.acquires, s.expiries, s.extensions, s.late,
            s.unexpected, s.drain_ms, s.final_live_leases, s.final_gc_queued
        )?;
        for (n, f, l, g) in &s.rss {
            writeln!(
                out,
                "  {n}: private RSS {f} -> {l} KiB ({g:+} KiB, bound {} KiB)",
                s.rss_bound_kib
            )?;
        }
        for (n, f, l, g) in &s.shmem {
            writeln!(
                out,
                "  {n}: shared RSS {f} -> {l} KiB ({g:+} KiB: fixed-size fabric mappings, not judged)"
            )?;
        }
        for (n, f, l, g) in &s.fds {
            writeln!(out, "  {n}: fds {f} -> {l} ({g:+})")?;
        }
        writeln!(
            out,
            "{}",
            if s.pass {
                "PASS".to_string()
            } else {
                format!("FAIL: {}", s.failures.join("; "))
            }
        )?;
    }
    if !s.pass {
        eprintln!("patronus bench soak: FAIL: {}", s.failures.join("; "));
    }
    Ok(s.pass)
}

/// `--ops`: a whole number of at least 1.
fn parse_count(s: &str) -> Result<u64, String> {
    match s.trim().parse::<i128>() {
        Ok(v) if (1..=u64::MAX as i128).contains(&v) => Ok(v as u64),
        Ok(v) => Err(format!(
            "{v} is not a count: give a whole number of at least 1"
        )),
        Err(_) => Err(format!(
            "{s:?} is not a whole number (give one of at least 1)"
        )),
    }
}

/// `--seconds`: more than 0, at most a day.
fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if v.is_finite() && v > 0.0 && v <= 86_400.0 {
        Ok(v)
    } else {
        Err(format!("{s} seconds: give more than 0 and at most 86400"))
    }
}

/// `--size`: bytes, 1 to 4096.
fn parse_size(s: &str) -> Result<u64, String> {
    match s.trim().parse::<i128>() {
        Ok(v) if (1..=4096).contains(&v) => Ok(v as u64),
        Ok(v) => Err(format!("{v} bytes: sizes are 1 to 4096")),
        Err(_) => Err(format!("{s:?} is not a whole number of bytes (1 to 4096)")),
    }
}

/// The values in first-seen order, each once (a repeated `--size 64` or
/// `--op read` measures it once).
fn dedup<T: PartialEq>(v: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// Writes charts with `f` into `dir` when asked, and names the files on
/// stderr.
fn plot<R>(
    dir: Option<&std::path::Path>,
    recs: &[R],
    f: fn(&std::path::Path, &[R]) -> patronus::Result<Vec<PathBuf>>,
) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(dir) = dir {
        for p in f(dir, recs)? {
            eprintln!("patronus: wrote {}", p.display());
        }
    }
    Ok(())
}

/// Every fact `patronus info` reports.
#[derive(serde::Serialize)]
struct Info {
    version: &'static str,
    abi_version: u32,
    fabrics: Vec<&'static str>,
    /// Names under /sys/class/infiniband (the kernel's RDMA devices).
    rdma_devices: Vec<String>,
    shm: ShmSpace,
}

/// Space of the shared-memory file system the shm fabric maps from.
#[derive(serde::Serialize)]
struct ShmSpace {
    path: &'static str,
    free_bytes: Option<u64>,
    total_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn info() -> Info {
    let mut fabrics = vec!["shm", "tcp"];
    if cfg!(feature = "verbs") {
        fabrics.push("verbs");
    }
    let mut rdma_devices: Vec<String> = std::fs::read_dir("/sys/class/infiniband")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    rdma_devices.sort();
    let path = "/dev/shm";
    let shm = match rustix::fs::statvfs(path) {
        Ok(v) => ShmSpace {
            path,
            free_bytes: Some(v.f_bavail.saturating_mul(v.f_frsize)),
            total_bytes: Some(v.f_blocks.saturating_mul(v.f_frsize)),
            error: None,
        },
        Err(e) => ShmSpace {
            path,
            free_bytes: None,
            total_bytes: None,
            error: Some(e.to_string()),
        },
    };
    Info {
        version: env!("CARGO_PKG_VERSION"),
        abi_version: patronus::ffi::error::PATRONUS_ABI_VERSION,
        fabrics,
        rdma_devices,
        shm,
    }
}

fn print_info(json: bool) -> Result<(), Box<dyn std::error::Error>> {
    let i = info();
    if json {
        println!("{}", serde_json::to_string(&i)?);
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!("patronus {}", i.version);
    println!("ABI version: {}", i.abi_version);
    println!("fabrics: {}", i.fabrics.join(", "));
    if i.rdma_devices.is_empty() {
        println!("RDMA devices: none (/sys/class/infiniband lists none)");
    } else {
        println!("RDMA devices: {}", i.rdma_devices.join(", "));
    }
    match (i.shm.free_bytes, i.shm.total_bytes, &i.shm.error) {
        (Some(f), Some(t), _) => println!(
            "shared memory: {} {:.1} GiB free of {:.1} GiB",
            i.shm.path,
            gib(f),
            gib(t)
        ),
        (_, _, e) => println!(
            "shared memory: {}: {}",
            i.shm.path,
            e.as_deref().unwrap_or("unknown")
        ),
    }
    Ok(())
}

/// `serve` / `client` of a cluster of several processes need a keeper
/// every process reaches; the in-process one only serves this process.
fn check_keeper(node: &NodeArgs, what: &str) -> Result<(), String> {
    if node.machines > 1 && node.keeper.as_deref().is_none_or(str::is_empty) {
        return Err(format!(
            "patronus {what}: --machines {} forms a cluster of several processes, which meet \
             through a keeper: pass --keeper memcached://HOST:PORT (or set PATRONUS_KEEPER), \
             or use --machines 1",
            node.machines
        ));
    }
    Ok(())
}

type Pair = (
    std::sync::Arc<dyn patronus::fabric::Nic>,
    std::sync::Arc<dyn patronus::fabric::Nic>,
);

fn open_pair(fabric: &str) -> Result<Pair, Box<dyn std::error::Error>> {
    // Two NICs (two device contexts for verbs): the memory node's and the
    // client's, so every check crosses a real connection.
    let open = || patronus::fabric::open_nic(fabric, "127.0.0.1:0", 1 << 18);
    Ok((open()?, open()?))
}

/// Logs to stderr at `PATRONUS_LOG` (default: warnings), in colour only
/// on a terminal. The memcached client's connection pool (r2d2) logs every
/// failed connect attempt; those stay quiet unless PATRONUS_LOG names them,
/// since the keeper reports an unreachable memcached as one error.
fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PATRONUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,r2d2=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let res: Result<bool, Box<dyn std::error::Error>> = match cli.cmd {
        Cmd::Demo => {
            let fabric = std::env::var("PATRONUS_FABRIC").unwrap_or_else(|_| "shm".into());
            if !["shm", "tcp", "verbs"].contains(&fabric.as_str()) {
                eprintln!("patronus demo: unknown fabric {fabric:?} (shm, tcp, verbs)");
                return ExitCode::from(2);
            }
            patronus::demo::run(&fabric, &mut std::io::stdout()).map_err(Into::into)
        }
        Cmd::Bench {
            what:
                BenchCmd::Fabric {
                    json,
                    fabric: f,
                    quick,
                    ops,
                    seconds,
                    only_ops,
                    only_sizes,
                    plot: plot_dir,
                },
        } => (|| {
            let exe: PathBuf = std::env::current_exe()?;
            let links = match f {
                FabricArg::Shm => vec![LinkKind::Shm],
                FabricArg::Tcp => vec![LinkKind::Tcp],
                FabricArg::All => vec![LinkKind::Shm, LinkKind::Tcp],
                FabricArg::Verbs => {
                    return Err(
                        "bench fabric measures the soft NIC against its raw floors; \
                                on RDMA hardware run `patronus bench lease --fabric verbs` \
                                and `patronus selftest --fabric verbs`"
                            .into(),
                    )
                }
            };
            let o = fabric::Opts {
                links,
                ops: if quick { 2_000 } else { ops },
                rate_ops: if quick { 50_000 } else { 10 * ops },
                budget: Duration::from_secs_f64(if quick { 0.5 } else { seconds }),
                exe,
                only_ops: dedup(only_ops),
                only_sizes: dedup(only_sizes),
                progress: bench::Progress::stderr(!json),
            };
            let recs = fabric::run(&o);
            o.progress.finish();
            let recs = recs?;
            let mut out = std::io::stdout().lock();
            if json {
                bench::print_json(&mut out, &recs)?;
            } else {
                bench::print_table(&mut out, &recs)?;
            }
            plot(plot_dir.as_deref(), &recs, bench::plot::fabric_charts)?;
            Ok(true)
        })(),
        Cmd::Bench {
            what:
                BenchCmd::Lease {
                    json,
                    fabric: f,
                    quick,
                    ops,
                    seconds,
                    client_threads,
                    plot: plot_dir,
                },
        } => (|| {
            let fabrics = match f {
                FabricArg::Shm => vec!["shm"],
                FabricArg::Tcp => vec!["tcp"],
                FabricArg::Verbs => vec!["verbs"],
                FabricArg::All => vec!["shm", "tcp"],
            };
            let progress = bench::Progress::stderr(!json);
            progress.add_steps(bench::lease::GROUPS * fabrics.len() as u64);
            let mut recs = Vec::new();
            for fab in fabrics {
                let secs = Duration::from_secs_f64(if quick { 0.3 } else { seconds });
                for &t in &client_threads {
                    recs.push(patronus::bench::lease::node_rate(fab, t, secs)?);
                }
                if !client_threads.is_empty() {
                    continue;
                }
                let o = bench::lease::Opts {
                    fabric: fab.into(),
                    ops: if quick { 500 } else { ops },
                    budget: Duration::from_secs_f64(if quick { 0.3 } else { seconds }),
                    progress: progress.clone(),
                };
                let r = bench::lease::run(&o);
                if r.is_err() {
                    progress.finish();
                }
                recs.extend(r?);
            }
            progress.finish();
            let mut out = std::io::stdout().lock();
            if json {
                bench::print_json(&mut out, &recs)?;
            } else {
                bench::lease::print_table(&mut out, &recs)?;
            }
            plot(plot_dir.as_deref(), &recs, bench::plot::lease_charts)?;
            Ok(true)
        })(),
        Cmd::Bench {
            what:
                BenchCmd::Inflight {
                    json,
                    fabric: f,
                    quick,
                    seconds,
                    depths,
                    only,
                    best_of,
                    layout,
                    keeper,
                },
        } => (|| {
            let fabrics = match f {
                FabricArg::Shm => vec!["shm"],
                FabricArg::Tcp => vec!["tcp"],
                FabricArg::All => vec!["shm", "tcp"],
                FabricArg::Verbs => {
                    return Err("bench inflight runs on the soft fabric (shm or tcp)".into())
                }
            };
            let mut recs = Vec::new();
            for fab in fabrics {
                let o = patronus::bench::inflight::Opts {
                    fabric: fab.into(),
                    budget: Duration::from_secs_f64(if quick { 0.1 } else { seconds }),
                    depths: depths.iter().map(|&d| d as usize).collect(),
                    only: only.clone(),
                    best_of,
                    layouts: match layout {
                        LayoutArg::Inproc => vec![Layout::InProc],
                        LayoutArg::Process => vec![Layout::Process],
                        LayoutArg::Both => vec![Layout::InProc, Layout::Process],
                    },
                    keeper: keeper.clone(),
                    exe: None,
                };
                recs.extend(patronus::bench::inflight::run(&o)?);
            }
            let mut out = std::io::stdout().lock();
            if json {
                for r in &recs {
                    std::io::Write::write_fmt(
                        &mut out,
                        format_args!("{}\n", serde_json::to_string(r)?),
                    )?;
                }
            } else {
                patronus::bench::inflight::print_table(&mut out, &recs)?;
            }
            Ok(true)
        })(),
        Cmd::Bench {
            what:
                BenchCmd::Ycsb {
                    a,
                    processes,
                    keeper,
                },
        } => (|| {
            use patronus::bench::ycsb;
            let o = a.opts();
            let recs = if processes == 0 {
                ycsb::run(&o)?
            } else {
                ycsb::run_processes(&o, processes, &std::env::current_exe()?, keeper)?
            };
            let mut out = std::io::stdout().lock();
            if a.json {
                bench::print_json(&mut out, &recs)?;
            } else {
                ycsb::print_table(&mut out, &recs)?;
            }
            Ok(true)
        })(),
        Cmd::Bench {
            what: BenchCmd::Soak(a),
        } => soak(a),
        Cmd::SoakClient { args } => serde_json::from_str::<bench::soak::ChildArgs>(&args)
            .map_err(|e| patronus::Error::Invalid(format!("__soak-client: {e}")))
            .and_then(|a| bench::soak::child_main(&a))
            .map(|_| true)
            .map_err(Into::into),
        Cmd::Info { json } => print_info(json).map(|_| true),
        Cmd::Serve { node } => {
            if let Err(e) = check_keeper(&node, "serve") {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
            patronus::app::serve(node.config(), node.key)
                .map(|_| true)
                .map_err(Into::into)
        }
        Cmd::Client { node, workload } => {
            if let Err(e) = check_keeper(&node, "client") {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
            patronus::app::client(node.config(), node.key, workload.into())
                .map(|_| true)
                .map_err(Into::into)
        }
        Cmd::Selftest { fabric, forged } => (|| {
            let (s, c) = open_pair(&fabric)?;
            let passed = patronus::fabric::conformance::run_all(s, c, forged)?;
            for p in &passed {
                println!("ok   {p}");
            }
            println!("{} passed, 0 failed", passed.len());
            Ok(true)
        })(),
        Cmd::Floor { args } => fabric::floor_main(&args).map(|_| true).map_err(Into::into),
        Cmd::InflightNode { args } => patronus::bench::inflight::node_main(&args)
            .map(|_| true)
            .map_err(Into::into),
        Cmd::BenchNode { link } => link
            .parse::<LinkKind>()
            .map_err(patronus::Error::from)
            .and_then(fabric::node_main)
            .map(|_| true)
            .map_err(Into::into),
    };
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("patronus: {e}");
            ExitCode::FAILURE
        }
    }
}
