//! The memory node's serve pass (in-process cluster, soft NIC on shm): a
//! directory takes many client threads' requests in one pass, posts all
//! their binds and unbinds (and the due GC's) as one chain per data QP,
//! waits for them, then replies. Checked: the pass statistics, every reply
//! and lease byte-exact, revocation on relinquish and on expiry under load,
//! and a bind that fails inside a chain failing only its own request.
//!
//! Most tests drive the directory themselves (`serve_once` after the
//! requests are queued), so that what one pass holds is exact rather than
//! left to scheduling.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use patronus::client::{ClientThread, Lease};
use patronus::lease::flags::{acquire, rw};
use patronus::lease::msg::AdminOp;
use patronus::lease::{AcquireStatus as St, Rc};
use patronus::node::{Config, Patronus};
use patronus::server::Directory;

mod common;

static SEQ: AtomicU64 = AtomicU64::new(0);
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Only a failing test waits this long.
const PATIENCE: Duration = Duration::from_secs(20);

/// Node 0 is the memory node (one directory, handed to `f` unserved);
/// nodes 1.. are client nodes of `threads` client threads each. After `f`
/// every node finishes and the directory serves out the run.
fn with_cluster(
    machines: u16,
    threads: u16,
    f: impl FnOnce(&Patronus, &mut Directory, &[Patronus]),
) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = Config {
        machine_nr: machines,
        dir_nr: 1,
        client_threads: threads,
        cluster: format!(
            "dirbatch-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ),
        fabric: "shm".into(),
        keeper: None,
        leases_per_dir: 1024,
        // Requests wait for the test to serve them.
        rpc_timeout: PATIENCE,
        ..Config::default()
    };
    let mut nodes = common::cluster::start_nodes(&cfg);
    let server = nodes.remove(0);
    let mut d = server.register_server_thread().unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&server, &mut d, &nodes)));
    server.finished(0).unwrap();
    for n in &nodes {
        n.finished(0).unwrap();
    }
    d.server_serve(0).unwrap();
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

/// Serves until `n` requests are queued at once, then serves exactly one
/// pass; returns what it handled.
fn one_pass_of(d: &mut Directory, n: usize) -> usize {
    let t0 = Instant::now();
    while d.queued_requests().unwrap() < n {
        assert!(
            t0.elapsed() < PATIENCE,
            "{} of {n} requests queued",
            d.queued_requests().unwrap()
        );
        thread::sleep(Duration::from_micros(200));
    }
    d.serve_once().unwrap()
}

/// Serves passes until `done` holds.
fn serve_until(d: &mut Directory, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < PATIENCE, "serving: not done in time");
        if d.serve_once().unwrap() == 0 {
            thread::yield_now();
        }
    }
}

/// The 64 bytes client `i` writes in round `r`.
fn pattern(i: u64, r: u64) -> [u8; 64] {
    let mut p = [0u8; 64];
    for (k, b) in p.iter_mut().enumerate() {
        *b = (i * 131 + r * 17 + k as u64) as u8;
    }
    p
}

/// True once the NIC refuses `l`'s window (the local check skipped).
fn revoked(c: &mut ClientThread, l: &mut Lease) -> bool {
    let mut b = [0u8; 8];
    match c.read(l, &mut b, 0, rw::NO_LOCAL_EXPIRE_CHECK).unwrap() {
        Rc::Ok => false,
        Rc::RdmaProtectionErr => true,
        rc => panic!("read of a revoked lease: {rc:?}"),
    }
}

