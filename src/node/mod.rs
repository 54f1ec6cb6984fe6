//! `Patronus`: one process's membership in a cluster.
//!
//! Construction opens the NIC, allocates and registers the node's region,
//! takes a node id from the keeper, publishes the region's [`NodeMemory`],
//! builds the cluster-level QP mesh (`mesh.rs`) and synchronises time
//! (`time.rs`). It then holds explicit resources for each role:
//! [`ClientShared`] for client threads, [`DirShared`] for directories, and
//! the keeper's run protocol ([`Run`]) that tells a serving directory when
//! to stop. `register_client_thread` / `register_server_thread` hand the
//! pre-connected resources to the calling thread. Nothing below this
//! module imports it.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::client::ClientShared;
use crate::cluster::liveness::{Heartbeat, Liveness};
use crate::cluster::Run;
use crate::fabric::{Access, Mr, Nic, Qp, QpEndpoint};
use crate::lease::table::ConflictLocks;
use crate::lease::{Layout, NodeMemory};
use crate::server::{DirShared, DirSlot, ServeControl};
use crate::time::Clock;
use crate::{Error, Result};

mod mesh;
mod time;

pub use crate::client::{ClientThread, Lease};
pub use crate::config::Config;
pub use crate::lease::pr::SIZE as PR_SIZE;
pub use crate::lease::pr::WORD as PR_WORD;
pub use crate::lease::TIME_AREA;
pub use crate::server::Directory;

/// A node of a Patronus cluster.
pub struct Patronus {
    cfg: Config,
    node_id: u16,
    region: Arc<Mr>,
    layout: Layout,
    clock: Arc<Clock>,
    run: Arc<Run>,
    clients: Arc<ClientShared>,
    dir_shared: Arc<DirShared>,
    dirs: Mutex<Vec<Option<DirSlot>>>,
    control: Arc<NodeControl>,
    _heartbeat: Heartbeat,
    _time: time::TimeThreads,
    /// The clock-read QPs towards every peer: peers' re-syncs READ this
    /// node's clock through them for the node's whole life.
    _time_qps: Vec<Option<(Arc<dyn Qp>, QpEndpoint)>>,
    _keys: RegionKeys,
    nic: Arc<dyn Nic>,
}

/// The narrow keys a node registers over its region for peers: read-only
/// clock words, the atomic-only request word, and (only if the node opts
/// in) the universal key over the lease and allocation buffers. Never a key
/// over the protection regions.
struct RegionKeys {
    clock: Arc<Mr>,
    request: Arc<Mr>,
    universal: Option<Arc<Mr>>,
}

impl RegionKeys {
    fn register(
        nic: &Arc<dyn Nic>,
        region: &Arc<Mr>,
        layout: &Layout,
        universal: bool,
    ) -> Result<RegionKeys> {
        use crate::time::{CLOCK_INFO_SIZE, REQUEST_WORD};
        let clock = nic.reg_sub_mr(region, 0, CLOCK_INFO_SIZE, Access::REMOTE_READ)?;
        let request = nic.reg_sub_mr(region, REQUEST_WORD, 8, Access::REMOTE_ATOMIC)?;
        let universal = if universal {
            tracing::warn!(
                "universal rkey enabled: any client reaches the lease and allocation buffers \
                 without a lease (an unprotected baseline for benchmarks)"
            );
            Some(nic.reg_sub_mr(
                region,
                layout.internal,
                layout.lease + layout.alloc,
                Access::WRITE_WINDOW,
            )?)
        } else {
            None
        };
        Ok(RegionKeys {
            clock,
            request,
            universal,
        })
    }
}

/// The run protocol as a directory sees it: a node with no client thread
/// registered counts as finished by serving; serving ends once every node
/// finished.
struct NodeControl {
    run: Arc<Run>,
    clients: Arc<ClientShared>,
    liveness: Liveness,
}

