//! The periodic clock re-sync of a node that is not the time parent: a
//! thread that re-measures through [`TimeSyncer::measure`] every period and
//! folds each measurement into the node's [`Estimate`] (intersected with
//! the estimate aged by the drift bound: a wider bracket never replaces a
//! narrower one, a disjoint one is refused). The clock's epsilon is the
//! estimate's bound aged to the next re-sync, so it stays valid while the
//! thread sleeps; while the parent does not answer, the thread backs off and
//! the bound keeps aging.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Clock, Estimate, Fold, TimeSyncer};
use crate::fabric::monotonic_ns;
use crate::{Error, Result};

/// The running re-sync thread; dropping it stops and joins the thread.
pub struct Resync {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Resync {
    /// Starts re-syncing `clock` through `s` every `period` (at least 10 ms),
    /// from the start-up estimate `est`; `floor` is the smallest epsilon
    /// applied (`Config::epsilon_ns`).
    pub fn start(
        s: TimeSyncer,
        clock: Arc<Clock>,
        est: Estimate,
        floor: i64,
        period: Duration,
    ) -> Result<Resync> {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let period = period.max(Duration::from_millis(10));
        let thread = std::thread::Builder::new()
            .name("patronus-resync".into())
            .spawn(move || run(s, clock, est, floor, period, &st))
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

/// Applies `est` to `clk`, with its bound aged by `horizon` (until the
/// next re-sync can narrow it): a wider epsilon before the new offset, a
/// narrower one after it, so that no reader pairs an offset with a bound
/// that does not cover it.
pub fn apply(clk: &Clock, est: &Estimate, floor: i64, horizon: Duration) {
    let eps = est
        .bound_at(monotonic_ns().saturating_add(horizon.as_nanos() as i64))
        .max(floor);
    if eps >= clk.local_epsilon() {
        clk.set_epsilon(eps);
        clk.set_offset(est.offset);
    } else {
        clk.set_offset(est.offset);
        clk.set_epsilon(eps);
    }
}

fn run(
    s: TimeSyncer,
    clk: Arc<Clock>,
    mut est: Estimate,
    floor: i64,
    period: Duration,
    stop: &AtomicBool,
) {
    let mut wait = period;
    let mut next = Instant::now() + wait;
    let mut failures = 0u32;
    // A re-sync takes at most the syncer's timeout; the bound applied must
    // last until the one after next could have completed.
    let slack = s.timeout();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(10));
        if Instant::now() < next {
            continue;
        }
        let at = monotonic_ns();
        let r = s.measure(8).and_then(|(off, e)| match est.fold(off, e, at) {
            Fold::Inconsistent => Err(crate::Error::Invalid(format!(
                "re-sync offset {off} +/- {e} ns is disjoint from the estimate {} +/- {} ns: not adopted",
                est.offset,
                est.bound_at(at)
            ))),
            f => Ok(f),
        });
        clk.note_resync(r.is_ok());
        match r {
            Ok(f) => {
                if failures >= WARN_AFTER {
                    tracing::info!("clock re-sync works again");
                }
                tracing::debug!(?f, offset_ns = est.offset, bound_ns = est.bound, "re-sync");
                failures = 0;
                wait = period;
            }
            Err(e) => {
                // The parent may have left (e.g. a client node that
                // finished): keep the estimate (its bound keeps aging),
                // back off. Nodes leave in order within a few periods at
                // the end of a run, so only a re-sync still failing after
                // WARN_AFTER attempts, while this node is not stopping, is
                // worth a warning.
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
        apply(&clk, &est, floor, wait + 2 * slack);
        next = Instant::now() + wait;
    }
}
