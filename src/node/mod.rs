//! `Patronus`: one process's membership in a cluster.
//!
//! Construction opens the NIC, allocates and registers the node's buffer,
//! takes a node id from the keeper, creates a full mesh of QPs (for every
//! peer node, each local client thread slot gets an RPC QP and a data QP
//! towards every directory; each local directory gets the matching QPs
//! towards every client thread slot), exchanges endpoints through the keeper
//! and connects them. `register_client_thread` / `register_server_thread`
//! then hand those pre-connected resources to the calling thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cluster::Keeper;
use crate::fabric::msg::Messenger;
use crate::fabric::{Access, Cq, Mr, Nic, Pd, Qp, QpCap, QpEndpoint};
use crate::time::sync::Exposer;
use crate::time::{Clock, TimeSyncer};
use crate::{Error, Result};

pub use crate::client::{ClientThread, Lease};
pub use crate::server::Directory;

/// Size of one protection region.
pub const PR_SIZE: u64 = 40;
/// Offset of the extension word inside a protection region.
pub const PR_WORD: u64 = 24;
/// Bytes of the time-sync area at region offset 0.
pub const TIME_AREA: u64 = 4096;

/// Node configuration (the `patronus_config_t` fields plus runtime shape).
#[derive(Clone, Debug)]
pub struct Config {
    /// Nodes in the cluster; start-up waits for all of them.
    pub machine_nr: u16,
    /// Directories (server threads) per node.
    pub dir_nr: u16,
    /// Client thread slots per node.
    pub client_threads: u16,
    /// Lease buffer bytes.
    pub lease_buffer_size: u64,
    /// Allocation buffer bytes.
    pub alloc_buffer_size: u64,
    /// Application-reserved bytes.
    pub reserved_buffer_size: u64,
    /// Leases (and protection regions, and windows) per directory.
    pub leases_per_dir: u32,
    /// Node whose clock is the cluster's.
    pub time_parent_node_id: u16,
    /// "shm" or "tcp" (soft NIC links), or "verbs" (RDMA NIC; needs the
    /// `verbs` feature).
    pub fabric: String,
    /// None: in-process keeper; "memcached://HOST:PORT" otherwise.
    pub keeper: Option<String>,
    /// tcp listener address.
    pub listen_addr: String,
    /// Key namespace.
    pub cluster: String,
    /// Skip time sync.
    pub simplify: bool,
    /// Timeout of every RPC and of start-up rendezvous.
    pub rpc_timeout: Duration,
    /// Smallest clock uncertainty added to local expiry checks (the
    /// measured one is used when larger).
    pub epsilon_ns: i64,
    /// How often non-parent nodes re-synchronise their clock.
    pub time_resync: Duration,
    /// How long `get` and barriers wait for other nodes.
    pub keeper_timeout: Duration,
    /// Fault injection: the original's "magic MW" quirk (PATRONUS.md §4.10).
    /// When set, every bind whose per-connection index is 682 mod 1024 fails
    /// its acquire with `AcquireStatus::MagicMwErr`, and the client retries
    /// transparently. Off by default: it only exists to test retry paths.
    pub magic_mw_fault: bool,
    /// Default slab classes of each directory's allocator: (block bytes,
    /// ratio of the directory's alloc-buffer slice).
    pub alloc_classes: Vec<(u64, u32)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            machine_nr: 1,
            dir_nr: 1,
            client_threads: 4,
            lease_buffer_size: 16 << 20,
            alloc_buffer_size: 16 << 20,
            reserved_buffer_size: 4 << 20,
            leases_per_dir: 4096,
            time_parent_node_id: 0,
            fabric: std::env::var("PATRONUS_FABRIC").unwrap_or_else(|_| "shm".into()),
            keeper: std::env::var("PATRONUS_KEEPER").ok(),
            listen_addr: "127.0.0.1:0".into(),
            cluster: "default".into(),
            simplify: false,
            rpc_timeout: Duration::from_secs(2),
            epsilon_ns: 10_000,
            time_resync: Duration::from_secs(1),
            keeper_timeout: Duration::from_secs(60),
            magic_mw_fault: false,
            alloc_classes: vec![(64, 1), (4096, 1), (2 << 20, 2)],
        }
    }
}

