//! Many calls in flight on one client thread (issue 12): posted calls and
//! their completions on an in-process cluster (soft NIC, shm). Mixed
//! acquisitions, reads, writes, CAS, FAA and relinquishes complete exactly
//! once each, byte-exact; FAAs in flight on one word sum exactly; the
//! per-thread limit pushes back with Retry and loses nothing; a refused
//! access fails alone while the calls the fault flushed complete normally;
//! expiry with calls in flight; bad posts; blocking calls mixed in.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use patronus::client::{ClientThread, Completion, Lease, Post};
use patronus::lease::flags::{acquire, rw};
use patronus::lease::msg::AdminOp;
use patronus::lease::Rc;
use patronus::node::{Config, Patronus};

mod common;

static SEQ: AtomicU64 = AtomicU64::new(0);
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Node 0 serves `dirs` directories; `f` gets a client thread of node 1.
fn with_client(dirs: u16, max_inflight: u32, f: impl FnOnce(&Patronus, &mut ClientThread)) {
    with_nodes(dirs, max_inflight, |srv, cl| {
        let mut c = cl.register_client_thread().unwrap();
        f(srv, &mut c);
    })
}

/// Node 0 serves `dirs` directories; `f` gets it and the client node 1.
fn with_nodes(dirs: u16, max_inflight: u32, f: impl FnOnce(&Patronus, &Patronus)) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = Config {
        machine_nr: 2,
        dir_nr: dirs,
        client_threads: 2,
        cluster: format!(
            "inflight-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ),
        fabric: "shm".into(),
        keeper: None,
        leases_per_dir: 512,
        lease_quota_per_thread: 256,
        max_inflight,
        ..Config::default()
    };
    common::cluster::with_cluster(cfg, |server, clients| f(server, &clients[0]));
}

/// Waits for exactly `n` completions (10 s at most), each user_data once.
fn collect(c: &mut ClientThread, n: usize) -> HashMap<u64, Completion> {
    let mut got = HashMap::new();
    let t0 = Instant::now();
    while got.len() < n {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{} of {n} completions after 10 s ({} in flight)",
            got.len(),
            c.inflight()
        );
        for x in c.wait(64, Duration::from_millis(10)).unwrap() {
            let tag = x.user_data;
            assert!(
                got.insert(tag, x).is_none(),
                "user_data {tag} completed twice"
            );
        }
    }
    assert_eq!(c.inflight(), 0);
    assert!(
        c.poll(64).unwrap().is_empty(),
        "no completion beyond the posted ones"
    );
    got
}

fn posted(p: patronus::Result<Post>) {
    assert_eq!(p.unwrap(), Post::Posted);
}

fn pattern(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| (k * 31 + i * 7 + 1) as u8).collect()
}

fn live_leases(c: &mut ClientThread, dirs: u16) -> i64 {
    (0..dirs)
        .map(|d| c.admin(0, d, AdminOp::Stats, 0).unwrap())
        .sum()
}

const OBJ: u64 = 16 << 10;

