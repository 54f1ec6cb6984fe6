"""Many calls in flight on one thread from Python (post_*, poll, wait,
Completion) against the real libpatronus.so."""

import time

import pytest

from patronus import AcquireFlag, GlobalAddress, InvalidArgument, RC, RWFlag

from test_api import node  # noqa: F401 - the fixture

NO_GC = AcquireFlag.NO_GC


def collect(p, n, limit=10.0):
    """Exactly ``n`` completions by user_data, each once."""
    got = {}
    give_up = time.monotonic() + limit
    while len(got) < n:
        assert time.monotonic() < give_up, f"{len(got)} of {n} completions"
        for c in p.wait(64, 10_000_000):
            assert c.user_data not in got, f"user_data {c.user_data} twice"
            got[c.user_data] = c
    assert p.inflight() == 0
    assert p.poll() == []
    return got


def pattern(i, n):
    return bytes((k * 31 + i * 7 + 1) & 0xFF for k in range(n))


def test_mixed_calls_in_flight_complete_once_byte_exact(node):  # noqa: F811
    n = 20
    for i in range(n):
        assert node.post_get_wlease(0, 0, GlobalAddress(0, (i + 1) * 8192), 0, 4096, 0, NO_GC,
                                    user_data=i)
    assert node.inflight() == n
    got = collect(node, n)
    leases = [got[i].lease for i in range(n)]
    assert all(c.rc == RC.OK for c in got.values()) and all(l.success for l in leases)
    for i, l in enumerate(leases):
        assert node.post_write(l, pattern(i, 300 + i), 7, user_data=100 + i)
        assert node.post_write(l, i.to_bytes(8, "little"), 2048, user_data=200 + i)
    got = collect(node, 2 * n)
    assert all(c.rc == RC.OK for c in got.values())
    for i, l in enumerate(leases):
        assert node.post_cas(l, 2048, i, 1000 + i, user_data=300 + i)
        assert node.post_faa(l, 2048, 2, user_data=400 + i)
        assert node.post_read(l, 300 + i, 7, user_data=500 + i)
    got = collect(node, 3 * n)
    for i, l in enumerate(leases):
        assert (got[300 + i].rc, got[300 + i].value) == (RC.OK, i)
        assert (got[400 + i].rc, got[400 + i].value) == (RC.OK, 1000 + i)
        assert got[500 + i].data == pattern(i, 300 + i)
        assert got[500 + i].lease is l
    for i, l in enumerate(leases):
        assert node.post_relinquish(l, user_data=i)
    got = collect(node, n)
    assert all(c.rc == RC.OK for c in got.values())
    assert not any(l.success for l in leases)


def test_faas_in_flight_sum_exactly_and_the_limit_pushes_back(node):  # noqa: F811
    l = node.get_wlease(0, 0, GlobalAddress(0, 1 << 20), 0, 64, 0, NO_GC)
    olds = []
    for _ in range(5):
        for i in range(64):
            assert node.post_faa(l, 0, 1, user_data=i)
        assert node.post_faa(l, 0, 1, user_data=99) is False  # at the limit: nothing posted
        olds += [c.value for c in collect(node, 64).values()]
    assert sorted(olds) == list(range(320))
    assert node.faa(l, 0, 0) == 320
    node.relinquish(l)


def test_a_refused_access_fails_alone(node):  # noqa: F811
    l = node.get_wlease(0, 0, GlobalAddress(0, 4096), 0, 64, 0, NO_GC)
    node.write(l, pattern(3, 64))
    for i in range(12):
        assert node.post_read(l, 16, 64 if i == 6 else 16 * (i % 4), user_data=i)
    got = collect(node, 12)
    for i in range(12):
        if i == 6:
            assert got[i].rc == RC.RDMA_PROTECTION_ERR and got[i].data is None
        else:
            assert got[i].rc == RC.OK
            assert got[i].data == pattern(3, 64)[16 * (i % 4):16 * (i % 4) + 16]
    node.relinquish(l)


def test_batches_and_blocking_calls_mix_with_posted_ones(node):  # noqa: F811
    l = node.get_wlease(0, 0, GlobalAddress(0, 4096), 0, 256, 0, NO_GC)
    for i in range(8):
        assert node.post_write(l, bytes([i]) * 16, 16 * i, user_data=i)
    b = node.batch()
    b.prepare_read(l, 16, 0)
    b.prepare_faa(l, 200, 5)
    assert node.post_commit(b, user_data=50)
    node.write(l, b"blocking", 128)  # blocking, between posted calls
    assert node.read(l, 8, 128) == b"blocking"
    got = collect(node, 9)
    assert got[50].rc == RC.OK
    assert got[50].results[0] == bytes([0]) * 16 and got[50].results[1] == 0
    assert node.read(l, 128) == b"".join(bytes([i]) * 16 for i in range(8))
    node.relinquish(l)


def test_bad_posts_raise_and_complete_nothing(node):  # noqa: F811
    l = node.get_wlease(0, 0, GlobalAddress(0, 4096), 0, 64, 0, NO_GC)
    with pytest.raises(InvalidArgument):
        node.post_faa(l, 3, 1)  # unaligned
    with pytest.raises(InvalidArgument):
        node.post_read(l, 8, 0, flag=1 << 40)
    with pytest.raises(InvalidArgument):
        node.post_get_rlease(9, 0, GlobalAddress(0, 0), 0, 64, 0)
    assert node.inflight() == 0 and node.wait(8, 10_000_000) == []
    node.relinquish(l)
    # Expired: the completion carries the code.
    e = node.get_rlease(0, 0, GlobalAddress(0, 8192), 0, 64, 20_000_000)
    while node.now() < e.ddl_term + node.epsilon():
        time.sleep(0.001)
    assert node.post_read(e, 8, user_data=7)
    (c,) = collect(node, 1).values()
    assert c.rc == RC.LEASE_LOCAL_EXPIRED_ERR
    assert node.post_read(e, 8, flag=RWFlag.NO_LOCAL_EXPIRE_CHECK, user_data=8)
    (c,) = collect(node, 1).values()
    assert c.rc in (RC.OK, RC.RDMA_PROTECTION_ERR)
