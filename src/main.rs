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
    },
}

type Pair = (
    std::sync::Arc<dyn patronus::fabric::Nic>,
    std::sync::Arc<dyn patronus::fabric::Nic>,
);

fn open_pair(fabric: &str) -> Result<Pair, Box<dyn std::error::Error>> {
    use patronus::fabric::soft::{SoftConfig, SoftNic};
    match fabric {
        "shm" | "tcp" => {
            let cfg = SoftConfig {
                link: fabric.parse()?,
                ..SoftConfig::default()
            };
            Ok((
                std::sync::Arc::new(SoftNic::open(cfg.clone())?),
                std::sync::Arc::new(SoftNic::open(cfg)?),
            ))
        }
        "verbs" => Err(
            "the verbs backend is not compiled into this build (cargo build --features verbs)"
                .into(),
        ),
        other => Err(format!("unknown fabric {other:?} (shm, tcp, verbs)").into()),
    }
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
            if fabric != "shm" && fabric != "tcp" {
                eprintln!(
                    "patronus demo: fabric {fabric:?} is not available in this build (shm, tcp)"
                );
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
                },
        } => (|| {
            let exe: PathBuf = std::env::current_exe()?;
            let links = match f {
                FabricArg::Shm => vec![LinkKind::Shm],
                FabricArg::Tcp => vec![LinkKind::Tcp],
                FabricArg::All => vec![LinkKind::Shm, LinkKind::Tcp],
            };
            let o = fabric::Opts {
                links,
                ops: if quick { 2_000 } else { ops },
                rate_ops: if quick { 50_000 } else { 10 * ops },
                budget: Duration::from_secs_f64(if quick { 0.5 } else { seconds }),
                exe,
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
        Cmd::Info => {
            println!("patronus {}", env!("CARGO_PKG_VERSION"));
            let mut f = vec!["shm", "tcp"];
            if cfg!(feature = "verbs") {
                f.push("verbs");
            }
            println!("fabrics: {}", f.join(", "));
            Ok(true)
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
