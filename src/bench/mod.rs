//! Benchmarks (`patronus bench ...`): every scenario is reported beside a
//! baseline measured in the same run, as a ratio, because the machines are
//! shared and noisy. Loops are bounded by an op count and a time budget.

pub mod fabric;
pub mod inflight;
pub mod lease;
pub mod plot;
pub mod soak;
pub mod ycsb;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{Error, Result};

/// One result line of `bench fabric`.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRecord {
    /// Scenario name ("latency", "pipelined", "floor-shm", ...).
    pub scenario: String,
    /// Fabric ("shm", "tcp").
    pub fabric: String,
    /// Operation ("read", "write", "cas", "rr").
    pub op: String,
    /// Bytes per operation.
    pub size: u64,
    /// Median latency (latency scenarios; absent from rate-only ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ns: Option<u64>,
    /// 99th percentile latency (latency scenarios only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ns: Option<u64>,
    /// Million operations per second.
    pub mops: f64,
    /// True for raw floors (the baselines).
    pub baseline: bool,
    /// p50 divided by the floor's p50 (latency scenarios).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_vs_floor: Option<f64>,
    /// Rate divided by the floor's rate (pipelined scenarios).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mops_vs_floor: Option<f64>,
    /// p50 of the floor rounds interleaved with this latency scenario (the
    /// denominator of `p50_vs_floor`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor_p50_ns: Option<u64>,
    /// Operations measured.
    pub ops: u64,
}

/// One result line of `bench lease`: a variant of a scenario group, whose
/// ratios refer to the group's baseline record.
#[derive(Clone, Debug, Serialize)]
pub struct LeaseRecord {
    /// Scenario group ("basic", "cycle16", "extend", "recovery", "overhead").
    pub group: String,
    /// Fabric ("shm", "tcp", "verbs").
    pub fabric: String,
    /// Variant within the group ("rpc-only", "mw-lease", ...).
    pub variant: String,
    /// Bytes per data operation.
    pub size: u64,
    /// Median latency of one iteration.
    pub p50_ns: u64,
    /// 99th percentile latency.
    pub p99_ns: u64,
    /// Million iterations per second (absent where only single operations
    /// were timed, e.g. recovery's next-read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mops: Option<f64>,
    /// True for the group's baseline.
    pub baseline: bool,
    /// p50 divided by the baseline's p50 (latency groups).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_vs_baseline: Option<f64>,
    /// Rate divided by the baseline's rate (the overhead group).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mops_vs_baseline: Option<f64>,
    /// Iterations measured.
    pub ops: u64,
}

/// Progress of a benchmark run on stderr (an indicatif bar), or nothing.
#[derive(Clone, Debug)]
pub struct Progress(indicatif::ProgressBar);

impl Default for Progress {
    fn default() -> Self {
        Progress::hidden()
    }
}

impl Progress {
    /// Draws nothing.
    pub fn hidden() -> Progress {
        Progress(indicatif::ProgressBar::hidden())
    }

