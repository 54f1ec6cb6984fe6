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
//!   only with the access it was bound with. A window's new rkey differs from
//!   its previous keys in the 8-bit key tag; what that guarantees differs per
//!   backend (the tag wraps):
//!   - soft NIC: the tag takes the rkey bits the key table's index does not
//!     need (at most 20; 18 with the default 16 384 keys) and every bind and
//!     invalidate bumps it, so a window's key recurs only after
//!     2^tag_bits / 2 bind+invalidate cycles of that window (131 072 by
//!     default; on the same connection only, as windows are type 2);
//!   - verbs: a window's rkey becomes valid only when its bind completed
//!     successfully ([`Nic::mw_rkey`] returns the key of the latest successful
//!     completion, the old one after a failed bind). No rkey of one `ibv_mw`
//!     ever recurs: before a bind would take its tag past 255 steps the
//!     handle moves to a freshly allocated `ibv_mw` and the old one is freed.
//!     Whether the device later hands a freed window's index out again (and
//!     with which tag) is the device's choice, so across `ibv_mw`s the
//!     guarantee is only as strong as the device's key allocation.
//!   - verbs also refuses, before posting, a bind of a window that is bound
//!     (or has a bind/invalidate outstanding) and an invalidate of one that
//!     is not bound: on hardware both complete with MW_BIND_ERR and move the
//!     QP to error.
//! - One-sided READ, WRITE, CAS and FAA run in the responder, never in a
//!   Patronus server thread; 8-byte atomics are atomic with respect to each
//!   other, and with respect to the memory node's own CPU atomics only where
//!   [`Caps::atomics_glob`] says so (soft NIC: yes; verbs: the device's
//!   `atomic_cap`, `IBV_ATOMIC_HCA` on mlx5). Where it does not, the memory
//!   node changes words that clients CAS through the NIC as well.
//! - RC QPs execute in posting order and complete in order. A remote access
//!   error completes that request with [`WcStatus::RemAccessErr`], moves the
//!   QP to [`QpState::Error`] and flushes every later request with
//!   [`WcStatus::WrFlushErr`]. [`Qp::reset`] + [`Qp::connect`] recover the same
//!   QP (same qpn). Where both ends are reset, they reconnect with fresh
//!   packet sequence numbers: one side picks a [`ConnPsns`] (both
//!   directions, each different from the last reset's) and each end calls
//!   [`Qp::connect_psns`] with its half, so each end's new send PSN is the
//!   other's new receive PSN (verbs uses them; the soft NIC, whose links
//!   carry no PSNs, ignores them).
//! - Windows bound to a QP stay valid across its reset where
//!   [`Caps::windows_survive_reset`] says so (soft NIC: yes, unless opened
//!   with `SoftConfig::windows_survive_reset` off, which makes a reset
//!   invalidate them; verbs: type-1 windows yes, type 2 only with
//!   `PATRONUS_RDMA_WINDOWS_SURVIVE_RESET=1`, otherwise a reset renews the
//!   `ibv_mw`s so their old keys are dead). Where it is false, the windows
//!   are unbound after the reset and whoever bound them binds them again
//!   (new keys); the conformance suite checks behaviour against the flag.
//!   What happens to requests outstanding at [`Qp::reset`]:
//!   - soft NIC: they complete with [`WcStatus::WrFlushErr`] on RESET;
//!   - verbs: RESET itself discards the QP's completions (mlx5 cleans its
//!     CQEs), so a QP with binds/invalidates outstanding is first moved to
//!     ERR, where they complete with `WR_FLUSH_ERR`; those completions are
//!     drained and handed to the caller's next polls of the send CQ (any
//!     still missing after 500 ms are reported as flushed). Plain requests
//!     (READ/WRITE/atomics/SEND) outstanding at RESET get no completion.
//!     A flushed bind leaves the old key; a flushed invalidate leaves the
//!     window bound, so the caller must post it again.
//!
//! Local memory is owned by the NIC: [`Nic::alloc_mr`] returns registered
//! memory that lives at least as long as any work request referencing it.
//! Scatter/gather entries name memory by `lkey` + offset, never by raw
//! pointer, so the layers above the fabric stay safe Rust.

mod access;
mod clock;
pub mod conformance;
mod endpoint;
mod error;
pub mod mem;
pub mod msg;
mod nic;
mod psn;
mod queue;
pub mod soft;
#[cfg(feature = "verbs")]
pub mod verbs;
mod work;

pub use access::{inc_rkey, Access, MwInfo, Pd};
pub use clock::{coarse_resolution_ns, monotonic_coarse_ns, monotonic_ns};
pub use endpoint::QpEndpoint;
pub use error::FabricError;
pub use mem::Mr;
pub use nic::{open_nic, open_nic_with, Caps, Nic, ServeHook};
pub use psn::{ConnPsns, Psns, PSN_MASK};
pub use queue::{Cq, Qp, QpCap, QpState};
pub use work::{RecvWr, SendWr, Sge, Wc, WcOpcode, WcStatus, WrOp};

/// Result alias of the fabric layer.
pub type Result<T> = std::result::Result<T, FabricError>;
