"""The protected hash table (RACE-style, on Patronus leases) from Python.

A ``KvTable`` is a handle on a table in a memory node's lease buffer,
reached with the protection ``Mode`` it was made with. It belongs to the
client thread that created or opened it (its leases are bound to that
thread's connections): use it on that thread only.

>>> t = KvTable.create(p, 0, 0, mode=Mode.LEASE, base=4096)   # doctest: +SKIP
>>> t.put(b"alice", b"42"); t.get(b"alice")                     # doctest: +SKIP
b'42'
>>> r = KvTable.open(p, 0, 0, access=Access.READ_ONLY, base=4096)  # doctest: +SKIP
>>> r.put(b"alice", b"0")     # raises ProtectionError        # doctest: +SKIP

Posted forms keep many operations of a handle in flight together on its
thread: ``post_get``, ``post_put`` and ``post_delete`` queue one and
return at once (False when the handle holds ``MAX_POSTED`` not yet
polled), ``poll`` and ``wait`` drive them and return ``KvCompletion``s:

>>> for i in range(32): t.post_get(b"key-%d" % i, user_data=i)  # doctest: +SKIP
>>> done = []                                                    # doctest: +SKIP
>>> while len(done) < 32: done += t.wait()                       # doctest: +SKIP

Failures raise the package's ``PatronusError`` subclasses: a refused
change through a read-only or relinquished handle ``ProtectionError`` (or
``InvalidArgument`` for a relinquished handle, refused before anything is
sent), bad arguments ``InvalidArgument``.
"""

from __future__ import annotations

import ctypes
import enum
import weakref
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import RC, InvalidArgument, Patronus, PatronusError, check, last_error
from ._lib import LIB, KvCompletion as _CKvCompletion, KvItem, KvParams

__all__ = ["Access", "KvCompletion", "KvTable", "Mode", "MAX_KEY", "MAX_POSTED", "params",
           "region_bytes"]

#: Largest key in bytes.
MAX_KEY = 64
#: Posted operations a handle holds at most (``PATRONUS_KV_MAX_POSTED``).
MAX_POSTED = 64
#: A buffer every value fits in (values are at most 8 048 bytes).
_VALUE_CAP = 8192

Bytes = Union[bytes, bytearray, memoryview]


class Mode(enum.IntEnum):
    """How a handle reaches the table (the ``PATRONUS_KV_*`` modes)."""

    LEASE = 0
    RPC = 1
    MR = 2
    UNPROTECTED = 3


class Access(enum.IntEnum):
    """What a handle may do."""

    READ_ONLY = 0
    READ_WRITE = 1


_PARAM_FIELDS = {name for name, _ in KvParams._fields_}


def params(**kw) -> KvParams:
    """A ``patronus_kv_params_t`` with the library's defaults, then ``kw``
    (``base``, ``groups``, ``initial_depth``, ``max_depth``, ``lease_ns``,
    ``lock_ns``, ``alloc_hint``, ``patience_ms``)."""
    unknown = set(kw) - _PARAM_FIELDS
    if unknown:
        raise TypeError(f"unknown table parameter(s): {', '.join(sorted(unknown))}")
    prm = KvParams()
    check(LIB.patronus_kv_params_init(ctypes.byref(prm)))
    for k, v in kw.items():
        setattr(prm, k, int(v))
    return prm


def region_bytes(**kw) -> int:
    """Bytes of the table region the parameters describe."""
    n = LIB.patronus_kv_region_bytes(ctypes.byref(params(**kw)))
    if n == 0:
        raise InvalidArgument(RC.INVALID, last_error() or "invalid table shape")
    return n


def _key(k: Bytes) -> bytes:
    k = bytes(k)
    if not 1 <= len(k) <= MAX_KEY:
        raise InvalidArgument(RC.INVALID, f"keys are 1 to {MAX_KEY} bytes, not {len(k)}")
    return k


def _free(h):
    LIB.patronus_kv_free(h)


class KvCompletion:
    """One finished posted operation: ``user_data`` (the caller's tag),
    ``op`` ("get", "put" or "delete"), ``rc`` (an ``RC``: what the blocking
    call would have returned: NOT_FOUND for an absent key), ``value`` (a
    get's bytes, else None) and ``error`` (the ``PatronusError`` the
    blocking call would have raised, else None)."""

    __slots__ = ("user_data", "op", "rc", "value", "error")

    def __init__(self, user_data, op, rc, value=None, error=None):
        self.user_data = user_data
        self.op = op
        self.rc = rc
        self.value = value
        self.error = error

    @property
    def ok(self) -> bool:
        return self.rc == RC.OK

    def __repr__(self):
        return (f"KvCompletion(user_data={self.user_data!r}, op={self.op!r}, "
                f"rc={self.rc.name}, value={self.value!r})")


_OPS = {0: "get", 1: "put", 2: "delete"}


