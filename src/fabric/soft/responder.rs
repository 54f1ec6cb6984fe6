//! The responder: executes one-sided requests against the key table.
//!
//! Shared by both links; only where the initiator's data comes from (shm:
//! its block mapped here; tcp: the frame payload) and where results go
//! differ. Nothing in a request is trusted: the key table check covers rkey
//! index and tag, validity, PD, bound QP, access and the byte range with
//! overflow-checked arithmetic, and atomics must be 8-byte aligned.

use std::sync::atomic::{AtomicU64, Ordering};

use super::keys::{Denied, KeyTable};
use super::wire::{ReqHeader, ReqOp};
use crate::fabric::{Access, WcStatus};

/// The local QP a request arrived on, as the responder sees it.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Local QP number.
    pub qpn: u32,
    /// Its protection domain.
    pub pd: u32,
    /// Remote access rights the QP grants (modify_access).
    pub access: Access,
}

/// Rights a request needs.
pub fn needed(op: ReqOp) -> Access {
    match op {
        ReqOp::Read => Access::REMOTE_READ,
        ReqOp::Write => Access::REMOTE_WRITE,
        ReqOp::Cas | ReqOp::Faa => Access::REMOTE_ATOMIC,
        ReqOp::Send => Access::NONE,
    }
}

/// Checks a one-sided request; returns the local address to touch.
#[inline]
pub fn check(keys: &KeyTable, t: &Target, h: &ReqHeader) -> Result<*mut u8, WcStatus> {
    let need = needed(h.op);
    if !t.access.contains(need) {
        return Err(WcStatus::RemAccessErr);
    }
    match keys.check(h.rkey, t.pd, t.qpn, h.raddr, h.len as u64, need) {
        Ok(a) => Ok(a as *mut u8),
        Err(d) => {
            tracing::debug!(
                rkey = h.rkey,
                raddr = h.raddr,
                len = h.len,
                qpn = t.qpn,
                ?d,
                "remote access denied"
            );
            Err(match d {
                Denied::UnknownKey
                | Denied::StaleTag
                | Denied::NotValid
                | Denied::WrongPd
                | Denied::WrongQp
                | Denied::NoAccess
                | Denied::OutOfBounds => WcStatus::RemAccessErr,
            })
        }
    }
}

/// Executes an 8-byte atomic at `p` (checked, 8-aligned); returns the old value.
#[inline]
pub fn atomic(p: *mut u8, h: &ReqHeader) -> u64 {
    debug_assert!(p as usize % 8 == 0);
    // SAFETY: `p` was returned by `check` for an 8-byte range inside a live
    // NIC-owned block, and raddr is 8-aligned (wire validation); the block is
    // shared only through atomics for 8-byte words.
    let a = unsafe { &*(p as *const AtomicU64) };
    match h.op {
        ReqOp::Cas => {
            match a.compare_exchange(h.arg0, h.arg1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(v) | Err(v) => v,
            }
        }
        _ => a.fetch_add(h.arg0, Ordering::SeqCst),
    }
}
