//! The protected hash table (src/kv) from C: `patronus_kv_t` handles on a
//! table in a memory node's lease buffer, get/put/del, and the many-key
//! forms with their calls in flight together.
//!
//! A handle belongs to the client thread that created or opened it (its
//! leases are bound to that thread's connections): every call must come
//! from that OS thread, with the same `patronus_t`, or it fails with
//! PATRONUS_RC_INVALID.
//!
//! Posted forms: `patronus_kv_post_get/put/del` queue an operation on the
//! handle (the async table code of `src/kv`, as a future owned by the
//! handle) and return at once; `patronus_kv_poll` and `patronus_kv_wait`
//! drive the handle's queued operations on the thread's client thread
//! (lent to the handle's executor for the duration of the call) and
//! return their completions. Their calls carry tags with
//! [`POSTED_KV_TAG`] set, so that they share the thread with
//! `patronus_post_*` calls: completions one side polls for the other are
//! handed over (`patronus_poll` mails kv ones to a thread-local mailbox that
//! every handle's polling reads; a handle's polling leaves the others to
//! the next `patronus_poll`).

#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::c_char;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::LocalBoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};

use super::boundary::{guard, guard_or};
use super::error::{rc_of, Failure, FfiResult, PatronusRc};
use super::handle::{
    box_free, box_into_raw, bytes, copy_out, out_slice, patronus_kv_t, patronus_t, read_in,
    req_str, try_mut, value_out, write_out,
};
use super::registry::{self, with_client, with_client_slot};
use crate::client::{AsyncThread, ClientThread, Completion};
use crate::kv::{Access, KvParams, KvTable, Protection, MAX_KEY, MAX_VALUE};

/// Protection mode: one-sided through Patronus leases' memory windows.
pub const PATRONUS_KV_LEASE: u32 = 0;
/// Protection mode: two-sided memory RPCs checked against the leases.
pub const PATRONUS_KV_RPC: u32 = 1;
/// Protection mode: one-sided through a memory region registered per lease
/// (the original's MR baseline).
pub const PATRONUS_KV_MR: u32 = 2;
/// Protection mode: the universal rkey, no protection (the memory node must
/// set `allow_universal_rkey`).
pub const PATRONUS_KV_UNPROTECTED: u32 = 3;
/// Access: get only (read leases).
pub const PATRONUS_KV_READ_ONLY: u32 = 0;
/// Access: get, put, del (write leases).
pub const PATRONUS_KV_READ_WRITE: u32 = 1;

/// Shape and terms of a table; fill it with `patronus_kv_params_init`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct patronus_kv_params_t {
    /// Buffer offset of the table region in the memory node's lease buffer
    /// (8-byte aligned).
    pub base: u64,
    /// Combined buckets (16 slots each) per subtable (create only).
    pub groups: u64,
    /// Global depth at creation: 2^depth subtables (create only).
    pub initial_depth: u32,
    /// Largest global depth the region has room for (create only).
    pub max_depth: u32,
    /// Term of the handle's leases in ns; 0: until relinquished.
    pub lease_ns: u64,
    /// Term of the resize lock's lease in ns.
    pub lock_ns: u64,
    /// Allocator hint for the KV blocks.
    pub alloc_hint: u64,
    /// How long an operation waits for a split or contention, in ms.
    pub patience_ms: u64,
}

impl patronus_kv_params_t {
    fn defaults() -> patronus_kv_params_t {
        let d = KvParams::default();
        patronus_kv_params_t {
            base: d.base,
            groups: d.groups,
            initial_depth: d.initial_depth,
            max_depth: d.max_depth,
            lease_ns: d.lease_ns,
            lock_ns: d.lock_ns,
            alloc_hint: d.alloc_hint,
            patience_ms: d.patience.as_millis() as u64,
        }
    }

    fn to_params(self) -> KvParams {
        KvParams {
            base: self.base,
            groups: self.groups,
            initial_depth: self.initial_depth,
            max_depth: self.max_depth,
            lease_ns: self.lease_ns,
            lock_ns: self.lock_ns,
            alloc_hint: self.alloc_hint,
            patience: Duration::from_millis(self.patience_ms),
            ..KvParams::default()
        }
    }
}

/// Posted operations a handle holds at most (queued and completed but
/// not yet polled); a post past it returns PATRONUS_RC_RETRY.
pub const PATRONUS_KV_MAX_POSTED: usize = 64;
/// `patronus_kv_completion_t::op` of a posted get.
pub const PATRONUS_KV_OP_GET: u32 = 0;
/// `patronus_kv_completion_t::op` of a posted put.
pub const PATRONUS_KV_OP_PUT: u32 = 1;
/// `patronus_kv_completion_t::op` of a posted del.
pub const PATRONUS_KV_OP_DEL: u32 = 2;