#[test]
fn mixed_calls_in_flight_complete_once_and_byte_exact() {
    with_client(2, 128, |_srv, c| {
        let n = 32usize;
        // 32 acquisitions in flight, over both directories.
        for i in 0..n {
            posted(c.post_get_wlease(
                0,
                (i % 2) as u16,
                i as u64 * OBJ,
                0,
                OBJ,
                0,
                acquire::NO_GC,
                i as u64,
            ));
        }
        assert!(c.inflight() == n);
        let mut got = collect(c, n);
        let mut leases: Vec<Lease> = (0..n)
            .map(|i| {
                let x = got.remove(&(i as u64)).unwrap();
                assert_eq!(x.rc(), Rc::Ok);
                let l = *x.lease.unwrap();
                assert!(l.success(), "lease {i}: {}", l.ec());
                l
            })
            .collect();
        assert!(c.peak_inflight() >= n, "peak {}", c.peak_inflight());
        // Writes of various sizes (some through the large staging buffer)
        // at unaligned offsets, a CAS and an FAA per lease, all in flight.
        let size = |i: usize| [1usize, 64, 4095, 4096, 4097, 9000][i % 6];
        for (i, l) in leases.iter_mut().enumerate() {
            posted(c.post_write(l, &pattern(i, size(i)), 3, 0, 1000 + i as u64));
            posted(c.post_write(l, &(i as u64).to_le_bytes(), 12 << 10, 0, 2000 + i as u64));
        }
        let got = collect(c, 2 * n);
        assert!(got.values().all(|x| x.rc() == Rc::Ok));
        for (i, l) in leases.iter_mut().enumerate() {
            posted(c.post_cas(
                l,
                12 << 10,
                i as u64,
                1_000_000 + i as u64,
                0,
                3000 + i as u64,
            ));
            posted(c.post_faa(l, 12 << 10, 5, 0, 4000 + i as u64));
            posted(c.post_read(l, size(i), 3, 0, 5000 + i as u64));
        }
        let got = collect(c, 3 * n);
        for i in 0..n {
            let cas = &got[&(3000 + i as u64)];
            assert_eq!((cas.rc(), cas.value), (Rc::Ok, i as u64), "CAS {i}");
            let faa = &got[&(4000 + i as u64)];
            assert_eq!(
                (faa.rc(), faa.value),
                (Rc::Ok, 1_000_000 + i as u64),
                "FAA {i}"
            );
            let rd = &got[&(5000 + i as u64)];
            assert_eq!(rd.rc(), Rc::Ok);
            assert!(rd.data == pattern(i, size(i)), "read {i} differs");
        }
        // Every word ended as CAS then FAA made it.
        for (i, l) in leases.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            assert_eq!(c.read(l, &mut b, 12 << 10, 0).unwrap(), Rc::Ok);
            assert_eq!(u64::from_le_bytes(b), 1_000_005 + i as u64);
        }
        assert_eq!(live_leases(c, 2), n as i64);
        for (i, l) in leases.iter_mut().enumerate() {
            posted(c.post_relinquish(l, 0, 0, 6000 + i as u64));
        }
        let got = collect(c, n);
        assert!(got.values().all(|x| matches!(x.result, Ok(Rc::Ok))));
        assert_eq!(
            live_leases(c, 2),
            0,
            "every relinquish reached its directory"
        );
    });
}

#[test]
fn sixty_four_faas_in_flight_on_one_word_sum_exactly() {
    with_client(1, 64, |srv, c| {
        let mut l = c.get_wlease(0, 0, 0, 0, 64, 0, acquire::NO_GC).unwrap();
        assert!(l.success());
        for round in 0..20u64 {
            for i in 0..64 {
                posted(c.post_faa(&mut l, 8, 1, 0, i));
            }
            let got = collect(c, 64);
            let mut olds: Vec<u64> = got
                .values()
                .map(|x| {
                    assert_eq!(x.rc(), Rc::Ok);
                    x.value
                })
                .collect();
            olds.sort();
            let base = round * 64;
            assert_eq!(
                olds,
                (base..base + 64).collect::<Vec<_>>(),
                "each old value once"
            );
        }
        let mut b = [0u8; 8];
        srv.buffer_read(8, &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), 20 * 64);
        c.relinquish(&mut l, 0, 0).unwrap();
    });
}

#[test]
fn the_limit_pushes_back_with_retry_and_loses_nothing() {
    with_client(1, 8, |srv, c| {
        assert_eq!(c.max_inflight(), 8);
        let mut l = c.get_wlease(0, 0, 0, 0, 64, 0, acquire::NO_GC).unwrap();
        let (mut posted_n, mut retries, mut done) = (0u64, 0u64, 0u64);
        let t0 = Instant::now();
        while done < 1000 {
            assert!(t0.elapsed() < Duration::from_secs(20));
            if posted_n < 1000 {
                match c.post_faa(&mut l, 0, 1, 0, posted_n).unwrap() {
                    Post::Posted => posted_n += 1,
                    Post::Retry => {
                        assert_eq!(c.inflight(), 8, "Retry only at the limit");
                        retries += 1;
                    }
                }
            }
            assert!(c.inflight() <= 8);
            if c.inflight() == 8 || posted_n == 1000 {
                done += c.poll(3).unwrap().len() as u64;
            }
        }
        assert!(retries > 0, "the limit was never reached");
        let mut b = [0u8; 8];
        srv.buffer_read(0, &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), 1000, "every posted FAA ran once");
        // A blocking call works while the posted ones fill the limit.
        for i in 0..8 {
            posted(c.post_faa(&mut l, 0, 1, 0, i));
        }
        assert_eq!(c.post_faa(&mut l, 0, 1, 0, 99).unwrap(), Post::Retry);
        assert_eq!(c.faa(&mut l, 0, 1, 0).unwrap().0, Rc::Ok);
        collect(c, 8);
        srv.buffer_read(0, &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), 1009);
    });
}