impl ServeControl for NodeControl {
    /// Every node finished: Ok(true). Every other node finished or died
    /// (its heartbeat stopped), some died: `Error::NodesDied` naming them.
    fn done(&self, key: u64) -> Result<bool> {
        if !self.clients.has_client_threads() {
            self.run.finished(key)?;
        }
        if self.run.should_exit(key) {
            return Ok(true);
        }
        match self.liveness.all_others_gone(key)? {
            None => Ok(false),
            Some(dead) => Err(Error::NodesDied(format!(
                "node(s) {dead:?} of {} stopped beating (killed, crashed or cut off from the keeper); their leases are revoked",
                self.run.machine_nr()
            ))),
        }
    }
}

fn check(cfg: &Config) -> Result<()> {
    if cfg.machine_nr == 0 || cfg.dir_nr == 0 || cfg.client_threads == 0 {
        return Err(Error::Invalid(format!(
            "machine_nr {}, dir_nr {}, client_threads {} must all be positive",
            cfg.machine_nr, cfg.dir_nr, cfg.client_threads
        )));
    }
    if cfg.cluster.is_empty()
        || cfg.cluster.len() > 64
        || cfg
            .cluster
            .bytes()
            .any(|b| b <= b' ' || b == b'/' || b == 0x7f)
    {
        return Err(Error::Invalid(format!(
            "cluster name {:?}: 1 to 64 characters without spaces, '/' or control characters",
            cfg.cluster
        )));
    }
    if cfg.time_parent_node_id >= cfg.machine_nr {
        return Err(Error::Invalid(format!(
            "time_parent_node_id {} is not a node of a {}-node cluster",
            cfg.time_parent_node_id, cfg.machine_nr
        )));
    }
    Ok(())
}

impl Patronus {
    /// Joins (or forms) the cluster described by `cfg`.
    pub fn new(cfg: Config) -> Result<Patronus> {
        check(&cfg)?;
        // The NIC first: a missing RDMA device fails here, before this node
        // joins (and counts in) the cluster.
        let nic: Arc<dyn Nic> = crate::fabric::open_nic_with(
            &cfg.fabric,
            &cfg.listen_addr,
            (cfg.dir_nr as u32 * cfg.leases_per_dir * 2 + 4096).max(1 << 14),
            !cfg.soft_windows_die_on_reset,
        )?;
        let keeper = crate::cluster::open(cfg.keeper.as_deref(), &cfg.cluster, cfg.rpc_timeout)?;
        let t = cfg.rpc_timeout.max(Duration::from_secs(10));
        // Node ids: the n-th node ever to join this cluster name is node
        // (n-1) % machine_nr of run (n-1) / machine_nr, and every key of the
        // run lives under that run's generation, so the next run needs no
        // memcached restart and never sees this run's keys.
        let joined = keeper.incr(&format!("patronus/{}/joined", cfg.cluster))? - 1;
        let node_id = (joined % cfg.machine_nr as u64) as u16;
        let prefix = format!(
            "patronus/{}/{}",
            cfg.cluster,
            joined / cfg.machine_nr as u64
        );
        tracing::info!(node_id, prefix, "joined cluster");
        let run = Arc::new(Run::new(keeper, prefix, cfg.machine_nr, node_id));

        let pd = nic.alloc_pd()?;
        let layout = cfg.layout();
        // The region has no remote rights of its own: its key opens nothing
        // remotely. Peers reach it through windows bound to one connection,
        // and through the narrow keys below.
        let region = nic.alloc_mr(
            pd,
            layout.total() as usize,
            Access(Access::LOCAL_WRITE.0 | Access::MW_BIND.0),
        )?;
        let keys = RegionKeys::register(&nic, &region, &layout, cfg.allow_universal_rkey)?;
        let me = NodeMemory {
            region_addr: region.addr(),
            region_rkey: keys.universal.as_ref().map_or(0, |m| m.rkey()),
            clock_rkey: keys.clock.rkey(),
            request_rkey: keys.request.rkey(),
            layout,
        };
        run.put(&format!("info/{node_id}"), me.encode().as_bytes())?;
        let m = mesh::build(&cfg, node_id, &nic, pd, &run, t).map_err(|e| join_hint(&cfg, e))?;
        let mut peers = Vec::with_capacity(cfg.machine_nr as usize);
        for n in 0..cfg.machine_nr {
            let info = run
                .get_wait(&format!("info/{n}"), t)
                .map_err(|e| join_hint(&cfg, e))?;
            let s = String::from_utf8_lossy(&info);
            peers.push(NodeMemory::decode(&s).ok_or_else(|| {
                Error::Invalid(format!(
                    "node {n} published an unreadable memory record {s:?}"
                ))
            })?);
        }
        run.barrier("connected", t)
            .map_err(|e| join_hint(&cfg, e))?;
        let clock = Arc::new(Clock::new(cfg.epsilon_ns));
        let time = time::sync_time(time::TimeSetup {
            cfg: &cfg,
            node_id,
            nic: &nic,
            pd,
            region: &region,
            peers: &peers,
            run: &run,
            clock: &clock,
            qps: &m.time_qps,
            cq: &m.time_cq,
            timeout: t,
        })?;
        let clients = Arc::new(ClientShared {
            cfg: cfg.clone(),
            node_id,
            nic: nic.clone(),
            pd,
            peers,
            clock: clock.clone(),
            slots: Mutex::new(m.clients.into_iter().map(Some).collect()),
        });
        let dir_shared = Arc::new(DirShared {
            cfg: cfg.clone(),
            node_id,
            nic: nic.clone(),
            pd,
            region: region.clone(),
            layout,
            locks: ConflictLocks::default(),
            next_gen: AtomicU64::new(1),
            clock: clock.clone(),
        });
        // Every second, through the heartbeat: announce this node's epsilon
        // and take up the largest of the others'.
        let heartbeat = if cfg.machine_nr > 1 && !cfg.simplify {
            let (r, c, n) = (run.clone(), clock.clone(), cfg.machine_nr);
            let mut last = clock.local_epsilon();
            Heartbeat::with_chore(
                run.clone(),
                5,
                Box::new(move || {
                    if let Err(e) = time::agree_epsilon(&r, &c, n, &mut last) {
                        tracing::debug!("epsilon agreement: {e}");
                    }
                }),
            )?
        } else {
            Heartbeat::start(run.clone())?
        };
        let control = Arc::new(NodeControl {
            run: run.clone(),
            clients: clients.clone(),
            liveness: Liveness::new(run.clone(), cfg.peer_dead_after),
        });
        Ok(Patronus {
            cfg,
            node_id,
            region,
            layout,
            clock,
            run,
            clients,
            dir_shared,
            dirs: Mutex::new(m.dirs.into_iter().map(Some).collect()),
            control,
            _heartbeat: heartbeat,
            _time: time,
            _time_qps: m.time_qps,
            _keys: keys,
            nic,
        })
    }

