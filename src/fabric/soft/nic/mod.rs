//! The soft NIC: key table, memory, QPs, and the threads that play the
//! hardware (connection set-up, the shm responder, the tcp responder).

mod accept;
mod addr;
mod serve_shm;
mod serve_tcp;
mod sys;

use std::collections::HashMap;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Mutex, RwLock};

use self::accept::control_loop;
use self::serve_shm::shm_loop;
use self::serve_tcp::tcp_loop;
use self::sys::{efd_signal, epoll_ctl, eventfd, STOP_TOKEN};
use super::auth::{Identity, KEY_LEN};
use super::cq::SoftCq;
use super::keys::KeyTable;
use super::qp::{QpInner, SendSide, SoftQp};
use super::responder::Target;
use super::shm::{self, InShm};
use super::wire::{MAX_RDMA_LEN, MAX_SEND};
use super::LinkKind;
use crate::fabric::mem::{MemBlock, Mr};
use crate::fabric::{Access, Caps, Cq, FabricError, MwInfo, Nic, Pd, Qp, QpCap, Result};

pub use addr::NicAddr;
pub use serve_tcp::InTcp;

/// Configuration of a soft NIC.
#[derive(Clone, Debug)]
pub struct SoftConfig {
    /// Link used by QPs of this NIC to reach peers.
    pub link: LinkKind,
    /// Address the tcp listener binds ("127.0.0.1:0" = any free loopback port).
    pub tcp_listen: String,
    /// Key-table slots (MRs + MWs).
    pub max_keys: u32,
    /// Most inbound tcp channels at once; past it a new connection is
    /// closed right after accept.
    pub max_tcp_channels: usize,
    /// Most bytes all inbound tcp channels may hold buffered (input and
    /// output, allocated); past it channels stop growing and are read only
    /// into the buffers they have (back-pressure).
    pub tcp_buffer_total: usize,
    /// How long an inbound tcp channel may hold buffered input (the start
    /// of a frame not yet complete, or frames it cannot be served yet)
    /// without a single new byte arriving. Past it the channel is closed
    /// and its buffers freed (a peer that announces a large frame, sends
    /// part of it and stops no longer holds its share of
    /// `tcp_buffer_total` forever). The tcp responder compares each
    /// channel's byte count about every 100 ms, so a channel goes between
    /// this and about 200 ms past it. A sender that keeps sending, however
    /// slowly, is never closed by it. Not exempt: a channel the NIC stopped
    /// reading for lack of buffer budget (closing it frees budget), and a
    /// soft-NIC initiator that posted a frame larger than the socket
    /// buffers and then did not poll its CQ for this long (it writes only
    /// while posting and polling).
    pub tcp_stall_timeout: std::time::Duration,
    /// Windows stay bound across a reset of their QP (true, the default).
    /// False makes the NIC behave as a device whose windows do not survive
    /// RESET: [`Qp::reset`] of a QP invalidates every window bound to it
    /// (each takes a tag step, so its old rkey is dead), and
    /// [`Caps::windows_survive_reset`] says so, so the lease layer re-binds
    /// on recovery. For tests of that path.
    pub windows_survive_reset: bool,
}

impl Default for SoftConfig {
    fn default() -> Self {
        SoftConfig {
            link: LinkKind::Shm,
            tcp_listen: "127.0.0.1:0".into(),
            max_keys: 1 << 18,
            max_tcp_channels: 1024,
            tcp_buffer_total: 64 << 20,
            tcp_stall_timeout: std::time::Duration::from_secs(5),
            windows_survive_reset: true,
        }
    }
}

