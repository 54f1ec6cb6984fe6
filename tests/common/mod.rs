//! Helpers shared by integration tests: a real memcached server on a free
//! loopback port, and child processes of the `patronus` binary whose
//! `key=value` output lines can be awaited. Everything is killed on drop.

#![allow(dead_code)]

pub mod cluster;
pub mod netns;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A memcached server started for one test.
pub struct Memcached {
    child: Child,
    /// `memcached://127.0.0.1:PORT`.
    pub url: String,
}

impl Memcached {
    /// Starts memcached on a free loopback port and waits until it accepts.
    pub fn start() -> Memcached {
        let bin = ["/usr/bin/memcached", "/usr/local/bin/memcached"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("memcached is not installed (apt-get install memcached)");
        for _attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut cmd = Command::new(bin);
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
            // memcached refuses to run as root without -u.
            if is_root() {
                cmd.args(["-u", "root"]);
            }
            let mut child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn memcached");
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5) {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Memcached {
                        child,
                        url: format!("memcached://127.0.0.1:{port}"),
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken in the meantime: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("memcached did not start");
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `patronus` child process whose stdout lines arrive on a channel.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub name: String,
    pub seen: Vec<String>,
    /// Its stderr lines, when started with [`Proc::start_capturing`] (they
    /// are echoed to the test's stderr as they come).
    stderr: Option<std::sync::Arc<std::sync::Mutex<Vec<String>>>>,
}

impl Proc {
    /// Starts the `patronus` binary with `args`.
    pub fn start(name: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_patronus"));
        cmd.args(args);
        Proc::spawn(name, cmd)
    }

    /// Like `start`, and keeps the process's stderr (its log) for
    /// [`Proc::stderr`].
    pub fn start_capturing(name: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_patronus"));
        cmd.args(args);
        Proc::spawn_with(name, cmd, true)
    }

    /// Starts `cmd` (any program, e.g. this test binary re-run as a child)
    /// with its stdout lines awaitable like `start`'s.
    pub fn spawn(name: &str, cmd: Command) -> Proc {
        Proc::spawn_with(name, cmd, false)
    }

    fn spawn_with(name: &str, mut cmd: Command, capture: bool) -> Proc {
        let mut child = cmd
            .env("PATRONUS_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(if capture {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stderr = child.stderr.take().map(|err| {
            let keep = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let k = keep.clone();
            let who = name.to_string();
            std::thread::spawn(move || {
                for l in BufReader::new(err).lines().map_while(Result::ok) {
                    eprintln!("[{who}] {l}");
                    k.lock().unwrap().push(l);
                }
            });
            keep
        });
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines: rx,
            name: name.into(),
            seen: vec![],
            stderr,
        }
    }

    /// The stderr lines seen so far (after `wait_exit`, all of them once
    /// the pipe closed: waits up to 5 s for that). Empty unless started
    /// with `start_capturing`.
    pub fn stderr(&self) -> Vec<String> {
        let Some(k) = &self.stderr else {
            return vec![];
        };
        let t0 = Instant::now();
        // The reader thread holds the only other reference until EOF.
        while std::sync::Arc::strong_count(k) > 1 && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        k.lock().unwrap().clone()
    }

    /// Waits for a line containing `key=` and returns its value.
    pub fn wait_for(&mut self, key: &str, timeout: Duration) -> String {
        let t0 = Instant::now();
        let pat = format!("{key}=");
        loop {
            if let Some(v) = self.seen.iter().find_map(|l| value_of(l, &pat)) {
                return v;
            }
            let left = timeout.checked_sub(t0.elapsed()).unwrap_or_else(|| {
                panic!(
                    "{}: no {key}= within {timeout:?}; saw {:?}",
                    self.name, self.seen
                )
            });
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                    "{}: exited ({:?}) before {key}=; saw {:?}",
                    self.name,
                    self.child.try_wait(),
                    self.seen
                ),
            }
        }
    }

    /// Waits for the process to exit; panics after `timeout` (and kills it).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                while let Ok(l) = self.lines.try_recv() {
                    self.seen.push(l);
                }
                return st;
            }
            if t0.elapsed() > timeout {
                let _ = self.child.kill();
                panic!(
                    "{} did not exit within {timeout:?}; saw {:?}",
                    self.name, self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn value_of(line: &str, pat: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(pat).map(str::to_string))
}

/// A cluster name no other test or run uses.
pub fn unique(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000
    )
}