/// One completed posted kv operation.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct patronus_kv_completion_t {
    /// The tag given to the post call.
    pub user_data: u64,
    /// What the blocking call would have returned: get PATRONUS_RC_OK (the
    /// value was copied to the buffer given at post), PATRONUS_RC_NOT_FOUND
    /// or PATRONUS_RC_NO_MEM (it did not fit: nothing copied); put
    /// PATRONUS_RC_OK; del PATRONUS_RC_OK (it was there) or
    /// PATRONUS_RC_NOT_FOUND; or the failure's code.
    pub rc: PatronusRc,
    /// `PATRONUS_KV_OP_GET`, `_PUT` or `_DEL`.
    pub op: u32,
    /// Get: the value's length (also when it did not fit); else 0.
    pub value_len: usize,
}

/// Tags of the calls of posted kv operations have this bit set (and a
/// per-handle range below it); `patronus_post_*` tickets never do.
pub(crate) const POSTED_KV_TAG: u64 = 1 << 63;

/// Next per-handle tag range (2^40 calls each).
static NEXT_RANGE: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// Completions of posted kv calls polled by someone else than their
    /// handle (`patronus_poll`, another handle's polling).
    static MAILBOX: RefCell<Vec<Completion>> = const { RefCell::new(Vec::new()) };
}

/// Tag ranges of the handles that exist: a completion of a freed
/// handle's call is dropped, not kept for nobody.
static LIVE: std::sync::Mutex<std::collections::BTreeSet<u64>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

fn live_ranges() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<u64>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The handle tag range of a posted kv call's tag.
fn range_of(user_data: u64) -> u64 {
    (user_data >> 40) & ((1 << 23) - 1)
}

/// Leaves a posted kv call's completion for its handle (dropped when the
/// handle was freed).
pub(crate) fn mail(c: Completion) {
    if live_ranges().contains(&range_of(c.user_data)) {
        let _ = MAILBOX.try_with(|m| m.borrow_mut().push(c));
    }
}

/// What a posted operation produced.
enum Outcome {
    /// The value (or None), for the buffer (address, capacity).
    Got(Option<Vec<u8>>, usize, usize),
    Put,
    Deleted(bool),
}

/// A finished posted operation.
struct Done {
    user_data: u64,
    op: u32,
    result: crate::Result<Outcome>,
}

/// What a `patronus_kv_t` stands for.
pub(crate) struct KvHandle {
    /// Shared with the handle's queued operations (so that the blocking
    /// calls need none queued).
    table: Rc<KvTable>,
    /// The `patronus_t` it was made with.
    node: usize,
    /// The client thread (id) it belongs to.
    thread: u16,
    /// The executor of the queued operations; it holds the client thread
    /// only while they are driven.
    engine: Rc<AsyncThread>,
    /// Queued operations.
    ops: FuturesUnordered<LocalBoxFuture<'static, Done>>,
    /// Finished, not yet polled.
    done: VecDeque<Done>,
    /// Its calls' tag range.
    range: u64,
}

impl Drop for KvHandle {
    fn drop(&mut self) {
        live_ranges().remove(&self.range);
    }
}

fn mode_of(mode: u32) -> FfiResult<Protection> {
    Ok(match mode {
        PATRONUS_KV_LEASE => Protection::Lease,
        PATRONUS_KV_RPC => Protection::Rpc,
        PATRONUS_KV_MR => Protection::Mr,
        PATRONUS_KV_UNPROTECTED => Protection::Unprotected,
        m => {
            return Err(Failure::invalid(format!(
                "mode {m} is not a PATRONUS_KV_* mode (0 to 3)"
            )))
        }
    })
}

fn access_of(access: u32) -> FfiResult<Access> {
    Ok(match access {
        PATRONUS_KV_READ_ONLY => Access::ReadOnly,
        PATRONUS_KV_READ_WRITE => Access::ReadWrite,
        a => {
            return Err(Failure::invalid(format!(
                "access {a} is neither PATRONUS_KV_READ_ONLY (0) nor PATRONUS_KV_READ_WRITE (1)"
            )))
        }
    })
}

fn params_of(params: *const patronus_kv_params_t) -> KvParams {
    read_in(params)
        .unwrap_or_else(patronus_kv_params_t::defaults)
        .to_params()
}

