//! Translation between the fabric contract and libibverbs, with no device:
//! access flags, completion statuses and opcodes, QP states, endpoint
//! encoding, and the construction of `ibv_send_wr` / `ibv_recv_wr` chains.
//! Everything here is unit-tested on machines without an RDMA NIC.

use bytes::{Buf, BufMut};
use rand::Rng;
use rdma_sys::{
    ibv_access_flags, ibv_mr, ibv_mtu, ibv_mw, ibv_mw_bind_info, ibv_qp_state, ibv_recv_wr,
    ibv_send_flags, ibv_send_wr, ibv_sge, ibv_wc_opcode, ibv_wc_status, ibv_wr_opcode,
};

use crate::fabric::{
    inc_rkey, Access, FabricError, QpEndpoint, QpState, RecvWr, Result, SendWr, WcOpcode, WcStatus,
    WrOp,
};

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

/// Magic and version of the verbs endpoint encoding.
const EP_MAGIC: &[u8; 4] = b"VRB1";
/// Encoded length of [`VerbsAddr`].
pub const EP_LEN: usize = 4 + 2 + 1 + 1 + 16 + 4;

/// How a peer reaches a verbs QP: what `QpEndpoint::nic` carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerbsAddr {
    /// Port LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// Physical port number.
    pub port: u8,
    /// Active MTU of the port (`enum ibv_mtu`).
    pub mtu: u8,
    /// GID (RoCE, or IB with a GRH); all zero when unused.
    pub gid: [u8; 16],
    /// First packet sequence number of the QP's send queue (24 bits).
    pub psn: u32,
}

impl VerbsAddr {
    /// True when the peer must be addressed through a GRH (RoCE).
    pub fn needs_grh(&self) -> bool {
        self.gid.iter().any(|&b| b != 0)
    }

    /// Encodes as endpoint address bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(EP_LEN);
        v.put_slice(EP_MAGIC);
        v.put_u16_le(self.lid);
        v.put_u8(self.port);
        v.put_u8(self.mtu);
        v.put_slice(&self.gid);
        v.put_u32_le(self.psn);
        v
    }

    /// Decodes bytes written by [`VerbsAddr::encode`]; anything else (a soft
    /// endpoint, a truncated value, a PSN over 24 bits) is an error.
    pub fn decode(b: &[u8]) -> Result<VerbsAddr> {
        if b.len() != EP_LEN || &b[..4] != EP_MAGIC {
            return Err(FabricError::Invalid(format!(
                "not a verbs endpoint ({} bytes; expected {EP_LEN} starting with {:?})",
                b.len(),
                std::str::from_utf8(EP_MAGIC).unwrap_or("?")
            )));
        }
        // The length is exactly EP_LEN: every read below is in bounds.
        let mut r = &b[EP_MAGIC.len()..];
        let lid = r.get_u16_le();
        let port = r.get_u8();
        let mtu = r.get_u8();
        let mut gid = [0u8; 16];
        r.copy_to_slice(&mut gid);
        let psn = r.get_u32_le();
        if psn >= 1 << 24 {
            return Err(FabricError::Invalid(format!(
                "verbs endpoint PSN {psn:#x} exceeds 24 bits"
            )));
        }
        if mtu_bytes(mtu as u32) == 0 {
            return Err(FabricError::Invalid(format!(
                "verbs endpoint MTU code {mtu} is not an ibv_mtu"
            )));
        }
        Ok(VerbsAddr {
            lid,
            port,
            mtu,
            gid,
            psn,
        })
    }

    /// Decodes the address part of a contract endpoint.
    pub fn of(ep: &QpEndpoint) -> Result<VerbsAddr> {
        VerbsAddr::decode(&ep.nic)
    }
}

/// What a registered local key resolves to when a request is posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalMr {
    /// Virtual address of the MR's first byte.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// The `ibv_mr` (for binds).
    pub mr: *mut ibv_mr,
}

