"""Patronus-rs from Python: protected remote memory with leases.

A thin, complete layer over libpatronus.so (ctypes): ``Patronus`` is one node
of a cluster, ``Lease`` a lease it holds, ``Batch`` a chain of one-sided
operations. Failures raise ``PatronusError`` subclasses carrying the return
code and the library's message. Foreign calls release the GIL, so a server
thread and client threads can share one Python process.

Errors: the library keeps one last error per thread, cleared when any call
starts and set when it fails ("<function>: <cause>"), so right after a call
a non-None ``last_error()`` means that call failed. The package reads it at
once, on the calling thread: calls returning a code raise through
``check``; calls returning nothing (``server_serve``, ``finished``,
``dealloc``) raise when the last error is set after them.

>>> import threading, patronus
>>> with patronus.Patronus(cluster="doc") as p:
...     t = threading.Thread(target=p.server_serve, args=(0,)); t.start()
...     p.register_client_thread()
...     with p.get_wlease(0, 0, patronus.GlobalAddress(0, 4096), 0, 64, 10**8) as l:
...         p.write(l, b"hello")
...         assert p.read(l, 5) == b"hello"
...     p.finished(0); t.join()
"""

from __future__ import annotations

import ctypes
import enum
import threading
from typing import List, Optional, Union

from ._lib import LIB, ABI_VERSION, Config, GAddr, LoadError, cstr
from ._lib import Completion as _CCompletion

__all__ = [
    "ABI_VERSION",
    "Batch",
    "Completion",
    "Lease",
    "Patronus",
    "AcquireFlag",
    "AcquireStatus",
    "GlobalAddress",
    "InvalidArgument",
    "LeaseExpiredError",
    "LoadError",
    "ModifyFlag",
    "PatronusError",
    "ProtectionError",
    "AcquireError",
    "RC",
    "RWFlag",
    "last_error",
    "rc_str",
]


class RC(enum.IntEnum):
    OK = 0
    NOT_FOUND = 1
    NO_MEM = 2
    RETRY = 3
    CACHE_STALE = 4
    INVALID = 5
    RDMA_PROTECTION_ERR = 6
    RDMA_EXECUTION_ERR = 7
    LEASE_LOCAL_EXPIRED_ERR = 8
    MOCK_CRASHED = 9
    RESERVED = 10
    INTERNAL = 11


class AcquireStatus(enum.IntEnum):
    SUCCESS = 0
    MAGIC_MW_ERR = 1
    LOCKED_ERR = 2
    BIND_ERR = 3
    REG_MR_ERR = 4
    ADDRESS_OUT_OF_RANGE_ERR = 5
    NO_MEM = 6
    NO_MW = 7
    RESERVED = 8
    RESERVED_NO_RETURN = 9


class AcquireFlag(enum.IntFlag):
    NO_GC = 1 << 0
    WITH_CONFLICT_DETECT = 1 << 1
    NO_BIND_PR = 1 << 2
    NO_BIND_ANY = 1 << 3
    WITH_ALLOCATION = 1 << 4
    ONLY_ALLOCATION = 1 << 5
    USE_MR = 1 << 6
    NO_RPC = 1 << 7
    DEBUG_SERVER_DO_NOTHING = 1 << 8


class ModifyFlag(enum.IntFlag):
    NO_RELINQUISH_UNBIND_ANY = 1 << 0
    NO_RELINQUISH_UNBIND_PR = 1 << 1
    FORCE_UNBIND = 1 << 2
    WITH_DEALLOCATION = 1 << 3
    ONLY_DEALLOCATION = 1 << 4
    SERVER_DO_NOTHING = 1 << 5
    WAIT_UNTIL_SUCCESS = 1 << 6
    USE_MR = 1 << 7
    NO_RPC = 1 << 8
    DEBUG_EXTEND_DO_NOTHING = 1 << 9


class RWFlag(enum.IntFlag):
    NO_LOCAL_EXPIRE_CHECK = 1 << 0
    WITH_AUTO_EXTEND = 1 << 1
    WITH_CACHE = 1 << 2
    USE_UNIVERSAL_RKEY = 1 << 3
    ENABLE_TRACE = 1 << 4
    USE_TWO_SIDED = 1 << 5
    USE_TWO_SIDED_AUTO_PACKING = 1 << 6


class PatronusError(Exception):
    """A failed call; ``rc`` is the return code, the message the library's."""

    def __init__(self, rc, message=None):
        self.rc = RC(rc) if rc in RC._value2member_map_ else rc
        super().__init__(message or rc_str(rc))


