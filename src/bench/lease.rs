//! `patronus bench lease`: the original's bench_patronus_basic,
//! bench_patronus_concurrent and bench_patronus_extend, the recovery latency
//! after a protection fault, and the protection overhead, each against a
//! baseline measured in the same run on an in-process two-node cluster
//! (memory node on its own server thread, client on the calling thread).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{run_latency, LeaseRecord, Progress};
use crate::client::ClientThread;
use crate::lease::flags::{acquire, rw};
use crate::lease::msg::AdminOp;
use crate::lease::Rc;
use crate::node::Config;
use crate::{Error, Result};

/// What to run.
#[derive(Clone, Debug)]
pub struct Opts {
    /// "shm" or "tcp".
    pub fabric: String,
    /// Operations per latency scenario.
    pub ops: u64,
    /// Time budget per scenario.
    pub budget: Duration,
    /// Where to show progress: one step per group ([`GROUPS`] per run; the
    /// caller adds them to the total).
    pub progress: Progress,
}

/// Scenario groups of one run.
pub const GROUPS: u64 = 5;

static RUN: AtomicU64 = AtomicU64::new(0);

fn rec(group: &str, fabric: &str, variant: &str, size: u64, lat: &super::Lat) -> LeaseRecord {
    LeaseRecord {
        group: group.into(),
        fabric: fabric.into(),
        variant: variant.into(),
        size,
        p50_ns: lat.p50(),
        p99_ns: lat.p99(),
        mops: Some(lat.mops()),
        baseline: false,
        p50_vs_baseline: None,
        mops_vs_baseline: None,
        ops: lat.ops,
    }
}

fn ok(rc: Rc, what: &str) -> Result<()> {
    if rc == Rc::Ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!("bench: {what} returned {rc:?}")))
    }
}

fn granted(l: &crate::client::Lease, what: &str) -> Result<()> {
    if l.success() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "bench: {what} refused with status {}",
            l.ec()
        )))
    }
}