#[test]
fn a_refused_access_fails_alone_and_flushed_calls_complete() {
    with_client(1, 64, |srv, c| {
        let mut a = c.get_wlease(0, 0, 0, 0, 4096, 0, acquire::NO_GC).unwrap();
        let mut b = c
            .get_wlease(0, 0, 8192, 0, 4096, 0, acquire::NO_GC)
            .unwrap();
        srv.buffer_write(0, &pattern(1, 4096)).unwrap();
        srv.buffer_write(8192, &pattern(2, 4096)).unwrap();
        for round in 0..50u64 {
            for i in 0..10 {
                posted(c.post_read(&mut a, 64, i * 64, 0, i));
            }
            // Past the end of a's window: refused by the NIC.
            posted(c.post_read(&mut a, 64, 4096, 0, 100));
            for i in 0..10 {
                posted(c.post_read(&mut a, 64, i * 64, 0, 10 + i));
                posted(c.post_write(
                    &mut b,
                    &pattern(round as usize + i as usize, 32),
                    i * 32,
                    0,
                    200 + i,
                ));
            }
            let got = collect(c, 31);
            assert_eq!(got[&100].rc(), Rc::RdmaProtectionErr, "round {round}");
            let want = pattern(1, 4096);
            for i in 0..20u64 {
                let x = &got[&i];
                assert_eq!(x.rc(), Rc::Ok, "read {i} of round {round}");
                let o = (i % 10) as usize * 64;
                assert!(
                    x.data == want[o..o + 64],
                    "read {i} of round {round} differs"
                );
            }
            for i in 0..10u64 {
                assert_eq!(got[&(200 + i)].rc(), Rc::Ok, "write {i} of round {round}");
                let mut m = [0u8; 32];
                srv.buffer_read(8192 + i * 32, &mut m).unwrap();
                assert_eq!(m.to_vec(), pattern(round as usize + i as usize, 32));
            }
        }
        c.relinquish(&mut a, 0, 0).unwrap();
        c.relinquish(&mut b, 0, 0).unwrap();
    });
}

/// Requests go out in chains signalled once: FAAs posted before a refused
/// access in the same chain executed (silently) and must not run again
/// when the flushed rest is posted after the recovery; every FAA adds once
/// and returns its own old value.
#[test]
fn faas_around_a_refused_access_in_one_chain_run_once() {
    with_client(1, 64, |srv, c| {
        let mut l = c.get_wlease(0, 0, 0, 0, 64, 0, acquire::NO_GC).unwrap();
        assert!(l.success());
        for round in 0..20u64 {
            let at = round % 24; // where the refused READ sits in the chain
            let mut k = 0;
            for i in 0..25u64 {
                if i == at {
                    // Past the end of the window: refused by the NIC.
                    posted(c.post_read(&mut l, 8, 64, 0, 1000));
                } else {
                    posted(c.post_faa(&mut l, 8, 1, 0, k));
                    k += 1;
                }
            }
            let got = collect(c, 25);
            assert_eq!(got[&1000].rc(), Rc::RdmaProtectionErr, "round {round}");
            let mut olds: Vec<u64> = (0..24)
                .map(|i| {
                    let x = &got[&i];
                    assert_eq!(x.rc(), Rc::Ok, "faa {i} of round {round}");
                    x.value
                })
                .collect();
            olds.sort();
            let base = round * 24;
            assert_eq!(
                olds,
                (base..base + 24).collect::<Vec<_>>(),
                "round {round}: each old value once"
            );
        }
        let mut b = [0u8; 8];
        srv.buffer_read(8, &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), 20 * 24, "every FAA added once");
        c.relinquish(&mut l, 0, 0).unwrap();
    });
}

