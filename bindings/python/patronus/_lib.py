"""Loading libpatronus.so and declaring every C function once.

Loader order: next to this package, then $PATRONUS_LIB, then the system
loader; a failure lists every path tried. ``DECLS`` is the single table of
(name, argtypes, restype); ``tests/test_header.py`` checks it against every
``patronus_*`` prototype in include/patronus.h.

The library is loaded with ``ctypes.CDLL``, which releases the GIL for the
duration of every foreign call: a thread blocked in ``server_serve`` or in
an RPC does not stop other Python threads.
"""

import ctypes
import os
from ctypes import (
    POINTER,
    c_bool,
    c_char_p,
    c_int,
    c_int64,
    c_size_t,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
)

ABI_VERSION = 5


class GAddr(ctypes.Structure):
    """patronus_gaddr_t."""

    _fields_ = [("val", c_uint64)]


class Config(ctypes.Structure):
    """patronus_config_t, field for field (order and types as the header)."""

    _fields_ = [
        ("machine_nr", c_uint16),
        ("dir_nr", c_uint16),
        ("lease_buffer_size", c_size_t),
        ("alloc_buffer_size", c_size_t),
        ("reserved_buffer_size", c_size_t),
        ("time_parent_node_id", c_uint16),
        ("fabric", c_char_p),
        ("keeper", c_char_p),
        ("listen_addr", c_char_p),
        ("cluster", c_char_p),
        ("simplify", c_bool),
        ("client_threads", c_uint16),
        ("leases_per_dir", c_uint32),
        ("rpc_timeout_ms", c_uint64),
        ("allow_universal_rkey", c_bool),
        ("max_inflight", c_uint32),
    ]


class Node(ctypes.Structure):
    """Opaque patronus_t."""


class LeaseHandle(ctypes.Structure):
    """Opaque patronus_lease_t."""


class Completion(ctypes.Structure):
    """patronus_completion_t."""

    _fields_ = [
        ("user_data", ctypes.c_uint64),
        ("rc", ctypes.c_int),
        ("lease", ctypes.POINTER(LeaseHandle)),
        ("value", ctypes.c_uint64),
    ]


class BatchHandle(ctypes.Structure):
    """Opaque patronus_batch_t."""


class KvHandle(ctypes.Structure):
    """Opaque patronus_kv_t."""


class KvParams(ctypes.Structure):
    """patronus_kv_params_t, field for field."""

    _fields_ = [
        ("base", c_uint64),
        ("groups", c_uint64),
        ("initial_depth", c_uint32),
        ("max_depth", c_uint32),
        ("lease_ns", c_uint64),
        ("lock_ns", c_uint64),
        ("alloc_hint", c_uint64),
        ("patience_ms", c_uint64),
    ]


class KvCompletion(ctypes.Structure):
    """patronus_kv_completion_t."""

    _fields_ = [
        ("user_data", c_uint64),
        ("rc", ctypes.c_int),
        ("op", c_uint32),
        ("value_len", c_size_t),
    ]


class KvItem(ctypes.Structure):
    """patronus_kv_item_t."""

    _fields_ = [
        ("key", c_void_p),
        ("key_len", c_size_t),
        ("value", c_void_p),
        ("value_len", c_size_t),
    ]


P = POINTER(Node)
L = POINTER(LeaseHandle)
B = POINTER(BatchHandle)
KV = POINTER(KvHandle)
KVP = POINTER(KvParams)
KVI = POINTER(KvItem)
RC_T = c_int  # patronus_rc_t (a C enum: int)
ST_T = c_int  # patronus_acquire_status_t
u16, u32, u64, i64, usize = c_uint16, c_uint32, c_uint64, c_int64, c_size_t
# Byte buffers are passed as c_void_p (a bytes object, a ctypes buffer or an
# address), library-owned strings come back as c_void_p (never freed here).
BUF = c_void_p

