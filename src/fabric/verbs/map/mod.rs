//! Translation between the fabric contract and libibverbs, with no device:
//! access flags, completion statuses and opcodes, QP states, endpoint
//! encoding, and the construction of `ibv_send_wr` / `ibv_recv_wr` chains.
//! Everything here is unit-tested on machines without an RDMA NIC.

mod addr;
mod chain;
mod codes;
#[cfg(test)]
mod layout_tests;

pub use addr::{fresh_psn, VerbsAddr, EP_LEN};
pub use chain::{
    bind_info, build_recv_chain, build_send_chain, LocalMr, LocalMw, RecvChain, Resolve, SendChain,
};
pub use codes::{
    access_to_ibv, mtu_bytes, opcode_from_ibv, qp_access_to_ibv, qp_state_from_ibv,
    status_from_ibv, wc_opcode_of, window_access_to_ibv,
};
