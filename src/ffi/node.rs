//! Nodes, threads, time, keeper and memory-node buffers.
//!
//! A `patronus_t` owns one node (`node::Patronus`). The original binds a
//! client or server role to the calling OS thread with
//! `registerClientThread()` / `registerServerThread()`; here the registered
//! `ClientThread` / `Directory` lives in a thread-local table keyed by the
//! node's unique id, so one thread may belong to several nodes (tests with
//! several nodes in one process) and a freed node's address being reused
//! never resurrects its threads.

#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::boundary::guard;
use super::error::{fail, set_last_error, PatronusRc};
use super::gaddr::patronus_gaddr_t;
use crate::client::ClientThread;
use crate::node::{Config, Patronus};
use crate::server::Directory;
use crate::Error;

/// One node of a Patronus cluster (opaque).
pub struct patronus_t {
    pub(crate) node: Patronus,
    pub(crate) uid: u64,
    /// Buffers handed out by `patronus_get_rdma_buffer`: address -> owner.
    pub(crate) bufs: parking_lot::Mutex<HashMap<usize, Box<[u8]>>>,
}

/// Node configuration. Fill it with `patronus_config_init`, then change
/// what you need. Strings are borrowed only during `patronus_new`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct patronus_config_t {
    /// Nodes in the cluster; start-up waits for all of them.
    pub machine_nr: u16,
    /// Directories (server threads) per memory node.
    pub dir_nr: u16,
    /// Lease buffer bytes (0: default).
    pub lease_buffer_size: usize,
    /// Allocation buffer bytes (0: default).
    pub alloc_buffer_size: usize,
    /// Application-reserved bytes (0: default).
    pub reserved_buffer_size: usize,
    /// Node whose clock is the cluster's.
    pub time_parent_node_id: u16,
    /// "shm", "tcp" or "verbs"; NULL: env PATRONUS_FABRIC, else "shm".
    pub fabric: *const c_char,
    /// "memcached://HOST:PORT" (or "memcache://"); NULL: env
    /// PATRONUS_KEEPER, else the in-process keeper.
    pub keeper: *const c_char,
    /// tcp fabric listen address; NULL: "127.0.0.1:0".
    pub listen_addr: *const c_char,
    /// Keeper namespace; NULL: "default".
    pub cluster: *const c_char,
    /// Skip time synchronisation.
    pub simplify: bool,
    /// Client thread slots per node (0: 4).
    pub client_threads: u16,
    /// Leases (windows, protection regions) per directory (0: 4096).
    pub leases_per_dir: u32,
    /// Timeout of every RPC in milliseconds (0: 2000).
    pub rpc_timeout_ms: u64,
}

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

#[derive(Default)]
struct Roles {
    client: Option<ClientThread>,
    server: Option<Directory>,
}

thread_local! {
    static ROLES: RefCell<HashMap<u64, Roles>> = RefCell::new(HashMap::new());
}

/// Maps a Rust error to the original's return codes.
pub(crate) fn rc_of(e: &Error) -> PatronusRc {
    use PatronusRc::*;
    match e {
        Error::Invalid(_) => PATRONUS_RC_INVALID,
        Error::NotFound(_) => PATRONUS_RC_NOT_FOUND,
        Error::NoMem(_) => PATRONUS_RC_NO_MEM,
        Error::Timeout(_) | Error::Fabric(_) => PATRONUS_RC_RDMA_EXECUTION_ERR,
        Error::Keeper(_) => PATRONUS_RC_RETRY,
        Error::Io { .. } => PATRONUS_RC_INTERNAL,
    }
}

/// Records `e` as the last error (prefixed with the call) and returns its RC.
pub(crate) fn err_rc(call: &str, e: &Error) -> PatronusRc {
    fail(rc_of(e), format!("{call}: {e}"))
}

