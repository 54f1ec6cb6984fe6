//! The lease protocol end to end on an in-process cluster (soft NIC, shm):
//! acquisition, one-sided access inside and outside the lease, recovery,
//! revocation on relinquish and expiry, one-sided and two-sided extension,
//! conflict detection, two-sided access checked against the lease, and the
//! fixes over the original (stale GC task, foreign relinquish, extension
//! racing GC, admission of offset + size).

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use patronus::client::{ClientThread, Lease, Post};
use patronus::lease::flags::{acquire, modify, rw};
use patronus::lease::msg::AdminOp;
use patronus::lease::{AcquireStatus as St, Rc};
use patronus::node::{Config, Patronus};

#[path = "../common/mod.rs"]
mod common;

static SEQ: AtomicU64 = AtomicU64::new(0);
/// The tests measure expiry in milliseconds: one cluster at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Starts `machines` nodes (node 0 is the memory node and serves `dirs`
/// directories on its own threads) and runs `f` with the client nodes.
fn with_cluster(machines: u16, dirs: u16, f: impl FnOnce(&Patronus, &[Patronus])) {
    with_cluster_cfg(machines, dirs, |_| {}, f)
}

/// `with_cluster` with the configuration changed by `tweak` first.
fn with_cluster_cfg(
    machines: u16,
    dirs: u16,
    tweak: impl FnOnce(&mut Config),
    f: impl FnOnce(&Patronus, &[Patronus]),
) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    common::cluster::init_tracing();
    let name = format!(
        "lease-core-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let mut cfg = Config {
        machine_nr: machines,
        dir_nr: dirs,
        client_threads: 4,
        cluster: name,
        fabric: "shm".into(),
        keeper: None,
        leases_per_dir: 1024,
        // acquire_flags_mr_universal_norpc_nobind reads through the
        // universal rkey (off by default; see protection_hostile.rs).
        allow_universal_rkey: true,
        ..Config::default()
    };
    tweak(&mut cfg);
    common::cluster::with_cluster(cfg, |server, nodes| {
        eprintln!("cluster epsilon {} ns", server.epsilon());
        f(server, nodes)
    });
}

/// A one-node cluster (memory node and client in one node): a client
/// thread registered before the directory serves, `f` runs with the node
/// and that thread, then the node calls `finished` (a node with client
/// threads serves until then).
fn with_one_node(name: &str, magic_mw_fault: bool, f: impl FnOnce(&Patronus, &mut ClientThread)) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = Config {
        machine_nr: 1,
        cluster: format!("{name}-{}", std::process::id()),
        fabric: "shm".into(),
        keeper: None,
        leases_per_dir: 64,
        magic_mw_fault,
        ..Config::default()
    };
    let p = Patronus::new(cfg).unwrap();
    let mut d = p.register_server_thread().unwrap();
    let mut c = p.register_client_thread().unwrap();
    thread::scope(|s| {
        let h = s.spawn(move || d.server_serve(0));
        f(&p, &mut c);
        drop(c);
        p.finished(0).unwrap();
        h.join().unwrap().unwrap();
    });
}

const W: bool = true;
const R: bool = false;

/// How long a condition the tests wait for may take on a loaded 2-core
/// machine before the test fails (only a failing test waits this long).
const PATIENCE: Duration = Duration::from_secs(10);

/// Polls `cond` (every 100 us) until it holds; fails naming `what` after
/// [`PATIENCE`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < PATIENCE, "{what}: not within {PATIENCE:?}");
        thread::sleep(Duration::from_micros(100));
    }
}

/// Waits until `ddl` has passed beyond doubt on `node`'s synchronised
/// clock (`now > ddl + epsilon`), i.e. on every node's clock.
fn wait_past(node: &Patronus, ddl: i64) {
    wait_until(&format!("the deadline {ddl} passing"), || {
        node.now() > ddl.saturating_add(node.epsilon())
    });
}

/// Leases directory 0 of node 0 holds (its admin statistics).
fn live_leases(c: &mut ClientThread) -> i64 {
    c.admin(0, 0, AdminOp::Stats, 0).unwrap()
}

/// The message of the error `r` must be (what the API refuses before
/// anything is sent).
fn refusal<T: std::fmt::Debug, E: std::fmt::Display>(r: Result<T, E>) -> String {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

/// Waits out `l`'s deadline and checks both halves of expiry: the local
/// check refuses at once, and once the directory's GC has collected the
/// lease (the directory holds no other), the NIC refuses its window.
fn expect_expiry(node: &Patronus, c: &mut ClientThread, l: &mut Lease) {
    let mut b = [0u8; 8];
    wait_past(node, l.ddl);
    assert_eq!(
        c.read(l, &mut b, 0, 0).unwrap(),
        Rc::LeaseLocalExpiredErr,
        "the local check after the deadline"
    );
    wait_until("the GC collecting the expired lease", || {
        live_leases(c) == 0
    });
    assert_eq!(
        c.read(l, &mut b, 0, rw::NO_LOCAL_EXPIRE_CHECK).unwrap(),
        Rc::RdmaProtectionErr,
        "the memory node must have revoked the window"
    );
}

/// Waits until the memory node has revoked `l`'s window: one-sided reads
/// (without the local check) succeed until then, and must then be refused
/// by the NIC.
fn wait_revoked(c: &mut ClientThread, l: &mut Lease, what: &str) {
    let mut b = [0u8; 8];
    wait_until(&format!("the memory node revoking {what}"), || {
        match c.read(l, &mut b, 0, rw::NO_LOCAL_EXPIRE_CHECK).unwrap() {
            Rc::Ok => false,
            Rc::RdmaProtectionErr => true,
            rc => panic!("reading {what}: {rc:?}"),
        }
    });
}

mod access;
mod expiry;
mod flags;
mod rekey;
mod time;

/// The call was refused with a cause (the Rust API reports refusals as
/// `Error::Invalid` naming the lease and why).
fn assert_refused<T: std::fmt::Debug>(r: patronus::Result<T>) {
    match r {
        Err(patronus::Error::Invalid(why)) => assert!(!why.is_empty()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Two busy-loop threads (one per core of the CI machine) for at most
/// `limit`; they stop when the returned guard drops.
pub(crate) fn hogs(limit: Duration) -> impl Drop {
    struct Hogs(
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        Vec<thread::JoinHandle<()>>,
    );
    impl Drop for Hogs {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
            for h in self.1.drain(..) {
                let _ = h.join();
            }
        }
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hs = (0..2)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let t0 = Instant::now();
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) && t0.elapsed() < limit {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    std::hint::black_box(x);
                }
            })
        })
        .collect();
    Hogs(stop, hs)
}
