//! Translation between the fabric contract and libibverbs, with no device:
//! access flags, completion statuses and opcodes, QP states, endpoint
//! encoding, the construction of `ibv_send_wr` / `ibv_recv_wr` chains, the
//! per-window key bookkeeping, device limits and GID selection.
//! Everything here is unit-tested on machines without an RDMA NIC.

mod addr;
mod chain;
mod codes;
#[cfg(test)]
mod layout_tests;
mod limits;
mod window;

pub use addr::{fresh_psn, VerbsAddr, EP_LEN};
pub use chain::{
    bind_info, build_recv_chain, build_send_chain, Keyed, LocalMr, LocalMw, RecvChain, Resolve,
    SendChain,
};
pub use codes::{
    access_to_ibv, mtu_bytes, opcode_from_ibv, qp_access_to_ibv, qp_state_from_ibv,
    status_from_ibv, wc_opcode_of, window_access_to_ibv,
};
pub use limits::{
    is_ipv4_mapped, select_gid, DevLimits, GidEntry, GID_TYPE_IB, GID_TYPE_ROCE_V1,
    GID_TYPE_ROCE_V2, MAX_WINDOW_LEN, WANT_RD_ATOMIC,
};
pub use window::{
    tag_chain, teardown, translate_wcs, Completed, KeyOp, MwState, Release, Slot, Windows,
    MAX_TAG_STEPS,
};
