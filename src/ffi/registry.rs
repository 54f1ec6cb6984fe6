//! Which OS threads are client or server threads of which node.
//!
//! The original binds a role to the calling OS thread
//! (`registerClientThread()` / `registerServerThread()`). Here each node
//! owns the roles of all its threads ([`Threads`]), and each OS thread
//! keeps a small thread-local list of the nodes it registered with: the
//! handle's address, a `Weak` to the node, and the thread's [`Roles`].
//!
//! - `patronus_free` releases the roles of every thread (client slots,
//!   directories and with them the node's fabric), whatever thread calls
//!   it: nothing on another thread keeps a freed node alive.
//! - The `Weak` keeps the node's allocation (not the node) while a thread
//!   remembers it, so a freed node's address is not reused meanwhile: a
//!   later call with the freed handle on such a thread finds its entry,
//!   sees the node is gone and fails with `PATRONUS_RC_INVALID` instead of
//!   touching freed memory. (On a thread that never registered, a freed
//!   handle is as invalid as any freed pointer.)
//! - A thread's exit drops its roles, handing its client slot back.
//!
//! The data path takes only the calling thread's own lock: no lock or
//! reference count shared between threads.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::error::{Failure, FfiResult};
use super::handle::{arc_clone, patronus_t};
use super::node::Node;
use crate::client::ClientThread;
use crate::node::Patronus;
use crate::server::Directory;

/// The roles of all threads of one node.
#[derive(Default)]
pub(crate) struct Threads {
    inner: Mutex<ThreadsInner>,
}

#[derive(Default)]
struct ThreadsInner {
    all: Vec<Arc<Roles>>,
    /// Set by `patronus_free`: no thread registers any more.
    closed: bool,
}

/// One thread's roles on one node.
#[derive(Default)]
pub(crate) struct Roles {
    state: Mutex<RoleState>,
}

#[derive(Default)]
struct RoleState {
    client: Option<ClientThread>,
    server: Option<Directory>,
    /// Posted calls of the client thread.
    posted: super::posted::Table,
    /// The node was freed: the roles are gone for good.
    released: bool,
}

/// A thread's memory of one node it registered with.
struct Entry {
    addr: usize,
    node: Weak<Node>,
    roles: Arc<Roles>,
}

impl Drop for Entry {
    /// The thread exits: its client slot and directory go back to the node.
    fn drop(&mut self) {
        let taken = {
            let mut s = self.roles.state.lock();
            (s.client.take(), s.server.take())
        };
        drop(taken);
    }
}

