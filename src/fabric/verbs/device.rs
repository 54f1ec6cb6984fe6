//! The RDMA device list and the device-wide state the NIC, its QPs and
//! its CQs share.

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::{Arc, Mutex, RwLock};

use rdma_sys::*;

use super::map::{LocalMr, LocalMw, Resolve, VerbsAddr};
use crate::fabric::mem::MemBlock;
use crate::fabric::{FabricError, Pd, Result};

/// `IBV_LINK_LAYER_ETHERNET` of verbs.h (an anonymous enum bindgen skips).
pub(super) const IBV_LINK_LAYER_ETHERNET: u8 = 2;

pub(super) fn errno_text() -> String {
    let e = std::io::Error::last_os_error();
    format!("errno {} ({e})", e.raw_os_error().unwrap_or(0))
}

/// Lists the names of the RDMA devices `ibv_get_device_list` reports, or
/// the [`FabricError::NoDevice`] that names why there are none.
pub fn device_names() -> Result<Vec<String>> {
    let mut n: i32 = 0;
    // SAFETY: n is a valid out pointer; the list is freed below.
    let list = unsafe { ibv_get_device_list(&mut n) };
    if list.is_null() {
        return Err(FabricError::NoDevice(format!(
            "ibv_get_device_list returned NULL: {}; this machine has no RDMA \
             subsystem or no provider for its NIC (see /sys/class/infiniband)",
            errno_text()
        )));
    }
    let mut names = Vec::new();
    for i in 0..n.max(0) as usize {
        // SAFETY: the list holds n valid device pointers.
        let d = unsafe { *list.add(i) };
        if d.is_null() {
            break;
        }
        // SAFETY: ibv_get_device_name returns a NUL-terminated name owned by
        // the device, valid until the list is freed.
        let name = unsafe { CStr::from_ptr(ibv_get_device_name(d)) };
        names.push(name.to_string_lossy().into_owned());
    }
    let err = errno_text();
    // SAFETY: list came from ibv_get_device_list and is freed once.
    unsafe { ibv_free_device_list(list) };
    if names.is_empty() {
        return Err(FabricError::NoDevice(format!(
            "ibv_get_device_list returned 0 devices ({err}); \
             is an RDMA NIC present and its driver (mlx5_ib, rxe, siw) loaded?"
        )));
    }
    Ok(names)
}

/// Device-wide state shared by the NIC, its QPs and CQs: the context, the
/// PDs and the key tables. Closed when the last of them goes away.
pub(super) struct Inner {
    pub(super) ctx: *mut ibv_context,
    pub(super) port: u8,
    pub(super) lid: u16,
    pub(super) mtu: u32,
    pub(super) gid: [u8; 16],
    pub(super) gid_index: u8,
    pub(super) mw_type2: bool,
    pub(super) pds: Mutex<Vec<*mut ibv_pd>>,
    /// lkey → registered local memory (keeps the block alive while registered).
    pub(super) mrs: RwLock<HashMap<u32, (LocalMr, Arc<MemBlock>)>>,
    /// window handle → (ibv_mw, current rkey).
    pub(super) mws: Mutex<Vec<Option<LocalMw>>>,
}

// SAFETY: libibverbs objects may be used from any thread (the library is
// thread-safe for all verbs calls); the tables are behind locks.
unsafe impl Send for Inner {}
// SAFETY: as above.
unsafe impl Sync for Inner {}

impl Resolve for Inner {
    fn mr(&self, lkey: u32) -> Option<LocalMr> {
        self.mrs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&lkey)
            .map(|e| e.0)
    }
    fn mw(&self, handle: u32) -> Option<LocalMw> {
        let t = self.mws.lock().unwrap_or_else(|e| e.into_inner());
        t.get(handle as usize).copied().flatten()
    }
}

impl Inner {
    pub(super) fn pd(&self, pd: Pd) -> Result<*mut ibv_pd> {
        let t = self.pds.lock().unwrap_or_else(|e| e.into_inner());
        t.get(pd.0 as usize)
            .copied()
            .ok_or_else(|| FabricError::Invalid(format!("unknown protection domain {}", pd.0)))
    }

    pub(super) fn set_rkey(&self, handle: u32, rkey: u32) {
        let mut t = self.mws.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Some(w)) = t.get_mut(handle as usize) {
            w.rkey = rkey;
        }
    }

    pub(super) fn addr(&self, psn: u32) -> VerbsAddr {
        VerbsAddr {
            lid: self.lid,
            port: self.port,
            mtu: self.mtu as u8,
            gid: self.gid,
            psn,
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: every QP and CQ holds an Arc<Inner>, so none is left; MRs,
        // windows and PDs are released before the context closes, each once.
        unsafe {
            for (_, (m, _)) in self
                .mrs
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .drain()
            {
                ibv_dereg_mr(m.mr);
            }
            for w in self
                .mws
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
                .flatten()
            {
                ibv_dealloc_mw(w.mw);
            }
            for pd in self
                .pds
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
            {
                ibv_dealloc_pd(pd);
            }
            ibv_close_device(self.ctx);
        }
    }
}
