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

mod access;
mod clock;
pub mod conformance;
mod endpoint;
mod error;
pub mod mem;
pub mod msg;
mod nic;
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
pub use nic::{open_nic, Caps, Nic};
pub use queue::{Cq, Qp, QpCap, QpState};
pub use work::{RecvWr, SendWr, Sge, Wc, WcOpcode, WcStatus, WrOp};

/// Result alias of the fabric layer.
pub type Result<T> = std::result::Result<T, FabricError>;
