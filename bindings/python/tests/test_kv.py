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


def test_posted_operations_complete_once_each_byte_exact(node):  # noqa: F811
    with kv.KvTable.create(node, 0, 0, **SMALL) as t:
        vals = {f"post-{i}".encode(): bytes([i]) * (1 + 97 * i % 700) for i in range(40)}
        for i, (k, v) in enumerate(vals.items()):
            assert t.post_put(k, v, user_data=("put", i))
        assert t.posted() == 40

        def drain(n):
            done = []
            for _ in range(200):
                if len(done) >= n:
                    break
                done += t.wait(timeout_ns=100_000_000)
            assert len(done) == n, f"{len(done)} of {n} posted operations completed"
            return done

        done = drain(40)
        assert sorted(c.user_data for c in done) == sorted(("put", i) for i in range(40))
        assert all(c.ok and c.op == "put" and c.value is None for c in done)
        assert t.posted() == 0
        # Gets and deletes mixed; an absent key is NOT_FOUND, not an error.
        keys = list(vals)
        for i, k in enumerate(keys):
            assert (t.post_delete(k, user_data=i) if i % 3 == 0 else
                    t.post_get(k, user_data=i))
        assert t.post_get(b"absent", user_data="absent")
        assert t.post_delete(b"absent", user_data="absent-del")
        done = {c.user_data: c for c in drain(42)}
        assert len(done) == 42
        for i, k in enumerate(keys):
            c = done[i]
            if i % 3 == 0:
                assert c.op == "delete" and c.rc == RC.OK
            else:
                assert c.op == "get" and c.rc == RC.OK and c.value == vals[k], i
        assert done["absent"].rc == RC.NOT_FOUND and done["absent"].value is None
        assert done["absent-del"].rc == RC.NOT_FOUND and done["absent-del"].op == "delete"
        assert t.get(keys[0]) is None and t.get(keys[1]) == vals[keys[1]]
        # Past the handle's limit: False, nothing queued; the others finish.
        n = 0
        while t.post_get(keys[1], user_data=n):
            n += 1
            assert n <= kv.MAX_POSTED
        assert n == kv.MAX_POSTED and t.posted() == kv.MAX_POSTED
        # Blocking calls wait until the posted ones are polled.
        with pytest.raises(InvalidArgument):
            t.get(keys[1])
        done = drain(n)
        assert sorted(c.user_data for c in done) == list(range(n))
        assert all(c.value == vals[keys[1]] for c in done)
        with pytest.raises(InvalidArgument):
            t.post_get(b"", user_data=0)
        assert t.poll() == []


def test_posted_writes_of_a_read_only_handle_are_refused(node):  # noqa: F811
    with kv.KvTable.create(node, 0, 0, **SMALL) as w:
        w.put(b"k1", b"v1")
        with kv.KvTable.open(node, 0, 0, access=kv.Access.READ_ONLY, base=SMALL["base"]) as r:
            assert r.post_put(b"k1", b"forged", user_data=1)
            assert r.post_put(b"new", b"forged", user_data=2)
            assert r.post_delete(b"k1", user_data=3)
            assert r.post_get(b"k1", user_data=4)
            done = []
            for _ in range(200):
                if len(done) >= 4:
                    break
                done += r.wait(timeout_ns=100_000_000)
            by = {c.user_data: c for c in done}
            assert sorted(by) == [1, 2, 3, 4]
            for u in (1, 2, 3):
                assert by[u].rc == RC.RDMA_PROTECTION_ERR
                assert isinstance(by[u].error, PatronusError)
            assert by[4].ok and by[4].value == b"v1"
        assert w.get(b"k1") == b"v1" and w.get(b"new") is None