/// 16 client threads on 2 nodes acquire together: one pass serves all 16
/// acquires, posting their 32 binds as 16 chains before a single wait; the
/// 16 relinquishes are again one pass; every lease reads and writes
/// byte-exact, and the relinquished windows are refused by the NIC.
#[test]
fn one_pass_binds_sixteen_clients_acquires_and_unbinds_their_relinquishes() {
    with_cluster(3, 8, |srv, d, clients| {
        let n = 16usize;
        let phase = Barrier::new(n + 1);
        let phase = &phase;
        let before = d.stats();
        thread::scope(|s| {
            let hs: Vec<_> = (0..n)
                .map(|i| {
                    let node = &clients[i % 2];
                    s.spawn(move || {
                        let mut c = node.register_client_thread().unwrap();
                        let key = i as u64 * 4096;
                        phase.wait(); // all registered: acquire together
                        let mut l = c.get_lease(true, 0, 0, key, 64, 0, acquire::NO_GC).unwrap();
                        assert!(l.success(), "client {i}: status {}", l.ec());
                        let p = pattern(i as u64, 0);
                        assert_eq!(c.write(&mut l, &p, 0, 0).unwrap(), Rc::Ok);
                        let mut b = [0u8; 64];
                        assert_eq!(c.read(&mut l, &mut b, 0, 0).unwrap(), Rc::Ok);
                        assert_eq!(b, p, "client {i} reads what it wrote");
                        // Outside the lease: refused.
                        assert_eq!(
                            c.read(&mut l, &mut b, 32, 0).unwrap(),
                            Rc::RdmaProtectionErr
                        );
                        let mut stale = l.clone();
                        phase.wait(); // all verified: relinquish together
                        assert_eq!(c.relinquish(&mut l, 0, 0).unwrap(), Rc::Ok);
                        assert!(
                            revoked(&mut c, &mut stale),
                            "client {i}: window still works"
                        );
                    })
                })
                .collect();
            phase.wait();
            assert_eq!(one_pass_of(d, n), n, "one pass takes all 16 acquires");
            let st = d.stats();
            assert_eq!(st.max_requests_per_pass, n as u64, "{st:?}");
            assert_eq!(st.binds - before.binds, 2 * n as u64, "{st:?}");
            assert_eq!(st.max_pass_bind_requests, n as u64, "{st:?}");
            assert_eq!(
                st.max_pass_chains, n as u64,
                "one chain per data QP: {st:?}"
            );
            assert_eq!(st.chains - before.chains, n as u64, "{st:?}");
            assert_eq!(st.max_pass_wrs, 2 * n as u64, "{st:?}");
            assert_eq!(d.live_leases(), n);
            phase.wait();
            let st = d.stats();
            assert_eq!(one_pass_of(d, n), n, "one pass takes all 16 relinquishes");
            let st2 = d.stats();
            assert_eq!(st2.unbinds - st.unbinds, 2 * n as u64, "{st2:?}");
            assert_eq!(st2.chains - st.chains, n as u64, "{st2:?}");
            assert_eq!(d.live_leases(), 0);
            for h in hs {
                h.join().unwrap();
            }
        });
        // The server buffer holds what the clients wrote.
        for i in 0..n as u64 {
            let mut b = [0u8; 64];
            srv.buffer_read(i * 4096, &mut b).unwrap();
            assert_eq!(b, pattern(i, 0));
        }
        assert_eq!(d.stats().failed_wrs, 0);
    });
}

