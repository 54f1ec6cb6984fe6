//! Clock synchronisation against the time parent.
//!
//! The parent keeps a [`ClockInfo`] at offset 0 of its registered region.
//! A node that wants to sync FAAs the parent's `request` word (one-sided),
//! and the parent publishes its clock for a short burst. The syncing node
//! RDMA-READs the ClockInfo; a READ posted at local `t0` and completed at
//! `t1` yields a sample `[lo, hi]` that contains the local time at which
//! the value it returned was read from the parent's clock:
//!
//! - On a NIC with a serving thread (the soft NIC) the parent publishes
//!   from that thread's serve hook ([`Nic::set_serve_hook`]), which runs
//!   after each request it serves was posted: while the burst is on,
//!   `[lo, hi] = [t0, t1]` of the READ itself ([`AT_SERVE`]).
//! - Otherwise an exposer thread publishes in a loop: when read `i`
//!   returns a value different from read `i-1`, that value was published
//!   after read `i-1` started and before read `i` completed:
//!   `[lo, hi] = [t0_{i-1}, t1_i]`.
//!
//! ```text
//! offset  = parent.ns - (lo + hi)/2
//! epsilon = (hi - lo)/2 + drift allowance
//! ```
//!
//! and the true offset lies within `epsilon` of the estimate, however
//! either side was scheduled. The sample with the narrowest window wins,
//! so epsilon comes from the measured read latency. With two-read samples
//! the reader spins between reads at start-up (a yield would sit inside
//! the next window); with one-read samples it yields between them, and no
//! window spans the gap. [`TimeSyncer::measure_until`] keeps sampling until
//! one window is narrow, since on a loaded host most hold a preemption.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Buf;

use super::Clock;
use crate::fabric::{
    monotonic_ns, Cq, Mr, Nic, Qp, QpEndpoint, SendWr, ServeHook, Sge, Wc, WcStatus, WrOp,
};
use crate::{Error, Result};

/// Bytes of the ClockInfo (ns, flags, request, magic), at region offset 0.
pub const CLOCK_INFO_SIZE: u64 = 32;
/// Magic that says the parent's ClockInfo is live.
pub const CLOCK_MAGIC: u64 = 0xaabb_ccdd_1010_3232;
/// How long the exposer publishes after a request.
const BURST: Duration = Duration::from_millis(20);
/// [`ClockInfo::flags`]: the parent publishes its clock as its NIC serves
/// each READ (a serve hook), after the READ was posted: one READ's round
/// trip brackets the value it returns while a burst is on.
pub const AT_SERVE: i64 = 1;
/// Allowance for clock drift between syncs (monotonic clocks of different
/// hosts drift by up to ~200 us/s; periodic resync bounds the interval).
const DRIFT_NS: i64 = 1_000;

/// The parent's published clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockInfo {
    /// Parent PatronusTime when published.
    pub ns: i64,
    /// [`AT_SERVE`] when the parent publishes as it serves each READ.
    pub flags: i64,
    /// Sync requests so far.
    pub request: u64,
    /// [`CLOCK_MAGIC`] once live.
    pub magic: u64,
}

impl ClockInfo {
    /// Decodes 32 little-endian bytes.
    pub fn decode(b: &[u8; 32]) -> ClockInfo {
        // Every read lies inside the 32-byte array.
        let mut r = &b[..];
        ClockInfo {
            ns: r.get_i64_le(),
            flags: r.get_i64_le(),
            request: r.get_u64_le(),
            magic: r.get_u64_le(),
        }
    }
}

/// A parent clock value and the local window it was published in.
#[derive(Clone, Copy, Debug)]
pub struct SyncSample {
    /// Local monotonic ns: the publication happened at or after this.
    pub lo: i64,
    /// Local monotonic ns: the publication happened at or before this.
    pub hi: i64,
    /// The parent's clock value.
    pub parent_ns: i64,
}