/// Makes a handle from what `open` returns on the calling client thread.
fn make(
    p: *mut patronus_t,
    open: impl FnOnce(&mut ClientThread) -> crate::Result<KvTable>,
) -> FfiResult<*mut patronus_kv_t> {
    let (table, thread) = with_client(p, |c| open(c).map(|t| (t, c.get_thread_id())))??;
    let range = NEXT_RANGE.fetch_add(1, Ordering::Relaxed) & ((1 << 23) - 1);
    live_ranges().insert(range);
    Ok(box_into_raw::<patronus_kv_t>(KvHandle {
        table: Rc::new(table),
        node: p as usize,
        thread,
        engine: Rc::new(AsyncThread::detached(POSTED_KV_TAG | range << 40)),
        ops: FuturesUnordered::new(),
        done: VecDeque::new(),
        range,
    }))
}

/// Runs `f` on the handle with the calling thread's client thread, after
/// checking that the handle belongs to it.
fn with_kv<T>(
    p: *mut patronus_t,
    kv: *mut patronus_kv_t,
    f: impl FnOnce(&mut KvTable, &mut ClientThread) -> crate::Result<T>,
) -> FfiResult<T> {
    if p.is_null() {
        return Err(Failure::null("p"));
    }
    let h = try_mut(kv, "kv")?;
    if h.node != p as usize {
        return Err(Failure::invalid(
            "kv was made with another patronus_t than p",
        ));
    }
    Ok(with_client(p, |c| {
        if c.get_thread_id() != h.thread {
            return Err(crate::Error::Invalid(format!(
                "kv belongs to client thread {} (the thread that made it), not to this thread {}",
                h.thread,
                c.get_thread_id()
            )));
        }
        let queued = h.ops.len() + h.done.len();
        match Rc::get_mut(&mut h.table) {
            Some(t) if queued == 0 => f(t, c),
            _ => Err(crate::Error::Invalid(format!(
                "kv has {queued} posted operations not yet polled: poll them (patronus_kv_poll) \
                 before its blocking calls"
            ))),
        }
    })??)
}

/// A key argument: 1 to 64 bytes.
fn key_arg<'a>(key: *const c_char, key_len: usize) -> FfiResult<&'a [u8]> {
    if key_len == 0 || key_len > MAX_KEY {
        return Err(Failure::invalid(format!(
            "key_len {key_len}: keys are 1 to {MAX_KEY} bytes"
        )));
    }
    bytes(key, key_len, "key")
}

/// Fills `*params` with the defaults (base 0, 64 groups per subtable,
/// depth 2 growing to 8, leases until relinquished, 10 ms resize lock,
/// allocator hint 0, 10 s patience). PATRONUS_RC_INVALID when `params`
/// is NULL.
#[no_mangle]
pub extern "C" fn patronus_kv_params_init(params: *mut patronus_kv_params_t) -> PatronusRc {
    guard("patronus_kv_params_init", || {
        if params.is_null() {
            return Err(Failure::null("params"));
        }
        write_out(params, patronus_kv_params_t::defaults());
        Ok(PatronusRc::PATRONUS_RC_OK)
    })
}

/// Bytes of the table region `params` describe (what must fit in the
/// memory node's lease buffer from `params->base`); 0 when the shape is
/// invalid (last error set). `params` NULL: the defaults.
#[no_mangle]
pub extern "C" fn patronus_kv_region_bytes(params: *const patronus_kv_params_t) -> u64 {
    guard("patronus_kv_region_bytes", || {
        Ok(params_of(params).region_bytes()?)
    })
}

/// Creates a table on node `node_id`'s lease buffer at `params->base`,
/// served by directory `dir_id`, overwriting whatever the region held, and
/// returns a read-write handle of protection mode `mode` (a
/// `PATRONUS_KV_*` mode) for the calling client thread. NULL on failure
/// (last error set). `params` NULL: the defaults. Ownership: give the
/// leases back with `patronus_kv_relinquish`, free with `patronus_kv_free`.
#[no_mangle]
pub extern "C" fn patronus_kv_create(
    p: *mut patronus_t,
    node_id: u16,
    dir_id: u16,
    params: *const patronus_kv_params_t,
    mode: u32,
) -> *mut patronus_kv_t {
    guard("patronus_kv_create", || {
        let m = mode_of(mode)?;
        let prm = params_of(params);
        make(p, |c| KvTable::create(c, node_id, dir_id, prm, m))
    })
}