/// Runs every scenario; records are grouped, and within a group the record
/// marked `baseline` is what the others' ratios refer to.
pub fn run(o: &Opts) -> Result<Vec<LeaseRecord>> {
    let cluster = format!(
        "bench-lease-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    );
    let cfg = Config {
        machine_nr: 2,
        dir_nr: 1,
        client_threads: 2,
        cluster,
        fabric: o.fabric.clone(),
        keeper: None,
        leases_per_dir: 4096,
        // The unprotected baseline reads through the universal rkey.
        allow_universal_rkey: true,
        ..Config::default()
    };
    let nodes = super::start_nodes(&cfg)?;
    let (server, client) = (&nodes[0], &nodes[1]);
    super::with_served_dir(server, client, || {
        let mut c = client.register_client_thread()?;
        let mut out = Vec::new();
        type Group = fn(&mut ClientThread, &Opts, &mut Vec<LeaseRecord>) -> Result<()>;
        let groups: [(&str, Group); GROUPS as usize] = [
            ("basic", basic),
            ("cycle16", concurrent),
            ("extend", extend),
            ("recovery", recovery),
            ("overhead", overhead),
        ];
        for (name, g) in groups {
            o.progress.running(format!("{} {name}", o.fabric));
            g(&mut c, o, &mut out)?;
            o.progress.step_done();
        }
        Ok(out)
    })
}

/// Fills the ratio of every record of `group` against its baseline.
fn ratios(out: &mut [LeaseRecord], group: &str, by_rate: bool) {
    let Some(b) = out.iter().find(|r| r.group == group && r.baseline).cloned() else {
        return;
    };
    for r in out.iter_mut().filter(|r| r.group == group) {
        if by_rate {
            if let (Some(m), Some(bm)) = (r.mops, b.mops) {
                r.mops_vs_baseline = Some(m / bm.max(1e-12));
            }
        } else {
            r.p50_vs_baseline = Some(r.p50_ns as f64 / b.p50_ns.max(1) as f64);
        }
    }
}

/// bench_patronus_basic: acquire + relinquish, from "RPC only" to the full
/// lease (two binds, two unbinds) with a GC task.
fn basic(c: &mut ClientThread, o: &Opts, out: &mut Vec<LeaseRecord>) -> Result<()> {
    let f = &o.fabric;
    let cases: [(&str, u64, u64, bool); 5] = [
        (
            "rpc-only",
            acquire::DEBUG_SERVER_DO_NOTHING | acquire::NO_GC,
            0,
            true,
        ),
        ("no-bind", acquire::NO_BIND_ANY | acquire::NO_GC, 0, false),
        ("1-bind", acquire::NO_BIND_PR | acquire::NO_GC, 0, false),
        ("2-bind", acquire::NO_GC, 0, false),
        ("2-bind+gc", 0, 1_000_000_000, false),
    ];
    for (name, flag, ns, base) in cases {
        let mut i = 0u64;
        let lat = run_latency(o.ops, o.budget, || {
            i += 1;
            let mut l = c.get_lease(true, 0, 0, (i % 1024) * 64, 64, ns, flag)?;
            granted(&l, name)?;
            ok(c.relinquish(&mut l, 0, 0)?, "relinquish")
        })?;
        let mut r = rec("basic", f, name, 64, &lat);
        r.baseline = base;
        out.push(r);
    }
    ratios(out, "basic", false);
    Ok(())
}

/// bench_patronus_concurrent: acquire, 16 reads of 64 B, relinquish, with
/// each protection mechanism; unprotected reads are the baseline.
fn concurrent(c: &mut ClientThread, o: &Opts, out: &mut Vec<LeaseRecord>) -> Result<()> {
    let f = &o.fabric;
    let mut b = [0u8; 64];
    let mut i = 0u64;
    let ops = o.ops / 4;
    // Unprotected: the directory's whole-region key, no lease at all.
    let mut any = c.get_lease(true, 0, 0, 0, 64, 0, acquire::NO_GC | acquire::NO_RPC)?;
    let lat = run_latency(ops, o.budget, || {
        for _ in 0..16 {
            ok(c.read(&mut any, &mut b, 0, rw::USE_UNIVERSAL_RKEY)?, "read")?;
        }
        Ok(())
    })?;
    let mut r = rec("cycle16", f, "unprotected", 64, &lat);
    r.baseline = true;
    out.push(r);
    // Patronus: a window lease.
    let lat = run_latency(ops, o.budget, || {
        i += 1;
        let mut l = c.get_lease(false, 0, 0, (i % 1024) * 64, 64, 0, acquire::NO_GC)?;
        granted(&l, "window lease")?;
        for _ in 0..16 {
            ok(c.read(&mut l, &mut b, 0, 0)?, "read")?;
        }
        ok(c.relinquish(&mut l, 0, 0)?, "relinquish")
    })?;
    out.push(rec("cycle16", f, "mw-lease", 64, &lat));
    // Two-sided: the directory copies every read (lease without windows).
    let lat = run_latency(ops, o.budget, || {
        i += 1;
        let mut l = c.get_lease(
            false,
            0,
            0,
            (i % 1024) * 64,
            64,
            0,
            acquire::NO_GC | acquire::NO_BIND_ANY,
        )?;
        for _ in 0..16 {
            ok(c.read(&mut l, &mut b, 0, rw::USE_TWO_SIDED)?, "rpc read")?;
        }
        ok(c.relinquish(&mut l, 0, 0)?, "relinquish")
    })?;
    out.push(rec("cycle16", f, "two-sided", 64, &lat));
    // MR re-registration per lease.
    let lat = run_latency(ops, o.budget, || {
        i += 1;
        let mut l = c.get_lease(
            false,
            0,
            0,
            (i % 1024) * 64,
            64,
            0,
            acquire::NO_GC | acquire::USE_MR | acquire::NO_BIND_PR,
        )?;
        granted(&l, "MR lease")?;
        for _ in 0..16 {
            ok(c.read(&mut l, &mut b, 0, 0)?, "read")?;
        }
        ok(c.relinquish(&mut l, 0, 0)?, "relinquish")
    })?;
    out.push(rec("cycle16", f, "mr-rereg", 64, &lat));
    // QP access flags flipped by the directory around the reads.
    let lat = run_latency(ops, o.budget, || {
        c.admin(0, 0, AdminOp::QpToRw, 0)?;
        for _ in 0..16 {
            ok(c.read(&mut any, &mut b, 0, rw::USE_UNIVERSAL_RKEY)?, "read")?;
        }
        c.admin(0, 0, AdminOp::QpToRo, 0)?;
        Ok(())
    })?;
    c.admin(0, 0, AdminOp::QpToRw, 0)?;
    out.push(rec("cycle16", f, "qp-flag", 64, &lat));
    ratios(out, "cycle16", false);
    Ok(())
}

/// bench_patronus_extend: one-sided vs RPC extension vs giving the lease
/// back and taking a new one.
fn extend(c: &mut ClientThread, o: &Opts, out: &mut Vec<LeaseRecord>) -> Result<()> {
    let f = &o.fabric;
    let ms = 1_000_000;
    let mut i = 0u64;
    let lat = run_latency(o.ops, o.budget, || {
        i += 1;
        let mut l = c.get_lease(false, 0, 0, (i % 1024) * 64, 64, 100 * ms, 0)?;
        granted(&l, "lease")?;
        let r = c.relinquish(&mut l, 0, 0)?;
        ok(r, "relinquish")
    })?;
    let mut r = rec("extend", f, "re-acquire", 64, &lat);
    r.baseline = true;
    out.push(r);
    for (name, rpc) in [("one-sided", false), ("rpc", true)] {
        let mut l = c.get_lease(false, 0, 0, 0, 64, 100 * ms, 0)?;
        granted(&l, "lease")?;
        let mut n = 0u64;
        let lat = run_latency(o.ops, o.budget, || {
            n += 1;
            // Re-take the lease before the extension cap is reached.
            if n % 4096 == 0 {
                c.relinquish(&mut l, 0, 0)?;
                l = c.get_lease(false, 0, 0, 0, 64, 100 * ms, 0)?;
            }
            let rc = if rpc {
                c.rpc_extend(&mut l, 100 * ms, 0)?
            } else {
                c.extend(&mut l, 100 * ms, 0)?
            };
            ok(rc, name)
        })?;
        c.relinquish(&mut l, 0, 0)?;
        out.push(rec("extend", f, name, 64, &lat));
    }
    ratios(out, "extend", false);
    Ok(())
}

/// Recovery: a read outside the lease (the NIC refuses it, the QP goes to
/// error, the client resets and reconnects the same QP) and the next read;
/// a plain read is the baseline.
fn recovery(c: &mut ClientThread, o: &Opts, out: &mut Vec<LeaseRecord>) -> Result<()> {
    let f = &o.fabric;
    let mut l = c.get_lease(true, 0, 0, 0, 64, 0, acquire::NO_GC)?;
    granted(&l, "lease")?;
    let mut b = [0u8; 64];
    let ops = (o.ops / 4).max(100);
    let lat = run_latency(ops, o.budget, || ok(c.read(&mut l, &mut b, 0, 0)?, "read"))?;
    let mut r = rec("recovery", f, "read", 64, &lat);
    r.baseline = true;
    out.push(r);
    let lat = run_latency(ops, o.budget, || {
        let rc = c.read(&mut l, &mut b, 4096, 0)?;
        if rc != Rc::RdmaProtectionErr {
            return Err(Error::Invalid(format!(
                "bench: out-of-lease read returned {rc:?}"
            )));
        }
        Ok(())
    })?;
    out.push(rec("recovery", f, "fault+recover", 64, &lat));
    let mut next = Vec::new();
    for _ in 0..ops.min(2000) {
        c.read(&mut l, &mut b, 4096, 0)?;
        let t = std::time::Instant::now();
        ok(c.read(&mut l, &mut b, 0, 0)?, "read after recovery")?;
        next.push(t.elapsed().as_nanos() as u64);
    }
    // Explicit bounds: an auto-sized histogram saturated these samples at
    // its initial ceiling (2 ns) on the tcp link.
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| Error::Invalid(format!("histogram: {e}")))?;
    for v in &next {
        h.saturating_record(*v);
    }
    out.push(LeaseRecord {
        group: "recovery".into(),
        fabric: f.clone(),
        variant: "next-read".into(),
        size: 64,
        p50_ns: h.value_at_quantile(0.5),
        p99_ns: h.value_at_quantile(0.99),
        mops: None,
        baseline: false,
        p50_vs_baseline: None,
        mops_vs_baseline: None,
        ops: next.len() as u64,
    });
    c.relinquish(&mut l, 0, 0)?;
    ratios(out, "recovery", false);
    Ok(())
}

