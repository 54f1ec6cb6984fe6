//! Node liveness through the keeper: every node beats (increments its
//! `alive/<node>` counter in the run) every [`BEAT`], and a serving memory
//! node watches the beats of the nodes that have not finished. A node whose
//! counter stood still for `dead_after` on the watcher's own clock (no
//! cross-host clock involved) is dead: killed, crashed, or cut off from the
//! keeper. Once every other node has either finished or died, serving ends
//! (the dead nodes' leases are revoked with the rest) and reports who died.
//!
//! The keeper is the one channel every fabric and every deployment shares,
//! which is why liveness goes through it rather than through connections
//! (an RC QP to a dead peer on a real NIC says nothing until the next send
//! exhausts its retries).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Run;
use crate::{Error, Result};

/// How often a node beats.
pub const BEAT: Duration = Duration::from_millis(200);

/// The heartbeat thread of one node; dropping it stops (and joins) it.
pub struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Beats for `run`'s node every [`BEAT`] (the first beat before
    /// returning, so that the node is alive from the start).
    pub fn start(run: Arc<Run>) -> Result<Heartbeat> {
        Heartbeat::with_chore(run, 0, Box::new(|| {}))
    }

    /// Like `start`, and runs `chore` every `every` beats (0: never) on the
    /// heartbeat thread: periodic keeper work of the node that needs no
    /// thread of its own.
    pub fn with_chore(
        run: Arc<Run>,
        every: u32,
        mut chore: Box<dyn FnMut() + Send>,
    ) -> Result<Heartbeat> {
        let key = format!("alive/{}", run.node_id());
        run.keeper().incr(&run.key(&key))?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("patronus-beat".into())
            .spawn(move || {
                let mut next = Instant::now() + BEAT;
                let mut beats = 0u32;
                while !st.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                    if Instant::now() < next {
                        continue;
                    }
                    if let Err(e) = run.keeper().incr(&run.key(&key)) {
                        tracing::debug!("heartbeat: {e}");
                    }
                    beats = beats.wrapping_add(1);
                    if every > 0 && beats % every == 0 {
                        chore();
                    }
                    next = Instant::now() + BEAT;
                }
            })
            .map_err(|e| Error::io("spawn the heartbeat thread", e))?;
        Ok(Heartbeat {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }
}

/// What a watcher last saw of one node's beat.
struct Seen {
    beat: Option<Vec<u8>>,
    since: Instant,
}

/// A serving node's view of the other nodes' beats.
pub struct Liveness {
    run: Arc<Run>,
    dead_after: Duration,
    seen: Mutex<(Instant, HashMap<u16, Seen>)>,
}

impl Liveness {
    /// Watches the nodes of `run` other than its own; a node is dead once
    /// its beat stood still for `dead_after` (at least 3 beats).
    pub fn new(run: Arc<Run>, dead_after: Duration) -> Liveness {
        Liveness {
            run,
            dead_after: dead_after.max(3 * BEAT),
            seen: Mutex::new((Instant::now() - BEAT, HashMap::new())),
        }
    }

    /// Looks at the beats (at most once per [`BEAT`]; between looks it
    /// answers None). Returns the dead nodes once every other node has
    /// finished `key` or died and at least one died; None while some node
    /// not finished is alive (or none died).
    pub fn all_others_gone(&self, key: u64) -> Result<Option<Vec<u16>>> {
        let mut g = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let (last, seen) = &mut *g;
        if last.elapsed() < BEAT {
            return Ok(None);
        }
        *last = Instant::now();
        let mut dead = Vec::new();
        for n in 0..self.run.machine_nr() {
            if n == self.run.node_id() || self.run.has_finished(n, key)? {
                continue;
            }
            let beat = self
                .run
                .keeper()
                .try_get(&self.run.key(&format!("alive/{n}")))?;
            let s = seen.entry(n).or_insert_with(|| Seen {
                beat: beat.clone(),
                since: Instant::now(),
            });
            if s.beat != beat {
                s.beat = beat;
                s.since = Instant::now();
            }
            if s.since.elapsed() < self.dead_after {
                return Ok(None);
            }
            dead.push(n);
        }
        Ok((!dead.is_empty()).then_some(dead))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{InProcessKeeper, Keeper};

    fn run(k: &Arc<dyn Keeper>, node: u16) -> Arc<Run> {
        Arc::new(Run::new(k.clone(), "p/live-test/0".into(), 3, node))
    }

    fn wait_until(t: Duration, mut f: impl FnMut() -> bool) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < t {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn a_silent_node_is_dead_and_a_finished_or_beating_one_is_not() {
        let k: Arc<dyn Keeper> = InProcessKeeper::for_cluster("live-test");
        let watcher = Liveness::new(run(&k, 0), Duration::from_millis(700));
        // Node 1 beats the whole time; node 2 beats, then stops (killed).
        let _one = Heartbeat::start(run(&k, 1)).unwrap();
        let two = Heartbeat::start(run(&k, 2)).unwrap();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(1200) {
            assert_eq!(watcher.all_others_gone(9).unwrap(), None);
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(two);
        // Node 2 is dead but node 1 lives and has not finished: serve on.
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(1500) {
            assert_eq!(watcher.all_others_gone(9).unwrap(), None);
            std::thread::sleep(Duration::from_millis(20));
        }
        // Node 1 finishes: every other node is gone, node 2 by dying.
        run(&k, 1).finished(9).unwrap();
        assert!(wait_until(Duration::from_secs(2), || {
            watcher.all_others_gone(9).unwrap() == Some(vec![2])
        }));
    }

    #[test]
    fn every_node_finished_is_not_a_death() {
        let k: Arc<dyn Keeper> = InProcessKeeper::for_cluster("live-test2");
        let r = |n| Arc::new(Run::new(k.clone(), "p/live-test2/0".into(), 3, n));
        let watcher = Liveness::new(r(0), Duration::from_millis(600));
        r(1).finished(1).unwrap();
        r(2).finished(1).unwrap();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(1000) {
            assert_eq!(watcher.all_others_gone(1).unwrap(), None);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