/// Opens the table at `params->base` of node `node_id` (served by
/// `dir_id`) with protection mode `mode` and access `access`
/// (`PATRONUS_KV_READ_ONLY` or `PATRONUS_KV_READ_WRITE`); the shape is read
/// from the table. NULL on failure (PATRONUS_RC_NOT_FOUND in the last
/// error's code when no table is there). As `patronus_kv_create` for
/// ownership.
#[no_mangle]
pub extern "C" fn patronus_kv_open(
    p: *mut patronus_t,
    node_id: u16,
    dir_id: u16,
    params: *const patronus_kv_params_t,
    mode: u32,
    access: u32,
) -> *mut patronus_kv_t {
    guard("patronus_kv_open", || {
        let m = mode_of(mode)?;
        let a = access_of(access)?;
        let prm = params_of(params);
        make(p, |c| KvTable::open(c, node_id, dir_id, prm, m, a))
    })
}

/// Publishes where the table of `kv` is under the keeper key
/// `kv/<name>`, for `patronus_kv_open_published` on other nodes.
#[no_mangle]
pub extern "C" fn patronus_kv_publish(
    p: *mut patronus_t,
    kv: *mut patronus_kv_t,
    name: *const c_char,
) -> PatronusRc {
    guard("patronus_kv_publish", || {
        let name = req_str(name, "name")?;
        let n = registry::node(p)?;
        let h = try_mut(kv, "kv")?;
        h.table.publish(&n.node, name)?;
        Ok(PatronusRc::PATRONUS_RC_OK)
    })
}

/// Opens the table published as `name` (waiting for the keeper key as
/// `patronus_get` does); `params->base` is taken from the keeper. As
/// `patronus_kv_open` otherwise.
#[no_mangle]
pub extern "C" fn patronus_kv_open_published(
    p: *mut patronus_t,
    name: *const c_char,
    params: *const patronus_kv_params_t,
    mode: u32,
    access: u32,
) -> *mut patronus_kv_t {
    guard("patronus_kv_open_published", || {
        let name = req_str(name, "name")?;
        let m = mode_of(mode)?;
        let a = access_of(access)?;
        let prm = params_of(params);
        let n = registry::node(p)?;
        make(p, |c| KvTable::open_published(c, &n.node, name, prm, m, a))
    })
}

/// Reads the value of `key` (`key_len` bytes, 1 to 64): copies it into
/// `buf` (at most `cap` bytes) and stores its length in `*len_out` (when
/// not NULL). PATRONUS_RC_NOT_FOUND when the key is not there (`*len_out`
/// untouched); PATRONUS_RC_NO_MEM when `cap` is too small (nothing copied,
/// `*len_out` says how much is needed); PATRONUS_RC_RDMA_PROTECTION_ERR
/// when the memory node refuses the handle (relinquished, expired).
#[no_mangle]
pub extern "C" fn patronus_kv_get(
    p: *mut patronus_t,
    kv: *mut patronus_kv_t,
    key: *const c_char,
    key_len: usize,
    buf: *mut c_char,
    cap: usize,
    len_out: *mut usize,
) -> PatronusRc {
    guard("patronus_kv_get", || {
        let k = key_arg(key, key_len)?;
        if buf.is_null() && cap > 0 {
            return Err(Failure::null("buf"));
        }
        let v = with_kv(p, kv, |t, c| t.get(c, k))?.ok_or_else(|| {
            Failure::new(
                PatronusRc::PATRONUS_RC_NOT_FOUND,
                format!("no key {:?}", String::from_utf8_lossy(k)),
            )
        })?;
        value_out(&v, buf as *mut std::ffi::c_void, cap, len_out)
    })
}

/// Sets `key` (1 to 64 bytes) to `value_len` bytes at `value` (insert or
/// update; `value` may be NULL when `value_len` is 0).
/// PATRONUS_RC_RDMA_PROTECTION_ERR when the handle may not write (a
/// read-only handle, relinquished, expired): the table is unchanged.
#[no_mangle]
pub extern "C" fn patronus_kv_put(
    p: *mut patronus_t,
    kv: *mut patronus_kv_t,
    key: *const c_char,
    key_len: usize,
    value: *const c_char,
    value_len: usize,
) -> PatronusRc {
    guard("patronus_kv_put", || {
        let k = key_arg(key, key_len)?;
        if value_len > MAX_VALUE {
            return Err(Failure::invalid(format!(
                "value_len {value_len} is above {MAX_VALUE}"
            )));
        }
        let v = bytes(value, value_len, "value")?;
        with_kv(p, kv, |t, c| t.put(c, k, v))?;
        Ok(PatronusRc::PATRONUS_RC_OK)
    })
}

