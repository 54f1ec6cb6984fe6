//! The `patronus` command line: demo, bench, info, and the internal child
//! processes the benchmarks start.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
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
    /// Version, compiled-in fabrics, shared-memory space.
    Info,
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
            ..Default::default()
        }
    }
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
        /// Ops per latency scenario.
        #[arg(long, default_value_t = 200_000)]
        ops: u64,
        /// Time budget per scenario, seconds.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Only this operation (repeatable; default read, write and cas).
        #[arg(long = "op", value_parser = ["read", "write", "cas"])]
        only_ops: Vec<String>,
        /// Only this transfer size in bytes, 1 to 4096 (repeatable; default 8, 64, 4096).
        #[arg(long = "size", value_parser = clap::value_parser!(u64).range(1..=4096))]
        only_sizes: Vec<u64>,
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
        /// Ops per scenario.
        #[arg(long, default_value_t = 20_000)]
        ops: u64,
        /// Time budget per scenario, seconds.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
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
        /// Time per measurement, seconds.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Calls in flight to measure (repeatable; default 1, 4, 16, 32).
        #[arg(long = "depth", value_parser = clap::value_parser!(u64).range(1..=64))]
        depths: Vec<u64>,
    },
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PATRONUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
                only_ops,
                only_sizes,
            };
            let recs = fabric::run(&o)?;
            let mut out = std::io::stdout().lock();
            if json {
                bench::print_json(&mut out, &recs)?;
            } else {
                bench::print_table(&mut out, &recs)?;
            }
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
                },
        } => (|| {
            let fabrics = match f {
                FabricArg::Shm => vec!["shm"],
                FabricArg::Tcp => vec!["tcp"],
                FabricArg::Verbs => vec!["verbs"],
                FabricArg::All => vec!["shm", "tcp"],
            };
            let mut recs = Vec::new();
            for fab in fabrics {
                let secs = Duration::from_secs_f64(if quick { 0.3 } else { seconds });
                for &t in &client_threads {
                    recs.push(patronus::bench::lease::node_rate(fab, t, secs)?);
                }
                if !client_threads.is_empty() {
                    continue;
                }
                let o = patronus::bench::lease::Opts {
                    fabric: fab.into(),
                    ops: if quick { 500 } else { ops },
                    budget: Duration::from_secs_f64(if quick { 0.3 } else { seconds }),
                };
                recs.extend(patronus::bench::lease::run(&o)?);
            }
            let mut out = std::io::stdout().lock();
            if json {
                bench::print_json(&mut out, &recs)?;
            } else {
                patronus::bench::lease::print_table(&mut out, &recs)?;
            }
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
        Cmd::Info => {
            println!("patronus {}", env!("CARGO_PKG_VERSION"));
            let mut f = vec!["shm", "tcp"];
            if cfg!(feature = "verbs") {
                f.push("verbs");
            }
            println!("fabrics: {}", f.join(", "));
            Ok(true)
        }
        Cmd::Serve { node } => patronus::app::serve(node.config(), node.key)
            .map(|_| true)
            .map_err(Into::into),
        Cmd::Client { node, workload } => {
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