pub(crate) struct NicInner {
    pub(crate) caps: Caps,
    pub(crate) link: LinkKind,
    pub(crate) keys: KeyTable,
    pub(crate) addr: NicAddr,
    /// This NIC's key pair (its public half is in `addr`).
    pub(crate) id: Identity,
    next_pd: AtomicU32,
    mrs: RwLock<Vec<Option<Arc<Mr>>>>,
    /// Bumped on every MR (de)registration: initiators cache lookups.
    pub(crate) mr_epoch: AtomicU64,
    blocks: Mutex<Vec<Arc<MemBlock>>>,
    pub(crate) qps: RwLock<HashMap<u32, Arc<QpInner>>>,
    next_qpn: AtomicU32,
    stop: AtomicBool,
    doorbell: OwnedFd,
    wake: OwnedFd,
    epoll: OwnedFd,
    in_shm: RwLock<Vec<Arc<InShm>>>,
    in_shm_ver: AtomicU64,
    in_tcp: Mutex<HashMap<u64, Arc<InTcp>>>,
    next_token: AtomicU64,
    /// Limits of the inbound tcp channels (from `SoftConfig`).
    max_tcp_channels: usize,
    tcp_buffer_total: usize,
    tcp_stall_timeout: std::time::Duration,
    /// Bytes the inbound tcp channels' buffers hold allocated now.
    tcp_buffered: AtomicUsize,
    /// Connections closed at accept because the channel cap was reached.
    tcp_refused: AtomicU64,
    /// Channels closed because their buffered input made no progress
    /// within `tcp_stall_timeout`.
    tcp_stalled_closed: AtomicU64,
    /// Channels closed because they kept sending into an epoch their QP
    /// had already refused (more frames than any send queue can hold).
    tcp_flood_closed: AtomicU64,
    /// Peers (NIC public keys) that flooded a channel: no new channel until
    /// the ban ends (see `NicInner::ban_flooder`).
    flood_bans: Mutex<HashMap<[u8; KEY_LEN], FloodBan>>,
    /// Run by the serving loops before they execute a batch of requests
    /// (`Nic::set_serve_hook`); the loops take a copy when `serve_hook_ver`
    /// moves.
    serve_hook: Mutex<Option<crate::fabric::ServeHook>>,
    serve_hook_ver: AtomicU64,
}

/// A serving loop's copy of the NIC's serve hook.
#[derive(Default)]
pub(crate) struct HookCache {
    ver: u64,
    hook: Option<crate::fabric::ServeHook>,
}

impl HookCache {
    /// Runs the hook (one atomic load when none is set).
    #[inline]
    pub(crate) fn run(&mut self, nic: &NicInner) {
        let v = nic.serve_hook_ver.load(Ordering::Acquire);
        if v != self.ver {
            self.ver = v;
            self.hook = nic.serve_hook.lock().clone();
        }
        if let Some(h) = &self.hook {
            h();
        }
    }
}

/// A flooding peer's ban: until when, and how many floods so far (each
/// doubles the next ban).
#[derive(Clone, Copy, Debug)]
pub(crate) struct FloodBan {
    until: std::time::Instant,
    strikes: u32,
}

/// The first ban of a flooding peer; each further flood doubles it, up to
/// [`FLOOD_BAN_MAX`]. A peer quiet for [`FLOOD_FORGET`] after its ban
/// starts again from the first.
const FLOOD_BAN: std::time::Duration = std::time::Duration::from_millis(100);
const FLOOD_BAN_MAX: std::time::Duration = std::time::Duration::from_secs(10);
const FLOOD_FORGET: std::time::Duration = std::time::Duration::from_secs(60);
/// Most peers remembered (oldest bans dropped past it): a bound on memory
/// whatever number of keys flooders make up.
const FLOOD_BANS_MAX: usize = 4096;

impl NicInner {
    /// Bans the peer with public key `pk` from new channels after it
    /// flooded one (its channel was closed).
    pub(crate) fn ban_flooder(&self, pk: &[u8; KEY_LEN]) {
        let now = std::time::Instant::now();
        let mut bans = self.flood_bans.lock();
        if bans.len() >= FLOOD_BANS_MAX {
            bans.retain(|_, b| b.until + FLOOD_FORGET > now);
            if bans.len() >= FLOOD_BANS_MAX {
                if let Some(k) = bans.iter().min_by_key(|(_, b)| b.until).map(|(k, _)| *k) {
                    bans.remove(&k);
                }
            }
        }
        let strikes = match bans.get(pk) {
            Some(b) if b.until + FLOOD_FORGET > now => b.strikes.saturating_add(1),
            _ => 1,
        };
        let ban = FLOOD_BAN
            .saturating_mul(1u32 << (strikes - 1).min(16))
            .min(FLOOD_BAN_MAX);
        tracing::warn!(
            strikes,
            "peer flooded a channel: no new channels for {ban:?}"
        );
        bans.insert(
            *pk,
            FloodBan {
                until: now + ban,
                strikes,
            },
        );
    }

    /// Whether the peer with public key `pk` is banned now.
    pub(crate) fn banned(&self, pk: &[u8; KEY_LEN]) -> bool {
        self.flood_bans
            .lock()
            .get(pk)
            .is_some_and(|b| std::time::Instant::now() < b.until)
    }
}

impl NicInner {
    pub(crate) fn mr_by_lkey(&self, lkey: u32) -> Option<Arc<Mr>> {
        let l = self.mrs.read();
        let m = l.get(self.keys.split(lkey).0 as usize)?.as_ref()?;
        if m.lkey() == lkey {
            Some(m.clone())
        } else {
            None
        }
    }