/// Removes `key`: PATRONUS_RC_OK when it was there, PATRONUS_RC_NOT_FOUND
/// when it was not.
#[no_mangle]
pub extern "C" fn patronus_kv_del(
    p: *mut patronus_t,
    kv: *mut patronus_kv_t,
    key: *const c_char,
    key_len: usize,
) -> PatronusRc {
    guard("patronus_kv_del", || {
        let k = key_arg(key, key_len)?;
        if with_kv(p, kv, |t, c| t.del(c, k))? {
            Ok(PatronusRc::PATRONUS_RC_OK)
        } else {
            Err(Failure::new(
                PatronusRc::PATRONUS_RC_NOT_FOUND,
                format!("no key {:?}", String::from_utf8_lossy(k)),
            ))
        }
    })
}

/// One key (and value) of the many-key calls.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct patronus_kv_item_t {
    /// The key, `key_len` bytes (1 to 64).
    pub key: *const c_char,
    /// Bytes of the key.
    pub key_len: usize,
    /// The value (put_many: input; get_many: where the value is copied,
    /// at most `value_len` bytes).
    pub value: *mut c_char,
    /// put_many: bytes of the value; get_many: capacity of `value`.
    pub value_len: usize,
}

/// Reads the `n` items' keys, and with `values` their values too.
fn read_items<'a>(
    items: *const patronus_kv_item_t,
    n: usize,
    values: bool,
) -> FfiResult<Vec<(&'a [u8], &'a [u8])>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let its = out_slice(items as *mut patronus_kv_item_t, n, "items")?;
    its.iter()
        .enumerate()
        .map(|(i, it)| {
            let k = key_arg(it.key, it.key_len)
                .map_err(|f| Failure::new(f.rc, format!("items[{i}]: {}", f.msg)))?;
            let v = if values {
                if it.value_len > MAX_VALUE {
                    return Err(Failure::invalid(format!(
                        "items[{i}]: value_len {} is above {MAX_VALUE}",
                        it.value_len
                    )));
                }
                bytes(it.value, it.value_len, "items[].value")?
            } else {
                &[][..]
            };
            Ok((k, v))
        })
        .collect()
}

/// Sets every one of the `n` items' keys to its value, with the calls of
/// many keys in flight together; the outcome equals `patronus_kv_put` of
/// each item in order. The thread must have no posted calls in flight
/// (PATRONUS_RC_INVALID). On a failure some items may be set and later
/// ones not.
#[no_mangle]
pub extern "C" fn patronus_kv_put_many(
    p: *mut patronus_t,
    kv: *mut patronus_kv_t,
    items: *const patronus_kv_item_t,
    n: usize,
) -> PatronusRc {
    guard("patronus_kv_put_many", || {
        let its = read_items(items, n, true)?;
        with_kv(p, kv, |t, c| t.put_many(c, &its))?;
        Ok(PatronusRc::PATRONUS_RC_OK)
    })
}

/// Reads the `n` items' keys with their calls in flight together: item
/// i's value is copied to `items[i].value` (at most `items[i].value_len`
/// bytes) and `lens_out[i]` gets its length, or `SIZE_MAX` when the key is
/// not there. PATRONUS_RC_NO_MEM when some value did not fit (its
/// `lens_out` entry says how much it needs; the others are copied). The
/// thread must have no posted calls in flight.
#[no_mangle]
pub extern "C" fn patronus_kv_get_many(
    p: *mut patronus_t,
    kv: *mut patronus_kv_t,
    items: *const patronus_kv_item_t,
    n: usize,
    lens_out: *mut usize,
) -> PatronusRc {
    guard("patronus_kv_get_many", || {
        let its = read_items(items, n, false)?;
        if n == 0 {
            return Ok(PatronusRc::PATRONUS_RC_OK);
        }
        let lens = out_slice(lens_out, n, "lens_out")?;
        let raw = out_slice(items as *mut patronus_kv_item_t, n, "items")?;
        for (i, it) in raw.iter().enumerate() {
            if it.value.is_null() && it.value_len > 0 {
                return Err(Failure::null(&format!("items[{i}].value")));
            }
        }
        let keys: Vec<&[u8]> = its.iter().map(|(k, _)| *k).collect();
        let got = with_kv(p, kv, |t, c| t.get_many(c, &keys))?;
        let mut short = 0;
        for ((v, it), len) in got.iter().zip(raw.iter()).zip(lens.iter_mut()) {
            match v {
                None => *len = usize::MAX,
                Some(v) => {
                    *len = v.len();
                    if v.len() > it.value_len {
                        short += 1;
                    } else {
                        copy_out(v, it.value as *mut u8, it.value_len);
                    }
                }
            }
        }
        if short > 0 {
            return Err(Failure::new(
                PatronusRc::PATRONUS_RC_NO_MEM,
                format!("{short} of {n} values did not fit their item's value_len"),
            ));
        }
        Ok(PatronusRc::PATRONUS_RC_OK)
    })
}