/// A directory holding `libpatronus.so` and its soname link, both pointing at
/// the freshly built library of this test binary's profile (as an install
/// lays them out), made once per process: tests of one binary run on
/// parallel threads and would race on the symlinks.
pub fn linked_libdir(tag: &str) -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        // target/<profile>/deps/<test>-xxxx -> target/<profile>
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let so = dir.join("libpatronus.so");
        assert!(
            so.exists(),
            "{} is missing: run `cargo build` first (scripts/test.sh does)",
            so.display()
        );
        let d = std::env::temp_dir().join(format!("patronus-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        for name in ["libpatronus.so", "libpatronus.so.0"] {
            let _ = std::fs::remove_file(d.join(name));
            std::os::unix::fs::symlink(&so, d.join(name)).unwrap();
        }
        d
    })
    .clone()
}

/// True when this machine has an RDMA device for libibverbs to open (the
/// kernel lists one under /sys/class/infiniband).
pub fn has_rdma_device() -> bool {
    std::fs::read_dir("/sys/class/infiniband")
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

/// What opening the verbs fabric says in a build without the `verbs`
/// feature (`FabricError::Unsupported`).
pub const VERBS_NOT_BUILT: &str = "opening an RDMA device (this build has no `verbs` feature; \
     cargo build --features verbs) is not supported by the verbs fabric";

/// Whether `m` is the verbs backend's start-up error on a machine without
/// an RDMA device (`FabricError::NoDevice`): what `ibv_get_device_list`
/// returned, with errno (which varies), and what to check.
pub fn is_no_device_error(m: &str) -> bool {
    let null = m.starts_with("no RDMA device: ibv_get_device_list returned NULL: errno ")
        && m.ends_with(
            "; this machine has no RDMA subsystem or no provider for its NIC \
             (see /sys/class/infiniband)",
        );
    let empty = m.starts_with("no RDMA device: ibv_get_device_list returned 0 devices (errno ")
        && m.ends_with("); is an RDMA NIC present and its driver (mlx5_ib, rxe, siw) loaded?");
    null || empty
}

/// Two busy-loop threads (one per core of the CI machine) for at most
/// `limit`; they stop when the value drops.
pub struct Hogs(
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    Vec<std::thread::JoinHandle<()>>,
);

impl Hogs {
    pub fn start(limit: Duration) -> Hogs {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let hs = (0..2)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let t0 = Instant::now();
                    let mut x = 1u64;
                    while !stop.load(Ordering::Relaxed) && t0.elapsed() < limit {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        std::hint::black_box(x);
                    }
                })
            })
            .collect();
        Hogs(stop, hs)
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in self.1.drain(..) {
            let _ = h.join();
        }
    }
}

/// A barrier for test threads that fails instead of hanging: a thread
/// that waits longer than the deadline (because another participant
/// panicked or is stuck) panics, naming the rendezvous, so a failing
/// worker fails its test rather than leaving the others waiting forever.
pub struct Rendezvous {
    n: usize,
    deadline: Duration,
    state: std::sync::Mutex<(usize, u64)>,
    cv: std::sync::Condvar,
}

impl Rendezvous {
    pub fn new(n: usize, deadline: Duration) -> Rendezvous {
        Rendezvous {
            n,
            deadline,
            state: std::sync::Mutex::new((0, 0)),
            cv: std::sync::Condvar::new(),
        }
    }

    /// Waits until `n` threads have called `wait` in this round.
    pub fn wait(&self) {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let round = g.1;
        g.0 += 1;
        if g.0 == self.n {
            *g = (0, round + 1);
            self.cv.notify_all();
            return;
        }
        let (g, t) = self
            .cv
            .wait_timeout_while(g, self.deadline, |s| s.1 == round)
            .unwrap_or_else(|e| e.into_inner());
        assert!(
            !t.timed_out() || g.1 != round,
            "rendezvous of {} threads: {} arrived in round {round} within {:?} (another \
             participant failed or is stuck)",
            self.n,
            g.0,
            self.deadline
        );
    }
}