#[test]
fn a_lease_that_expires_with_calls_in_flight() {
    with_client(1, 64, |_srv, c| {
        let mut l = c.get_rlease(0, 0, 0, 0, 64, 30_000_000, 0).unwrap();
        assert!(l.success());
        let t0 = Instant::now();
        let (mut ok, mut expired, mut refused, mut tag) = (0, 0, 0, 0u64);
        // Keep 32 reads in flight (NO_LOCAL_EXPIRE_CHECK: the NIC decides
        // after the deadline) until the memory node revoked the lease.
        while refused == 0 {
            assert!(t0.elapsed() < Duration::from_secs(10), "never revoked");
            while c.inflight() < 32 {
                posted(c.post_read(&mut l, 64, 0, rw::NO_LOCAL_EXPIRE_CHECK, tag));
                tag += 1;
            }
            for x in c.wait(64, Duration::from_millis(5)).unwrap() {
                match x.rc() {
                    Rc::Ok => ok += 1,
                    Rc::RdmaProtectionErr => refused += 1,
                    rc => panic!("read {}: {rc:?}", x.user_data),
                }
            }
        }
        collect(c, c.inflight());
        // With the local check the expired lease is refused at post time.
        posted(c.post_read(&mut l, 64, 0, 0, 1));
        let x = c.wait(1, Duration::from_secs(1)).unwrap().pop().unwrap();
        assert_eq!(x.rc(), Rc::LeaseLocalExpiredErr);
        expired += 1;
        assert!(
            ok > 0 && refused > 0 && expired == 1,
            "{ok} ok, {refused} refused"
        );
    });
}

/// Reads that passed the local expiry check when posted never report a
/// protection error because the lease ran out while they were in flight:
/// they complete as LEASE_LOCAL_EXPIRED_ERR (the call-time contract).
#[test]
fn calls_that_expire_in_flight_report_expiry_not_a_fault() {
    with_client(1, 64, |_srv, c| {
        let (mut expired_posted, mut expired_in_flight) = (0, 0);
        for round in 0..10u64 {
            let mut l = c
                .get_rlease(0, 0, 4096 * round, 0, 64, 20_000_000, 0)
                .unwrap();
            assert!(l.success());
            let t0 = Instant::now();
            let mut first_bad = None;
            let mut tag = 0u64;
            while first_bad.is_none() {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "round {round}: never expired"
                );
                while c.inflight() < 16 {
                    posted(c.post_read(&mut l, 64, 0, 0, tag));
                    tag += 1;
                }
                for x in c.wait(64, Duration::from_millis(5)).unwrap() {
                    match x.rc() {
                        Rc::Ok => {}
                        Rc::LeaseLocalExpiredErr => {
                            first_bad.get_or_insert(Rc::LeaseLocalExpiredErr);
                        }
                        rc => {
                            panic!("round {round}: a read that passed the local check got {rc:?}")
                        }
                    }
                }
            }
            for x in collect(c, c.inflight()).into_values() {
                let rc = x.rc();
                assert!(
                    matches!(rc, Rc::Ok | Rc::LeaseLocalExpiredErr),
                    "round {round}: {rc:?}"
                );
                if rc == Rc::LeaseLocalExpiredErr {
                    expired_in_flight += 1;
                }
            }
            expired_posted += 1;
        }
        eprintln!(
            "{expired_posted} rounds, {expired_in_flight} reads expired in flight or at post"
        );
    });
}