/// Memory layout of a node's registered buffer (offsets are dsm offsets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Bytes before the server buffer (protection regions of all dirs).
    pub internal: u64,
    /// Lease buffer bytes.
    pub lease: u64,
    /// Allocation buffer bytes.
    pub alloc: u64,
    /// Reserved buffer bytes.
    pub reserved: u64,
    /// Protection regions per directory.
    pub prs_per_dir: u64,
}

impl Layout {
    fn new(c: &Config) -> Layout {
        let prs = c.leases_per_dir as u64;
        // [time-sync area 4 KiB][protection regions], rounded to pages.
        let internal = TIME_AREA + (c.dir_nr as u64 * prs * PR_SIZE).next_multiple_of(4096);
        Layout {
            internal,
            lease: c.lease_buffer_size,
            alloc: c.alloc_buffer_size,
            reserved: c.reserved_buffer_size,
            prs_per_dir: prs,
        }
    }
    /// Server buffer bytes (lease + alloc + reserved).
    pub fn buffer(&self) -> u64 {
        self.lease + self.alloc + self.reserved
    }
    /// Whole registered size.
    pub fn total(&self) -> u64 {
        self.internal + self.buffer()
    }
    /// dsm offset of protection region `i` of directory `d`.
    pub fn pr(&self, d: u16, i: u64) -> u64 {
        TIME_AREA + (d as u64 * self.prs_per_dir + i) * PR_SIZE
    }
}

/// What a node publishes about itself.
#[derive(Clone, Debug)]
pub(crate) struct PeerInfo {
    pub region_addr: u64,
    pub region_rkey: u32,
}

pub(crate) struct ClientSlot {
    pub msgr: Messenger,
    pub data: Vec<Arc<dyn Qp>>,
    pub data_remote: Vec<QpEndpoint>,
    pub data_cq: Arc<dyn Cq>,
    /// The thread's registered data buffer (kept across registrations).
    pub buf: Option<Arc<Mr>>,
    /// Last RPC id used on this slot (ids never repeat across threads).
    pub rpc_id: u64,
}

pub(crate) struct DirSlot {
    pub msgr: Messenger,
    pub data: Vec<Arc<dyn Qp>>,
    pub data_remote: Vec<QpEndpoint>,
    pub bind_cq: Arc<dyn Cq>,
}

/// State shared by a node's threads.
pub(crate) struct Shared {
    pub cfg: Config,
    pub node_id: u16,
    pub nic: Arc<dyn Nic>,
    pub pd: Pd,
    pub region: Arc<Mr>,
    pub layout: Layout,
    pub peers: Vec<PeerInfo>,
    pub keeper: Arc<dyn Keeper>,
    /// Keeper namespace of this run.
    pub prefix: String,
    pub clients: Mutex<Vec<Option<ClientSlot>>>,
    pub dirs: Mutex<Vec<Option<DirSlot>>>,
    pub locks: Mutex<std::collections::HashSet<u64>>,
    pub next_gen: AtomicU64,
    pub clock: Arc<Clock>,
    /// Keys this node has called `finished` for.
    pub finished: Mutex<std::collections::HashSet<u64>>,
}

impl Shared {
    /// Synchronised ns (PatronusTime).
    #[inline]
    pub fn now(&self) -> i64 {
        self.clock.now()
    }
    /// Index of (node, dir) in a client slot's QP vectors.
    pub fn client_index(&self, node: u16, dir: u16) -> usize {
        node as usize * self.cfg.dir_nr as usize + dir as usize
    }
    /// Index of (node, thread) in a directory's QP vectors.
    pub fn dir_index(&self, node: u16, thread: u16) -> usize {
        node as usize * self.cfg.client_threads as usize + thread as usize
    }
}