/// The C code of a lease-layer return code.
pub(crate) fn rc_to_c(rc: crate::lease::Rc) -> PatronusRc {
    use crate::lease::Rc as R;
    use PatronusRc::*;
    match rc {
        R::Ok => PATRONUS_RC_OK,
        R::NotFound => PATRONUS_RC_NOT_FOUND,
        R::NoMem => PATRONUS_RC_NO_MEM,
        R::Retry => PATRONUS_RC_RETRY,
        R::CacheStale => PATRONUS_RC_CACHE_STALE,
        R::Invalid => PATRONUS_RC_INVALID,
        R::RdmaProtectionErr => PATRONUS_RC_RDMA_PROTECTION_ERR,
        R::RdmaExecutionErr => PATRONUS_RC_RDMA_EXECUTION_ERR,
        R::LeaseLocalExpiredErr => PATRONUS_RC_LEASE_LOCAL_EXPIRED_ERR,
        R::MockCrashed => PATRONUS_RC_MOCK_CRASHED,
        R::Reserved => PATRONUS_RC_RESERVED,
        R::Internal => PATRONUS_RC_INTERNAL,
    }
}

/// Borrows the node behind `p`, or records why not.
pub(crate) fn node_ref<'a>(call: &str, p: *const patronus_t) -> Option<&'a patronus_t> {
    if p.is_null() {
        set_last_error(format!("{call}: p is NULL"));
        return None;
    }
    // SAFETY: a non-NULL `p` must come from `patronus_new` and not be freed
    // yet (the documented contract); the node is only read through `&`.
    Some(unsafe { &*p })
}

/// Runs `f` with this thread's client thread of node `p`.
pub(crate) fn with_client<T>(
    call: &str,
    p: &patronus_t,
    f: impl FnOnce(&mut ClientThread) -> T,
) -> Option<T> {
    ROLES.with(|r| {
        let mut r = r.borrow_mut();
        match r.get_mut(&p.uid).and_then(|x| x.client.as_mut()) {
            Some(c) => Some(f(c)),
            None => {
                set_last_error(format!(
                    "{call}: this thread is not a client thread of node {} (call patronus_register_client_thread first)",
                    p.node.get_node_id()
                ));
                None
            }
        }
    })
}

fn opt_str(call: &str, field: &str, s: *const c_char) -> Result<Option<String>, PatronusRc> {
    if s.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller passes NUL-terminated strings (documented).
    let c = unsafe { CStr::from_ptr(s) };
    c.to_str().map(|s| Some(s.to_string())).map_err(|_| {
        fail(
            PatronusRc::PATRONUS_RC_INVALID,
            format!("{call}: {field} is not valid UTF-8"),
        )
    })
}

/// Fills `conf` with the defaults: one node, one directory, 16 MiB lease
/// and alloc buffers, 4 MiB reserved, the fabric and keeper from the
/// environment (else shm and in-process). NULL is ignored.
#[no_mangle]
pub extern "C" fn patronus_config_init(conf: *mut patronus_config_t) {
    guard("patronus_config_init", || {
        if conf.is_null() {
            set_last_error("patronus_config_init: conf is NULL");
            return;
        }
        let d = Config::default();
        let c = patronus_config_t {
            machine_nr: d.machine_nr,
            dir_nr: d.dir_nr,
            lease_buffer_size: d.lease_buffer_size as usize,
            alloc_buffer_size: d.alloc_buffer_size as usize,
            reserved_buffer_size: d.reserved_buffer_size as usize,
            time_parent_node_id: 0,
            fabric: std::ptr::null(),
            keeper: std::ptr::null(),
            listen_addr: std::ptr::null(),
            cluster: std::ptr::null(),
            simplify: false,
            client_threads: d.client_threads,
            leases_per_dir: d.leases_per_dir,
            rpc_timeout_ms: d.rpc_timeout.as_millis() as u64,
        };
        // SAFETY: `conf` is non-NULL and points to a writable config.
        unsafe { conf.write(c) };
    })
}

