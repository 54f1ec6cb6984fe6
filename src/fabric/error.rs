//! Errors returned synchronously by fabric calls.

use super::QpState;

/// Errors returned synchronously by fabric calls (asynchronous failures of
/// work requests arrive as completions with a [`WcStatus`](super::WcStatus)).
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