/// A node of a Patronus cluster.
pub struct Patronus {
    pub(crate) sh: Arc<Shared>,
    _time: TimeThreads,
    /// The clock-read QPs towards every peer: peers' re-syncs READ this
    /// node's clock through them for the node's whole life.
    _time_qps: Vec<Option<(Arc<dyn Qp>, QpEndpoint)>>,
    _nic: Arc<dyn Nic>,
}

/// The exposer (time parent) or the periodic re-sync thread (other nodes).
#[derive(Default)]
struct TimeThreads {
    _exposer: Option<Exposer>,
    resync: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

impl Drop for TimeThreads {
    fn drop(&mut self) {
        if let Some((stop, h)) = self.resync.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = h.join();
        }
    }
}

/// Keeper key of this run: `patronus/<cluster>/<generation>/<key>`.
pub(crate) fn k(sh_prefix: &str, key: &str) -> String {
    format!("{sh_prefix}/{key}")
}

impl Patronus {
    /// Joins (or forms) the cluster described by `cfg`.
    pub fn new(cfg: Config) -> Result<Patronus> {
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
        // The NIC first: a missing RDMA device fails here, before this node
        // joins (and counts in) the cluster.
        let nic: Arc<dyn Nic> = crate::fabric::open_nic(
            &cfg.fabric,
            &cfg.listen_addr,
            (cfg.dir_nr as u32 * cfg.leases_per_dir * 2 + 4096).max(1 << 14),
        )?;
        let keeper: Arc<dyn Keeper> =
            crate::cluster::open(cfg.keeper.as_deref(), &cfg.cluster, cfg.rpc_timeout)?;
        let t = cfg.rpc_timeout.max(Duration::from_secs(10));
        if cfg.time_parent_node_id >= cfg.machine_nr {
            return Err(Error::Invalid(format!(
                "time_parent_node_id {} is not a node of a {}-node cluster",
                cfg.time_parent_node_id, cfg.machine_nr
            )));
        }
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
        let pd = nic.alloc_pd()?;
        let layout = Layout::new(&cfg);
        let region = nic.alloc_mr(pd, layout.total() as usize, Access::ALL)?;
        keeper.put(
            &k(&prefix, &format!("info/{node_id}")),
            format!("{} {}", region.addr(), region.rkey()).as_bytes(),
        )?;
        let (m, dn, tn) = (cfg.machine_nr, cfg.dir_nr, cfg.client_threads);
        let cap = QpCap {
            max_send_wr: 512,
            max_recv_wr: 64,
        };
        // Create QPs: client side [slot][(node, dir)] and dir side [dir][(node, thread)].
        let mut cslots = Vec::new();
        let mut my_eps: Vec<Vec<QpEndpoint>> = vec![Vec::new(); m as usize];
        let mut cside = Vec::new();
        for _t in 0..tn {
            let rcq = nic.create_cq(1024)?;
            let dcq = nic.create_cq(1024)?;
            let mut msgr = Messenger::new(&nic, pd, rcq.clone(), (m * dn) as usize, 8, 16)?;
            let mut data = Vec::new();
            let mut rpcs = Vec::new();
            for _ in 0..m * dn {
                let r = nic.create_qp(pd, &rcq, &rcq, cap)?;
                msgr.add_qp(r.clone())?;
                rpcs.push(r);
                data.push(nic.create_qp(pd, &dcq, &dcq, cap)?);
            }
            cside.push((rpcs, data.clone()));
            cslots.push((msgr, data, dcq));
        }
        let mut dslots = Vec::new();
        let mut dside = Vec::new();
        for _d in 0..dn {
            let rcq = nic.create_cq(4096)?;
            let bcq = nic.create_cq(1024)?;
            let mut msgr = Messenger::new(&nic, pd, rcq.clone(), (m * tn) as usize, 8, 64)?;
            let mut data = Vec::new();
            let mut rpcs = Vec::new();
            for _ in 0..m * tn {
                let r = nic.create_qp(pd, &rcq, &rcq, cap)?;
                msgr.add_qp(r.clone())?;
                rpcs.push(r);
                data.push(nic.create_qp(pd, &bcq, &bcq, cap)?);
            }
            dside.push((rpcs, data.clone()));
            dslots.push((msgr, data, bcq));
        }
        // One QP per peer for clock reads (the pair is symmetric; only the
        // side whose peer is the time parent reads through it).
        let time_cq = nic.create_cq(64)?;
        let mut tqs: Vec<Option<Arc<dyn Qp>>> = Vec::new();
        let mut tq_remote: Vec<Option<QpEndpoint>> = vec![None; m as usize];
        for n in 0..m {
            tqs.push(if n == node_id {
                None
            } else {
                Some(nic.create_qp(pd, &time_cq, &time_cq, QpCap::default())?)
            });
        }
        // Endpoints for peer n, in a fixed order both sides compute:
        // client side: for t, for d of n: rpc, data; then dir side: for d, for t of n: rpc, data.
        for (n, eps) in my_eps.iter_mut().enumerate() {
            for (rpcs, data) in &cside {
                for d in 0..dn as usize {
                    let i = n * dn as usize + d;
                    eps.push(rpcs[i].endpoint());
                    eps.push(data[i].endpoint());
                }
            }
            for (rpcs, data) in &dside {
                for t in 0..tn as usize {
                    let i = n * tn as usize + t;
                    eps.push(rpcs[i].endpoint());
                    eps.push(data[i].endpoint());
                }
            }
            if let Some(q) = &tqs[n] {
                eps.push(q.endpoint());
            }
            let mut blob = Vec::new();
            for e in eps.iter() {
                let b = e.encode();
                blob.extend_from_slice(&(b.len() as u32).to_le_bytes());
                blob.extend_from_slice(&b);
            }
            keeper.put(&k(&prefix, &format!("ep/{node_id}/{n}")), &blob)?;
        }
        // Read every peer's endpoints for us and connect.
        let mut peers = Vec::new();
        let mut cremote: Vec<Vec<QpEndpoint>> = vec![vec![]; tn as usize];
        let mut dremote: Vec<Vec<QpEndpoint>> = vec![vec![]; dn as usize];
        for n in 0..m {
            let info = keeper.get_wait(&k(&prefix, &format!("info/{n}")), t)?;
            let s = String::from_utf8_lossy(&info).to_string();
            let mut it = s.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
            peers.push(PeerInfo {
                region_addr: it.next().unwrap_or(0),
                region_rkey: it.next().unwrap_or(0) as u32,
            });
            let blob = keeper.get_wait(&k(&prefix, &format!("ep/{n}/{node_id}")), t)?;
            let eps = decode_eps(&blob)?;
            let mesh = 2 * (tn as usize * dn as usize) * 2;
            let expect = mesh + usize::from(n != node_id);
            if eps.len() != expect {
                return Err(Error::Invalid(format!(
                    "node {n} published {} endpoints, expected {expect}: is the cluster shape the same everywhere?",
                    eps.len()
                )));
            }
            if let Some(q) = &tqs[n as usize] {
                q.connect(&eps[mesh])?;
                tq_remote[n as usize] = Some(eps[mesh].clone());
            }
            let (peer_client, peer_dir) = eps[..mesh].split_at(mesh / 2);
            // Our client slot t, peer's dir d <-> peer's dir side entry (d, t).
            for (ti, (rpcs, data)) in cside.iter().enumerate() {
                for d in 0..dn as usize {
                    let i = n as usize * dn as usize + d;
                    let j = (d * tn as usize + ti) * 2;
                    rpcs[i].connect(&peer_dir[j])?;
                    data[i].connect(&peer_dir[j + 1])?;
                    cremote[ti].push(peer_dir[j + 1].clone());
                }
            }
            // Our dir d, peer's client slot t <-> peer's client side entry (t, d).
            for (di, (rpcs, data)) in dside.iter().enumerate() {
                for ti in 0..tn as usize {
                    let i = n as usize * tn as usize + ti;
                    let j = (ti * dn as usize + di) * 2;
                    rpcs[i].connect(&peer_client[j])?;
                    data[i].connect(&peer_client[j + 1])?;
                    dremote[di].push(peer_client[j + 1].clone());
                }
            }
        }
        keeper.barrier(&k(&prefix, "connected"), m as u64, t)?;
        let clock = Arc::new(Clock::new(cfg.epsilon_ns));
        let tqs: Vec<_> = tqs
            .into_iter()
            .zip(tq_remote)
            .map(|(q, r)| q.zip(r))
            .collect();
        let time = sync_time(
            &cfg, node_id, &nic, pd, &region, &peers, &keeper, &prefix, &clock, &tqs, &time_cq, t,
        )?;
        let clients = cslots
            .into_iter()
            .zip(cremote)
            .map(|((msgr, data, data_cq), data_remote)| {
                Some(ClientSlot {
                    msgr,
                    data,
                    data_remote,
                    data_cq,
                    buf: None,
                    rpc_id: 0,
                })
            })
            .collect();
        let dirs = dslots
            .into_iter()
            .zip(dremote)
            .map(|((msgr, data, bind_cq), data_remote)| {
                Some(DirSlot {
                    msgr,
                    data,
                    data_remote,
                    bind_cq,
                })
            })
            .collect();
        let sh = Arc::new(Shared {
            cfg,
            node_id,
            nic: nic.clone(),
            pd,
            region,
            layout,
            peers,
            keeper,
            prefix,
            clients: Mutex::new(clients),
            dirs: Mutex::new(dirs),
            locks: Mutex::new(Default::default()),
            next_gen: AtomicU64::new(1),
            clock: clock.clone(),
            finished: Mutex::new(Default::default()),
        });
        Ok(Patronus {
            sh,
            _time: time,
            _time_qps: tqs,
            _nic: nic,
        })
    }

