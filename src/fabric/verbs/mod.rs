//! The verbs backend (feature `verbs`): the fabric contract on real RDMA
//! NICs through libibverbs (`rdma-sys`).
//!
//! Mapping, one to one:
//! - [`VerbsNic::open`] picks a device (`PATRONUS_RDMA_DEVICE`, default the
//!   first one), a port (`PATRONUS_RDMA_PORT`, default 1) and, for RoCE, a GID
//!   index (`PATRONUS_RDMA_GID_INDEX`, default 0 where the port is Ethernet).
//!   With no device it fails at once with [`FabricError::NoDevice`] naming
//!   what `ibv_get_device_list` returned and errno.
//! - MRs are NIC-owned memfd blocks registered with `ibv_reg_mr`; sub-MRs and
//!   `ibv_rereg_mr` implement the MR-re-registration competitor.
//! - Windows are type 2 when the device reports
//!   `IBV_DEVICE_MEM_WINDOW_TYPE_2A/2B`, bound with `IBV_WR_BIND_MW` posted
//!   on the memory node's RC QP towards the holder with a fresh key tag each
//!   time, and invalidated with `IBV_WR_LOCAL_INV`. Otherwise type 1 (PD-wide,
//!   `ibv_bind_mw`), announced in the start-up log and in [`Caps::mw_type2`].
//! - RC QPs go RESET → INIT → RTR → RTS with the peer's lid/gid/qpn/psn
//!   from its [`QpEndpoint`]; [`Qp::reset`] moves to RESET and
//!   [`Qp::connect`] reconnects the same QP (same qpn, same initial PSN on
//!   both sides, so both ends must be reset together, as the lease layer's
//!   recovery does).
//! - Completions are polled with `ibv_poll_cq` by the caller's thread.

pub mod map;

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rdma_sys::*;

use self::map::{LocalMr, LocalMw, Resolve, VerbsAddr};
use super::mem::MemBlock;
use super::{
    Access, Caps, Cq, FabricError, Mr, MwInfo, Nic, Pd, Qp, QpCap, QpEndpoint, QpState, RecvWr,
    Result, SendWr, Wc, WcOpcode,
};

/// Where the verbs backend finds its device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerbsConfig {
    /// Device name (`mlx5_0`); `None` picks the first device.
    pub device: Option<String>,
    /// Physical port (1-based).
    pub port: u8,
    /// GID index for RoCE (ignored on InfiniBand ports).
    pub gid_index: u8,
}

impl Default for VerbsConfig {
    fn default() -> Self {
        VerbsConfig {
            device: None,
            port: 1,
            gid_index: 0,
        }
    }
}

impl VerbsConfig {
    /// Reads `PATRONUS_RDMA_DEVICE`, `PATRONUS_RDMA_PORT` and
    /// `PATRONUS_RDMA_GID_INDEX`; malformed numbers are an error.
    pub fn from_env() -> Result<VerbsConfig> {
        let mut c = VerbsConfig::default();
        if let Ok(d) = std::env::var("PATRONUS_RDMA_DEVICE") {
            if !d.is_empty() {
                c.device = Some(d);
            }
        }
        if let Ok(p) = std::env::var("PATRONUS_RDMA_PORT") {
            c.port = p.parse().ok().filter(|&p| p > 0).ok_or_else(|| {
                FabricError::Invalid(format!("PATRONUS_RDMA_PORT={p:?} is not a port 1..255"))
            })?;
        }
        if let Ok(g) = std::env::var("PATRONUS_RDMA_GID_INDEX") {
            c.gid_index = g.parse().map_err(|_| {
                FabricError::Invalid(format!(
                    "PATRONUS_RDMA_GID_INDEX={g:?} is not a GID index 0..255"
                ))
            })?;
        }
        Ok(c)
    }
}

/// `IBV_LINK_LAYER_ETHERNET` of verbs.h (an anonymous enum bindgen skips).
const IBV_LINK_LAYER_ETHERNET: u8 = 2;

