//! Queue pairs and completion queues: states, capacities, the traits.

use std::time::Duration;

use super::{Access, FabricError, Psns, QpEndpoint, RecvWr, Result, SendWr, Wc};

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
    /// RESET/INIT → RTR → RTS towards `remote`, with the PSNs of the last
    /// [`Qp::connect_psns`] (initially this QP's own endpoint PSN to send
    /// and the one in `remote` to expect).
    fn connect(&self, remote: &QpEndpoint) -> Result<()>;
    /// As [`Qp::connect`], starting from fresh PSNs: this end sends from
    /// `psns.send` and expects `psns.recv`; the peer must connect with the
    /// mirror pair (a coordinated reset, [`ConnPsns`](super::ConnPsns)).
    /// The PSNs stick: a later [`Qp::connect`] reuses them. Backends whose
    /// links carry no PSNs (the soft NIC) ignore them.
    fn connect_psns(&self, remote: &QpEndpoint, psns: Psns) -> Result<()> {
        let _ = psns;
        self.connect(remote)
    }
    /// Any state → RESET. Outstanding work requests complete with
    /// [`WcStatus::WrFlushErr`](super::WcStatus::WrFlushErr) on the soft NIC; on verbs only
    /// binds/invalidates do (the QP goes through ERR first and their flush
    /// completions are kept for the caller), other requests' completions are
    /// discarded by RESET. See the fabric contract in `fabric/mod.rs`.
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
