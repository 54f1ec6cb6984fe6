//! Access flags, completion statuses and opcodes, QP states and MTUs:
//! contract values ↔ verbs values.

use rdma_sys::{ibv_access_flags, ibv_mtu, ibv_qp_state, ibv_wc_opcode, ibv_wc_status};

use crate::fabric::{Access, QpState, WcOpcode, WcStatus, WrOp};

/// Contract access rights → `ibv_access_flags`. Verbs demands LOCAL_WRITE
/// whenever REMOTE_WRITE or REMOTE_ATOMIC is asked for, so it is added.
pub fn access_to_ibv(a: Access) -> u32 {
    let mut f = 0u32;
    if a.contains(Access::LOCAL_WRITE) {
        f |= ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0;
    }
    if a.contains(Access::REMOTE_WRITE) {
        f |= ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0
            | ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0;
    }
    if a.contains(Access::REMOTE_READ) {
        f |= ibv_access_flags::IBV_ACCESS_REMOTE_READ.0;
    }
    if a.contains(Access::REMOTE_ATOMIC) {
        f |= ibv_access_flags::IBV_ACCESS_REMOTE_ATOMIC.0
            | ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0;
    }
    if a.contains(Access::MW_BIND) {
        f |= ibv_access_flags::IBV_ACCESS_MW_BIND.0;
    }
    f
}

/// Rights a memory window may carry (`mw_access_flags`): remote rights only.
pub fn window_access_to_ibv(a: Access) -> u32 {
    access_to_ibv(Access(
        a.0 & (Access::REMOTE_READ.0 | Access::REMOTE_WRITE.0 | Access::REMOTE_ATOMIC.0),
    )) & !ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0
}

/// Remote rights a QP grants its peer (`qp_access_flags`).
pub fn qp_access_to_ibv(a: Access) -> u32 {
    window_access_to_ibv(a)
}

/// `enum ibv_wc_status` → contract status. Statuses the contract does not
/// name map to their closest class (local, remote, general).
pub fn status_from_ibv(s: u32) -> WcStatus {
    use ibv_wc_status::*;
    match s {
        IBV_WC_SUCCESS => WcStatus::Success,
        IBV_WC_LOC_LEN_ERR => WcStatus::LocLenErr,
        IBV_WC_LOC_QP_OP_ERR | IBV_WC_LOC_EEC_OP_ERR => WcStatus::LocQpOpErr,
        IBV_WC_LOC_PROT_ERR | IBV_WC_LOC_ACCESS_ERR | IBV_WC_LOC_RDD_VIOL_ERR => {
            WcStatus::LocProtErr
        }
        IBV_WC_WR_FLUSH_ERR => WcStatus::WrFlushErr,
        IBV_WC_MW_BIND_ERR => WcStatus::MwBindErr,
        IBV_WC_BAD_RESP_ERR => WcStatus::BadRespErr,
        IBV_WC_REM_INV_REQ_ERR | IBV_WC_REM_INV_RD_REQ_ERR => WcStatus::RemInvReqErr,
        IBV_WC_REM_ACCESS_ERR => WcStatus::RemAccessErr,
        IBV_WC_REM_OP_ERR | IBV_WC_REM_ABORT_ERR => WcStatus::RemOpErr,
        IBV_WC_RETRY_EXC_ERR | IBV_WC_RESP_TIMEOUT_ERR => WcStatus::RetryExcErr,
        IBV_WC_RNR_RETRY_EXC_ERR => WcStatus::RnrRetryExcErr,
        IBV_WC_FATAL_ERR => WcStatus::FatalErr,
        _ => WcStatus::GeneralErr,
    }
}

/// `enum ibv_wc_opcode` → contract opcode (None for opcodes the contract
/// never posts, e.g. TSO or tag matching).
pub fn opcode_from_ibv(o: u32) -> Option<WcOpcode> {
    use ibv_wc_opcode::*;
    Some(match o {
        IBV_WC_SEND => WcOpcode::Send,
        IBV_WC_RDMA_WRITE => WcOpcode::Write,
        IBV_WC_RDMA_READ => WcOpcode::Read,
        IBV_WC_COMP_SWAP => WcOpcode::CompSwap,
        IBV_WC_FETCH_ADD => WcOpcode::FetchAdd,
        IBV_WC_BIND_MW => WcOpcode::BindMw,
        IBV_WC_LOCAL_INV => WcOpcode::LocalInv,
        IBV_WC_RECV => WcOpcode::Recv,
        _ => return None,
    })
}

/// The opcode an error completion is reported with: verbs leaves `opcode`
/// undefined for errors, so the posting side remembers what it posted.
pub fn wc_opcode_of(op: &WrOp) -> WcOpcode {
    match op {
        WrOp::Read { .. } => WcOpcode::Read,
        WrOp::Write { .. } => WcOpcode::Write,
        WrOp::Cas { .. } => WcOpcode::CompSwap,
        WrOp::Faa { .. } => WcOpcode::FetchAdd,
        WrOp::Send { .. } => WcOpcode::Send,
        WrOp::Bind { .. } => WcOpcode::BindMw,
        WrOp::Invalidate { .. } => WcOpcode::LocalInv,
    }
}