fn config_from(call: &str, c: &patronus_config_t) -> Result<Config, PatronusRc> {
    let mut cfg = Config::default();
    if c.machine_nr == 0 || c.dir_nr == 0 {
        return Err(fail(
            PatronusRc::PATRONUS_RC_INVALID,
            format!(
                "{call}: machine_nr ({}) and dir_nr ({}) must be positive",
                c.machine_nr, c.dir_nr
            ),
        ));
    }
    cfg.machine_nr = c.machine_nr;
    cfg.dir_nr = c.dir_nr;
    let nz = |v: usize, d: u64| if v == 0 { d } else { v as u64 };
    cfg.lease_buffer_size = nz(c.lease_buffer_size, cfg.lease_buffer_size);
    cfg.alloc_buffer_size = nz(c.alloc_buffer_size, cfg.alloc_buffer_size);
    cfg.reserved_buffer_size = nz(c.reserved_buffer_size, cfg.reserved_buffer_size);
    const MAX_BUF: u64 = 1 << 40;
    for (n, v) in [
        ("lease_buffer_size", cfg.lease_buffer_size),
        ("alloc_buffer_size", cfg.alloc_buffer_size),
        ("reserved_buffer_size", cfg.reserved_buffer_size),
    ] {
        if v > MAX_BUF {
            return Err(fail(
                PatronusRc::PATRONUS_RC_INVALID,
                format!("{call}: {n} of {v} bytes is impossible"),
            ));
        }
    }
    cfg.time_parent_node_id = c.time_parent_node_id;
    if let Some(f) = opt_str(call, "fabric", c.fabric)? {
        cfg.fabric = f;
    }
    if let Some(k) = opt_str(call, "keeper", c.keeper)? {
        cfg.keeper = Some(k);
    }
    if let Some(l) = opt_str(call, "listen_addr", c.listen_addr)? {
        cfg.listen_addr = l;
    }
    if let Some(n) = opt_str(call, "cluster", c.cluster)? {
        cfg.cluster = n;
    }
    cfg.simplify = c.simplify;
    if c.client_threads != 0 {
        cfg.client_threads = c.client_threads;
    }
    if c.leases_per_dir != 0 {
        cfg.leases_per_dir = c.leases_per_dir;
    }
    if c.rpc_timeout_ms != 0 {
        cfg.rpc_timeout = Duration::from_millis(c.rpc_timeout_ms);
    }
    Ok(cfg)
}

/// Joins (or forms) the cluster `conf` describes; blocks until all
/// `machine_nr` nodes joined. Returns NULL on failure (see
/// `patronus_last_error()`). Ownership: free the node with `patronus_free`.
/// `conf` NULL means all defaults.
#[no_mangle]
pub extern "C" fn patronus_new(conf: *const patronus_config_t) -> *mut patronus_t {
    guard("patronus_new", || {
        let mut c = std::mem::MaybeUninit::<patronus_config_t>::uninit();
        let c = if conf.is_null() {
            patronus_config_init(c.as_mut_ptr());
            // SAFETY: patronus_config_init wrote every field.
            unsafe { c.assume_init() }
        } else {
            // SAFETY: a non-NULL `conf` points to an initialised config.
            unsafe { *conf }
        };
        let cfg = match config_from("patronus_new", &c) {
            Ok(c) => c,
            Err(_) => return std::ptr::null_mut(),
        };
        match Patronus::new(cfg) {
            Ok(node) => Box::into_raw(Box::new(patronus_t {
                node,
                uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
                bufs: Default::default(),
            })),
            Err(e) => {
                err_rc("patronus_new", &e);
                std::ptr::null_mut()
            }
        }
    })
}

