//! Protection: window semantics (bound connection, bounds, error and
//! flush, recovery, read-only windows, stale rkeys) and forged rkeys.

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::{checksum, fail, Pair};
use crate::fabric::{Access, QpState, Result, SendWr, WcStatus, WrOp};

/// Window semantics: bound connection only, bounds, flush after an error,
/// recovery keeps the window, read windows refuse writes and atomics,
/// 1000 bind/unbind cycles never revive a stale rkey.
pub fn check_windows(p: &Pair, other: &Pair) -> Result<()> {
    let (mw, rkey) = p.bind(4096, 256, Access::WRITE_WINDOW)?;
    if p.read(rkey, 4096, 0, 256)? != WcStatus::Success {
        return fail("read through the bound connection failed");
    }
    // Same rkey from another connection (another QP of the same PD) fails.
    let st = other.read(rkey, 4096, 0, 8)?;
    if st != WcStatus::RemAccessErr {
        return fail(format!("window used from another connection: {st:?}"));
    }
    other.client.recover(&other.server)?;
    // Outside the window: error, QP in error, later requests flushed.
    let wrs = [
        SendWr {
            wr_id: 1,
            op: WrOp::Read {
                local: p.client.sge(0, 8),
                raddr: p.region.addr() + 4096 + 252,
                rkey,
            },
            signaled: true,
        },
        SendWr {
            wr_id: 2,
            op: WrOp::Read {
                local: p.client.sge(8, 8),
                raddr: p.region.addr() + 4096,
                rkey,
            },
            signaled: true,
        },
        SendWr {
            wr_id: 3,
            op: WrOp::Write {
                local: p.client.sge(8, 8),
                raddr: p.region.addr() + 4096,
                rkey,
            },
            signaled: true,
        },
    ];
    p.client.qp.post_send(&wrs)?;
    let a = p.client.wait()?;
    let b = p.client.wait()?;
    let c = p.client.wait()?;
    if (a.wr_id, a.status) != (1, WcStatus::RemAccessErr)
        || (b.wr_id, b.status) != (2, WcStatus::WrFlushErr)
        || (c.wr_id, c.status) != (3, WcStatus::WrFlushErr)
    {
        return fail(format!("error + flush order: {a:?} {b:?} {c:?}"));
    }
    if p.client.qp.state() != QpState::Error {
        return fail(format!("QP state after error: {:?}", p.client.qp.state()));
    }
    // Posting in error state flushes too.
    let wc = p.client.run(WrOp::Read {
        local: p.client.sge(0, 8),
        raddr: p.region.addr() + 4096,
        rkey,
    })?;
    if wc.status != WcStatus::WrFlushErr {
        return fail(format!("post in error state: {wc:?}"));
    }
    p.client.recover(&p.server)?;
    // Whether the window survived the reset must match what the backend
    // advertises; where it does not, it is bound again with a new key and
    // the old one stays dead (the lease layer's re-bind on recovery).
    let survived = p.read(rkey, 4096, 0, 256)? == WcStatus::Success;
    let rkey = match (survived, p.server.nic.caps().windows_survive_reset) {
        (true, true) => rkey,
        (false, true) => return fail("window unusable after QP recovery"),
        (true, false) => {
            return fail(
                "window usable after QP recovery, but Caps::windows_survive_reset is false",
            )
        }
        (false, false) => {
            p.client.recover(&p.server)?;
            let fresh = p.rebind(mw, 4096, 256, Access::WRITE_WINDOW)?;
            if fresh == rkey || p.read(fresh, 4096, 0, 256)? != WcStatus::Success {
                return fail("window not usable again after a re-bind following QP recovery");
            }
            p.expect_denied(p.read(rkey, 4096, 0, 8)?, "rkey from before the QP reset")?;
            fresh
        }
    };
    // Read windows refuse WRITE, CAS and FAA.
    let (_, rk) = p.bind(8192, 64, Access::READ_WINDOW)?;
    if p.read(rk, 8192, 0, 64)? != WcStatus::Success {
        return fail("read window refused a read");
    }
    p.expect_denied(p.write(rk, 8192, 0, 8)?, "WRITE through a read window")?;
    p.expect_denied(p.cas(rk, 8192, 0, 1)?.0, "CAS through a read window")?;
    p.expect_denied(p.faa(rk, 8192, 1)?.0, "FAA through a read window")?;
    // 1000 bind/unbind cycles.
    let mut stale = vec![rkey];
    p.unbind(mw)?;
    for i in 0..1000u64 {
        let k = p.rebind(mw, (i % 16) * 64, 64, Access::WRITE_WINDOW)?;
        if p.read(k, (i % 16) * 64, 0, 8)? != WcStatus::Success {
            return fail(format!("cycle {i}: fresh rkey refused"));
        }
        p.unbind(mw)?;
        if i % 50 == 0 {
            for s in stale.iter().rev().take(8).chain(std::iter::once(&k)) {
                p.expect_denied(p.read(*s, (i % 16) * 64, 0, 8)?, "stale rkey")?;
            }
        }
        stale.push(k);
    }
    Ok(())
}

/// Whether a window bound on a connection survives a reset and reconnect
/// of that connection (the property [`Caps::windows_survive_reset`](crate::fabric::Caps::windows_survive_reset)
/// advertises): binds a window, recovers the pair, reads through it.
pub fn probe_window_survival(p: &Pair) -> Result<bool> {
    let (mw, rkey) = p.bind(0, 64, Access::WRITE_WINDOW)?;
    if p.read(rkey, 0, 0, 8)? != WcStatus::Success {
        return fail("read through a fresh window failed");
    }
    // A reset of both ends, as recovery after a fault on hardware.
    p.server.qp.reset()?;
    p.client.recover(&p.server)?;
    let survived = p.read(rkey, 0, 0, 8)? == WcStatus::Success;
    if survived {
        p.unbind(mw)?;
    } else {
        p.client.recover(&p.server)?;
    }
    Ok(survived)
}

/// `n` forged rkeys are all refused and the exposed memory is unchanged.
pub fn check_forged_rkeys(p: &Pair, n: u64) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(0x1234_5678_9abc_def1);
    let (_, good) = p.bind(0, 4096, Access::WRITE_WINDOW)?;
    p.region.fill(0, p.region.len(), 0x5a)?;
    let before = checksum(&p.region)?;
    p.client.buf.fill(0, 4096, 0xa5)?;
    let mut refused = 0;
    for i in 0..n {
        let mut rkey = rng.next_u64() as u32;
        if rkey == good || rkey == p.region.rkey() {
            rkey ^= 0x100;
        }
        let off = (rng.next_u64() % (p.region.len() - 64)) & !7;
        let st = match i % 3 {
            0 => p.write(rkey, off, 0, 64)?,
            1 => p.faa(rkey, off, 1)?.0,
            _ => p.cas(rkey, off, 0x5a5a_5a5a_5a5a_5a5a, 1)?.0,
        };
        if st == WcStatus::Success {
            return fail(format!("forged rkey {rkey:#x} was accepted"));
        }
        refused += 1;
        p.client.recover(&p.server)?;
    }
    if checksum(&p.region)? != before {
        return fail("exposed memory changed under forged rkeys");
    }
    if refused != n {
        return fail("not every forged rkey was tried");
    }
    Ok(())
}
