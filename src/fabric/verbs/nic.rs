//! The verbs device context: opening a device and the `Nic` calls.

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, RwLock};

use rdma_sys::*;

use super::cq::{verbs_cq, VerbsCq};
use super::device::{device_names, errno_text, Inner, IBV_LINK_LAYER_ETHERNET};
use super::map::{self, DevLimits, GidEntry, LocalMr, Resolve, Windows};
use super::qp::VerbsQp;
use super::VerbsConfig;
use crate::fabric::mem::MemBlock;
use crate::fabric::{Access, Caps, Cq, FabricError, Mr, MwInfo, Nic, Pd, Qp, QpCap, Result};

/// A device context on an RDMA NIC.
pub struct VerbsNic {
    inner: Arc<Inner>,
    caps: Caps,
}

impl VerbsNic {
    /// Opens the configured device; fails at once, naming the device list,
    /// when there is none.
    pub fn open(cfg: VerbsConfig) -> Result<VerbsNic> {
        let names = device_names()?;
        let want = cfg.device.clone().unwrap_or_else(|| names[0].clone());
        if !names.contains(&want) {
            return Err(FabricError::NoDevice(format!(
                "RDMA device {want:?} (PATRONUS_RDMA_DEVICE) not found; \
                 ibv_get_device_list returned {names:?}"
            )));
        }
        let mut n = 0;
        // SAFETY: as in device_names; the list is freed before returning.
        let list = unsafe { ibv_get_device_list(&mut n) };
        if list.is_null() {
            return Err(FabricError::NoDevice(format!(
                "ibv_get_device_list returned NULL on the second call: {}",
                errno_text()
            )));
        }
        let mut ctx = std::ptr::null_mut();
        for i in 0..n.max(0) as usize {
            // SAFETY: i < n; names are valid while the list lives.
            let d = unsafe { *list.add(i) };
            // SAFETY: d is a valid device of the list.
            let name = unsafe { CStr::from_ptr(ibv_get_device_name(d)) };
            if name.to_string_lossy() == want {
                // SAFETY: d is valid; the context outlives the list.
                ctx = unsafe { ibv_open_device(d) };
                break;
            }
        }
        let open_err = errno_text();
        // SAFETY: freed once; the opened context does not depend on it.
        unsafe { ibv_free_device_list(list) };
        if ctx.is_null() {
            return Err(FabricError::NoDevice(format!(
                "ibv_open_device({want}) failed: {open_err}"
            )));
        }
        match Self::setup(ctx, &want, &cfg) {
            Ok(n) => Ok(n),
            Err(e) => {
                // SAFETY: ctx was opened above and nothing else uses it.
                unsafe { ibv_close_device(ctx) };
                Err(e)
            }
        }
    }

