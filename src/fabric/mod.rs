//! The fabric contract: an RDMA abstraction shaped like libibverbs so that a
//! verbs backend maps onto it one to one.
//!
//! Objects: a [`Nic`] (device context) owns protection domains ([`Pd`]),
//! memory regions ([`Mr`]), memory windows ([`MwInfo`]), completion queues
//! ([`Cq`]) and reliable-connected queue pairs ([`Qp`]). Work requests
//! ([`SendWr`], [`RecvWr`]) are posted on QPs and complete, in posting order,
//! into CQs as [`Wc`]s with a [`WcStatus`].
//!
//! Semantics every backend must honour (DESIGN.md, "The fabric contract"):
//! - A memory window is bound by a `Bind` work request posted on the memory
//!   node's QP towards the holder; it is then usable only by requests arriving
//!   on that connection (type-2 semantics), only inside `[addr, addr+len)`,
//!   only with the access it was bound with. Every bind and invalidate changes
//!   the rkey's 8-bit key tag, so an old rkey never becomes valid again.
//! - One-sided READ, WRITE, CAS and FAA run in the responder, never in a
//!   Patronus server thread; 8-byte atomics are atomic with respect to each
//!   other and to the memory node's own CPU atomics.
//! - RC QPs execute in posting order and complete in order. A remote access
//!   error completes that request with [`WcStatus::RemAccessErr`], moves the
//!   QP to [`QpState::Error`] and flushes every later request with
//!   [`WcStatus::WrFlushErr`]. [`Qp::reset`] + [`Qp::connect`] recover the same
//!   QP (same qpn), so windows bound to it stay valid.
//!
//! Local memory is owned by the NIC: [`Nic::alloc_mr`] returns registered
//! memory that lives at least as long as any work request referencing it.
//! Scatter/gather entries name memory by `lkey` + offset, never by raw
//! pointer, so the layers above the fabric stay safe Rust.

pub mod conformance;
pub mod mem;
pub mod msg;
pub mod soft;
#[cfg(feature = "verbs")]
pub mod verbs;

use std::sync::Arc;
use std::time::Duration;

pub use mem::Mr;

/// Result alias of the fabric layer.
pub type Result<T> = std::result::Result<T, FabricError>;