/// Removes the `n` items' keys (their `value` fields are not used) with
/// the calls of many keys in flight together; `existed_out[i]` (when
/// `existed_out` is not NULL) is true when item i's key was there. The
/// outcome equals `patronus_kv_del` of each key in order. The thread must
/// have no posted calls in flight.
#[no_mangle]
pub extern "C" fn patronus_kv_del_many(
    p: *mut patronus_t,
    kv: *mut patronus_kv_t,
    items: *const patronus_kv_item_t,
    n: usize,
    existed_out: *mut bool,
) -> PatronusRc {
    guard("patronus_kv_del_many", || {
        let its = read_items(items, n, false)?;
        let keys: Vec<&[u8]> = its.iter().map(|(k, _)| *k).collect();
        let out = if existed_out.is_null() || n == 0 {
            None
        } else {
            Some(out_slice(existed_out, n, "existed_out")?)
        };
        let was = with_kv(p, kv, |t, c| t.del_many(c, &keys))?;
        if let Some(out) = out {
            out.copy_from_slice(&was);
        }
        Ok(PatronusRc::PATRONUS_RC_OK)
    })
}

/// Runs `f` with the handle, the slot of the calling thread's client
/// thread and its posted calls, after the checks of `with_kv`.
fn with_kv_slot<T>(
    p: *mut patronus_t,
    kv: *mut patronus_kv_t,
    f: impl FnOnce(&mut KvHandle, &mut Option<ClientThread>, &mut super::posted::Table) -> FfiResult<T>,
) -> FfiResult<T> {
    if p.is_null() {
        return Err(Failure::null("p"));
    }
    let h = try_mut(kv, "kv")?;
    if h.node != p as usize {
        return Err(Failure::invalid(
            "kv was made with another patronus_t than p",
        ));
    }
    with_client_slot(p, |slot, posted| {
        let id = slot.as_ref().map(|c| c.get_thread_id());
        if id != Some(h.thread) {
            return Err(Failure::invalid(format!(
                "kv belongs to client thread {} (the thread that made it), not to this thread \
                 {id:?}",
                h.thread
            )));
        }
        f(h, slot, posted)
    })?
}

/// Gives the client thread back to its slot, whatever happens while it is
/// lent to a handle's executor.
struct Lent<'a> {
    slot: &'a mut Option<ClientThread>,
    engine: &'a AsyncThread,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.engine.detach() {
            *self.slot = Some(t);
        }
    }
}

/// Lends the client thread to the handle's executor and drives the queued
/// operations (posting their next calls) until no more completions
/// arrive; finished operations go to `h.done`. Never blocks.
fn drive(
    h: &mut KvHandle,
    slot: &mut Option<ClientThread>,
    posted: &mut super::posted::Table,
) -> FfiResult<()> {
    let Some(ct) = slot.take() else {
        return Err(Failure::invalid("this thread's client thread is lent out"));
    };
    h.engine.attach(ct);
    let _lent = Lent {
        slot,
        engine: &h.engine,
    };
    // Completions of this handle's calls that others polled.
    let mailed: Vec<Completion> = MAILBOX
        .try_with(|m| std::mem::take(&mut *m.borrow_mut()))
        .unwrap_or_default();
    let keep: Vec<Completion> = {
        let live = live_ranges();
        mailed
            .into_iter()
            .filter_map(|c| h.engine.accept(c))
            .filter(|c| live.contains(&range_of(c.user_data)))
            .collect()
    };
    if !keep.is_empty() {
        let _ = MAILBOX.try_with(|m| m.borrow_mut().extend(keep));
    }
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    for _ in 0..64 {
        while let Poll::Ready(Some(d)) = h.ops.poll_next_unpin(&mut cx) {
            h.done.push_back(d);
        }
        let n = h.engine.progress_with(|c| {
            if c.user_data & POSTED_KV_TAG != 0 {
                mail(c);
            } else {
                posted.stray.push(c);
            }
        })?;
        if n == 0 {
            break;
        }
    }
    Ok(())
}

