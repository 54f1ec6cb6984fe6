"""Every patronus_* prototype in include/patronus.h has a matching ctypes
declaration (same arity, same types), and vice versa."""

import ctypes
import re

from conftest import ROOT
from patronus import _lib

CTYPES = {
    "void": None,
    "bool": ctypes.c_bool,
    "uint16_t": ctypes.c_uint16,
    "uint32_t": ctypes.c_uint32,
    "uint64_t": ctypes.c_uint64,
    "int32_t": ctypes.c_int,
    "int": ctypes.c_int,
    "int64_t": ctypes.c_int64,
    "size_t": ctypes.c_size_t,
    "const char*": ctypes.c_void_p,
    "char*": ctypes.c_void_p,
    "patronus_gaddr_t": _lib.GAddr,
    "patronus_rc_t": _lib.RC_T,
    "patronus_acquire_status_t": _lib.ST_T,
    "patronus_t*": _lib.P,
    "const patronus_t*": _lib.P,
    "patronus_lease_t*": _lib.L,
    "const patronus_lease_t*": _lib.L,
    "patronus_batch_t*": _lib.B,
    "patronus_config_t*": ctypes.POINTER(_lib.Config),
    "const patronus_config_t*": ctypes.POINTER(_lib.Config),
    "void*": ctypes.c_void_p,
    "const void*": ctypes.c_void_p,
    "size_t*": ctypes.POINTER(ctypes.c_size_t),
    "patronus_completion_t*": ctypes.POINTER(_lib.Completion),
    "patronus_kv_completion_t*": ctypes.POINTER(_lib.KvCompletion),
    "patronus_kv_t*": _lib.KV,
    "patronus_kv_params_t*": _lib.KVP,
    "const patronus_kv_params_t*": _lib.KVP,
    "const patronus_kv_item_t*": _lib.KVI,
    "bool*": ctypes.POINTER(ctypes.c_bool),
}

# Parameters that are C strings (declared c_char_p so str/bytes pass).
STRING_PARAMS = {("patronus_put", 1), ("patronus_get", 1), ("patronus_try_get", 1),
                 ("patronus_keeper_barrier", 1), ("patronus_kv_publish", 2),
                 ("patronus_kv_open_published", 1)}


def norm(t):
    t = re.sub(r"\s+", " ", t.strip())
    t = t.replace(" *", "*")
    return t


def prototypes():
    text = (ROOT / "include" / "patronus.h").read_text()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    out = {}
    for m in re.finditer(r"([A-Za-z_][\w \*]*?)\b(patronus_\w+)\s*\(([^)]*)\)\s*;", text):
        ret, name, args = m.group(1), m.group(2), m.group(3)
        params = [] if args.strip() in ("", "void") else [
            norm(re.sub(r"\b\w+$", "", a.strip())) for a in args.split(",")
        ]
        out[name] = (norm(ret), params)
    return out


def test_every_prototype_is_declared():
    protos = prototypes()
    assert len(protos) >= 8, protos
    decls = {name: (argtypes, restype) for name, argtypes, restype in _lib.DECLS}
    assert set(protos) == set(decls), (
        f"header only: {set(protos) - set(decls)}; table only: {set(decls) - set(protos)}"
    )
    for name, (ret, params) in protos.items():
        argtypes, restype = decls[name]
        assert CTYPES[ret] == restype, f"{name}: returns {ret}, declared {restype}"
        want = [
            ctypes.c_char_p if (name, i) in STRING_PARAMS else CTYPES[p]
            for i, p in enumerate(params)
        ]
        assert want == list(argtypes), f"{name}: {params} vs {argtypes}"
