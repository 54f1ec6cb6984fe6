//! Moving a QP between peers while its CQ is polled.

use std::time::{Duration, Instant};

use super::{drain, fail, Pair, Side};
use crate::fabric::{Result, SendWr, Wc, WcStatus, WrOp};

/// A CQ polled without pause by one thread while another thread moves the
/// QP between two peers `cycles` times (reset, connect elsewhere): nothing
/// crashes or hangs, work in flight completes or is flushed, and afterwards
/// the QP reads byte-exact again. (The soft NIC swaps a QP's link under
/// the lock its CQ's pollers hold.) Soft fabric:
/// on hardware a reset QP must also meet a reset peer (PSNs), see
/// [`Side::recover`].
pub fn check_reconnect_under_polling(p: &Pair, cycles: u32) -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let other = Side::new(p.server.nic.clone(), p.server.pd, 4096)?;
    other.qp.connect(&p.client.qp.endpoint())?;
    let stop = AtomicBool::new(false);
    let completed = AtomicU64::new(0);
    let read = WrOp::Read {
        local: p.client.sge(0, 64),
        raddr: p.region.addr(),
        rkey: p.region.rkey(),
    };
    std::thread::scope(|sc| -> Result<()> {
        sc.spawn(|| {
            let mut wc = [Wc::default(); 16];
            let mut wr_id = 0;
            while !stop.load(Ordering::Relaxed) {
                // Refused while the QP is being reset or when full: fine.
                let _ = p.client.qp.post_send(&[SendWr {
                    wr_id,
                    op: read,
                    signaled: true,
                }]);
                wr_id += 1;
                for _ in 0..32 {
                    let n = p.client.cq.poll(&mut wc) as u64;
                    completed.fetch_add(n, Ordering::Relaxed);
                }
            }
        });
        let res = (|| {
            for i in 0..cycles {
                let to = if i % 2 == 0 { &other } else { &p.server };
                p.client.qp.reset()?;
                p.client.qp.connect(&to.qp.endpoint())?;
                // Let some work run on this connection.
                let t = Instant::now();
                let c0 = completed.load(Ordering::Relaxed);
                while completed.load(Ordering::Relaxed) < c0 + 4
                    && t.elapsed() < Duration::from_millis(100)
                {
                    std::thread::yield_now();
                }
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        res
    })?;
    // At least one completion per two connections (normally four per
    // connection): progress went on throughout, under a loaded machine too.
    if completed.load(Ordering::Relaxed) < cycles as u64 / 2 {
        return fail(format!(
            "only {} completions over {cycles} reconnects: the poller stalled",
            completed.load(Ordering::Relaxed)
        ));
    }
    p.client.qp.reset()?;
    drain(&*p.client.cq);
    p.client.qp.connect(&p.server.qp.endpoint())?;
    let data: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
    p.region.write(128, &data)?;
    p.client.buf.fill(4096, 64, 0)?;
    let st = p.read(p.region.rkey(), 128, 4096, 64)?;
    let mut got = vec![0u8; 64];
    p.client.buf.read(4096, &mut got)?;
    if st != WcStatus::Success || got != data {
        return fail(format!("READ after the reconnect storm: {st:?}"));
    }
    Ok(())
}