/// A bind refused by the NIC inside a chain: client 0's acquire (whose
/// object bind fails, flushing its region bind and the GC's unbinds of its
/// expired earlier lease that follow on the same QP) fails with BIND_ERR;
/// the 3 other acquires of the pass succeed; the flushed unbinds are posted
/// again, so the expired lease is revoked; client 0's slot and windows are
/// back (its next acquire works) and no lease leaks.
#[test]
fn a_bind_failing_inside_a_chain_fails_only_its_request() {
    with_cluster(2, 4, |srv, d, clients| {
        let n = 4usize;
        let node = &clients[0];
        let nid = node.get_node_id();
        let phase = Barrier::new(n + 1);
        let phase = &phase;
        let (tx, rx) = std::sync::mpsc::channel();
        thread::scope(|s| {
            let hs: Vec<_> = (0..n)
                .map(|i| {
                    let tx = tx.clone();
                    s.spawn(move || {
                        let mut c = node.register_client_thread().unwrap();
                        let tid = c.get_thread_id();
                        if i == 0 {
                            tx.send(tid).unwrap();
                        }
                        let key = i as u64 * 4096;
                        // Client 0 first takes a lease of 20 ms it leaves to
                        // the GC.
                        let old = (i == 0).then(|| {
                            let l = c.get_lease(true, 0, 0, 1 << 20, 64, 20_000_000, 0).unwrap();
                            assert!(l.success());
                            l
                        });
                        phase.wait(); // (tid, old lease acquired)
                        phase.wait(); // old lease expired: acquire together
                        let mut l = c.get_lease(true, 0, 0, key, 64, 0, acquire::NO_GC).unwrap();
                        if l.success() {
                            let p = pattern(i as u64, 1);
                            assert_eq!(c.write(&mut l, &p, 0, 0).unwrap(), Rc::Ok);
                            let mut b = [0u8; 64];
                            assert_eq!(c.read(&mut l, &mut b, 0, 0).unwrap(), Rc::Ok);
                            assert_eq!(b, p, "client {i} reads what it wrote");
                            assert_eq!(c.relinquish(&mut l, 0, 0).unwrap(), Rc::Ok);
                        }
                        let ec = l.ec();
                        (tid, c, old, ec)
                    })
                })
                .collect();
            // The first acquire is served alone; it arms a GC task.
            assert_eq!(one_pass_of(d, 1), 1);
            phase.wait();
            // Let it expire without serving, so its GC task is due in the
            // pass under test.
            let ddl = srv.now() + 20_000_000;
            while srv.now() < ddl + srv.epsilon() + 1_000_000 {
                thread::sleep(Duration::from_millis(1));
            }
            phase.wait();
            let before = d.stats();
            assert_eq!(
                d.live_leases(),
                1,
                "client 0's expired lease, not yet collected"
            );
            let tid0 = rx.recv().unwrap();
            d.inject_bind_fault(nid, tid0);
            assert_eq!(
                one_pass_of(d, n),
                n + 1,
                "4 requests and 1 GC task in one pass"
            );
            let st = d.stats();
            assert_eq!(
                st.failed_wrs - before.failed_wrs,
                1,
                "one bind failed: {st:?}"
            );
            assert!(
                st.reposted_wrs - before.reposted_wrs >= 3,
                "the flushed region bind and the 2 GC unbinds went again: {st:?}"
            );
            assert_eq!(
                d.live_leases(),
                n - 1,
                "3 granted, the failed one and the expired one gone"
            );
            serve_until(d, || hs.iter().all(|h| h.is_finished()));
            let mut res: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
            res.sort_by_key(|r| r.0);
            let mut failed = 0;
            for (tid, c, old, ec) in res.iter_mut() {
                if *tid == tid0 {
                    assert_eq!(*ec, St::BindErr as u8, "client 0's acquire fails");
                    failed += 1;
                    let mut old = old.take().expect("client 0 held the old lease");
                    assert!(
                        revoked(c, &mut old),
                        "the GC's flushed unbinds were re-posted"
                    );
                } else {
                    assert_eq!(*ec, St::Success as u8, "thread {tid}: the others succeed");
                }
            }
            assert_eq!(failed, 1);
            // Client 0 is served again normally.
            let (_, c, ..) = res.iter_mut().find(|r| r.0 == tid0).unwrap();
            thread::scope(|s2| {
                let h = s2.spawn(|| {
                    let mut l = c.get_lease(true, 0, 0, 0, 64, 0, acquire::NO_GC).unwrap();
                    assert!(l.success(), "status {}", l.ec());
                    assert_eq!(c.relinquish(&mut l, 0, 0).unwrap(), Rc::Ok);
                });
                serve_until(d, || h.is_finished());
                h.join().unwrap();
            });
            assert_eq!(d.live_leases(), 0);
        });
    });
}