thread_local! {
    static MINE: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's entry for the handle at `addr`, if it
/// registered there. (Only this thread's own reference counts are touched
/// unless `f` touches the node's.)
fn with_entry<R>(addr: usize, f: impl FnOnce(&Entry) -> R) -> Option<R> {
    MINE.try_with(|m| {
        m.try_borrow()
            .ok()
            .and_then(|m| m.iter().find(|e| e.addr == addr).map(f))
    })
    .ok()
    .flatten()
}

/// This thread's roles on the handle at `addr`, if it registered there.
fn my_roles(addr: usize) -> Option<Arc<Roles>> {
    with_entry(addr, |e| e.roles.clone())
}

fn freed() -> Failure {
    Failure::invalid("p was freed by patronus_free")
}

fn not_null(p: *const patronus_t) -> FfiResult<usize> {
    if p.is_null() {
        return Err(Failure::null("p"));
    }
    Ok(p as usize)
}

/// The node behind `p` (a new reference, so the node outlives the call).
pub(crate) fn node(p: *const patronus_t) -> FfiResult<Arc<Node>> {
    let addr = not_null(p)?;
    match with_entry(addr, |e| e.node.upgrade()) {
        Some(n) => n.ok_or_else(freed),
        None => arc_clone(p, "p"),
    }
}

/// True when this thread registered with the handle at `p` and that node
/// was freed since.
pub(crate) fn known_freed(p: *const patronus_t) -> bool {
    with_entry(p as usize, |e| e.node.strong_count() == 0).unwrap_or(false)
}

/// Runs `f` with the calling thread's client thread of `p`.
pub(crate) fn with_client<T>(
    p: *const patronus_t,
    f: impl FnOnce(&mut ClientThread) -> T,
) -> FfiResult<T> {
    with_client_table(p, |c, _| f(c))
}

/// As [`with_client_table`], with the slot that holds the client thread
/// (which `f` may lend out, and must put back).
pub(crate) fn with_client_slot<T>(
    p: *const patronus_t,
    f: impl FnOnce(&mut Option<ClientThread>, &mut super::posted::Table) -> T,
) -> FfiResult<T> {
    with_client_state(p, |s| {
        s.client.is_some().then(|| f(&mut s.client, &mut s.posted))
    })
}

/// Runs `f` with the calling thread's client thread of `p` and its table
/// of posted calls.
pub(crate) fn with_client_table<T>(
    p: *const patronus_t,
    f: impl FnOnce(&mut ClientThread, &mut super::posted::Table) -> T,
) -> FfiResult<T> {
    with_client_state(p, |s| {
        let c = s.client.as_mut()?;
        Some(f(c, &mut s.posted))
    })
}

/// Runs `f` on the calling thread's role state on `p`, inside its
/// registry entry (no reference-count round trip: every call of a client
/// thread comes through here); `f` returns None when the thread holds no
/// client thread there.
fn with_client_state<T>(
    p: *const patronus_t,
    f: impl FnOnce(&mut RoleState) -> Option<T>,
) -> FfiResult<T> {
    let addr = not_null(p)?;
    let done = with_entry(addr, |e| {
        let mut s = e.roles.state.lock();
        if s.released {
            return Some(Err(freed()));
        }
        f(&mut s).map(Ok)
    });
    if let Some(Some(r)) = done {
        return r;
    }
    let n = node(p)?;
    Err(Failure::invalid(format!(
        "this thread is not a client thread of node {} (call patronus_register_client_thread first)",
        n.node.get_node_id()
    )))
}

/// This thread's roles on node `n` (at handle address `addr`), created on
/// first use.
fn roles_of(n: &Arc<Node>, addr: usize) -> FfiResult<Arc<Roles>> {
    if let Some(r) = my_roles(addr) {
        return Ok(r);
    }
    let r = Arc::new(Roles::default());
    {
        let mut t = n.threads.inner.lock();
        if t.closed {
            return Err(freed());
        }
        // Roles of exited threads (only the registry still holds them).
        t.all.retain(|r| Arc::strong_count(r) > 1);
        t.all.push(r.clone());
    }
    let entry = Entry {
        addr,
        node: Arc::downgrade(n),
        roles: r.clone(),
    };
    MINE.try_with(|m| m.try_borrow_mut().map(|mut m| m.push(entry)).is_ok())
        .ok()
        .filter(|&pushed| pushed)
        .ok_or_else(|| Failure::invalid("the calling thread is exiting"))?;
    Ok(r)
}

/// Fills the calling thread's role `slot` on `p` with `make` unless it
/// holds one.
fn register<T>(
    p: *const patronus_t,
    slot: impl FnOnce(&mut RoleState) -> &mut Option<T>,
    make: impl FnOnce(&Patronus) -> crate::Result<T>,
) -> FfiResult<()> {
    let n = node(p)?;
    let roles = roles_of(&n, p as usize)?;
    let mut s = roles.state.lock();
    if s.released {
        return Err(freed());
    }
    let role = slot(&mut s);
    if role.is_none() {
        *role = Some(make(&n.node)?);
    }
    Ok(())
}

/// Makes the calling thread a client thread of `p` (no-op when it is one).
pub(crate) fn register_client(p: *const patronus_t) -> FfiResult<()> {
    register(p, |s| &mut s.client, Patronus::register_client_thread)
}

/// Makes the calling thread a server thread of `p` (no-op when it is one).
pub(crate) fn register_server(p: *const patronus_t) -> FfiResult<()> {
    register(p, |s| &mut s.server, Patronus::register_server_thread)
}

/// Takes the calling thread's directory of `p` out of its roles (for a
/// serve loop that holds no lock); give it back with [`put_server`].
pub(crate) fn take_server(p: *const patronus_t) -> FfiResult<(Arc<Roles>, Directory)> {
    register_server(p)?;
    let roles =
        my_roles(p as usize).ok_or_else(|| Failure::invalid("the calling thread is exiting"))?;
    let d = roles.state.lock().server.take().ok_or_else(freed)?;
    Ok((roles, d))
}

/// Gives a directory back after serving; dropped when the node was freed
/// meanwhile.
pub(crate) fn put_server(roles: &Roles, d: Directory) {
    let mut s = roles.state.lock();
    if !s.released {
        s.server = Some(d);
    }
}

/// The calling thread's id on `p`: its client slot, else its directory,
/// else None.
pub(crate) fn thread_id(p: *const patronus_t) -> FfiResult<Option<u32>> {
    let addr = not_null(p)?;
    let Some(roles) = my_roles(addr) else {
        node(p)?;
        return Ok(None);
    };
    let s = roles.state.lock();
    if s.released {
        return Err(freed());
    }
    Ok(match (&s.client, &s.server) {
        (Some(c), _) => Some(c.get_thread_id() as u32),
        (None, Some(d)) => Some(d.id() as u32),
        _ => None,
    })
}

/// Releases every thread's roles on `n` (from `patronus_free`): client
/// threads and directories are dropped now, whichever thread holds them.
/// A thread inside a call on one of them is waited for.
pub(crate) fn release_all(n: &Node) {
    let all = {
        let mut t = n.threads.inner.lock();
        t.closed = true;
        std::mem::take(&mut t.all)
    };
    for r in all {
        let taken = {
            let mut s = r.state.lock();
            s.released = true;
            (s.client.take(), s.server.take())
        };
        drop(taken);
    }
}

// Roles are dropped by whichever thread frees the node, and a node is
// shared by every thread that uses it.
const _: () = {
    const fn send<T: Send>() {}
    const fn send_sync<T: Send + Sync>() {}
    send::<ClientThread>();
    send::<Directory>();
    send_sync::<Roles>();
    send_sync::<Node>();
};
