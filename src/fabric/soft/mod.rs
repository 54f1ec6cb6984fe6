//! The software RNIC (DESIGN.md, "Soft fabric").
//!
//! A soft NIC lives in each process that opens one. Its responder threads
//! execute one-sided requests arriving from peers and enforce memory-window
//! protection exactly as the fabric contract says; the initiator side runs in
//! the caller's thread (posting and completion polling). Two links share the
//! same responder: `shm` (same host: rings in sealed memfd segments, direct
//! data placement into the initiator's registered buffers) and `tcp`
//! (framed, versioned, pipelined).

pub mod auth;
pub mod cq;
pub mod floor;
pub mod keys;
pub mod nic;
pub mod qp;
pub mod responder;
pub mod ring;
pub mod shm;
pub mod tcp;
pub mod wire;

pub use nic::{NicAddr, SoftConfig, SoftNic};

/// Which link a soft NIC's QPs use to reach their peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// Shared memory (same host).
    Shm,
    /// TCP (across hosts).
    Tcp,
}

impl std::str::FromStr for LinkKind {
    type Err = crate::fabric::FabricError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "shm" => Ok(LinkKind::Shm),
            "tcp" => Ok(LinkKind::Tcp),
            _ => Err(crate::fabric::FabricError::Invalid(format!(
                "unknown soft link {s:?} (expected shm or tcp)"
            ))),
        }
    }
}
