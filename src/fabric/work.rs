//! Work requests and their completions.

use super::Access;

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
    /// Bumps the window's key tag; read the new rkey with [`Nic::mw_rkey`](super::Nic::mw_rkey).
    Bind {
        /// Window handle from [`Nic::alloc_mw`](super::Nic::alloc_mw).
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
