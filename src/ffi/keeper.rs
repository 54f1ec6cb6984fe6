//! The cluster's keeper: application keys and barriers.

use std::ffi::{c_char, c_void};

use super::boundary::guard;
use super::error::{Failure, PatronusRc};
use super::handle::{bytes, patronus_t, req_str, value_out, write_out};
use super::registry;

/// Largest value the keeper holds.
const MAX_VALUE: usize = 1 << 20;

/// Stores `len` bytes at `value` under `key` in the cluster's keeper.
#[no_mangle]
pub extern "C" fn patronus_put(
    p: *mut patronus_t,
    key: *const c_char,
    value: *const c_void,
    len: usize,
) -> PatronusRc {
    guard("patronus_put", || {
        let n = registry::node(p)?;
        let k = req_str(key, "key")?;
        if len > MAX_VALUE {
            return Err(Failure::invalid(format!(
                "{len} bytes is more than a keeper value holds (1 MiB)"
            )));
        }
        let v = bytes(value as *const c_char, len, "value")?;
        n.node.put(k, v)?;
        Ok(PatronusRc::PATRONUS_RC_OK)
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
        let n = registry::node(p)?;
        let k = req_str(key, "key")?;
        if buf.is_null() && cap > 0 {
            return Err(Failure::null("buf"));
        }
        let v = n.node.get(k)?;
        value_out(&v, buf, cap, len_out)
    })
}

/// As `patronus_get`, but returns at once: PATRONUS_RC_NOT_FOUND (nothing
/// copied, `*len_out` 0) when `key` does not exist yet.
#[no_mangle]
pub extern "C" fn patronus_try_get(
    p: *mut patronus_t,
    key: *const c_char,
    buf: *mut c_void,
    cap: usize,
    len_out: *mut usize,
) -> PatronusRc {
    guard("patronus_try_get", || {
        let n = registry::node(p)?;
        let k = req_str(key, "key")?;
        if buf.is_null() && cap > 0 {
            return Err(Failure::null("buf"));
        }
        let Some(v) = n.node.try_get(k)? else {
            write_out(len_out, 0);
            return Ok(PatronusRc::PATRONUS_RC_NOT_FOUND);
        };
        value_out(&v, buf, cap, len_out)
    })
}

/// Waits until every node of the cluster reached barrier `key` (reusable).
#[no_mangle]
pub extern "C" fn patronus_keeper_barrier(p: *mut patronus_t, key: *const c_char) -> PatronusRc {
    guard("patronus_keeper_barrier", || {
        let n = registry::node(p)?;
        n.node.keeper_barrier(req_str(key, "key")?)?;
        Ok(PatronusRc::PATRONUS_RC_OK)
    })
}