/// An auto-extended call that runs out of its lease while in flight (it
/// passed the local check and needed no extension when posted, and reached
/// the memory node after the GC had revoked the lease) completes as
/// LEASE_LOCAL_EXPIRED_ERR and is counted in `auto_extend_lost`, never a
/// protection error. Large reads share the thread's large buffer one at a
/// time, so the later ones are sent only once the first completes: after
/// the deadline here (the first, too, when the engine sends it only at
/// the first poll).
#[test]
fn an_auto_extended_call_that_expires_in_flight_is_counted_lost() {
    with_nodes(1, 64, |_srv, cl| {
        let mut c = cl.register_client_thread().unwrap();
        let mut w = cl.register_client_thread().unwrap();
        let big = 64 * 1024;
        let mut l = c.get_rlease(0, 0, 0, 0, big, 20_000_000, 0).unwrap();
        assert!(l.success());
        // About 220 ms left of 220 held: more than auto-extend's margin
        // (half the time held), so the reads are posted without an
        // extension.
        assert_eq!(c.extend(&mut l, 200_000_000, 0).unwrap(), Rc::Ok);
        // The witness, on another thread, is due just after `l`: once it is
        // revoked, so is `l`.
        let term = (l.ddl - cl.now() + 2_000_000) as u64;
        let mut wl = w.get_rlease(0, 0, 1 << 20, 0, 64, term, 0).unwrap();
        assert!(wl.success() && wl.ddl > l.ddl);
        let lost0 = c.auto_extend_lost();
        for tag in 0..4 {
            posted(c.post_read(&mut l, big as usize, 0, rw::WITH_AUTO_EXTEND, tag));
        }
        let mut b = [0u8; 8];
        let t0 = Instant::now();
        while w
            .read(&mut wl, &mut b, 0, rw::NO_LOCAL_EXPIRE_CHECK)
            .unwrap()
            == Rc::Ok
        {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the witness was never revoked"
            );
            thread::yield_now();
        }
        let got = collect(&mut c, 4);
        let rcs: Vec<Rc> = (0..4).map(|t| got[&t].rc()).collect();
        eprintln!("reads: {rcs:?}, lost {}", c.auto_extend_lost() - lost0);
        // The engine sends what was posted between two polls at the next
        // poll (or 16 at a time): the first read may have gone before the
        // deadline; the later ones waited for the large buffer past it.
        assert!(
            rcs.iter()
                .all(|r| matches!(r, Rc::Ok | Rc::LeaseLocalExpiredErr)),
            "{rcs:?}"
        );
        assert!(
            rcs[1..].iter().all(|r| *r == Rc::LeaseLocalExpiredErr),
            "{rcs:?}"
        );
        assert!(
            c.auto_extend_lost() > lost0,
            "a lease auto-extend did not keep alive went unreported"
        );
    });
}

/// The expiry probe under two busy-loop hogs on the 2 cores: 20 ms leases
/// read (blocking, local check on) until the first failure, which must be
/// LEASE_LOCAL_EXPIRED_ERR every time (measured before the call-time
/// contract: 58 of 300 rounds ended with a protection error). 40 rounds in
/// the test command; `scripts/load-check.sh` runs 100
/// (`PATRONUS_PROBE_ROUNDS`).
#[test]
fn the_expiry_probe_under_two_hogs_never_sees_a_fault() {
    with_client(1, 64, |_srv, c| {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hogs: Vec<_> = (0..2)
            .map(|_| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let t0 = Instant::now();
                    let mut x = 1u64;
                    while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(60) {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        std::hint::black_box(x);
                    }
                })
            })
            .collect();
        let mut faults = Vec::new();
        let t0 = Instant::now();
        let mut rounds = 0;
        let want: u64 = std::env::var("PATRONUS_PROBE_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(40);
        let limit = Duration::from_secs(30.max(want));
        while rounds < want && t0.elapsed() < limit {
            let mut l = c
                .get_rlease(0, 0, 64 * rounds, 0, 64, 20_000_000, 0)
                .unwrap();
            if !l.success() {
                continue;
            }
            let mut b = [0u8; 64];
            let end = loop {
                match c.read(&mut l, &mut b, 0, 0).unwrap() {
                    Rc::Ok => {}
                    rc => break rc,
                }
            };
            if end != Rc::LeaseLocalExpiredErr {
                faults.push((rounds, end));
            }
            rounds += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for h in hogs {
            h.join().unwrap();
        }
        eprintln!(
            "expiry probe under two hogs: {rounds} rounds in {:?}, {} faults",
            t0.elapsed(),
            faults.len()
        );
        assert!(rounds >= want / 4, "only {rounds} rounds in {limit:?}");
        assert!(
            faults.is_empty(),
            "rounds ending in a fault: {faults:?} of {rounds}"
        );
    });
}

#[test]
fn bad_posts_are_invalid_and_complete_nothing() {
    with_client(1, 64, |_srv, c| {
        let mut l = c.get_wlease(0, 0, 0, 0, 64, 0, acquire::NO_GC).unwrap();
        assert!(
            c.post_read(&mut l, 8, 0, 1 << 40, 1).is_err(),
            "unknown RW flag"
        );
        assert!(
            c.post_get_rlease(9, 0, 0, 0, 64, 0, 0, 2).is_err(),
            "node outside the cluster"
        );
        assert!(
            c.post_get_rlease(0, 0, 64, 3, 64, 0, 0, 3).is_err(),
            "hint without allocation"
        );
        c.relinquish(&mut l, 0, 0).unwrap();
        assert!(
            c.post_write(&mut l, &[1], 0, 0, 4).is_err(),
            "relinquished lease"
        );
        assert!(
            c.post_extend(&mut l, 1000, 0, 5).is_err(),
            "relinquished lease"
        );
        assert_eq!(c.inflight(), 0);
        assert!(c.wait(8, Duration::from_millis(50)).unwrap().is_empty());
    });
}