    fn set_mr(&self, idx: u32, m: Option<Arc<Mr>>) {
        let mut l = self.mrs.write();
        if l.len() <= idx as usize {
            l.resize(idx as usize + 1, None);
        }
        l[idx as usize] = m;
        self.mr_epoch.fetch_add(1, Ordering::Release);
    }

    /// Whether one more inbound tcp channel may be set up. The acceptor
    /// calls this right after accept and closes the connection when false.
    pub(crate) fn admit_tcp(&self) -> bool {
        let n = self.in_tcp.lock().len();
        if n < self.max_tcp_channels {
            return true;
        }
        let refused = self.tcp_refused.fetch_add(1, Ordering::Relaxed) + 1;
        if refused.is_power_of_two() {
            tracing::warn!(
                channels = n,
                refused,
                "tcp channel cap ({}) reached: closing new connections",
                self.max_tcp_channels
            );
        } else {
            tracing::debug!(channels = n, "tcp channel cap reached: connection closed");
        }
        false
    }

    fn target(&self, q: &QpInner) -> Target {
        Target {
            qpn: q.qpn,
            pd: q.pd,
            access: q.access(),
        }
    }
}

/// A software RNIC.
pub struct SoftNic {
    inner: Arc<NicInner>,
    threads: Vec<JoinHandle<()>>,
}

static NIC_SEQ: AtomicU64 = AtomicU64::new(0);