# (name, argtypes, restype): every function of include/patronus.h.
DECLS = [
    ("patronus_abi_version", [], u32),
    ("patronus_last_error", [], c_void_p),
    ("patronus_clear_last_error", [], None),
    ("patronus_rc_str", [c_int], c_void_p),
    ("patronus_gaddr", [u16, u64], GAddr),
    ("patronus_gaddr_node", [GAddr], u16),
    ("patronus_gaddr_offset", [GAddr], u64),
    ("patronus_gaddr_is_null", [GAddr], c_bool),
    # nodes and threads
    ("patronus_config_init", [POINTER(Config)], None),
    ("patronus_new", [POINTER(Config)], P),
    ("patronus_free", [P], None),
    ("patronus_register_client_thread", [P], RC_T),
    ("patronus_register_server_thread", [P], RC_T),
    ("patronus_server_serve", [P, u64], None),
    ("patronus_finished", [P, u64], None),
    ("patronus_should_exit", [P, u64], c_bool),
    ("patronus_get_node_id", [P], u16),
    ("patronus_get_thread_id", [P], u32),
    ("patronus_now", [P], u64),
    ("patronus_epsilon", [P], u64),
    # leases
    ("patronus_get_rlease", [P, u16, u16, GAddr, u64, usize, u64, u64], L),
    ("patronus_get_wlease", [P, u16, u16, GAddr, u64, usize, u64, u64], L),
    ("patronus_relinquish", [P, L, u64, u64], RC_T),
    ("patronus_extend", [P, L, u64, u64], RC_T),
    ("patronus_rpc_extend", [P, L, u64, u64], RC_T),
    ("patronus_upgrade", [P, L, u64], L),
    ("patronus_lease_free", [L], None),
    ("patronus_lease_success", [L], c_bool),
    ("patronus_lease_ec", [L], ST_T),
    ("patronus_lease_id", [L], u64),
    ("patronus_lease_base_addr", [L], u64),
    ("patronus_lease_buffer_size", [L], usize),
    ("patronus_lease_dir_id", [L], u16),
    ("patronus_lease_ddl_term", [L], u64),
    ("patronus_lease_is_readable", [L], c_bool),
    ("patronus_lease_is_writable", [L], c_bool),
    ("patronus_get_gaddr", [P, L], GAddr),
    # data path
    ("patronus_read", [P, L, BUF, usize, usize, u64], RC_T),
    ("patronus_write", [P, L, BUF, usize, usize, u64], RC_T),
    ("patronus_cas", [P, L, BUF, usize, u64, u64, u64], RC_T),
    ("patronus_faa", [P, L, BUF, usize, i64, u64], RC_T),
    ("patronus_rpc_read", [P, L, BUF, usize, usize, u64], RC_T),
    ("patronus_rpc_write", [P, L, BUF, usize, usize, u64], RC_T),
    ("patronus_rpc_cas", [P, L, BUF, usize, u64, u64], RC_T),
    ("patronus_rpc_faa", [P, L, BUF, usize, i64], RC_T),
    ("patronus_batch_new", [], B),
    ("patronus_batch_free", [B], None),
    ("patronus_prepare_read", [P, B, L, BUF, usize, usize, u64], RC_T),
    ("patronus_prepare_write", [P, B, L, BUF, usize, usize, u64], RC_T),
    ("patronus_prepare_cas", [P, B, L, BUF, usize, u64, u64, u64], RC_T),
    ("patronus_prepare_faa", [P, B, L, BUF, usize, i64, u64], RC_T),
    ("patronus_commit", [P, B], RC_T),
    # calls in flight
    ("patronus_post_get_rlease", [P, u16, u16, GAddr, u64, usize, u64, u64, u64], RC_T),
    ("patronus_post_get_wlease", [P, u16, u16, GAddr, u64, usize, u64, u64, u64], RC_T),
    ("patronus_post_relinquish", [P, L, u64, u64, u64], RC_T),
    ("patronus_post_extend", [P, L, u64, u64, u64], RC_T),
    ("patronus_post_rpc_extend", [P, L, u64, u64, u64], RC_T),
    ("patronus_post_upgrade", [P, L, u64, u64], RC_T),
    ("patronus_post_read", [P, L, BUF, usize, usize, u64, u64], RC_T),
    ("patronus_post_write", [P, L, BUF, usize, usize, u64, u64], RC_T),
    ("patronus_post_cas", [P, L, BUF, usize, u64, u64, u64, u64], RC_T),
    ("patronus_post_faa", [P, L, BUF, usize, i64, u64, u64], RC_T),
    ("patronus_post_rpc_read", [P, L, BUF, usize, usize, u64, u64], RC_T),
    ("patronus_post_rpc_write", [P, L, BUF, usize, usize, u64, u64], RC_T),
    ("patronus_post_rpc_cas", [P, L, BUF, usize, u64, u64, u64], RC_T),
    ("patronus_post_rpc_faa", [P, L, BUF, usize, i64, u64], RC_T),
    ("patronus_post_commit", [P, B, u64], RC_T),
    ("patronus_poll", [P, POINTER(Completion), usize], usize),
    ("patronus_wait", [P, POINTER(Completion), usize, u64], usize),
    ("patronus_inflight", [P], usize),
    ("patronus_get_rdma_buffer", [P, usize], c_void_p),
    ("patronus_put_rdma_buffer", [P, c_void_p], None),
    # allocation and memory-node buffers
    ("patronus_alloc", [P, u16, u16, usize, u64], GAddr),
    ("patronus_dealloc", [P, GAddr, u16, usize, u64], None),
    ("patronus_get_lease_buffer", [P, POINTER(usize)], c_void_p),
    ("patronus_get_alloc_buffer", [P, POINTER(usize)], c_void_p),
    ("patronus_get_user_reserved_buffer", [P, POINTER(usize)], c_void_p),
    ("patronus_to_exposed_gaddr", [P, c_void_p], GAddr),
    ("patronus_from_exposed_gaddr", [P, GAddr], c_void_p),
    # keeper
    ("patronus_put", [P, c_char_p, c_void_p, usize], RC_T),
    ("patronus_get", [P, c_char_p, c_void_p, usize, POINTER(usize)], RC_T),
    ("patronus_try_get", [P, c_char_p, c_void_p, usize, POINTER(usize)], RC_T),
    ("patronus_keeper_barrier", [P, c_char_p], RC_T),
    # the protected hash table
    ("patronus_kv_params_init", [KVP], RC_T),
    ("patronus_kv_region_bytes", [KVP], u64),
    ("patronus_kv_create", [P, u16, u16, KVP, u32], KV),
    ("patronus_kv_open", [P, u16, u16, KVP, u32, u32], KV),
    ("patronus_kv_publish", [P, KV, c_char_p], RC_T),
    ("patronus_kv_open_published", [P, c_char_p, KVP, u32, u32], KV),
    ("patronus_kv_get", [P, KV, BUF, usize, BUF, usize, POINTER(usize)], RC_T),
    ("patronus_kv_put", [P, KV, BUF, usize, BUF, usize], RC_T),
    ("patronus_kv_del", [P, KV, BUF, usize], RC_T),
    ("patronus_kv_put_many", [P, KV, KVI, usize], RC_T),
    ("patronus_kv_get_many", [P, KV, KVI, usize, POINTER(usize)], RC_T),
    ("patronus_kv_del_many", [P, KV, KVI, usize, POINTER(c_bool)], RC_T),
    ("patronus_kv_post_get", [P, KV, BUF, usize, BUF, usize, u64], RC_T),
    ("patronus_kv_post_put", [P, KV, BUF, usize, BUF, usize, u64], RC_T),
    ("patronus_kv_post_del", [P, KV, BUF, usize, u64], RC_T),
    ("patronus_kv_poll", [P, KV, POINTER(KvCompletion), usize], usize),
    ("patronus_kv_wait", [P, KV, POINTER(KvCompletion), usize, u64], usize),
    ("patronus_kv_posted", [KV], usize),
    ("patronus_kv_relinquish", [P, KV], RC_T),
    ("patronus_kv_free", [KV], None),
]


