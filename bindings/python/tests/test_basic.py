import threading

import pytest

import patronus
from patronus import _lib


def test_loaded_the_right_library():
    assert _lib.LIB.patronus_abi_version() == patronus.ABI_VERSION
    assert _lib.LIB_PATH.endswith("libpatronus.so")


def test_constants_match_api_md():
    assert patronus.AcquireFlag.NO_GC == 1 and patronus.AcquireFlag.DEBUG_SERVER_DO_NOTHING == 256
    assert patronus.ModifyFlag.DEBUG_EXTEND_DO_NOTHING == 512
    assert patronus.RWFlag.USE_TWO_SIDED_AUTO_PACKING == 64
    assert patronus.RC.INTERNAL == 11 and patronus.AcquireStatus.NO_MW == 7


def test_global_address_round_trip():
    g = patronus.GlobalAddress(3, 4096)
    assert (g.node_id, g.offset) == (3, 4096)
    assert g.val == (3 << 48) | 4096
    assert not g.is_null()
    assert patronus.GlobalAddress(7, 0).is_null()
    assert g == patronus.GlobalAddress(3, 4096)


def test_bad_addresses_raise():
    with pytest.raises(patronus.InvalidArgument):
        patronus.GlobalAddress(1, 1 << 48)
    with pytest.raises(patronus.InvalidArgument):
        patronus.GlobalAddress(1 << 16, 0)


def test_last_error_is_per_thread_and_cleared_by_success():
    _lib.LIB.patronus_clear_last_error()
    assert patronus.last_error() is None
    g = _lib.LIB.patronus_gaddr(1, 1 << 48)  # refused by the library
    assert g.val == 0
    assert "48 bits" in patronus.last_error()
    seen = []
    t = threading.Thread(target=lambda: seen.append(patronus.last_error()))
    t.start()
    t.join()
    assert seen == [None]  # another thread has its own last error
    _lib.LIB.patronus_gaddr_node(g)  # a pure helper keeps it
    assert patronus.last_error() is not None
    _lib.LIB.patronus_clear_last_error()
    assert patronus.last_error() is None
    _lib.LIB.patronus_gaddr(1, 1 << 48)
    _lib.LIB.patronus_gaddr(1, 8)  # a successful call clears it
    assert patronus.last_error() is None


def test_check_maps_codes_to_exceptions():
    with pytest.raises(patronus.ProtectionError) as e:
        patronus.check(patronus.RC.RDMA_PROTECTION_ERR)
    assert e.value.rc == patronus.RC.RDMA_PROTECTION_ERR
    with pytest.raises(patronus.LeaseExpiredError):
        patronus.check(8)
    with pytest.raises(patronus.InvalidArgument):
        patronus.check(5)
    patronus.check(0)
    assert patronus.rc_str(6) == "RDMA protection error"
    assert patronus.rc_str(1234) == "unknown return code"


def test_every_public_name_has_a_docstring():
    import inspect

    import patronus

    missing = []
    for name in patronus.__all__:
        obj = getattr(patronus, name)
        if not inspect.getdoc(obj):
            missing.append(name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not (callable(member) or isinstance(member, property)):
                    continue
                if not (member.__doc__ or "").strip():
                    missing.append(f"{name}.{attr}")
    assert missing == [], f"public names without a docstring: {missing}"


def test_every_public_function_is_typed():
    import inspect
    import typing

    import patronus

    untyped = []
    for name in patronus.__all__:
        obj = getattr(patronus, name)
        members = [(name, obj)] if inspect.isfunction(obj) else []
        if inspect.isclass(obj):
            for attr, m in vars(obj).items():
                if isinstance(m, property):
                    m = m.fget
                if not attr.startswith("_") and inspect.isfunction(m):
                    members.append((f"{name}.{attr}", m))
        for label, fn in members:
            hints = typing.get_type_hints(fn, vars(patronus))  # every name resolves
            params = [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]
            if "return" not in hints or any(p not in hints for p in params):
                untyped.append(label)
    assert untyped == [], f"public functions without full annotations: {untyped}"
    import pathlib

    assert (pathlib.Path(patronus.__file__).parent / "py.typed").exists()