    /// This node's id.
    pub fn get_node_id(&self) -> u16 {
        self.sh.node_id
    }

    /// Synchronised time in ns (PatronusTime).
    pub fn now(&self) -> i64 {
        self.sh.now()
    }

    /// The cluster's clock uncertainty in ns (largest measured, at least
    /// `Config::epsilon_ns`).
    pub fn epsilon(&self) -> i64 {
        self.sh.clock.epsilon()
    }

    /// This node's clock offset against the time parent, in ns.
    pub fn clock_offset(&self) -> i64 {
        self.sh.clock.offset()
    }

    /// The node's clock (comparisons with epsilon).
    pub fn clock(&self) -> &crate::time::Clock {
        &self.sh.clock
    }

    /// Takes a client thread slot: its QPs towards every directory.
    pub fn register_client_thread(&self) -> Result<ClientThread> {
        let mut l = self.sh.clients.lock().unwrap_or_else(|e| e.into_inner());
        let (i, slot) = l
            .iter_mut()
            .enumerate()
            .find_map(|(i, s)| s.take().map(|s| (i, s)))
            .ok_or_else(|| {
                Error::NoMem(format!(
                    "all {} client thread slots are taken (Config::client_threads)",
                    self.sh.cfg.client_threads
                ))
            })?;
        drop(l);
        ClientThread::new(self.sh.clone(), i as u16, slot)
    }