fn errno_text() -> String {
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
struct Inner {
    ctx: *mut ibv_context,
    port: u8,
    lid: u16,
    mtu: u32,
    gid: [u8; 16],
    gid_index: u8,
    mw_type2: bool,
    pds: Mutex<Vec<*mut ibv_pd>>,
    /// lkey → registered local memory (keeps the block alive while registered).
    mrs: RwLock<HashMap<u32, (LocalMr, Arc<MemBlock>)>>,
    /// window handle → (ibv_mw, current rkey).
    mws: Mutex<Vec<Option<LocalMw>>>,
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
    fn pd(&self, pd: Pd) -> Result<*mut ibv_pd> {
        let t = self.pds.lock().unwrap_or_else(|e| e.into_inner());
        t.get(pd.0 as usize)
            .copied()
            .ok_or_else(|| FabricError::Invalid(format!("unknown protection domain {}", pd.0)))
    }

    fn set_rkey(&self, handle: u32, rkey: u32) {
        let mut t = self.mws.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Some(w)) = t.get_mut(handle as usize) {
            w.rkey = rkey;
        }
    }

    fn addr(&self, psn: u32) -> VerbsAddr {
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
        let mut gid = [0u8; 16];
        if ethernet {
            // SAFETY: ibv_gid is plain bytes; zeroed is valid.
            let mut g: ibv_gid = unsafe { std::mem::zeroed() };
            // SAFETY: ctx open; g a valid out pointer.
            if unsafe { ibv_query_gid(ctx, cfg.port, cfg.gid_index as i32, &mut g) } != 0 {
                return Err(FabricError::NoDevice(format!(
                    "ibv_query_gid({name}, port {}, index {}) failed: {} (PATRONUS_RDMA_GID_INDEX)",
                    cfg.port,
                    cfg.gid_index,
                    errno_text()
                )));
            }
            // SAFETY: reading the raw bytes of a GID union.
            gid = unsafe { g.raw };
        }
        let flags = dev.device_cap_flags;
        let type2 = flags
            & (ibv_device_cap_flags::IBV_DEVICE_MEM_WINDOW_TYPE_2A.0
                | ibv_device_cap_flags::IBV_DEVICE_MEM_WINDOW_TYPE_2B.0)
            != 0;
        if !type2 {
            tracing::warn!(
                device = name,
                "the device has no type-2 memory windows: falling back to type-1 \
                 (PD-wide) windows; a key is then usable from any QP of the PD"
            );
        }
        let caps = Caps {
            name: "verbs".into(),
            mw_type2: type2,
            atomics: dev.atomic_cap != ibv_atomic_cap::IBV_ATOMIC_NONE,
            max_msg_size: port.max_msg_sz as u64,
            max_send_size: port.max_msg_sz.min(1 << 30),
            max_qp_wr: dev.max_qp_wr.max(0) as u32,
            max_mw: dev.max_mw.max(0) as u32,
            modify_qp_access: true,
            rereg_mr: true,
            peer_errs_with_requester: true,
        };
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
                gid_index: cfg.gid_index,
                mw_type2: type2,
                pds: Mutex::new(Vec::new()),
                mrs: RwLock::new(HashMap::new()),
                mws: Mutex::new(Vec::new()),
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
        let mut t = self.inner.mws.lock().unwrap_or_else(|e| e.into_inner());
        let w = Some(LocalMw { mw, rkey });
        let handle = match t.iter().position(Option::is_none) {
            Some(i) => {
                t[i] = w;
                i
            }
            None => {
                t.push(w);
                t.len() - 1
            }
        };
        Ok(MwInfo {
            handle: handle as u32,
            rkey,
        })
    }

    fn dealloc_mw(&self, handle: u32) -> Result<()> {
        let w = {
            let mut t = self.inner.mws.lock().unwrap_or_else(|e| e.into_inner());
            t.get_mut(handle as usize)
                .and_then(Option::take)
                .ok_or_else(|| FabricError::Invalid(format!("unknown window {handle}")))?
        };
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
        self.inner.mw(handle).map(|w| w.rkey).unwrap_or(0)
    }

    fn create_cq(&self, depth: u32) -> Result<Arc<dyn Cq>> {
        // SAFETY: the context is open; no completion channel, vector 0.
        let cq = unsafe {
            ibv_create_cq(
                self.inner.ctx,
                depth.max(1) as i32,
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
        Ok(Arc::new(VerbsCq {
            cq,
            _inner: self.inner.clone(),
        }))
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
            psn: map::fresh_psn(),
            access: AtomicU32::new(
                (Access::REMOTE_READ | Access::REMOTE_WRITE | Access::REMOTE_ATOMIC).0,
            ),
            cap,
            post: Mutex::new(()),
            _cqs: (send_cq.clone(), recv_cq.clone()),
        }))
    }
}

