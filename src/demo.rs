//! `patronus demo`: a readable walk through protected remote memory on the
//! embedded default: two nodes in this process (a memory node serving one
//! directory and a client), in-process keeper, soft NIC.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::lease::flags::{acquire, rw};
use crate::lease::Rc;
use crate::node::{Config, Patronus};
use crate::{Error, Result};

fn step(out: &mut dyn Write, ok: bool, what: String) -> Result<bool> {
    writeln!(out, "  [{}] {what}", if ok { " ok " } else { "FAIL" })
        .map_err(|e| Error::io("writing demo output", e))?;
    Ok(ok)
}

fn line(out: &mut dyn Write, s: &str) -> Result<()> {
    writeln!(out, "{s}").map_err(|e| Error::io("writing demo output", e))
}

/// Runs the demo on fabric `fabric` ("shm" or "tcp"), printing to `out`.
/// Returns Ok(true) when every step behaved as the protection model says.
pub fn run(fabric: &str, out: &mut dyn Write) -> Result<bool> {
    let cfg = Config {
        machine_nr: 2,
        dir_nr: 1,
        client_threads: 2,
        fabric: fabric.into(),
        keeper: None,
        cluster: format!(
            "demo-{}-{}",
            std::process::id(),
            crate::fabric::monotonic_ns()
        ),
        ..Config::default()
    };
    line(
        out,
        &format!("Patronus-rs demo: a memory node and a client in this process ({fabric} fabric, in-process keeper)"),
    )?;
    let c2 = cfg.clone();
    let other = std::thread::spawn(move || Patronus::new(c2));
    let a = Patronus::new(cfg)?;
    let b = other
        .join()
        .map_err(|_| Error::Invalid("node start-up panicked".into()))??;
    let (mem, cli) = if a.get_node_id() == 0 { (a, b) } else { (b, a) };
    mem.buffer_write(4096, b"hello, protected remote memory!!")?;
    let mut dir = mem.register_server_thread()?;
    let res = std::thread::scope(|s| -> Result<bool> {
        let server = s.spawn(move || dir.server_serve(1));
        let r = (|| -> Result<bool> {
            let mut c = cli.register_client_thread()?;
            let mut all = true;
            line(
                out,
                "memory node 0 serves directory 0; client node 1 acquires leases",
            )?;
            let t = Instant::now();
            let mut l = c.get_lease(true, 0, 0, 4096, 64, 0, acquire::NO_GC)?;
            all &= step(
                out,
                l.success(),
                format!(
                    "write lease on [4096, +64) granted in {:.1} us (window rkey {:#x}, bound to this client's QP)",
                    t.elapsed().as_nanos() as f64 / 1e3,
                    l.rkey
                ),
            )?;
            let mut b = [0u8; 32];
            let rc = c.read(&mut l, &mut b, 0, 0)?;
            all &= step(
                out,
                rc == Rc::Ok && &b == b"hello, protected remote memory!!",
                format!("one-sided READ: {:?}", String::from_utf8_lossy(&b)),
            )?;
            let rc = c.write(&mut l, b"written by the client", 32, 0)?;
            let mut seen = [0u8; 21];
            mem.buffer_read(4096 + 32, &mut seen)?;
            all &= step(
                out,
                rc == Rc::Ok && &seen == b"written by the client",
                "one-sided WRITE lands in the memory node's memory".into(),
            )?;
            let mut big = [0u8; 16];
            let t = Instant::now();
            let rc = c.read(&mut l, &mut big, 56, 0)?;
            all &= step(
                out,
                rc == Rc::RdmaProtectionErr,
                format!("READ crossing the lease end is refused by the NIC: {rc:?}"),
            )?;
            let rc2 = c.read(&mut l, &mut b, 0, 0)?;
            all &= step(
                out,
                rc2 == Rc::Ok,
                format!(
                    "fault detected and the QP recovered in {:.1} us; the same lease still works",
                    t.elapsed().as_nanos() as f64 / 1e3
                ),
            )?;
            let mut stale = l.clone();
            c.relinquish(&mut l, 0, 0)?;
            let rc = c.read(&mut stale, &mut b, 0, rw::NO_LOCAL_EXPIRE_CHECK)?;
            all &= step(
                out,
                rc == Rc::RdmaProtectionErr,
                format!("after relinquish the window is revoked: {rc:?}"),
            )?;

            let mut e = c.get_lease(false, 0, 0, 4096, 64, 20_000_000, 0)?;
            all &= step(
                out,
                e.success(),
                "read lease of 20 ms with server GC".into(),
            )?;
            std::thread::sleep(Duration::from_millis(40));
            let rc = c.read(&mut e, &mut b, 0, 0)?;
            all &= step(
                out,
                rc == Rc::LeaseLocalExpiredErr,
                format!("after 40 ms the local check refuses it: {rc:?}"),
            )?;
            let rc = c.read(&mut e, &mut b, 0, rw::NO_LOCAL_EXPIRE_CHECK)?;
            all &= step(
                out,
                rc == Rc::RdmaProtectionErr,
                format!("and the memory node's GC revoked the window: {rc:?}"),
            )?;

            let mut x = c.get_lease(false, 0, 0, 4096, 64, 20_000_000, 0)?;
            let t = Instant::now();
            let rc = c.extend(&mut x, 100_000_000, 0)?;
            all &= step(
                out,
                rc == Rc::Ok,
                format!(
                    "one-sided extension by 100 ms (CAS on the protection region, no server CPU) in {:.1} us",
                    t.elapsed().as_nanos() as f64 / 1e3
                ),
            )?;
            std::thread::sleep(Duration::from_millis(40));
            let rc = c.read(&mut x, &mut b, 0, rw::NO_LOCAL_EXPIRE_CHECK)?;
            all &= step(
                out,
                rc == Rc::Ok,
                format!("40 ms later (past the original 20 ms) the GC honoured it: {rc:?}"),
            )?;
            c.relinquish(&mut x, 0, 0)?;
            Ok(all)
        })();
        mem.finished(1)?;
        cli.finished(1)?;
        server
            .join()
            .map_err(|_| Error::Invalid("server thread panicked".into()))??;
        r
    })?;
    line(
        out,
        &format!(
            "summary: {}",
            if res {
                "all steps behaved as expected: leases grant, refuse, expire and extend as Patronus specifies"
            } else {
                "SOME STEPS FAILED"
            }
        ),
    )?;
    Ok(res)
}

#[cfg(test)]
mod tests {
    #[test]
    fn demo_passes_on_both_links() {
        for f in ["shm", "tcp"] {
            let mut out = Vec::new();
            assert!(
                super::run(f, &mut out).unwrap(),
                "{}",
                String::from_utf8_lossy(&out)
            );
            assert!(String::from_utf8(out)
                .unwrap()
                .contains("summary: all steps behaved"));
        }
    }
}
