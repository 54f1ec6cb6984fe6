//! Start-up time synchronisation: the node syncs its clock with the time
//! parent, the cluster agrees on the largest epsilon any node measured
//! (through the keeper), and the exposer (parent) or the periodic re-sync
//! (others) starts.

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::Run;
use crate::config::Config;
use crate::fabric::{Access, Cq, Mr, Nic, Pd, Qp, QpEndpoint};
use crate::lease::NodeMemory;
use crate::time::sync::Exposer;
use crate::time::{Clock, Estimate, ParentKeys, Resync, TimeSyncer};
use crate::{Error, Result};

/// The exposer (time parent) or the periodic re-sync thread (other nodes).
#[derive(Default)]
pub(super) struct TimeThreads {
    _exposer: Option<Exposer>,
    _resync: Option<Resync>,
}

/// What start-up sync needs of the node.
pub(super) struct TimeSetup<'a> {
    pub cfg: &'a Config,
    pub node_id: u16,
    pub nic: &'a Arc<dyn Nic>,
    pub pd: Pd,
    pub region: &'a Arc<Mr>,
    pub peers: &'a [NodeMemory],
    pub run: &'a Run,
    pub clock: &'a Arc<Clock>,
    /// Clock-read QPs towards every peer (None for this node).
    pub qps: &'a [Option<(Arc<dyn Qp>, QpEndpoint)>],
    pub cq: &'a Arc<dyn Cq>,
    pub timeout: Duration,
}

/// Synchronises the clock with the time parent at start-up, agrees on the
/// cluster epsilon (the largest any node measured) and starts the exposer
/// (parent) or the periodic re-sync (others).
pub(super) fn sync_time(s: TimeSetup<'_>) -> Result<TimeThreads> {
    let cfg = s.cfg;
    let parent = cfg.time_parent_node_id;
    if cfg.simplify || cfg.machine_nr == 1 {
        return Ok(TimeThreads::default());
    }
    let mut out = TimeThreads::default();
    let mut eps = cfg.epsilon_ns;
    let mut syncer = None;
    let mine = crate::time::clock_id().unwrap_or_default();
    s.run
        .put(&format!("time/clock/{}", s.node_id), mine.as_bytes())?;
    let same_clock = || -> Result<bool> {
        if cfg.measured_time_sync || mine.is_empty() {
            return Ok(false);
        }
        let theirs = s.run.get_wait(&format!("time/clock/{parent}"), s.timeout)?;
        Ok(theirs == mine.as_bytes())
    };
    if s.node_id == parent {
        out._exposer = Some(Exposer::start(s.region.clone(), s.clock.clone(), s.nic)?);
    } else if same_clock()? {
        // One kernel clock: the offset is exactly 0 and the uncertainty only
        // what reading it costs; nothing to re-sync.
        tracing::info!(
            node_id = s.node_id,
            parent,
            epsilon_ns = eps,
            "same clock as the time parent (one kernel): offset 0"
        );
    } else {
        let (qp, remote) = s
            .qps
            .get(parent as usize)
            .cloned()
            .flatten()
            .ok_or_else(|| Error::Invalid("no time QP towards the time parent".into()))?;
        let buf = s.nic.alloc_mr(s.pd, 64, Access::LOCAL_WRITE)?;
        let p = &s.peers[parent as usize];
        let ts = TimeSyncer::new(
            qp,
            remote,
            s.cq.clone(),
            buf,
            p.region_addr,
            ParentKeys {
                read: p.clock_rkey,
                request: p.request_rkey,
            },
            s.clock.clone(),
            cfg.epsilon_ns,
            s.timeout,
        );
        let at = crate::fabric::monotonic_ns();
        // Start-up: at least 16 samples, then up to 1 s more (within half
        // the sync timeout) until one bracket is as narrow as an idle
        // host's few read round trips (an idle host stops at 16; under two
        // hogs and a compiler, 250 ms left half the start-ups at 1-2 ms).
        let patience = Duration::from_millis(1000).min(s.timeout / 2);
        let (off, e) = ts.measure_until(16, patience, 20_000)?;
        let est = Estimate::new(off, e, at, cfg.clock_drift_ppm as i64);
        // The bound must last through start-up's agreement and the first
        // re-sync.
        crate::time::resync::apply(s.clock, &est, cfg.epsilon_ns, s.timeout + cfg.time_resync);
        tracing::info!(
            node_id = s.node_id,
            parent,
            offset_ns = off,
            epsilon_ns = s.clock.local_epsilon(),
            "clock synchronised"
        );
        eps = s.clock.local_epsilon();
        syncer = Some((ts, est));
    }
    s.run.put(
        &format!("time/eps/{}", s.node_id),
        eps.to_string().as_bytes(),
    )?;
    s.run.barrier("synced", s.timeout)?;
    s.clock.set_epsilon(eps);
    s.clock
        .set_peer_epsilon(peer_epsilon(s.run, cfg.machine_nr, s.node_id)?);
    if let Some((mut ts, est)) = syncer {
        ts.set_timeout(cfg.rpc_timeout.min(Duration::from_millis(200)));
        out._resync = Some(Resync::start(
            ts,
            s.clock.clone(),
            est,
            cfg.epsilon_ns,
            cfg.time_resync,
        )?);
    }
    Ok(out)
}

/// The largest epsilon the other nodes announce (`time/eps/<node>`).
pub(super) fn peer_epsilon(run: &Run, machine_nr: u16, me: u16) -> Result<i64> {
    let mut eps = 0;
    for n in (0..machine_nr).filter(|&n| n != me) {
        if let Some(v) = run.keeper().try_get(&run.key(&format!("time/eps/{n}")))? {
            eps = eps.max(String::from_utf8_lossy(&v).parse::<i64>().unwrap_or(0));
        }
    }
    Ok(eps)
}

/// Announces this node's own epsilon when it changed since the last
/// announcement, and takes up the largest the others announce: the
/// cluster shares one bound (run every second from the heartbeat).
pub(super) fn agree_epsilon(
    run: &Run,
    clock: &Clock,
    machine_nr: u16,
    last: &mut i64,
) -> Result<()> {
    let mine = clock.local_epsilon();
    if mine != *last {
        run.put(
            &format!("time/eps/{}", run.node_id()),
            mine.to_string().as_bytes(),
        )?;
        *last = mine;
    }
    clock.set_peer_epsilon(peer_epsilon(run, machine_nr, run.node_id())?);
    Ok(())
}