class ProtectionError(PatronusError):
    """RDMA_PROTECTION_ERR: the access was refused at the NIC."""


class LeaseExpiredError(PatronusError):
    """LEASE_LOCAL_EXPIRED_ERR: the lease expired by the local check."""


class InvalidArgument(PatronusError, ValueError):
    """INVALID: a bad argument or a refused request."""


class AcquireError(PatronusError):
    """The lease was not granted; ``status`` says why."""

    def __init__(self, status, message=None):
        self.status = AcquireStatus(status)
        super().__init__(RC.RETRY if status == AcquireStatus.LOCKED_ERR else RC.INVALID,
                         message or f"lease not granted: {self.status.name}")


def _not_granted(lease, cause):
    """The AcquireError of a refused lease, with the library's cause (a timed
    out RPC, an unreachable node) when it gave one: the caller reads it right
    after the acquiring call, since every later library call clears it."""
    status = lease.ec
    lease.close()
    msg = f"lease not granted: {status.name}"
    return AcquireError(status, f"{msg}: {cause}" if cause else msg)


_ERRORS = {
    RC.RDMA_PROTECTION_ERR: ProtectionError,
    RC.LEASE_LOCAL_EXPIRED_ERR: LeaseExpiredError,
    RC.INVALID: InvalidArgument,
}


def last_error() -> Optional[str]:
    """This thread's last error message from the library, or None when the
    last library call on this thread succeeded."""
    return cstr(LIB.patronus_last_error())


def _check_void(exc=None):
    """Raises after a call that returns nothing when the library recorded
    a failure for it (the last error is cleared when every call starts).
    ``exc``: the exception class and code to raise (default PatronusError
    with ``rc`` None: such calls return no code)."""
    msg = last_error()
    if msg is not None:
        cls, rc = exc or (PatronusError, None)
        raise cls(rc, msg)


def rc_str(rc: int) -> Optional[str]:
    """The library's description of a return code."""
    return cstr(LIB.patronus_rc_str(int(rc)))


def check(rc: int) -> None:
    """Raises the PatronusError subclass for a non-OK code (reads the last
    error at once, on this thread, before any other library call)."""
    if rc == RC.OK:
        return
    msg = last_error() or rc_str(rc)
    raise _ERRORS.get(rc, PatronusError)(rc, msg)


class GlobalAddress:
    """16-bit node id + 48-bit buffer offset, as the original."""

    __slots__ = ("_g",)

    def __init__(self, node_id, offset):
        if not 0 <= node_id < 1 << 16:
            raise InvalidArgument(RC.INVALID, f"node id {node_id} outside 0..65535")
        if not 0 <= offset < 1 << 48:
            raise InvalidArgument(RC.INVALID, f"offset {offset:#x} does not fit in 48 bits")
        self._g = LIB.patronus_gaddr(node_id, offset)

    @classmethod
    def _from_c(cls, g):
        obj = cls.__new__(cls)
        obj._g = g
        return obj

    @property
    def node_id(self) -> int:
        """The memory node's id (the high 16 bits)."""
        return LIB.patronus_gaddr_node(self._g)

    @property
    def offset(self) -> int:
        """The offset into that node's buffer (the low 48 bits)."""
        return LIB.patronus_gaddr_offset(self._g)

    @property
    def val(self) -> int:
        """The packed 64-bit value, as the C ``patronus_gaddr_t``."""
        return self._g.val

    def is_null(self) -> bool:
        """True for the null address (``GlobalAddress.null()``'s value)."""
        return bool(LIB.patronus_gaddr_is_null(self._g))

    def __eq__(self, other):
        return isinstance(other, GlobalAddress) and self.val == other.val

    def __hash__(self):
        return hash(self.val)

    def __repr__(self):
        return f"GlobalAddress(node_id={self.node_id}, offset={self.offset:#x})"


def _gaddr(g):
    """A GlobalAddress, an int offset (node 0 semantics: offset only) or
    None as the C struct."""
    if g is None:
        return GAddr(0)
    if isinstance(g, GlobalAddress):
        return g._g
    if isinstance(g, int):
        if not 0 <= g < 1 << 48:
            raise InvalidArgument(RC.INVALID, f"offset {g:#x} does not fit in 48 bits")
        return GAddr(g)
    raise TypeError(f"expected GlobalAddress, int or None, got {type(g).__name__}")