    /// This node's id.
    pub fn get_node_id(&self) -> u16 {
        self.node_id
    }

    /// Synchronised time in ns (PatronusTime).
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// The cluster's clock uncertainty in ns (largest measured, at least
    /// `Config::epsilon_ns`).
    pub fn epsilon(&self) -> i64 {
        self.clock.epsilon()
    }

    /// This node's clock offset against the time parent, in ns.
    pub fn clock_offset(&self) -> i64 {
        self.clock.offset()
    }

    /// The node's clock (comparisons with epsilon).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Takes a client thread slot: its QPs towards every directory.
    pub fn register_client_thread(&self) -> Result<ClientThread> {
        self.clients.register()
    }

    /// Takes a directory: the server thread that serves its RPCs.
    pub fn register_server_thread(&self) -> Result<Directory> {
        let (i, slot) = crate::client::take_free(&self.dirs).ok_or_else(|| {
            Error::NoMem(format!(
                "all {} directories have a server thread (Config::dir_nr)",
                self.cfg.dir_nr
            ))
        })?;
        Directory::new(
            self.dir_shared.clone(),
            self.control.clone(),
            i as u16,
            slot,
        )
    }

    /// The lease buffer's size (it starts at buffer offset 0).
    pub fn lease_buffer_size(&self) -> u64 {
        self.layout.lease
    }

    /// Reads `len` bytes of this node's server buffer at buffer offset `off`
    /// (the memory node's own view of its memory).
    pub fn buffer_read(&self, off: u64, dst: &mut [u8]) -> Result<()> {
        let at = self.layout.region(crate::lease::BufOff(off));
        self.region.read(at.0, dst).map_err(Error::from)
    }