/// Leaves the cluster and frees the node. Client and server threads of
/// this node registered by other OS threads stop working (their calls
/// fail) but stay safe. NULL is a no-op.
#[no_mangle]
pub extern "C" fn patronus_free(p: *mut patronus_t) {
    guard("patronus_free", || {
        if p.is_null() {
            return;
        }
        // SAFETY: `p` came from `patronus_new` and is freed once (contract).
        let b = unsafe { Box::from_raw(p) };
        let _ = ROLES.try_with(|r| r.borrow_mut().remove(&b.uid));
        drop(b);
    })
}

/// Makes the calling OS thread a client thread of `p` (takes a client slot:
/// its QPs towards every directory). Calling it again on the same thread is
/// a no-op. PATRONUS_RC_NO_MEM when every slot is taken.
#[no_mangle]
pub extern "C" fn patronus_register_client_thread(p: *mut patronus_t) -> PatronusRc {
    guard("patronus_register_client_thread", || {
        let call = "patronus_register_client_thread";
        let Some(p) = node_ref(call, p) else {
            return PatronusRc::PATRONUS_RC_INVALID;
        };
        ROLES.with(|r| {
            let mut r = r.borrow_mut();
            let e = r.entry(p.uid).or_default();
            if e.client.is_some() {
                return PatronusRc::PATRONUS_RC_OK;
            }
            match p.node.register_client_thread() {
                Ok(c) => {
                    e.client = Some(c);
                    PatronusRc::PATRONUS_RC_OK
                }
                Err(e) => err_rc(call, &e),
            }
        })
    })
}

/// Makes the calling OS thread the server thread of one directory of `p`.
/// Again on the same thread: no-op. PATRONUS_RC_NO_MEM when every
/// directory already has its thread.
#[no_mangle]
pub extern "C" fn patronus_register_server_thread(p: *mut patronus_t) -> PatronusRc {
    guard("patronus_register_server_thread", || {
        let call = "patronus_register_server_thread";
        let Some(p) = node_ref(call, p) else {
            return PatronusRc::PATRONUS_RC_INVALID;
        };
        ROLES.with(|r| {
            let mut r = r.borrow_mut();
            let e = r.entry(p.uid).or_default();
            if e.server.is_some() {
                return PatronusRc::PATRONUS_RC_OK;
            }
            match p.node.register_server_thread() {
                Ok(d) => {
                    e.server = Some(d);
                    PatronusRc::PATRONUS_RC_OK
                }
                Err(e) => err_rc(call, &e),
            }
        })
    })
}

/// Serves this thread's directory (registering it first if needed) until
/// every client node called `patronus_finished(p, key)`. A node with no
/// registered client thread counts as finished by serving; a node that is
/// also a client (e.g. a one-node cluster) must call `patronus_finished`
/// itself, so register its client threads before serving starts. Errors go
/// to `patronus_last_error()`.
#[no_mangle]
pub extern "C" fn patronus_server_serve(p: *mut patronus_t, key: u64) {
    guard("patronus_server_serve", || {
        let call = "patronus_server_serve";
        let Some(p) = node_ref(call, p) else {
            return;
        };
        if patronus_register_server_thread(p as *const _ as *mut _) != PatronusRc::PATRONUS_RC_OK {
            return;
        }
        // Take the directory out of the table while serving (no borrow is
        // held across the loop).
        let d = ROLES.with(|r| r.borrow_mut().get_mut(&p.uid).and_then(|e| e.server.take()));
        let Some(mut d) = d else { return };
        if let Err(e) = d.server_serve(key) {
            err_rc(call, &e);
        }
        ROLES.with(|r| r.borrow_mut().entry(p.uid).or_default().server = Some(d));
    })
}

/// Marks this node finished for `key` (once; repeats are no-ops).
#[no_mangle]
pub extern "C" fn patronus_finished(p: *mut patronus_t, key: u64) {
    guard("patronus_finished", || {
        if let Some(p) = node_ref("patronus_finished", p) {
            if let Err(e) = p.node.finished(key) {
                err_rc("patronus_finished", &e);
            }
        }
    })
}