/// Protection overhead: 64 B READ rate under a long-held lease divided by
/// the unprotected READ rate (whole-region key) on the same QP, in
/// interleaved rounds.
fn overhead(c: &mut ClientThread, o: &Opts, out: &mut Vec<LeaseRecord>) -> Result<()> {
    let f = &o.fabric;
    let mut l = c.get_lease(false, 0, 0, 0, 64, 10_000_000_000, 0)?;
    granted(&l, "lease")?;
    let mut b = [0u8; 64];
    let rounds = 7;
    let per = (o.ops / 2).max(1000);
    let budget = o.budget / (2 * rounds as u32);
    let (mut prot, mut unprot) = (Vec::new(), Vec::new());
    let (mut lp, mut lu) = (None, None);
    for _ in 0..rounds {
        let a = run_latency(per, budget, || ok(c.read(&mut l, &mut b, 0, 0)?, "read"))?;
        let u = run_latency(per, budget, || {
            ok(
                c.read(
                    &mut l,
                    &mut b,
                    0,
                    rw::USE_UNIVERSAL_RKEY | rw::NO_LOCAL_EXPIRE_CHECK,
                )?,
                "read",
            )
        })?;
        prot.push(a.mops());
        unprot.push(u.mops());
        lp = Some(a);
        lu = Some(u);
    }
    c.relinquish(&mut l, 0, 0)?;
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (mp, mu) = (med(&mut prot), med(&mut unprot));
    let (Some(lp), Some(lu)) = (lp, lu) else {
        return Ok(());
    };
    let mut r = rec("overhead", f, "unprotected", 64, &lu);
    r.mops = Some(mu);
    r.baseline = true;
    out.push(r);
    let mut r = rec("overhead", f, "leased", 64, &lp);
    r.mops = Some(mp);
    out.push(r);
    ratios(out, "overhead", true);
    Ok(())
}

