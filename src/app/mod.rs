//! Multi-process roles behind `patronus serve` and `patronus client`: a
//! memory node that serves its directories, and client workloads that
//! exercise a cluster formed through a keeper (memcached for several
//! processes). Output lines are `key=value` so scripts and tests can read
//! them.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::lease::flags::{acquire, rw};
use crate::lease::msg::AdminOp;
use crate::lease::Rc;
use crate::node::{Config, Patronus};
use crate::{Error, Result};

/// Client workloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Every thread FAAs +1 `ops` times on word 0 of the first memory node
    /// under a write lease; then the client nodes meet and one prints the
    /// word (`faa_total=`).
    Faa {
        /// Client threads.
        threads: u16,
        /// FAAs per thread.
        ops: u64,
    },
    /// Acquires `leases` write leases of `term_ms`, says `held=`, then keeps
    /// them alive by one-sided extension until killed (at most `idle_s`
    /// seconds).
    Hold {
        /// Leases to hold.
        leases: u32,
        /// Term of each.
        term_ms: u64,
        /// Longest idle time before exiting on its own.
        idle_s: u64,
    },
    /// Waits for application keys `held` and `killed`, then keeps using the
    /// memory node while polling its live-lease count until it reaches 0:
    /// prints `revoked_after_ms=` and `ops=`.
    Watch {
        /// Gives up after this long.
        limit_s: u64,
    },
    /// Holds a lease, says `ready=1`, and reads until the memory node is
    /// gone: prints how long the failing read and a later acquire took.
    DeadServer {
        /// Gives up after this long.
        limit_s: u64,
    },
    /// Writes and reads back a pattern under a lease on every directory of
    /// every memory node: `multi_ok=`.
    Multi,
    /// Rounds of acquire / FAA / pattern write + read-verify / relinquish
    /// on the first memory node, for a bounded time and count, tolerating
    /// errors (for fault tests): see [`FaultLoop`].
    FaultLoop(FaultLoop),
    /// YCSB on a protected hash table on the first memory node, with every
    /// client node of the cluster (`crate::bench::ycsb::run_client`): the
    /// client node of lowest id creates the table and prints the rows
    /// merged over all client nodes, as JSON lines or a table.
    Ycsb {
        /// What to run.
        opts: crate::bench::ycsb::Opts,
        /// JSON lines instead of the table.
        json: bool,
    },
    /// A client that dies in the middle of a resize (the original's
    /// bench_race_rdma_expand_fault_tolerance): creates the protected hash
    /// table ([`kv_fault_params`]) on the first memory node in lease mode,
    /// puts `key-i` = `value-i` for i below `keys` (`kv_filled=`), then
    /// takes the resize lock (term `lock_ms`), splits the subtable of
    /// `key-5` up to `phase` and stops there without unlocking: says
    /// `died lock_ddl_ns=` (the lock's deadline on the memory node's
    /// clock) and idles until killed (at most `idle_s` seconds).
    KvSplitDie {
        /// Keys filled before the split.
        keys: u64,
        /// Term of the resize lock.
        lock_ms: u64,
        /// Where the split stops.
        phase: crate::kv::SplitPhase,
        /// Longest idle time before exiting on its own.
        idle_s: u64,
    },
    /// The survivor of [`Workload::KvSplitDie`]: opens the table once it is
    /// filled, waits for the application keys `died` (the dead node's
    /// lock deadline) and `killed`, then puts `key-5` (into a frozen
    /// subtable the put needs the resize lock; after a published split it
    /// does not) and splits `key-5`'s subtable (which needs the lock, and
    /// finishes a pending split first). Reports, against the lock's
    /// deadline on the memory node's clock, `put_late_ms=` (when the put
    /// came back) and `recovered_late_ms=` (when the split did), and
    /// `started_before_ddl_ms=`, `splits=`; then checks every key
    /// (`kv_checked=`) and that the table still takes puts that split it
    /// (`kv_more=`).
    KvRecover {
        /// Keys the dead node filled.
        keys: u64,
        /// Term of the resize lock.
        lock_ms: u64,
    },
}

