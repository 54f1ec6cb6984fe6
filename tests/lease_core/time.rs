//! Time synchronisation across nodes of one host.

use super::*;

/// Every node of one host shares CLOCK_MONOTONIC, so the true offset is 0:
/// the synchronised offset must be within the cluster epsilon, and stay so
/// across periodic re-syncs.
#[test]
fn time_sync_offset_is_within_epsilon_and_resyncs() {
    time_sync_within_epsilon("shm")
}

/// The same over the tcp link (the parent's NIC publishes from its tcp
/// serving thread).
#[test]
fn time_sync_over_tcp_is_within_epsilon_and_resyncs() {
    time_sync_within_epsilon("tcp")
}

fn time_sync_within_epsilon(fabric: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = Config {
        machine_nr: 3,
        cluster: format!("time-{fabric}-{}", std::process::id()),
        fabric: fabric.into(),
        keeper: None,
        leases_per_dir: 64,
        epsilon_ns: 0,
        time_resync: Duration::from_millis(30),
        // The estimator itself (one host would otherwise share the clock).
        measured_time_sync: true,
        ..Config::default()
    };
    let hs: Vec<_> = (0..3)
        .map(|_| {
            let c = cfg.clone();
            thread::spawn(move || Patronus::new(c).expect("node"))
        })
        .collect();
    let nodes: Vec<Patronus> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    let eps = nodes[0].epsilon();
    assert!(eps > 0, "a measured epsilon is never zero");
    assert!(eps < 50_000_000, "epsilon {eps} ns is absurd");
    let children: Vec<&Patronus> = nodes.iter().filter(|n| n.get_node_id() != 0).collect();
    let attempts = |n: &Patronus| {
        let (ok, failed) = n.clock().resync_counts();
        ok + failed
    };
    // Each node's offset is within its epsilon, and each node's clock is
    // within its epsilon of the parent's, so two nodes agree within the sum
    // of theirs (plus the real time between the two reads).
    let agree = |n: &Patronus| -> Result<(), String> {
        let (off, e) = (n.clock_offset(), n.epsilon());
        if off.abs() > e {
            return Err(format!(
                "node {} offset {off} ns outside epsilon {e} ns",
                n.get_node_id()
            ));
        }
        let t = Instant::now();
        let (a, b) = (nodes[0].now(), n.now());
        let gap = t.elapsed().as_nanos() as i64;
        let tol = nodes[0].epsilon() + n.epsilon();
        if b - a < -tol || b - a > tol + gap {
            return Err(format!(
                "node {} is {} ns from node {} (tolerance {tol} + {gap} ns)",
                n.get_node_id(),
                b - a,
                nodes[0].get_node_id()
            ));
        }
        Ok(())
    };
    for _ in 0..4 {
        for n in &nodes {
            assert!(n.epsilon() > 0);
            // A re-sync applies its offset before it widens epsilon
            // (src/node: sync_once sets the offset, then the re-sync thread
            // counts the attempt and widens), so for a moment after each
            // re-sync the pair may disagree: the check must hold within
            // 1 s, polled. A persistent disagreement fails.
            let t0 = Instant::now();
            while let Err(e) = agree(n) {
                assert!(t0.elapsed() < Duration::from_secs(1), "{e}");
                thread::sleep(Duration::from_micros(100));
            }
        }
        // The next round checks the clocks after one more re-sync of every
        // node (every 30 ms).
        let seen: Vec<u64> = children.iter().map(|n| attempts(n)).collect();
        wait_until("every node re-syncing once more", || {
            children.iter().zip(&seen).all(|(n, s)| attempts(n) > *s)
        });
    }
    // The parent never moves.
    let parent = nodes.iter().find(|n| n.get_node_id() == 0).unwrap();
    assert_eq!(parent.clock_offset(), 0);
    // The periodic re-syncs really reach the parent's clock: at least two
    // succeed, and more succeed than fail (a re-sync may time out on a
    // loaded machine). (They once all failed: the parent dropped its
    // clock-read QPs after start-up.)
    wait_until("two successful re-syncs per node, more than failed", || {
        children.iter().all(|n| {
            let (ok, failed) = n.clock().resync_counts();
            ok >= 2 && failed < ok
        })
    });
}