/// What a window handle resolves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalMw {
    /// The `ibv_mw`.
    pub mw: *mut ibv_mw,
    /// Its current rkey (before this bind).
    pub rkey: u32,
}

/// Resolves keys and handles while a chain is built.
pub trait Resolve {
    /// A local MR by lkey.
    fn mr(&self, lkey: u32) -> Option<LocalMr>;
    /// A window by handle.
    fn mw(&self, handle: u32) -> Option<LocalMw>;
}

/// A chain of send work requests ready for `ibv_post_send`. The `ibv_sge`s
/// live in a boxed slice whose heap address is stable, and the WRs point
/// into it; [`SendChain::link`] sets the `next` pointers once the vector
/// stops moving.
pub struct SendChain {
    /// The work requests, in posting order.
    pub wrs: Vec<ibv_send_wr>,
    /// One scatter/gather entry per WR (unused for binds).
    pub sges: Box<[ibv_sge]>,
    /// (WR index, window handle, new rkey) for every bind or invalidate, so
    /// the NIC can publish the rkeys of the requests that were posted.
    pub new_rkeys: Vec<(usize, u32, u32)>,
}

fn sge_of(r: &dyn Resolve, s: &crate::fabric::Sge, what: &str) -> Result<ibv_sge> {
    let m = r
        .mr(s.lkey)
        .ok_or_else(|| FabricError::Invalid(format!("{what}: unknown lkey {:#x}", s.lkey)))?;
    let end = s
        .offset
        .checked_add(s.len as u64)
        .ok_or_else(|| FabricError::Invalid(format!("{what}: offset + length overflows")))?;
    if end > m.len {
        return Err(FabricError::Invalid(format!(
            "{what}: [{}, {end}) is outside the {}-byte local MR",
            s.offset, m.len
        )));
    }
    Ok(ibv_sge {
        addr: m.addr + s.offset,
        length: s.len,
        lkey: s.lkey,
    })
}

fn zeroed_wr() -> ibv_send_wr {
    // SAFETY: ibv_send_wr is a plain C struct of integers, raw pointers and
    // unions of those; all-zero is a valid (empty) value for every field.
    unsafe { std::mem::zeroed() }
}