/// The hash table of the `kv-split-die` / `kv-recover` workloads: a small
/// table (2 subtables of 4 combined buckets) that splits after a few
/// hundred keys, at buffer offset 4 KiB.
pub fn kv_fault_params(lock_ms: u64) -> crate::kv::KvParams {
    crate::kv::KvParams {
        base: 4096,
        groups: 4,
        initial_depth: 1,
        max_depth: 10,
        lock_ns: lock_ms.max(1) * 1_000_000,
        patience: Duration::from_millis(lock_ms) + Duration::from_secs(20),
        ..crate::kv::KvParams::default()
    }
}

/// What the `fault-loop` workload does. Each round: a write lease on the
/// shared FAA word (offset 0) and `faa_per_round` FAAs of +1 under it, then
/// a write lease on this node's own 256-byte block (offset 1 MiB + 4 KiB x
/// node id), a pattern of that round written and read back, compared
/// byte for byte; each lease relinquished. A failed call ends the round
/// (the round counts as failed) and the loop goes on.
///
/// Prints `loop_started=1 node= epsilon_ns=`, then every `progress_ms` a
/// line `progress rounds= rounds_ok= errors= faa_ok=`, and at the end one
/// line with the totals: `rounds= rounds_ok= calls= errors=` by kind
/// (`err_timeout=` an RPC without reply in time, `err_protection=` a
/// one-sided call that failed at or on its way to the NIC (a data call
/// without completion in time is reported so), `err_expired=`
/// LeaseLocalExpiredErr, `err_refused=` an acquire not granted,
/// `err_lost=` a fabric error (peer gone, connect failed), `err_other=`)
/// and by call (`acquire_err= faa_err= write_err= read_err=
/// relinquish_err=`), `max_call_ms=` (the slowest call, failed or not),
/// `min_call_ms=` (the fastest that succeeded),
/// `faa_ok=` (FAAs that returned Ok: executed exactly once),
/// `faa_uncertain=` (FAAs that returned an error: executed at most once),
/// `mismatches=` (read-backs that differ from what was written) and
/// `rounds_per_s=`. With `peers` > 0 the client nodes then meet (keeper
/// barrier of `peers`) and this node reads the FAA word: `faa_word=` (or
/// `faa_word_error=`). With `watch_live` > 0 each round also asks the
/// directory for its live-lease count; once that count reached
/// `watch_live` (`live_seen=`), the first poll that finds 0 prints
/// `revoked_unix_us=` (wall clock of that poll), `live_last_unix_us=`
/// (the last poll that found leases) and `poll_gap_max_ms=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultLoop {
    /// Stops after this long.
    pub seconds: u64,
    /// Stops after this many rounds.
    pub rounds: u64,
    /// Term of every lease.
    pub term_ms: u64,
    /// FAAs per round.
    pub faa_per_round: u64,
    /// Client nodes that meet at the end before the FAA word is read (0:
    /// no final read).
    pub peers: u64,
    /// Live leases to wait for, then report when they are gone (0: off).
    pub watch_live: u64,
    /// Period of the progress lines.
    pub progress_ms: u64,
    /// Also stop early once standard input says `stop` or ends.
    pub stdin_stop: bool,
}

fn say(line: impl std::fmt::Display) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
    let _ = o.flush();
}

/// Runs a memory node: serves every directory until every node called
/// `finished(key)`.
pub fn serve(cfg: Config, key: u64) -> Result<()> {
    let dirs = cfg.dir_nr;
    let p = Patronus::new(cfg)?;
    p.put(
        &format!("serve/{}", p.get_node_id()),
        dirs.to_string().as_bytes(),
    )?;
    p.keeper_barrier("roles")?;
    say(format_args!(
        "serving node={} dirs={dirs} epsilon_ns={}",
        p.get_node_id(),
        p.epsilon()
    ));
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = (0..dirs)
            .map(|_| {
                let mut d = p.register_server_thread()?;
                Ok(s.spawn(move || d.server_serve(key)))
            })
            .collect::<Result<_>>()?;
        for h in hs {
            h.join()
                .map_err(|_| Error::Invalid("a server thread panicked".into()))??;
        }
        Ok(())
    })?;
    say("done=1");
    Ok(())
}

/// The memory nodes of the cluster (nodes that announced `serve/<id>`).
fn memory_nodes(p: &Patronus, machines: u16) -> Result<Vec<u16>> {
    let mut v = Vec::new();
    for n in 0..machines {
        if p.try_get(&format!("serve/{n}"))?.is_some() {
            v.push(n);
        }
    }
    if v.is_empty() {
        return Err(Error::Invalid(
            "no memory node in the cluster (start one with `patronus serve`)".into(),
        ));
    }
    Ok(v)
}