def _lh(lease):
    """The C handle of a Lease argument (InvalidArgument for anything else)."""
    if not isinstance(lease, Lease):
        raise InvalidArgument(RC.INVALID, f"expected a Lease, got {type(lease).__name__}")
    return lease._handle()


def _null_error(what):
    msg = last_error() or f"{what} failed"
    return InvalidArgument(RC.INVALID, msg)


_CONFIG_FIELDS = {name for name, _ in Config._fields_}
_CONFIG_TYPES = dict(Config._fields_)


def _config_value(name, v):
    """``v`` as the C field ``name`` holds it, or InvalidArgument naming the
    field: ctypes would wrap a negative or too large number silently."""
    ctype = _CONFIG_TYPES[name]
    if ctype is ctypes.c_char_p:
        if not isinstance(v, str):
            raise InvalidArgument(RC.INVALID, f"config {name} must be a str, not {type(v).__name__}")
        return v.encode()
    if ctype is ctypes.c_bool:
        if not isinstance(v, bool):
            raise InvalidArgument(RC.INVALID, f"config {name} must be a bool, not {type(v).__name__}")
        return v
    if not isinstance(v, int) or isinstance(v, bool):
        raise InvalidArgument(RC.INVALID, f"config {name} must be an int, not {type(v).__name__}")
    bits = ctypes.sizeof(ctype) * 8
    if not 0 <= v < 1 << bits:
        raise InvalidArgument(RC.INVALID, f"config {name}={v} is outside 0..{(1 << bits) - 1}")
    return v


