//! Multi-process soft-fabric tests: a test re-executes this binary, running
//! only itself (`--exact NAME`), with env PATRONUS_TEST_CHILD naming the
//! child's role; in that process the test plays the child (see
//! `multiproc_test!`) and exchanges QP endpoints with the parent over
//! stdin/stdout. There is no separate child entry point that could pass
//! without testing anything: a child that runs no test, or the wrong one,
//! never says what the parent waits for, and the parent fails.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use patronus::fabric::conformance::{wait_wc, Side};
use patronus::fabric::soft::{LinkKind, SoftConfig, SoftNic};
use patronus::fabric::{Access, Nic, QpEndpoint, SendWr, WcStatus, WrOp};

fn hex(b: &[u8]) -> String {
    hex::encode(b)
}
fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("a hex endpoint from the other process")
}

fn open(link: LinkKind) -> Arc<dyn Nic> {
    Arc::new(
        SoftNic::open(SoftConfig {
            link,
            ..SoftConfig::default()
        })
        .unwrap(),
    )
}

/// The child's role, in a child process.
const CHILD_VAR: &str = "PATRONUS_TEST_CHILD";

/// A multi-process test: `$name` runs `$parent(link, stringify!($name))`,
/// and, in a child process that `$parent` started through
/// [`ChildProc::spawn`], plays the child instead.
macro_rules! multiproc_test {
    ($name:ident, $parent:ident, $link:expr) => {
        #[test]
        fn $name() {
            match std::env::var(CHILD_VAR) {
                Ok(role) => child_main(&role),
                Err(_) => $parent($link, stringify!($name)),
            }
        }
    };
}

struct ChildProc {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
}