class LoadError(OSError):
    """libpatronus.so could not be loaded (missing, or of another C ABI).

    The message lists every path tried and what to do: build the library
    (``cargo build --release`` in the repository) and point ``PATRONUS_LIB``
    at ``target/release/libpatronus.so``, or install the package from a tree
    where the library was built."""


_HOW_TO_GET_IT = (
    "build it with `cargo build --release` in the Patronus-rs repository and set "
    "PATRONUS_LIB=/path/to/repo/target/release/libpatronus.so (or install it with "
    "scripts/install.sh so the system loader finds libpatronus.so.0)"
)


def _candidates():
    here = os.path.dirname(os.path.abspath(__file__))
    yield os.path.join(here, "libpatronus.so")
    env = os.environ.get("PATRONUS_LIB")
    if env:
        yield env
    yield "libpatronus.so.0"
    yield "libpatronus.so"


def load():
    tried = []
    for path in _candidates():
        if os.path.sep in path and not os.path.exists(path):
            tried.append(f"{path} (missing)")
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            tried.append(f"{path} ({e})")
            continue
        for name, argtypes, restype in DECLS:
            fn = getattr(lib, name)
            fn.argtypes = argtypes
            fn.restype = restype
        got = lib.patronus_abi_version()
        if got != ABI_VERSION:
            raise LoadError(
                f"{path} implements C ABI {got}, this package needs {ABI_VERSION}: "
                "rebuild the library from the same tree as this package, or "
                + _HOW_TO_GET_IT
            )
        return lib, path
    raise LoadError(
        "libpatronus.so not found; tried: " + "; ".join(tried) + ". To get it, " + _HOW_TO_GET_IT
    )


def cstr(ptr):
    """A library-owned C string (c_void_p) as str, or None."""
    if not ptr:
        return None
    return ctypes.string_at(ptr).decode("utf-8", "replace")


_loaded = None


def _library():
    """The loaded (library, path), loading it on first use: importing the
    package needs no library, so ``help(patronus)`` works without one."""
    global _loaded
    if _loaded is None:
        _loaded = load()
    return _loaded


class _LazyLib:
    """``LIB``: the C library, loaded on the first function looked up (a
    LoadError then says what to do). Each function is cached on the instance
    after its first lookup, so later calls cost a plain attribute read."""

    def __getattr__(self, name):
        fn = getattr(_library()[0], name)
        self.__dict__[name] = fn
        return fn


LIB = _LazyLib()


def __getattr__(name):
    # PEP 562: LIB_PATH (the path the library was loaded from) loads it.
    if name == "LIB_PATH":
        return _library()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