/// Runs a client node with `workload`, then calls `finished(key)`.
pub fn client(mut cfg: Config, key: u64, workload: Workload) -> Result<()> {
    if let Workload::Ycsb { opts, .. } = &workload {
        // Thread slots for the workers (and one more), calls in flight
        // for waves of puts, and barriers that wait while the other
        // processes load their share.
        if (cfg.client_threads as usize) < opts.threads + 2 {
            return Err(Error::Invalid(format!(
                "ycsb with {} worker threads needs {} client thread slots per node: pass \
                 `--threads {}` before `ycsb` to every node of the cluster (serve too: the \
                 shape must be the same everywhere)",
                opts.threads,
                opts.threads + 2,
                opts.threads + 2
            )));
        }
        if cfg.max_inflight == 0 {
            cfg.max_inflight = 256;
        }
        cfg.keeper_timeout = cfg.keeper_timeout.max(Duration::from_secs(600));
    }
    let machines = cfg.machine_nr;
    let dirs = cfg.dir_nr;
    let p = Patronus::new(cfg)?;
    p.keeper_barrier("roles")?;
    let servers = memory_nodes(&p, machines)?;
    let clients = machines as u64 - servers.len() as u64;
    let s = servers[0];
    match workload {
        Workload::Faa { threads, ops } => {
            std::thread::scope(|sc| -> Result<()> {
                let hs: Vec<_> = (0..threads)
                    .map(|_| {
                        let mut c = p.register_client_thread()?;
                        Ok(sc.spawn(move || -> Result<u64> {
                            let acquire = |c: &mut crate::client::ClientThread| {
                                let l = c.get_lease(true, s, 0, 0, 64, 50_000_000, 0)?;
                                if !l.success() {
                                    return Err(Error::Invalid(format!(
                                        "write lease refused: status {}",
                                        l.ec()
                                    )));
                                }
                                Ok(l)
                            };
                            let mut l = acquire(&mut c)?;
                            let mut expired = 0u64;
                            let mut i = 0;
                            while i < ops {
                                match c.faa(&mut l, 0, 1, rw::WITH_AUTO_EXTEND)? {
                                    (Rc::Ok, _) => i += 1,
                                    // The lease ran out before auto-extend
                                    // could act (a thread or the memory
                                    // node's NIC descheduled past its
                                    // term): the FAA was not executed.
                                    // Take a new lease and do it again.
                                    (Rc::LeaseLocalExpiredErr, _) if expired < 1000 => {
                                        expired += 1;
                                        let _ = c.relinquish(&mut l, 0, 0);
                                        l = acquire(&mut c)?;
                                    }
                                    (rc, _) => {
                                        return Err(Error::Invalid(format!("faa {i}: {rc:?}")))
                                    }
                                }
                            }
                            c.relinquish(&mut l, 0, 0)?;
                            Ok(expired)
                        }))
                    })
                    .collect::<Result<_>>()?;
                let mut expired = 0;
                for h in hs {
                    expired += h
                        .join()
                        .map_err(|_| Error::Invalid("a client thread panicked".into()))??;
                }
                say(format_args!("faa_expired={expired}"));
                Ok(())
            })?;
            p.keeper_barrier_n("faa-done", clients)?;
            let mut c = p.register_client_thread()?;
            let mut l = c.get_lease(false, s, 0, 0, 64, 50_000_000, 0)?;
            let mut b = [0u8; 8];
            let rc = c.read(&mut l, &mut b, 0, 0)?;
            c.relinquish(&mut l, 0, 0)?;
            say(format_args!(
                "faa_total={} rc={rc:?}",
                u64::from_le_bytes(b)
            ));
        }
        Workload::Hold {
            leases,
            term_ms,
            idle_s,
        } => {
            let mut c = p.register_client_thread()?;
            let term_ns = term_ms * 1_000_000;
            // Keeps every held lease alive the Patronus way, by one-sided
            // extension shortly before its deadline: a killed holder's leases
            // then all end within one term of the kill, however long taking
            // them took on a loaded machine. The extensions of a pass are
            // posted, all in flight at once, and each lease is checked
            // against the clock as it is reached: one at a time, a pass over
            // 1 000 leases on a loaded host outlasted half a term (a lease
            // checked against the pass's start ran out before its turn).
            let keep_alive = |c: &mut crate::client::ClientThread,
                              held: &mut Vec<crate::client::Lease>|
             -> Result<()> {
                // Waits for the next completions (within the RPC timeout
                // every call ends) and applies them; returns how many.
                let reap = |c: &mut crate::client::ClientThread,
                            held: &mut Vec<crate::client::Lease>|
                 -> Result<usize> {
                    let got = c.wait(64, Duration::from_secs(5))?;
                    if got.is_empty() {
                        return Err(Error::Invalid(
                            "hold: no extension completed within 5 s".into(),
                        ));
                    }
                    for x in &got {
                        let i = x.user_data as usize;
                        let l = &mut held[i];
                        // A lease that ran out (the thread was descheduled
                        // past its term) is an error, never a silent loss:
                        // `held=` must be true.
                        if x.rc() != Rc::Ok {
                            return Err(Error::Invalid(format!(
                                "hold: extending lease {i} returned {:?} ({} ms before its deadline; epsilon {} us)",
                                x.rc(),
                                (l.ddl - p.now()) / 1_000_000,
                                p.epsilon() / 1000
                            )));
                        }
                        x.apply(l);
                    }
                    Ok(got.len())
                };
                let mut out = 0usize;
                for i in 0..held.len() {
                    if held[i].ddl - p.now() >= (term_ns / 2) as i64 {
                        continue;
                    }
                    while c.post_extend(&mut held[i], term_ns / 2, 0, i as u64)?
                        == crate::client::Post::Retry
                    {
                        out -= reap(c, held)?;
                    }
                    out += 1;
                }
                while out > 0 {
                    out -= reap(c, held)?;
                }
                Ok(())
            };
            let mut held = Vec::new();
            for i in 0..leases as u64 {
                let l = c.get_lease(true, s, 0, 4096 + i * 64, 64, term_ms * 1_000_000, 0)?;
                if !l.success() {
                    return Err(Error::Invalid(format!(
                        "lease {i} refused: status {}",
                        l.ec()
                    )));
                }
                held.push(l);
                // After every grant: on a loaded host one acquisition can
                // take milliseconds, and 32 of them outlasted half a term.
                keep_alive(&mut c, &mut held)?;
            }
            keep_alive(&mut c, &mut held)?;
            p.put("held", leases.to_string().as_bytes())?;
            say(format_args!("held={leases}"));
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(idle_s) {
                keep_alive(&mut c, &mut held)?;
                std::thread::sleep(Duration::from_millis(1));
            }
            return Ok(()); // normally killed before this
        }
        Workload::Watch { limit_s } => {
            let mut c = p.register_client_thread()?;
            p.get("held")?;
            let before = c.admin(s, 0, AdminOp::Stats, 0)?;
            say(format_args!("live_before={before}"));
            p.get("killed")?;
            let t0 = Instant::now();
            let mut ops = 0u64;
            loop {
                // A term far longer than one probe: a loaded machine must
                // not expire it between the grant and the read.
                let mut l = c.get_lease(true, s, 0, 0, 64, 1_000_000_000, 0)?;
                let mut b = [0u8; 64];
                if !l.success() || c.read(&mut l, &mut b, 0, 0)? != Rc::Ok {
                    return Err(Error::Invalid(
                        "the memory node stopped serving the surviving client".into(),
                    ));
                }
                c.relinquish(&mut l, 0, 0)?;
                ops += 1;
                let live = c.admin(s, 0, AdminOp::Stats, 0)?;
                if live == 0 {
                    say(format_args!(
                        "revoked_after_ms={:.1} ops={ops} epsilon_ns={}",
                        t0.elapsed().as_secs_f64() * 1e3,
                        p.epsilon()
                    ));
                    break;
                }
                if t0.elapsed() > Duration::from_secs(limit_s) {
                    return Err(Error::Timeout(format!(
                        "{live} leases still live {limit_s} s after the holder was killed"
                    )));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Workload::DeadServer { limit_s } => {
            let mut c = p.register_client_thread()?;
            let mut l = c.get_lease(true, s, 0, 0, 64, 0, acquire::NO_GC)?;
            let mut b = [0u8; 64];
            if c.read(&mut l, &mut b, 0, 0)? != Rc::Ok {
                return Err(Error::Invalid("first read failed".into()));
            }
            say("ready=1");
            let t0 = Instant::now();
            let data_ms = loop {
                let t = Instant::now();
                let r = c.read(&mut l, &mut b, 0, 0);
                if !matches!(r, Ok(Rc::Ok)) {
                    say(format_args!("data_error={r:?}"));
                    break t.elapsed().as_secs_f64() * 1e3;
                }
                if t0.elapsed() > Duration::from_secs(limit_s) {
                    return Err(Error::Timeout("the memory node never went away".into()));
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            let t = Instant::now();
            let r = c.get_lease(true, s, 0, 0, 64, 10_000_000, 0);
            let rpc_ms = t.elapsed().as_secs_f64() * 1e3;
            say(format_args!(
                "data_error_ms={data_ms:.1} rpc_error_ms={rpc_ms:.1} rpc_failed={}",
                r.map(|l| !l.success()).unwrap_or(true)
            ));
            return Ok(()); // no finished(): the memory node is gone
        }
        Workload::Multi => {
            let mut c = p.register_client_thread()?;
            let mut n = 0;
            for &node in &servers {
                for d in 0..dirs {
                    let off = 8192 + d as u64 * 4096;
                    let mut l = c.get_lease(true, node, d, off, 256, 50_000_000, 0)?;
                    if !l.success() {
                        return Err(Error::Invalid(format!(
                            "lease on node {node} dir {d} refused: status {}",
                            l.ec()
                        )));
                    }
                    let pat: Vec<u8> = (0..256)
                        .map(|i| (i as u8) ^ (node as u8 * 31 + d as u8))
                        .collect();
                    if c.write(&mut l, &pat, 0, 0)? != Rc::Ok {
                        return Err(Error::Invalid(format!("write on node {node} failed")));
                    }
                    let mut back = vec![0u8; 256];
                    if c.read(&mut l, &mut back, 0, 0)? != Rc::Ok || back != pat {
                        return Err(Error::Invalid(format!(
                            "read back on node {node} dir {d} differs"
                        )));
                    }
                    c.relinquish(&mut l, 0, 0)?;
                    n += 1;
                }
            }
            say(format_args!("multi_ok={n} memory_nodes={}", servers.len()));
        }
        Workload::FaultLoop(f) => fault_loop(&p, s, &f)?,
        Workload::KvSplitDie {
            keys,
            lock_ms,
            phase,
            idle_s,
        } => {
            use crate::kv::{KvTable, Protection};
            let mut c = p.register_client_thread()?;
            let mut t = KvTable::create(&mut c, s, 0, kv_fault_params(lock_ms), Protection::Lease)?;
            for i in 0..keys {
                t.put(
                    &mut c,
                    format!("key-{i}").as_bytes(),
                    format!("value-{i}").as_bytes(),
                )?;
            }
            p.put("kv_filled", b"1")?;
            say(format_args!("kv_filled={keys}"));
            let ddl = t.split_and_die(&mut c, b"key-5", phase)?;
            p.put("died", ddl.to_string().as_bytes())?;
            say(format_args!("died lock_ddl_ns={ddl}"));
            std::thread::sleep(Duration::from_secs(idle_s));
            return Ok(()); // normally killed before this
        }
        Workload::KvRecover { keys, lock_ms } => {
            use crate::kv::{Access, KvTable, Protection};
            let mut c = p.register_client_thread()?;
            p.get("kv_filled")?;
            let mut t = KvTable::open(
                &mut c,
                s,
                0,
                kv_fault_params(lock_ms),
                Protection::Lease,
                Access::ReadWrite,
            )?;
            let died = p.get("died")?;
            let ddl: i64 = std::str::from_utf8(&died)
                .ok()
                .and_then(|d| d.trim().parse().ok())
                .ok_or_else(|| Error::Invalid(format!("bad died value {died:?}")))?;
            p.get("killed")?;
            let started = p.now();
            // Into a frozen subtable the put waits for the lock; after a
            // published split it goes to the new subtables at once.
            t.put(&mut c, b"key-5", b"after the crash")?;
            let put_at = p.now();
            // A split of key-5's subtable takes the lock in either case
            // (finishing the dead node's pending split first, if any).
            t.split_subtable_of(&mut c, b"key-5")?;
            let at = p.now();
            say(format_args!(
                "put_late_ms={:.3} recovered_late_ms={:.3} started_before_ddl_ms={:.3} splits={} \
                 epsilon_ns={}",
                (put_at - ddl) as f64 / 1e6,
                (at - ddl) as f64 / 1e6,
                (ddl - started) as f64 / 1e6,
                t.stats().splits,
                p.epsilon()
            ));
            for i in 0..keys {
                let k = format!("key-{i}");
                let want = if i == 5 {
                    b"after the crash".to_vec()
                } else {
                    format!("value-{i}").into_bytes()
                };
                let got = t.get(&mut c, k.as_bytes())?;
                if got.as_deref() != Some(&want[..]) {
                    return Err(Error::Invalid(format!(
                        "{k}: {got:?} after the recovery, wanted {want:?}"
                    )));
                }
            }
            say(format_args!("kv_checked={keys}"));
            let splits = t.stats().splits;
            for i in 0..200u64 {
                t.put(&mut c, format!("more-{i}").as_bytes(), b"x")?;
            }
            for i in 0..200u64 {
                if t.get(&mut c, format!("more-{i}").as_bytes())?.is_none() {
                    return Err(Error::Invalid(format!("more-{i} lost")));
                }
            }
            say(format_args!(
                "kv_more=200 splits_after={}",
                t.stats().splits - splits
            ));
            t.relinquish(&mut c)?;
        }
        Workload::Ycsb { opts, json } => {
            let me = p.get_node_id();
            let others: Vec<u16> = (0..machines).filter(|n| !servers.contains(n)).collect();
            let rank = others.iter().position(|&n| n == me).ok_or_else(|| {
                Error::Invalid(format!("ycsb: node {me} is not among the client nodes"))
            })?;
            let recs = crate::bench::ycsb::run_client(&p, s, rank, others.len(), &opts)?;
            if !recs.is_empty() {
                let mut o = std::io::stdout().lock();
                if json {
                    crate::bench::print_json(&mut o, &recs)
                } else {
                    crate::bench::ycsb::print_table(&mut o, &recs)
                }
                .map_err(|e| Error::io("writing the results", e))?;
            }
        }
    }
    p.finished(key)?;
    say(format_args!("done=1 epsilon_ns={}", p.epsilon()));
    Ok(())
}

/// Counts of the `fault-loop` workload.
#[derive(Default)]
struct LoopStats {
    /// This node's id (in messages).
    me: u16,
    rounds: u64,
    rounds_ok: u64,
    calls: u64,
    errors: u64,
    err_timeout: u64,
    err_protection: u64,
    err_expired: u64,
    err_refused: u64,
    err_lost: u64,
    err_other: u64,
    by_call: [u64; 5],
    max_call: Duration,
    min_call: Option<Duration>,
    faa_ok: u64,
    faa_uncertain: u64,
    mismatches: u64,
    /// The first few distinct error texts (to stderr).
    seen: Vec<String>,
}

/// Calls of a fault-loop round, indexing `LoopStats::by_call`.
#[derive(Clone, Copy)]
enum Call {
    Acquire = 0,
    Faa = 1,
    Write = 2,
    Read = 3,
    Relinquish = 4,
}

/// How a call ended.
enum Outcome {
    Ok,
    Refused(u8),
    Rc(Rc),
    Err(Error),
}

impl LoopStats {
    /// Counts one call of `what` that took `took`; true when it succeeded.
    fn note(&mut self, what: Call, took: Duration, o: Outcome) -> bool {
        self.calls += 1;
        self.max_call = self.max_call.max(took);
        let why = match o {
            Outcome::Ok | Outcome::Rc(Rc::Ok) => {
                self.min_call = Some(self.min_call.map_or(took, |m| m.min(took)));
                return true;
            }
            Outcome::Refused(st) => {
                self.err_refused += 1;
                format!("refused with status {st}")
            }
            Outcome::Rc(rc) => {
                match rc {
                    Rc::RdmaProtectionErr => self.err_protection += 1,
                    Rc::LeaseLocalExpiredErr => self.err_expired += 1,
                    _ => self.err_other += 1,
                }
                format!("{rc:?}")
            }
            Outcome::Err(e) => {
                match e {
                    Error::Timeout(_) => self.err_timeout += 1,
                    Error::Fabric(_) => self.err_lost += 1,
                    _ => self.err_other += 1,
                }
                e.to_string()
            }
        };
        self.errors += 1;
        self.by_call[what as usize] += 1;
        let names = ["acquire", "faa", "write", "read", "relinquish"];
        let line = format!("{}: {why}", names[what as usize]);
        if self.seen.len() < 8 && !self.seen.contains(&line) {
            eprintln!(
                "fault-loop node {}: {line} ({:.1} ms, round {})",
                self.me,
                took.as_secs_f64() * 1e3,
                self.rounds
            );
            self.seen.push(line);
        }
        false
    }
}

fn rc_outcome(r: Result<Rc>) -> Outcome {
    match r {
        Ok(rc) => Outcome::Rc(rc),
        Err(e) => Outcome::Err(e),
    }
}

fn unix_us() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// One lease of the fault loop: acquired, used by `body`, relinquished
/// (also after a failed body). False when any call failed.
fn with_lease(
    c: &mut crate::client::ClientThread,
    st: &mut LoopStats,
    (s, off, size, term_ns): (u16, u64, u64, u64),
    body: impl FnOnce(
        &mut crate::client::ClientThread,
        &mut LoopStats,
        &mut crate::client::Lease,
    ) -> bool,
) -> bool {
    let t = Instant::now();
    let r = c.get_lease(true, s, 0, off, size, term_ns, 0);
    let took = t.elapsed();
    let mut l = match r {
        Ok(l) if l.success() => {
            st.note(Call::Acquire, took, Outcome::Ok);
            l
        }
        Ok(l) => return st.note(Call::Acquire, took, Outcome::Refused(l.ec())),
        Err(e) => return st.note(Call::Acquire, took, Outcome::Err(e)),
    };
    let ok = body(c, st, &mut l);
    let t = Instant::now();
    let r = c.relinquish(&mut l, 0, 0);
    // A relinquish that failed leaves the lease to the memory node's GC,
    // which revokes it at the end of its term.
    st.note(Call::Relinquish, t.elapsed(), rc_outcome(r)) && ok
}

/// The `fault-loop` workload (see [`FaultLoop`]).
fn fault_loop(p: &Patronus, s: u16, f: &FaultLoop) -> Result<()> {
    let me = p.get_node_id();
    let mut c = p.register_client_thread()?;
    let term_ns = f.term_ms.max(1) * 1_000_000;
    let block = (1u64 << 20) + 4096 * me as u64;
    say(format_args!(
        "loop_started=1 node={me} epsilon_ns={}",
        p.epsilon()
    ));
    let mut st = LoopStats {
        me,
        ..Default::default()
    };
    let t0 = Instant::now();
    let limit = Duration::from_secs(f.seconds);
    let period = Duration::from_millis(f.progress_ms.max(1));
    let mut next_progress = period;
    // Live-lease watch: (seen the threshold, last poll with leases, last poll).
    let mut watch: (bool, u128, Option<Instant>, Duration) = (false, 0, None, Duration::ZERO);
    let mut watch_done = f.watch_live == 0;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if f.stdin_stop {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while matches!(std::io::stdin().read_line(&mut line), Ok(n) if n > 0)
                && line.trim() != "stop"
            {
                line.clear();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    while st.rounds < f.rounds
        && t0.elapsed() < limit
        && !stop.load(std::sync::atomic::Ordering::Relaxed)
    {
        let round = st.rounds;
        st.rounds += 1;
        let faa_n = f.faa_per_round;
        let ok_faa = with_lease(&mut c, &mut st, (s, 0, 64, term_ns), |c, st, l| {
            for _ in 0..faa_n {
                let t = Instant::now();
                let r = c.faa(l, 0, 1, 0).map(|(rc, _)| rc);
                let ok = st.note(Call::Faa, t.elapsed(), rc_outcome(r));
                if ok {
                    st.faa_ok += 1;
                } else {
                    st.faa_uncertain += 1;
                    return false;
                }
            }
            true
        });
        let pat: Vec<u8> = (0..256u64)
            .map(|i| (round.wrapping_mul(131) ^ (i * 7) ^ (me as u64 * 13) ^ (round >> 8)) as u8)
            .collect();
        let ok_data = ok_faa
            && with_lease(&mut c, &mut st, (s, block, 256, term_ns), |c, st, l| {
                let t = Instant::now();
                let r = c.write(l, &pat, 0, 0);
                if !st.note(Call::Write, t.elapsed(), rc_outcome(r)) {
                    return false;
                }
                let mut back = vec![0u8; 256];
                let t = Instant::now();
                let r = c.read(l, &mut back, 0, 0);
                if !st.note(Call::Read, t.elapsed(), rc_outcome(r)) {
                    return false;
                }
                if back != pat {
                    st.mismatches += 1;
                    eprintln!(
                        "fault-loop node {me}: round {round}: read-back differs from the pattern written"
                    );
                    return false;
                }
                true
            });
        if ok_data {
            st.rounds_ok += 1;
        }
        if !watch_done {
            let t = Instant::now();
            let r = c.admin(s, 0, AdminOp::Stats, 0);
            let at = unix_us();
            if let Some(prev) = watch.2 {
                watch.3 = watch.3.max(t.duration_since(prev));
            }
            watch.2 = Some(t);
            match r {
                Ok(live) if live as u64 >= f.watch_live && !watch.0 => {
                    watch.0 = true;
                    watch.1 = at;
                    say(format_args!("live_seen={live}"));
                }
                Ok(live) if live > 0 && watch.0 => watch.1 = at,
                Ok(0) if watch.0 => {
                    watch_done = true;
                    say(format_args!(
                        "revoked_unix_us={at} live_last_unix_us={} poll_gap_max_ms={:.1}",
                        watch.1,
                        watch.3.as_secs_f64() * 1e3
                    ));
                }
                Ok(_) => {}
                Err(e) => eprintln!("fault-loop node {me}: live-lease poll failed: {e}"),
            }
        }
        if t0.elapsed() >= next_progress {
            next_progress = t0.elapsed() + period;
            say(format_args!(
                "progress rounds={} rounds_ok={} errors={} faa_ok={} faa_uncertain={} \
                 mismatches={} max_call_ms={:.1}",
                st.rounds,
                st.rounds_ok,
                st.errors,
                st.faa_ok,
                st.faa_uncertain,
                st.mismatches,
                st.max_call.as_secs_f64() * 1e3
            ));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let b = &st.by_call;
    say(format_args!(
        "rounds={} rounds_ok={} calls={} errors={} err_timeout={} err_protection={} \
         err_expired={} err_refused={} err_lost={} err_other={} acquire_err={} faa_err={} \
         write_err={} read_err={} relinquish_err={} max_call_ms={:.1} min_call_ms={:.3} faa_ok={} \
         faa_uncertain={} mismatches={} rounds_per_s={:.1} watched={}",
        st.rounds,
        st.rounds_ok,
        st.calls,
        st.errors,
        st.err_timeout,
        st.err_protection,
        st.err_expired,
        st.err_refused,
        st.err_lost,
        st.err_other,
        b[0],
        b[1],
        b[2],
        b[3],
        b[4],
        st.max_call.as_secs_f64() * 1e3,
        st.min_call.unwrap_or_default().as_secs_f64() * 1e3,
        st.faa_ok,
        st.faa_uncertain,
        st.mismatches,
        st.rounds_ok as f64 / secs.max(1e-9),
        u8::from(f.watch_live == 0 || watch_done)
    ));
    drop(c);
    if f.peers > 0 {
        p.keeper_barrier_n("fault-loop-done", f.peers)?;
        let mut c = p.register_client_thread()?;
        let mut last = String::new();
        let mut word = None;
        for _attempt in 0..3 {
            match c.get_lease(false, s, 0, 0, 64, 1_000_000_000, 0) {
                Ok(mut l) if l.success() => {
                    let mut b = [0u8; 8];
                    let r = c.read(&mut l, &mut b, 0, 0);
                    let _ = c.relinquish(&mut l, 0, 0);
                    match r {
                        Ok(Rc::Ok) => {
                            word = Some(u64::from_le_bytes(b));
                            break;
                        }
                        r => last = format!("read {r:?}"),
                    }
                }
                Ok(l) => last = format!("read lease refused with status {}", l.ec()),
                Err(e) => last = e.to_string(),
            }
        }
        match word {
            Some(w) => say(format_args!("faa_word={w}")),
            None => say(format_args!("faa_word_error={:?}", last.replace(' ', "_"))),
        }
    }
    Ok(())
}