    fn setup(ctx: *mut ibv_context, name: &str, cfg: &VerbsConfig) -> Result<VerbsNic> {
        // SAFETY: zeroed attribute structs are valid out parameters.
        let mut dev: ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: ctx is an open context; dev is a valid out pointer.
        if unsafe { ibv_query_device(ctx, &mut dev) } != 0 {
            return Err(FabricError::NoDevice(format!(
                "ibv_query_device({name}) failed: {}",
                errno_text()
            )));
        }
        // SAFETY: as above.
        let mut port: ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: ctx is open; port is a valid out pointer of the full size.
        if unsafe { ___ibv_query_port(ctx, cfg.port, &mut port) } != 0 {
            return Err(FabricError::NoDevice(format!(
                "ibv_query_port({name}, port {}) failed: {} (PATRONUS_RDMA_PORT)",
                cfg.port,
                errno_text()
            )));
        }
        if port.state != ibv_port_state::IBV_PORT_ACTIVE {
            return Err(FabricError::NoDevice(format!(
                "port {} of {name} is not active (state {})",
                cfg.port, port.state
            )));
        }
        let ethernet = port.link_layer == IBV_LINK_LAYER_ETHERNET;
        let flags = dev.device_cap_flags;
        let limits = DevLimits {
            max_qp_wr: dev.max_qp_wr,
            max_cqe: dev.max_cqe,
            max_qp_rd_atom: dev.max_qp_rd_atom,
            max_qp_init_rd_atom: dev.max_qp_init_rd_atom,
            max_mw: dev.max_mw,
            max_mr_size: dev.max_mr_size,
            mw_type1: flags & ibv_device_cap_flags::IBV_DEVICE_MEM_WINDOW.0 != 0,
            mw_type2: flags
                & (ibv_device_cap_flags::IBV_DEVICE_MEM_WINDOW_TYPE_2A.0
                    | ibv_device_cap_flags::IBV_DEVICE_MEM_WINDOW_TYPE_2B.0)
                != 0,
        };
        let type2 = limits.check_windows(name)?;
        if !type2 {
            tracing::warn!(
                device = name,
                "the device has no type-2 memory windows: falling back to type-1 \
                 (PD-wide) windows; a key is then usable from any QP of the PD"
            );
        }
        let (gid, gid_index) = if ethernet {
            let table = gid_table(ctx, cfg.port, port.gid_tbl_len);
            let e = map::select_gid(&table, cfg.gid_index)
                .map_err(|e| FabricError::NoDevice(format!("{name} port {}: {e}", cfg.port)))?;
            tracing::info!(
                device = name,
                index = e.index,
                gid_type = e.gid_type,
                gid = %hex::encode(e.gid),
                "RoCE source GID"
            );
            (e.gid, e.index)
        } else {
            ([0u8; 16], cfg.gid_index.unwrap_or(0))
        };
        let caps = Caps {
            name: "verbs".into(),
            mw_type2: type2,
            atomics: dev.atomic_cap != ibv_atomic_cap::IBV_ATOMIC_NONE,
            atomics_glob: dev.atomic_cap == ibv_atomic_cap::IBV_ATOMIC_GLOB,
            max_msg_size: port.max_msg_sz as u64,
            max_send_size: port.max_msg_sz.min(1 << 30),
            max_qp_wr: limits.qp_depth(u32::MAX),
            max_mw: dev.max_mw.max(0) as u32,
            modify_qp_access: true,
            rereg_mr: true,
            peer_errs_with_requester: true,
            // Type-1 windows are PD-wide: a QP's reset cannot touch them.
            // Type 2: unknown (no source settles it), so re-bind on
            // recovery unless told otherwise; renewing the windows at
            // reset (`VerbsQp::reset`) makes that right either way.
            windows_survive_reset: !type2 || cfg.windows_survive_reset.unwrap_or(false),
        };
        let windows = Windows::new(rand::random());
        tracing::info!(
            device = name,
            port = cfg.port,
            lid = port.lid,
            ethernet,
            ?caps,
            "verbs NIC open"
        );
        Ok(VerbsNic {
            inner: Arc::new(Inner {
                ctx,
                port: cfg.port,
                lid: port.lid,
                mtu: port.active_mtu,
                gid,
                gid_index,
                ethernet,
                mw_type2: type2,
                windows_survive_reset: caps.windows_survive_reset,
                limits,
                tag_hi: windows.tag_hi(),
                pds: Mutex::new(Vec::new()),
                mrs: RwLock::new(HashMap::new()),
                mws: Mutex::new(windows),
            }),
            caps,
        })
    }

    fn register(
        &self,
        pd: *mut ibv_pd,
        block: Arc<MemBlock>,
        block_off: u64,
        len: u64,
        access: Access,
    ) -> Result<Arc<Mr>> {
        let addr = block.as_ptr() as u64 + block_off;
        // SAFETY: [addr, addr+len) lies inside the mapped block, which the
        // key table keeps alive for as long as the registration exists.
        let mr = unsafe {
            ibv_reg_mr(
                pd,
                addr as *mut std::ffi::c_void,
                len as usize,
                map::access_to_ibv(access) as i32,
            )
        };
        if mr.is_null() {
            return Err(FabricError::Exhausted(format!(
                "ibv_reg_mr of {len} bytes failed: {}",
                errno_text()
            )));
        }
        // SAFETY: mr is a valid registration just returned.
        let (lkey, rkey) = unsafe { ((*mr).lkey, (*mr).rkey) };
        self.inner
            .mrs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(lkey, (LocalMr { addr, len, mr }, block.clone()));
        Ok(Arc::new(Mr::new(
            block,
            block_off,
            len,
            (lkey, rkey),
            access,
            mr as u64,
        )))
    }
}

impl Nic for VerbsNic {
    fn caps(&self) -> &Caps {
        &self.caps
    }