#[test]
fn blocking_calls_mixed_with_posted_ones() {
    with_client(2, 64, |_srv, c| {
        let mut a = c.get_wlease(0, 0, 0, 0, 4096, 0, acquire::NO_GC).unwrap();
        let mut b = c.get_wlease(0, 1, OBJ, 0, 4096, 0, acquire::NO_GC).unwrap();
        for i in 0..16u64 {
            posted(c.post_write(&mut a, &pattern(i as usize, 64), i * 64, 0, i));
        }
        // Blocking calls in between: on another directory and the same one.
        assert_eq!(c.write(&mut b, &pattern(99, 128), 0, 0).unwrap(), Rc::Ok);
        let mut got = [0u8; 128];
        assert_eq!(c.read(&mut b, &mut got, 0, 0).unwrap(), Rc::Ok);
        assert_eq!(got.to_vec(), pattern(99, 128));
        let mut w = c
            .get_wlease(0, 0, 2 * OBJ, 0, 64, 0, acquire::NO_GC)
            .unwrap();
        assert!(w.success());
        let done = collect(c, 16);
        assert!(done.values().all(|x| x.rc() == Rc::Ok));
        for i in 0..16u64 {
            let mut m = [0u8; 64];
            assert_eq!(c.read(&mut a, &mut m, i * 64, 0).unwrap(), Rc::Ok);
            assert_eq!(m.to_vec(), pattern(i as usize, 64));
        }
        for l in [&mut a, &mut b, &mut w] {
            c.relinquish(l, 0, 0).unwrap();
        }
    });
}

mod asynch {
    use super::*;
    use futures::future::{join_all, select, Either};
    use patronus::client::AsyncThread;

    /// 32 tasks on one thread, each: acquire, write, 16 reads, relinquish
    /// (the original's bench_patronus_concurrent task), all byte-exact.
    #[test]
    fn tasks_on_one_thread_overlap_and_stay_byte_exact() {
        with_nodes(1, 64, |_srv, cl| {
            let t = AsyncThread::new(cl.register_client_thread().unwrap());
            let task = |i: usize| {
                let t = &t;
                async move {
                    let mut l = t
                        .get_wlease(0, 0, i as u64 * 4096, 0, 4096, 0, acquire::NO_GC)
                        .await
                        .unwrap();
                    assert!(l.success(), "task {i}: {}", l.ec());
                    let p = pattern(i, 256);
                    assert_eq!(t.write(&mut l, &p, 64, 0).await.unwrap(), Rc::Ok);
                    for k in 0..16 {
                        let (rc, b) = t.read(&mut l, 64, 64 + 64 * (k % 4), 0).await.unwrap();
                        assert_eq!(rc, Rc::Ok);
                        let o = 64 * (k % 4) as usize;
                        assert!(b == p[o..o + 64], "task {i} read {k}");
                    }
                    assert_eq!(t.relinquish(&mut l, 0, 0).await.unwrap(), Rc::Ok);
                    i
                }
            };
            for _ in 0..3 {
                let done = t.block_on(join_all((0..32).map(task)));
                assert_eq!(done, (0..32).collect::<Vec<_>>());
            }
            let inner = t.into_inner();
            assert!(
                inner.peak_inflight() >= 16,
                "calls overlapped: peak {}",
                inner.peak_inflight()
            );
        });
    }

