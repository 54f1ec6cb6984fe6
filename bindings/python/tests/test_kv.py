"""patronus.kv, the protected hash table, against the real libpatronus.so:
byte-exact values against a dict model, the many-key calls, a read-only
handle refused by the memory node with the table unchanged, a relinquished
handle refused, bad arguments."""

import random

import pytest

from patronus import InvalidArgument, PatronusError, ProtectionError, RC
from patronus import kv

from test_api import node  # noqa: F401 - the fixture

SMALL = dict(base=4096, groups=8, initial_depth=1, max_depth=8)


def test_put_get_del_byte_exact_against_a_model(node):  # noqa: F811
    rng = random.Random(15)
    model = {}
    with kv.KvTable.create(node, 0, 0, mode=kv.Mode.LEASE, **SMALL) as t:
        for i in range(600):
            k = f"key-{rng.randrange(150)}".encode()
            op = rng.randrange(10)
            if op < 5:
                v = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 17, 300, 4000])))
                t.put(k, v)
                model[k] = v
            elif op < 8:
                assert t.get(k) == model.get(k), (i, k)
            else:
                assert t.delete(k) == (model.pop(k, None) is not None), (i, k)
        for k, v in model.items():
            assert t[k] == v
        with pytest.raises(KeyError):
            t[b"never-put"]


def test_many_keys_in_flight(node):  # noqa: F811
    with kv.KvTable.create(node, 0, 0, **SMALL) as t:
        items = {f"many-{i}".encode(): bytes([i]) * (i + 1) for i in range(40)}
        t.put_many(items)
        keys = list(items) + [b"absent"]
        got = t.get_many(keys, cap=16)  # longer values are read again alone
        assert got == list(items.values()) + [None]
        assert t.delete_many([b"many-0", b"absent", b"many-0", b"many-1"]) == [
            True, False, False, True]
        assert t.get_many([b"many-0", b"many-1", b"many-2"], cap=16) == [
            None, None, items[b"many-2"]]
        # A key given twice: the later value wins, as puts in order.
        t.put_many([(b"twice", b"first"), (b"twice", b"second")])
        assert t.get(b"twice") == b"second"


def test_read_only_handle_cannot_modify_and_relinquished_cannot_touch(node):  # noqa: F811
    w = kv.KvTable.create(node, 0, 0, **SMALL)
    for i in range(50):
        w.put(f"k{i}".encode(), f"v{i}".encode())
    r = kv.KvTable.open(node, 0, 0, access=kv.Access.READ_ONLY, base=SMALL["base"])
    assert r.get(b"k7") == b"v7"
    with pytest.raises(ProtectionError):
        r.put(b"k7", b"forged")
    with pytest.raises(ProtectionError):
        r.put(b"new", b"forged")
    with pytest.raises(ProtectionError):
        r.delete(b"k8")
    with pytest.raises(ProtectionError):
        r.put_many([(b"k9", b"forged")])
    # Unchanged, seen from the writer.
    assert [w.get(f"k{i}".encode()) for i in range(50)] == [f"v{i}".encode() for i in range(50)]
    assert w.get(b"new") is None
    r.relinquish()
    with pytest.raises(InvalidArgument, match="relinquished"):
        r.get(b"k7")
    r.close()
    r.close()  # idempotent
    with pytest.raises(InvalidArgument):
        r.get(b"k7")
    w.relinquish()
    w.close()


def test_bad_arguments(node):  # noqa: F811
    with pytest.raises(TypeError):
        kv.params(nonsense=1)
    assert kv.region_bytes(**SMALL) > 0
    with pytest.raises(InvalidArgument):
        kv.KvTable.create(node, 0, 0, mode=9, **SMALL)
    with pytest.raises(PatronusError) as e:
        kv.KvTable.open(node, 0, 0, base=1 << 20)  # no table there
    assert e.value.rc == RC.NOT_FOUND
    with kv.KvTable.create(node, 0, 0, **SMALL) as t:
        with pytest.raises(InvalidArgument):
            t.put(b"", b"v")
        with pytest.raises(InvalidArgument):
            t.put(b"x" * 65, b"v")
        t.put(b"x" * 64, b"")
        assert t.get(b"x" * 64) == b""
