//! The RACE-style hash table of `src/kv` on in-process clusters (soft NIC,
//! shm): against a HashMap model from 4 threads on 2 client nodes,
//! concurrent inserts of one key, splits during concurrent puts, and its
//! protection: a read-only handle cannot modify the table, a relinquished
//! or expired handle cannot touch it, and a client that dies holding the
//! resize lock (before or in the middle of a split) loses it at its
//! lease's end, after which another client finishes the split, and one
//! descheduled past its term in the middle of a split cannot overwrite
//! what was written after the takeover. The async
//! forms (`get_async`, `put_async`, `del_async` on an `AsyncThread`): many
//! operations in flight on one thread (observed), byte-exact, against a
//! model beside a node using the blocking API, splitting, and refused for a
//! read-only handle.
//!
//! Two model tests: keys partitioned per thread (every get equals a
//! per-thread HashMap), and keys shared by all threads (every get returns
//! a value some put wrote that a linearization allows: not overwritten by
//! a write that finished before the get began, and not written after it
//! ended). `PATRONUS_KV_OPS` sets their operation counts (default
//! 100 000 each, as issue 15 asks).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use futures::future::join_all;
use patronus::client::{AsyncThread, ClientThread};
use patronus::kv::{Access, KvParams, KvTable, Protection, SplitPhase, MAX_KEY, MAX_VALUE};
use patronus::lease::flags::rw;
use patronus::lease::Rc;
use patronus::node::{Config, Patronus};
use patronus::Error;

mod common;

static SEQ: AtomicU64 = AtomicU64::new(0);
/// Lease terms are measured in milliseconds: one cluster at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How long a condition may take on a loaded 2-core machine before the
/// test fails (only a failing test waits this long).
const PATIENCE: Duration = Duration::from_secs(10);

/// Node 0 is the memory node (one directory); nodes 1.. are clients.
fn with_cluster(
    machines: u16,
    tweak: impl FnOnce(&mut Config),
    f: impl FnOnce(&Patronus, &[Patronus]),
) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    common::cluster::init_tracing();
    let mut cfg = Config {
        machine_nr: machines,
        dir_nr: 1,
        client_threads: 4,
        cluster: format!(
            "kv-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ),
        fabric: "shm".into(),
        keeper: None,
        leases_per_dir: 1024,
        lease_buffer_size: 16 << 20,
        alloc_buffer_size: 32 << 20,
        alloc_classes: vec![
            (128, 4),
            (256, 4),
            (512, 2),
            (1024, 1),
            (4224, 2),
            (8192, 1),
        ],
        ..Config::default()
    };
    tweak(&mut cfg);
    common::cluster::with_cluster(cfg, f);
}