    /// Takes a directory: the server thread that serves its RPCs.
    pub fn register_server_thread(&self) -> Result<Directory> {
        let mut l = self.sh.dirs.lock().unwrap_or_else(|e| e.into_inner());
        let (i, slot) = l
            .iter_mut()
            .enumerate()
            .find_map(|(i, s)| s.take().map(|s| (i, s)))
            .ok_or_else(|| {
                Error::NoMem(format!(
                    "all {} directories have a server thread (Config::dir_nr)",
                    self.sh.cfg.dir_nr
                ))
            })?;
        Directory::new(self.sh.clone(), i as u16, slot)
    }

    /// The lease buffer's first byte offset in buffer-offset terms is 0;
    /// this returns its size.
    pub fn lease_buffer_size(&self) -> u64 {
        self.sh.layout.lease
    }

    /// Reads `len` bytes of this node's server buffer at buffer offset `off`
    /// (the memory node's own view of its memory).
    pub fn buffer_read(&self, off: u64, dst: &mut [u8]) -> Result<()> {
        self.sh
            .region
            .read(self.sh.layout.internal + off, dst)
            .map_err(Error::from)
    }

    /// Writes this node's server buffer at buffer offset `off`.
    pub fn buffer_write(&self, off: u64, src: &[u8]) -> Result<()> {
        self.sh
            .region
            .write(self.sh.layout.internal + off, src)
            .map_err(Error::from)
    }

