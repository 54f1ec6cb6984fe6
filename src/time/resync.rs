//! The periodic clock re-sync of a node that is not the time parent: a
//! thread that re-runs [`TimeSyncer::sync_once`] every period, widens the
//! cluster epsilon when a re-sync measures more, and backs off (keeping the
//! last offset) while the parent does not answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Clock, TimeSyncer};
use crate::{Error, Result};

/// The running re-sync thread; dropping it stops and joins the thread.
pub struct Resync {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Resync {
    /// Starts re-syncing `clock` through `s` every `period` (at least 10 ms).
    pub fn start(s: TimeSyncer, clock: Arc<Clock>, period: Duration) -> Result<Resync> {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let period = period.max(Duration::from_millis(10));
        let thread = std::thread::Builder::new()
            .name("patronus-resync".into())
            .spawn(move || run(s, clock, period, &st))
            .map_err(|e| Error::io("spawn the clock re-sync thread", e))?;
        Ok(Resync {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Resync {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

/// Consecutive failed re-syncs (1 + 2 + 4 periods of back-off) before a
/// warning: fewer happen when the time parent leaves at the end of a run.
const WARN_AFTER: u32 = 3;

fn run(s: TimeSyncer, clk: Arc<Clock>, period: Duration, stop: &AtomicBool) {
    let mut wait = period;
    let mut next = Instant::now() + wait;
    let mut failures = 0u32;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(10));
        if Instant::now() < next {
            continue;
        }
        // The true offset lies within epsilon of the current estimate and
        // within `e` of the new one, so honest estimates differ by at most
        // their sum: a larger jump means the parent's clock words were
        // tampered with (or the bracket is wrong) and is not adopted.
        let r = s.measure(8).and_then(|(off, e)| {
            let bound = clk.epsilon().saturating_add(e);
            let jump = off.saturating_sub(clk.offset()).saturating_abs();
            if jump > bound {
                return Err(crate::Error::Invalid(format!(
                    "re-sync offset jumps by {jump} ns, more than the bound {bound} ns: not adopted"
                )));
            }
            Ok((off, e))
        });
        clk.note_resync(r.is_ok());
        match r {
            Ok((off, e)) => {
                // Widen first: the new offset is never read with the old,
                // narrower bound.
                if e > clk.epsilon() {
                    tracing::info!(epsilon_ns = e, "clock uncertainty grew; widening epsilon");
                    clk.set_epsilon(e);
                }
                clk.set_offset(off);
                if failures >= WARN_AFTER {
                    tracing::info!("clock re-sync works again");
                }
                failures = 0;
                wait = period;
            }
            Err(e) => {
                // The parent may have left (e.g. a client node that
                // finished): keep the last offset, back off. Nodes leave in
                // order within a few periods at the end of a run, so only a
                // re-sync still failing after WARN_AFTER attempts, while
                // this node is not stopping, is worth a warning.
                failures += 1;
                if failures == WARN_AFTER && !stop.load(Ordering::Relaxed) {
                    tracing::warn!(
                        "clock re-sync failed {failures} times in a row, keeping the last offset: {e}"
                    );
                } else {
                    tracing::debug!("clock re-sync failed, keeping the last offset: {e}");
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
        next = Instant::now() + wait;
    }
}