impl SoftNic {
    /// Opens a soft NIC: listeners for both links and the hardware threads.
    pub fn open(cfg: SoftConfig) -> Result<SoftNic> {
        let name = format!(
            "patronus-nic-{}-{}-{:x}",
            std::process::id(),
            NIC_SEQ.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let ul = {
            use std::os::linux::net::SocketAddrExt;
            let sa = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .map_err(|e| FabricError::io("abstract socket name", e))?;
            UnixListener::bind_addr(&sa).map_err(|e| FabricError::io("binding shm listener", e))?
        };
        let tl = TcpListener::bind(&cfg.tcp_listen)
            .map_err(|e| FabricError::io(format!("binding tcp listener {}", cfg.tcp_listen), e))?;
        let tcp_addr = tl
            .local_addr()
            .map_err(|e| FabricError::io("tcp listener address", e))?
            .to_string();
        // SAFETY: plain syscall; result checked.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(FabricError::io(
                "epoll_create1",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: ep was just created and is owned here.
        let epoll = unsafe { OwnedFd::from_raw_fd(ep) };
        let wake = eventfd()?;
        epoll_ctl(
            ep,
            libc::EPOLL_CTL_ADD,
            wake.as_raw_fd(),
            libc::EPOLLIN as u32,
            STOP_TOKEN,
        )
        .map_err(|e| FabricError::io("epoll_ctl", e))?;
        let id = Identity::generate();
        let link_name = match cfg.link {
            LinkKind::Shm => "soft-shm",
            LinkKind::Tcp => "soft-tcp",
        };
        let inner = Arc::new(NicInner {
            caps: Caps {
                name: link_name.into(),
                mw_type2: true,
                atomics: true,
                max_msg_size: MAX_RDMA_LEN as u64,
                max_send_size: MAX_SEND,
                max_qp_wr: shm::REQ_SLOTS,
                max_mw: cfg.max_keys,
                modify_qp_access: true,
                rereg_mr: true,
                peer_errs_with_requester: false,
                // The responder runs atomics as CPU atomics on the memory.
                atomics_glob: true,
                windows_survive_reset: cfg.windows_survive_reset,
            },
            link: cfg.link,
            keys: KeyTable::new(cfg.max_keys),
            addr: NicAddr {
                shm: Some(name),
                tcp: Some(tcp_addr),
                pk: Some(id.public()),
            },
            id,
            next_pd: AtomicU32::new(1),
            mrs: RwLock::new(Vec::new()),
            mr_epoch: AtomicU64::new(0),
            blocks: Mutex::new(Vec::new()),
            qps: RwLock::new(HashMap::new()),
            next_qpn: AtomicU32::new(1),
            stop: AtomicBool::new(false),
            doorbell: eventfd()?,
            wake,
            epoll,
            in_shm: RwLock::new(Vec::new()),
            in_shm_ver: AtomicU64::new(0),
            in_tcp: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            max_tcp_channels: cfg.max_tcp_channels,
            tcp_buffer_total: cfg.tcp_buffer_total,
            tcp_stall_timeout: cfg.tcp_stall_timeout,
            tcp_buffered: AtomicUsize::new(0),
            tcp_refused: AtomicU64::new(0),
            tcp_stalled_closed: AtomicU64::new(0),
            tcp_flood_closed: AtomicU64::new(0),
            flood_bans: Mutex::new(HashMap::new()),
            serve_hook: Mutex::new(None),
            serve_hook_ver: AtomicU64::new(0),
        });
        let mut threads = Vec::new();
        let i = inner.clone();
        threads.push(spawn("nic-ctl", move || control_loop(i, ul, tl))?);
        let i = inner.clone();
        threads.push(spawn("nic-shm", move || shm_loop(i))?);
        let i = inner.clone();
        threads.push(spawn("nic-tcp", move || tcp_loop(i))?);
        Ok(SoftNic { inner, threads })
    }

    /// This NIC's address bytes (as in every QP endpoint).
    pub fn address(&self) -> Vec<u8> {
        self.inner.addr.encode()
    }

    /// This NIC's public key (also in its address).
    pub fn public_key(&self) -> [u8; KEY_LEN] {
        self.inner.id.public()
    }

    /// Opens an authenticated tcp channel from this NIC, as its QP
    /// `src_qpn`, to QP `dst_qpn` of the NIC at `remote` (address bytes),
    /// outside any local QP: the raw stream right after the hello, for
    /// tests and tools that speak the frame protocol themselves.
    pub fn connect_raw_tcp(
        &self,
        remote: &[u8],
        src_qpn: u32,
        dst_qpn: u32,
        epoch: u64,
    ) -> Result<std::net::TcpStream> {
        let a = NicAddr::decode(remote)?;
        let pk = a.require_pk()?;
        let t = a
            .tcp
            .ok_or_else(|| FabricError::Invalid("remote NIC has no tcp address".into()))?;
        super::tcp::connect_stream(&t, &self.inner.id, &pk, src_qpn, dst_qpn, epoch)
    }

    /// As `connect_raw_tcp`, over the shm link: the raw initiator side.
    pub fn connect_raw_shm(
        &self,
        remote: &[u8],
        src_qpn: u32,
        dst_qpn: u32,
        epoch: u64,
    ) -> Result<shm::OutShm> {
        let a = NicAddr::decode(remote)?;
        let pk = a.require_pk()?;
        let n = a
            .shm
            .ok_or_else(|| FabricError::Invalid("remote NIC has no shm address".into()))?;
        shm::OutShm::connect(&n, &self.inner.id, &pk, src_qpn, dst_qpn, epoch)
    }

    /// Number of live inbound channels (for tests and diagnostics).
    pub fn inbound_channels(&self) -> usize {
        self.inner
            .in_shm
            .read()
            .iter()
            .filter(|c| !c.dead.load(Ordering::Relaxed))
            .count()
            + self.inner.in_tcp.lock().len()
    }

    /// Bytes the inbound tcp channels' buffers hold allocated, and the tcp
    /// connections refused at the channel cap (for tests and diagnostics).
    pub fn tcp_usage(&self) -> (usize, u64) {
        (
            self.inner.tcp_buffered.load(Ordering::Relaxed),
            self.inner.tcp_refused.load(Ordering::Relaxed),
        )
    }

    /// Inbound tcp channels closed because their buffered input made no
    /// progress within `SoftConfig::tcp_stall_timeout` (for tests and
    /// diagnostics).
    pub fn tcp_stalled_closed(&self) -> u64 {
        self.inner.tcp_stalled_closed.load(Ordering::Relaxed)
    }

    /// Inbound tcp channels closed for sending more frames into a refused
    /// epoch than a send queue can hold (for tests and diagnostics).
    pub fn tcp_flood_closed(&self) -> u64 {
        self.inner.tcp_flood_closed.load(Ordering::Relaxed)
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| FabricError::io(format!("spawning {name} thread"), e))
}

impl Drop for SoftNic {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        efd_signal(self.inner.wake.as_raw_fd());
        efd_signal(self.inner.doorbell.as_raw_fd());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for c in self.inner.in_shm.write().drain(..) {
            c.kill("NIC closed");
        }
        for (_, c) in self.inner.in_tcp.lock().drain() {
            c.kill();
        }
    }
}

impl Nic for SoftNic {
    fn caps(&self) -> &Caps {
        &self.inner.caps
    }

    fn alloc_pd(&self) -> Result<Pd> {
        Ok(Pd(self.inner.next_pd.fetch_add(1, Ordering::Relaxed)))
    }

