"""Loading libpatronus.so and declaring every C function once.

Loader order: next to this package, then $PATRONUS_LIB, then the system
loader; a failure lists every path tried. ``DECLS`` is the single table of
(name, argtypes, restype); ``tests/test_header.py`` checks it against every
``patronus_*`` prototype in include/patronus.h.
"""

import ctypes
import os
from ctypes import POINTER, c_bool, c_char_p, c_int, c_uint16, c_uint32, c_uint64, c_void_p

ABI_VERSION = 1


class GAddr(ctypes.Structure):
    """patronus_gaddr_t."""

    _fields_ = [("val", c_uint64)]


# (name, argtypes, restype). c_void_p restype for strings we must not free.
DECLS = [
    ("patronus_abi_version", [], c_uint32),
    ("patronus_last_error", [], c_void_p),
    ("patronus_clear_last_error", [], None),
    ("patronus_rc_str", [c_int], c_void_p),
    ("patronus_gaddr", [c_uint16, c_uint64], GAddr),
    ("patronus_gaddr_node", [GAddr], c_uint16),
    ("patronus_gaddr_offset", [GAddr], c_uint64),
    ("patronus_gaddr_is_null", [GAddr], c_bool),
]


class LoadError(OSError):
    """libpatronus.so could not be loaded."""


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
                "rebuild the library or reinstall the package"
            )
        return lib, path
    raise LoadError("libpatronus.so not found; tried: " + "; ".join(tried))


def cstr(ptr):
    """A library-owned C string (c_void_p) as str, or None."""
    if not ptr:
        return None
    return ctypes.string_at(ptr).decode("utf-8", "replace")


LIB, LIB_PATH = load()
