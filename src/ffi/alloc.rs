//! Allocation on a memory node's allocators.

use super::boundary::guard;
use super::error::{Failure, PatronusRc};
use super::gaddr::patronus_gaddr_t;
use super::handle::{patronus_t, MAX_IO};
use super::registry::with_client;
use crate::lease::Rc;

/// Allocates `size` bytes on directory `dir_id` of node `node_id` with the
/// allocator registered for `hint` (0: the default slab). The null gaddr
/// when nothing is available (last error set).
#[no_mangle]
pub extern "C" fn patronus_alloc(
    p: *mut patronus_t,
    node_id: u16,
    dir_id: u16,
    size: usize,
    hint: u64,
) -> patronus_gaddr_t {
    guard("patronus_alloc", || {
        if p.is_null() {
            return Err(Failure::null("p"));
        }
        if size == 0 || size > MAX_IO {
            return Err(Failure::invalid(format!(
                "size {size} must be 1 byte to 1 GiB"
            )));
        }
        match with_client(p, |c| c.alloc(node_id, dir_id, size as u64, hint))?? {
            Some(off) => patronus_gaddr_t::new(node_id, off),
            None => Err(Failure::new(
                PatronusRc::PATRONUS_RC_NO_MEM,
                format!("allocator {hint} of node {node_id} dir {dir_id} has no {size}-byte block"),
            )),
        }
    })
}

/// Frees a block from `patronus_alloc`. The memory node checks that it is
/// a live block of that allocator, allocated by this node (any of its
/// threads); a bad or foreign free changes nothing and sets the last error.
#[no_mangle]
pub extern "C" fn patronus_dealloc(
    p: *mut patronus_t,
    gaddr: patronus_gaddr_t,
    dir_id: u16,
    size: usize,
    hint: u64,
) {
    guard("patronus_dealloc", || {
        let (node, off) = (gaddr.node(), gaddr.offset());
        let rc = with_client(p, |c| c.dealloc(node, dir_id, off, size as u64, hint))??;
        if rc != Rc::Ok {
            return Err(Failure::new(
                rc.into(),
                format!(
                    "node {node} refused to free {size} bytes at {off:#x} with allocator {hint} ({:?})",
                    PatronusRc::from(rc)
                ),
            ));
        }
        Ok(())
    })
}
