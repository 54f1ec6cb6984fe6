//! A node's configuration: the `patronus_config_t` fields plus the runtime
//! cluster shape. Pure data, read by every layer that needs a setting.

use std::time::Duration;

use crate::lease::quota::Quotas;
use crate::lease::Layout;

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
    /// Bound on the drift between two hosts' monotonic clocks, in parts per
    /// million: a measured offset's uncertainty grows by this much per
    /// second until the next re-sync narrows it (NTP-disciplined clocks
    /// drift by well under 50 ppm; free-running crystals by up to ~100).
    pub clock_drift_ppm: u32,
    /// Synchronise clocks by measurement even between nodes that share one
    /// kernel clock (same boot id and time namespace, where the offset is
    /// exactly 0): for tests of the estimator.
    pub measured_time_sync: bool,
    /// How long `get` and barriers wait for other nodes.
    pub keeper_timeout: Duration,
    /// A node whose heartbeat (through the keeper, every 200 ms) stood
    /// still this long counts as dead: a serving memory node stops waiting
    /// for its `finished` (at least 600 ms).
    pub peer_dead_after: Duration,
    /// Fault injection: the original's "magic MW" quirk (PATRONUS.md §4.10).
    /// When set, every bind whose per-connection index is 682 mod 1024 fails
    /// its acquire with `AcquireStatus::MagicMwErr`, and the client retries
    /// transparently. Off by default: it only exists to test retry paths.
    pub magic_mw_fault: bool,
    /// Default slab classes of each directory's allocator: (block bytes,
    /// ratio of the directory's alloc-buffer slice).
    pub alloc_classes: Vec<(u64, u32)>,
    /// Calls one client thread may have in flight (posted, completion not
    /// polled yet); 0: the default, 64. At most 1 024.
    pub max_inflight: u32,
    /// Live leases one client thread may hold on one directory (0: a
    /// quarter of `leases_per_dir`). Past it an acquire gets `NoMw`.
    pub lease_quota_per_thread: u32,
    /// Live leases one client node may hold on one directory (0: half of
    /// `leases_per_dir`).
    pub lease_quota_per_node: u32,
    /// Bytes one client node may hold allocated on one directory (0: half
    /// the directory's slice of the alloc buffer). Past it an allocation
    /// gets `NoMem`.
    pub alloc_quota_per_node: u64,
    /// Change protection-region words by RDMA CAS through each directory's
    /// loopback QP even where the NIC's atomics are atomic with CPU atomics
    /// (the path a NIC with `IBV_ATOMIC_HCA` scope needs; for tests).
    pub pr_atomics_through_nic: bool,
    /// Publish a whole-buffer key (the original's universal rkey, used by
    /// `RWFlag::USE_UNIVERSAL_RKEY` as the unprotected baseline of
    /// benchmarks). Off by default: with it, any client reaches the lease
    /// and allocation buffers without a lease. Even on, it never covers the
    /// protection regions or the time area.
    pub allow_universal_rkey: bool,
    /// Soft NIC only: behave as a device whose memory windows do not
    /// survive a reset of their QP (`SoftConfig::windows_survive_reset`
    /// off), so QP recovery re-binds the holder's leases with new rkeys.
    /// For tests of that path (verbs: `PATRONUS_RDMA_WINDOWS_SURVIVE_RESET`).
    pub soft_windows_die_on_reset: bool,
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
            clock_drift_ppm: 50,
            measured_time_sync: false,
            keeper_timeout: Duration::from_secs(60),
            peer_dead_after: Duration::from_secs(3),
            magic_mw_fault: false,
            alloc_classes: vec![(64, 1), (4096, 1), (2 << 20, 2)],
            max_inflight: 0,
            lease_quota_per_thread: 0,
            lease_quota_per_node: 0,
            alloc_quota_per_node: 0,
            allow_universal_rkey: false,
            pr_atomics_through_nic: false,
            soft_windows_die_on_reset: false,
        }
    }
}

impl Config {
    /// The per-client limits of each directory (defaults filled in).
    pub fn quotas(&self) -> Quotas {
        let or = |v: u32, d: u32| if v == 0 { d.max(1) } else { v };
        let slice = self.alloc_buffer_size / self.dir_nr.max(1) as u64;
        Quotas {
            threads_per_node: self.client_threads.max(1),
            leases_per_thread: or(self.lease_quota_per_thread, self.leases_per_dir / 4),
            leases_per_node: or(self.lease_quota_per_node, self.leases_per_dir / 2),
            alloc_bytes_per_node: if self.alloc_quota_per_node == 0 {
                (slice / 2).max(1)
            } else {
                self.alloc_quota_per_node
            },
        }
    }

    /// The memory layout a node with this configuration registers.
    pub fn layout(&self) -> Layout {
        Layout::new(
            self.dir_nr,
            self.leases_per_dir as u64,
            self.lease_buffer_size,
            self.alloc_buffer_size,
            self.reserved_buffer_size,
        )
    }
}
