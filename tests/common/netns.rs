//! Hosts in network namespaces for multi-host tests: a "switch" namespace
//! holding a bridge, one namespace per host joined to it by a veth pair,
//! processes started inside a host (`ip netns exec`), faults applied with
//! `ip link` and `iptables` inside the namespaces, and a delaying TCP proxy.
//! Everything is made by the test and torn down on drop (also on panic):
//! processes first (their `NsProc` values), then the namespaces (`Net`).
//!
//! Names carry the test process's pid, so concurrent runs never share a
//! namespace; namespaces left by runs whose process is gone (a SIGKILLed
//! test), and the processes still inside them, are removed by the next
//! `Net::new`. Addresses are 10.77.0.x/24 on
//! every net: each net is a world of its own (its bridge lives in its own
//! switch namespace), and nothing is added to the initial namespace.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Prefix of every namespace these helpers create.
const PREFIX: &str = "pnf";

/// Why this machine cannot run namespace tests, or None when it can: the
/// process must be root with CAP_NET_ADMIN, and `ip` and `iptables` must be
/// installed. Anything else that fails later is a test failure, not a skip.
pub fn unavailable() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
    };
    let root = field("Uid:").is_some_and(|v| v.split_whitespace().nth(1) == Some("0"));
    let cap_net_admin = field("CapEff:")
        .and_then(|v| u64::from_str_radix(&v, 16).ok())
        .is_some_and(|c| c & (1 << 12) != 0);
    if !root || !cap_net_admin {
        return Some(format!(
            "needs root with CAP_NET_ADMIN (root: {root}, CAP_NET_ADMIN: {cap_net_admin})"
        ));
    }
    for tool in ["ip", "iptables"] {
        if which(tool).is_none() {
            return Some(format!(
                "`{tool}` is not installed (apt-get install iproute2 iptables)"
            ));
        }
    }
    None
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&search_path())
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// PATH with the system directories `ip` and `iptables` live in (a
/// non-root user's PATH often lacks them), for lookups and every child.
fn search_path() -> std::ffi::OsString {
    let mut dirs: Vec<std::path::PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        if !dirs.iter().any(|x| x.as_os_str() == d) {
            dirs.push(d.into());
        }
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// A command for `prog` with that PATH.
fn command(prog: &str) -> Command {
    let mut c = Command::new(prog);
    c.env("PATH", search_path());
    c
}

/// Runs `prog args`, panicking with its output when it fails.
pub fn run(prog: &str, args: &[&str]) -> String {
    let out = command(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {} failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip ARGS`, panicking on failure.
pub fn ip(args: &[&str]) -> String {
    run("ip", args)
}

/// One host of a net: its namespace, its address, and the name of its
/// link's end inside the switch namespace.
#[derive(Clone, Debug)]
pub struct Host {
    /// Host name given by the test.
    pub name: String,
    /// Network namespace.
    pub ns: String,
    /// IPv4 address on the net.
    pub ip: String,
    /// Its link's port on the bridge (in the switch namespace).
    pub port: String,
}

/// A switch namespace with a bridge and hosts attached to it.
pub struct Net {
    /// The switch namespace.
    pub switch: String,
    hosts: Vec<Host>,
    tag: String,
}

static NETS: AtomicU32 = AtomicU32::new(0);

impl Net {
    /// A bridge in a new switch namespace and one namespace per name in
    /// `hosts`, each host at 10.77.0.<1+index>/24 on `eth0`, the loopback
    /// of every namespace up.
    pub fn new(hosts: &[&str]) -> Net {
        remove_stale();
        let tag = format!(
            "{PREFIX}-{}-{}",
            std::process::id(),
            NETS.fetch_add(1, Ordering::Relaxed)
        );
        let mut net = Net {
            switch: format!("{tag}-sw"),
            hosts: Vec::new(),
            tag: tag.clone(),
        };
        // Registered before anything exists, so a failure half-way still
        // removes what was made.
        ip(&["netns", "add", &net.switch]);
        let sw = net.switch.clone();
        ip(&["-n", &sw, "link", "set", "lo", "up"]);
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for (i, name) in hosts.iter().enumerate() {
            let h = Host {
                name: name.to_string(),
                ns: format!("{tag}-{name}"),
                ip: format!("10.77.0.{}", i + 1),
                port: format!("p{i}"),
            };
            ip(&["netns", "add", &h.ns]);
            net.hosts.push(h.clone());
            ip(&["-n", &h.ns, "link", "set", "lo", "up"]);
            // Made inside the host; its peer goes straight into the switch.
            ip(&[
                "-n", &h.ns, "link", "add", "eth0", "type", "veth", "peer", "name", &h.port,
                "netns", &sw,
            ]);
            ip(&["-n", &sw, "link", "set", &h.port, "master", "br0"]);
            ip(&["-n", &sw, "link", "set", &h.port, "up"]);
            ip(&[
                "-n",
                &h.ns,
                "addr",
                "add",
                &format!("{}/24", h.ip),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &h.ns, "link", "set", "eth0", "up"]);
        }
        net
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} on net {}", self.tag))
    }

    /// Takes `host`'s link down at the switch (a pulled cable: the host's
    /// own interface stays configured, its carrier goes).
    pub fn cut(&self, host: &str) {
        let port = self.host(host).port.clone();
        ip(&["-n", &self.switch, "link", "set", &port, "down"]);
    }

    /// Brings `host`'s link back up.
    pub fn restore(&self, host: &str) {
        let port = self.host(host).port.clone();
        ip(&["-n", &self.switch, "link", "set", &port, "up"]);
    }

    /// `iptables RULE` inside `host`'s namespace (`rule`: its arguments,
    /// separated by white space).
    pub fn iptables(&self, host: &str, rule: &str) {
        let ns = self.host(host).ns.clone();
        let mut a = vec!["netns", "exec", &ns, "iptables", "-w"];
        a.extend(rule.split_whitespace());
        run("ip", &a);
    }

    /// Packets counted by the rules of `chain` (table `table`) in `host`'s
    /// namespace whose target is `target`.
    pub fn rule_packets(&self, host: &str, table: &str, chain: &str, target: &str) -> u64 {
        let ns = self.host(host).ns.clone();
        let out = run(
            "ip",
            &[
                "netns", "exec", &ns, "iptables", "-w", "-t", table, "-L", chain, "-n", "-v", "-x",
            ],
        );
        out.lines()
            .filter(|l| l.split_whitespace().nth(2) == Some(target))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// The established TCP connections of `host` to or from `port`, as
    /// "local peer" address pairs, sorted.
    pub fn connections(&self, host: &str, port: u16) -> Vec<String> {
        let ns = self.host(host).ns.clone();
        let filter = format!("( dport = :{port} or sport = :{port} )");
        let out = run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "ss",
                "-Htn",
                "state",
                "established",
                &filter,
            ],
        );
        let mut v: Vec<String> = out
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                // Recv-Q Send-Q Local Peer (state omitted with `state`).
                Some(format!("{} {}", w.get(2)?, w.get(3)?))
            })
            .collect();
        v.sort();
        v
    }

    /// Starts `prog args` inside `host`'s namespace.
    pub fn spawn(&self, host: &str, name: &str, prog: &str, args: &[&str]) -> NsProc {
        let mut cmd = command("ip");
        cmd.args(["netns", "exec", &self.host(host).ns, prog])
            .args(args);
        NsProc::spawn(name, cmd)
    }

    /// Starts the `patronus` binary with `args` inside `host`'s namespace.
    pub fn patronus(&self, host: &str, name: &str, args: &[&str]) -> NsProc {
        self.spawn(host, name, env!("CARGO_BIN_EXE_patronus"), args)
    }

    /// Starts memcached on `host` (port 11211 of its address) and waits
    /// until it accepts; returns it and its `memcached://` URL.
    pub fn memcached(&self, host: &str) -> (NsProc, String) {
        let h = self.host(host).clone();
        let bin = ["/usr/bin/memcached", "/usr/local/bin/memcached"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("memcached is not installed (apt-get install memcached)");
        let mc = self.spawn(
            host,
            "memcached",
            bin,
            &[
                "-l", &h.ip, "-p", "11211", "-U", "0", "-t", "2", "-m", "64", "-u", "root",
            ],
        );
        self.wait_accepting(host, &h.ip, 11211, Duration::from_secs(10));
        (mc, format!("memcached://{}:11211", h.ip))
    }

    /// Waits until a TCP connect from `host` to `addr:port` succeeds.
    pub fn wait_accepting(&self, host: &str, addr: &str, port: u16, limit: Duration) {
        let ns = self.host(host).ns.clone();
        let probe = format!("exec 3<>/dev/tcp/{addr}/{port}");
        let t0 = Instant::now();
        loop {
            let ok = command("ip")
                .args(["netns", "exec", &ns, "bash", "-c", &probe])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                t0.elapsed() < limit,
                "{addr}:{port} does not accept connections from {host} within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace destroys its interfaces (both veth ends go
        // with the host's). Processes must be gone already (NsProc drops
        // first); a leftover would only keep its namespace alive unnamed.
        for h in self.hosts.iter().rev() {
            let _ = command("ip").args(["netns", "del", &h.ns]).status();
        }
        let _ = command("ip").args(["netns", "del", &self.switch]).status();
    }
}

/// Removes namespaces of earlier runs whose test process is gone.
fn remove_stale() {
    let Ok(out) = command("ip").args(["netns", "list"]).output() else {
        return;
    };
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let name = l.split_whitespace().next().unwrap_or("");
        let mut parts = name.splitn(3, '-');
        if parts.next() != Some(PREFIX) {
            continue;
        }
        let Some(pid) = parts.next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            // That run's processes (its nodes, memcached, the proxy) go
            // first: a memory node whose test died would wait forever.
            if let Ok(o) = command("ip").args(["netns", "pids", name]).output() {
                for p in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = command("kill").args(["-KILL", p]).status();
                }
            }
            let _ = command("ip").args(["netns", "del", name]).status();
        }
    }
}

/// A process in a namespace whose stdout `key=value` lines can be awaited,
/// killed on drop. `ip netns exec` execs the program in place, so the
/// child's pid is the program's own.
pub struct NsProc {
    /// The process.
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Name in messages.
    pub name: String,
    /// Every line received so far.
    pub seen: Vec<String>,
}

impl NsProc {
    fn spawn(name: &str, mut cmd: Command) -> NsProc {
        let mut child = cmd
            .env("PATRONUS_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        NsProc {
            child,
            lines: rx,
            name: name.into(),
            seen: vec![],
        }
    }

    /// Waits for a line containing `key=` and returns its value (the
    /// first such line).
    pub fn wait_for(&mut self, key: &str, timeout: Duration) -> String {
        let pat = format!("{key}=");
        let t0 = Instant::now();
        loop {
            if let Some(v) = self.seen.iter().find_map(|l| value_of(l, &pat)) {
                return v;
            }
            self.next_line(key, t0, timeout);
        }
    }

    /// As `wait_for`, parsed as a number.
    pub fn num(&mut self, key: &str, timeout: Duration) -> f64 {
        let v = self.wait_for(key, timeout);
        v.parse()
            .unwrap_or_else(|_| panic!("{}: {key}={v} is not a number", self.name))
    }

    /// Waits until the newest `progress` line satisfies `ok`; returns its
    /// values. `what` names the condition in the panic message.
    pub fn wait_progress(
        &mut self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&HashMap<String, f64>) -> bool,
    ) -> HashMap<String, f64> {
        let t0 = Instant::now();
        let mut checked = 0;
        loop {
            for l in &self.seen[checked..] {
                if l.starts_with("progress ") {
                    let m = values(l);
                    if ok(&m) {
                        return m;
                    }
                }
            }
            checked = self.seen.len();
            self.next_line(what, t0, timeout);
        }
    }

    /// The newest `progress` line's values (empty before the first).
    pub fn last_progress(&mut self) -> HashMap<String, f64> {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        self.seen
            .iter()
            .rev()
            .find(|l| l.starts_with("progress "))
            .map(|l| values(l))
            .unwrap_or_default()
    }

    fn next_line(&mut self, what: &str, t0: Instant, timeout: Duration) {
        let left = timeout.checked_sub(t0.elapsed()).unwrap_or_else(|| {
            panic!(
                "{}: no {what} within {timeout:?}; saw {:?}",
                self.name,
                tail(&self.seen)
            )
        });
        match self.lines.recv_timeout(left) {
            Ok(l) => self.seen.push(l),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                "{}: exited ({:?}) before {what}; saw {:?}",
                self.name,
                self.child.try_wait(),
                tail(&self.seen)
            ),
        }
    }

    /// Waits for the process to exit; panics after `timeout` (and kills it).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // The reader thread ends at EOF: take every line it read.
                while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
                    self.seen.push(l);
                }
                return st;
            }
            if t0.elapsed() > timeout {
                let _ = self.child.kill();
                panic!(
                    "{} did not exit within {timeout:?}; saw {:?}",
                    self.name,
                    tail(&self.seen)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Writes `line` to the process's standard input (ignored once it has
    /// exited).
    pub fn send(&mut self, line: &str) {
        if let Some(i) = self.child.stdin.as_mut() {
            let _ = writeln!(i, "{line}").and_then(|_| i.flush());
        }
    }

    /// SIGKILL, and waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NsProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(v: &[String]) -> &[String] {
    &v[v.len().saturating_sub(12)..]
}

fn value_of(line: &str, pat: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(pat).map(str::to_string))
}

