//! The RDMA device list and the device-wide state the NIC, its QPs and
//! its CQs share.

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::{Arc, Mutex, RwLock};

use rdma_sys::*;

use super::map::{
    self, Completed, DevLimits, LocalMr, LocalMw, Release, Resolve, VerbsAddr, Windows,
};
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
    /// RoCE port: every address vector carries a GRH.
    pub(super) ethernet: bool,
    pub(super) mw_type2: bool,
    /// `Caps::windows_survive_reset`: false renews the windows bound
    /// through a QP when it is reset.
    pub(super) windows_survive_reset: bool,
    /// What the device allows (clamps and checks).
    pub(super) limits: DevLimits,
    /// High 32 bits of the internal wr_ids of binds/invalidates (see
    /// [`Windows::new`]): a completion without them skips the window table.
    pub(super) tag_hi: u32,
    pub(super) pds: Mutex<Vec<*mut ibv_pd>>,
    /// lkey → registered local memory (keeps the block alive while registered).
    pub(super) mrs: RwLock<HashMap<u32, (LocalMr, Arc<MemBlock>)>>,
    /// The windows, their published rkeys and states, and the outstanding
    /// binds/invalidates.
    pub(super) mws: Mutex<Windows>,
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
        let t = self.windows();
        t.get(handle).map(|s| LocalMw {
            mw: s.mw,
            rkey: s.rkey,
        })
    }
}

impl Inner {
    pub(super) fn pd(&self, pd: Pd) -> Result<*mut ibv_pd> {
        let t = self.pds.lock().unwrap_or_else(|e| e.into_inner());
        t.get(pd.0 as usize)
            .copied()
            .ok_or_else(|| FabricError::Invalid(format!("unknown protection domain {}", pd.0)))
    }

    pub(super) fn windows(&self) -> std::sync::MutexGuard<'_, Windows> {
        self.mws.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes a completed bind/invalidate's key into `ibv_mw::rkey` (rxe
    /// sends that field as the window's identity on the next bind; a failed
    /// bind restores the old key there, as `ibv_bind_mw(3)` asks).
    pub(super) fn sync(&self, c: &Completed) {
        let (mw, rkey) = c.sync;
        if !mw.is_null() {
            // SAFETY: mw is a live window of this context (it is deallocated
            // only through the table, never while a bind/invalidate of it is
            // outstanding), and its bind/invalidate has completed, so no
            // provider call reads the field concurrently for this window.
            unsafe { (*mw).rkey = rkey };
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
        let mws = self
            .mws
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain();
        let mrs = self
            .mrs
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, (m, _))| m.mr)
            .collect();
        let pds = std::mem::take(self.pds.get_mut().unwrap_or_else(|e| e.into_inner()));
        // Windows before their MRs, then PDs, then the context.
        map::teardown(&mut VerbsRelease(self.ctx), mws, mrs, pds);
    }
}

/// [`Release`] through libibverbs, used once by `Inner`'s drop.
struct VerbsRelease(*mut ibv_context);

// SAFETY (all four): every QP and CQ holds an Arc<Inner>, so none is left
// when Inner drops; each object left its table, so it is released once, and
// in teardown's order (windows, MRs, PDs, the context).
impl Release for VerbsRelease {
    fn dealloc_mw(&mut self, mw: *mut ibv_mw) {
        // SAFETY: see the impl.
        let rc = unsafe { ibv_dealloc_mw(mw) };
        if rc != 0 {
            tracing::warn!(rc, "ibv_dealloc_mw at teardown failed");
        }
    }
    fn dereg_mr(&mut self, mr: *mut ibv_mr) {
        // SAFETY: see the impl.
        let rc = unsafe { ibv_dereg_mr(mr) };
        if rc != 0 {
            tracing::warn!(rc, "ibv_dereg_mr at teardown failed");
        }
    }
    fn dealloc_pd(&mut self, pd: *mut ibv_pd) {
        // SAFETY: see the impl.
        unsafe { ibv_dealloc_pd(pd) };
    }
    fn close(&mut self) {
        // SAFETY: see the impl.
        unsafe { ibv_close_device(self.0) };
    }
}