/// Builds the `ibv_send_wr` chain for `wrs`. Every local range is checked
/// against its MR; atomics must be 8 bytes and 8-aligned remotely.
pub fn build_send_chain(r: &dyn Resolve, wrs: &[SendWr]) -> Result<SendChain> {
    let mut sges = vec![
        ibv_sge {
            addr: 0,
            length: 0,
            lkey: 0
        };
        wrs.len()
    ]
    .into_boxed_slice();
    let mut out = Vec::with_capacity(wrs.len());
    // Only binds and invalidates add entries: plain requests allocate nothing.
    let mut new_rkeys = Vec::new();
    for (i, w) in wrs.iter().enumerate() {
        let mut v = zeroed_wr();
        v.wr_id = w.wr_id;
        v.send_flags = if w.signaled {
            ibv_send_flags::IBV_SEND_SIGNALED.0
        } else {
            0
        };
        match w.op {
            WrOp::Read { local, raddr, rkey } | WrOp::Write { local, raddr, rkey } => {
                let read = matches!(w.op, WrOp::Read { .. });
                sges[i] = sge_of(r, &local, if read { "READ" } else { "WRITE" })?;
                v.num_sge = 1;
                v.opcode = if read {
                    ibv_wr_opcode::IBV_WR_RDMA_READ
                } else {
                    ibv_wr_opcode::IBV_WR_RDMA_WRITE
                };
                v.wr.rdma = rdma_sys::rdma_t {
                    remote_addr: raddr,
                    rkey,
                };
            }
            WrOp::Cas {
                local, raddr, rkey, ..
            }
            | WrOp::Faa {
                local, raddr, rkey, ..
            } => {
                let (what, opcode, compare_add, swap) = match w.op {
                    WrOp::Cas { compare, swap, .. } => (
                        "CAS",
                        ibv_wr_opcode::IBV_WR_ATOMIC_CMP_AND_SWP,
                        compare,
                        swap,
                    ),
                    WrOp::Faa { add, .. } => {
                        ("FAA", ibv_wr_opcode::IBV_WR_ATOMIC_FETCH_AND_ADD, add, 0)
                    }
                    _ => unreachable!("matched CAS or FAA above"),
                };
                atomic_checks(&local, raddr, what)?;
                sges[i] = sge_of(r, &local, what)?;
                v.num_sge = 1;
                v.opcode = opcode;
                v.wr.atomic = rdma_sys::atomic_t {
                    remote_addr: raddr,
                    compare_add,
                    swap,
                    rkey,
                };
            }
            WrOp::Send { local } => {
                sges[i] = sge_of(r, &local, "SEND")?;
                v.num_sge = 1;
                v.opcode = ibv_wr_opcode::IBV_WR_SEND;
            }
            WrOp::Bind {
                mw,
                lkey,
                offset,
                len,
                access,
            } => {
                let bind_info = bind_info(r, lkey, offset, len, access)?;
                let win = r
                    .mw(mw)
                    .ok_or_else(|| FabricError::Invalid(format!("BIND: unknown window {mw}")))?;
                let new = inc_rkey(win.rkey);
                v.opcode = ibv_wr_opcode::IBV_WR_BIND_MW;
                v.bind_mw_tso_union.bind_mw = rdma_sys::bind_mw_t {
                    mw: win.mw,
                    rkey: new,
                    bind_info,
                };
                new_rkeys.push((i, mw, new));
            }
            WrOp::Invalidate { mw } => {
                let win = r.mw(mw).ok_or_else(|| {
                    FabricError::Invalid(format!("INVALIDATE: unknown window {mw}"))
                })?;
                v.opcode = ibv_wr_opcode::IBV_WR_LOCAL_INV;
                v.imm_data_invalidated_rkey_union.invalidated_rkey = win.rkey;
                // Our rkey bookkeeping moves on at once, so that the key the
                // NIC invalidates is never handed out again.
                new_rkeys.push((i, mw, inc_rkey(win.rkey)));
            }
        }
        out.push(v);
    }
    Ok(SendChain {
        wrs: out,
        sges,
        new_rkeys,
    })
}

/// The bind description of `[offset, offset+len)` of local MR `lkey` with
/// window rights `access`: a non-empty range inside the MR, or an error.
pub fn bind_info(
    r: &dyn Resolve,
    lkey: u32,
    offset: u64,
    len: u64,
    access: Access,
) -> Result<ibv_mw_bind_info> {
    let m = r
        .mr(lkey)
        .ok_or_else(|| FabricError::Invalid(format!("BIND: unknown lkey {lkey:#x}")))?;
    let end = offset
        .checked_add(len)
        .ok_or_else(|| FabricError::Invalid("BIND: offset + length overflows".into()))?;
    if end > m.len || len == 0 {
        return Err(FabricError::Invalid(format!(
            "BIND: [{offset}, {end}) is not a non-empty range of the {}-byte MR",
            m.len
        )));
    }
    Ok(ibv_mw_bind_info {
        mr: m.mr,
        addr: m.addr + offset,
        length: len,
        mw_access_flags: window_access_to_ibv(access),
    })
}

fn atomic_checks(local: &crate::fabric::Sge, raddr: u64, what: &str) -> Result<()> {
    if local.len != 8 {
        return Err(FabricError::Invalid(format!(
            "{what}: the local buffer must be 8 bytes, not {}",
            local.len
        )));
    }
    if raddr % 8 != 0 {
        return Err(FabricError::Invalid(format!(
            "{what}: remote address {raddr:#x} is not 8-byte aligned"
        )));
    }
    Ok(())
}