    /// A bar on stderr when `show` and stderr is a terminal; else hidden.
    pub fn stderr(show: bool) -> Progress {
        use std::io::IsTerminal;
        if !show || !std::io::stderr().is_terminal() {
            return Progress::hidden();
        }
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(0),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} scenarios: {msg}",
        ) {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress(bar)
    }

    /// Adds `n` steps to the total.
    pub fn add_steps(&self, n: u64) {
        self.0.inc_length(n);
    }

    /// Names the step now running.
    pub fn running(&self, what: impl Into<std::borrow::Cow<'static, str>>) {
        self.0.set_message(what);
    }

    /// One step done.
    pub fn step_done(&self) {
        self.0.inc(1);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// Latency statistics of a loop.
pub struct Lat {
    hist: Histogram<u64>,
    /// Operations done.
    pub ops: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl Lat {
    /// An empty record.
    pub fn new() -> Result<Lat> {
        Ok(Lat {
            hist: Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
                .map_err(|e| Error::Invalid(format!("histogram: {e}")))?,
            ops: 0,
            elapsed: Duration::ZERO,
        })
    }
    /// Adds another record's samples.
    pub fn merge(&mut self, o: &Lat) -> Result<()> {
        self.hist
            .add(&o.hist)
            .map_err(|e| Error::Invalid(format!("histogram: {e}")))?;
        self.ops += o.ops;
        self.elapsed += o.elapsed;
        Ok(())
    }
    /// Median in ns.
    pub fn p50(&self) -> u64 {
        self.hist.value_at_quantile(0.5)
    }
    /// 99th percentile in ns.
    pub fn p99(&self) -> u64 {
        self.hist.value_at_quantile(0.99)
    }
    /// Mops of the whole loop.
    pub fn mops(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }
}

/// Times `f` once per op, at most `ops` times or until `budget` passes.
pub fn run_latency(ops: u64, budget: Duration, mut f: impl FnMut() -> Result<()>) -> Result<Lat> {
    let mut lat = Lat::new()?;
    let t0 = Instant::now();
    while lat.ops < ops && (lat.ops < 100 || t0.elapsed() < budget) {
        let t = Instant::now();
        f()?;
        lat.hist.saturating_record(t.elapsed().as_nanos() as u64);
        lat.ops += 1;
    }
    lat.elapsed = t0.elapsed();
    Ok(lat)
}

/// Runs `f(chunk)` (which performs `chunk` pipelined ops and returns how
/// many completed) until `ops` are done or `budget` passes; returns Mops.
pub fn run_rate(
    ops: u64,
    budget: Duration,
    chunk: u64,
    mut f: impl FnMut(u64) -> Result<u64>,
) -> Result<(f64, u64)> {
    let t0 = Instant::now();
    let mut n = 0;
    while n < ops && t0.elapsed() < budget {
        n += f(chunk.min(ops - n))?;
    }
    Ok((n as f64 / t0.elapsed().as_secs_f64().max(1e-9) / 1e6, n))
}

/// Prints records as an aligned table.
pub fn print_table(out: &mut dyn Write, recs: &[BenchRecord]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<12} {:<4} {:<6} {:>6} {:>9} {:>9} {:>8} {:>14}",
        "scenario", "fab", "op", "size", "p50_ns", "p99_ns", "Mops", "vs floor"
    )?;
    let ns = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    for r in recs {
        let vs = match (r.p50_vs_floor, r.mops_vs_floor) {
            (Some(x), _) => format!("{x:.2}x p50"),
            (_, Some(x)) => format!("{x:.2}x rate"),
            _ => "baseline".into(),
        };
        writeln!(
            out,
            "{:<12} {:<4} {:<6} {:>6} {:>9} {:>9} {:>8.2} {:>14}",
            r.scenario,
            r.fabric,
            r.op,
            r.size,
            ns(r.p50_ns),
            ns(r.p99_ns),
            r.mops,
            vs
        )?;
    }
    Ok(())
}

/// Prints records as JSON lines.
pub fn print_json<R: Serialize>(out: &mut dyn Write, recs: &[R]) -> std::io::Result<()> {
    for r in recs {
        let s = serde_json::to_string(r).map_err(std::io::Error::other)?;
        writeln!(out, "{s}")?;
    }
    Ok(())
}

/// A child process speaking a line protocol ("@@ WORDS..." lines on its
/// stdout), killed and reaped on drop so no orphan survives.
pub struct ChildProc {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
}

impl ChildProc {
    /// Spawns `exe args...`.
    pub fn spawn(exe: &Path, args: &[&str]) -> Result<ChildProc> {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(format!("spawning {}", exe.display()), e))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| Error::Invalid("child has no stdin".into()))?;
        let out = BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| Error::Invalid("child has no stdout".into()))?,
        );
        Ok(ChildProc { child, stdin, out })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Next protocol line's words.
    pub fn line(&mut self) -> Result<Vec<String>> {
        loop {
            let mut l = String::new();
            let n = self
                .out
                .read_line(&mut l)
                .map_err(|e| Error::io("reading child output", e))?;
            if n == 0 {
                return Err(Error::Invalid("child exited before answering".into()));
            }
            if let Some(i) = l.find("@@ ") {
                return Ok(l[i + 3..].split_whitespace().map(String::from).collect());
            }
        }
    }

    /// Sends one line.
    pub fn send(&mut self, l: &str) -> Result<()> {
        writeln!(self.stdin, "{l}")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| Error::io("writing to child", e))
    }

    /// Waits up to `limit` for the child to exit by itself; past it the
    /// child is killed. Either way it is reaped. Returns whether it exited
    /// by itself and successfully.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<bool> {
        let t0 = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => return Ok(st.success()),
                Ok(None) if t0.elapsed() < limit => std::thread::sleep(Duration::from_millis(5)),
                Ok(None) => {
                    let _ = self.child.kill();
                    self.child
                        .wait()
                        .map_err(|e| Error::io("reaping a child", e))?;
                    return Ok(false);
                }
                Err(e) => return Err(Error::io("waiting for a child", e)),
            }
        }
    }
}

