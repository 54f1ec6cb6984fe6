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
pub fn client(cfg: Config, key: u64, workload: Workload) -> Result<()> {
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
                        Ok(sc.spawn(move || -> Result<()> {
                            let mut l = c.get_lease(true, s, 0, 0, 64, 50_000_000, 0)?;
                            if !l.success() {
                                return Err(Error::Invalid(format!(
                                    "write lease refused: status {}",
                                    l.ec()
                                )));
                            }
                            for i in 0..ops {
                                let (rc, _) = c.faa(&mut l, 0, 1, rw::WITH_AUTO_EXTEND)?;
                                if rc != Rc::Ok {
                                    return Err(Error::Invalid(format!("faa {i}: {rc:?}")));
                                }
                            }
                            c.relinquish(&mut l, 0, 0)?;
                            Ok(())
                        }))
                    })
                    .collect::<Result<_>>()?;
                for h in hs {
                    h.join()
                        .map_err(|_| Error::Invalid("a client thread panicked".into()))??;
                }
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
            // them took on a loaded machine.
            let keep_alive = |c: &mut crate::client::ClientThread,
                              held: &mut Vec<crate::client::Lease>|
             -> Result<()> {
                let now = p.now();
                for l in held.iter_mut() {
                    if l.ddl - now < (term_ns / 2) as i64 {
                        c.extend(l, term_ns / 2, 0)?;
                    }
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
                if i % 32 == 31 {
                    keep_alive(&mut c, &mut held)?;
                }
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
    }
    p.finished(key)?;
    say("done=1");
    Ok(())
}