/// True once every node called `patronus_finished(p, key)`.
#[no_mangle]
pub extern "C" fn patronus_should_exit(p: *const patronus_t, key: u64) -> bool {
    guard("patronus_should_exit", || {
        node_ref("patronus_should_exit", p).is_some_and(|p| p.node.should_exit(key))
    })
}

/// This node's id (0 for NULL).
#[no_mangle]
pub extern "C" fn patronus_get_node_id(p: *const patronus_t) -> u16 {
    guard("patronus_get_node_id", || {
        node_ref("patronus_get_node_id", p).map_or(0, |p| p.node.get_node_id())
    })
}

/// The calling thread's id on `p`: its client slot, else its directory id,
/// else UINT32_MAX (not registered).
#[no_mangle]
pub extern "C" fn patronus_get_thread_id(p: *const patronus_t) -> u32 {
    guard("patronus_get_thread_id", || {
        let Some(p) = node_ref("patronus_get_thread_id", p) else {
            return u32::MAX;
        };
        ROLES.with(|r| {
            let r = r.borrow();
            match r.get(&p.uid) {
                Some(Roles {
                    client: Some(c), ..
                }) => c.get_thread_id() as u32,
                Some(Roles {
                    server: Some(d), ..
                }) => d.id() as u32,
                _ => u32::MAX,
            }
        })
    })
}

/// Synchronised cluster time in ns (PatronusTime; 0 for NULL).
#[no_mangle]
pub extern "C" fn patronus_now(p: *const patronus_t) -> u64 {
    guard("patronus_now", || {
        node_ref("patronus_now", p).map_or(0, |p| p.node.now().max(0) as u64)
    })
}

/// The cluster's clock uncertainty in ns (0 for NULL).
#[no_mangle]
pub extern "C" fn patronus_epsilon(p: *const patronus_t) -> u64 {
    guard("patronus_epsilon", || {
        node_ref("patronus_epsilon", p).map_or(0, |p| p.node.epsilon().max(0) as u64)
    })
}

fn key_str<'a>(call: &str, key: *const c_char) -> Result<&'a str, PatronusRc> {
    if key.is_null() {
        return Err(fail(
            PatronusRc::PATRONUS_RC_INVALID,
            format!("{call}: key is NULL"),
        ));
    }
    // SAFETY: `key` is a NUL-terminated string (contract).
    unsafe { CStr::from_ptr(key) }.to_str().map_err(|_| {
        fail(
            PatronusRc::PATRONUS_RC_INVALID,
            format!("{call}: key is not valid UTF-8"),
        )
    })
}

/// Stores `len` bytes at `value` under `key` in the cluster's keeper.
#[no_mangle]
pub extern "C" fn patronus_put(
    p: *mut patronus_t,
    key: *const c_char,
    value: *const c_void,
    len: usize,
) -> PatronusRc {
    guard("patronus_put", || {
        let call = "patronus_put";
        let Some(p) = node_ref(call, p) else {
            return PatronusRc::PATRONUS_RC_INVALID;
        };
        let k = match key_str(call, key) {
            Ok(k) => k,
            Err(rc) => return rc,
        };
        if value.is_null() && len > 0 {
            return fail(
                PatronusRc::PATRONUS_RC_INVALID,
                format!("{call}: value is NULL"),
            );
        }
        if len > 1 << 20 {
            return fail(
                PatronusRc::PATRONUS_RC_INVALID,
                format!("{call}: {len} bytes is more than a keeper value holds (1 MiB)"),
            );
        }
        let v: &[u8] = if len == 0 {
            &[]
        } else {
            // SAFETY: `value` points to `len` readable bytes (contract).
            unsafe { std::slice::from_raw_parts(value as *const u8, len) }
        };
        match p.node.put(k, v) {
            Ok(()) => PatronusRc::PATRONUS_RC_OK,
            Err(e) => err_rc(call, &e),
        }
    })
}

