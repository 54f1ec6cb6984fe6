//! Memory: the memory node's own buffers (lease, alloc, reserved parts),
//! global addresses inside them, and client buffers
//! (`patronus_get_rdma_buffer`).

use std::ffi::{c_char, c_void};

use super::boundary::guard;
use super::error::{Failure, FfiResult};
use super::gaddr::patronus_gaddr_t;
use super::handle::{patronus_t, write_out, MAX_IO};
use super::registry;

/// Which part of the server buffer.
#[derive(Clone, Copy)]
enum Part {
    Lease,
    Alloc,
    Reserved,
}

fn part(p: *mut patronus_t, size_out: *mut usize, which: Part) -> FfiResult<*mut c_char> {
    let n = registry::node(p)?;
    let (base, _) = n.node.server_buffer();
    let l = n.node.layout();
    let (off, len) = match which {
        Part::Lease => (0, l.lease),
        Part::Alloc => (l.lease, l.alloc),
        Part::Reserved => (l.lease + l.alloc, l.reserved),
    };
    write_out(size_out, len as usize);
    Ok(base.wrapping_add(off as usize) as *mut c_char)
}

/// The memory node's lease buffer (where leases bind by offset) and its
/// size. The memory belongs to the node; valid until `patronus_free`.
#[no_mangle]
pub extern "C" fn patronus_get_lease_buffer(
    p: *mut patronus_t,
    size_out: *mut usize,
) -> *mut c_char {
    guard("patronus_get_lease_buffer", || {
        part(p, size_out, Part::Lease)
    })
}

/// The allocation buffer (carved by the directories' allocators).
#[no_mangle]
pub extern "C" fn patronus_get_alloc_buffer(
    p: *mut patronus_t,
    size_out: *mut usize,
) -> *mut c_char {
    guard("patronus_get_alloc_buffer", || {
        part(p, size_out, Part::Alloc)
    })
}

/// The application-reserved buffer.
#[no_mangle]
pub extern "C" fn patronus_get_user_reserved_buffer(
    p: *mut patronus_t,
    size_out: *mut usize,
) -> *mut c_char {
    guard("patronus_get_user_reserved_buffer", || {
        part(p, size_out, Part::Reserved)
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
        let n = registry::node(p)?;
        let (base, len) = n.node.server_buffer();
        let (a, b) = (addr as usize, base as usize);
        if a < b || a - b >= len as usize {
            return Err(Failure::invalid(format!(
                "{addr:?} is outside this node's server buffer"
            )));
        }
        patronus_gaddr_t::new(n.node.get_node_id(), (a - b) as u64)
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
        let n = registry::node(p)?;
        let (node, off) = (g.node(), g.offset());
        let (base, len) = n.node.server_buffer();
        if node != n.node.get_node_id() || off >= len {
            return Err(Failure::invalid(format!(
                "node {node} offset {off:#x} is not inside node {}'s server buffer",
                n.node.get_node_id()
            )));
        }
        Ok(base.wrapping_add(off as usize) as *mut c_void)
    })
}

/// A client buffer of `size` bytes (zeroed), owned by the node until
/// `patronus_put_rdma_buffer`. Every data-path call also accepts plain
/// caller memory; these exist for code written against the original.
/// NULL when `size` is 0 or above 1 GiB.
#[no_mangle]
pub extern "C" fn patronus_get_rdma_buffer(p: *mut patronus_t, size: usize) -> *mut c_char {
    guard("patronus_get_rdma_buffer", || {
        let n = registry::node(p)?;
        if size == 0 || size > MAX_IO {
            return Err(Failure::invalid(format!(
                "size {size} must be 1 byte to 1 GiB"
            )));
        }
        let mut b = vec![0u8; size].into_boxed_slice();
        let ptr = b.as_mut_ptr();
        n.bufs.lock().insert(ptr as usize, b);
        Ok(ptr as *mut c_char)
    })
}

/// Returns a buffer from `patronus_get_rdma_buffer`. NULL is a no-op;
/// a pointer this node did not hand out is refused (nothing freed, last
/// error set).
#[no_mangle]
pub extern "C" fn patronus_put_rdma_buffer(p: *mut patronus_t, buf: *mut c_char) {
    guard("patronus_put_rdma_buffer", || {
        let n = registry::node(p)?;
        if !buf.is_null() && n.bufs.lock().remove(&(buf as usize)).is_none() {
            return Err(Failure::invalid(format!(
                "{buf:?} was not handed out by this node"
            )));
        }
        Ok(())
    })
}