    /// Coroutine B retries a lock that coroutine A of the same thread holds:
    /// it gets it as soon as A gives it back, far inside the lease term
    /// (one blocking thread would wait for the term to end).
    #[test]
    fn a_same_thread_conflict_resolves_without_waiting_for_the_term() {
        with_nodes(1, 64, |_srv, cl| {
            let t = AsyncThread::new(cl.register_client_thread().unwrap());
            let term = 2_000_000_000u64; // 2 s
            let lock = |who: u64| {
                let t = &t;
                async move {
                    let t0 = Instant::now();
                    let mut tries = 0;
                    let mut l = loop {
                        let l = t
                            .get_wlease(0, 0, 1 << 20, 0, 64, term, acquire::WITH_CONFLICT_DETECT)
                            .await
                            .unwrap();
                        if l.success() {
                            break l;
                        }
                        tries += 1;
                        assert!(
                            t0.elapsed() < Duration::from_secs(5),
                            "{who} never got the lock"
                        );
                        // Yield to the other task (the lock holder).
                        yield_now().await;
                    };
                    let (_, old) = t.faa(&mut l, 0, 1, 0).await.unwrap();
                    for _ in 0..4 {
                        t.read(&mut l, 8, 0, 0).await.unwrap();
                    }
                    t.relinquish(&mut l, 0, 0).await.unwrap();
                    (who, tries, old, t0.elapsed())
                }
            };
            let r = t.block_on(join_all([lock(1), lock(2)]));
            let waited = r.iter().map(|x| x.3).max().unwrap();
            assert!(r.iter().any(|x| x.1 > 0), "the tasks did conflict: {r:?}");
            let mut olds: Vec<u64> = r.iter().map(|x| x.2).collect();
            olds.sort();
            assert_eq!(olds, vec![0, 1], "one holder at a time");
            assert!(
                waited < Duration::from_millis(500),
                "took {waited:?} of a 2 s term"
            );
        });
    }

    /// The losing side of a select is dropped with its call in flight: the
    /// thread stays usable and nothing leaks into later calls.
    #[test]
    fn a_dropped_future_loses_nothing() {
        with_nodes(1, 64, |_srv, cl| {
            let t = AsyncThread::new(cl.register_client_thread().unwrap());
            let mut a = t
                .with(|c| c.get_wlease(0, 0, 0, 0, 64, 0, acquire::NO_GC))
                .unwrap();
            let mut b = t
                .with(|c| c.get_wlease(0, 0, 4096, 0, 64, 0, acquire::NO_GC))
                .unwrap();
            for _ in 0..100 {
                let fa = Box::pin(t.faa(&mut a, 0, 1, 0));
                let fb = Box::pin(t.faa(&mut b, 0, 1, 0));
                match t.block_on(select(fa, fb)) {
                    Either::Left((r, _)) | Either::Right((r, _)) => {
                        assert_eq!(r.unwrap().0, Rc::Ok)
                    }
                }
            }
            // Every FAA ran once (dropped ones too), and later calls match.
            let (ra, va) = t.block_on(t.faa(&mut a, 0, 0, 0)).unwrap();
            let (rb, vb) = t.block_on(t.faa(&mut b, 0, 0, 0)).unwrap();
            assert_eq!((ra, rb), (Rc::Ok, Rc::Ok));
            t.block_on(async {
                // Drain what the dropped futures left.
                let deadline = Instant::now() + Duration::from_secs(5);
                while t.with(|c| c.inflight()) > 0 && Instant::now() < deadline {
                    yield_now().await;
                }
            });
            let (_, va2) = t.block_on(t.faa(&mut a, 0, 0, 0)).unwrap();
            let (_, vb2) = t.block_on(t.faa(&mut b, 0, 0, 0)).unwrap();
            assert_eq!(va2 + vb2, 200, "{va}/{vb} then {va2}/{vb2}");
        });
    }

    /// Lets the other tasks run once.
    async fn yield_now() {
        let mut once = false;
        futures::future::poll_fn(|cx| {
            if once {
                std::task::Poll::Ready(())
            } else {
                once = true;
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            }
        })
        .await
    }
}