impl ChildProc {
    /// Starts this binary running only `test`, as the child `role`.
    fn spawn(test: &str, role: &str, link: LinkKind) -> ChildProc {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(CHILD_VAR, role)
            .env(
                "PATRONUS_TEST_LINK",
                if link == LinkKind::Shm { "shm" } else { "tcp" },
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        ChildProc { child, stdin, out }
    }
    /// Next protocol line (lines of the test harness are skipped).
    fn line(&mut self) -> Vec<String> {
        loop {
            let mut l = String::new();
            assert!(
                self.out.read_line(&mut l).unwrap() > 0,
                "child exited early"
            );
            if let Some(i) = l.find("@@ ") {
                return l[i + 3..].split_whitespace().map(String::from).collect();
            }
        }
    }
    fn send(&mut self, l: &str) {
        writeln!(self.stdin, "{l}")
            .and_then(|_| self.stdin.flush())
            .unwrap_or_else(|e| panic!("child exited early ({e})"));
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn say(l: String) {
    println!("@@ {l}");
    std::io::stdout().flush().unwrap();
}

/// The child's side: a memory node ("server") or an FAA client ("faa").
fn child_main(role: &str) {
    let link = std::env::var("PATRONUS_TEST_LINK")
        .expect("a child gets PATRONUS_TEST_LINK from its parent")
        .parse()
        .unwrap();
    let nic = open(link);
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    match role {
        "server" => {
            let pd = nic.alloc_pd().unwrap();
            let region = nic.alloc_mr(pd, 1 << 20, Access::ALL).unwrap();
            region.fill(0, 1 << 20, 0x77).unwrap();
            let ino = {
                use std::os::fd::AsRawFd;
                use std::os::unix::fs::MetadataExt;
                let fd = region.block().fd().as_raw_fd();
                std::fs::metadata(format!("/proc/self/fd/{fd}"))
                    .unwrap()
                    .ino()
            };
            say(format!("REGION {} {} {ino}", region.addr(), region.rkey()));
            let mut sides = Vec::new();
            while let Some(Ok(l)) = lines.next() {
                let ep = QpEndpoint::decode(&unhex(l.trim())).unwrap();
                let s = Side::new(nic.clone(), pd, 4096).unwrap();
                s.qp.connect(&ep).unwrap();
                say(format!("EP {}", hex(&s.qp.endpoint().encode())));
                sides.push(s);
            }
        }
        "faa" => {
            // REGION addr rkey, then one server endpoint per thread.
            let l = lines.next().unwrap().unwrap();
            let v: Vec<u64> = l.split_whitespace().map(|x| x.parse().unwrap()).collect();
            let (addr, rkey, n) = (v[0], v[1] as u32, v[2]);
            let pd = nic.alloc_pd().unwrap();
            let sides: Vec<Side> = (0..2)
                .map(|_| Side::new(nic.clone(), pd, 4096).unwrap())
                .collect();
            for s in &sides {
                say(format!("EP {}", hex(&s.qp.endpoint().encode())));
                let l = lines.next().unwrap().unwrap();
                s.qp.connect(&QpEndpoint::decode(&unhex(l.trim())).unwrap())
                    .unwrap();
            }
            std::thread::scope(|sc| {
                for s in &sides {
                    sc.spawn(move || {
                        let mut done = 0u64;
                        while done < n {
                            let k = 32.min(n - done);
                            let wrs: Vec<SendWr> = (0..k)
                                .map(|i| SendWr {
                                    wr_id: i,
                                    op: WrOp::Faa {
                                        local: s.sge(8 * i, 8),
                                        raddr: addr,
                                        rkey,
                                        add: 1,
                                    },
                                    signaled: i == k - 1,
                                })
                                .collect();
                            s.qp.post_send(&wrs).unwrap();
                            let wc = s.wait().unwrap();
                            assert_eq!(wc.status, WcStatus::Success);
                            done += k;
                        }
                    });
                }
            });
            say("DONE".into());
            let _ = lines.next();
        }
        r => panic!("unknown child role {r}"),
    }
}

fn faa_two_processes(link: LinkKind, test: &str) {
    let nic = open(link);
    let pd = nic.alloc_pd().unwrap();
    let region = nic.alloc_mr(pd, 4096, Access::ALL).unwrap();
    let n = 100_000u64;
    let mut kids: Vec<ChildProc> = (0..2)
        .map(|_| ChildProc::spawn(test, "faa", link))
        .collect();
    let mut sides = Vec::new();
    for k in &mut kids {
        k.send(&format!("{} {} {}", region.addr() + 64, region.rkey(), n));
        for _ in 0..2 {
            let l = k.line();
            assert_eq!(l[0], "EP");
            let s = Side::new(nic.clone(), pd, 4096).unwrap();
            s.qp.connect(&QpEndpoint::decode(&unhex(&l[1])).unwrap())
                .unwrap();
            k.send(&hex(&s.qp.endpoint().encode()));
            sides.push(s);
        }
    }
    for k in &mut kids {
        assert_eq!(k.line(), vec!["DONE"]);
    }
    assert_eq!(
        region.load_u64(64).unwrap(),
        4 * n,
        "2 processes x 2 threads x {n} FAA"
    );
}

multiproc_test!(faa_2proc_2threads_shm, faa_two_processes, LinkKind::Shm);
multiproc_test!(faa_2proc_2threads_tcp, faa_two_processes, LinkKind::Tcp);

/// The memory node is SIGKILLed while the client streams reads: the client
/// gets an error completion (never a hang), and later posts fail cleanly.
fn server_killed(link: LinkKind, test: &str) {
    let nic = open(link);
    let mut srv = ChildProc::spawn(test, "server", link);
    let r = srv.line();
    let (addr, rkey): (u64, u32) = (r[1].parse().unwrap(), r[2].parse().unwrap());
    let pd = nic.alloc_pd().unwrap();
    let c = Side::new(nic.clone(), pd, 1 << 20).unwrap();
    srv.send(&hex(&c.qp.endpoint().encode()));
    let l = srv.line();
    c.qp.connect(&QpEndpoint::decode(&unhex(&l[1])).unwrap())
        .unwrap();
    // Stream until the kill, then wait for the error.
    let start = Instant::now();
    let mut killed_at = None;
    let mut ok = 0u64;
    let mut outstanding = 0u64;
    let status = loop {
        while outstanding < 64 {
            c.qp.post_send(&[SendWr {
                wr_id: ok,
                op: WrOp::Read {
                    local: c.sge(0, 4096),
                    raddr: addr,
                    rkey,
                },
                signaled: true,
            }])
            .unwrap();
            outstanding += 1;
        }
        let wc = wait_wc(&*c.cq, Duration::from_secs(20)).expect("a completion, not a hang");
        outstanding -= 1;
        if wc.status != WcStatus::Success {
            break wc.status;
        }
        ok += 1;
        if ok == 2_000 {
            srv.child.kill().unwrap();
            srv.child.wait().unwrap();
            killed_at = Some(Instant::now());
        }
        assert!(start.elapsed() < Duration::from_secs(60));
    };
    let killed_at = killed_at.expect("error before the kill");
    assert!(
        matches!(status, WcStatus::RetryExcErr | WcStatus::WrFlushErr),
        "{status:?}"
    );
    assert!(killed_at.elapsed() < Duration::from_secs(10));
    // Everything else outstanding completes (flushed), nothing hangs.
    for _ in 1..outstanding {
        let wc = wait_wc(&*c.cq, Duration::from_secs(10)).unwrap();
        assert_ne!(wc.status, WcStatus::Success);
    }
    // Reconnecting to a dead NIC is an error, not a hang.
    c.qp.reset().unwrap();
    let ep = QpEndpoint::decode(&unhex(&l[1])).unwrap();
    assert!(c.qp.connect(&ep).is_err());
}

multiproc_test!(server_killed_mid_stream_shm, server_killed, LinkKind::Shm);
multiproc_test!(server_killed_mid_stream_tcp, server_killed, LinkKind::Tcp);

/// A client process is SIGKILLed mid-stream: the memory node keeps serving
/// its other clients.
fn client_killed(link: LinkKind, test: &str) {
    let nic = open(link);
    let pd = nic.alloc_pd().unwrap();
    let region = nic.alloc_mr(pd, 4096, Access::ALL).unwrap();
    let mut kid = ChildProc::spawn(test, "faa", link);
    kid.send(&format!(
        "{} {} {}",
        region.addr(),
        region.rkey(),
        50_000_000u64
    ));
    let mut keep = Vec::new();
    for _ in 0..2 {
        let l = kid.line();
        let s = Side::new(nic.clone(), pd, 4096).unwrap();
        s.qp.connect(&QpEndpoint::decode(&unhex(&l[1])).unwrap())
            .unwrap();
        kid.send(&hex(&s.qp.endpoint().encode()));
        keep.push(s);
    }
    // Let it hammer, then kill it.
    let t0 = Instant::now();
    while region.load_u64(0).unwrap() < 10_000 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "child made no progress"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    kid.child.kill().unwrap();
    kid.child.wait().unwrap();
    // Another client (in this process, other NIC) still works.
    let other = open(link);
    let opd = other.alloc_pd().unwrap();
    let c = Side::new(other, opd, 4096).unwrap();
    let s = Side::new(nic.clone(), pd, 4096).unwrap();
    s.qp.connect(&c.qp.endpoint()).unwrap();
    c.qp.connect(&s.qp.endpoint()).unwrap();
    for i in 0..1000u64 {
        let wc = c
            .run(WrOp::Faa {
                local: c.sge(0, 8),
                raddr: region.addr() + 8,
                rkey: region.rkey(),
                add: 1,
            })
            .unwrap();
        assert_eq!(wc.status, WcStatus::Success, "op {i} after the client died");
    }
    assert_eq!(region.load_u64(8).unwrap(), 1000);
}

multiproc_test!(client_killed_mid_stream_shm, client_killed, LinkKind::Shm);
multiproc_test!(client_killed_mid_stream_tcp, client_killed, LinkKind::Tcp);
