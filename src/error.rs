//! The crate-wide error type. Every variant names what failed and why.

use crate::fabric::FabricError;

/// Result alias used across the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Errors of the Patronus layers above the fabric.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A fabric (RDMA) operation failed.
    #[error(transparent)]
    Fabric(#[from] FabricError),
    /// The caller passed something that cannot be served.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A key or object was not found.
    #[error("not found: {0}")]
    NotFound(String),
    /// Out of memory, windows, leases or another pooled resource.
    #[error("out of resources: {0}")]
    NoMem(String),
    /// A peer did not answer within the configured timeout.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Nodes of the run died (their heartbeat stopped) before they called
    /// `finished`: serving ended without them.
    #[error("nodes died before calling finished: {0}")]
    NodesDied(String),
    /// The keeper (memcached or in-process) failed.
    #[error("keeper: {0}")]
    Keeper(String),
    /// A call was refused with a return code: by the memory node's NIC
    /// (`RdmaProtectionErr`: the lease does not allow that access, or was
    /// revoked), by the local lease check (`LeaseLocalExpiredErr`), or by
    /// a lease the directory did not grant.
    #[error("{ctx}: refused with {rc:?}")]
    Refused {
        /// The code the call returned.
        rc: crate::lease::Rc,
        /// What was refused.
        ctx: String,
    },
    /// An I/O error with context.
    #[error("{ctx}: {source}")]
    Io {
        /// What was being done.
        ctx: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(ctx: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            ctx: ctx.into(),
            source,
        }
    }
}