/// Nodes on one kernel share CLOCK_MONOTONIC: their offset is exactly 0 and
/// the cluster epsilon stays the configured floor, even with two busy-loop
/// hogs on the machine's two cores (with `measured_time_sync` it fails).
#[test]
fn nodes_on_one_kernel_share_the_clock_exactly_under_load() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let t0 = Instant::now();
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(30) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    std::hint::black_box(x);
                }
            })
        })
        .collect();
    let cfg = Config {
        machine_nr: 3,
        cluster: format!("time-same-{}", std::process::id()),
        fabric: "shm".into(),
        keeper: None,
        leases_per_dir: 64,
        ..Config::default()
    };
    let hs: Vec<_> = (0..3)
        .map(|_| {
            let c = cfg.clone();
            thread::spawn(move || Patronus::new(c).expect("node"))
        })
        .collect();
    let nodes: Vec<Patronus> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    for h in hogs {
        h.join().unwrap();
    }
    for n in &nodes {
        assert_eq!(n.clock_offset(), 0, "node {}", n.get_node_id());
        assert!(
            n.epsilon() <= 20_000,
            "node {} epsilon {} ns",
            n.get_node_id(),
            n.epsilon()
        );
    }
}

/// The estimator under two CPU hogs, forced on one host (true offset 0):
/// 15 s of re-syncs every 50 ms (about 300, more than 30 s at the default
/// period would give). Polled every millisecond, the node's offset is
/// always within its epsilon, and its own epsilon never jumps up: it grows
/// only by the drift bound (5 ppm here) between re-syncs, never to a wider
/// measured bracket (the old re-sync adopted the newest bracket: 0.4-8.5 ms
/// jumps on this machine).
#[test]
fn the_estimator_holds_the_true_offset_and_never_widens_under_load() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let hogs = hogs(Duration::from_secs(40));
    let drift_ppm = 5u32;
    let cfg = Config {
        machine_nr: 2,
        cluster: format!("time-est-{}", std::process::id()),
        fabric: "shm".into(),
        keeper: None,
        leases_per_dir: 64,
        epsilon_ns: 0,
        time_resync: Duration::from_millis(50),
        measured_time_sync: true,
        clock_drift_ppm: drift_ppm,
        ..Config::default()
    };
    let hs: Vec<_> = (0..2)
        .map(|_| {
            let c = cfg.clone();
            thread::spawn(move || Patronus::new(c).expect("node"))
        })
        .collect();
    let nodes: Vec<Patronus> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    let n = nodes.iter().find(|n| n.get_node_id() != 0).unwrap();
    let clk = n.clock();
    let t0 = Instant::now();
    let (mut last_eps, mut last_t) = (clk.local_epsilon(), Instant::now());
    let first_eps = last_eps;
    let (mut polls, mut max_eps, mut min_eps) = (0u64, last_eps, last_eps);
    while t0.elapsed() < Duration::from_secs(15) {
        let (off, eps) = (clk.offset(), clk.local_epsilon());
        let now = Instant::now();
        assert!(
            off.abs() <= eps,
            "after {:?}: offset {off} ns outside epsilon {eps} ns (the truth is 0)",
            t0.elapsed()
        );
        // Aging allowance: the drift over the time since the last poll and
        // over the longest horizon a re-sync applies (30 s of back-off plus
        // its timeouts), plus rounding.
        let allow = (now - last_t + Duration::from_secs(31)).as_nanos() as i64 * drift_ppm as i64
            / 1_000_000
            + 2;
        assert!(
            eps <= last_eps + allow,
            "after {:?}: epsilon jumped from {last_eps} to {eps} ns (aging allows {allow})",
            t0.elapsed()
        );
        (last_eps, last_t) = (eps, now);
        (max_eps, min_eps) = (max_eps.max(eps), min_eps.min(eps));
        polls += 1;
        thread::sleep(Duration::from_millis(1));
    }
    drop(hogs);
    let (ok, failed) = clk.resync_counts();
    eprintln!(
        "estimator under two hogs: {polls} polls, {ok} re-syncs ok, {failed} failed; epsilon at start {first_eps} ns, range {min_eps}..{max_eps} ns, offset now {} ns",
        clk.offset()
    );
    assert!(ok >= 50, "only {ok} re-syncs succeeded ({failed} failed)");
}