/// Errors returned synchronously by fabric calls (asynchronous failures of
/// work requests arrive as completions with a [`WcStatus`]).
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    /// The backend does not implement this operation.
    #[error("{op} is not supported by the {backend} fabric")]
    Unsupported {
        /// Operation name.
        op: &'static str,
        /// Backend name.
        backend: &'static str,
    },
    /// No RDMA device could be opened.
    #[error("no RDMA device: {0}")]
    NoDevice(String),
    /// A bad argument (unknown key, size over a limit, ...).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The QP is not in a state that allows the call.
    #[error("queue pair {qpn}: cannot {op} in state {state:?}")]
    BadState {
        /// Queue pair number.
        qpn: u32,
        /// The call.
        op: &'static str,
        /// The state it was in.
        state: QpState,
    },
    /// The send or receive queue is full (verbs returns ENOMEM).
    #[error("queue pair {qpn}: {which} queue full ({depth} entries)")]
    QueueFull {
        /// Queue pair number.
        qpn: u32,
        /// "send" or "recv".
        which: &'static str,
        /// Configured depth.
        depth: u32,
    },
    /// A table or pool is exhausted.
    #[error("out of resources: {0}")]
    Exhausted(String),
    /// The peer NIC is unreachable or went away.
    #[error("peer lost: {0}")]
    PeerLost(String),
    /// An operating-system call failed.
    #[error("{ctx}: {source}")]
    Io {
        /// What was being done.
        ctx: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl FabricError {
    /// Wraps an I/O error with context.
    pub fn io(ctx: impl Into<String>, source: std::io::Error) -> Self {
        FabricError::Io {
            ctx: ctx.into(),
            source,
        }
    }
}

/// Access rights of MRs, MWs and QPs. Bit values equal `ibv_access_flags`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Access(pub u32);

impl Access {
    /// No rights.
    pub const NONE: Access = Access(0);
    /// IBV_ACCESS_LOCAL_WRITE.
    pub const LOCAL_WRITE: Access = Access(1);
    /// IBV_ACCESS_REMOTE_WRITE.
    pub const REMOTE_WRITE: Access = Access(1 << 1);
    /// IBV_ACCESS_REMOTE_READ.
    pub const REMOTE_READ: Access = Access(1 << 2);
    /// IBV_ACCESS_REMOTE_ATOMIC.
    pub const REMOTE_ATOMIC: Access = Access(1 << 3);
    /// IBV_ACCESS_MW_BIND.
    pub const MW_BIND: Access = Access(1 << 4);
    /// Everything a read lease grants: remote read only (Patronus-rs does not
    /// grant atomics to read windows, unlike the original).
    pub const READ_WINDOW: Access = Access(1 << 2);
    /// Everything a write lease grants.
    pub const WRITE_WINDOW: Access = Access((1 << 1) | (1 << 2) | (1 << 3));
    /// An MR usable for everything.
    pub const ALL: Access = Access(0x1f);

    /// True when every right in `other` is also in `self`.
    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

/// QP states of the verbs state machine (SQD/SQE are not modelled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum QpState {
    /// Freshly created or reset.
    Reset = 0,
    /// Initialised, not connected.
    Init = 1,
    /// Ready to receive.
    Rtr = 2,
    /// Ready to send.
    Rts = 3,
    /// A work request failed; everything else is flushed until reset.
    Error = 6,
}

impl QpState {
    /// Decodes the stored representation (unknown values read as Error).
    pub fn from_u8(v: u8) -> QpState {
        match v {
            0 => QpState::Reset,
            1 => QpState::Init,
            2 => QpState::Rtr,
            3 => QpState::Rts,
            _ => QpState::Error,
        }
    }
}

/// Completion statuses. Values equal `enum ibv_wc_status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum WcStatus {
    /// IBV_WC_SUCCESS.
    Success = 0,
    /// IBV_WC_LOC_LEN_ERR: a local length was wrong (e.g. receive too small).
    LocLenErr = 1,
    /// IBV_WC_LOC_QP_OP_ERR: the work request was malformed.
    LocQpOpErr = 2,
    /// IBV_WC_LOC_PROT_ERR: a local key or range was invalid.
    LocProtErr = 4,
    /// IBV_WC_WR_FLUSH_ERR: flushed because the QP was in error.
    WrFlushErr = 5,
    /// IBV_WC_MW_BIND_ERR: a window bind failed.
    MwBindErr = 6,
    /// IBV_WC_BAD_RESP_ERR: the responder's answer made no sense.
    BadRespErr = 7,
    /// IBV_WC_REM_INV_REQ_ERR: the responder rejected a malformed request.
    RemInvReqErr = 9,
    /// IBV_WC_REM_ACCESS_ERR: key, range, access or bound QP check failed.
    RemAccessErr = 10,
    /// IBV_WC_REM_OP_ERR: the responder could not execute the operation.
    RemOpErr = 11,
    /// IBV_WC_RETRY_EXC_ERR: the peer did not answer (it died or the link broke).
    RetryExcErr = 12,
    /// IBV_WC_RNR_RETRY_EXC_ERR: the receiver had no receive posted.
    RnrRetryExcErr = 13,
    /// IBV_WC_FATAL_ERR.
    FatalErr = 19,
    /// IBV_WC_GENERAL_ERR.
    GeneralErr = 21,
}

impl WcStatus {
    /// Decodes a status byte from the wire; unknown values read as BadRespErr.
    pub fn from_u8(v: u8) -> WcStatus {
        match v {
            0 => WcStatus::Success,
            1 => WcStatus::LocLenErr,
            2 => WcStatus::LocQpOpErr,
            4 => WcStatus::LocProtErr,
            5 => WcStatus::WrFlushErr,
            6 => WcStatus::MwBindErr,
            7 => WcStatus::BadRespErr,
            9 => WcStatus::RemInvReqErr,
            10 => WcStatus::RemAccessErr,
            11 => WcStatus::RemOpErr,
            12 => WcStatus::RetryExcErr,
            13 => WcStatus::RnrRetryExcErr,
            19 => WcStatus::FatalErr,
            21 => WcStatus::GeneralErr,
            _ => WcStatus::BadRespErr,
        }
    }