/// Queues the operation `op` makes (after the handle's checks) and starts
/// it: PATRONUS_RC_RETRY when the handle holds `PATRONUS_KV_MAX_POSTED`.
fn post_op(
    p: *mut patronus_t,
    kv: *mut patronus_kv_t,
    op: u32,
    user_data: u64,
    make: impl FnOnce(Rc<KvTable>, Rc<AsyncThread>) -> LocalBoxFuture<'static, crate::Result<Outcome>>,
) -> FfiResult<PatronusRc> {
    with_kv_slot(p, kv, |h, slot, posted| {
        if h.ops.len() + h.done.len() >= PATRONUS_KV_MAX_POSTED {
            return Ok(PatronusRc::PATRONUS_RC_RETRY);
        }
        let fut = make(h.table.clone(), h.engine.clone());
        h.ops.push(Box::pin(async move {
            Done {
                user_data,
                op,
                result: fut.await,
            }
        }));
        // Its first calls go out now; a failure shows in its completion.
        if let Err(f) = drive(h, slot, posted) {
            tracing::debug!("patronus_kv_post: driving the queued operations: {}", f.msg);
        }
        Ok(PatronusRc::PATRONUS_RC_OK)
    })
}

/// Queues a get of `key` (1 to 64 bytes, copied) on the handle and returns
/// at once; its completion (`patronus_kv_poll`) says as
/// `patronus_kv_get` would, and its value is copied into `buf` (at most
/// `cap` bytes), which must stay valid until the completion is polled.
/// PATRONUS_RC_RETRY when the handle holds `PATRONUS_KV_MAX_POSTED`
/// operations not yet polled; PATRONUS_RC_INVALID for bad arguments
/// (nothing queued). Until all its posted operations are polled, the
/// handle's blocking calls (get, put, del, the many-key calls,
/// relinquish) return PATRONUS_RC_INVALID.
#[no_mangle]
pub extern "C" fn patronus_kv_post_get(
    p: *mut patronus_t,
    kv: *mut patronus_kv_t,
    key: *const c_char,
    key_len: usize,
    buf: *mut c_char,
    cap: usize,
    user_data: u64,
) -> PatronusRc {
    guard("patronus_kv_post_get", || {
        let k = key_arg(key, key_len)?.to_vec();
        if buf.is_null() && cap > 0 {
            return Err(Failure::null("buf"));
        }
        let (at, cap) = (buf as usize, cap);
        post_op(p, kv, PATRONUS_KV_OP_GET, user_data, move |t, e| {
            Box::pin(async move {
                let v = t.get_async(&e, &k).await?;
                Ok(Outcome::Got(v, at, cap))
            })
        })
    })
}

/// Queues a put of `key` (1 to 64 bytes) to `value_len` bytes at `value`
/// (both copied: the caller may reuse them at once) and returns at once;
/// as `patronus_kv_post_get` otherwise.
#[no_mangle]
pub extern "C" fn patronus_kv_post_put(
    p: *mut patronus_t,
    kv: *mut patronus_kv_t,
    key: *const c_char,
    key_len: usize,
    value: *const c_char,
    value_len: usize,
    user_data: u64,
) -> PatronusRc {
    guard("patronus_kv_post_put", || {
        let k = key_arg(key, key_len)?.to_vec();
        if value_len > MAX_VALUE {
            return Err(Failure::invalid(format!(
                "value_len {value_len} is above {MAX_VALUE}"
            )));
        }
        let v = bytes(value, value_len, "value")?.to_vec();
        post_op(p, kv, PATRONUS_KV_OP_PUT, user_data, move |t, e| {
            Box::pin(async move {
                t.put_async(&e, &k, &v).await?;
                Ok(Outcome::Put)
            })
        })
    })
}

/// Queues a del of `key` (1 to 64 bytes, copied) and returns at once; its
/// completion is PATRONUS_RC_OK when the key was there, NOT_FOUND when not.
/// As `patronus_kv_post_get` otherwise.
#[no_mangle]
pub extern "C" fn patronus_kv_post_del(
    p: *mut patronus_t,
    kv: *mut patronus_kv_t,
    key: *const c_char,
    key_len: usize,
    user_data: u64,
) -> PatronusRc {
    guard("patronus_kv_post_del", || {
        let k = key_arg(key, key_len)?.to_vec();
        post_op(p, kv, PATRONUS_KV_OP_DEL, user_data, move |t, e| {
            Box::pin(async move { Ok(Outcome::Deleted(t.del_async(&e, &k).await?)) })
        })
    })
}

