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
            let link = match std::env::var("PATRONUS_FABRIC").as_deref() {
                Ok("tcp") => LinkKind::Tcp,
                Ok("shm") | Err(_) => LinkKind::Shm,
                Ok(other) => {
                    eprintln!(
                        "patronus demo: fabric {other:?} is not available in this build (shm, tcp)"
                    );
                    return ExitCode::from(2);
                }
            };
            patronus::demo::run(link, &mut std::io::stdout()).map_err(Into::into)
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