/// 16 client threads on 2 nodes in acquire / write / read / relinquish
/// loops against a directory serving on its own thread, each also leaving
/// short leases to the GC: passes hold several requests, every result is
/// byte-exact, relinquished and expired leases are refused by the NIC, and
/// no lease is left.
#[test]
fn under_load_passes_batch_and_gc_still_revokes() {
    let (threads, per_node) = (16usize, 8u16);
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = Config {
        machine_nr: 3,
        dir_nr: 1,
        client_threads: per_node,
        cluster: format!("dirbatch-load-{}", std::process::id()),
        fabric: "shm".into(),
        keeper: None,
        leases_per_dir: 1024,
        rpc_timeout: PATIENCE,
        ..Config::default()
    };
    let mut nodes = common::cluster::start_nodes(&cfg);
    let server = nodes.remove(0);
    let clients = &nodes;
    let mut d = server.register_server_thread().unwrap();
    let start = Barrier::new(threads);
    let start = &start;
    let stats = thread::scope(|s| {
        let srv = s.spawn(move || d.server_serve(0).map(|_| d.stats()));
        let hs: Vec<_> = (0..threads)
            .map(|i| {
                let node = &clients[i % 2];
                s.spawn(move || {
                    let mut c = node.register_client_thread().unwrap();
                    start.wait();
                    let t0 = Instant::now();
                    let mut left = Vec::new();
                    let mut rounds = 0u64;
                    while rounds < 200 && t0.elapsed() < Duration::from_secs(4) {
                        let key = i as u64 * 8192 + (rounds % 32) * 64;
                        let mut l = c.get_lease(true, 0, 0, key, 64, 1_000_000_000, 0).unwrap();
                        assert!(l.success(), "client {i} round {rounds}: {}", l.ec());
                        let p = pattern(i as u64, rounds);
                        assert_eq!(c.write(&mut l, &p, 0, 0).unwrap(), Rc::Ok);
                        let mut b = [0u8; 64];
                        assert_eq!(c.read(&mut l, &mut b, 0, 0).unwrap(), Rc::Ok);
                        assert_eq!(b, p, "client {i} round {rounds}");
                        let mut stale = l.clone();
                        assert_eq!(c.relinquish(&mut l, 0, 0).unwrap(), Rc::Ok);
                        assert!(
                            revoked(&mut c, &mut stale),
                            "client {i}: relinquished window works"
                        );
                        if rounds % 20 == 0 {
                            // Left to the GC (10 ms).
                            let l = c
                                .get_lease(false, 0, 0, 1 << 20, 64, 10_000_000, 0)
                                .unwrap();
                            assert!(l.success());
                            left.push(l);
                        }
                        rounds += 1;
                    }
                    // Every lease left to the GC is revoked by it.
                    let t1 = Instant::now();
                    for l in left.iter_mut() {
                        while !revoked(&mut c, l) {
                            assert!(t1.elapsed() < PATIENCE, "client {i}: GC did not revoke");
                            thread::sleep(Duration::from_millis(1));
                        }
                    }
                    (rounds, c)
                })
            })
            .collect();
        let mut total = 0;
        let mut cs = Vec::new();
        for h in hs {
            let (r, c) = h.join().unwrap();
            total += r;
            cs.push(c);
        }
        assert!(total >= threads as u64, "{total} rounds");
        // No lease is left on the directory.
        let live = cs[0].admin(0, 0, AdminOp::Stats, 0).unwrap();
        assert_eq!(live, 0, "live leases after the load");
        drop(cs);
        server.finished(0).unwrap();
        for n in clients {
            n.finished(0).unwrap();
        }
        srv.join().unwrap().unwrap()
    });
    eprintln!("{stats:?}");
    assert!(
        stats.multi_request_passes > 0,
        "no pass held 2 requests: {stats:?}"
    );
    assert!(
        stats.max_pass_bind_requests > 1,
        "no pass bound for 2 requests: {stats:?}"
    );
    assert_eq!(stats.failed_wrs, 0, "{stats:?}");
}
