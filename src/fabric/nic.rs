//! The device context: what a backend implements, and how one is opened.

use std::sync::Arc;

#[cfg(feature = "verbs")]
use super::verbs;
use super::{soft, Access, Cq, FabricError, Mr, MwInfo, Pd, Qp, QpCap, Result};

/// What a backend really implements. Tests check these against behaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Backend name ("soft-shm", "soft-tcp", "verbs").
    pub name: String,
    /// Type-2 windows bound to one QP (false: PD-wide type 1).
    pub mw_type2: bool,
    /// 8-byte CAS and FAA.
    pub atomics: bool,
    /// RDMA atomics are atomic with respect to the responder's CPU atomics
    /// too (`IBV_ATOMIC_GLOB`). False (`IBV_ATOMIC_HCA`, every mlx5): only
    /// with respect to other atomics of the same NIC, so a memory node must
    /// change words that clients CAS (protection regions) through the NIC
    /// as well (the directory's loopback QP).
    pub atomics_glob: bool,
    /// Largest READ/WRITE in bytes.
    pub max_msg_size: u64,
    /// Largest SEND in bytes.
    pub max_send_size: u32,
    /// Largest send/receive queue depth.
    pub max_qp_wr: u32,
    /// Memory windows per NIC.
    pub max_mw: u32,
    /// QP access flags can be changed on a connected QP.
    pub modify_qp_access: bool,
    /// MRs can be re-registered with new access.
    pub rereg_mr: bool,
    /// A remote access error also moves the responder's QP to error (RC
    /// semantics on hardware), so recovery must reset both ends of the
    /// connection; the soft NIC keeps the responder's QP ready.
    pub peer_errs_with_requester: bool,
    /// Windows bound to a QP stay bound (same rkeys, same access) across a
    /// [`Qp::reset`] + reconnect of that QP. Where false, recovery of a
    /// connection re-binds its live leases' windows with fresh key tags and
    /// hands the new rkeys to the holder (the directory's admin `QpReset`).
    /// Soft NIC: true unless `SoftConfig::windows_survive_reset` is off;
    /// verbs: see `fabric::verbs` (conservatively false for type-2 windows
    /// unless `PATRONUS_RDMA_WINDOWS_SURVIVE_RESET=1`).
    pub windows_survive_reset: bool,
}

/// A device context (one NIC).
pub trait Nic: Send + Sync {
    /// What this backend implements.
    fn caps(&self) -> &Caps;
    /// Allocates a protection domain.
    fn alloc_pd(&self) -> Result<Pd>;
    /// Allocates `len` bytes of zeroed NIC-owned memory and registers it.
    fn alloc_mr(&self, pd: Pd, len: usize, access: Access) -> Result<Arc<Mr>>;
    /// Registers `[offset, offset+len)` of an existing MR as a new MR with
    /// `access` (the "MR re-registration" competitor).
    fn reg_sub_mr(&self, parent: &Mr, offset: u64, len: u64, access: Access) -> Result<Arc<Mr>>;
    /// Deregisters an MR: its keys stop working at once.
    fn dereg_mr(&self, mr: &Mr) -> Result<()>;
    /// Changes an MR's access in place and gives it new keys.
    fn rereg_mr(&self, mr: &Mr, access: Access) -> Result<(u32, u32)> {
        let _ = (mr, access);
        Err(FabricError::Unsupported {
            op: "rereg_mr",
            backend: "this",
        })
    }
    /// Allocates a (type 2 where supported) memory window.
    fn alloc_mw(&self, pd: Pd) -> Result<MwInfo>;
    /// Frees a window (it is invalidated first).
    fn dealloc_mw(&self, handle: u32) -> Result<()>;
    /// The window's current rkey: on the soft NIC after the latest posted
    /// bind/invalidate, on verbs after the latest successful completion.
    fn mw_rkey(&self, handle: u32) -> u32;
    /// Creates a completion queue.
    fn create_cq(&self, depth: u32) -> Result<Arc<dyn Cq>>;
    /// Creates an RC QP in the RESET state.
    fn create_qp(
        &self,
        pd: Pd,
        send_cq: &Arc<dyn Cq>,
        recv_cq: &Arc<dyn Cq>,
        cap: QpCap,
    ) -> Result<Arc<dyn Qp>>;
    /// Runs `hook` on the threads that serve inbound one-sided requests,
    /// each time one takes a batch of requests and before it executes
    /// them, until replaced (`None` removes it): every request is served
    /// after a run of the hook that began after the request was posted.
    /// A word the hook stores is then fresh for each READ, with no thread
    /// of its own: the time parent publishes its clock this way
    /// (`time::sync`), so a sync sample is one READ's round trip and needs
    /// no third thread on a core. The hook must be cheap and must not
    /// block; it may run on two threads at once (shm and tcp links).
    /// Returns false where the backend serves requests in hardware.
    fn set_serve_hook(&self, hook: Option<ServeHook>) -> bool {
        let _ = hook;
        false
    }
}

/// See [`Nic::set_serve_hook`].
pub type ServeHook = Arc<dyn Fn() + Send + Sync>;

/// Opens the NIC of the fabric named `fabric`: "shm" or "tcp" (the soft NIC
/// with that link; `tcp_listen` is its listener address, `max_keys` its
/// key-table size) or "verbs" (the RDMA device chosen by the
/// `PATRONUS_RDMA_*` variables; fails at once when there is none).
pub fn open_nic(fabric: &str, tcp_listen: &str, max_keys: u32) -> Result<Arc<dyn Nic>> {
    open_nic_with(fabric, tcp_listen, max_keys, true)
}

/// As [`open_nic`]; a soft NIC opened with `soft_windows_survive_reset`
/// false behaves as a device whose windows die with a reset of their QP
/// (`SoftConfig::windows_survive_reset`). Verbs ignores it.
pub fn open_nic_with(
    fabric: &str,
    tcp_listen: &str,
    max_keys: u32,
    soft_windows_survive_reset: bool,
) -> Result<Arc<dyn Nic>> {
    match fabric {
        "shm" | "tcp" => Ok(Arc::new(soft::SoftNic::open(soft::SoftConfig {
            link: fabric.parse()?,
            tcp_listen: tcp_listen.to_string(),
            max_keys,
            windows_survive_reset: soft_windows_survive_reset,
            ..soft::SoftConfig::default()
        })?)),
        #[cfg(feature = "verbs")]
        "verbs" => Ok(Arc::new(verbs::VerbsNic::open(
            verbs::VerbsConfig::from_env()?,
        )?)),
        #[cfg(not(feature = "verbs"))]
        "verbs" => Err(FabricError::Unsupported {
            op: "opening an RDMA device (this build has no `verbs` feature; \
                 cargo build --features verbs)",
            backend: "verbs",
        }),
        other => Err(FabricError::Invalid(format!(
            "unknown fabric {other:?} (shm, tcp, verbs)"
        ))),
    }
}