    fn alloc_pd(&self) -> Result<Pd> {
        // SAFETY: the context is open.
        let pd = unsafe { ibv_alloc_pd(self.inner.ctx) };
        if pd.is_null() {
            return Err(FabricError::Exhausted(format!(
                "ibv_alloc_pd failed: {}",
                errno_text()
            )));
        }
        let mut t = self.inner.pds.lock().unwrap_or_else(|e| e.into_inner());
        t.push(pd);
        Ok(Pd(t.len() as u32 - 1))
    }

    fn alloc_mr(&self, pd: Pd, len: usize, access: Access) -> Result<Arc<Mr>> {
        let p = self.inner.pd(pd)?;
        let block = Arc::new(MemBlock::new(len, "verbs-mr")?);
        self.register(p, block, 0, len as u64, access)
    }

    fn reg_sub_mr(&self, parent: &Mr, offset: u64, len: u64, access: Access) -> Result<Arc<Mr>> {
        if self.inner.mr(parent.lkey()).is_none() {
            return Err(FabricError::Invalid("parent MR is not of this NIC".into()));
        }
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= parent.len() && len > 0)
            .ok_or_else(|| {
                FabricError::Invalid(format!(
                    "sub-MR [{offset}, +{len}) is not inside the {}-byte MR",
                    parent.len()
                ))
            })?;
        let _ = end;
        // SAFETY: the parent's handle is the ibv_mr registered by this NIC
        // (checked above); its pd field names the PD it belongs to.
        let pd = unsafe { (*(parent.handle as *mut ibv_mr)).pd };
        self.register(
            pd,
            parent.block().clone(),
            parent.block_offset() + offset,
            len,
            access,
        )
    }

    fn dereg_mr(&self, mr: &Mr) -> Result<()> {
        let e = self
            .inner
            .mrs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&mr.lkey())
            .ok_or_else(|| FabricError::Invalid(format!("unknown MR lkey {:#x}", mr.lkey())))?;
        // SAFETY: the registration was removed from the table, so it is
        // deregistered exactly once.
        let rc = unsafe { ibv_dereg_mr(e.0.mr) };
        if rc != 0 {
            return Err(FabricError::io(
                "ibv_dereg_mr",
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        Ok(())
    }

    fn rereg_mr(&self, mr: &Mr, access: Access) -> Result<(u32, u32)> {
        let mut t = self.inner.mrs.write().unwrap_or_else(|e| e.into_inner());
        let e = t
            .remove(&mr.lkey())
            .ok_or_else(|| FabricError::Invalid(format!("unknown MR lkey {:#x}", mr.lkey())))?;
        // SAFETY: e.0.mr is a live registration of this NIC, held under the
        // table's write lock.
        let rc = unsafe {
            ibv_rereg_mr(
                e.0.mr,
                ibv_rereg_mr_flags::IBV_REREG_MR_CHANGE_ACCESS.0 as i32,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
                map::access_to_ibv(access) as i32,
            )
        };
        // SAFETY: the ibv_mr stays valid after rereg (success or failure).
        let (lkey, rkey) = unsafe { ((*e.0.mr).lkey, (*e.0.mr).rkey) };
        t.insert(lkey, e);
        if rc != 0 {
            return Err(FabricError::io(
                "ibv_rereg_mr",
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        mr.set_keys(lkey, rkey, access);
        Ok((lkey, rkey))
    }

    fn alloc_mw(&self, pd: Pd) -> Result<MwInfo> {
        let p = self.inner.pd(pd)?;
        let ty = if self.inner.mw_type2 {
            ibv_mw_type::IBV_MW_TYPE_2
        } else {
            ibv_mw_type::IBV_MW_TYPE_1
        };
        // SAFETY: p is a PD of this context.
        let mw = unsafe { ibv_alloc_mw(p, ty) }.unwrap_or(std::ptr::null_mut());
        if mw.is_null() {
            return Err(FabricError::Exhausted(format!(
                "ibv_alloc_mw failed: {}",
                errno_text()
            )));
        }
        // SAFETY: mw is a valid window just allocated.
        let rkey = unsafe { (*mw).rkey };
        let handle = self.inner.windows().insert(mw, rkey);
        Ok(MwInfo { handle, rkey })
    }

    fn dealloc_mw(&self, handle: u32) -> Result<()> {
        let w = self.inner.windows().take(handle)?;
        // SAFETY: the window left the table, so it is freed exactly once.
        let rc = unsafe { ibv_dealloc_mw(w.mw) };
        if rc != 0 {
            return Err(FabricError::io(
                "ibv_dealloc_mw",
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        Ok(())
    }

    fn mw_rkey(&self, handle: u32) -> u32 {
        // The key of the latest successful bind/invalidate completion.
        self.inner.windows().rkey(handle)
    }

    fn create_cq(&self, depth: u32) -> Result<Arc<dyn Cq>> {
        // SAFETY: the context is open; no completion channel, vector 0.
        let cq = unsafe {
            ibv_create_cq(
                self.inner.ctx,
                self.inner.limits.cq_depth(depth) as i32,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        if cq.is_null() {
            return Err(FabricError::Exhausted(format!(
                "ibv_create_cq({depth}) failed: {}",
                errno_text()
            )));
        }
        Ok(Arc::new(VerbsCq::new(cq, self.inner.clone())))
    }

    fn create_qp(
        &self,
        pd: Pd,
        send_cq: &Arc<dyn Cq>,
        recv_cq: &Arc<dyn Cq>,
        cap: QpCap,
    ) -> Result<Arc<dyn Qp>> {
        let p = self.inner.pd(pd)?;
        let scq = verbs_cq(send_cq)?;
        let cap = QpCap {
            max_send_wr: self.inner.limits.qp_depth(cap.max_send_wr),
            max_recv_wr: self.inner.limits.qp_depth(cap.max_recv_wr),
        };
        let rcq = verbs_cq(recv_cq)?;
        // SAFETY: a zeroed init attr is valid; the fields that matter are set.
        let mut init: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = scq;
        init.recv_cq = rcq;
        init.qp_type = ibv_qp_type::IBV_QPT_RC;
        init.sq_sig_all = 0;
        init.cap.max_send_wr = cap.max_send_wr;
        init.cap.max_recv_wr = cap.max_recv_wr;
        init.cap.max_send_sge = 1;
        init.cap.max_recv_sge = 1;
        // SAFETY: p, scq and rcq are objects of this context.
        let qp = unsafe { ibv_create_qp(p, &mut init) };
        if qp.is_null() {
            return Err(FabricError::Exhausted(format!(
                "ibv_create_qp(send {}, recv {}) failed: {}",
                cap.max_send_wr,
                cap.max_recv_wr,
                errno_text()
            )));
        }
        Ok(Arc::new(VerbsQp {
            qp,
            inner: self.inner.clone(),
            psn: AtomicU32::new(map::fresh_psn()),
            peer_psn: AtomicU32::new(0),
            access: AtomicU32::new(
                (Access::REMOTE_READ | Access::REMOTE_WRITE | Access::REMOTE_ATOMIC).0,
            ),
            cap,
            post: Mutex::new(()),
            _cqs: (send_cq.clone(), recv_cq.clone()),
        }))
    }
}

/// The GID table of `port` as `ibv_query_gid_ex` reports it (entries it
/// cannot read, such as empty ones, are left out).
fn gid_table(ctx: *mut ibv_context, port: u8, len: i32) -> Vec<GidEntry> {
    extern "C" {
        // rdma-core's out-of-line symbol behind the inline ibv_query_gid_ex
        // (libibverbs IBVERBS_1.11, rdma-core 32+); rdma-sys binds no caller.
        fn _ibv_query_gid_ex(
            context: *mut ibv_context,
            port_num: u32,
            gid_index: u32,
            entry: *mut ibv_gid_entry,
            flags: u32,
            entry_size: usize,
        ) -> i32;
    }
    let mut out = Vec::new();
    for i in 0..len.clamp(0, 256) as u32 {
        // SAFETY: ibv_gid_entry is plain data; zeroed is valid.
        let mut e: ibv_gid_entry = unsafe { std::mem::zeroed() };
        // SAFETY: ctx is open; e is a valid out pointer of the size passed.
        let rc = unsafe {
            _ibv_query_gid_ex(
                ctx,
                port as u32,
                i,
                &mut e,
                0,
                std::mem::size_of::<ibv_gid_entry>(),
            )
        };
        if rc == 0 {
            out.push(GidEntry {
                index: i as u8,
                gid_type: e.gid_type,
                // SAFETY: reading the raw bytes of a GID union.
                gid: unsafe { e.gid.raw },
            });
        }
    }
    out
}