impl SendChain {
    /// Points every WR at its sge and links `next`; returns the head.
    /// Call after the chain stopped moving (it is never resized later).
    pub fn link(&mut self) -> *mut ibv_send_wr {
        link_chain(&mut self.wrs, self.sges.as_mut_ptr(), |w, sge, next| {
            if w.num_sge == 1 {
                w.sg_list = sge;
            }
            w.next = next;
        })
    }
}

/// Gives request `i` of `wrs` the address of sge `i` and of request `i + 1`
/// (null for the last) through `set`; returns the head (null when empty).
/// Raw pointer arithmetic stays inside the slices.
fn link_chain<W>(
    wrs: &mut [W],
    sges: *mut ibv_sge,
    mut set: impl FnMut(&mut W, *mut ibv_sge, *mut W),
) -> *mut W {
    let n = wrs.len();
    let base = wrs.as_mut_ptr();
    for (i, w) in wrs.iter_mut().enumerate() {
        let next = if i + 1 < n {
            base.wrapping_add(i + 1)
        } else {
            std::ptr::null_mut()
        };
        set(w, sges.wrapping_add(i), next);
    }
    if n == 0 {
        std::ptr::null_mut()
    } else {
        base
    }
}

/// A chain of receive work requests.
pub struct RecvChain {
    /// The work requests.
    pub wrs: Vec<ibv_recv_wr>,
    /// Their sges.
    pub sges: Box<[ibv_sge]>,
}

/// Builds the `ibv_recv_wr` chain for `wrs`.
pub fn build_recv_chain(r: &dyn Resolve, wrs: &[RecvWr]) -> Result<RecvChain> {
    let mut sges = Vec::with_capacity(wrs.len());
    let mut out = Vec::with_capacity(wrs.len());
    for w in wrs {
        sges.push(sge_of(r, &w.local, "RECV")?);
        out.push(ibv_recv_wr {
            wr_id: w.wr_id,
            next: std::ptr::null_mut(),
            sg_list: std::ptr::null_mut(),
            num_sge: 1,
        });
    }
    Ok(RecvChain {
        wrs: out,
        sges: sges.into_boxed_slice(),
    })
}

impl RecvChain {
    /// Links the chain; returns its head (null when empty).
    pub fn link(&mut self) -> *mut ibv_recv_wr {
        link_chain(&mut self.wrs, self.sges.as_mut_ptr(), |w, sge, next| {
            w.sg_list = sge;
            w.next = next;
        })
    }
}