    /// True for [`WcStatus::Success`].
    pub fn is_ok(self) -> bool {
        self == WcStatus::Success
    }
}

/// What a completion completed. Values equal `enum ibv_wc_opcode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum WcOpcode {
    /// IBV_WC_SEND.
    Send = 0,
    /// IBV_WC_RDMA_WRITE.
    Write = 1,
    /// IBV_WC_RDMA_READ.
    Read = 2,
    /// IBV_WC_COMP_SWAP.
    CompSwap = 3,
    /// IBV_WC_FETCH_ADD.
    FetchAdd = 4,
    /// IBV_WC_BIND_MW.
    BindMw = 5,
    /// IBV_WC_LOCAL_INV.
    LocalInv = 6,
    /// IBV_WC_RECV.
    Recv = 128,
}

/// A scatter/gather entry: `len` bytes at `offset` inside the local MR `lkey`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sge {
    /// Local key of a registered MR of the same NIC.
    pub lkey: u32,
    /// Byte offset inside that MR.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
}

/// The operation of a send work request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrOp {
    /// RDMA READ of `local.len` bytes at remote `raddr` into `local`.
    Read {
        /// Destination.
        local: Sge,
        /// Remote virtual address.
        raddr: u64,
        /// Remote key.
        rkey: u32,
    },
    /// RDMA WRITE of `local` to remote `raddr`.
    Write {
        /// Source.
        local: Sge,
        /// Remote virtual address.
        raddr: u64,
        /// Remote key.
        rkey: u32,
    },
    /// 8-byte compare-and-swap; the old value lands in `local` (8 bytes).
    Cas {
        /// Destination of the old value (len must be 8).
        local: Sge,
        /// Remote virtual address (8-aligned).
        raddr: u64,
        /// Remote key.
        rkey: u32,
        /// Expected value.
        compare: u64,
        /// New value.
        swap: u64,
    },
    /// 8-byte fetch-and-add; the old value lands in `local` (8 bytes).
    Faa {
        /// Destination of the old value (len must be 8).
        local: Sge,
        /// Remote virtual address (8-aligned).
        raddr: u64,
        /// Remote key.
        rkey: u32,
        /// Addend (wrapping).
        add: u64,
    },
    /// Two-sided SEND of `local` into the peer's next posted receive.
    Send {
        /// Source.
        local: Sge,
    },
    /// Bind memory window `mw` over `[mr.addr + offset, +len)` of MR `lkey`,
    /// usable only through the remote end of this QP, with `access`.
    /// Bumps the window's key tag; read the new rkey with [`Nic::mw_rkey`].
    Bind {
        /// Window handle from [`Nic::alloc_mw`].
        mw: u32,
        /// MR (with MW_BIND access) the window lies in.
        lkey: u32,
        /// Offset of the window inside the MR.
        offset: u64,
        /// Window length in bytes.
        len: u64,
        /// Rights granted through the window.
        access: Access,
    },
    /// Invalidate (unbind) window `mw`: every rkey it had stops working.
    Invalidate {
        /// Window handle.
        mw: u32,
    },
}

/// A send work request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendWr {
    /// Caller's identifier, returned in the completion.
    pub wr_id: u64,
    /// What to do.
    pub op: WrOp,
    /// Generate a completion on success (errors always complete).
    pub signaled: bool,
}

/// A receive work request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvWr {
    /// Caller's identifier.
    pub wr_id: u64,
    /// Where the incoming message lands.
    pub local: Sge,
}

/// A work completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wc {
    /// The work request's `wr_id`.
    pub wr_id: u64,
    /// Outcome.
    pub status: WcStatus,
    /// What completed.
    pub opcode: WcOpcode,
    /// Bytes received (RECV) or transferred.
    pub byte_len: u32,
    /// Local QP number.
    pub qpn: u32,
}

impl Default for Wc {
    fn default() -> Self {
        Wc {
            wr_id: 0,
            status: WcStatus::Success,
            opcode: WcOpcode::Send,
            byte_len: 0,
            qpn: 0,
        }
    }
}

