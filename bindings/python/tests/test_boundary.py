"""The rules of the C boundary, seen from Python: the last error is cleared
by every call and set by every failure (void calls too, which the package
turns into exceptions), NULL parameters are named, a commit on a thread that
is not a client thread keeps the batch, closing a node releases every
thread's registration, and a C bool is read as its byte."""

import ctypes
import itertools
import os
import threading
import time

import pytest

import patronus
from patronus._lib import LIB, Config, GAddr

MS = 1_000_000
_seq = itertools.count()


def cluster_name(tag):
    return f"py-boundary-{tag}-{os.getpid()}-{next(_seq)}"


def count_threads(*prefixes):
    """Threads of this process whose name starts with one of ``prefixes``."""
    n = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                comm = f.read()
        except FileNotFoundError:  # the thread just exited
            continue
        n += any(comm.startswith(p) for p in prefixes)
    return n


# The soft NIC's threads (src/fabric/soft/nic.rs) and the clock threads.
NODE_THREADS = ("nic-", "patronus")


def count_segments():
    """The library's open memfd segments."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:patronus-")
        except OSError:
            pass
    return n


def wait_until(cond, timeout=10.0):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.01)
    return True


def err():
    return patronus.last_error()


@pytest.fixture
def node():
    """A one-node cluster served by a thread; the test thread is a client."""
    p = patronus.Patronus(cluster=cluster_name("node"))
    p.register_client_thread()
    t = threading.Thread(target=p.server_serve, args=(0,), daemon=True)
    t.start()
    # The directory has its server thread once a lease is granted.
    assert wait_until(lambda: _granted(p))
    yield p
    p.finished(0)
    t.join(timeout=30)
    assert not t.is_alive(), "server_serve did not return"
    p.close()


def _granted(p):
    try:
        with p.get_wlease(0, 0, patronus.GlobalAddress(0, 64), 0, 8, 100 * MS):
            return True
    except patronus.PatronusError:
        return False


def test_success_clears_and_failure_sets_the_last_error(node):
    h = node._node()
    assert LIB.patronus_read(h, None, None, 8, 0, 0) == patronus.RC.INVALID
    assert err() == "patronus_read: lease is NULL"
    assert node.get_node_id() == 0
    assert err() is None
    # Pure helpers keep it.
    LIB.patronus_read(h, None, None, 8, 0, 0)
    LIB.patronus_gaddr_offset(GAddr(5))
    LIB.patronus_rc_str(0)
    assert err() == "patronus_read: lease is NULL"
    # A successful void call clears it.
    buf = LIB.patronus_get_rdma_buffer(h, 64)
    assert buf
    LIB.patronus_read(h, None, None, 8, 0, 0)
    LIB.patronus_put_rdma_buffer(h, buf)
    assert err() is None


def test_failing_void_calls_set_the_last_error(node):
    h = node._node()
    not_ours = ctypes.create_string_buffer(16)
    node.get_node_id()
    LIB.patronus_put_rdma_buffer(h, ctypes.addressof(not_ours))
    assert err().startswith("patronus_put_rdma_buffer: ")
    assert "was not handed out by this node" in err()

    with pytest.raises(patronus.InvalidArgument, match="patronus_dealloc: invalid argument: dealloc of"):
        node.dealloc(patronus.GlobalAddress(0, 12345), 0, 100)  # never allocated

    # The one directory already has its server thread.
    with pytest.raises(patronus.PatronusError,
                       match="patronus_server_serve: .*all 1 directories have a server thread") as e:
        node.server_serve(0)
    assert e.value.rc is None  # a void call returns no code

    node.get_node_id()
    LIB.patronus_finished(None, 0)
    assert err() == "patronus_finished: p is NULL"
    node.get_node_id()
    LIB.patronus_dealloc(None, GAddr(5), 0, 8, 0)
    assert err() == "patronus_dealloc: p is NULL"
    node.get_node_id()
    LIB.patronus_config_init(None)
    assert err() == "patronus_config_init: conf is NULL"


def test_null_parameters_are_named(node):
    h = node._node()
    with node.get_wlease(0, 0, patronus.GlobalAddress(0, 4096), 0, 64, 500 * MS) as lease:
        lh = lease._handle()
        b = LIB.patronus_batch_new()
        buf = ctypes.create_string_buffer(8)
        n = ctypes.c_size_t()
        INV = patronus.RC.INVALID
        cases = [
            (lambda: LIB.patronus_read(None, lh, buf, 8, 0, 0), INV, "patronus_read: p is NULL"),
            (lambda: LIB.patronus_read(h, None, buf, 8, 0, 0), INV, "patronus_read: lease is NULL"),
            (lambda: LIB.patronus_read(h, lh, None, 8, 0, 0), INV, "patronus_read: obuf is NULL"),
            (lambda: LIB.patronus_write(h, lh, None, 8, 0, 0), INV, "patronus_write: ibuf is NULL"),
            (lambda: LIB.patronus_faa(h, lh, None, 0, 1, 0), INV, "patronus_faa: iobuf is NULL"),
            (lambda: LIB.patronus_prepare_write(h, None, lh, buf, 8, 0, 0), INV,
             "patronus_prepare_write: b is NULL"),
            (lambda: LIB.patronus_commit(h, None), INV, "patronus_commit: b is NULL"),
            (lambda: LIB.patronus_commit(None, b), INV, "patronus_commit: p is NULL"),
            (lambda: LIB.patronus_extend(h, None, MS, 0), INV, "patronus_extend: lease is NULL"),
            (lambda: bool(LIB.patronus_get_wlease(None, 0, 0, GAddr(0), 0, 8, MS, 0)), False,
             "patronus_get_wlease: p is NULL"),
            (lambda: bool(LIB.patronus_upgrade(h, None, 0)), False,
             "patronus_upgrade: lease is NULL"),
            (lambda: LIB.patronus_lease_is_writable(None), False,
             "patronus_lease_is_writable: lease is NULL"),
            (lambda: LIB.patronus_get_gaddr(h, None).val, 0, "patronus_get_gaddr: lease is NULL"),
            (lambda: LIB.patronus_put(h, None, b"v", 1), INV, "patronus_put: key is NULL"),
            (lambda: LIB.patronus_put(h, b"k", None, 1), INV, "patronus_put: value is NULL"),
            (lambda: LIB.patronus_get(h, b"k", None, 8, ctypes.byref(n)), INV,
             "patronus_get: buf is NULL"),
            (lambda: LIB.patronus_now(None), 0, "patronus_now: p is NULL"),
            (lambda: LIB.patronus_register_server_thread(None), INV,
             "patronus_register_server_thread: p is NULL"),
            (lambda: LIB.patronus_to_exposed_gaddr(None, None).val, 0,
             "patronus_to_exposed_gaddr: p is NULL"),
        ]
        for call, want, msg in cases:
            assert node.get_node_id() == 0 and err() is None
            assert call() == want, msg
            assert err() == msg
        LIB.patronus_batch_free(b)


def test_commit_on_a_non_client_thread_keeps_the_batch(node):
    with node.get_wlease(0, 0, patronus.GlobalAddress(0, 20480), 0, 64, 0,
                         patronus.AcquireFlag.NO_GC) as lease:
        node.write(lease, b"committed-later!")
        node.write(lease, (7).to_bytes(8, "little"), 32)
        with node.batch() as b:
            b.prepare_read(lease, 16)
            b.prepare_faa(lease, 32, 1)
            seen = []

            def elsewhere():
                try:
                    b.commit()
                    seen.append("committed")
                except patronus.InvalidArgument as e:
                    seen.append(str(e))

            t = threading.Thread(target=elsewhere)
            t.start()
            t.join(timeout=30)
            assert seen == ["patronus_commit: this thread is not a client thread of node 0 "
                            "(call patronus_register_client_thread first)"]
            # Nothing was lost: the client thread commits both operations.
            assert b.commit() == [b"committed-later!", 7]


def test_close_releases_the_node_for_every_thread():
    # An earlier test's node may still be winding down (its threads exit and
    # its segments close after close() returns): start from a quiet process,
    # or the baseline counts that node and the release below looks like a leak.
    assert wait_until(lambda: count_threads(*NODE_THREADS) == 0 and count_segments() == 0,
                      timeout=30), (
        f"an earlier test left {count_threads(*NODE_THREADS)} node threads and "
        f"{count_segments()} segments")
    threads0, segs0 = 0, 0
    p = patronus.Patronus(cluster=cluster_name("free"))
    assert count_threads(*NODE_THREADS) > threads0
    assert count_segments() > segs0
    raw = p._node()
    registered, freed = threading.Barrier(3), threading.Event()
    after = []

    def worker():
        p.register_client_thread()
        registered.wait(timeout=30)
        assert freed.wait(timeout=30)
        # The raw handle is dead: calls on this thread fail cleanly.
        got = [LIB.patronus_get_node_id(raw), err(),
               LIB.patronus_register_client_thread(raw), err()]
        LIB.patronus_free(raw)
        got.append(err())
        after.append(got)

    ws = [threading.Thread(target=worker) for _ in range(2)]
    for w in ws:
        w.start()
    registered.wait(timeout=30)
    p.close()  # on this thread, while both workers still live
    assert err() is None
    assert wait_until(lambda: count_threads(*NODE_THREADS) == threads0
                      and count_segments() == segs0), (
        f"{count_threads(*NODE_THREADS)} node threads and {count_segments()} segments "
        f"left (baseline {threads0}, {segs0})")
    freed.set()
    for w in ws:
        w.join(timeout=30)
    want = [0, "patronus_get_node_id: p was freed by patronus_free",
            patronus.RC.INVALID, "patronus_register_client_thread: p was freed by patronus_free",
            "patronus_free: p was already freed"]
    assert after == [want, want]


def _universal_read(byte):
    """A one-node cluster with ``allow_universal_rkey`` set as a raw byte:
    reads 16 bytes through a 1-byte lease with the universal rkey (which
    only an opted-in memory node honours); returns the rc."""
    c = Config()
    LIB.patronus_config_init(ctypes.byref(c))
    name = cluster_name(f"bool-{byte}").encode()
    c.cluster = name
    ctypes.memset(ctypes.addressof(c) + Config.allow_universal_rkey.offset, byte, 1)
    h = LIB.patronus_new(ctypes.byref(c))
    assert h, err()
    assert LIB.patronus_register_client_thread(h) == patronus.RC.OK
    t = threading.Thread(target=LIB.patronus_server_serve, args=(h, 0), daemon=True)
    t.start()
    try:
        lease = None
        give_up = time.monotonic() + 10.0
        while time.monotonic() < give_up:
            lease = LIB.patronus_get_wlease(h, 0, 0, GAddr(4096), 0, 1, 0,
                                            patronus.AcquireFlag.NO_GC)
            if lease and LIB.patronus_lease_success(lease):
                break
            LIB.patronus_lease_free(lease)
            lease = None
            time.sleep(0.005)
        assert lease, err()
        buf = ctypes.create_string_buffer(16)
        rc = LIB.patronus_read(h, lease, buf, 16, 0, patronus.RWFlag.USE_UNIVERSAL_RKEY)
        assert LIB.patronus_relinquish(h, lease, 0, 0) == patronus.RC.OK
        LIB.patronus_lease_free(lease)
        return rc
    finally:
        LIB.patronus_finished(h, 0)
        t.join(timeout=30)
        assert not t.is_alive(), "server_serve did not return"
        LIB.patronus_free(h)


def test_a_c_bool_is_read_as_its_byte():
    # Control: off by default, the universal key opens nothing...
    assert _universal_read(0) == patronus.RC.RDMA_PROTECTION_ERR
    # ...and 0xFF is true: the opted-in node honours it.
    assert _universal_read(0xFF) == patronus.RC.OK
