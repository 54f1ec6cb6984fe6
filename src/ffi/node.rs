//! Nodes: creating and freeing them, their client and server threads,
//! serving and finishing, and time.
//!
//! A `patronus_t` is an `Arc<Node>` handed to C (see handle.rs); which
//! threads are client or server threads of it is kept in registry.rs.

use std::collections::HashMap;
use std::sync::Arc;

use super::boundary::{guard, guard_or};
use super::config::patronus_config_t;
use super::error::{Failure, PatronusRc};
use super::handle::{arc_into_raw, arc_take, patronus_t, read_in};
use super::registry::{self, Threads};
use crate::node::Patronus;

/// What a `patronus_t` stands for.
pub(crate) struct Node {
    pub(crate) node: Patronus,
    /// Buffers handed out by `patronus_get_rdma_buffer`: address -> owner.
    pub(crate) bufs: parking_lot::Mutex<HashMap<usize, Box<[u8]>>>,
    /// The roles of the threads registered with this node.
    pub(crate) threads: Threads,
}

/// Joins (or forms) the cluster `conf` describes; blocks until all
/// `machine_nr` nodes joined. Returns NULL on failure (see
/// `patronus_last_error()`). Ownership: free the node with `patronus_free`.
/// `conf` NULL means all defaults.
#[no_mangle]
pub extern "C" fn patronus_new(conf: *const patronus_config_t) -> *mut patronus_t {
    guard("patronus_new", || {
        let c = read_in(conf).unwrap_or_else(patronus_config_t::defaults);
        let node = Patronus::new(c.to_config()?)?;
        Ok(arc_into_raw(Arc::new(Node {
            node,
            bufs: Default::default(),
            threads: Threads::default(),
        })))
    })
}

/// Leaves the cluster and frees the node: the client and server threads
/// registered by every OS thread are released at once (a thread inside a
/// call on `p` is waited for), so the node's fabric and memory go away.
/// Afterwards calls with `p` on a thread that was registered with it fail
/// with PATRONUS_RC_INVALID ("p was freed"); on other threads `p` is a
/// dangling pointer. Consumes `p`. NULL is a no-op.
#[no_mangle]
pub extern "C" fn patronus_free(p: *mut patronus_t) {
    guard("patronus_free", || {
        if registry::known_freed(p) {
            return Err(Failure::invalid("p was already freed"));
        }
        if let Some(n) = arc_take(p) {
            registry::release_all(&n);
        }
        Ok(())
    })
}

/// Makes the calling OS thread a client thread of `p` (takes a client slot:
/// its QPs towards every directory). Calling it again on the same thread is
/// a no-op. PATRONUS_RC_NO_MEM when every slot is taken.
#[no_mangle]
pub extern "C" fn patronus_register_client_thread(p: *mut patronus_t) -> PatronusRc {
    guard("patronus_register_client_thread", || {
        registry::register_client(p)?;
        Ok(PatronusRc::PATRONUS_RC_OK)
    })
}

/// Makes the calling OS thread the server thread of one directory of `p`.
/// Again on the same thread: no-op. PATRONUS_RC_NO_MEM when every
/// directory already has its thread.
#[no_mangle]
pub extern "C" fn patronus_register_server_thread(p: *mut patronus_t) -> PatronusRc {
    guard("patronus_register_server_thread", || {
        registry::register_server(p)?;
        Ok(PatronusRc::PATRONUS_RC_OK)
    })
}

/// Serves this thread's directory (registering it first if needed) until
/// every client node called `patronus_finished(p, key)`. A node with no
/// registered client thread counts as finished by serving; a node that is
/// also a client (e.g. a one-node cluster) must call `patronus_finished`
/// itself, so register its client threads before serving starts. A node
/// that dies before finishing (its heartbeat through the keeper stops)
/// counts as gone: once every other node finished or died, serving revokes
/// every lease and returns with the last error naming the dead nodes
/// (`patronus_last_error`). On failure (e.g. every directory already has its
/// thread, or a keeper error) it returns at once with the last error set.
#[no_mangle]
pub extern "C" fn patronus_server_serve(p: *mut patronus_t, key: u64) {
    guard("patronus_server_serve", || {
        let n = registry::node(p)?;
        // The directory leaves the thread's roles while serving, so no lock
        // is held across the loop.
        let (roles, mut d) = registry::take_server(p)?;
        let r = d.server_serve(key);
        registry::put_server(&roles, d);
        drop(n);
        Ok(r?)
    })
}

/// Marks this node finished for `key` (once; repeats are no-ops). On
/// failure (a keeper error) the last error is set.
#[no_mangle]
pub extern "C" fn patronus_finished(p: *mut patronus_t, key: u64) {
    guard("patronus_finished", || {
        Ok(registry::node(p)?.node.finished(key)?)
    })
}

/// True once every node called `patronus_finished(p, key)`.
#[no_mangle]
pub extern "C" fn patronus_should_exit(p: *const patronus_t, key: u64) -> bool {
    guard("patronus_should_exit", || {
        Ok(registry::node(p)?.node.should_exit(key))
    })
}

/// This node's id (0 with the last error set for a bad `p`).
#[no_mangle]
pub extern "C" fn patronus_get_node_id(p: *const patronus_t) -> u16 {
    guard("patronus_get_node_id", || {
        Ok(registry::node(p)?.node.get_node_id())
    })
}

/// The calling thread's id on `p`: its client slot, else its directory id,
/// else UINT32_MAX (not registered; also for a bad `p`, with the last
/// error set).
#[no_mangle]
pub extern "C" fn patronus_get_thread_id(p: *const patronus_t) -> u32 {
    guard_or("patronus_get_thread_id", u32::MAX, || {
        Ok(registry::thread_id(p)?.unwrap_or(u32::MAX))
    })
}

/// Synchronised cluster time in ns (PatronusTime; 0 for a bad `p`).
#[no_mangle]
pub extern "C" fn patronus_now(p: *const patronus_t) -> u64 {
    guard("patronus_now", || {
        Ok(registry::node(p)?.node.now().max(0) as u64)
    })
}

/// The cluster's clock uncertainty in ns (0 for a bad `p`).
#[no_mangle]
pub extern "C" fn patronus_epsilon(p: *const patronus_t) -> u64 {
    guard("patronus_epsilon", || {
        Ok(registry::node(p)?.node.epsilon().max(0) as u64)
    })
}