fn verbs_cq(cq: &Arc<dyn Cq>) -> Result<*mut ibv_cq> {
    let any: &dyn std::any::Any = &**cq;
    any.downcast_ref::<VerbsCq>()
        .map(|c| c.cq)
        .ok_or_else(|| FabricError::Invalid("the CQ belongs to another backend".into()))
}

/// A verbs completion queue, polled by the caller.
pub struct VerbsCq {
    cq: *mut ibv_cq,
    _inner: Arc<Inner>,
}

// SAFETY: CQs may be polled from any thread (libibverbs locks internally).
unsafe impl Send for VerbsCq {}
// SAFETY: as above.
unsafe impl Sync for VerbsCq {}

impl Cq for VerbsCq {
    fn poll(&self, out: &mut [Wc]) -> usize {
        const CHUNK: usize = 16;
        let mut done = 0;
        while done < out.len() {
            // SAFETY: ibv_wc is plain data; zeroed is valid.
            let mut raw: [ibv_wc; CHUNK] = unsafe { std::mem::zeroed() };
            let want = (out.len() - done).min(CHUNK);
            // SAFETY: raw has room for `want` completions; cq is valid.
            let n = unsafe { ibv_poll_cq(self.cq, want as i32, raw.as_mut_ptr()) };
            if n <= 0 {
                break;
            }
            for w in &raw[..n as usize] {
                let status = map::status_from_ibv(w.status);
                out[done] = Wc {
                    wr_id: w.wr_id,
                    status,
                    // Verbs leaves the opcode undefined on errors.
                    opcode: map::opcode_from_ibv(w.opcode).unwrap_or(WcOpcode::Send),
                    byte_len: w.byte_len,
                    qpn: w.qp_num,
                };
                done += 1;
            }
            if (n as usize) < want {
                break;
            }
        }
        done
    }
}

impl Drop for VerbsCq {
    fn drop(&mut self) {
        // SAFETY: every QP using this CQ holds an Arc to it, so none is
        // left; destroyed once.
        unsafe { ibv_destroy_cq(self.cq) };
    }
}

/// A verbs RC queue pair.
pub struct VerbsQp {
    qp: *mut ibv_qp,
    inner: Arc<Inner>,
    psn: u32,
    access: AtomicU32,
    cap: QpCap,
    /// Serialises posts that bind or invalidate windows with the
    /// publication of the windows' new rkeys.
    post: Mutex<()>,
    /// The QP's CQs, kept alive until it is destroyed.
    _cqs: (Arc<dyn Cq>, Arc<dyn Cq>),
}

// SAFETY: verbs QPs may be posted to from any thread; posting is serialised.
unsafe impl Send for VerbsQp {}
// SAFETY: as above.
unsafe impl Sync for VerbsQp {}

impl VerbsQp {
    fn qpn_raw(&self) -> u32 {
        // SAFETY: the QP is valid for self's lifetime.
        unsafe { (*self.qp).qp_num }
    }