/// Reads `key`, waiting until some node put it. Copies at most `cap` bytes
/// into `buf` and stores the full length in `*len_out` (when not NULL);
/// PATRONUS_RC_NO_MEM when `cap` is too small (nothing copied, `*len_out`
/// says how much is needed).
#[no_mangle]
pub extern "C" fn patronus_get(
    p: *mut patronus_t,
    key: *const c_char,
    buf: *mut c_void,
    cap: usize,
    len_out: *mut usize,
) -> PatronusRc {
    guard("patronus_get", || {
        let call = "patronus_get";
        let Some(p) = node_ref(call, p) else {
            return PatronusRc::PATRONUS_RC_INVALID;
        };
        let k = match key_str(call, key) {
            Ok(k) => k,
            Err(rc) => return rc,
        };
        if buf.is_null() && cap > 0 {
            return fail(
                PatronusRc::PATRONUS_RC_INVALID,
                format!("{call}: buf is NULL"),
            );
        }
        let v = match p.node.get(k) {
            Ok(v) => v,
            Err(e) => return err_rc(call, &e),
        };
        if !len_out.is_null() {
            // SAFETY: `len_out` is writable when not NULL (contract).
            unsafe { len_out.write(v.len()) };
        }
        if v.len() > cap {
            return fail(
                PatronusRc::PATRONUS_RC_NO_MEM,
                format!("{call}: value of {} bytes does not fit in {cap}", v.len()),
            );
        }
        // SAFETY: `buf` has room for `cap >= v.len()` bytes (contract).
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), buf as *mut u8, v.len()) };
        PatronusRc::PATRONUS_RC_OK
    })
}

/// Waits until every node of the cluster reached barrier `key` (reusable).
#[no_mangle]
pub extern "C" fn patronus_keeper_barrier(p: *mut patronus_t, key: *const c_char) -> PatronusRc {
    guard("patronus_keeper_barrier", || {
        let call = "patronus_keeper_barrier";
        let Some(p) = node_ref(call, p) else {
            return PatronusRc::PATRONUS_RC_INVALID;
        };
        let k = match key_str(call, key) {
            Ok(k) => k,
            Err(rc) => return rc,
        };
        match p.node.keeper_barrier(k) {
            Ok(()) => PatronusRc::PATRONUS_RC_OK,
            Err(e) => err_rc(call, &e),
        }
    })
}

/// Which part of the server buffer.
#[derive(Clone, Copy)]
enum Part {
    Lease,
    Alloc,
    Reserved,
}

fn part(call: &str, p: *mut patronus_t, size_out: *mut usize, which: Part) -> *mut c_char {
    let Some(p) = node_ref(call, p) else {
        return std::ptr::null_mut();
    };
    let (base, _) = p.node.server_buffer();
    let l = p.node.layout();
    let (off, len) = match which {
        Part::Lease => (0, l.lease),
        Part::Alloc => (l.lease, l.alloc),
        Part::Reserved => (l.lease + l.alloc, l.reserved),
    };
    if !size_out.is_null() {
        // SAFETY: `size_out` is writable when not NULL (contract).
        unsafe { size_out.write(len as usize) };
    }
    base.wrapping_add(off as usize) as *mut c_char
}

/// The memory node's lease buffer (where leases bind by offset) and its
/// size. The memory belongs to the node; valid until `patronus_free`.
#[no_mangle]
pub extern "C" fn patronus_get_lease_buffer(
    p: *mut patronus_t,
    size_out: *mut usize,
) -> *mut c_char {
    guard("patronus_get_lease_buffer", || {
        part("patronus_get_lease_buffer", p, size_out, Part::Lease)
    })
}

/// The allocation buffer (carved by the directories' allocators).
#[no_mangle]
pub extern "C" fn patronus_get_alloc_buffer(
    p: *mut patronus_t,
    size_out: *mut usize,
) -> *mut c_char {
    guard("patronus_get_alloc_buffer", || {
        part("patronus_get_alloc_buffer", p, size_out, Part::Alloc)
    })
}