/// The numeric `key=value` pairs of a line.
pub fn values(line: &str) -> HashMap<String, f64> {
    line.split_whitespace()
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Environment variable naming the delay proxy's routes in a child process
/// (`LISTEN>TARGET,...`, each an `ip:port`).
pub const PROXY_ROUTES: &str = "PATRONUS_NETNS_PROXY_ROUTES";

/// The delay proxy's body, in a child process started inside the proxy
/// host's namespace: for each route, accepts connections on LISTEN and
/// relays both directions to TARGET, holding every chunk of bytes
/// `delay_us` +/- `jitter_us` (uniform) after it arrived, in order (a
/// stream's bytes never overtake each other, as TCP's do not). Says
/// `proxy_ready=1` once listening; ends when its stdin closes (the test
/// dropped it) or after `life`.
pub fn proxy_main(routes: &str, delay_us: u64, jitter_us: u64, life: Duration) {
    let mut n = 0;
    for r in routes.split(',').filter(|r| !r.is_empty()) {
        let (listen, target) = r.split_once('>').expect("route LISTEN>TARGET");
        let l = TcpListener::bind(listen).unwrap_or_else(|e| panic!("proxy bind {listen}: {e}"));
        let target = target.to_string();
        n += 1;
        std::thread::spawn(move || {
            for s in l.incoming().map_while(Result::ok) {
                let target = target.clone();
                std::thread::spawn(move || {
                    let Ok(t) = TcpStream::connect(&target) else {
                        return;
                    };
                    let _ = s.set_nodelay(true);
                    let _ = t.set_nodelay(true);
                    let (s2, t2) = (s.try_clone().unwrap(), t.try_clone().unwrap());
                    relay(s, t, delay_us, jitter_us);
                    relay(t2, s2, delay_us, jitter_us);
                });
            }
        });
    }
    println!("proxy_ready=1 routes={n}");
    std::io::stdout().flush().unwrap();
    // Ends with the parent (stdin closed) or after `life`, whichever first.
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut b = [0u8; 64];
        while let Ok(k) = std::io::stdin().read(&mut b) {
            if k == 0 {
                break;
            }
        }
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(life);
}

/// One direction of a proxied connection: a reader that stamps each chunk
/// with its release time, and a writer that sends it then.
fn relay(mut from: TcpStream, mut to: TcpStream, delay_us: u64, jitter_us: u64) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos() as u64)
            | 1;
        let mut last = Instant::now();
        let mut b = vec![0u8; 64 << 10];
        loop {
            let k = match from.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(k) => k,
            };
            // xorshift: a uniform delay in [delay - jitter, delay + jitter].
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let d = delay_us - jitter_us + seed % (2 * jitter_us + 1);
            let at = (Instant::now() + Duration::from_micros(d)).max(last);
            last = at;
            if tx.send((at, b[..k].to_vec())).is_err() {
                break;
            }
        }
        let _ = from.shutdown(std::net::Shutdown::Both);
    });
    std::thread::spawn(move || {
        for (at, chunk) in rx {
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}