/// A table that splits early: 4 groups (64 slots) per subtable.
fn small_params() -> KvParams {
    KvParams {
        base: 4096,
        groups: 4,
        initial_depth: 1,
        max_depth: 10,
        lock_ns: 20_000_000,
        patience: PATIENCE,
        ..KvParams::default()
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The model tests' operation count: `PATRONUS_KV_OPS`, or 100 000.
fn kv_ops() -> u64 {
    std::env::var("PATRONUS_KV_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// Creates the table of `params` on node 0 from `node` and lets go of the
/// creating handle (the test's threads open their own).
fn create_table(node: &Patronus, params: &KvParams, mode: Protection) {
    let mut c0 = node.register_client_thread().unwrap();
    let mut t0 = KvTable::create(&mut c0, 0, 0, params.clone(), mode).unwrap();
    t0.relinquish(&mut c0).unwrap();
}

fn value_for(rng: &mut Rng, tag: u64) -> Vec<u8> {
    let len = match rng.below(50) {
        0 => 4096,
        1 => 0,
        _ => 8 + rng.below(200) as usize,
    };
    let mut v = vec![0u8; len];
    for (i, b) in v.iter_mut().enumerate() {
        *b = (tag as u8).wrapping_add(i as u8);
    }
    if len >= 8 {
        v[..8].copy_from_slice(&tag.to_le_bytes());
    }
    v
}

fn refused_rc<T: std::fmt::Debug>(r: patronus::Result<T>) -> Rc {
    match r {
        Err(Error::Refused { rc, .. }) => rc,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Random get/put/del from `threads` threads per client node, keys
/// partitioned per thread; every get equals the model.
fn model_run(machines: u16, threads: usize, ops: u64, mode: Protection, universal: bool) {
    with_cluster(
        machines,
        |c| c.allow_universal_rkey = universal,
        |_server, clients| {
            let params = small_params();
            create_table(&clients[0], &params, mode);
            let per = ops / (clients.len() * threads) as u64;
            let splits = AtomicU64::new(0);
            let t_start = Instant::now();
            thread::scope(|s| {
                for (ni, n) in clients.iter().enumerate() {
                    for ti in 0..threads {
                        let params = params.clone();
                        let splits = &splits;
                        s.spawn(move || {
                            let tid = (ni * threads + ti) as u64;
                            let mut ct = n.register_client_thread().unwrap();
                            let mut t =
                                KvTable::open(&mut ct, 0, 0, params, mode, Access::ReadWrite)
                                    .unwrap();
                            let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
                            let mut rng = Rng(0x9e37_79b9 ^ ((tid + 1) * 0x1234_5678_9abc));
                            for i in 0..per {
                                let k = format!("t{tid}-key-{}", rng.below(400)).into_bytes();
                                if rng.below(20) == 0 {
                                    // Eight lookups in flight together.
                                    let ks: Vec<Vec<u8>> = (0..8)
                                        .map(|_| {
                                            format!("t{tid}-key-{}", rng.below(400)).into_bytes()
                                        })
                                        .collect();
                                    let refs: Vec<&[u8]> = ks.iter().map(|k| &k[..]).collect();
                                    let got = t.get_many(&mut ct, &refs).unwrap();
                                    for (k, v) in ks.iter().zip(got) {
                                        assert_eq!(
                                            v.as_ref(),
                                            model.get(k),
                                            "thread {tid} op {i}: get_many"
                                        );
                                    }
                                    continue;
                                }
                                if rng.below(10) == 0 {
                                    // Six puts or six dels in flight
                                    // together (a key may repeat).
                                    let ks: Vec<Vec<u8>> = (0..6)
                                        .map(|_| {
                                            format!("t{tid}-key-{}", rng.below(400)).into_bytes()
                                        })
                                        .collect();
                                    let refs: Vec<&[u8]> = ks.iter().map(|k| &k[..]).collect();
                                    if rng.below(2) == 0 {
                                        let vs: Vec<Vec<u8>> = (0..6)
                                            .map(|j| value_for(&mut rng, i * 8 + j))
                                            .collect();
                                        let items: Vec<(&[u8], &[u8])> = refs
                                            .iter()
                                            .zip(&vs)
                                            .map(|(k, v)| (*k, &v[..]))
                                            .collect();
                                        t.put_many(&mut ct, &items).unwrap();
                                        for (k, v) in ks.into_iter().zip(vs) {
                                            model.insert(k, v);
                                        }
                                    } else {
                                        let got = t.del_many(&mut ct, &refs).unwrap();
                                        let want: Vec<bool> =
                                            ks.iter().map(|k| model.remove(k).is_some()).collect();
                                        assert_eq!(got, want, "thread {tid} op {i}: del_many");
                                    }
                                    continue;
                                }
                                match rng.below(10) {
                                    0..=3 => {
                                        let got = t.get(&mut ct, &k).unwrap();
                                        assert_eq!(
                                            got.as_ref(),
                                            model.get(&k),
                                            "thread {tid} op {i}: get {}",
                                            String::from_utf8_lossy(&k)
                                        );
                                    }
                                    4..=7 => {
                                        let v = value_for(&mut rng, i);
                                        t.put(&mut ct, &k, &v).unwrap();
                                        model.insert(k, v);
                                    }
                                    _ => {
                                        let was = t.del(&mut ct, &k).unwrap();
                                        assert_eq!(
                                            was,
                                            model.remove(&k).is_some(),
                                            "thread {tid} op {i}: del"
                                        );
                                    }
                                }
                            }
                            for (k, v) in &model {
                                assert_eq!(t.get(&mut ct, k).unwrap().as_ref(), Some(v));
                            }
                            splits.fetch_add(t.stats().splits, Ordering::Relaxed);
                            eprintln!("thread {tid}: {:?}", t.stats());
                            t.relinquish(&mut ct).unwrap();
                        });
                    }
                }
            });
            eprintln!(
                "{mode:?}: {} ops in {:?}, {} splits",
                per * (clients.len() * threads) as u64,
                t_start.elapsed(),
                splits.load(Ordering::Relaxed)
            );
            assert!(
                splits.load(Ordering::Relaxed) > 0,
                "the table never split: the test did not cover resizing"
            );
        },
    );
}

#[test]
fn model_random_ops_4_threads_2_nodes_lease_mode() {
    model_run(3, 2, kv_ops(), Protection::Lease, false);
}

/// One logged operation of [`shared_keys_every_get_is_linearizable`].
#[derive(Clone, Copy)]
struct Logged {
    key: u32,
    /// Put: the value's id (thread << 32 | sequence); Del: `ABSENT`; Get:
    /// the id of the value it returned, or `ABSENT`.
    val: u64,
    write: bool,
    start: Instant,
    end: Instant,
}

const ABSENT: u64 = u64::MAX;

/// A value naming its put (`id`), of a length and pattern derived from it.
fn shared_value(id: u64) -> Vec<u8> {
    let len = 8 + (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 57) as usize * 3;
    let mut v: Vec<u8> = (0..len).map(|i| (id as u8) ^ (i as u8) ^ 0x5a).collect();
    v[..8].copy_from_slice(&id.to_le_bytes());
    v
}

/// 4 threads on 2 client nodes on keys they all share (32 hot keys that
/// most operations hit, and 600 cold ones that make the table split while
/// they run): random get/put/del, every operation logged with its start
/// and end. Every get must return, byte-exact, a value that a put of that
/// key began before the get ended and that no write of the key (a put or
/// a del) overwrote between that put's end and the get's start; a get
/// that finds nothing needs a del (or the empty start) with the same
/// property. Each put writes a value no other put writes.
#[test]
fn shared_keys_every_get_is_linearizable() {
    let ops = kv_ops();
    with_cluster(
        3,
        |_| {},
        |_server, clients| {
            let params = small_params();
            create_table(&clients[0], &params, Protection::Lease);
            let threads = 2usize;
            let per = ops / (clients.len() * threads) as u64;
            let key_name = |k: u32| format!("shared-{k}").into_bytes();
            let origin = Instant::now();
            let (logs, splits): (Vec<Vec<Logged>>, Vec<u64>) = thread::scope(|s| {
                let hs: Vec<_> = clients
                    .iter()
                    .enumerate()
                    .flat_map(|(ni, n)| (0..threads).map(move |ti| (ni, ti, n)))
                    .map(|(ni, ti, n)| {
                        let params = params.clone();
                        s.spawn(move || {
                            let tid = (ni * threads + ti) as u64;
                            let mut ct = n.register_client_thread().unwrap();
                            let mut t =
                                KvTable::open(&mut ct, 0, 0, params, Protection::Lease, Access::ReadWrite)
                                    .unwrap();
                            let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ ((tid + 1) << 20));
                            let mut log = Vec::with_capacity(per as usize);
                            for i in 0..per {
                                let key = if rng.below(10) < 7 {
                                    rng.below(32) as u32
                                } else {
                                    32 + rng.below(600) as u32
                                };
                                let k = key_name(key);
                                let start = Instant::now();
                                let (val, write) = match rng.below(20) {
                                    0..=9 => {
                                        let got = t.get(&mut ct, &k).unwrap();
                                        let id = match got {
                                            None => ABSENT,
                                            Some(v) => {
                                                assert!(v.len() >= 8, "a short value {v:?}");
                                                let id = u64::from_le_bytes(v[..8].try_into().unwrap());
                                                assert_eq!(
                                                    v,
                                                    shared_value(id),
                                                    "thread {tid} op {i}: value of put {id:#x} not byte-exact"
                                                );
                                                id
                                            }
                                        };
                                        (id, false)
                                    }
                                    10..=16 => {
                                        let id = (tid << 32) | i;
                                        t.put(&mut ct, &k, &shared_value(id)).unwrap();
                                        (id, true)
                                    }
                                    _ => {
                                        t.del(&mut ct, &k).unwrap();
                                        (ABSENT, true)
                                    }
                                };
                                log.push(Logged {
                                    key,
                                    val,
                                    write,
                                    start,
                                    end: Instant::now(),
                                });
                            }
                            let splits = t.stats().splits;
                            t.relinquish(&mut ct).unwrap();
                            (log, splits)
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).unzip()
            });
            // Per key: its writes (the empty start is a del that ended
            // before anything began) and its gets.
            let mut writes: HashMap<u32, Vec<Logged>> = HashMap::new();
            let mut gets = Vec::new();
            for l in logs.iter().flatten() {
                if l.write {
                    writes.entry(l.key).or_default().push(*l);
                } else {
                    gets.push(*l);
                }
            }
            let before = origin - Duration::from_secs(1);
            let mut checked = 0u64;
            let mut concurrent = 0u64;
            for g in &gets {
                let ws = writes.entry(g.key).or_default();
                let empty = Logged {
                    key: g.key,
                    val: ABSENT,
                    write: true,
                    start: before,
                    end: before,
                };
                let candidates: Vec<&Logged> = std::iter::once(&empty)
                    .chain(ws.iter())
                    .filter(|w| w.val == g.val && w.start < g.end)
                    .collect();
                assert!(
                    !candidates.is_empty(),
                    "a get of key {} returned {:#x}, which no put of that key wrote before the get ended",
                    g.key,
                    g.val
                );
                // Some candidate write is not overwritten (by a write that
                // began after it ended and ended before the get began).
                let ok = candidates
                    .iter()
                    .any(|w| !ws.iter().any(|o| o.start > w.end && o.end < g.start));
                assert!(
                    ok,
                    "a get of key {} ({:?}..{:?} after the start) returned {:#x}, every write of which was overwritten before the get began",
                    g.key,
                    g.start - origin,
                    g.end - origin,
                    g.val
                );
                if ws.iter().any(|w| w.start < g.end && w.end > g.start) {
                    concurrent += 1;
                }
                checked += 1;
            }
            let splits: u64 = splits.iter().sum();
            eprintln!(
                "{checked} gets checked ({concurrent} overlapped a write of their key), {} writes, {splits} splits, in {:?}",
                writes.values().map(Vec::len).sum::<usize>(),
                origin.elapsed()
            );
            assert!(
                splits > 0,
                "the table never split: the test did not cover resizing"
            );
            assert!(
                concurrent > 0,
                "no get overlapped a write of its key: the test did not cover concurrency"
            );
        },
    );
}

#[test]
fn model_random_ops_rpc_and_unprotected_modes() {
    model_run(2, 1, 3_000, Protection::Rpc, false);
    model_run(2, 1, 3_000, Protection::Unprotected, true);
}

#[test]
fn unprotected_mode_needs_the_memory_node_to_opt_in() {
    with_cluster(
        2,
        |_| {},
        |_server, clients| {
            let mut ct = clients[0].register_client_thread().unwrap();
            let e = KvTable::create(&mut ct, 0, 0, small_params(), Protection::Unprotected)
                .err()
                .expect("unprotected without opt-in must fail");
            assert!(e.to_string().contains("allow_universal_rkey"), "{e}");
        },
    );
}

#[test]
fn concurrent_inserts_of_one_key_leave_one_value() {
    with_cluster(
        3,
        |_| {},
        |_server, clients| {
            let params = KvParams {
                groups: 2,
                ..small_params()
            };
            let mut c0 = clients[0].register_client_thread().unwrap();
            let mut t0 = KvTable::create(&mut c0, 0, 0, params.clone(), Protection::Lease).unwrap();
            t0.publish(&clients[0], "same-key-table").unwrap();
            t0.relinquish(&mut c0).unwrap();
            drop(c0);
            let rounds = 60u64;
            let bar = common::Rendezvous::new(4, Duration::from_secs(60));
            let dups = AtomicU64::new(0);
            thread::scope(|s| {
                for n in clients {
                    for _ in 0..2 {
                        let (bar, params, dups) = (&bar, params.clone(), &dups);
                        s.spawn(move || {
                            let mut ct = n.register_client_thread().unwrap();
                            // Found through the keeper (base from there).
                            let mut t = KvTable::open_published(
                                &mut ct,
                                n,
                                "same-key-table",
                                KvParams { base: 0, ..params },
                                Protection::Lease,
                                Access::ReadWrite,
                            )
                            .unwrap();
                            let me = format!("n{}-t{}", n.get_node_id(), ct.get_thread_id());
                            for r in 0..rounds {
                                let k = format!("same-{r}").into_bytes();
                                bar.wait();
                                t.put(&mut ct, &k, format!("{me}-{r}").as_bytes()).unwrap();
                                bar.wait();
                                let v = t.get(&mut ct, &k).unwrap().expect("the key");
                                assert!(
                                    String::from_utf8_lossy(&v).ends_with(&format!("-{r}")),
                                    "round {r}: {}",
                                    String::from_utf8_lossy(&v)
                                );
                                assert_eq!(t.entries_of(&mut ct, &k).unwrap(), 1, "round {r}");
                                // Everyone read before anyone compares.
                                let mine = v;
                                bar.wait();
                                let again = t.get(&mut ct, &k).unwrap().unwrap();
                                assert_eq!(again, mine, "round {r}: gets disagree");
                            }
                            dups.fetch_add(t.stats().dups_settled, Ordering::Relaxed);
                            t.relinquish(&mut ct).unwrap();
                        });
                    }
                }
            });
            eprintln!(
                "{rounds} rounds of 4 concurrent inserts: {} duplicates settled",
                dups.load(Ordering::Relaxed)
            );
            // All four agreed with themselves across the barrier; check the
            // final values once more from one handle (one entry each).
            let mut ct = clients[1].register_client_thread().unwrap();
            let mut t =
                KvTable::open(&mut ct, 0, 0, params, Protection::Lease, Access::ReadOnly).unwrap();
            for r in 0..rounds {
                let k = format!("same-{r}").into_bytes();
                assert_eq!(t.entries_of(&mut ct, &k).unwrap(), 1);
            }
            t.relinquish(&mut ct).unwrap();
        },
    );
}

/// What concurrent inserts of one key can leave (two slots holding it)
/// is settled: gets agree on the earliest, a put leaves one entry, a
/// delete removes them all.
#[test]
fn duplicates_of_a_key_are_settled() {
    with_cluster(
        2,
        |_| {},
        |_server, clients| {
            let mut ct = clients[0].register_client_thread().unwrap();
            let mut t = KvTable::create(&mut ct, 0, 0, small_params(), Protection::Lease).unwrap();
            for i in 0..20 {
                t.put(&mut ct, format!("other-{i}").as_bytes(), b"o")
                    .unwrap();
            }
            let k = b"dup";
            t.put(&mut ct, k, b"a").unwrap();
            t.insert_unsettled(&mut ct, k, b"b", 0).unwrap();
            t.insert_unsettled(&mut ct, k, b"c", 2).unwrap();
            assert_eq!(t.entries_of(&mut ct, k).unwrap(), 3);
            let first = t.get(&mut ct, k).unwrap().unwrap();
            assert!([&b"a"[..], b"b", b"c"].contains(&first.as_slice()));
            assert_eq!(t.get(&mut ct, k).unwrap().unwrap(), first, "gets agree");
            t.put(&mut ct, k, b"d").unwrap();
            assert_eq!(t.entries_of(&mut ct, k).unwrap(), 1);
            assert_eq!(t.get(&mut ct, k).unwrap().as_deref(), Some(&b"d"[..]));
            assert!(t.stats().dups_settled >= 2, "{:?}", t.stats());
            t.insert_unsettled(&mut ct, k, b"e", 1).unwrap();
            assert_eq!(t.entries_of(&mut ct, k).unwrap(), 2);
            assert!(t.del(&mut ct, k).unwrap());
            assert_eq!(t.entries_of(&mut ct, k).unwrap(), 0);
            assert_eq!(t.get(&mut ct, k).unwrap(), None);
            for i in 0..20 {
                assert!(t
                    .get(&mut ct, format!("other-{i}").as_bytes())
                    .unwrap()
                    .is_some());
            }
            t.relinquish(&mut ct).unwrap();
        },
    );
}

#[test]
fn limits_of_keys_and_values() {
    with_cluster(
        2,
        |_| {},
        |_server, clients| {
            let mut ct = clients[0].register_client_thread().unwrap();
            let mut t = KvTable::create(&mut ct, 0, 0, small_params(), Protection::Lease).unwrap();
            let key = [0xa5u8; MAX_KEY];
            let big: Vec<u8> = (0..MAX_VALUE).map(|i| (i * 7) as u8).collect();
            t.put(&mut ct, &key, &big).unwrap();
            t.put(&mut ct, b"", b"empty key").unwrap();
            t.put(&mut ct, b"empty value", b"").unwrap();
            assert_eq!(t.get(&mut ct, &key).unwrap(), Some(big.clone()));
            assert_eq!(
                t.get(&mut ct, b"").unwrap().as_deref(),
                Some(&b"empty key"[..])
            );
            assert_eq!(t.get(&mut ct, b"empty value").unwrap(), Some(vec![]));
            let e = t.put(&mut ct, &[0u8; MAX_KEY + 1], b"v").unwrap_err();
            assert!(e.to_string().contains("at most 64"), "{e}");
            let mut too_big = big.clone();
            too_big.push(0);
            let e = t.put(&mut ct, &key, &too_big).unwrap_err();
            assert!(e.to_string().contains("kv value"), "{e}");
            assert_eq!(t.get(&mut ct, &key).unwrap(), Some(big), "unchanged");
            // get_many takes the thread's completions: not with others in
            // flight.
            let keys: Vec<&[u8]> = vec![&key[..], b"", b"nothing"];
            let got = t.get_many(&mut ct, &keys).unwrap();
            assert_eq!(got[1].as_deref(), Some(&b"empty key"[..]));
            assert_eq!(got[2], None);
            let mut lease = ct.get_rlease(0, 0, 0, 0, 64, 0, 1).unwrap();
            ct.post_read(&mut lease, 8, 0, 0, 99).unwrap();
            let e = t.get_many(&mut ct, &keys).unwrap_err();
            assert!(e.to_string().contains("in flight"), "{e}");
            let c = ct.wait(1, PATIENCE).unwrap();
            assert_eq!((c.len(), c[0].user_data), (1, 99));
            ct.relinquish(&mut lease, 0, 0).unwrap();
            t.relinquish(&mut ct).unwrap();
        },
    );
}

/// A lease-protected table created by a thread of client node 0 and opened
/// read-write by a thread of client node 1.
fn two_writers(
    clients: &[Patronus],
    params: &KvParams,
) -> (ClientThread, KvTable, ClientThread, KvTable) {
    let mut ca = clients[0].register_client_thread().unwrap();
    let mut cb = clients[1].register_client_thread().unwrap();
    let a = KvTable::create(&mut ca, 0, 0, params.clone(), Protection::Lease).unwrap();
    let b = KvTable::open(
        &mut cb,
        0,
        0,
        params.clone(),
        Protection::Lease,
        Access::ReadWrite,
    )
    .unwrap();
    (ca, a, cb, b)
}

/// Nodes that update each other's keys replace each other's blocks; the
/// memory node lets only the allocating node free a block, so each
/// replaced block goes back to its owner through the owner's free ring.
#[test]
fn blocks_replaced_by_other_nodes_come_back_to_their_owner() {
    with_cluster(
        3,
        |_| {},
        |_server, clients| {
            let (mut ca, mut a, mut cb, mut b) = two_writers(clients, &small_params());
            let keys = 40u64;
            let rounds = 30u64;
            for r in 0..rounds {
                for i in 0..keys {
                    let (t, ct) = if r % 2 == 0 {
                        (&mut a, &mut ca)
                    } else {
                        (&mut b, &mut cb)
                    };
                    t.put(
                        ct,
                        format!("k{i}").as_bytes(),
                        format!("{r}-{i}").as_bytes(),
                    )
                    .unwrap();
                }
            }
            for i in 0..keys {
                let want = format!("{}-{i}", rounds - 1).into_bytes();
                assert_eq!(
                    a.get(&mut ca, format!("k{i}").as_bytes()).unwrap(),
                    Some(want)
                );
            }
            a.relinquish(&mut ca).unwrap();
            b.relinquish(&mut cb).unwrap();
            let (sa, sb) = (a.stats(), b.stats());
            eprintln!("a {sa:?}\nb {sb:?}");
            let handed = sa.handed_back + sb.handed_back;
            assert_eq!(
                handed,
                keys * (rounds - 1),
                "every replacement crossed nodes"
            );
            assert_eq!(sa.returned + sb.returned, handed, "all came back");
            assert_eq!(sa.leaked + sb.leaked, 0);
        },
    );
}

/// A client that died between reserving a position in another node's
/// free ring and writing it blocks that ring only for a second: the owner
/// then skips the position and takes what came after it.
#[test]
fn a_dead_free_ring_producer_is_skipped() {
    with_cluster(
        3,
        |_| {},
        |_server, clients| {
            let (mut ca, mut a, mut cb, mut b) = two_writers(clients, &small_params());
            let keys = 20u64;
            fill(&mut a, &mut ca, keys);
            let owner = clients[0].get_node_id();
            b.reserve_ring_position_and_die(&mut cb, owner).unwrap();
            for i in 0..keys {
                b.put(&mut cb, format!("key-{i}").as_bytes(), b"by b")
                    .unwrap();
            }
            assert_eq!(b.stats().handed_back, keys);
            let t0 = Instant::now();
            a.drain_free_ring(&mut ca).unwrap();
            assert_eq!(a.stats().returned, 0, "the unwritten position comes first");
            wait_until("the owner skipping the dead position", || {
                a.drain_free_ring(&mut ca).unwrap();
                a.stats().returned == keys
            });
            eprintln!("skipped after {:?}", t0.elapsed());
            assert!(t0.elapsed() >= Duration::from_secs(1));
            for i in 0..keys {
                assert_eq!(
                    a.get(&mut ca, format!("key-{i}").as_bytes())
                        .unwrap()
                        .as_deref(),
                    Some(&b"by b"[..])
                );
            }
            a.relinquish(&mut ca).unwrap();
            b.relinquish(&mut cb).unwrap();
            assert_eq!(a.stats().leaked + b.stats().leaked, 0);
        },
    );
}

#[test]
fn splits_during_concurrent_puts_lose_nothing() {
    with_cluster(
        3,
        |_| {},
        |_server, clients| {
            let params = KvParams {
                groups: 2,
                initial_depth: 0,
                ..small_params()
            };
            create_table(&clients[0], &params, Protection::Lease);
            let keys = 300u64;
            let done = AtomicU64::new(0);
            let forced = AtomicU64::new(0);
            thread::scope(|s| {
                for w in 0..3u64 {
                    let n = &clients[(w % 2) as usize];
                    let (params, done) = (params.clone(), &done);
                    s.spawn(move || {
                        let mut ct = n.register_client_thread().unwrap();
                        let mut t = KvTable::open(
                            &mut ct,
                            0,
                            0,
                            params,
                            Protection::Lease,
                            Access::ReadWrite,
                        )
                        .unwrap();
                        for i in 0..keys {
                            let k = format!("w{w}-{i}");
                            t.put(&mut ct, k.as_bytes(), k.repeat(3).as_bytes())
                                .unwrap();
                        }
                        done.fetch_add(1, Ordering::SeqCst);
                        t.relinquish(&mut ct).unwrap();
                    });
                }
                // A fourth client splits the subtables of random keys
                // while the writers put.
                let (params, done, forced) = (params.clone(), &done, &forced);
                s.spawn(move || {
                    let mut ct = clients[1].register_client_thread().unwrap();
                    let mut t =
                        KvTable::open(&mut ct, 0, 0, params, Protection::Lease, Access::ReadWrite)
                            .unwrap();
                    let mut rng = Rng(77);
                    while done.load(Ordering::SeqCst) < 3 && t.global_depth() < 7 {
                        let k = format!("w{}-{}", rng.below(3), rng.below(keys));
                        t.split_subtable_of(&mut ct, k.as_bytes()).unwrap();
                        if done.load(Ordering::SeqCst) == 0 {
                            // Finished while every writer was still putting.
                            forced.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    t.relinquish(&mut ct).unwrap();
                });
            });
            let mut ct = clients[0].register_client_thread().unwrap();
            let mut t =
                KvTable::open(&mut ct, 0, 0, params, Protection::Lease, Access::ReadOnly).unwrap();
            for w in 0..3u64 {
                for i in 0..keys {
                    let k = format!("w{w}-{i}");
                    assert_eq!(
                        t.get(&mut ct, k.as_bytes()).unwrap(),
                        Some(k.repeat(3).into_bytes()),
                        "key {k} lost"
                    );
                    assert_eq!(t.entries_of(&mut ct, k.as_bytes()).unwrap(), 1, "{k}");
                }
            }
            eprintln!(
                "splits forced while all writers put: {}, global depth {}",
                forced.load(Ordering::Relaxed),
                t.global_depth()
            );
            assert!(forced.load(Ordering::Relaxed) > 0);
            assert!(t.global_depth() >= 3, "the table must have grown");
            t.relinquish(&mut ct).unwrap();
        },
    );
}

/// Every key's value, folded into one checksum (through `t`).
fn table_sum(t: &mut KvTable, ct: &mut ClientThread, keys: u64) -> u64 {
    let mut sum = 0u64;
    for i in 0..keys {
        let k = format!("key-{i}");
        let v = t.get(ct, k.as_bytes()).unwrap();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ i;
        for b in v.as_deref().unwrap_or(b"<none>") {
            h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
        }
        sum = sum.wrapping_add(h);
    }
    sum
}

fn fill(t: &mut KvTable, ct: &mut ClientThread, keys: u64) {
    for i in 0..keys {
        t.put(
            ct,
            format!("key-{i}").as_bytes(),
            format!("value-{i}").as_bytes(),
        )
        .unwrap();
    }
}

#[test]
fn read_only_handle_cannot_modify_the_table() {
    for mode in [Protection::Lease, Protection::Mr, Protection::Rpc] {
        eprintln!("mode {mode:?}");
        read_only_handle_cannot_modify(mode);
    }
}

fn read_only_handle_cannot_modify(mode: Protection) {
    with_cluster(
        3,
        |_| {},
        |_server, clients| {
            let keys = 200;
            let mut cw = clients[0].register_client_thread().unwrap();
            let mut w = KvTable::create(&mut cw, 0, 0, small_params(), mode).unwrap();
            fill(&mut w, &mut cw, keys);
            let mut cr = clients[1].register_client_thread().unwrap();
            let mut r =
                KvTable::open(&mut cr, 0, 0, small_params(), mode, Access::ReadOnly).unwrap();
            let before = table_sum(&mut r, &mut cr, keys);
            assert_eq!(before, table_sum(&mut w, &mut cw, keys));
            // Update, insert and delete: each refused by the memory node.
            assert_eq!(
                refused_rc(r.put(&mut cr, b"key-7", b"forged")),
                Rc::RdmaProtectionErr,
                "update through a read lease"
            );
            assert_eq!(
                refused_rc(r.put(&mut cr, b"new-key", b"forged")),
                Rc::RdmaProtectionErr,
                "insert through a read lease"
            );
            assert_eq!(
                refused_rc(r.del(&mut cr, b"key-8")),
                Rc::RdmaProtectionErr,
                "delete through a read lease"
            );
            // The same, posted together.
            assert_eq!(
                refused_rc(
                    r.put_many(&mut cr, &[(b"key-9", b"forged"), (b"other-new", b"forged")])
                ),
                Rc::RdmaProtectionErr,
                "put_many through a read lease"
            );
            assert_eq!(
                refused_rc(r.del_many(&mut cr, &[b"key-10", b"key-11"])),
                Rc::RdmaProtectionErr,
                "del_many through a read lease"
            );
            // Nothing changed, seen from both handles; the reader still
            // reads (its QP recovered).
            assert_eq!(table_sum(&mut r, &mut cr, keys), before);
            assert_eq!(table_sum(&mut w, &mut cw, keys), before);
            assert_eq!(r.get(&mut cr, b"new-key").unwrap(), None);
            assert_eq!(w.get(&mut cw, b"new-key").unwrap(), None);
            assert_eq!(w.get(&mut cw, b"other-new").unwrap(), None);
            // The writer still writes.
            w.put(&mut cw, b"key-7", b"changed").unwrap();
            assert_eq!(
                r.get(&mut cr, b"key-7").unwrap().as_deref(),
                Some(&b"changed"[..])
            );
            r.relinquish(&mut cr).unwrap();
            w.relinquish(&mut cw).unwrap();
        },
    );
}

/// Polls `cond` until it holds; fails naming `what` after [`PATIENCE`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < PATIENCE, "{what}: not within {PATIENCE:?}");
        thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn relinquished_or_expired_handles_cannot_touch_the_table() {
    with_cluster(
        3,
        |_| {},
        |_server, clients| {
            let keys = 50;
            let mut cw = clients[0].register_client_thread().unwrap();
            let mut w = KvTable::create(&mut cw, 0, 0, small_params(), Protection::Lease).unwrap();
            fill(&mut w, &mut cw, keys);
            let before = table_sum(&mut w, &mut cw, keys);

            // Relinquished: refused locally, and by the memory node when a
            // hostile client keeps using its old rkeys (or, two-sided, its
            // old lease ids). Modes are per handle: one table, three modes.
            let mut ct = clients[1].register_client_thread().unwrap();
            for mode in [Protection::Lease, Protection::Mr, Protection::Rpc] {
                let mut h =
                    KvTable::open(&mut ct, 0, 0, small_params(), mode, Access::ReadWrite).unwrap();
                assert!(h.get(&mut ct, b"key-1").unwrap().is_some());
                h.relinquish(&mut ct).unwrap();
                assert!(h.get(&mut ct, b"key-1").is_err(), "{mode:?}: local refusal");
                h.forge_live();
                h.add_rw_flags(rw::NO_LOCAL_EXPIRE_CHECK);
                let get = h.get(&mut ct, b"key-1");
                let put = h.put(&mut ct, b"key-1", b"forged");
                let del = h.del(&mut ct, b"key-2");
                if mode == Protection::Rpc {
                    // Two-sided: the memory node finds no live lease.
                    for e in [get.err(), put.err(), del.err()] {
                        let e = e.expect("a relinquished rpc handle must be refused");
                        assert!(e.to_string().contains("no live lease"), "{e}");
                    }
                } else {
                    let what = format!("{mode:?}: a relinquished lease must be dead");
                    assert_eq!(refused_rc(get), Rc::RdmaProtectionErr, "{what}");
                    assert_eq!(refused_rc(put), Rc::RdmaProtectionErr, "{what}");
                    assert_eq!(refused_rc(del), Rc::RdmaProtectionErr, "{what}");
                }
            }

            // Expired: a 30 ms term, not extended.
            let p = KvParams {
                lease_ns: 30_000_000,
                auto_extend: false,
                ..small_params()
            };
            let mut e =
                KvTable::open(&mut ct, 0, 0, p, Protection::Lease, Access::ReadWrite).unwrap();
            assert!(e.get(&mut ct, b"key-1").unwrap().is_some());
            let ddl = e.lease_deadline();
            let node = &clients[1];
            wait_until("the handle's deadline passing", || {
                node.now() > ddl.saturating_add(node.epsilon())
            });
            assert_eq!(
                refused_rc(e.get(&mut ct, b"key-1")),
                Rc::LeaseLocalExpiredErr
            );
            assert_eq!(
                refused_rc(e.put(&mut ct, b"key-1", b"late")),
                Rc::LeaseLocalExpiredErr
            );
            // Past the local check, the memory node's GC revokes it.
            e.add_rw_flags(rw::NO_LOCAL_EXPIRE_CHECK);
            wait_until("the memory node revoking the expired lease", || {
                match e.get(&mut ct, b"key-1") {
                    Ok(_) => false,
                    Err(Error::Refused {
                        rc: Rc::RdmaProtectionErr,
                        ..
                    }) => true,
                    Err(x) => panic!("expired handle: {x}"),
                }
            });
            assert_eq!(
                refused_rc(e.put(&mut ct, b"key-1", b"late")),
                Rc::RdmaProtectionErr
            );
            assert_eq!(refused_rc(e.del(&mut ct, b"key-3")), Rc::RdmaProtectionErr);
            assert_eq!(table_sum(&mut w, &mut cw, keys), before, "table changed");
            w.relinquish(&mut cw).unwrap();
        },
    );
}

#[test]
fn dead_resize_lock_holder_loses_the_lock_at_its_lease_end() {
    with_cluster(
        3,
        |_| {},
        |_server, clients| {
            // `split_and_die` makes one attempt: its lock must outlast the
            // split's phases before the die point on a loaded host (50 ms
            // ran out once in four runs beside two busy loops).
            let lock_ns: u64 = 200_000_000;
            let params = KvParams {
                lock_ns,
                ..small_params()
            };
            let keys = 150;
            let (mut ca, mut a, mut cb, mut b) = two_writers(clients, &params);
            fill(&mut a, &mut ca, keys);
            let nb = &clients[1];

            // 1. A takes the lock and dies (the lease is dropped, never
            // relinquished).
            let lock = a.lock_resize(&mut ca).unwrap();
            let ddl = lock.ddl;
            drop(lock);
            let mut refused_before = 0;
            let got = loop {
                let now = nb.now();
                if let Some(l) = b.try_lock_resize(&mut cb).unwrap() {
                    break (now, l);
                }
                refused_before += 1;
                assert!(
                    now < ddl.saturating_add(2_000_000_000),
                    "the lock was not released within 2 s of its term"
                );
                thread::sleep(Duration::from_micros(200));
            };
            let (at, l) = got;
            let late_ms = (at - ddl) as f64 / 1e6;
            eprintln!(
                "lock released {late_ms:.2} ms after the dead holder's deadline (epsilon {} us), \
                 {refused_before} refusals before",
                nb.epsilon() / 1000
            );
            assert!(
                refused_before > 0,
                "the lock was free while its holder's lease lived"
            );
            assert!(
                at >= ddl - nb.epsilon(),
                "the lock came free {:.2} ms before the holder's deadline",
                -late_ms
            );
            // The GC acts at deadline + epsilon on the memory node's clock;
            // what comes on top is scheduling on a loaded 2-core machine
            // (measured: well under 1 ms when idle).
            assert!(
                at <= ddl + nb.epsilon() + 500_000_000,
                "the lock came free {late_ms:.2} ms after the deadline"
            );
            b.unlock_resize(&mut cb, l).unwrap();

            // 2. A dies in the middle of a split: recorded, subtable frozen.
            let t0 = Instant::now();
            a.split_and_die(&mut ca, b"key-5", SplitPhase::Frozen)
                .unwrap();
            drop(a);
            // B writes to the frozen subtable: it waits, takes the lock
            // once A's lease ends, finishes the split, and goes on.
            b.put(&mut cb, b"key-5", b"after the crash").unwrap();
            let took = t0.elapsed();
            eprintln!(
                "put into the frozen subtable took {took:?} (lock term {} ms); stats {:?}",
                lock_ns / 1_000_000,
                b.stats()
            );
            assert!(b.stats().splits >= 1, "B must have finished the split");
            assert_eq!(
                b.get(&mut cb, b"key-5").unwrap().as_deref(),
                Some(&b"after the crash"[..])
            );
            for i in (0..keys).filter(|&i| i != 5) {
                let k = format!("key-{i}");
                assert_eq!(
                    b.get(&mut cb, k.as_bytes()).unwrap(),
                    Some(format!("value-{i}").into_bytes()),
                    "{k} after the recovered split"
                );
            }
            // 3. Another client dies after publishing its split (the
            // directory names the new subtables, the split is still
            // pending). Writers use the new subtables at once; whoever
            // takes the lock next finishes the split without copying the
            // frozen (older) entries over theirs.
            let mut cc = clients[0].register_client_thread().unwrap();
            let mut c = KvTable::open(
                &mut cc,
                0,
                0,
                params.clone(),
                Protection::Lease,
                Access::ReadWrite,
            )
            .unwrap();
            c.split_and_die(&mut cc, b"key-9", SplitPhase::Published)
                .unwrap();
            drop(c);
            b.put(&mut cb, b"key-9", b"newer than the frozen copy")
                .unwrap();
            let splits = b.stats().splits;
            b.split_subtable_of(&mut cb, b"key-9").unwrap();
            assert_eq!(b.stats().splits, splits + 2, "the pending split, then B's");
            assert_eq!(
                b.get(&mut cb, b"key-9").unwrap().as_deref(),
                Some(&b"newer than the frozen copy"[..])
            );
            for i in (0..keys).filter(|&i| i != 5 && i != 9) {
                let k = format!("key-{i}");
                assert_eq!(
                    b.get(&mut cb, k.as_bytes()).unwrap(),
                    Some(format!("value-{i}").into_bytes()),
                    "{k} after the second recovered split"
                );
            }
            drop(cc);

            // Still usable: more puts, more splits.
            for i in 0..200 {
                b.put(&mut cb, format!("more-{i}").as_bytes(), b"x")
                    .unwrap();
            }
            for i in 0..200 {
                assert!(b
                    .get(&mut cb, format!("more-{i}").as_bytes())
                    .unwrap()
                    .is_some());
            }
            b.relinquish(&mut cb).unwrap();
        },
    );
}

/// A resize-lock holder descheduled past its lock's term in the middle
/// of a split (simulated: it stops between computing the new subtables
/// and writing them until the other client is done; the term is 50 ms)
/// must not overwrite what
/// the next holder and the writers after it wrote. Its late writes go
/// through the lock's lease, which the memory node has revoked by then, so
/// they are refused: by the local expiry check, and with that check off
/// by the memory node (the window is gone). Every key keeps the value
/// written after the takeover. (With the split's writes through the
/// table's own lease, the late holder puts the old entries back.)
#[test]
fn a_late_resize_lock_holder_cannot_overwrite_the_table() {
    for nic_only in [false, true] {
        with_cluster(
            3,
            |_| {},
            |_server, clients| {
                let params = KvParams {
                    lock_ns: 50_000_000,
                    ..small_params()
                };
                let keys = 150;
                let (mut ca, mut a, mut cb, mut b) = two_writers(clients, &params);
                fill(&mut a, &mut ca, keys);
                let splits_before = a.stats().splits;
                // A stops inside its split until B is done (B's puts wait
                // out A's term, take the lock over and finish the split).
                let b_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                {
                    let (b_done, stalled) = (b_done.clone(), stalled.clone());
                    a.stall_splits(Some(Box::new(move || {
                        stalled.store(true, Ordering::SeqCst);
                        wait_until("B rewrites every key", || b_done.load(Ordering::SeqCst));
                    })));
                }
                if nic_only {
                    a.add_rw_flags(rw::NO_LOCAL_EXPIRE_CHECK);
                }
                thread::scope(|s| {
                    let late = s.spawn(move || {
                        let r = a.try_split_subtable_of(&mut ca, b"key-5");
                        (r, a.stats())
                    });
                    // A holds the lock and has frozen the subtable.
                    wait_until("the late holder stops inside its split", || {
                        stalled.load(Ordering::SeqCst)
                    });
                    // B rewrites every key: those of the subtable A froze
                    // wait for the lock, take it when A's term ends and
                    // finish A's split.
                    for i in 0..keys {
                        b.put(
                            &mut cb,
                            format!("key-{i}").as_bytes(),
                            format!("v2-{i}").as_bytes(),
                        )
                        .unwrap();
                    }
                    assert!(b.stats().splits >= 1, "B must have finished A's split");
                    b_done.store(true, Ordering::SeqCst);
                    let (r, st) = late.join().unwrap();
                    let want = if nic_only {
                        Rc::RdmaProtectionErr
                    } else {
                        Rc::LeaseLocalExpiredErr
                    };
                    assert_eq!(refused_rc(r), want, "the late holder's split");
                    assert_eq!(
                        st.splits, splits_before,
                        "the late holder finished no split"
                    );
                });
                for i in 0..keys {
                    let k = format!("key-{i}");
                    assert_eq!(
                        b.get(&mut cb, k.as_bytes()).unwrap(),
                        Some(format!("v2-{i}").into_bytes()),
                        "{k} after the late holder woke (check on the memory node: {nic_only})"
                    );
                }
                // The table goes on splitting.
                for i in 0..200 {
                    b.put(&mut cb, format!("more-{i}").as_bytes(), b"x")
                        .unwrap();
                }
                b.relinquish(&mut cb).unwrap();
            },
        );
    }
}

/// Rough rates per protection mode on one client thread (not a
/// benchmark: see `patronus bench ycsb`). Run with
/// `cargo test --test kv -- --ignored --nocapture kv_rates`.
#[test]
#[ignore]
fn kv_rates_by_mode() {
    let modes = [
        Protection::Unprotected,
        Protection::Lease,
        Protection::Mr,
        Protection::Rpc,
    ];
    with_cluster(
        2,
        |c| c.allow_universal_rkey = true,
        |_server, clients| {
            let mut ct = clients[0].register_client_thread().unwrap();
            let params = KvParams {
                groups: 64,
                initial_depth: 4,
                max_depth: 8,
                ..small_params()
            };
            let mut t = KvTable::create(&mut ct, 0, 0, params.clone(), Protection::Lease).unwrap();
            let keys = 2000u64;
            for i in 0..keys {
                t.put(&mut ct, format!("user{i:012}").as_bytes(), &[7u8; 64])
                    .unwrap();
            }
            t.relinquish(&mut ct).unwrap();
            let mut base = [0f64; 4];
            for mode in modes {
                let mut t =
                    KvTable::open(&mut ct, 0, 0, params.clone(), mode, Access::ReadWrite).unwrap();
                let mut rng = Rng(5);
                let n = 10_000u64;
                let t0 = Instant::now();
                for _ in 0..n {
                    let k = format!("user{:012}", rng.below(keys));
                    assert!(t.get(&mut ct, k.as_bytes()).unwrap().is_some());
                }
                let get = n as f64 / t0.elapsed().as_secs_f64();
                let t0 = Instant::now();
                for _ in 0..n / 16 {
                    let ks: Vec<String> = (0..16)
                        .map(|_| format!("user{:012}", rng.below(keys)))
                        .collect();
                    let refs: Vec<&[u8]> = ks.iter().map(|k| k.as_bytes()).collect();
                    assert!(t
                        .get_many(&mut ct, &refs)
                        .unwrap()
                        .iter()
                        .all(Option::is_some));
                }
                let many = (n / 16 * 16) as f64 / t0.elapsed().as_secs_f64();
                let m = n / 5;
                let t0 = Instant::now();
                for _ in 0..m {
                    let k = format!("user{:012}", rng.below(keys));
                    t.put(&mut ct, k.as_bytes(), &[8u8; 64]).unwrap();
                }
                let put = m as f64 / t0.elapsed().as_secs_f64();
                // 16 async gets in flight together on the one thread.
                let at = AsyncThread::new(ct);
                let t0 = Instant::now();
                for _ in 0..n / 16 {
                    let ks: Vec<String> = (0..16)
                        .map(|_| format!("user{:012}", rng.below(keys)))
                        .collect();
                    let got =
                        at.block_on(join_all(ks.iter().map(|k| t.get_async(&at, k.as_bytes()))));
                    assert!(got.iter().all(|g| matches!(g, Ok(Some(_)))));
                }
                let asy = (n / 16 * 16) as f64 / t0.elapsed().as_secs_f64();
                ct = at.into_inner();
                if mode == Protection::Unprotected {
                    base = [get, many, put, asy];
                }
                eprintln!(
                    "{mode:?}: get {:.0}/s ({:.2}x), get_many(16) {:.0}/s ({:.2}x), put {:.0}/s \
                     ({:.2}x), get_async x16 {:.0}/s ({:.2}x)",
                    get,
                    get / base[0],
                    many,
                    many / base[1],
                    put,
                    put / base[2],
                    asy,
                    asy / base[3]
                );
                t.relinquish(&mut ct).unwrap();
            }
        },
    );
}

/// `put_many` / `del_many` / `get_many` only (waves of 16 keys in flight,
/// keys repeating inside a wave), from 2 threads on each of 2 client
/// nodes over a table that splits: every value byte-exact against the
/// model, every del's result as the model says.
#[test]
fn posted_puts_and_dels_match_the_model() {
    with_cluster(
        3,
        |_| {},
        |_server, clients| {
            let params = small_params();
            create_table(&clients[0], &params, Protection::Lease);
            let splits = AtomicU64::new(0);
            thread::scope(|s| {
                for (ni, n) in clients.iter().enumerate() {
                    for ti in 0..2 {
                        let (params, splits) = (params.clone(), &splits);
                        s.spawn(move || {
                            let tid = (ni * 2 + ti) as u64;
                            let mut ct = n.register_client_thread().unwrap();
                            let mut t = KvTable::open(
                                &mut ct,
                                0,
                                0,
                                params,
                                Protection::Lease,
                                Access::ReadWrite,
                            )
                            .unwrap();
                            let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
                            let mut rng = Rng(0x51ed ^ ((tid + 1) * 0x2545_f491_4f6c_dd1d));
                            for round in 0..150u64 {
                                let ks: Vec<Vec<u8>> = (0..16)
                                    .map(|_| format!("p{tid}-{}", rng.below(300)).into_bytes())
                                    .collect();
                                let refs: Vec<&[u8]> = ks.iter().map(|k| &k[..]).collect();
                                match rng.below(4) {
                                    0 | 1 => {
                                        let vs: Vec<Vec<u8>> = (0..16)
                                            .map(|j| value_for(&mut rng, round * 16 + j))
                                            .collect();
                                        let items: Vec<(&[u8], &[u8])> = refs
                                            .iter()
                                            .zip(&vs)
                                            .map(|(k, v)| (*k, &v[..]))
                                            .collect();
                                        t.put_many(&mut ct, &items).unwrap();
                                        for (k, v) in ks.iter().zip(vs) {
                                            model.insert(k.clone(), v);
                                        }
                                    }
                                    2 => {
                                        let got = t.del_many(&mut ct, &refs).unwrap();
                                        let want: Vec<bool> =
                                            ks.iter().map(|k| model.remove(k).is_some()).collect();
                                        assert_eq!(got, want, "thread {tid} round {round}");
                                    }
                                    _ => {}
                                }
                                let got = t.get_many(&mut ct, &refs).unwrap();
                                for (k, v) in ks.iter().zip(got) {
                                    assert_eq!(
                                        v.as_ref(),
                                        model.get(k),
                                        "thread {tid} round {round}: {}",
                                        String::from_utf8_lossy(k)
                                    );
                                }
                            }
                            for i in 0..300 {
                                let k = format!("p{tid}-{i}").into_bytes();
                                assert_eq!(t.get(&mut ct, &k).unwrap().as_ref(), model.get(&k));
                                assert!(t.entries_of(&mut ct, &k).unwrap() <= 1);
                            }
                            splits.fetch_add(t.stats().splits, Ordering::Relaxed);
                            eprintln!("thread {tid}: {:?}", t.stats());
                            t.relinquish(&mut ct).unwrap();
                        });
                    }
                }
            });
            assert!(
                splits.load(Ordering::Relaxed) > 0,
                "the table never split: the test did not cover resizing"
            );
        },
    );
}

/// Four threads on two nodes `put_many` the same 12 new keys at once, in
/// different orders: each key ends with exactly one entry, holding one of
/// the four values, and every handle reads the same one.
#[test]
fn concurrent_posted_inserts_of_the_same_keys_leave_one_value() {
    with_cluster(
        3,
        |_| {},
        |_server, clients| {
            let params = KvParams {
                groups: 2,
                ..small_params()
            };
            create_table(&clients[0], &params, Protection::Lease);
            let rounds = 30u64;
            let bar = common::Rendezvous::new(4, Duration::from_secs(60));
            let seen = std::sync::Mutex::new(HashMap::<(u64, usize), Vec<Vec<u8>>>::new());
            thread::scope(|s| {
                for n in clients {
                    for w in 0..2usize {
                        let (bar, params, seen) = (&bar, params.clone(), &seen);
                        s.spawn(move || {
                            let mut ct = n.register_client_thread().unwrap();
                            let mut t = KvTable::open(
                                &mut ct,
                                0,
                                0,
                                params,
                                Protection::Lease,
                                Access::ReadWrite,
                            )
                            .unwrap();
                            let me = format!("n{}-w{w}", n.get_node_id());
                            for r in 0..rounds {
                                let mut ks: Vec<Vec<u8>> = (0..12)
                                    .map(|j| format!("same-{r}-{j}").into_bytes())
                                    .collect();
                                if w == 1 {
                                    ks.reverse();
                                }
                                let vs: Vec<Vec<u8>> = ks
                                    .iter()
                                    .map(|k| {
                                        format!("{me}:{}", String::from_utf8_lossy(k)).into_bytes()
                                    })
                                    .collect();
                                let items: Vec<(&[u8], &[u8])> =
                                    ks.iter().zip(&vs).map(|(k, v)| (&k[..], &v[..])).collect();
                                bar.wait();
                                t.put_many(&mut ct, &items).unwrap();
                                bar.wait();
                                for j in 0..12 {
                                    let k = format!("same-{r}-{j}").into_bytes();
                                    let v = t.get(&mut ct, &k).unwrap().expect("the key");
                                    let v_s = String::from_utf8_lossy(&v).to_string();
                                    assert!(
                                        v_s.ends_with(&format!(":same-{r}-{j}")),
                                        "round {r} key {j}: {v_s}"
                                    );
                                    assert_eq!(t.entries_of(&mut ct, &k).unwrap(), 1, "round {r}");
                                    seen.lock().unwrap().entry((r, j)).or_default().push(v);
                                }
                                bar.wait();
                            }
                            t.relinquish(&mut ct).unwrap();
                        });
                    }
                }
            });
            let seen = seen.into_inner().unwrap();
            assert_eq!(seen.len(), rounds as usize * 12);
            for ((r, j), vs) in seen {
                assert_eq!(vs.len(), 4);
                assert!(
                    vs.iter().all(|v| v == &vs[0]),
                    "round {r} key {j}: handles disagree: {vs:?}"
                );
            }
        },
    );
}

// ---- Async forms: many table operations in flight on one thread. ----

/// Runs `fut` on `at` and returns its output with the most calls the
/// thread had in flight at once, sampled after every poll of `fut`.
fn run_counting<T>(at: &AsyncThread, fut: impl std::future::Future<Output = T>) -> (T, usize) {
    let mut fut = std::pin::pin!(fut);
    let mut most = 0;
    let out = at.block_on(futures::future::poll_fn(|cx| {
        let r = fut.as_mut().poll(cx);
        most = most.max(at.with(|t| t.inflight()));
        r
    }));
    (out, most)
}

/// A value of `len` bytes that names `tag` in every byte position.
fn pattern(tag: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (tag as u8).wrapping_mul(31).wrapping_add(i as u8) ^ (i >> 8) as u8)
        .collect()
}

#[test]
fn async_ops_on_one_thread_are_in_flight_together_and_byte_exact() {
    with_cluster(
        2,
        |_| {},
        |_server, clients| {
            let mut ct = clients[0].register_client_thread().unwrap();
            let params = KvParams {
                groups: 16,
                max_depth: 6,
                ..small_params()
            };
            let t = KvTable::create(&mut ct, 0, 0, params, Protection::Lease).unwrap();
            let at = AsyncThread::new(ct);
            let keys: Vec<Vec<u8>> = (0..64).map(|i| format!("akey-{i}").into_bytes()).collect();
            let vals: Vec<Vec<u8>> = (0..64u64)
                .map(|i| pattern(i, [0, 1, 7, 100, 300, 4000][i as usize % 6]))
                .collect();
            let (put, most_put) = run_counting(
                &at,
                join_all(keys.iter().zip(&vals).map(|(k, v)| t.put_async(&at, k, v))),
            );
            for r in put {
                r.unwrap();
            }
            let (got, most_get) =
                run_counting(&at, join_all(keys.iter().map(|k| t.get_async(&at, k))));
            for ((k, v), g) in keys.iter().zip(&vals).zip(got) {
                assert_eq!(
                    g.unwrap().as_deref(),
                    Some(&v[..]),
                    "{}",
                    String::from_utf8_lossy(k)
                );
            }
            eprintln!("calls in flight at once: puts {most_put}, gets {most_get}");
            assert!(
                most_get > 8,
                "async gets did not overlap: {most_get} at once"
            );
            assert!(
                most_put > 8,
                "async puts did not overlap: {most_put} at once"
            );
            // Deletes of every other key (and of keys never there), then
            // updates, all interleaved.
            let dels: Vec<Vec<u8>> = keys
                .iter()
                .step_by(2)
                .cloned()
                .chain((0..8).map(|i| format!("absent-{i}").into_bytes()))
                .collect();
            let was = at.block_on(join_all(dels.iter().map(|k| t.del_async(&at, k))));
            let was: Vec<bool> = was.into_iter().map(|r| r.unwrap()).collect();
            assert_eq!(was.iter().filter(|&&w| w).count(), 32);
            assert!(
                was[32..].iter().all(|&w| !w),
                "absent keys reported deleted"
            );
            let got = at.block_on(join_all(keys.iter().map(|k| t.get_async(&at, k))));
            for (i, g) in got.into_iter().enumerate() {
                let want = (i % 2 == 1).then(|| vals[i].clone());
                assert_eq!(g.unwrap(), want, "key {i} after the deletes");
            }
            // Puts of one key racing on one thread settle to one entry
            // holding one of the values.
            let same: Vec<Vec<u8>> = (0..16u64).map(|i| pattern(100 + i, 40)).collect();
            for r in at.block_on(join_all(same.iter().map(|v| t.put_async(&at, b"same", v)))) {
                r.unwrap();
            }
            let v = at.block_on(t.get_async(&at, b"same")).unwrap().unwrap();
            assert!(same.contains(&v), "a value nobody put: {v:?}");
            // The blocking API sees the same table.
            let mut ct = at.into_inner();
            let mut t = t;
            assert_eq!(t.entries_of(&mut ct, b"same").unwrap(), 1);
            assert_eq!(t.get(&mut ct, b"same").unwrap(), Some(v));
            assert_eq!(t.get(&mut ct, &keys[1]).unwrap(), Some(vals[1].clone()));
            assert_eq!(t.get(&mut ct, &keys[0]).unwrap(), None);
            t.relinquish(&mut ct).unwrap();
        },
    );
}

#[test]
fn async_ops_interleaved_with_a_blocking_node_match_the_model() {
    with_cluster(
        3,
        |_| {},
        |_server, clients| {
            let params = small_params();
            let mut c0 = clients[0].register_client_thread().unwrap();
            let t0 = KvTable::create(&mut c0, 0, 0, params.clone(), Protection::Lease).unwrap();
            let rounds = 150;
            thread::scope(|s| {
                // Node 2, blocking API, its own keys.
                let p1 = params.clone();
                let sync_side = s.spawn(move || {
                    let mut ct = clients[1].register_client_thread().unwrap();
                    let mut t =
                        KvTable::open(&mut ct, 0, 0, p1, Protection::Lease, Access::ReadWrite)
                            .unwrap();
                    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
                    let mut rng = Rng(0x5eed_0001);
                    for i in 0..rounds * 8 {
                        let k = format!("sync-{}", rng.below(300)).into_bytes();
                        match rng.below(3) {
                            0 => assert_eq!(t.get(&mut ct, &k).unwrap().as_ref(), model.get(&k)),
                            1 => {
                                let v = value_for(&mut rng, i);
                                t.put(&mut ct, &k, &v).unwrap();
                                model.insert(k, v);
                            }
                            _ => {
                                assert_eq!(t.del(&mut ct, &k).unwrap(), model.remove(&k).is_some())
                            }
                        }
                    }
                    t.relinquish(&mut ct).unwrap();
                    model
                });
                // Node 1, async API: rounds of 16 operations on distinct
                // keys, all in flight together on one thread.
                let at = AsyncThread::new(c0);
                let t = &t0;
                let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
                let mut rng = Rng(0x5eed_0002);
                let mut most = 0;
                for round in 0..rounds {
                    let mut ks: Vec<Vec<u8>> = Vec::new();
                    while ks.len() < 16 {
                        let k = format!("async-{}", rng.below(300)).into_bytes();
                        if !ks.contains(&k) {
                            ks.push(k);
                        }
                    }
                    enum Op {
                        Get,
                        Put(Vec<u8>),
                        Del,
                    }
                    let ops: Vec<Op> = (0..16)
                        .map(|j| match rng.below(3) {
                            0 => Op::Get,
                            1 => Op::Put(value_for(&mut rng, round * 16 + j)),
                            _ => Op::Del,
                        })
                        .collect();
                    enum Out {
                        Got(Option<Vec<u8>>),
                        Put,
                        Deleted(bool),
                    }
                    let futs = ks.iter().zip(&ops).map(|(k, op)| {
                        let at = &at;
                        async move {
                            Ok::<_, Error>(match op {
                                Op::Get => Out::Got(t.get_async(at, k).await?),
                                Op::Put(v) => {
                                    t.put_async(at, k, v).await?;
                                    Out::Put
                                }
                                Op::Del => Out::Deleted(t.del_async(at, k).await?),
                            })
                        }
                    });
                    let (outs, m) = run_counting(&at, join_all(futs));
                    most = most.max(m);
                    for ((k, op), out) in ks.into_iter().zip(ops).zip(outs) {
                        match (op, out.unwrap()) {
                            (Op::Get, Out::Got(v)) => {
                                assert_eq!(v.as_ref(), model.get(&k), "round {round}: get")
                            }
                            (Op::Put(v), Out::Put) => {
                                model.insert(k, v);
                            }
                            (Op::Del, Out::Deleted(was)) => {
                                assert_eq!(was, model.remove(&k).is_some(), "round {round}: del")
                            }
                            _ => unreachable!(),
                        }
                    }
                }
                assert!(most > 1, "the async operations never overlapped");
                let sync_model = sync_side.join().unwrap();
                // Everything, both sides' keys, read back through the
                // async handle in one go.
                let all: Vec<(&Vec<u8>, &Vec<u8>)> =
                    model.iter().chain(sync_model.iter()).collect();
                let got = at.block_on(join_all(all.iter().map(|(k, _)| t.get_async(&at, k))));
                for ((k, v), g) in all.iter().zip(got) {
                    assert_eq!(
                        g.unwrap().as_ref(),
                        Some(*v),
                        "{}",
                        String::from_utf8_lossy(k)
                    );
                }
                eprintln!("async handle: {:?}, most in flight {most}", t.stats());
                let mut c0 = at.into_inner();
                let mut t0 = t0;
                // Keys deleted on either side stay deleted.
                for i in 0..300 {
                    for side in ["async", "sync"] {
                        let k = format!("{side}-{i}").into_bytes();
                        let m = if side == "async" { &model } else { &sync_model };
                        assert_eq!(t0.get(&mut c0, &k).unwrap().as_ref(), m.get(&k));
                    }
                }
                t0.relinquish(&mut c0).unwrap();
            });
        },
    );
}

#[test]
fn async_puts_split_full_subtables() {
    with_cluster(
        2,
        |_| {},
        |_server, clients| {
            let mut ct = clients[0].register_client_thread().unwrap();
            let t = KvTable::create(&mut ct, 0, 0, small_params(), Protection::Lease).unwrap();
            let at = AsyncThread::new(ct);
            let depth0 = t.global_depth();
            let n = 600u64;
            let keys: Vec<Vec<u8>> = (0..n).map(|i| format!("split-{i}").into_bytes()).collect();
            for chunk in keys.chunks(32) {
                let rs = at.block_on(join_all(chunk.iter().map(|k| t.put_async(&at, k, k))));
                for r in rs {
                    r.unwrap();
                }
            }
            let st = t.stats();
            eprintln!("{st:?}, depth {depth0} -> {}", t.global_depth());
            assert!(st.splits > 0, "600 keys in 128 slots did not split");
            assert!(t.global_depth() > depth0);
            let got = at.block_on(join_all(keys.iter().map(|k| t.get_async(&at, k))));
            for (k, g) in keys.iter().zip(got) {
                assert_eq!(g.unwrap().as_ref(), Some(k));
            }
            let mut ct = at.into_inner();
            let mut t = t;
            t.relinquish(&mut ct).unwrap();
        },
    );
}

#[test]
fn async_writes_of_a_read_only_handle_are_refused() {
    with_cluster(
        3,
        |_| {},
        |_server, clients| {
            let keys = 100;
            let mut cw = clients[0].register_client_thread().unwrap();
            let mut w = KvTable::create(&mut cw, 0, 0, small_params(), Protection::Lease).unwrap();
            fill(&mut w, &mut cw, keys);
            let mut cr = clients[1].register_client_thread().unwrap();
            let before = table_sum(&mut w, &mut cw, keys);
            let r = KvTable::open(
                &mut cr,
                0,
                0,
                small_params(),
                Protection::Lease,
                Access::ReadOnly,
            )
            .unwrap();
            let at = AsyncThread::new(cr);
            assert_eq!(
                refused_rc(at.block_on(r.put_async(&at, b"key-7", b"forged"))),
                Rc::RdmaProtectionErr,
                "async update through a read lease"
            );
            assert_eq!(
                refused_rc(at.block_on(r.put_async(&at, b"new-key", b"forged"))),
                Rc::RdmaProtectionErr,
                "async insert through a read lease"
            );
            assert_eq!(
                refused_rc(at.block_on(r.del_async(&at, b"key-8"))),
                Rc::RdmaProtectionErr,
                "async delete through a read lease"
            );
            // Together: every one refused.
            let forged: Vec<Vec<u8>> = (0..8).map(|i| format!("forged-{i}").into_bytes()).collect();
            let rs = at.block_on(join_all(forged.iter().enumerate().map(|(i, v)| {
                r.put_async(&at, if i % 2 == 0 { b"key-9" } else { b"new-9" }, v)
            })));
            for x in rs {
                assert_eq!(refused_rc(x), Rc::RdmaProtectionErr);
            }
            // The reader still reads, and nothing changed.
            assert_eq!(
                at.block_on(r.get_async(&at, b"key-7")).unwrap().as_deref(),
                Some(&b"value-7"[..])
            );
            assert_eq!(at.block_on(r.get_async(&at, b"new-key")).unwrap(), None);
            let mut cr = at.into_inner();
            let mut r = r;
            assert_eq!(table_sum(&mut r, &mut cr, keys), before);
            assert_eq!(table_sum(&mut w, &mut cw, keys), before);
            r.relinquish(&mut cr).unwrap();
            w.relinquish(&mut cw).unwrap();
        },
    );
}