class Patronus:
    """One node of a Patronus cluster.

    Keyword arguments are the ``patronus_config_t`` fields: ``machine_nr``,
    ``dir_nr``, ``lease_buffer_size``, ``alloc_buffer_size``,
    ``reserved_buffer_size``, ``time_parent_node_id``, ``fabric`` ("shm",
    "tcp", "verbs"), ``keeper`` ("memcached://HOST:PORT"), ``listen_addr``,
    ``cluster``, ``simplify``, ``client_threads``, ``leases_per_dir``,
    ``rpc_timeout_ms``, ``allow_universal_rkey`` (an unprotected benchmark baseline; off by default). Construction blocks until ``machine_nr`` nodes
    joined. Use it as a context manager or call ``close()``.
    """

    def __init__(self, **config):
        unknown = set(config) - _CONFIG_FIELDS
        if unknown:
            raise TypeError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        c = Config()
        LIB.patronus_config_init(ctypes.byref(c))
        for k, v in config.items():
            if v is None:
                continue
            setattr(c, k, _config_value(k, v))
        self._c = c  # keeps the strings alive during patronus_new
        self._p = LIB.patronus_new(ctypes.byref(c))
        if not self._p:
            raise PatronusError(RC.INVALID, last_error() or "patronus_new failed")
        self._lock = threading.Lock()
        self._tls = threading.local()  # per thread: its posted calls

    # lifecycle -----------------------------------------------------------

    def close(self) -> None:
        """Leaves the cluster and frees the node (idempotent)."""
        p, self._p = getattr(self, "_p", None), None
        if p:
            LIB.patronus_free(p)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()

    def _node(self):
        if not self._p:
            raise InvalidArgument(RC.INVALID, "the node is closed")
        return self._p

    # threads and time ----------------------------------------------------

    def register_client_thread(self) -> None:
        """Makes the calling thread a client thread of this node."""
        check(LIB.patronus_register_client_thread(self._node()))

    def register_server_thread(self) -> None:
        """Makes the calling thread the server thread of one directory."""
        check(LIB.patronus_register_server_thread(self._node()))

    def server_serve(self, key: int) -> None:
        """Serves this thread's directory until every client node called
        ``finished(key)`` (registers the thread first if needed). A node
        without client threads counts as finished by serving; a node that is
        also a client calls ``finished(key)`` itself when its work is done."""
        LIB.patronus_server_serve(self._node(), key)
        _check_void()

    def finished(self, key: int) -> None:
        """Marks this node finished for ``key``."""
        LIB.patronus_finished(self._node(), key)
        _check_void()

    def should_exit(self, key: int) -> bool:
        """True once every node called ``finished(key)``."""
        return bool(LIB.patronus_should_exit(self._node(), key))

    def get_node_id(self) -> int:
        """This node's id in the cluster (0 .. machine_nr - 1)."""
        return LIB.patronus_get_node_id(self._node())

    def get_thread_id(self) -> int:
        """The calling client thread's id on this node (registration order)."""
        return LIB.patronus_get_thread_id(self._node())

    def now(self) -> int:
        """Synchronised cluster time in ns."""
        return LIB.patronus_now(self._node())

    def epsilon(self) -> int:
        """The cluster's clock uncertainty in ns."""
        return LIB.patronus_epsilon(self._node())

    # leases --------------------------------------------------------------

    def _lease(self, fn, node_id, dir_id, gaddr, alloc_hint, size, ns, flag):
        h = fn(self._node(), node_id, dir_id, _gaddr(gaddr), alloc_hint, size, ns, int(flag))
        cause = last_error()  # before any other library call clears it
        if not h:
            raise _null_error("acquire")
        lease = Lease(self, h)
        if not lease.success:
            raise _not_granted(lease, cause)
        return lease

    def get_rlease(
        self,
        node_id: int,
        dir_id: int,
        gaddr: Union[GlobalAddress, int, None],
        alloc_hint: int,
        size: int,
        ns: int,
        flag: int = 0,
    ) -> Lease:
        """A read lease on ``[gaddr.offset, +size)`` for ``ns`` nanoseconds;
        raises AcquireError (with ``.status``) when it is not granted."""
        return self._lease(LIB.patronus_get_rlease, node_id, dir_id, gaddr, alloc_hint, size,
                           ns, flag)

    def get_wlease(
        self,
        node_id: int,
        dir_id: int,
        gaddr: Union[GlobalAddress, int, None],
        alloc_hint: int,
        size: int,
        ns: int,
        flag: int = 0,
    ) -> Lease:
        """A write lease (read, write, atomics); see ``get_rlease``."""
        return self._lease(LIB.patronus_get_wlease, node_id, dir_id, gaddr, alloc_hint, size,
                           ns, flag)

    def relinquish(self, lease: Lease, hint: int = 0, flag: int = 0) -> None:
        """Gives the lease back (the memory node revokes it at once)."""
        check(LIB.patronus_relinquish(self._node(), _lh(lease), hint, int(flag)))

    def extend(self, lease: Lease, ns: int, flag: int = 0) -> None:
        """One-sided extension by ``ns``."""
        check(LIB.patronus_extend(self._node(), _lh(lease), ns, int(flag)))

    def rpc_extend(self, lease: Lease, ns: int, flag: int = 0) -> None:
        """Extension by RPC."""
        check(LIB.patronus_rpc_extend(self._node(), _lh(lease), ns, int(flag)))

    def upgrade(self, lease: Lease, flag: int = 0) -> Lease:
        """A write lease replacing the read lease ``lease``."""
        h = LIB.patronus_upgrade(self._node(), _lh(lease), int(flag))
        cause = last_error()
        if not h:
            raise _null_error("upgrade")
        new = Lease(self, h)
        if not new.success:
            raise _not_granted(new, cause)
        return new

    def get_gaddr(self, lease: Lease) -> GlobalAddress:
        """The ``GlobalAddress`` that ``lease`` covers (its allocated object for WITH_ALLOCATION)."""
        return GlobalAddress._from_c(LIB.patronus_get_gaddr(self._node(), _lh(lease)))

    # data path -----------------------------------------------------------

    def read(self, lease: Lease, size: int, offset: int = 0, flag: int = 0) -> bytes:
        """``size`` bytes at ``offset`` of the leased object."""
        buf = ctypes.create_string_buffer(size)
        check(LIB.patronus_read(self._node(), _lh(lease), buf, size, offset, int(flag)))
        return buf.raw

    def write(self, lease: Lease, data: bytes, offset: int = 0, flag: int = 0) -> None:
        """Writes ``data`` (bytes-like) at ``offset``."""
        data = bytes(data)
        check(LIB.patronus_write(self._node(), _lh(lease), data, len(data), offset,
                                 int(flag)))

    def cas(self, lease: Lease, offset: int, compare: int, swap: int, flag: int = 0) -> int:
        """8-byte compare-and-swap; returns the old value."""
        io = ctypes.c_uint64()
        check(LIB.patronus_cas(self._node(), _lh(lease), ctypes.byref(io), offset,
                               compare, swap, int(flag)))
        return io.value

    def faa(self, lease: Lease, offset: int, value: int, flag: int = 0) -> int:
        """8-byte fetch-and-add; returns the old value."""
        io = ctypes.c_uint64()
        check(LIB.patronus_faa(self._node(), _lh(lease), ctypes.byref(io), offset, value,
                               int(flag)))
        return io.value

    def rpc_read(self, lease: Lease, size: int, offset: int = 0, flag: int = 0) -> bytes:
        """Reads ``size`` bytes at ``offset`` in the lease by a two-sided RPC; returns bytes."""
        buf = ctypes.create_string_buffer(size)
        check(LIB.patronus_rpc_read(self._node(), _lh(lease), buf, size, offset,
                                    int(flag)))
        return buf.raw

    def rpc_write(self, lease: Lease, data: bytes, offset: int = 0, flag: int = 0) -> None:
        """Writes ``data`` at ``offset`` in the lease by a two-sided RPC."""
        data = bytes(data)
        check(LIB.patronus_rpc_write(self._node(), _lh(lease), data, len(data), offset,
                                     int(flag)))

    def rpc_cas(self, lease: Lease, offset: int, compare: int, swap: int) -> int:
        """8-byte compare-and-swap at ``offset`` by RPC; returns the old value."""
        io = ctypes.c_uint64()
        check(LIB.patronus_rpc_cas(self._node(), _lh(lease), ctypes.byref(io), offset,
                                   compare, swap))
        return io.value

    def rpc_faa(self, lease: Lease, offset: int, value: int) -> int:
        """8-byte fetch-and-add of ``value`` at ``offset`` by RPC; returns the old value."""
        io = ctypes.c_uint64()
        check(LIB.patronus_rpc_faa(self._node(), _lh(lease), ctypes.byref(io), offset,
                                   value))
        return io.value

    def batch(self) -> Batch:
        """A new ``Batch`` of one-sided operations."""
        return Batch(self)

    # calls in flight -----------------------------------------------------
    #
    # Each post_* takes the blocking method's arguments plus ``user_data``
    # and returns True when posted, False when this thread already has its
    # maximum of calls in flight (nothing was posted: poll, then post
    # again); bad arguments raise. Results arrive as ``Completion`` objects
    # from ``poll``/``wait`` on the same thread.

    def _posted(self):
        t = self._tls
        if not hasattr(t, "calls"):
            t.calls, t.next = {}, 0
        return t

    def _post(self, fn, args, user_data, kind, keep, lease=None):
        t = self._posted()
        t.next += 1
        rc = fn(self._node(), *args, t.next)
        if rc == RC.RETRY:
            return False
        check(rc)
        t.calls[t.next] = (user_data, kind, keep, lease)
        return True

    def post_get_rlease(
        self,
        node_id: int,
        dir_id: int,
        gaddr: Union[GlobalAddress, int, None],
        alloc_hint: int,
        size: int,
        ns: int,
        flag: int = 0,
        user_data: int = 0,
    ) -> bool:
        """Posted ``get_rlease``: the completion's ``lease`` is the new Lease
        (check ``lease.success``; ``rc`` is OK whether or not it was granted)."""
        return self._post(LIB.patronus_post_get_rlease,
                          (node_id, dir_id, _gaddr(gaddr), alloc_hint, size, ns, int(flag)),
                          user_data, "acquire", None)

    def post_get_wlease(
        self,
        node_id: int,
        dir_id: int,
        gaddr: Union[GlobalAddress, int, None],
        alloc_hint: int,
        size: int,
        ns: int,
        flag: int = 0,
        user_data: int = 0,
    ) -> bool:
        """Posted ``get_wlease``."""
        return self._post(LIB.patronus_post_get_wlease,
                          (node_id, dir_id, _gaddr(gaddr), alloc_hint, size, ns, int(flag)),
                          user_data, "acquire", None)

    def post_relinquish(
        self,
        lease: Lease,
        hint: int = 0,
        flag: int = 0,
        user_data: int = 0,
    ) -> bool:
        """Posted ``relinquish``."""
        return self._post(LIB.patronus_post_relinquish, (_lh(lease), hint, int(flag)),
                          user_data, "lease", None, lease)

    def post_extend(self, lease: Lease, ns: int, flag: int = 0, user_data: int = 0) -> bool:
        """Posted one-sided ``extend``."""
        return self._post(LIB.patronus_post_extend, (_lh(lease), ns, int(flag)), user_data,
                          "lease", None, lease)

    def post_rpc_extend(self, lease: Lease, ns: int, flag: int = 0, user_data: int = 0) -> bool:
        """Posted ``rpc_extend``."""
        return self._post(LIB.patronus_post_rpc_extend, (_lh(lease), ns, int(flag)),
                          user_data, "lease", None, lease)

    def post_read(
        self,
        lease: Lease,
        size: int,
        offset: int = 0,
        flag: int = 0,
        user_data: int = 0,
    ) -> bool:
        """Posted ``read``: the completion's ``data`` holds the bytes."""
        buf = ctypes.create_string_buffer(size)
        return self._post(LIB.patronus_post_read, (_lh(lease), buf, size, offset, int(flag)),
                          user_data, "read", buf, lease)

    def post_write(
        self,
        lease: Lease,
        data: bytes,
        offset: int = 0,
        flag: int = 0,
        user_data: int = 0,
    ) -> bool:
        """Posted ``write`` (``data`` is copied at once)."""
        data = bytes(data)
        return self._post(LIB.patronus_post_write,
                          (_lh(lease), data, len(data), offset, int(flag)), user_data,
                          "lease", None, lease)

    def post_cas(
        self,
        lease: Lease,
        offset: int,
        compare: int,
        swap: int,
        flag: int = 0,
        user_data: int = 0,
    ) -> bool:
        """Posted ``cas``: the completion's ``value`` is the old value."""
        io = ctypes.c_uint64()
        return self._post(LIB.patronus_post_cas,
                          (_lh(lease), ctypes.byref(io), offset, compare, swap, int(flag)),
                          user_data, "atomic", io, lease)

    def post_faa(
        self,
        lease: Lease,
        offset: int,
        value: int,
        flag: int = 0,
        user_data: int = 0,
    ) -> bool:
        """Posted ``faa``: the completion's ``value`` is the old value."""
        io = ctypes.c_uint64()
        return self._post(LIB.patronus_post_faa,
                          (_lh(lease), ctypes.byref(io), offset, value, int(flag)), user_data,
                          "atomic", io, lease)

    def post_commit(self, batch: Batch, user_data: int = 0) -> bool:
        """Posted ``Batch.commit``: the completion's ``results`` is what
        ``commit()`` returns. The batch is empty once posted."""
        outs = batch._outs
        if not self._post(LIB.patronus_post_commit, (batch._b,), user_data, "batch", outs):
            return False
        batch._outs = []
        return True

    def _completions(self, cs, n):
        t = self._posted()
        out = []
        for i in range(n):
            c = cs[i]
            user_data, kind, keep, lease = t.calls.pop(c.user_data, (c.user_data, "lease", None,
                                                                     None))
            rc = RC(c.rc)
            data, results, value = None, None, c.value
            if kind == "acquire":
                lease = Lease(self, c.lease) if c.lease else None
                value = 0
            elif kind == "read":
                data = keep.raw if rc == RC.OK else None
            elif kind == "batch" and rc == RC.OK:
                results = [obj.raw if k == "read" else obj.value if k == "atomic" else None
                           for k, obj in keep]
            out.append(Completion(user_data, rc, lease, value, data, results))
        return out

    def poll(self, max: int = 64) -> List[Completion]:
        """Completions of this thread's posted calls, at most ``max``, without
        waiting."""
        cs = (_CCompletion * max)()
        n = LIB.patronus_poll(self._node(), cs, max) if max else 0
        if not n and last_error():
            raise PatronusError(RC.INVALID, last_error())
        return self._completions(cs, n)

    def wait(self, max: int = 64, timeout_ns: int = 1_000_000_000) -> List[Completion]:
        """As ``poll``, but waits up to ``timeout_ns`` for at least one."""
        cs = (_CCompletion * max)()
        n = LIB.patronus_wait(self._node(), cs, max, timeout_ns) if max else 0
        if not n and last_error():
            raise PatronusError(RC.INVALID, last_error())
        return self._completions(cs, n)

    def inflight(self) -> int:
        """Calls this thread posted whose completions were not polled yet."""
        return LIB.patronus_inflight(self._node())

    # allocation, memory-node buffers, keeper ----------------------------

    def alloc(self, node_id: int, dir_id: int, size: int, hint: int = 0) -> GlobalAddress:
        """Allocates ``size`` bytes on a memory node; a GlobalAddress."""
        g = GlobalAddress._from_c(LIB.patronus_alloc(self._node(), node_id, dir_id, size, hint))
        if g.is_null():
            raise PatronusError(RC.NO_MEM, last_error() or "allocation failed")
        return g

    def dealloc(
        self,
        gaddr: Union[GlobalAddress, int, None],
        dir_id: int,
        size: int,
        hint: int = 0,
    ) -> None:
        """Frees a block from ``alloc``; raises when the memory node refuses."""
        LIB.patronus_dealloc(self._node(), _gaddr(gaddr), dir_id, size, hint)
        _check_void((InvalidArgument, RC.INVALID))

    def _buffer(self, fn):
        n = ctypes.c_size_t()
        ptr = fn(self._node(), ctypes.byref(n))
        if not ptr:
            raise _null_error("buffer")
        return memoryview((ctypes.c_char * n.value).from_address(ptr)).cast("B")

    def lease_buffer(self) -> memoryview:
        """The memory node's lease buffer (its own view, no lease needed)."""
        return self._buffer(LIB.patronus_get_lease_buffer)

    def alloc_buffer(self) -> memoryview:
        """The memory node's allocation buffer (its own view, no lease needed)."""
        return self._buffer(LIB.patronus_get_alloc_buffer)

    def user_reserved_buffer(self) -> memoryview:
        """The memory node's user-reserved buffer (its own view, no lease needed)."""
        return self._buffer(LIB.patronus_get_user_reserved_buffer)

    def put(self, key: str, value: bytes) -> None:
        """Stores ``value`` (bytes) under ``key`` in the cluster's keeper."""
        value = bytes(value)
        check(LIB.patronus_put(self._node(), key.encode(), value, len(value)))

    def get(self, key: str) -> bytes:
        """The value of ``key``, waiting until some node put it."""
        cap = 256
        while True:
            buf = ctypes.create_string_buffer(cap)
            n = ctypes.c_size_t()
            rc = LIB.patronus_get(self._node(), key.encode(), buf, cap, ctypes.byref(n))
            if rc == RC.NO_MEM and n.value > cap:
                cap = n.value
                continue
            check(rc)
            return buf.raw[: n.value]

    def try_get(self, key: str) -> Optional[bytes]:
        """The value of ``key``, or None when no node put it (yet)."""
        cap = 256
        while True:
            buf = ctypes.create_string_buffer(cap)
            n = ctypes.c_size_t()
            rc = LIB.patronus_try_get(self._node(), key.encode(), buf, cap, ctypes.byref(n))
            if rc == RC.NOT_FOUND:
                return None
            if rc == RC.NO_MEM and n.value > cap:
                cap = n.value
                continue
            check(rc)
            return buf.raw[: n.value]

    def keeper_barrier(self, key: str) -> None:
        """Waits until every node of the cluster reached barrier ``key``."""
        check(LIB.patronus_keeper_barrier(self._node(), key.encode()))