impl SyncSample {
    /// Offset estimate and its uncertainty, or None when the sample is
    /// impossible (a bracket that ends before it starts, or values whose
    /// difference does not fit 64 bits: a hostile or corrupt clock word).
    pub fn estimate(&self) -> Option<(i64, i64)> {
        let width = self.hi.checked_sub(self.lo).filter(|w| *w >= 0)?;
        let mid = self.lo.checked_add(width / 2)?;
        let offset = self.parent_ns.checked_sub(mid)?;
        Some((offset, (width / 2).checked_add(1 + DRIFT_NS)?))
    }
}

/// Publishes this node's clock while somebody asks (runs on the parent).
///
/// On a NIC that serves requests on a thread of its own (the soft NIC) the
/// exposer is a hook of that thread ([`Nic::set_serve_hook`]): each pass
/// sees a new request and, during a burst, stores the clock right before
/// it serves the pass's READs. A sync bracket then needs two threads on a
/// core (the reader and the responder), not three: on a loaded two-core
/// host a third thread put a scheduler slice inside most brackets. A
/// hardware NIC has no such thread: there a thread of our own publishes.
pub struct Exposer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The NIC whose serve hook publishes (removed on drop).
    hooked: Option<Arc<dyn Nic>>,
}

/// The clock publisher a serving NIC thread runs before each pass.
fn publisher(region: Arc<Mr>, clock: Arc<Clock>) -> ServeHook {
    // Only the NIC's serving threads call it; atomics make it Sync.
    let seen = AtomicU64::new(0);
    let until = AtomicI64::new(0);
    let burst = BURST.as_nanos() as i64;
    Arc::new(move || {
        let req = region.load_u64(16).unwrap_or(0);
        if req != seen.load(Ordering::Relaxed) {
            seen.store(req, Ordering::Relaxed);
            until.store(clock.now().saturating_add(burst), Ordering::Relaxed);
        }
        let end = until.load(Ordering::Relaxed);
        if end != 0 {
            let now = clock.now();
            if now >= end {
                until.store(0, Ordering::Relaxed);
                return;
            }
            // Two serving threads may publish at once: the word only grows,
            // so whatever a READ returns was read from the clock no earlier
            // than the newest run of the hook before it was served.
            let Ok(mut cur) = region.load_u64(0) else {
                return;
            };
            while (cur as i64) < now {
                match region.cas_u64(0, cur, now as u64) {
                    Ok(seen) if seen == cur => break,
                    Ok(seen) => cur = seen,
                    Err(_) => break,
                }
            }
        }
    })
}

impl Exposer {
    /// Starts the exposer over `region` (ClockInfo at offset 0): as a serve
    /// hook of `nic` where it has one, else as a thread.
    pub fn start(region: Arc<Mr>, clock: Arc<Clock>, nic: &Arc<dyn Nic>) -> Result<Exposer> {
        region.store_u64(0, clock.now() as u64)?;
        region.store_u64(8, AT_SERVE as u64)?;
        region.store_u64(24, CLOCK_MAGIC)?;
        if nic.set_serve_hook(Some(publisher(region.clone(), clock.clone()))) {
            return Ok(Exposer {
                stop: Arc::new(AtomicBool::new(false)),
                thread: None,
                hooked: Some(nic.clone()),
            });
        }
        Self::start_thread(region, clock)
    }

    /// The exposer as a thread of its own (a NIC without serve hooks).
    pub fn start_thread(region: Arc<Mr>, clock: Arc<Clock>) -> Result<Exposer> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        region.store_u64(8, 0)?;
        region.store_u64(24, CLOCK_MAGIC)?;
        region.store_u64(0, clock.now() as u64)?;
        // Started means running: the thread has its name and polls for
        // requests before start() returns.
        let (up, started) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("patronus-time".into())
            .spawn(move || {
                let _ = up.send(());
                // The region starts zeroed: a request that landed before
                // this thread started is still seen as new.
                let mut seen = 0u64;
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(1));
                    let req = region.load_u64(16).unwrap_or(seen);
                    if req == seen {
                        continue;
                    }
                    seen = req;
                    let end = Instant::now() + BURST;
                    let mut i = 0u32;
                    loop {
                        let _ = region.store_u64(0, clock.now() as u64);
                        // Share the core (this machine may have two); the
                        // readers' windows do not depend on how often we run.
                        std::thread::yield_now();
                        i = i.wrapping_add(1);
                        if i % 64 == 0 {
                            if Instant::now() >= end || s.load(Ordering::Relaxed) {
                                break;
                            }
                            // Requests that arrived during the burst are
                            // served by it.
                            seen = region.load_u64(16).unwrap_or(seen);
                        }
                    }
                }
            })
            .map_err(|e| Error::io("spawn the clock exposer", e))?;
        let _ = started.recv_timeout(Duration::from_secs(5));
        Ok(Exposer {
            stop,
            thread: Some(thread),
            hooked: None,
        })
    }
}