/// Prints the records as a table with the ratio to each group's baseline.
pub fn print_table(out: &mut dyn Write, recs: &[LeaseRecord]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<10} {:<4} {:<14} {:>9} {:>9} {:>8} {:>16}",
        "group", "fab", "variant", "p50_ns", "p99_ns", "Mops", "vs baseline"
    )?;
    for r in recs {
        let vs = if r.baseline {
            "baseline".to_string()
        } else {
            match (r.p50_vs_baseline, r.mops_vs_baseline) {
                (_, Some(x)) => format!("{x:.3}x rate"),
                (Some(x), _) => format!("{x:.2}x p50"),
                _ => "-".into(),
            }
        };
        let mops = r
            .mops
            .map_or_else(|| "-".to_string(), |m| format!("{m:.3}"));
        writeln!(
            out,
            "{:<10} {:<4} {:<14} {:>9} {:>9} {:>8} {:>16}",
            r.group, r.fabric, r.variant, r.p50_ns, r.p99_ns, mops, vs
        )?;
    }
    Ok(())
}

/// Per-memory-node acquire rate: `threads` client threads of one client
/// node, each in an acquire (2 binds, no GC) + relinquish loop for
/// `budget` (started together), against one directory of the memory node.
/// One record per thread count: `mops` is the node's cycle rate (all
/// threads), `p50_ns`/`p99_ns` one cycle's latency. The directory's pass
/// statistics go to stderr.
pub fn node_rate(fabric: &str, threads: u16, budget: Duration) -> Result<LeaseRecord> {
    let cfg = Config {
        machine_nr: 2,
        dir_nr: 1,
        client_threads: threads.max(1),
        cluster: format!(
            "bench-node-rate-{}-{}",
            std::process::id(),
            RUN.fetch_add(1, Ordering::Relaxed)
        ),
        fabric: fabric.into(),
        keeper: None,
        leases_per_dir: 4096,
        ..Config::default()
    };
    let nodes = super::start_nodes(&cfg)?;
    let (server, client) = (&nodes[0], &nodes[1]);
    let mut dir = server.register_server_thread()?;
    let start = std::sync::Barrier::new(threads as usize);
    std::thread::scope(|s| {
        let h = s.spawn(move || dir.server_serve(0).map(|_| dir.stats()));
        let r = (|| -> Result<super::Lat> {
            let ws: Vec<_> = (0..threads as u64)
                .map(|t| {
                    let start = &start;
                    s.spawn(move || -> Result<super::Lat> {
                        let mut c = client.register_client_thread();
                        start.wait();
                        let c = c.as_mut().map_err(|e| Error::Invalid(e.to_string()))?;
                        let mut i = 0u64;
                        run_latency(u64::MAX, budget, || {
                            i += 1;
                            let key = (t * 1024 + i % 1024) * 64;
                            let mut l = c.get_lease(true, 0, 0, key, 64, 0, acquire::NO_GC)?;
                            granted(&l, "acquire")?;
                            ok(c.relinquish(&mut l, 0, 0)?, "relinquish")
                        })
                    })
                })
                .collect();
            let mut all = super::Lat::new()?;
            let mut wall = Duration::ZERO;
            for w in ws {
                let l = w
                    .join()
                    .map_err(|_| Error::Invalid("client thread panicked".into()))??;
                wall = wall.max(l.elapsed);
                all.merge(&l)?;
            }
            all.elapsed = wall;
            Ok(all)
        })();
        let _ = server.finished(0);
        let _ = client.finished(0);
        let served = h
            .join()
            .map_err(|_| Error::Invalid("server thread panicked".into()))?;
        let st = served?;
        eprintln!(
            "node-rate {fabric} {threads} threads: {} passes, {:.2} requests/pass (max {}), \
             {} chains, {:.2} window operations/chain, most chains in one wait {}, \
             directory busy {:.0} ns per request",
            st.passes,
            st.requests as f64 / st.passes.max(1) as f64,
            st.max_requests_per_pass,
            st.chains,
            (st.binds + st.unbinds) as f64 / st.chains.max(1) as f64,
            st.max_pass_chains,
            st.busy_ns as f64 / st.requests.max(1) as f64,
        );
        let all = r?;
        Ok(rec(
            "node-rate",
            fabric,
            &format!("{threads}-threads"),
            64,
            &all,
        ))
    })
}