    fn modify(&self, attr: &mut ibv_qp_attr, mask: ibv_qp_attr_mask, what: &str) -> Result<()> {
        // SAFETY: attr is a valid attribute struct; the QP is valid.
        let rc = unsafe { ibv_modify_qp(self.qp, attr, mask.0 as i32) };
        if rc != 0 {
            return Err(FabricError::io(
                format!("ibv_modify_qp({what}) of QP {}", self.qpn_raw()),
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        Ok(())
    }
}

impl VerbsQp {
    /// A failed `ibv_post_*`: ENOMEM is a full queue, anything else (EINVAL
    /// for a QP not in RTS, say) an I/O error naming the call.
    fn post_error(&self, rc: i32, which: &'static str) -> FabricError {
        if rc == libc::ENOMEM {
            FabricError::QueueFull {
                qpn: self.qpn_raw(),
                which,
                depth: if which == "send" {
                    self.cap.max_send_wr
                } else {
                    self.cap.max_recv_wr
                },
            }
        } else {
            FabricError::io(
                format!("ibv_post_{which} on QP {}", self.qpn_raw()),
                std::io::Error::from_raw_os_error(rc),
            )
        }
    }
}

impl Qp for VerbsQp {
    fn qpn(&self) -> u32 {
        self.qpn_raw()
    }

    fn state(&self) -> QpState {
        // SAFETY: zeroed attribute structs are valid out parameters.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut init: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the QP is valid; out pointers are valid.
        let rc = unsafe {
            ibv_query_qp(
                self.qp,
                &mut attr,
                ibv_qp_attr_mask::IBV_QP_STATE.0 as i32,
                &mut init,
            )
        };
        if rc != 0 {
            return QpState::Error;
        }
        map::qp_state_from_ibv(attr.qp_state)
    }

    fn endpoint(&self) -> QpEndpoint {
        QpEndpoint {
            nic: self.inner.addr(self.psn).encode(),
            qpn: self.qpn_raw(),
        }
    }

    fn connect(&self, remote: &QpEndpoint) -> Result<()> {
        let ra = VerbsAddr::of(remote)?;
        let st = self.state();
        if st != QpState::Reset {
            self.reset()?;
        }
        use ibv_qp_attr_mask as m;
        // RESET → INIT.
        // SAFETY: zeroed attributes are valid; only masked fields are read.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_INIT;
        a.pkey_index = 0;
        a.port_num = self.inner.port;
        a.qp_access_flags = map::qp_access_to_ibv(Access(self.access.load(Ordering::Acquire)));
        self.modify(
            &mut a,
            m::IBV_QP_STATE | m::IBV_QP_PKEY_INDEX | m::IBV_QP_PORT | m::IBV_QP_ACCESS_FLAGS,
            "INIT",
        )?;
        // INIT → RTR.
        // SAFETY: as above.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_RTR;
        a.path_mtu = self.inner.mtu.min(ra.mtu as u32);
        a.dest_qp_num = remote.qpn;
        a.rq_psn = ra.psn;
        a.max_dest_rd_atomic = 16;
        a.min_rnr_timer = 12;
        a.ah_attr.dlid = ra.lid;
        a.ah_attr.sl = 0;
        a.ah_attr.src_path_bits = 0;
        a.ah_attr.port_num = self.inner.port;
        if ra.needs_grh() {
            a.ah_attr.is_global = 1;
            a.ah_attr.grh.dgid.raw = ra.gid;
            a.ah_attr.grh.sgid_index = self.inner.gid_index;
            a.ah_attr.grh.hop_limit = 64;
        }
        self.modify(
            &mut a,
            m::IBV_QP_STATE
                | m::IBV_QP_AV
                | m::IBV_QP_PATH_MTU
                | m::IBV_QP_DEST_QPN
                | m::IBV_QP_RQ_PSN
                | m::IBV_QP_MAX_DEST_RD_ATOMIC
                | m::IBV_QP_MIN_RNR_TIMER,
            "RTR",
        )?;
        // RTR → RTS.
        // SAFETY: as above.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_RTS;
        a.timeout = 14;
        a.retry_cnt = 7;
        a.rnr_retry = 7;
        a.sq_psn = self.psn;
        a.max_rd_atomic = 16;
        self.modify(
            &mut a,
            m::IBV_QP_STATE
                | m::IBV_QP_TIMEOUT
                | m::IBV_QP_RETRY_CNT
                | m::IBV_QP_RNR_RETRY
                | m::IBV_QP_SQ_PSN
                | m::IBV_QP_MAX_QP_RD_ATOMIC,
            "RTS",
        )?;
        Ok(())
    }

    fn reset(&self) -> Result<()> {
        // SAFETY: zeroed attributes are valid; only the state is read.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = ibv_qp_state::IBV_QPS_RESET;
        self.modify(&mut a, ibv_qp_attr_mask::IBV_QP_STATE, "RESET")
    }

    fn modify_access(&self, access: Access) -> Result<()> {
        self.access.store(access.0, Ordering::Release);
        // SAFETY: zeroed attributes are valid; only masked fields are read.
        let mut a: ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_access_flags = map::qp_access_to_ibv(access);
        self.modify(
            &mut a,
            ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS,
            "access flags",
        )
    }

    fn post_send(&self, wrs: &[SendWr]) -> Result<()> {
        if wrs.is_empty() {
            return Ok(());
        }
        let keyed = wrs.iter().any(|w| {
            matches!(
                w.op,
                super::WrOp::Bind { .. } | super::WrOp::Invalidate { .. }
            )
        });
        if !keyed {
            // READ/WRITE/atomics/SEND touch no window key: no lock.
            return self.post_chain(wrs);
        }
        // Binds read a window's current rkey and publish the next one: two
        // posts binding the same window must not interleave.
        let _g = self.post.lock().unwrap_or_else(|e| e.into_inner());
        if self.inner.mw_type2 {
            self.post_chain(wrs)
        } else {
            self.post_type1(wrs)
        }
    }

    fn post_recv(&self, wrs: &[RecvWr]) -> Result<()> {
        if wrs.is_empty() {
            return Ok(());
        }
        let mut chain = map::build_recv_chain(&*self.inner, wrs)?;
        let head = chain.link();
        let mut bad: *mut ibv_recv_wr = std::ptr::null_mut();
        // SAFETY: as in post_send.
        let rc = unsafe { ibv_post_recv(self.qp, head, &mut bad) };
        if rc != 0 {
            return Err(self.post_error(rc, "recv"));
        }
        Ok(())
    }
}

impl VerbsQp {
    /// Type-1 windows: binds go through `ibv_bind_mw` (an unbind is a bind
    /// of length 0); other requests are posted in order around them.
    fn post_type1(&self, wrs: &[SendWr]) -> Result<()> {
        let mut start = 0;
        for (i, w) in wrs.iter().enumerate() {
            let (mw, lkey, off, len, access) = match w.op {
                super::WrOp::Bind {
                    mw,
                    lkey,
                    offset,
                    len,
                    access,
                } => (mw, Some(lkey), offset, len, access),
                super::WrOp::Invalidate { mw } => (mw, None, 0, 0, Access::NONE),
                _ => continue,
            };
            self.post_chain(&wrs[start..i])?;
            start = i + 1;
            let win = self
                .inner
                .mw(mw)
                .ok_or_else(|| FabricError::Invalid(format!("unknown window {mw}")))?;
            let bind_info = match lkey {
                Some(k) => map::bind_info(&*self.inner, k, off, len, access)?,
                // An unbind is a zero-length bind.
                None => ibv_mw_bind_info {
                    mr: std::ptr::null_mut(),
                    addr: 0,
                    length: 0,
                    mw_access_flags: 0,
                },
            };
            let mut b = ibv_mw_bind {
                wr_id: w.wr_id,
                send_flags: if w.signaled {
                    ibv_send_flags::IBV_SEND_SIGNALED.0
                } else {
                    0
                },
                bind_info,
            };
            // SAFETY: qp, mw and mr are objects of this context; b is valid.
            let rc = unsafe { ibv_bind_mw(self.qp, win.mw, &mut b) };
            if rc != 0 {
                return Err(FabricError::io(
                    "ibv_bind_mw",
                    std::io::Error::from_raw_os_error(rc),
                ));
            }
            // SAFETY: the provider updated the window's rkey.
            self.inner.set_rkey(mw, unsafe { (*win.mw).rkey });
        }
        self.post_chain(&wrs[start..])
    }

    /// Builds and posts one `ibv_send_wr` chain, then publishes the rkeys
    /// of the binds/invalidates that were accepted (all of them, or those
    /// before the request verbs refused).
    fn post_chain(&self, wrs: &[SendWr]) -> Result<()> {
        if wrs.is_empty() {
            return Ok(());
        }
        let mut chain = map::build_send_chain(&*self.inner, wrs)?;
        let head = chain.link();
        let mut bad: *mut ibv_send_wr = std::ptr::null_mut();
        // SAFETY: the chain, its sges and every buffer they name (registered
        // memory kept alive by the key table) are valid during the call.
        let rc = unsafe { ibv_post_send(self.qp, head, &mut bad) };
        let posted = if rc == 0 {
            wrs.len()
        } else {
            // `bad` points at the first refused request of the chain.
            chain
                .wrs
                .iter()
                .position(|w| std::ptr::eq(w, bad))
                .unwrap_or(0)
        };
        for &(i, h, k) in &chain.new_rkeys {
            if i < posted {
                self.inner.set_rkey(h, k);
            }
        }
        if rc != 0 {
            return Err(self.post_error(rc, "send"));
        }
        Ok(())
    }
}

impl Drop for VerbsQp {
    fn drop(&mut self) {
        // SAFETY: destroyed once; its CQs (held in `_cqs`) outlive it.
        unsafe { ibv_destroy_qp(self.qp) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_the_environment_and_rejects_garbage() {
        // One test owns these variables (tests in this module run in one
        // process; no other test reads them).
        std::env::set_var("PATRONUS_RDMA_DEVICE", "mlx5_3");
        std::env::set_var("PATRONUS_RDMA_PORT", "2");
        std::env::set_var("PATRONUS_RDMA_GID_INDEX", "3");
        let c = VerbsConfig::from_env().unwrap();
        assert_eq!(c.device.as_deref(), Some("mlx5_3"));
        assert_eq!((c.port, c.gid_index), (2, 3));
        std::env::set_var("PATRONUS_RDMA_PORT", "0");
        assert!(VerbsConfig::from_env().is_err());
        std::env::set_var("PATRONUS_RDMA_PORT", "1");
        std::env::set_var("PATRONUS_RDMA_GID_INDEX", "-1");
        assert!(VerbsConfig::from_env().is_err());
        std::env::remove_var("PATRONUS_RDMA_DEVICE");
        std::env::remove_var("PATRONUS_RDMA_PORT");
        std::env::remove_var("PATRONUS_RDMA_GID_INDEX");
        assert_eq!(VerbsConfig::from_env().unwrap(), VerbsConfig::default());
    }

    /// Where no RDMA device exists (CI), opening fails at once with an error
    /// that names the device list; where one exists, opening works.
    #[test]
    fn no_device_is_a_clear_error() {
        match device_names() {
            Err(e) => {
                let msg = e.to_string();
                assert!(matches!(e, FabricError::NoDevice(_)), "{e:?}");
                assert!(msg.contains("ibv_get_device_list"), "{msg}");
                assert!(msg.contains("errno"), "{msg}");
                let e = VerbsNic::open(VerbsConfig::default())
                    .err()
                    .expect("open without a device");
                assert!(e.to_string().contains("no RDMA device"), "{e}");
            }
            Ok(names) => {
                assert!(!names.is_empty());
                let e = VerbsNic::open(VerbsConfig {
                    device: Some("no-such-device-xyz".into()),
                    ..VerbsConfig::default()
                })
                .err()
                .expect("an unknown device name");
                assert!(e.to_string().contains("not found"), "{e}");
            }
        }
    }
}