class Completion:
    """One completed posted call: ``user_data`` (the caller's tag), ``rc``
    (an ``RC``: what the blocking call would have returned), ``lease`` (the
    new Lease of an acquisition, else the Lease the call was given),
    ``value`` (the old value of a CAS/FAA), ``data`` (bytes of a READ) and
    ``results`` (a committed batch's results)."""

    __slots__ = ("user_data", "rc", "lease", "value", "data", "results")

    def __init__(self, user_data, rc, lease, value, data=None, results=None):
        self.user_data = user_data
        self.rc = rc
        self.lease = lease
        self.value = value
        self.data = data
        self.results = results

    def __repr__(self):
        return f"Completion(user_data={self.user_data}, rc={self.rc.name}, value={self.value})"


class Lease:
    """A lease held through a ``Patronus`` node. A context manager that
    relinquishes on exit; the handle is freed when the object goes away."""

    def __init__(self, node, handle):
        self._p = node  # the node outlives its leases
        self._h = handle

    def _handle(self):
        if not self._h:
            raise InvalidArgument(RC.INVALID, "the lease handle was freed")
        return self._h

    def close(self) -> None:
        """Frees the handle without relinquishing (idempotent)."""
        h, self._h = getattr(self, "_h", None), None
        if h:
            LIB.patronus_lease_free(h)

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            if self._h and self._p._p:
                self._p.relinquish(self)
        finally:
            self.close()

    @property
    def success(self) -> bool:
        """True when the lease was granted."""
        return bool(LIB.patronus_lease_success(self._handle()))

    @property
    def ec(self) -> AcquireStatus:
        """The memory node's ``AcquireStatus`` for this lease (SUCCESS when granted)."""
        return AcquireStatus(LIB.patronus_lease_ec(self._handle()))

    @property
    def id(self) -> int:
        """The lease id the memory node assigned."""
        return LIB.patronus_lease_id(self._handle())

    @property
    def base_addr(self) -> int:
        """The object's address in the memory node's registered region."""
        return LIB.patronus_lease_base_addr(self._handle())

    @property
    def buffer_size(self) -> int:
        """The size in bytes the lease covers."""
        return LIB.patronus_lease_buffer_size(self._handle())

    @property
    def dir_id(self) -> int:
        """The directory that granted the lease."""
        return LIB.patronus_lease_dir_id(self._handle())

    @property
    def ddl_term(self) -> int:
        """The lease's deadline in cluster time (ns); 2**64 - 1 when it never expires."""
        return LIB.patronus_lease_ddl_term(self._handle())

    @property
    def readable(self) -> bool:
        """True when the lease allows reads."""
        return bool(LIB.patronus_lease_is_readable(self._handle()))

    @property
    def writable(self) -> bool:
        """True when the lease allows writes and atomics (a write lease)."""
        return bool(LIB.patronus_lease_is_writable(self._handle()))

    @property
    def gaddr(self) -> GlobalAddress:
        """The ``GlobalAddress`` the lease covers."""
        return self._p.get_gaddr(self)

    def __repr__(self):
        if not self._h:
            return "Lease(freed)"
        return (f"Lease(success={self.success}, id={self.id}, size={self.buffer_size}, "
                f"writable={self.writable})")


