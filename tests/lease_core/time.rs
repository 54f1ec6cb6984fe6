//! Time synchronisation across nodes of one host.

use super::*;

/// Every node of one host shares CLOCK_MONOTONIC, so the true offset is 0:
/// the synchronised offset must be within the cluster epsilon, and stay so
/// across periodic re-syncs.
#[test]
fn time_sync_offset_is_within_epsilon_and_resyncs() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = Config {
        machine_nr: 3,
        cluster: format!("time-{}", std::process::id()),
        fabric: "shm".into(),
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
            assert!(n.epsilon() >= eps);
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