    /// The node's server buffer (lease, alloc, reserved parts in that
    /// order) as the memory node's own pointer and length. Valid while the
    /// node lives; remote clients reach it only through leases.
    pub fn server_buffer(&self) -> (*mut u8, u64) {
        let base = self
            .sh
            .region
            .as_ptr()
            .wrapping_add(self.sh.layout.internal as usize);
        (base, self.sh.layout.buffer())
    }

    /// The node's layout.
    pub fn layout(&self) -> Layout {
        self.sh.layout
    }

    /// This node's configuration.
    pub fn config(&self) -> &Config {
        &self.sh.cfg
    }

    /// Marks this node finished for `key` and tells every node. Once per
    /// node and key: repeated calls are no-ops.
    pub fn finished(&self, key: u64) -> Result<()> {
        finished(&self.sh, key)
    }

    /// Stores `val` under the application key `key` (keeper namespace of
    /// this cluster run).
    pub fn put(&self, key: &str, val: &[u8]) -> Result<()> {
        self.sh.keeper.put(&user_key(&self.sh, key)?, val)
    }

    /// Reads application key `key`, waiting until some node put it (at most
    /// `Config::keeper_timeout`).
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.sh
            .keeper
            .get_wait(&user_key(&self.sh, key)?, self.sh.cfg.keeper_timeout)
    }

    /// Reads application key `key` if present.
    pub fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.sh.keeper.try_get(&user_key(&self.sh, key)?)
    }

    /// Waits until every node of the cluster reached barrier `key`.
    pub fn keeper_barrier(&self, key: &str) -> Result<()> {
        self.keeper_barrier_n(key, self.sh.cfg.machine_nr as u64)
    }

    /// Waits until `participants` nodes reached barrier `key` (e.g. only
    /// the client nodes). Reusable.
    pub fn keeper_barrier_n(&self, key: &str, participants: u64) -> Result<()> {
        self.sh.keeper.barrier(
            &user_key(&self.sh, key)?,
            participants.max(1),
            self.sh.cfg.keeper_timeout,
        )
    }

    /// True once every node called `finished(key)`.
    pub fn should_exit(&self, key: u64) -> bool {
        should_exit(&self.sh, key)
    }
}

fn user_key(sh: &Shared, key: &str) -> Result<String> {
    if key.is_empty() || key.len() > 160 || key.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(Error::Invalid(format!(
            "keeper key {key:?}: 1 to 160 bytes without spaces or control characters"
        )));
    }
    Ok(k(&sh.prefix, &format!("user/{key}")))
}

pub(crate) fn finished(sh: &Shared, key: u64) -> Result<()> {
    if sh
        .finished
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key)
    {
        sh.keeper.incr(&k(&sh.prefix, &format!("finished/{key}")))?;
    }
    Ok(())
}

/// True while some client thread of this node is registered (its slot is
/// taken).
pub(crate) fn has_client_threads(sh: &Shared) -> bool {
    sh.clients
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(Option::is_none)
}

pub(crate) fn should_exit(sh: &Shared, key: u64) -> bool {
    sh.keeper
        .try_get(&k(&sh.prefix, &format!("finished/{key}")))
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.parse::<u64>().ok())
        .map(|n| n >= sh.cfg.machine_nr as u64)
        .unwrap_or(false)
}

