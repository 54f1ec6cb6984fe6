"""Patronus-rs from Python: protected remote memory with leases.

This increment exposes what the C ABI has today: return codes, flags,
statuses, global addresses and errors. Node, lease and data-path calls
arrive with the lease core.
"""

import enum

from ._lib import LIB, LIB_PATH, ABI_VERSION, GAddr, LoadError, cstr

__all__ = [
    "ABI_VERSION",
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


_ERRORS = {
    RC.RDMA_PROTECTION_ERR: ProtectionError,
    RC.LEASE_LOCAL_EXPIRED_ERR: LeaseExpiredError,
    RC.INVALID: InvalidArgument,
}


def last_error():
    """This thread's last error message from the library, or None."""
    return cstr(LIB.patronus_last_error())


def rc_str(rc):
    """The library's description of a return code."""
    return cstr(LIB.patronus_rc_str(int(rc)))


def check(rc):
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
    def node_id(self):
        return LIB.patronus_gaddr_node(self._g)

    @property
    def offset(self):
        return LIB.patronus_gaddr_offset(self._g)

    @property
    def val(self):
        return self._g.val

    def is_null(self):
        return bool(LIB.patronus_gaddr_is_null(self._g))

    def __eq__(self, other):
        return isinstance(other, GlobalAddress) and self.val == other.val

    def __hash__(self):
        return hash(self.val)

    def __repr__(self):
        return f"GlobalAddress(node_id={self.node_id}, offset={self.offset:#x})"