    /// Writes this node's server buffer at buffer offset `off`.
    pub fn buffer_write(&self, off: u64, src: &[u8]) -> Result<()> {
        let at = self.layout.region(crate::lease::BufOff(off));
        self.region.write(at.0, src).map_err(Error::from)
    }

    /// The node's server buffer (lease, alloc, reserved parts in that
    /// order) as the memory node's own pointer and length. Valid while the
    /// node lives; remote clients reach it only through leases.
    pub fn server_buffer(&self) -> (*mut u8, u64) {
        let base = self
            .region
            .as_ptr()
            .wrapping_add(self.layout.internal as usize);
        (base, self.layout.buffer())
    }

    /// The leased object's GlobalAddress parts (node, buffer offset),
    /// converted with its memory node's published layout.
    pub fn gaddr_of(&self, lease: &Lease) -> (u16, u64) {
        let off = self
            .clients
            .peers
            .get(lease.node as usize)
            .map_or(0, |p| lease.buf_off(&p.layout).0);
        (lease.node, off)
    }

    /// The NIC address and key of this node's whole registered region. The
    /// region has no remote rights: the key opens nothing remotely. Exposed
    /// for hostile-client tests, which try it.
    #[doc(hidden)]
    pub fn region_key(&self) -> (u64, u32) {
        (self.region.addr(), self.region.rkey())
    }

    /// This node's NIC. Exposed for fault tests, which stall its
    /// responder through a serve hook ([`Nic::set_serve_hook`]).
    #[doc(hidden)]
    pub fn nic(&self) -> &Arc<dyn Nic> {
        &self.nic
    }

    /// What this node published about its memory (keys and layout).
    pub fn memory(&self) -> NodeMemory {
        self.clients.peers[self.node_id as usize]
    }

    /// The node's layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// This node's configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Marks this node finished for `key` and tells every node. Once per
    /// node and key: repeated calls are no-ops.
    pub fn finished(&self, key: u64) -> Result<()> {
        self.run.finished(key)
    }

    /// Stores `val` under the application key `key` (keeper namespace of
    /// this cluster run).
    pub fn put(&self, key: &str, val: &[u8]) -> Result<()> {
        self.run.keeper().put(&self.run.user_key(key)?, val)
    }

    /// Reads application key `key`, waiting until some node put it (at most
    /// `Config::keeper_timeout`).
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.run
            .keeper()
            .get_wait(&self.run.user_key(key)?, self.cfg.keeper_timeout)
    }

    /// Reads application key `key` if present.
    pub fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.run.keeper().try_get(&self.run.user_key(key)?)
    }

    /// Waits until every node of the cluster reached barrier `key`.
    pub fn keeper_barrier(&self, key: &str) -> Result<()> {
        self.keeper_barrier_n(key, self.cfg.machine_nr as u64)
    }

    /// Waits until `participants` nodes reached barrier `key` (e.g. only
    /// the client nodes). Reusable.
    pub fn keeper_barrier_n(&self, key: &str, participants: u64) -> Result<()> {
        self.run.keeper().barrier(
            &self.run.user_key(key)?,
            participants.max(1),
            self.cfg.keeper_timeout,
        )
    }

    /// True once every node called `finished(key)`.
    pub fn should_exit(&self, key: u64) -> bool {
        self.run.should_exit(key)
    }
}

/// A join that timed out with the in-process keeper cannot have worked
/// unless every node is created in this process: say so, and name the way
/// to join nodes of other processes.
fn join_hint(cfg: &Config, e: Error) -> Error {
    match e {
        Error::Timeout(m) if cfg.keeper.is_none() && cfg.machine_nr > 1 => Error::Timeout(format!(
            "{m}: the in-process keeper (no keeper configured) only joins nodes of this \
             process, so all {} nodes must be created here (one per thread); for nodes in \
             other processes or hosts pass a keeper such as memcached://127.0.0.1:11211",
            cfg.machine_nr
        )),
        e => e,
    }
}