/// What a backend really implements. Tests check these against behaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Backend name ("soft-shm", "soft-tcp", "verbs").
    pub name: String,
    /// Type-2 windows bound to one QP (false: PD-wide type 1).
    pub mw_type2: bool,
    /// 8-byte CAS and FAA.
    pub atomics: bool,
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
}

/// A protection domain handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pd(pub u32);

/// A memory window: its handle and its current rkey.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MwInfo {
    /// Handle used in bind/invalidate work requests.
    pub handle: u32,
    /// rkey as of allocation (changes with every bind/invalidate).
    pub rkey: u32,
}

/// QP capacities requested at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpCap {
    /// Send queue depth (outstanding send WRs).
    pub max_send_wr: u32,
    /// Receive queue depth.
    pub max_recv_wr: u32,
}

impl Default for QpCap {
    fn default() -> Self {
        QpCap {
            max_send_wr: 128,
            max_recv_wr: 128,
        }
    }
}

/// How to reach a QP: the NIC's address plus the QP number, serialisable for
/// the keeper (soft: link kind + address; verbs: lid/gid/qpn/psn).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QpEndpoint {
    /// Backend-specific NIC address bytes.
    pub nic: Vec<u8>,
    /// Queue pair number on that NIC.
    pub qpn: u32,
}

impl QpEndpoint {
    /// Encodes as bytes: qpn (LE u32), length (LE u32), address.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + self.nic.len());
        v.extend_from_slice(&self.qpn.to_le_bytes());
        v.extend_from_slice(&(self.nic.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.nic);
        v
    }

    /// Decodes bytes written by [`QpEndpoint::encode`].
    pub fn decode(b: &[u8]) -> Result<QpEndpoint> {
        if b.len() < 8 {
            return Err(FabricError::Invalid(format!(
                "endpoint of {} bytes is shorter than its 8-byte header",
                b.len()
            )));
        }
        let qpn = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes"));
        let n = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes")) as usize;
        if b.len() - 8 != n {
            return Err(FabricError::Invalid(format!(
                "endpoint says {n} address bytes, has {}",
                b.len() - 8
            )));
        }
        Ok(QpEndpoint {
            nic: b[8..].to_vec(),
            qpn,
        })
    }
}

/// A completion queue.
pub trait Cq: std::any::Any + Send + Sync {
    /// Moves up to `out.len()` completions into `out`; returns how many.
    /// Never blocks.
    fn poll(&self, out: &mut [Wc]) -> usize;

    /// Blocks until a completion may be available or `timeout` passes
    /// (spurious wake-ups allowed; callers poll again). Backends without a
    /// notification mechanism sleep briefly.
    fn wait(&self, timeout: Duration) {
        std::thread::sleep(timeout.min(Duration::from_micros(50)));
    }
}

/// A reliable-connected queue pair.
pub trait Qp: Send + Sync {
    /// Local QP number.
    fn qpn(&self) -> u32;
    /// Current state.
    fn state(&self) -> QpState;
    /// How the peer reaches this QP.
    fn endpoint(&self) -> QpEndpoint;
    /// RESET/INIT → RTR → RTS towards `remote`.
    fn connect(&self, remote: &QpEndpoint) -> Result<()>;
    /// Any state → RESET: outstanding work requests complete with
    /// [`WcStatus::WrFlushErr`]. Windows bound to this QP stay bound.
    fn reset(&self) -> Result<()>;
    /// Changes the remote access rights the QP grants to its peer
    /// (the "QP flag" protection competitor).
    fn modify_access(&self, _access: Access) -> Result<()> {
        Err(FabricError::Unsupported {
            op: "modify_qp(access)",
            backend: "this",
        })
    }
    /// Posts send work requests in order. Returns an error (and posts none of
    /// the remaining ones) when the queue is full or a request is malformed.
    fn post_send(&self, wrs: &[SendWr]) -> Result<()>;
    /// Posts receive work requests.
    fn post_recv(&self, wrs: &[RecvWr]) -> Result<()>;
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
    /// The window's current rkey (after the latest posted bind/invalidate).
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
}