class Batch:
    """One-sided operations posted as one chain by ``commit()`` (at most 16,
    all towards one directory). ``commit`` returns one result per prepared
    operation: bytes for reads, the old value for CAS/FAA, None for writes."""

    def __init__(self, node):
        self._p = node
        self._b = LIB.patronus_batch_new()
        if not self._b:
            raise _null_error("batch_new")
        self._outs = []

    def close(self) -> None:
        """Frees the batch's handle (idempotent); operations not committed are dropped."""
        b, self._b = getattr(self, "_b", None), None
        if b:
            LIB.patronus_batch_free(b)

    def __del__(self):
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _prep(self, rc, out):
        check(rc)
        self._outs.append(out)

    def prepare_read(self, lease: Lease, size: int, offset: int = 0, flag: int = 0) -> None:
        """Adds a read of ``size`` bytes at ``offset``; its result is bytes."""
        buf = ctypes.create_string_buffer(size)
        self._prep(LIB.patronus_prepare_read(self._p._node(), self._b, _lh(lease), buf,
                                             size, offset, int(flag)), ("read", buf))

    def prepare_write(self, lease: Lease, data: bytes, offset: int = 0, flag: int = 0) -> None:
        """Adds a write of ``data`` at ``offset``; its result is None."""
        data = bytes(data)
        self._prep(LIB.patronus_prepare_write(self._p._node(), self._b, _lh(lease), data,
                                              len(data), offset, int(flag)), ("write", None))

    def prepare_cas(
        self,
        lease: Lease,
        offset: int,
        compare: int,
        swap: int,
        flag: int = 0,
    ) -> None:
        """Adds an 8-byte compare-and-swap at ``offset``; its result is the old value."""
        io = ctypes.c_uint64()
        self._prep(LIB.patronus_prepare_cas(self._p._node(), self._b, _lh(lease),
                                            ctypes.byref(io), offset, compare, swap,
                                            int(flag)), ("atomic", io))

    def prepare_faa(self, lease: Lease, offset: int, value: int, flag: int = 0) -> None:
        """Adds an 8-byte fetch-and-add of ``value`` at ``offset``; its result is the old value."""
        io = ctypes.c_uint64()
        self._prep(LIB.patronus_prepare_faa(self._p._node(), self._b, _lh(lease),
                                            ctypes.byref(io), offset, value, int(flag)),
                   ("atomic", io))

    def commit(self) -> list:
        """Posts the chain and waits; raises on failure. A posted batch is
        empty afterwards either way; InvalidArgument (e.g. this thread is
        not a client thread) posts nothing and keeps the batch, so a later
        ``commit()`` on a client thread runs it."""
        rc = LIB.patronus_commit(self._p._node(), self._b)
        if rc == RC.INVALID:
            check(rc)  # nothing posted: the outputs stay with the batch
        outs, self._outs = self._outs, []
        check(rc)
        res = []
        for kind, obj in outs:
            if kind == "read":
                res.append(obj.raw)
            elif kind == "atomic":
                res.append(obj.value)
            else:
                res.append(None)
        return res


def __getattr__(name):
    # PEP 562: ``patronus.LIB_PATH`` loads the library (the import does not).
    if name == "LIB_PATH":
        from . import _lib

        return _lib.LIB_PATH
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