/// The application-reserved buffer.
#[no_mangle]
pub extern "C" fn patronus_get_user_reserved_buffer(
    p: *mut patronus_t,
    size_out: *mut usize,
) -> *mut c_char {
    guard("patronus_get_user_reserved_buffer", || {
        part(
            "patronus_get_user_reserved_buffer",
            p,
            size_out,
            Part::Reserved,
        )
    })
}

/// The global address of `addr` inside this node's server buffer; the null
/// address when `addr` is outside it.
#[no_mangle]
pub extern "C" fn patronus_to_exposed_gaddr(
    p: *mut patronus_t,
    addr: *const c_void,
) -> patronus_gaddr_t {
    guard("patronus_to_exposed_gaddr", || {
        let call = "patronus_to_exposed_gaddr";
        let null = patronus_gaddr_t { val: 0 };
        let Some(p) = node_ref(call, p) else {
            return null;
        };
        let (base, len) = p.node.server_buffer();
        let a = addr as usize;
        let b = base as usize;
        if a < b || a - b >= len as usize {
            set_last_error(format!(
                "{call}: {addr:?} is outside this node's server buffer"
            ));
            return null;
        }
        super::gaddr::patronus_gaddr(p.node.get_node_id(), (a - b) as u64)
    })
}

/// The local pointer of global address `g` on this node; NULL when `g`
/// names another node or lies outside the server buffer.
#[no_mangle]
pub extern "C" fn patronus_from_exposed_gaddr(
    p: *mut patronus_t,
    g: patronus_gaddr_t,
) -> *mut c_void {
    guard("patronus_from_exposed_gaddr", || {
        let call = "patronus_from_exposed_gaddr";
        let Some(p) = node_ref(call, p) else {
            return std::ptr::null_mut();
        };
        let (node, off) = ((g.val >> 48) as u16, g.val & ((1 << 48) - 1));
        let (base, len) = p.node.server_buffer();
        if node != p.node.get_node_id() || off >= len {
            set_last_error(format!(
                "{call}: node {node} offset {off:#x} is not inside node {}'s server buffer",
                p.node.get_node_id()
            ));
            return std::ptr::null_mut();
        }
        base.wrapping_add(off as usize) as *mut c_void
    })
}

/// A client buffer of `size` bytes (zeroed), owned by the node until
/// `patronus_put_rdma_buffer`. Every data-path call also accepts plain
/// caller memory; these exist for code written against the original.
/// NULL when `size` is 0 or above 1 GiB.
#[no_mangle]
pub extern "C" fn patronus_get_rdma_buffer(p: *mut patronus_t, size: usize) -> *mut c_char {
    guard("patronus_get_rdma_buffer", || {
        let call = "patronus_get_rdma_buffer";
        let Some(p) = node_ref(call, p) else {
            return std::ptr::null_mut();
        };
        if size == 0 || size > 1 << 30 {
            set_last_error(format!("{call}: size {size} must be 1 byte to 1 GiB"));
            return std::ptr::null_mut();
        }
        let mut b = vec![0u8; size].into_boxed_slice();
        let ptr = b.as_mut_ptr();
        p.bufs.lock().insert(ptr as usize, b);
        ptr as *mut c_char
    })
}

/// Returns a buffer from `patronus_get_rdma_buffer`. NULL is a no-op;
/// a pointer this node did not hand out is refused (last error set).
#[no_mangle]
pub extern "C" fn patronus_put_rdma_buffer(p: *mut patronus_t, buf: *mut c_char) {
    guard("patronus_put_rdma_buffer", || {
        let call = "patronus_put_rdma_buffer";
        let Some(p) = node_ref(call, p) else {
            return;
        };
        if buf.is_null() {
            return;
        }
        if p.bufs.lock().remove(&(buf as usize)).is_none() {
            set_last_error(format!("{call}: {buf:?} was not handed out by this node"));
        }
    })
}
