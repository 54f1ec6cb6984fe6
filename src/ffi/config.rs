//! The node configuration C fills in (`patronus_config_t`).

#![allow(non_camel_case_types)]

use std::ffi::c_char;
use std::time::Duration;

use super::boundary::guard;
use super::error::{Failure, FfiResult};
use super::handle::{opt_str, write_out};
use crate::node::Config;

/// A C `bool` read as its byte: 0 is false, any other value true. A Rust
/// `bool` read from C memory holding another value than 0 or 1 would be
/// undefined behaviour. The header calls it `bool` (cbindgen rename).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CBool(u8);

impl CBool {
    /// The byte as a Rust bool.
    pub fn get(self) -> bool {
        self.0 != 0
    }
}

impl From<bool> for CBool {
    fn from(b: bool) -> Self {
        CBool(b as u8)
    }
}

/// Node configuration. Fill it with `patronus_config_init`, then change
/// what you need. Strings are borrowed only during `patronus_new`.
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
    /// Skip time synchronisation (any non-zero byte is true).
    pub simplify: CBool,
    /// Client thread slots per node (0: 4).
    pub client_threads: u16,
    /// Leases (windows, protection regions) per directory (0: 4096).
    pub leases_per_dir: u32,
    /// Timeout of every RPC in milliseconds (0: 2000).
    pub rpc_timeout_ms: u64,
    /// Publish the universal rkey (`PATRONUS_RW_USE_UNIVERSAL_RKEY`), an
    /// unprotected baseline for benchmarks: any client then reaches the lease
    /// and allocation buffers without a lease. Off by default; never covers
    /// protection regions or the time area.
    pub allow_universal_rkey: CBool,
    /// Calls one client thread may have in flight (posted, completion not
    /// polled yet; 0: 64, at most 1024). Past it a post returns
    /// PATRONUS_RC_RETRY.
    pub max_inflight: u32,
}

impl patronus_config_t {
    /// The defaults `patronus_config_init` writes.
    pub(crate) fn defaults() -> patronus_config_t {
        let d = Config::default();
        patronus_config_t {
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
            simplify: false.into(),
            client_threads: d.client_threads,
            leases_per_dir: d.leases_per_dir,
            rpc_timeout_ms: d.rpc_timeout.as_millis() as u64,
            allow_universal_rkey: false.into(),
            max_inflight: crate::client::DEFAULT_MAX_INFLIGHT,
        }
    }

    /// The Rust configuration this C one describes.
    pub(crate) fn to_config(self) -> FfiResult<Config> {
        let c = &self;
        let mut cfg = Config::default();
        if c.machine_nr == 0 || c.dir_nr == 0 {
            return Err(Failure::invalid(format!(
                "machine_nr ({}) and dir_nr ({}) must be positive",
                c.machine_nr, c.dir_nr
            )));
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
                return Err(Failure::invalid(format!("{n} of {v} bytes is impossible")));
            }
        }
        cfg.time_parent_node_id = c.time_parent_node_id;
        if let Some(f) = opt_str(c.fabric, "fabric")? {
            cfg.fabric = f.to_string();
        }
        if let Some(k) = opt_str(c.keeper, "keeper")? {
            cfg.keeper = Some(k.to_string());
        }
        if let Some(l) = opt_str(c.listen_addr, "listen_addr")? {
            cfg.listen_addr = l.to_string();
        }
        if let Some(n) = opt_str(c.cluster, "cluster")? {
            cfg.cluster = n.to_string();
        }
        cfg.simplify = c.simplify.get();
        cfg.allow_universal_rkey = c.allow_universal_rkey.get();
        if c.max_inflight > crate::client::MAX_INFLIGHT {
            return Err(Failure::invalid(format!(
                "max_inflight {} is above {}",
                c.max_inflight,
                crate::client::MAX_INFLIGHT
            )));
        }
        cfg.max_inflight = c.max_inflight;
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
}

/// Fills `conf` with the defaults: one node, one directory, 16 MiB lease
/// and alloc buffers, 4 MiB reserved, the fabric and keeper from the
/// environment (else shm and in-process). NULL fails (last error set).
#[no_mangle]
pub extern "C" fn patronus_config_init(conf: *mut patronus_config_t) {
    guard("patronus_config_init", || {
        if conf.is_null() {
            return Err(Failure::null("conf"));
        }
        write_out(conf, patronus_config_t::defaults());
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_nonzero_simplify_byte_is_true() {
        for (byte, want) in [(0u8, false), (1, true), (2, true), (0xFF, true)] {
            let mut c = patronus_config_t::defaults();
            c.simplify = CBool(byte);
            assert_eq!(c.to_config().unwrap().simplify, want, "{byte:#x}");
        }
    }
}