/// A node whose own bound widens announces it: every other node takes it up
/// within a few seconds (the cluster shares one epsilon), and lets it go
/// once the node's bound narrows again.
#[test]
fn a_widened_epsilon_reaches_every_node() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = Config {
        machine_nr: 3,
        cluster: format!("time-agree-{}", std::process::id()),
        fabric: "shm".into(),
        keeper: None,
        leases_per_dir: 64,
        ..Config::default()
    };
    let floor = cfg.epsilon_ns;
    let hs: Vec<_> = (0..3)
        .map(|_| {
            let c = cfg.clone();
            thread::spawn(move || Patronus::new(c).expect("node"))
        })
        .collect();
    let nodes: Vec<Patronus> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    let wide = 5_000_000;
    nodes[2].clock().set_epsilon(wide);
    let t0 = Instant::now();
    wait_until("every node taking up the widened epsilon", || {
        nodes.iter().all(|n| n.epsilon() >= wide)
    });
    eprintln!("a widened epsilon reached every node in {:?}", t0.elapsed());
    nodes[2].clock().set_epsilon(floor);
    wait_until("every node back at the floor", || {
        nodes.iter().all(|n| n.epsilon() == floor)
    });
}

/// The start-up bracket under two CPU hogs (estimator forced, one host, so
/// the truth is 0): the narrowest of the sync's samples must not span a
/// scheduler slice. History: a reader that yielded between two-read
/// brackets put a hog's slice inside every one (median 3.4 ms); a spinning
/// reader left medians of 10-25 us in 7 runs of 9 but 0.8-1.1 ms in 2,
/// because a publication needed a third thread (the exposer) on a core
/// while the reader and the parent's NIC thread ran. The parent now
/// publishes from its NIC's serving thread as it serves each READ, so a
/// sample is one READ's round trip: 18 start-ups under two hogs and two
/// compilers gave epsilons of 1.5-18 us (medians 10 us).
#[test]
fn the_start_up_bracket_under_load_is_not_a_scheduler_slice() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let hogs = hogs(Duration::from_secs(60));
    let mut eps = Vec::new();
    for round in 0..6 {
        let cfg = Config {
            machine_nr: 2,
            cluster: format!("time-startup-{}-{round}", std::process::id()),
            fabric: "shm".into(),
            keeper: None,
            leases_per_dir: 16,
            epsilon_ns: 0,
            // Only the start-up measurement: no re-sync narrows it, no
            // drift ages it.
            time_resync: Duration::from_secs(600),
            clock_drift_ppm: 0,
            measured_time_sync: true,
            ..Config::default()
        };
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let c = cfg.clone();
                thread::spawn(move || Patronus::new(c).expect("node"))
            })
            .collect();
        let nodes: Vec<Patronus> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        let n = nodes.iter().find(|n| n.get_node_id() != 0).unwrap();
        let (off, e) = (n.clock().offset(), n.clock().local_epsilon());
        assert!(off.abs() <= e, "offset {off} ns outside epsilon {e} ns");
        eps.push(e);
    }
    drop(hogs);
    eps.sort_unstable();
    let median = eps[eps.len() / 2];
    eprintln!("start-up epsilon under two hogs, 6 clusters: {eps:?} ns (median {median})");
    assert!(
        median <= 100_000,
        "start-up epsilon median {median} ns under two hogs ({eps:?})"
    );
    assert!(
        eps[eps.len() - 1] <= 500_000,
        "a start-up epsilon spans a scheduler slice under two hogs: {eps:?}"
    );
}