impl Drop for Exposer {
    fn drop(&mut self) {
        if let Some(nic) = self.hooked.take() {
            nic.set_serve_hook(None);
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Synchronises a node's [`Clock`] with the parent over a dedicated QP.
pub struct TimeSyncer {
    qp: Arc<dyn Qp>,
    remote: QpEndpoint,
    cq: Arc<dyn Cq>,
    buf: Arc<Mr>,
    parent_addr: u64,
    parent_rkey: ParentKeys,
    clock: Arc<Clock>,
    floor_ns: i64,
    timeout: Duration,
}

/// The parent's keys for its time area: `read` opens the ClockInfo words
/// for READ only; `request` opens only the request word, for atomics. No
/// peer can write the parent's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParentKeys {
    /// READ of the 32-byte ClockInfo at offset 0.
    pub read: u32,
    /// FAA of the request word (offset 16).
    pub request: u32,
}

/// Offset of the request word in the ClockInfo.
pub const REQUEST_WORD: u64 = 16;

impl TimeSyncer {
    /// A syncer reading the parent's ClockInfo at `parent_addr` with
    /// `parent_rkey` through `qp` (completions on `cq`), landing reads in
    /// `buf` (at least 32 bytes). `floor_ns` is the smallest epsilon.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        qp: Arc<dyn Qp>,
        remote: QpEndpoint,
        cq: Arc<dyn Cq>,
        buf: Arc<Mr>,
        parent_addr: u64,
        parent_rkey: ParentKeys,
        clock: Arc<Clock>,
        floor_ns: i64,
        timeout: Duration,
    ) -> TimeSyncer {
        TimeSyncer {
            qp,
            remote,
            cq,
            buf,
            parent_addr,
            parent_rkey,
            clock,
            floor_ns,
            timeout,
        }
    }

    /// Posts `op` and waits for it. A failure other than a timeout (a
    /// completion error, a QP not ready: on a loaded host a start-up's
    /// first reads can meet either) recovers the QP in place and tries
    /// again until the syncer's timeout; a timeout (the parent did not
    /// answer for all of it) is returned at once.
    fn post_wait(&self, op: WrOp) -> Result<()> {
        let t0 = Instant::now();
        loop {
            let r = self.post_wait_once(op);
            let Err(e) = r else {
                return Ok(());
            };
            // Recover the QP in place so the next attempt can succeed once
            // the parent is reachable again.
            let _ = self.qp.reset();
            let mut wc = [Wc::default(); 8];
            while self.cq.poll(&mut wc) > 0 {}
            let _ = self.qp.connect(&self.remote);
            if matches!(e, Error::Timeout(_)) || t0.elapsed() >= self.timeout {
                return Err(e);
            }
            tracing::debug!("time sync: retrying after {e}");
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    fn post_wait_once(&self, op: WrOp) -> Result<()> {
        self.qp.post_send(&[SendWr {
            wr_id: 7,
            op,
            signaled: true,
        }])?;
        let mut wc = [Wc::default(); 1];
        let t0 = Instant::now();
        loop {
            if self.cq.poll(&mut wc) == 1 {
                if wc[0].status != WcStatus::Success {
                    return Err(Error::Invalid(format!(
                        "time sync: reading the parent's clock failed with {:?}",
                        wc[0].status
                    )));
                }
                return Ok(());
            }
            let waited = t0.elapsed();
            if waited > self.timeout {
                return Err(Error::Timeout(format!(
                    "time sync: the parent did not answer within {:?}",
                    self.timeout
                )));
            }
            // A round trip answered in microseconds is a sample worth
            // having; past that the responder is off its core (perhaps
            // this one): give it the core rather than spin out our slice.
            if waited < Duration::from_micros(20) {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Changes how long one synchronisation may take (periodic re-syncs use
    /// a short one so that shutting a node down never waits long).
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    /// How long one synchronisation may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn request(&self) -> Result<()> {
        self.post_wait(WrOp::Faa {
            local: Sge {
                lkey: self.buf.lkey(),
                offset: 0,
                len: 8,
            },
            raddr: self.parent_addr + REQUEST_WORD,
            rkey: self.parent_rkey.request,
            add: 1,
        })
    }

    fn read(&self) -> Result<(i64, i64, ClockInfo)> {
        let t0 = monotonic_ns();
        self.post_wait(WrOp::Read {
            local: Sge {
                lkey: self.buf.lkey(),
                offset: 0,
                len: CLOCK_INFO_SIZE as u32,
            },
            raddr: self.parent_addr,
            rkey: self.parent_rkey.read,
        })?;
        let t1 = monotonic_ns();
        let mut b = [0u8; 32];
        self.buf.read(0, &mut b)?;
        Ok((t0, t1, ClockInfo::decode(&b)))
    }

    /// One synchronisation: [`TimeSyncer::measure`], then applies the
    /// estimate, widening the clock's epsilon first when the new bound is
    /// wider (so that no reader ever sees the new offset with the old,
    /// narrower bound). Returns (offset, eps).
    pub fn sync_once(&self, samples: usize) -> Result<(i64, i64)> {
        let (offset, eps) = self.measure(samples)?;
        if eps > self.clock.epsilon() {
            self.clock.set_epsilon(eps);
        }
        self.clock.set_offset(offset);
        Ok((offset, eps))
    }

    /// Asks the parent to publish, takes `samples` fresh timed reads and
    /// returns the best estimate (offset, eps) without applying it.
    pub fn measure(&self, samples: usize) -> Result<(i64, i64)> {
        self.sample(samples, Duration::ZERO, 0, false)
    }

    /// As [`TimeSyncer::measure`], then keeps sampling for up to `patience`
    /// (from the start) while the narrowest bracket is wider than `good_ns`:
    /// on a loaded host most brackets hold a preemption of the reader or of
    /// a NIC thread, and the minimum filter needs one that holds none.
    /// The reader spins between reads here (see the module docs); the
    /// periodic re-sync's [`TimeSyncer::measure`] yields instead, so that a
    /// re-sync every few milliseconds on a loaded host does not keep a core
    /// busy (its wide brackets are not adopted: the estimate keeps the
    /// narrower interval).
    pub fn measure_until(
        &self,
        samples: usize,
        patience: Duration,
        good_ns: i64,
    ) -> Result<(i64, i64)> {
        self.sample(samples, patience, good_ns, true)
    }

    fn sample(
        &self,
        samples: usize,
        patience: Duration,
        good_ns: i64,
        spin: bool,
    ) -> Result<(i64, i64)> {
        let t0 = Instant::now();
        // The previous read: when it was posted and what it saw.
        let mut prev: Option<(i64, i64)> = None;
        let mut best: Option<SyncSample> = None;
        let mut got = 0;
        // When the last (re)quest was made; a burst can end (or be missed)
        // before enough samples arrive, so stale reads re-request.
        let mut asked: Option<Instant> = None;
        // Local time just before the last request was posted.
        let mut requested: Option<i64> = None;
        let burst_ns = BURST.as_nanos() as i64;
        let more = |got: usize, best: &Option<SyncSample>| {
            got < samples.max(1)
                || (t0.elapsed() < patience && best.is_none_or(|b| b.hi - b.lo > good_ns))
        };
        while more(got, &best) {
            if t0.elapsed() > self.timeout {
                return Err(Error::Timeout(format!(
                    "time sync: the parent's clock did not advance within {:?} (is the time parent node alive?)",
                    self.timeout
                )));
            }
            if asked.is_none_or(|a| a.elapsed() > Duration::from_millis(5)) {
                let at = monotonic_ns();
                self.request()?;
                requested = Some(at);
                asked = Some(Instant::now());
            }
            let (t0, t1, info) = self.read()?;
            if info.magic != CLOCK_MAGIC {
                prev = None;
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            // A parent that publishes as it serves: while the burst our last
            // request started is on (it lasts BURST from when the parent
            // saw the request, which it did before serving this READ; half
            // of it leaves room for the clocks' rates), this READ's value
            // was read from the parent's clock after the READ was posted
            // and before it completed. The bracket is this READ alone, so
            // what happens between reads (a yield, a preemption) is in no
            // bracket: the reader yields between them.
            if info.flags & AT_SERVE != 0
                && requested.is_some_and(|r| t1.saturating_sub(r) < burst_ns / 2)
            {
                prev = None;
                got += 1;
                let s = SyncSample {
                    lo: t0,
                    hi: t1,
                    parent_ns: info.ns,
                };
                if s.estimate().is_some() && best.is_none_or(|b| s.hi - s.lo < b.hi - b.lo) {
                    best = Some(s);
                }
                std::thread::yield_now();
                continue;
            }
            let last = prev.replace((t0, info.ns));
            // Fresh only when the value changed since the previous read:
            // then it was published inside [previous t0, this t1].
            // A stale read is followed at once by the next: the bracket of
            // the sample that sees the change starts at this read's post,
            // so a yield here would put a yield (on a loaded host, another
            // thread's whole slice) inside every bracket. Spinning leaves
            // only involuntary preemptions inside, which the minimum
            // filter drops. The loop is bounded by the timeout, and the
            // exposer's burst by its own clock.
            let Some((lo, seen)) = last.filter(|&(_, seen)| seen != info.ns) else {
                if spin {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
                continue;
            };
            let _ = seen;
            asked = Some(Instant::now());
            got += 1;
            let s = SyncSample {
                lo,
                hi: t1,
                parent_ns: info.ns,
            };
            // An impossible sample (a clock value whose offset does not fit
            // 64 bits) is never adopted.
            if s.estimate().is_none() {
                continue;
            }
            if best.is_none_or(|b| s.hi - s.lo < b.hi - b.lo) {
                best = Some(s);
            }
        }
        tracing::debug!(
            samples = got,
            took = ?t0.elapsed(),
            narrowest_ns = best.map(|b| b.hi - b.lo),
            "time sync measured"
        );
        let (offset, eps) = best
            .and_then(|b| b.estimate())
            .ok_or_else(|| Error::Invalid("time sync: no usable sample".into()))?;
        Ok((offset, eps.max(self.floor_ns)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_brackets_the_truth() {
        // Parent is 5 ms ahead; its value was published somewhere in a
        // 4 us local window: whatever the instant, the truth is within eps.
        for at in [1_000_000i64, 1_001_000, 1_004_000] {
            let s = SyncSample {
                lo: 1_000_000,
                hi: 1_004_000,
                parent_ns: at + 5_000_000,
            };
            let (off, eps) = s.estimate().unwrap();
            assert!((off - 5_000_000).abs() <= eps, "{off} {eps}");
            assert!(eps >= 2_000);
        }
    }

    #[test]
    fn impossible_samples_are_rejected_not_wrapped() {
        let s = |lo, hi, parent_ns| SyncSample { lo, hi, parent_ns };
        assert_eq!(s(1_000, 1_000, i64::MIN).estimate(), None);
        assert_eq!(s(-5, i64::MAX, 0).estimate(), None, "width overflows");
        assert_eq!(
            s(10, 5, 0).estimate(),
            None,
            "bracket ends before it starts"
        );
        assert!(s(0, 10, i64::MAX).estimate().is_some());
    }

    #[test]
    fn decode_is_little_endian() {
        let mut b = [0u8; 32];
        b[0..8].copy_from_slice(&42i64.to_le_bytes());
        b[24..32].copy_from_slice(&CLOCK_MAGIC.to_le_bytes());
        let c = ClockInfo::decode(&b);
        assert_eq!(c.ns, 42);
        assert_eq!(c.magic, CLOCK_MAGIC);
    }
}