    fn alloc_mr(&self, pd: Pd, len: usize, access: Access) -> Result<Arc<Mr>> {
        let block = Arc::new(MemBlock::new(len, "mr")?);
        let key = self
            .inner
            .keys
            .add_mr(pd.0, block.as_ptr() as u64, len as u64, access)?;
        let mr = Arc::new(Mr::new(
            block.clone(),
            0,
            len as u64,
            (key, key),
            access,
            pd.0 as u64,
        ));
        self.inner
            .set_mr(self.inner.keys.split(key).0, Some(mr.clone()));
        self.inner.blocks.lock().push(block);
        Ok(mr)
    }

    fn reg_sub_mr(&self, parent: &Mr, offset: u64, len: u64, access: Access) -> Result<Arc<Mr>> {
        match offset.checked_add(len) {
            Some(end) if end <= parent.len() && len > 0 => {}
            _ => {
                return Err(FabricError::Invalid(format!(
                    "sub-MR [{offset}, +{len}) outside a region of {} bytes",
                    parent.len()
                )))
            }
        }
        let pd = parent.handle as u32;
        let key = self
            .inner
            .keys
            .add_mr(pd, parent.addr() + offset, len, access)?;
        let mr = Arc::new(Mr::new(
            parent.block().clone(),
            parent.block_offset() + offset,
            len,
            (key, key),
            access,
            pd as u64,
        ));
        self.inner
            .set_mr(self.inner.keys.split(key).0, Some(mr.clone()));
        Ok(mr)
    }

    fn dereg_mr(&self, mr: &Mr) -> Result<()> {
        let key = mr.lkey();
        self.inner.keys.remove(key)?;
        self.inner.set_mr(self.inner.keys.split(key).0, None);
        Ok(())
    }

    fn rereg_mr(&self, mr: &Mr, access: Access) -> Result<(u32, u32)> {
        let key = self.inner.keys.rereg_mr(mr.lkey(), access)?;
        mr.set_keys(key, key, access);
        Ok((key, key))
    }

    fn alloc_mw(&self, pd: Pd) -> Result<MwInfo> {
        let (handle, rkey) = self.inner.keys.add_mw(pd.0)?;
        Ok(MwInfo { handle, rkey })
    }

    fn dealloc_mw(&self, handle: u32) -> Result<()> {
        let k = self.inner.keys.mw_rkey(handle);
        if k == 0 {
            return Err(FabricError::Invalid(format!("{handle} is not a window")));
        }
        self.inner.keys.remove(k)
    }

    fn mw_rkey(&self, handle: u32) -> u32 {
        self.inner.keys.mw_rkey(handle)
    }

    fn create_cq(&self, depth: u32) -> Result<Arc<dyn Cq>> {
        Ok(Arc::new(SoftCq::new(depth)))
    }

    fn create_qp(
        &self,
        pd: Pd,
        send_cq: &Arc<dyn Cq>,
        recv_cq: &Arc<dyn Cq>,
        cap: QpCap,
    ) -> Result<Arc<dyn Qp>> {
        let as_soft = |c: &Arc<dyn Cq>| -> Result<Arc<SoftCq>> {
            let any: Arc<dyn std::any::Any + Send + Sync> = c.clone();
            any.downcast::<SoftCq>()
                .map_err(|_| FabricError::Invalid("CQ of another backend".into()))
        };
        if cap.max_send_wr == 0 || cap.max_send_wr > shm::REQ_SLOTS || cap.max_recv_wr > 1 << 16 {
            return Err(FabricError::Invalid(format!(
                "QP capacity {cap:?} outside 1..={} send WRs",
                shm::REQ_SLOTS
            )));
        }
        let scq = as_soft(send_cq)?;
        let rcq = as_soft(recv_cq)?;
        let qpn = self.inner.next_qpn.fetch_add(1, Ordering::Relaxed);
        let q = Arc::new(QpInner::new(
            qpn,
            pd.0,
            self.inner.clone(),
            scq.clone(),
            rcq.clone(),
            cap,
        ));
        scq.attach(&q, Some(SendSide::new(cap)), false);
        rcq.attach(&q, None, true);
        self.inner.qps.write().insert(qpn, q.clone());
        Ok(Arc::new(SoftQp { inner: q }))
    }

    fn set_serve_hook(&self, hook: Option<crate::fabric::ServeHook>) -> bool {
        *self.inner.serve_hook.lock() = hook;
        self.inner.serve_hook_ver.fetch_add(1, Ordering::Release);
        true
    }
}
