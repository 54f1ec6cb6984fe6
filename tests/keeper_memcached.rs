//! The memcached keeper against a real memcached started on a free loopback
//! port (the original's correct_keeper_put_get_barrier, plus node-id
//! assignment and in-process clusters formed through memcached).

mod common;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{unique, Memcached};
use patronus::cluster::{Keeper, MemcachedKeeper};
use patronus::lease::Rc;
use patronus::node::{Config, Patronus};

const T: Duration = Duration::from_secs(5);

#[test]
fn put_get_bulk_incr_and_barriers() {
    let mc = Memcached::start();
    let k = MemcachedKeeper::connect(&mc.url, T).unwrap();
    let ns = unique("keeper");
    // Round trips, including binary values.
    let v: Vec<u8> = (0..=255u8).collect();
    k.put(&format!("{ns}/bin"), &v).unwrap();
    assert_eq!(k.try_get(&format!("{ns}/bin")).unwrap().unwrap(), v);
    assert_eq!(k.try_get(&format!("{ns}/missing")).unwrap(), None);
    assert!(k
        .get_wait(&format!("{ns}/missing"), Duration::from_millis(50))
        .is_err());
    // 1 000 bulk keys.
    for i in 0..1000 {
        k.put(&format!("{ns}/bulk/{i}"), i.to_string().as_bytes())
            .unwrap();
    }
    for i in 0..1000 {
        assert_eq!(
            k.try_get(&format!("{ns}/bulk/{i}")).unwrap().unwrap(),
            i.to_string().as_bytes()
        );
    }
    // Concurrent incr from 4 connections sums exactly.
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let url = mc.url.clone();
            let key = format!("{ns}/ctr");
            thread::spawn(move || {
                let k = MemcachedKeeper::connect(&url, T).unwrap();
                for _ in 0..250 {
                    k.incr(&key).unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(k.incr(&format!("{ns}/ctr")).unwrap(), 1001);
    // 1 000 distinct barriers between two participants: the value put
    // before the barrier is visible after it, never before.
    let k2 = Arc::new(MemcachedKeeper::connect(&mc.url, T).unwrap());
    let ns2 = ns.clone();
    let other = thread::spawn(move || {
        for i in 0..1000 {
            k2.put(&format!("{ns2}/bv/{i}"), b"x").unwrap();
            k2.barrier(&format!("{ns2}/b/{i}"), 2, T).unwrap();
        }
    });
    for i in 0..1000 {
        k.barrier(&format!("{ns}/b/{i}"), 2, T).unwrap();
        assert!(k.try_get(&format!("{ns}/bv/{i}")).unwrap().is_some());
    }
    other.join().unwrap();
    // A reusable barrier name (generations).
    let k3 = Arc::new(MemcachedKeeper::connect(&mc.url, T).unwrap());
    let ns3 = ns.clone();
    let h = thread::spawn(move || {
        for _ in 0..20 {
            k3.barrier(&format!("{ns3}/again"), 2, T).unwrap();
        }
    });
    for _ in 0..20 {
        k.barrier(&format!("{ns}/again"), 2, T).unwrap();
    }
    h.join().unwrap();
    // A barrier nobody else joins times out rather than hanging.
    assert!(k
        .barrier(&format!("{ns}/lonely"), 2, Duration::from_millis(100))
        .is_err());
    // Bad keys are refused before they reach the server.
    assert!(k.put("has space", b"v").is_err());
    assert!(k.delete(&format!("{ns}/bin")).unwrap());
}

#[test]
fn memcached_going_away_is_an_error_not_a_hang() {
    let mc = Memcached::start();
    let k = MemcachedKeeper::connect(&mc.url, Duration::from_millis(500)).unwrap();
    k.put("alive", b"1").unwrap();
    let url = mc.url.clone();
    drop(mc);
    let t0 = std::time::Instant::now();
    let put = k.put("alive", b"2");
    let get = k.try_get("alive");
    // Errors name the server and the operation.
    let put = put
        .expect_err("a put to a dead memcached succeeded")
        .to_string();
    let get = get
        .expect_err("a get from a dead memcached answered")
        .to_string();
    assert!(
        put.contains(&url) && put.contains(r#"set "alive""#),
        "{put}"
    );
    assert!(
        get.contains(&url) && get.contains(r#"get "alive""#),
        "{get}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
}

/// Nodes of one process form a cluster through memcached, use it, and the
/// same cluster name works again (new generation) without a restart.
#[test]
fn nodes_join_through_memcached_and_rerun_without_restart() {
    let mc = Memcached::start();
    let cluster = unique("keeper-nodes");
    for run in 0..3 {
        let cfg = Config {
            machine_nr: 2,
            cluster: cluster.clone(),
            keeper: Some(mc.url.replace("memcached://", "memcache://")),
            fabric: "shm".into(),
            leases_per_dir: 64,
            ..Config::default()
        };
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let c = cfg.clone();
                thread::spawn(move || Patronus::new(c).expect("node"))
            })
            .collect();
        let mut nodes: Vec<Patronus> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        nodes.sort_by_key(|n| n.get_node_id());
        assert_eq!(nodes[0].get_node_id(), 0, "run {run}");
        assert_eq!(nodes[1].get_node_id(), 1, "run {run}");
        // Application keys and barriers through the node API.
        nodes[0]
            .put("greeting", format!("hello {run}").as_bytes())
            .unwrap();
        assert_eq!(
            nodes[1].get("greeting").unwrap(),
            format!("hello {run}").as_bytes()
        );
        thread::scope(|s| {
            for n in &nodes {
                s.spawn(move || n.keeper_barrier("both").unwrap());
            }
        });
        // A lease through the cluster.
        let server = &nodes[0];
        thread::scope(|s| {
            let mut d = server.register_server_thread().unwrap();
            let h = s.spawn(move || d.server_serve(7));
            let mut c = nodes[1].register_client_thread().unwrap();
            let mut l = c.get_lease(true, 0, 0, 0, 64, 100_000_000, 0).unwrap();
            assert!(l.success());
            assert_eq!(c.write(&mut l, b"via memcached", 0, 0).unwrap(), Rc::Ok);
            assert_eq!(c.relinquish(&mut l, 0, 0).unwrap(), Rc::Ok);
            drop(c);
            nodes[1].finished(7).unwrap();
            h.join().unwrap().unwrap();
        });
        let mut b = [0u8; 13];
        server.buffer_read(0, &mut b).unwrap();
        assert_eq!(&b, b"via memcached");
    }
}