/// A private memcached on a free loopback port (the keeper of a benchmark
/// cluster whose nodes are separate processes), killed and reaped on drop.
pub struct LocalMemcached {
    child: Child,
    /// `memcached://127.0.0.1:PORT`.
    pub url: String,
}

impl LocalMemcached {
    /// Starts `memcached` (from PATH, /usr/bin or /usr/local/bin) and waits
    /// until it accepts connections (at most 5 s per attempt, 3 attempts).
    pub fn start() -> Result<LocalMemcached> {
        let bin = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .chain(["/usr/bin".into(), "/usr/local/bin".into()])
            .map(|d| d.join("memcached"))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::Invalid(
                    "memcached not found: the separate-process layout needs a keeper (install \
                     memcached, or pass --keeper memcached://HOST:PORT)"
                        .into(),
                )
            })?;
        // memcached refuses to run as root without -u (/proc/self belongs
        // to this process's effective user).
        let root = std::os::unix::fs::MetadataExt::uid(
            &std::fs::metadata("/proc/self").map_err(|e| Error::io("/proc/self", e))?,
        ) == 0;
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| Error::io("picking a loopback port", e))?
                .port();
            let mut cmd = Command::new(&bin);
            let p = port.to_string();
            cmd.args([
                "-l",
                "127.0.0.1",
                "-p",
                &p,
                "-U",
                "0",
                "-t",
                "1",
                "-m",
                "16",
            ]);
            if root {
                cmd.args(["-u", "root"]);
            }
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| Error::io(format!("spawning {}", bin.display()), e))?;
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5) {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(LocalMemcached {
                        child,
                        url: format!("memcached://127.0.0.1:{port}"),
                    });
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken meanwhile: another one
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        Err(Error::Invalid(format!("{} did not start", bin.display())))
    }
}

impl Drop for LocalMemcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prints a protocol line (for child processes).
pub fn say(l: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "@@ {l}");
    let _ = o.flush();
}

/// Starts the nodes of `cfg`'s in-process cluster together (each blocks
/// until all joined), sorted by node id.
pub(crate) fn start_nodes(cfg: &crate::node::Config) -> Result<Vec<crate::node::Patronus>> {
    let hs: Vec<_> = (0..cfg.machine_nr)
        .map(|_| {
            let c = cfg.clone();
            std::thread::spawn(move || crate::node::Patronus::new(c))
        })
        .collect();
    let mut nodes = Vec::new();
    for h in hs {
        nodes.push(
            h.join()
                .map_err(|_| Error::Invalid("node start-up panicked".into()))??,
        );
    }
    nodes.sort_by_key(|n| n.get_node_id());
    Ok(nodes)
}

/// Runs `f` (on the client node) while the memory node `server` serves
/// its first directory on a thread of its own; then both nodes finish,
/// and a failure of the directory (an error, a panic) is returned before
/// `f`'s result.
pub(crate) fn with_served_dir<T>(
    server: &crate::node::Patronus,
    client: &crate::node::Patronus,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let mut dir = server.register_server_thread()?;
    std::thread::scope(|s| {
        let h = s.spawn(move || dir.server_serve(0));
        let r = f();
        let _ = server.finished(0);
        let _ = client.finished(0);
        h.join()
            .map_err(|_| Error::Invalid("server thread panicked".into()))??;
        r
    })
}

/// A memcached started for the run, stopped on drop.
pub(crate) struct OwnMemcached(Child, pub(crate) String);

impl Drop for OwnMemcached {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn start_memcached() -> Result<OwnMemcached> {
    let bin = std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("memcached"))
                .find(|f| f.is_file())
        })
        .ok_or_else(|| {
            Error::Invalid(
                "a benchmark with --processes > 0 needs memcached: none on PATH \
                 (apt-get install memcached, or pass --keeper memcached://HOST:PORT, \
                 or --processes 0)"
                    .into(),
            )
        })?;
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| Error::io("finding a free port", e))?
            .port();
        let mut cmd = Command::new(&bin);
        cmd.args([
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "0",
            "-t",
            "2",
            "-m",
            "64",
        ]);
        if root {
            cmd.args(["-u", "root"]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", bin.display()), e))?;
        let mut mc = OwnMemcached(child, format!("memcached://127.0.0.1:{port}"));
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(mc);
            }
            if let Ok(Some(_)) = mc.0.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Err(Error::Invalid(format!("{} did not start", bin.display())))
}