/// Synchronises the clock with the time parent at start-up, agrees on the
/// cluster epsilon (the largest any node measured) and starts the exposer
/// (parent) or the periodic re-sync (others).
#[allow(clippy::too_many_arguments)]
fn sync_time(
    cfg: &Config,
    node_id: u16,
    nic: &Arc<dyn Nic>,
    pd: Pd,
    region: &Arc<Mr>,
    peers: &[PeerInfo],
    keeper: &Arc<dyn Keeper>,
    prefix: &str,
    clock: &Arc<Clock>,
    tqs: &[Option<(Arc<dyn Qp>, QpEndpoint)>],
    time_cq: &Arc<dyn Cq>,
    t: Duration,
) -> Result<TimeThreads> {
    let parent = cfg.time_parent_node_id;
    if cfg.simplify || cfg.machine_nr == 1 {
        return Ok(TimeThreads::default());
    }
    let mut out = TimeThreads::default();
    let mut eps = cfg.epsilon_ns;
    let mut syncer = None;
    if node_id == parent {
        out._exposer = Some(Exposer::start(region.clone(), clock.clone())?);
    } else {
        let (qp, remote) = tqs[parent as usize]
            .clone()
            .ok_or_else(|| Error::Invalid("no time QP towards the time parent".into()))?;
        let buf = nic.alloc_mr(pd, 64, Access::LOCAL_WRITE)?;
        let p = &peers[parent as usize];
        let s = TimeSyncer::new(
            qp,
            remote,
            time_cq.clone(),
            buf,
            p.region_addr,
            p.region_rkey,
            clock.clone(),
            cfg.epsilon_ns,
            t,
        );
        let (off, e) = s.sync_once(16)?;
        tracing::info!(
            node_id,
            parent,
            offset_ns = off,
            epsilon_ns = e,
            "clock synchronised"
        );
        eps = e;
        syncer = Some(s);
    }
    keeper.put(
        &k(prefix, &format!("time/eps/{node_id}")),
        eps.to_string().as_bytes(),
    )?;
    keeper.barrier(&k(prefix, "synced"), cfg.machine_nr as u64, t)?;
    for n in 0..cfg.machine_nr {
        let v = keeper.get_wait(&k(prefix, &format!("time/eps/{n}")), t)?;
        let e = String::from_utf8_lossy(&v).parse::<i64>().unwrap_or(0);
        eps = eps.max(e);
    }
    clock.set_epsilon(eps);
    if let Some(mut s) = syncer {
        s.set_timeout(cfg.rpc_timeout.min(Duration::from_millis(200)));
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let period = cfg.time_resync.max(Duration::from_millis(10));
        let clk = clock.clone();
        let h = std::thread::Builder::new()
            .name("patronus-resync".into())
            .spawn(move || {
                let mut wait = period;
                let mut next = std::time::Instant::now() + wait;
                let mut failing = false;
                while !st.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                    if std::time::Instant::now() < next {
                        continue;
                    }
                    let r = s.sync_once(8);
                    clk.note_resync(r.is_ok());
                    match r {
                        Ok((_, e)) => {
                            if e > clk.epsilon() {
                                tracing::warn!(
                                    epsilon_ns = e,
                                    "clock uncertainty grew; widening epsilon"
                                );
                                clk.set_epsilon(e);
                            }
                            if failing {
                                tracing::info!("clock re-sync works again");
                            }
                            failing = false;
                            wait = period;
                        }
                        Err(e) => {
                            // The parent may have left (e.g. a client node
                            // that finished): keep the last offset, back off.
                            if !failing {
                                tracing::warn!(
                                    "clock re-sync failed, keeping the last offset: {e}"
                                );
                            }
                            failing = true;
                            wait = (wait * 2).min(Duration::from_secs(30));
                        }
                    }
                    next = std::time::Instant::now() + wait;
                }
            })
            .map_err(|e| Error::io("spawn the clock re-sync thread", e))?;
        out.resync = Some((stop, h));
    }
    Ok(out)
}

fn decode_eps(b: &[u8]) -> Result<Vec<QpEndpoint>> {
    let mut v = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let n = b
            .get(at..at + 4)
            .map(|x| u32::from_le_bytes(x.try_into().expect("4")) as usize)
            .ok_or_else(|| Error::Invalid("truncated endpoint list".into()))?;
        let e = b
            .get(at + 4..at + 4 + n)
            .ok_or_else(|| Error::Invalid("truncated endpoint".into()))?;
        v.push(QpEndpoint::decode(e)?);
        at += 4 + n;
    }
    Ok(v)
}