class KvTable:
    """A handle on a protected hash table. Make it with ``create``,
    ``open`` or ``open_published``; a context manager that relinquishes
    and frees it on exit."""

    def __init__(self, node: Patronus, handle):
        if not handle:
            msg = last_error() or "no handle"
            rc = RC.NOT_FOUND if "no kv table" in msg else RC.INVALID
            raise (InvalidArgument if rc == RC.INVALID else PatronusError)(rc, msg)
        self._node = node
        self._h = handle
        self._fin = weakref.finalize(self, _free, handle)
        # Posted operations: ticket -> (user_data, key buffer, value buffer).
        self._posted: Dict[int, tuple] = {}
        self._ticket = 0

    # construction ----------------------------------------------------------

    @classmethod
    def create(cls, node: Patronus, node_id: int, dir_id: int, mode: Mode = Mode.LEASE,
               **kw) -> "KvTable":
        """Creates a table on node ``node_id``'s lease buffer at ``base``
        (keyword parameters as ``params``), overwriting the region; a
        read-write handle."""
        prm = params(**kw)
        return cls(node, LIB.patronus_kv_create(node._node(), node_id, dir_id,
                                                ctypes.byref(prm), int(mode)))

    @classmethod
    def open(cls, node: Patronus, node_id: int, dir_id: int, mode: Mode = Mode.LEASE,
             access: Access = Access.READ_WRITE, **kw) -> "KvTable":
        """Opens the table at ``base`` of node ``node_id`` (its shape is read
        from the table; ``PatronusError`` with ``rc`` NOT_FOUND when there is
        none)."""
        prm = params(**kw)
        return cls(node, LIB.patronus_kv_open(node._node(), node_id, dir_id, ctypes.byref(prm),
                                              int(mode), int(access)))

    @classmethod
    def open_published(cls, node: Patronus, name: str, mode: Mode = Mode.LEASE,
                       access: Access = Access.READ_WRITE, **kw) -> "KvTable":
        """Opens the table published as ``name`` (waits for it in the
        keeper)."""
        prm = params(**kw)
        return cls(node, LIB.patronus_kv_open_published(node._node(), name.encode(),
                                                        ctypes.byref(prm), int(mode),
                                                        int(access)))

    def publish(self, name: str) -> None:
        """Publishes where the table is under the keeper key ``kv/<name>``."""
        check(LIB.patronus_kv_publish(self._node._node(), self._handle(), name.encode()))

    # lifecycle ---------------------------------------------------------------

    def _handle(self):
        if not self._h:
            raise InvalidArgument(RC.INVALID, "the table handle is closed")
        return self._h

    def relinquish(self) -> None:
        """Gives the handle's leases back: every later access fails."""
        check(LIB.patronus_kv_relinquish(self._node._node(), self._handle()))

    def close(self) -> None:
        """Frees the handle (without relinquishing; idempotent)."""
        if self._h:
            self._h = None
            self._fin()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            if self._h and self._node._p:
                try:
                    self.relinquish()
                except PatronusError:
                    if exc[0] is None:
                        raise
        finally:
            self.close()

    # operations --------------------------------------------------------------

    def get(self, key: Bytes) -> Optional[bytes]:
        """The value of ``key``, or None."""
        k = _key(key)
        cap = 256
        while True:
            buf = ctypes.create_string_buffer(cap)
            n = ctypes.c_size_t(0)
            rc = LIB.patronus_kv_get(self._node._node(), self._handle(), k, len(k), buf, cap,
                                     ctypes.byref(n))
            if rc == RC.NOT_FOUND:
                return None
            if rc == RC.NO_MEM and n.value > cap:
                cap = n.value
                continue
            check(rc)
            return buf.raw[: n.value]

    def __getitem__(self, key: Bytes) -> bytes:
        v = self.get(key)
        if v is None:
            raise KeyError(key)
        return v

    def put(self, key: Bytes, value: Bytes) -> None:
        """Sets ``key`` to ``value`` (insert or update)."""
        k, v = _key(key), bytes(value)
        check(LIB.patronus_kv_put(self._node._node(), self._handle(), k, len(k), v, len(v)))

    __setitem__ = put

    def delete(self, key: Bytes) -> bool:
        """Removes ``key``; True when it was there."""
        k = _key(key)
        rc = LIB.patronus_kv_del(self._node._node(), self._handle(), k, len(k))
        if rc == RC.NOT_FOUND:
            return False
        check(rc)
        return True

    def put_many(self, items: Union[Dict[Bytes, Bytes], Iterable[Tuple[Bytes, Bytes]]]) -> None:
        """Sets many keys with their calls in flight together (the outcome
        of ``put`` of each in order)."""
        pairs = list(items.items()) if isinstance(items, dict) else list(items)
        keep = []
        arr = (KvItem * max(1, len(pairs)))()
        for i, (k, v) in enumerate(pairs):
            kb = ctypes.create_string_buffer(_key(k), len(_key(k)))
            vb = ctypes.create_string_buffer(bytes(v), len(bytes(v)) or 1)
            keep += [kb, vb]
            arr[i] = KvItem(ctypes.addressof(kb), len(_key(k)), ctypes.addressof(vb),
                            len(bytes(v)))
        check(LIB.patronus_kv_put_many(self._node._node(), self._handle(), arr, len(pairs)))

    def delete_many(self, keys: Sequence[Bytes]) -> List[bool]:
        """Removes many keys with their calls in flight together; per key,
        True when it was there (the outcome of ``delete`` of each in
        order)."""
        ks = [_key(k) for k in keys]
        if not ks:
            return []
        keep = []
        arr = (KvItem * len(ks))()
        for i, k in enumerate(ks):
            kb = ctypes.create_string_buffer(k, len(k))
            keep.append(kb)
            arr[i] = KvItem(ctypes.addressof(kb), len(k), None, 0)
        out = (ctypes.c_bool * len(ks))()
        check(LIB.patronus_kv_del_many(self._node._node(), self._handle(), arr, len(ks), out))
        return [bool(x) for x in out]

    def get_many(self, keys: Sequence[Bytes], cap: int = 4096) -> List[Optional[bytes]]:
        """The values of many keys (None where absent), with their calls in
        flight together; values longer than ``cap`` are read again alone."""
        ks = [_key(k) for k in keys]
        if not ks:
            return []
        keep = []
        arr = (KvItem * len(ks))()
        outs = []
        for i, k in enumerate(ks):
            kb = ctypes.create_string_buffer(k, len(k))
            ob = ctypes.create_string_buffer(cap)
            keep.append(kb)
            outs.append(ob)
            arr[i] = KvItem(ctypes.addressof(kb), len(k), ctypes.addressof(ob), cap)
        lens = (ctypes.c_size_t * len(ks))()
        rc = LIB.patronus_kv_get_many(self._node._node(), self._handle(), arr, len(ks), lens)
        if rc not in (RC.OK, RC.NO_MEM):
            check(rc)
        out: List[Optional[bytes]] = []
        for i, k in enumerate(ks):
            n = lens[i]
            if n == ctypes.c_size_t(-1).value:
                out.append(None)
            elif n > cap:
                out.append(self.get(k))
            else:
                out.append(outs[i].raw[:n])
        return out

    # posted operations -------------------------------------------------------

    def _post(self, fn, args, user_data, keep) -> bool:
        self._ticket += 1
        rc = fn(self._node._node(), self._handle(), *args, self._ticket)
        if rc == RC.RETRY:
            return False
        check(rc)
        self._posted[self._ticket] = (user_data, keep)
        return True

    def post_get(self, key: Bytes, user_data=None) -> bool:
        """Queues a get of ``key`` (its completion's ``value`` is the value,
        or None and ``rc`` NOT_FOUND); False when the handle holds
        ``MAX_POSTED`` operations not yet polled (nothing queued)."""
        k = _key(key)
        buf = ctypes.create_string_buffer(_VALUE_CAP)
        return self._post(LIB.patronus_kv_post_get, (k, len(k), buf, _VALUE_CAP), user_data,
                          buf)

    def post_put(self, key: Bytes, value: Bytes, user_data=None) -> bool:
        """Queues a put (key and value are copied at once); as ``post_get``."""
        k, v = _key(key), bytes(value)
        return self._post(LIB.patronus_kv_post_put, (k, len(k), v, len(v)), user_data, None)

    def post_delete(self, key: Bytes, user_data=None) -> bool:
        """Queues a delete (``rc`` OK when the key was there, NOT_FOUND
        when not); as ``post_get``."""
        k = _key(key)
        return self._post(LIB.patronus_kv_post_del, (k, len(k)), user_data, None)

    post_del = post_delete

    def posted(self) -> int:
        """Posted operations not yet polled."""
        return LIB.patronus_kv_posted(self._handle())

    def _completions(self, cs, n) -> List[KvCompletion]:
        out = []
        for i in range(n):
            c = cs[i]
            user_data, buf = self._posted.pop(c.user_data, (c.user_data, None))
            rc = RC(c.rc)
            op = _OPS.get(c.op, "?")
            value = buf.raw[: c.value_len] if op == "get" and rc == RC.OK else None
            err = None
            if rc not in (RC.OK, RC.NOT_FOUND):
                err = PatronusError(rc, f"posted kv {op}: {rc.name}")
            out.append(KvCompletion(user_data, op, rc, value, err))
        return out

    def poll(self, max: int = 64) -> List[KvCompletion]:
        """Drives the posted operations and returns the finished ones (at
        most ``max``), without waiting."""
        cs = (_CKvCompletion * max)()
        n = LIB.patronus_kv_poll(self._node._node(), self._handle(), cs, max) if max else 0
        if not n and last_error():
            raise InvalidArgument(RC.INVALID, last_error())
        return self._completions(cs, n)

    def wait(self, max: int = 64, timeout_ns: int = 1_000_000_000) -> List[KvCompletion]:
        """As ``poll``, but waits up to ``timeout_ns`` for at least one."""
        cs = (_CKvCompletion * max)()
        n = LIB.patronus_kv_wait(self._node._node(), self._handle(), cs, max,
                                 timeout_ns) if max else 0
        if not n and last_error():
            raise InvalidArgument(RC.INVALID, last_error())
        return self._completions(cs, n)