/// Two nodes (memory node 0, one client thread on node 1) with a short RPC
/// timeout. Node 1 is the time parent: the memory node's NIC carries no
/// serve hook of the time exposer, so a test may set its own.
fn timeout_cfg(what: &str, timeout: Duration) -> Config {
    Config {
        machine_nr: 2,
        dir_nr: 1,
        client_threads: 1,
        cluster: format!(
            "inflight-{what}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ),
        fabric: "shm".into(),
        keeper: None,
        rpc_timeout: timeout,
        time_parent_node_id: 1,
        ..Config::default()
    }
}

/// A memory node whose NIC stops answering one-sided requests (its
/// responder stalls in a serve hook): every READ posted to it completes
/// once, as RDMA_EXECUTION_ERR, once its data QP made no progress for the
/// RPC timeout, and not before (and all of them then, not one per
/// timeout); the QP is recovered in place, and once the
/// responder answers again READs complete byte-exact. Posted READs carry no
/// deadline of their own: the engine times a QP's front request.
#[test]
fn a_data_qp_without_progress_fails_its_calls_after_the_rpc_timeout() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let timeout = Duration::from_millis(300);
    common::cluster::with_cluster(timeout_cfg("stall", timeout), |srv, clients| {
        let mut c = clients[0].register_client_thread().unwrap();
        let mut l = c.get_rlease(0, 0, 0, 0, 4096, 0, acquire::NO_GC).unwrap();
        let want = pattern(3, 4096);
        srv.buffer_write(0, &want).unwrap();
        let check = |got: &HashMap<u64, Completion>, base: u64, n: u64| {
            for i in 0..n {
                let x = &got[&(base + i)];
                assert_eq!(x.rc(), Rc::Ok, "read {i}");
                let o = i as usize * 64;
                assert!(x.data == want[o..o + 64], "read {i} differs");
            }
        };
        for i in 0..8 {
            posted(c.post_read(&mut l, 64, i * 64, 0, i));
        }
        check(&collect(&mut c, 8), 0, 8);

        // The responder stalls when it next takes requests (bounded: 10 s).
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let f = frozen.clone();
        srv.nic().set_serve_hook(Some(std::sync::Arc::new(move || {
            let t0 = Instant::now();
            while f.load(Ordering::Acquire) && t0.elapsed() < Duration::from_secs(10) {
                thread::sleep(Duration::from_millis(1));
            }
        })));
        let t0 = Instant::now();
        for i in 0..8 {
            posted(c.post_read(&mut l, 64, i * 64, 0, 100 + i));
        }
        let got = collect(&mut c, 8);
        let waited = t0.elapsed();
        for i in 0..8 {
            assert_eq!(got[&(100 + i)].rc(), Rc::RdmaExecutionErr, "read {i}");
        }
        assert!(
            waited >= timeout - Duration::from_millis(20),
            "failed after {waited:?}, before the {timeout:?} timeout ran out"
        );
        assert!(
            waited < timeout * 3,
            "failed after {waited:?}: one call per {timeout:?} timeout?"
        );
        frozen.store(false, Ordering::Release);
        srv.nic().set_serve_hook(None);

        // Recovered in place: the same lease reads byte-exact again.
        for i in 0..8 {
            posted(c.post_read(&mut l, 64, i * 64, 0, 200 + i));
        }
        check(&collect(&mut c, 8), 200, 8);
        c.relinquish(&mut l, 0, 0).unwrap();
    });
}

/// A posted call whose directory never answers (no server thread serves
/// it) completes once, as RDMA_EXECUTION_ERR, after the RPC timeout and
/// not before: the engine stamps each RPC's deadline in the first round
/// after its post, with one clock read per round.
#[test]
fn an_unanswered_posted_call_times_out_after_the_rpc_timeout() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let timeout = Duration::from_millis(300);
    let nodes = common::cluster::start_nodes(&timeout_cfg("silent", timeout));
    let mut c = nodes[1].register_client_thread().unwrap();
    // The thread computes a while between its post and its first poll:
    // the timeout runs from that poll, the call is not failed at once.
    assert_eq!(
        c.post_get_rlease(0, 0, 0, 0, 64, 0, acquire::NO_GC, 7)
            .unwrap(),
        Post::Posted
    );
    thread::sleep(timeout * 2);
    let t0 = Instant::now();
    let mut got = Vec::new();
    while got.is_empty() && t0.elapsed() < Duration::from_secs(10) {
        got = c.wait(8, Duration::from_millis(50)).unwrap();
    }
    let waited = t0.elapsed();
    assert_eq!(got.len(), 1, "after {waited:?}");
    assert_eq!(got[0].user_data, 7);
    assert_eq!(got[0].rc(), Rc::RdmaExecutionErr);
    assert!(
        waited >= timeout - Duration::from_millis(20),
        "failed after {waited:?}, before the {timeout:?} timeout ran out"
    );
    assert_eq!(c.inflight(), 0);
    drop(c);
    for n in &nodes {
        n.finished(0).unwrap();
    }
}
