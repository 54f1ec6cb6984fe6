//! Memory semantics: byte-exact READ/WRITE, atomics (also against the
//! memory node's own CPU atomics), CAS under contention.

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::{fail, Pair};
use crate::fabric::{Access, FabricError, Result, SendWr, WcStatus, WrOp};

/// READ/WRITE are byte-exact from 1 B to 1 MiB at unaligned offsets, through
/// both an MR rkey and a window; the memory node sees the same bytes.
pub fn check_rw_byte_exact(p: &Pair) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(0x9e37_79b9_7f4a_7c15);
    let (_, wkey) = p.bind(0, p.region.len(), Access::WRITE_WINDOW)?;
    let sizes = [
        1u32,
        3,
        7,
        8,
        9,
        63,
        64,
        65,
        4095,
        4096,
        4097,
        65_537,
        1 << 20,
    ];
    for (i, &len) in sizes.iter().enumerate() {
        for &(roff, loff) in &[(0u64, 0u64), (13, 5), (4093, 1021)] {
            let rkey = if i % 2 == 0 { p.region.rkey() } else { wkey };
            let mut data = vec![0u8; len as usize];
            rng.fill_bytes(&mut data);
            p.client.buf.write(loff, &data)?;
            let st = p.write(rkey, roff, loff, len)?;
            if st != WcStatus::Success {
                return fail(format!("WRITE {len} B at {roff}: {st:?}"));
            }
            let mut seen = vec![0u8; len as usize];
            p.region.read(roff, &mut seen)?;
            if seen != data {
                return fail(format!(
                    "WRITE {len} B at {roff}: memory node sees other bytes"
                ));
            }
            let back = loff + len as u64 + 8;
            p.client.buf.fill(back, len as u64, 0xee)?;
            let st = p.read(rkey, roff, back, len)?;
            if st != WcStatus::Success {
                return fail(format!("READ {len} B at {roff}: {st:?}"));
            }
            p.client.buf.read(back, &mut seen)?;
            if seen != data {
                return fail(format!("READ {len} B at {roff}: bytes differ"));
            }
        }
    }
    Ok(())
}

/// CAS returns the old value and swaps only on a match; FAA adds; both are
/// atomic with the memory node's own CPU atomics on the same word.
pub fn check_atomics(p: &Pair) -> Result<()> {
    let rkey = p.region.rkey();
    p.region.store_u64(64, 10)?;
    let (st, old) = p.cas(rkey, 64, 10, 20)?;
    if st != WcStatus::Success || old != 10 || p.region.load_u64(64)? != 20 {
        return fail(format!("CAS hit: {st:?} old {old}"));
    }
    let (st, old) = p.cas(rkey, 64, 10, 30)?;
    if st != WcStatus::Success || old != 20 || p.region.load_u64(64)? != 20 {
        return fail(format!("CAS miss: {st:?} old {old}"));
    }
    let (st, old) = p.faa(rkey, 64, 5)?;
    if st != WcStatus::Success || old != 20 || p.region.load_u64(64)? != 25 {
        return fail(format!("FAA: {st:?} old {old}"));
    }
    let (st, _) = p.faa(rkey, 68, 1)?;
    if st == WcStatus::Success {
        return fail("FAA at an unaligned address succeeded");
    }
    p.client.recover(&p.server)?;
    // Remote FAAs racing the memory node's own CPU FAAs on one word.
    p.region.store_u64(128, 0)?;
    let n = 20_000u64;
    let region = p.region.clone();
    let cpu = std::thread::spawn(move || {
        for _ in 0..n {
            region.faa_u64(128, 1).expect("faa");
        }
    });
    let batch = 64;
    let mut done = 0;
    while done < n {
        let k = batch.min(n - done);
        let wrs: Vec<SendWr> = (0..k)
            .map(|i| SendWr {
                wr_id: i,
                op: WrOp::Faa {
                    local: p.client.sge(8 * (i % 64), 8),
                    raddr: p.region.addr() + 128,
                    rkey,
                    add: 1,
                },
                signaled: i == k - 1,
            })
            .collect();
        p.client.qp.post_send(&wrs)?;
        let wc = p.client.wait()?;
        if wc.status != WcStatus::Success {
            return fail(format!("pipelined FAA: {wc:?}"));
        }
        done += k;
    }
    cpu.join()
        .map_err(|_| FabricError::Invalid("cpu FAA thread panicked".into()))?;
    let v = p.region.load_u64(128)?;
    if v != 2 * n {
        return fail(format!("remote + local FAA: {v}, expected {}", 2 * n));
    }
    Ok(())
}

/// Under contention exactly one CAS per round wins.
pub fn check_cas_contention(pairs: &[Pair], rounds: u64) -> Result<()> {
    let region = &*pairs[0].region;
    region.store_u64(256, 0)?;
    let winners = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = pairs
            .iter()
            .map(|p| {
                let winners = &winners;
                s.spawn(move || -> Result<u64> {
                    let mut won = 0;
                    for r in 0..rounds {
                        // Wait until the word reaches round r, then race.
                        loop {
                            let (st, old) = p.cas(p.region.rkey(), 256, r, r)?;
                            if st != WcStatus::Success {
                                return fail(format!("CAS poll: {st:?}"));
                            }
                            if old >= r {
                                break;
                            }
                        }
                        let (st, old) = p.cas(p.region.rkey(), 256, r, r + 1)?;
                        if st != WcStatus::Success {
                            return fail(format!("CAS race: {st:?}"));
                        }
                        if old == r {
                            won += 1;
                            winners.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    Ok(won)
                })
            })
            .collect();
        for h in hs {
            h.join()
                .map_err(|_| FabricError::Invalid("CAS thread panicked".into()))??;
        }
        Ok(())
    })?;
    let w = winners.load(std::sync::atomic::Ordering::SeqCst);
    if w != rounds || region.load_u64(256)? != rounds {
        return fail(format!("{w} CAS winners over {rounds} rounds"));
    }
    Ok(())
}