/// `enum ibv_qp_state` → contract state (SQD/SQE/unknown read as Error:
/// the QP cannot carry requests until it is reset).
pub fn qp_state_from_ibv(s: u32) -> QpState {
    use ibv_qp_state::*;
    match s {
        IBV_QPS_RESET => QpState::Reset,
        IBV_QPS_INIT => QpState::Init,
        IBV_QPS_RTR => QpState::Rtr,
        IBV_QPS_RTS => QpState::Rts,
        _ => QpState::Error,
    }
}

/// `enum ibv_mtu` value → bytes (0 for an unknown value).
pub fn mtu_bytes(m: u32) -> u32 {
    use ibv_mtu::*;
    match m {
        IBV_MTU_256 => 256,
        IBV_MTU_512 => 512,
        IBV_MTU_1024 => 1024,
        IBV_MTU_2048 => 2048,
        IBV_MTU_4096 => 4096,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_equal_the_header_and_map_back() {
        for s in [
            WcStatus::Success,
            WcStatus::LocLenErr,
            WcStatus::LocQpOpErr,
            WcStatus::LocProtErr,
            WcStatus::WrFlushErr,
            WcStatus::MwBindErr,
            WcStatus::BadRespErr,
            WcStatus::RemInvReqErr,
            WcStatus::RemAccessErr,
            WcStatus::RemOpErr,
            WcStatus::RetryExcErr,
            WcStatus::RnrRetryExcErr,
            WcStatus::FatalErr,
            WcStatus::GeneralErr,
        ] {
            assert_eq!(status_from_ibv(s as u32), s, "{s:?}");
        }
        assert_eq!(
            ibv_wc_status::IBV_WC_REM_ACCESS_ERR,
            WcStatus::RemAccessErr as u32
        );
        assert_eq!(ibv_wc_status::IBV_WC_FATAL_ERR, WcStatus::FatalErr as u32);
        assert_eq!(
            status_from_ibv(ibv_wc_status::IBV_WC_LOC_ACCESS_ERR),
            WcStatus::LocProtErr
        );
        assert_eq!(
            status_from_ibv(ibv_wc_status::IBV_WC_RESP_TIMEOUT_ERR),
            WcStatus::RetryExcErr
        );
        assert_eq!(status_from_ibv(u32::MAX), WcStatus::GeneralErr);
    }

    #[test]
    fn opcodes_and_states_map() {
        for o in [
            WcOpcode::Send,
            WcOpcode::Write,
            WcOpcode::Read,
            WcOpcode::CompSwap,
            WcOpcode::FetchAdd,
            WcOpcode::BindMw,
            WcOpcode::LocalInv,
            WcOpcode::Recv,
        ] {
            assert_eq!(opcode_from_ibv(o as u32), Some(o));
        }
        assert_eq!(opcode_from_ibv(ibv_wc_opcode::IBV_WC_TSO), None);
        assert_eq!(qp_state_from_ibv(ibv_qp_state::IBV_QPS_RTS), QpState::Rts);
        assert_eq!(qp_state_from_ibv(ibv_qp_state::IBV_QPS_ERR), QpState::Error);
        assert_eq!(qp_state_from_ibv(ibv_qp_state::IBV_QPS_SQD), QpState::Error);
        assert_eq!(
            qp_state_from_ibv(ibv_qp_state::IBV_QPS_RESET),
            QpState::Reset
        );
    }

    #[test]
    fn access_flags_map_to_ibv_bits() {
        // The contract's bit values are verbs' own.
        assert_eq!(
            Access::REMOTE_WRITE.0,
            ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0
        );
        assert_eq!(
            Access::REMOTE_READ.0,
            ibv_access_flags::IBV_ACCESS_REMOTE_READ.0
        );
        assert_eq!(
            Access::REMOTE_ATOMIC.0,
            ibv_access_flags::IBV_ACCESS_REMOTE_ATOMIC.0
        );
        assert_eq!(Access::MW_BIND.0, ibv_access_flags::IBV_ACCESS_MW_BIND.0);
        // Remote write or atomic implies local write for MRs.
        let f = access_to_ibv(Access::REMOTE_ATOMIC);
        assert_ne!(f & ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0, 0);
        // A read window is read-only; windows never carry local rights.
        assert_eq!(
            window_access_to_ibv(Access::READ_WINDOW),
            ibv_access_flags::IBV_ACCESS_REMOTE_READ.0
        );
        let w = window_access_to_ibv(Access::WRITE_WINDOW | Access::MW_BIND);
        assert_eq!(w & ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0, 0);
        assert_eq!(w & ibv_access_flags::IBV_ACCESS_MW_BIND.0, 0);
        assert_ne!(w & ibv_access_flags::IBV_ACCESS_REMOTE_ATOMIC.0, 0);
    }

    #[test]
    fn mtu_codes() {
        assert_eq!(mtu_bytes(ibv_mtu::IBV_MTU_1024), 1024);
        assert_eq!(mtu_bytes(0), 0);
        assert_eq!(mtu_bytes(77), 0);
    }
}