/// A fresh 24-bit packet sequence number (never 0, to tell it from unset).
pub fn fresh_psn() -> u32 {
    rand::thread_rng().gen_range(1..1 << 24)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::Sge;
    use std::collections::HashMap;

    struct Fake {
        mrs: HashMap<u32, LocalMr>,
        mws: HashMap<u32, LocalMw>,
    }
    impl Resolve for Fake {
        fn mr(&self, lkey: u32) -> Option<LocalMr> {
            self.mrs.get(&lkey).copied()
        }
        fn mw(&self, h: u32) -> Option<LocalMw> {
            self.mws.get(&h).copied()
        }
    }
    fn fake() -> Fake {
        let mut mrs = HashMap::new();
        mrs.insert(
            0x11,
            LocalMr {
                addr: 0x1000_0000,
                len: 1 << 20,
                mr: 0x5000 as *mut ibv_mr,
            },
        );
        let mut mws = HashMap::new();
        mws.insert(
            3,
            LocalMw {
                mw: 0x6000 as *mut ibv_mw,
                rkey: 0x0000_12ff,
            },
        );
        Fake { mrs, mws }
    }
    fn sge(off: u64, len: u32) -> Sge {
        Sge {
            lkey: 0x11,
            offset: off,
            len,
        }
    }

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
    fn endpoint_round_trips_and_rejects_garbage() {
        let a = VerbsAddr {
            lid: 0x1234,
            port: 1,
            mtu: ibv_mtu::IBV_MTU_4096 as u8,
            gid: [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
            psn: 0x00ab_cdef,
        };
        let ep = QpEndpoint {
            nic: a.encode(),
            qpn: 99,
        };
        assert_eq!(
            VerbsAddr::of(&QpEndpoint::decode(&ep.encode()).unwrap()).unwrap(),
            a
        );
        // The layout byte for byte (as the hand-written codec wrote it).
        assert_eq!(
            hex::encode(a.encode()),
            "5652423134120105fe800000000000000102030405060708efcdab00"
        );
        assert!(a.needs_grh());
        assert!(!VerbsAddr { gid: [0; 16], ..a }.needs_grh());
        // A soft endpoint, truncation, a 25-bit PSN and a bad MTU are refused.
        assert!(VerbsAddr::decode(b"shm:/patronus-1").is_err());
        let enc = a.encode();
        for n in 0..enc.len() {
            assert!(VerbsAddr::decode(&enc[..n]).is_err());
        }
        let mut big = enc.clone();
        big[27] = 1;
        assert!(VerbsAddr::decode(&big).is_err());
        let mut mtu = enc;
        mtu[7] = 9;
        assert!(VerbsAddr::decode(&mtu).is_err());
    }

    #[test]
    fn psn_is_24_bit_and_nonzero() {
        for _ in 0..1000 {
            let p = fresh_psn();
            assert!(p > 0 && p < 1 << 24);
        }
    }

    #[test]
    fn read_write_and_atomics_build_correct_wrs() {
        let f = fake();
        let wrs = [
            SendWr {
                wr_id: 1,
                op: WrOp::Read {
                    local: sge(64, 100),
                    raddr: 0xdead_0000,
                    rkey: 0x77,
                },
                signaled: true,
            },
            SendWr {
                wr_id: 2,
                op: WrOp::Write {
                    local: sge(0, 8),
                    raddr: 0xdead_0008,
                    rkey: 0x78,
                },
                signaled: false,
            },
            SendWr {
                wr_id: 3,
                op: WrOp::Cas {
                    local: sge(8, 8),
                    raddr: 0xdead_0010,
                    rkey: 0x79,
                    compare: 5,
                    swap: 6,
                },
                signaled: true,
            },
            SendWr {
                wr_id: 4,
                op: WrOp::Faa {
                    local: sge(16, 8),
                    raddr: 0xdead_0018,
                    rkey: 0x7a,
                    add: 9,
                },
                signaled: true,
            },
            SendWr {
                wr_id: 5,
                op: WrOp::Send { local: sge(32, 24) },
                signaled: true,
            },
        ];
        let mut c = build_send_chain(&f, &wrs).unwrap();
        let head = c.link();
        assert_eq!(head, c.wrs.as_mut_ptr());
        let w = &c.wrs;
        assert_eq!(w[0].opcode, ibv_wr_opcode::IBV_WR_RDMA_READ);
        assert_eq!(w[0].send_flags, ibv_send_flags::IBV_SEND_SIGNALED.0);
        assert_eq!(w[1].send_flags, 0);
        // SAFETY (test): reading the union member that was written.
        unsafe {
            assert_eq!(w[0].wr.rdma.remote_addr, 0xdead_0000);
            assert_eq!(w[0].wr.rdma.rkey, 0x77);
            assert_eq!(w[2].wr.atomic.compare_add, 5);
            assert_eq!(w[2].wr.atomic.swap, 6);
            assert_eq!(w[3].wr.atomic.compare_add, 9);
            assert_eq!(w[3].wr.atomic.rkey, 0x7a);
        }
        assert_eq!(w[1].opcode, ibv_wr_opcode::IBV_WR_RDMA_WRITE);
        assert_eq!(w[2].opcode, ibv_wr_opcode::IBV_WR_ATOMIC_CMP_AND_SWP);
        assert_eq!(w[3].opcode, ibv_wr_opcode::IBV_WR_ATOMIC_FETCH_AND_ADD);
        assert_eq!(w[4].opcode, ibv_wr_opcode::IBV_WR_SEND);
        assert_eq!(c.sges[0].addr, 0x1000_0000 + 64);
        assert_eq!(c.sges[0].length, 100);
        assert_eq!(c.sges[0].lkey, 0x11);
        let (wbase, sbase) = (c.wrs.as_mut_ptr(), c.sges.as_mut_ptr());
        for i in 0..5 {
            assert_eq!(c.wrs[i].num_sge, 1);
            assert_eq!(c.wrs[i].sg_list, sbase.wrapping_add(i));
            let next = if i < 4 {
                wbase.wrapping_add(i + 1)
            } else {
                std::ptr::null_mut()
            };
            assert_eq!(c.wrs[i].next, next);
        }
        assert!(c.new_rkeys.is_empty());
    }

    #[test]
    fn bind_and_invalidate_carry_a_fresh_key_tag() {
        let f = fake();
        let wrs = [
            SendWr {
                wr_id: 9,
                op: WrOp::Bind {
                    mw: 3,
                    lkey: 0x11,
                    offset: 4096,
                    len: 64,
                    access: Access::READ_WINDOW,
                },
                signaled: true,
            },
            SendWr {
                wr_id: 10,
                op: WrOp::Invalidate { mw: 3 },
                signaled: true,
            },
        ];
        let mut c = build_send_chain(&f, &wrs).unwrap();
        c.link();
        assert_eq!(c.wrs[0].opcode, ibv_wr_opcode::IBV_WR_BIND_MW);
        assert_eq!(c.wrs[0].num_sge, 0);
        assert!(c.wrs[0].sg_list.is_null());
        // SAFETY (test): reading the union members that were written.
        unsafe {
            let b = c.wrs[0].bind_mw_tso_union.bind_mw;
            assert_eq!(b.mw, 0x6000 as *mut ibv_mw);
            // The tag wraps inside the low byte; the index is untouched.
            assert_eq!(b.rkey, 0x0000_1200);
            assert_eq!(b.bind_info.mr, 0x5000 as *mut ibv_mr);
            assert_eq!(b.bind_info.addr, 0x1000_0000 + 4096);
            assert_eq!(b.bind_info.length, 64);
            assert_eq!(
                b.bind_info.mw_access_flags,
                ibv_access_flags::IBV_ACCESS_REMOTE_READ.0
            );
            assert_eq!(
                c.wrs[1].imm_data_invalidated_rkey_union.invalidated_rkey,
                0x0000_12ff
            );
        }
        assert_eq!(c.wrs[1].opcode, ibv_wr_opcode::IBV_WR_LOCAL_INV);
        assert_eq!(c.new_rkeys, vec![(0, 3, 0x1200), (1, 3, 0x1200)]);
    }

    #[test]
    fn malformed_requests_are_refused_before_posting() {
        let f = fake();
        let bad = [
            WrOp::Read {
                local: Sge {
                    lkey: 0x99,
                    offset: 0,
                    len: 8,
                },
                raddr: 0,
                rkey: 1,
            },
            WrOp::Read {
                local: sge((1 << 20) - 4, 8),
                raddr: 0,
                rkey: 1,
            },
            WrOp::Write {
                local: sge(u64::MAX - 2, 8),
                raddr: 0,
                rkey: 1,
            },
            WrOp::Cas {
                local: sge(0, 16),
                raddr: 0,
                rkey: 1,
                compare: 0,
                swap: 0,
            },
            WrOp::Faa {
                local: sge(0, 8),
                raddr: 4,
                rkey: 1,
                add: 1,
            },
            WrOp::Bind {
                mw: 3,
                lkey: 0x11,
                offset: u64::MAX,
                len: 2,
                access: Access::READ_WINDOW,
            },
            WrOp::Bind {
                mw: 3,
                lkey: 0x11,
                offset: 0,
                len: 0,
                access: Access::READ_WINDOW,
            },
            WrOp::Bind {
                mw: 4,
                lkey: 0x11,
                offset: 0,
                len: 8,
                access: Access::READ_WINDOW,
            },
            WrOp::Invalidate { mw: 77 },
        ];
        for op in bad {
            let r = build_send_chain(
                &f,
                &[SendWr {
                    wr_id: 0,
                    op,
                    signaled: true,
                }],
            );
            assert!(r.is_err(), "{op:?} accepted");
        }
        assert!(build_recv_chain(
            &f,
            &[RecvWr {
                wr_id: 1,
                local: Sge {
                    lkey: 0x12,
                    offset: 0,
                    len: 4
                }
            }]
        )
        .is_err());
    }

    #[test]
    fn recv_chain_links() {
        let f = fake();
        let mut c = build_recv_chain(
            &f,
            &[
                RecvWr {
                    wr_id: 1,
                    local: sge(0, 4096),
                },
                RecvWr {
                    wr_id: 2,
                    local: sge(4096, 4096),
                },
            ],
        )
        .unwrap();
        let head = c.link();
        assert_eq!(head, c.wrs.as_mut_ptr());
        let second = c.wrs.as_mut_ptr().wrapping_add(1);
        assert_eq!(c.wrs[0].next, second);
        assert!(c.wrs[1].next.is_null());
        assert_eq!(c.sges[1].addr, 0x1000_0000 + 4096);
        assert!(build_recv_chain(&f, &[]).unwrap().link().is_null());
    }

    /// The Rust layout of `ibv_send_wr`, `ibv_sge`, `ibv_recv_wr`, `ibv_wc`
    /// and the bind fields equals the C compiler's, read from the installed
    /// <infiniband/verbs.h>: a mismatch would post garbage to a real NIC.
    #[test]
    fn layouts_match_the_c_header() {
        use std::mem::{offset_of, size_of};
        let dir = std::env::temp_dir().join(format!("patronus-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("l.c");
        std::fs::write(
            &src,
            r#"#include <stddef.h>
#include <stdio.h>
#include <infiniband/verbs.h>
#define O(t, f) printf("%zu\n", offsetof(struct t, f))
int main(void) {
  printf("%zu\n%zu\n%zu\n%zu\n%zu\n", sizeof(struct ibv_send_wr), sizeof(struct ibv_sge),
         sizeof(struct ibv_recv_wr), sizeof(struct ibv_wc), sizeof(struct ibv_mw_bind));
  O(ibv_send_wr, wr_id); O(ibv_send_wr, next); O(ibv_send_wr, sg_list);
  O(ibv_send_wr, num_sge); O(ibv_send_wr, opcode); O(ibv_send_wr, send_flags);
  O(ibv_send_wr, invalidate_rkey); O(ibv_send_wr, wr.rdma.remote_addr);
  O(ibv_send_wr, wr.rdma.rkey); O(ibv_send_wr, wr.atomic.compare_add);
  O(ibv_send_wr, wr.atomic.swap); O(ibv_send_wr, wr.atomic.rkey);
  O(ibv_send_wr, bind_mw.mw); O(ibv_send_wr, bind_mw.rkey);
  O(ibv_send_wr, bind_mw.bind_info.mr); O(ibv_send_wr, bind_mw.bind_info.addr);
  O(ibv_send_wr, bind_mw.bind_info.length);
  O(ibv_send_wr, bind_mw.bind_info.mw_access_flags);
  O(ibv_sge, addr); O(ibv_sge, length); O(ibv_sge, lkey);
  O(ibv_wc, status); O(ibv_wc, opcode); O(ibv_wc, byte_len); O(ibv_wc, qp_num);
  printf("%d %d %d %d %d %d %d\n", IBV_WR_RDMA_WRITE, IBV_WR_RDMA_READ,
         IBV_WR_ATOMIC_CMP_AND_SWP, IBV_WR_ATOMIC_FETCH_AND_ADD, IBV_WR_SEND,
         IBV_WR_BIND_MW, IBV_WR_LOCAL_INV);
  return 0;
}
"#,
        )
        .unwrap();
        let exe = dir.join("l");
        let cc = std::process::Command::new("cc")
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .output()
            .expect("a C compiler (cc) is needed for this test");
        assert!(
            cc.status.success(),
            "{}",
            String::from_utf8_lossy(&cc.stderr)
        );
        let out = std::process::Command::new(&exe).output().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        let c: Vec<usize> = lines
            .by_ref()
            .take(30)
            .map(|l| l.parse().unwrap())
            .collect();
        type W = ibv_send_wr;
        let rust = vec![
            size_of::<W>(),
            size_of::<ibv_sge>(),
            size_of::<ibv_recv_wr>(),
            size_of::<rdma_sys::ibv_wc>(),
            size_of::<rdma_sys::ibv_mw_bind>(),
            offset_of!(W, wr_id),
            offset_of!(W, next),
            offset_of!(W, sg_list),
            offset_of!(W, num_sge),
            offset_of!(W, opcode),
            offset_of!(W, send_flags),
            offset_of!(W, imm_data_invalidated_rkey_union),
            offset_of!(W, wr),
            offset_of!(W, wr) + offset_of!(rdma_sys::rdma_t, rkey),
            offset_of!(W, wr) + offset_of!(rdma_sys::atomic_t, compare_add),
            offset_of!(W, wr) + offset_of!(rdma_sys::atomic_t, swap),
            offset_of!(W, wr) + offset_of!(rdma_sys::atomic_t, rkey),
            offset_of!(W, bind_mw_tso_union),
            offset_of!(W, bind_mw_tso_union) + offset_of!(rdma_sys::bind_mw_t, rkey),
            offset_of!(W, bind_mw_tso_union) + offset_of!(rdma_sys::bind_mw_t, bind_info),
            offset_of!(W, bind_mw_tso_union)
                + offset_of!(rdma_sys::bind_mw_t, bind_info)
                + offset_of!(ibv_mw_bind_info, addr),
            offset_of!(W, bind_mw_tso_union)
                + offset_of!(rdma_sys::bind_mw_t, bind_info)
                + offset_of!(ibv_mw_bind_info, length),
            offset_of!(W, bind_mw_tso_union)
                + offset_of!(rdma_sys::bind_mw_t, bind_info)
                + offset_of!(ibv_mw_bind_info, mw_access_flags),
            offset_of!(ibv_sge, addr),
            offset_of!(ibv_sge, length),
            offset_of!(ibv_sge, lkey),
            offset_of!(rdma_sys::ibv_wc, status),
            offset_of!(rdma_sys::ibv_wc, opcode),
            offset_of!(rdma_sys::ibv_wc, byte_len),
            offset_of!(rdma_sys::ibv_wc, qp_num),
        ];
        assert_eq!(rust, c, "Rust vs C layout");
        let ops: Vec<u32> = lines
            .next()
            .unwrap()
            .split(' ')
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(
            ops,
            vec![
                ibv_wr_opcode::IBV_WR_RDMA_WRITE,
                ibv_wr_opcode::IBV_WR_RDMA_READ,
                ibv_wr_opcode::IBV_WR_ATOMIC_CMP_AND_SWP,
                ibv_wr_opcode::IBV_WR_ATOMIC_FETCH_AND_ADD,
                ibv_wr_opcode::IBV_WR_SEND,
                ibv_wr_opcode::IBV_WR_BIND_MW,
                ibv_wr_opcode::IBV_WR_LOCAL_INV,
            ]
        );
    }

    #[test]
    fn mtu_codes() {
        assert_eq!(mtu_bytes(ibv_mtu::IBV_MTU_1024), 1024);
        assert_eq!(mtu_bytes(0), 0);
        assert_eq!(mtu_bytes(77), 0);
    }
}