/// The C completion of a finished operation (a get's value copied out).
fn complete(d: Done) -> patronus_kv_completion_t {
    use PatronusRc::*;
    let (rc, value_len) = match d.result {
        Ok(Outcome::Got(Some(v), at, cap)) => {
            if v.len() > cap {
                (PATRONUS_RC_NO_MEM, v.len())
            } else {
                copy_out(&v, at as *mut u8, cap);
                (PATRONUS_RC_OK, v.len())
            }
        }
        Ok(Outcome::Got(None, ..)) | Ok(Outcome::Deleted(false)) => (PATRONUS_RC_NOT_FOUND, 0),
        Ok(Outcome::Put) | Ok(Outcome::Deleted(true)) => (PATRONUS_RC_OK, 0),
        Err(e) => (rc_of(&e), 0),
    };
    patronus_kv_completion_t {
        user_data: d.user_data,
        rc,
        op: d.op,
        value_len,
    }
}

fn kv_collect(
    p: *mut patronus_t,
    kv: *mut patronus_kv_t,
    out: *mut patronus_kv_completion_t,
    max: usize,
    timeout: Option<Duration>,
) -> FfiResult<usize> {
    if max == 0 {
        return Ok(0);
    }
    let dst = out_slice(out, max, "out")?;
    with_kv_slot(p, kv, |h, slot, posted| {
        let until = timeout.map(|d| Instant::now() + d);
        let mut spins = 0u32;
        loop {
            drive(h, slot, posted)?;
            if !h.done.is_empty() || h.ops.is_empty() {
                break;
            }
            match until {
                Some(u) if Instant::now() < u => {
                    spins += 1;
                    if spins > 64 {
                        std::thread::yield_now();
                    } else {
                        std::hint::spin_loop();
                    }
                }
                _ => break,
            }
        }
        let mut n = 0;
        while n < max {
            let Some(d) = h.done.pop_front() else { break };
            dst[n] = complete(d);
            n += 1;
        }
        Ok(n)
    })
}

/// Drives the handle's posted operations (never blocks) and stores up to
/// `max` of the finished ones in `out`, each exactly once; returns how many
/// it stored (0 with the last error set for bad arguments).
#[no_mangle]
pub extern "C" fn patronus_kv_poll(
    p: *mut patronus_t,
    kv: *mut patronus_kv_t,
    out: *mut patronus_kv_completion_t,
    max: usize,
) -> usize {
    guard_or("patronus_kv_poll", 0, || kv_collect(p, kv, out, max, None))
}

/// As `patronus_kv_poll`, but waits until at least one operation finished
/// or `timeout_ns` passed (returns at once when none is queued).
#[no_mangle]
pub extern "C" fn patronus_kv_wait(
    p: *mut patronus_t,
    kv: *mut patronus_kv_t,
    out: *mut patronus_kv_completion_t,
    max: usize,
    timeout_ns: u64,
) -> usize {
    guard_or("patronus_kv_wait", 0, || {
        kv_collect(p, kv, out, max, Some(Duration::from_nanos(timeout_ns)))
    })
}

/// Posted operations of the handle not yet polled (queued or finished); 0
/// for a NULL handle.
#[no_mangle]
pub extern "C" fn patronus_kv_posted(kv: *mut patronus_kv_t) -> usize {
    guard_or("patronus_kv_posted", 0, || {
        let h = try_mut(kv, "kv")?;
        Ok(h.ops.len() + h.done.len())
    })
}

/// Frees the handle's spare blocks and gives its leases back (it may have
/// no posted operations not yet polled: PATRONUS_RC_INVALID): every later
/// access through `kv` fails (PATRONUS_RC_INVALID, "the lease was
/// relinquished", before anything is sent; the memory node refuses the old
/// keys as well). The handle stays valid (free it with `patronus_kv_free`).
#[no_mangle]
pub extern "C" fn patronus_kv_relinquish(p: *mut patronus_t, kv: *mut patronus_kv_t) -> PatronusRc {
    guard("patronus_kv_relinquish", || {
        with_kv(p, kv, |t, c| t.relinquish(c))?;
        Ok(PatronusRc::PATRONUS_RC_OK)
    })
}

/// Frees a handle (without relinquishing: leases not given back last
/// until their term, or, without a term, until the memory node goes).
/// Posted operations not yet polled are dropped (their calls' completions
/// are discarded). Consumes `kv`. NULL is a no-op.
#[no_mangle]
pub extern "C" fn patronus_kv_free(kv: *mut patronus_kv_t) {
    guard("patronus_kv_free", || {
        box_free(kv);
        Ok(())
    })
}