/// Opens the NIC of the fabric named `fabric`: "shm" or "tcp" (the soft NIC
/// with that link; `tcp_listen` is its listener address, `max_keys` its
/// key-table size) or "verbs" (the RDMA device chosen by the
/// `PATRONUS_RDMA_*` variables; fails at once when there is none).
pub fn open_nic(fabric: &str, tcp_listen: &str, max_keys: u32) -> Result<Arc<dyn Nic>> {
    match fabric {
        "shm" | "tcp" => Ok(Arc::new(soft::SoftNic::open(soft::SoftConfig {
            link: fabric.parse()?,
            tcp_listen: tcp_listen.to_string(),
            max_keys,
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

/// Bumps the 8-bit key tag of an rkey, wrapping, as `ibv_inc_rkey` intends
/// (without its overflow panic): the index bits never change.
pub fn inc_rkey(rkey: u32) -> u32 {
    (rkey & 0xffff_ff00) | ((rkey as u8).wrapping_add(1) as u32)
}

/// CLOCK_MONOTONIC in nanoseconds: the time base all processes of one host
/// share (the lease layer adds a synchronised offset across hosts).
pub fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// CLOCK_MONOTONIC_COARSE in nanoseconds: a few ns to read, never ahead of
/// [`monotonic_ns`], and usually behind it by at most [`coarse_resolution_ns`]
/// (one tick); a late tick in a virtual machine can make the lag longer.
#[inline]
pub fn monotonic_coarse_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// How far CLOCK_MONOTONIC_COARSE may lag CLOCK_MONOTONIC (its resolution,
/// one kernel tick), in ns.
pub fn coarse_resolution_ns() -> i64 {
    static RES: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *RES.get_or_init(|| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_getres writes into a valid timespec.
        let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        if rc != 0 {
            return i64::MAX / 4; // unknown: never trust the coarse clock
        }
        ts.tv_sec * 1_000_000_000 + ts.tv_nsec
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_clock_bounds() {
        let res = coarse_resolution_ns();
        assert!(res > 0 && res < 100_000_000, "resolution {res}");
        let mut checked = 0;
        for _ in 0..1000 {
            // Bracket the coarse read with two precise reads: a preemption
            // between them (a shared VM loses its vCPU for milliseconds)
            // says nothing about the clock, so such samples are skipped.
            let f0 = monotonic_ns();
            let c = monotonic_coarse_ns();
            let f1 = monotonic_ns();
            assert!(c <= f1 + 1, "coarse {c} ahead of fine {f1}");
            if f1 - f0 > 50_000 {
                continue;
            }
            checked += 1;
            // The tick that advances the coarse clock can be late in a VM
            // (7 ms lags seen at 4 ms resolution): bound it by the margin
            // the expiry check assumes, not by the resolution.
            assert!(
                f0 - c <= crate::time::COARSE_MARGIN_NS / 10,
                "coarse lags by {} ns (resolution {res})",
                f0 - c
            );
        }
        assert!(checked > 100, "only {checked} undisturbed samples");
    }

    #[test]
    fn inc_rkey_wraps_tag_only() {
        assert_eq!(inc_rkey(0x0000_0100), 0x0000_0101);
        assert_eq!(inc_rkey(0x0000_01ff), 0x0000_0100);
        assert_eq!(inc_rkey(u32::MAX), 0xffff_ff00);
    }

    #[test]
    fn endpoint_round_trip_and_rejects_garbage() {
        let ep = QpEndpoint {
            nic: b"tcp:127.0.0.1:4000".to_vec(),
            qpn: 77,
        };
        assert_eq!(QpEndpoint::decode(&ep.encode()).unwrap(), ep);
        assert!(QpEndpoint::decode(&[1, 2, 3]).is_err());
        let mut bad = ep.encode();
        bad.push(0);
        assert!(QpEndpoint::decode(&bad).is_err());
    }

    #[test]
    fn access_sets() {
        assert!(Access::WRITE_WINDOW.contains(Access::REMOTE_ATOMIC));
        assert!(!Access::READ_WINDOW.contains(Access::REMOTE_WRITE));
        assert!(!Access::READ_WINDOW.contains(Access::REMOTE_ATOMIC));
    }
}
