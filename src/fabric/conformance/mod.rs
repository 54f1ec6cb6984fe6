//! The fabric conformance suite, written once against the contract.
//!
//! CI runs it on the soft NIC (shm and tcp links); on RDMA hardware
//! `patronus selftest --fabric verbs` runs the same checks against verbs.
//! Every check returns a descriptive error instead of panicking, so the CLI
//! can report which property failed.

mod caps;
mod harness;
mod memory;
mod reconnect;
mod send_recv;
mod windows;

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Cq, FabricError, Mr, Nic, Result, Wc};

pub use caps::check_caps;
pub use harness::{Pair, Side};
pub use memory::{check_atomics, check_cas_contention, check_rw_byte_exact};
pub use reconnect::check_reconnect_under_polling;
pub use send_recv::check_send_recv;
pub use windows::{check_forged_rkeys, check_windows, probe_window_survival};

/// How long a single completion may take before a check fails.
pub const WC_TIMEOUT: Duration = Duration::from_secs(10);

fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(FabricError::Invalid(msg.into()))
}

/// Polls one completion or fails after `timeout`.
pub fn wait_wc(cq: &dyn Cq, timeout: Duration) -> Result<Wc> {
    let end = Instant::now() + timeout;
    let mut wc = [Wc::default(); 1];
    loop {
        if cq.poll(&mut wc) == 1 {
            return Ok(wc[0]);
        }
        if Instant::now() > end {
            return Err(FabricError::PeerLost(format!(
                "no completion within {timeout:?}"
            )));
        }
        cq.wait(Duration::from_micros(100));
    }
}

/// Drains every completion currently available.
pub fn drain(cq: &dyn Cq) -> usize {
    let mut wc = [Wc::default(); 32];
    let mut n = 0;
    loop {
        let k = cq.poll(&mut wc);
        if k == 0 {
            return n;
        }
        n += k;
    }
}

/// A checksum of the whole region (FNV-1a over 64 KiB chunks).
pub fn checksum(mr: &Mr) -> Result<u64> {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut buf = vec![0u8; 64 << 10];
    let mut off = 0;
    while off < mr.len() {
        let n = buf.len().min((mr.len() - off) as usize);
        mr.read(off, &mut buf[..n])?;
        for b in &buf[..n] {
            h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
        }
        off += n as u64;
    }
    Ok(h)
}

/// Runs every single-pair check on fresh pairs of the given NICs.
pub fn run_all(server: Arc<dyn Nic>, client: Arc<dyn Nic>, forged: u64) -> Result<Vec<String>> {
    let mut passed = Vec::new();
    let mk = || Pair::new(server.clone(), client.clone(), 4 << 20);
    // First: what the device does with windows across a QP reset (the
    // open question of type-2 windows on hardware).
    let survive = probe_window_survival(&mk()?)?;
    passed.push(format!(
        "window_survival: windows {} a QP reset (Caps::windows_survive_reset {})",
        if survive { "survive" } else { "do not survive" },
        server.caps().windows_survive_reset
    ));
    check_rw_byte_exact(&mk()?)?;
    passed.push("rw_byte_exact".to_string());
    check_atomics(&mk()?)?;
    passed.push("atomics".to_string());
    let p = mk()?;
    check_windows(&p, &p.share(&client)?)?;
    passed.push("windows".to_string());

    check_send_recv(&mk()?)?;
    passed.push("send_recv".to_string());
    check_caps(&mk()?)?;
    passed.push("caps".to_string());
    check_forged_rkeys(&mk()?, forged)?;
    passed.push(format!("forged_rkeys x{forged}"));
    let first = mk()?;
    let second = first.share(&client)?;
    check_cas_contention(&[first, second], 200)?;
    passed.push("cas_contention".to_string());
    Ok(passed)
}
