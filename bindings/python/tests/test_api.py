"""The Python API against the real libpatronus.so: a memory node served by
a Python thread and client threads in the same process."""

import itertools
import os
import threading
import time

import pytest

import patronus
from patronus import (AcquireError, AcquireFlag, AcquireStatus, GlobalAddress, InvalidArgument,
                      LeaseExpiredError, ModifyFlag, PatronusError, ProtectionError, RC, RWFlag)

MS = 1_000_000
_seq = itertools.count()

# How long a condition may take on a loaded 2-core machine before the test
# fails (only a failing test waits this long).
PATIENCE = 10.0


def wait_until(what, cond):
    """Polls `cond` (every 100 us) until it is true; fails naming `what`
    after PATIENCE seconds."""
    give_up = time.monotonic() + PATIENCE
    while not cond():
        assert time.monotonic() < give_up, f"{what}: not within {PATIENCE} s"
        time.sleep(0.0001)


def two_nodes(**kw):
    """Node 0 (memory node) and node 1 (client) of one in-process cluster;
    construction blocks until both joined, so they start on two threads."""
    name = f"py-{os.getpid()}-{next(_seq)}"
    out = {}

    def make(i):
        out[i] = patronus.Patronus(machine_nr=2, cluster=name, client_threads=8, **kw)

    ts = [threading.Thread(target=make, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=60)
    nodes = sorted(out.values(), key=lambda n: n.get_node_id())
    assert [n.get_node_id() for n in nodes] == [0, 1]
    return nodes


class Client:
    """The client node, plus the memory node's buffers for checks."""

    def __init__(self, server, client):
        self.server, self.client = server, client

    def __getattr__(self, name):
        if name in ("lease_buffer", "alloc_buffer", "user_reserved_buffer"):
            return getattr(self.server, name)
        return getattr(self.client, name)


@pytest.fixture
def node():
    """A client node whose memory node (node 0) is served by a thread."""
    server, client = two_nodes()
    t = threading.Thread(target=server.server_serve, args=(0,), daemon=True)
    t.start()
    client.register_client_thread()
    yield Client(server, client)
    client.finished(0)
    t.join(timeout=30)
    assert not t.is_alive(), "server_serve did not return"
    client.close()
    server.close()


def test_lease_read_write_byte_exact(node):
    with node.get_wlease(0, 0, GlobalAddress(0, 4096), 0, 256, 100 * MS) as l:
        assert l.success and l.readable and l.writable
        assert l.buffer_size == 256 and l.dir_id == 0
        assert l.gaddr == GlobalAddress(0, 4096)
        assert l.ddl_term > node.now()
        data = bytes(range(256))
        node.write(l, data[:200], 17)
        assert node.read(l, 200, 17) == data[:200]
        # The memory node sees the same bytes in its own buffer.
        assert bytes(node.lease_buffer()[4096 + 17:4096 + 217]) == data[:200]


def test_out_of_lease_access_is_refused_and_the_lease_recovers(node):
    with node.get_wlease(0, 0, 8192, 0, 64, 100 * MS) as l:
        with pytest.raises(ProtectionError) as e:
            node.read(l, 8, 64)
        assert e.value.rc == RC.RDMA_PROTECTION_ERR
        assert node.read(l, 8, 0) == bytes(8)


def test_read_lease_refuses_writes_and_atomics_then_upgrade(node):
    r = node.get_rlease(0, 0, 8192, 0, 64, 100 * MS)
    assert not r.writable
    with pytest.raises(ProtectionError):
        node.write(r, b"nope")
    with pytest.raises(ProtectionError):
        node.faa(r, 0, 1)
    with node.upgrade(r) as w:
        assert w.writable
        node.write(w, b"yes")
    r.close()


def test_expiry_local_then_revoked(node):
    # Tens of ms: a loaded 2-core machine can pause this thread for ms.
    l = node.get_wlease(0, 0, 12288, 0, 64, 50 * MS)
    node.read(l, 8)
    # Past the deadline on every clock: the local check refuses.
    wait_until("the deadline passing", lambda: node.now() > l.ddl_term + node.epsilon())
    with pytest.raises(LeaseExpiredError) as e:
        node.read(l, 8)
    assert e.value.rc == RC.LEASE_LOCAL_EXPIRED_ERR

    # The memory node's GC revokes the window: reads without the local
    # check work until then, and are refused by the NIC after.
    def revoked():
        try:
            node.read(l, 8, flag=RWFlag.NO_LOCAL_EXPIRE_CHECK)
            return False
        except ProtectionError as e:
            assert e.rc == RC.RDMA_PROTECTION_ERR
            return True

    wait_until("the memory node revoking the lease", revoked)
    l.close()


def test_extend_and_rpc_extend_move_the_deadline(node):
    with node.get_wlease(0, 0, 0, 0, 64, 200 * MS) as l:
        d = l.ddl_term
        node.extend(l, 200 * MS)
        assert l.ddl_term > d
        d = l.ddl_term
        node.rpc_extend(l, 200 * MS)
        assert l.ddl_term > d
    with node.get_wlease(0, 0, 0, 0, 64, 50 * MS, AcquireFlag.NO_BIND_PR) as l:
        with pytest.raises(InvalidArgument):
            node.extend(l, 50 * MS)


def test_cas_faa_and_two_sided(node):
    with node.get_wlease(0, 0, 16384, 0, 64, 0, AcquireFlag.NO_GC) as l:
        node.write(l, bytes(8))
        assert node.faa(l, 0, 5) == 0
        assert node.cas(l, 0, 5, 42) == 5
        assert node.cas(l, 0, 5, 43) == 42  # no swap
        assert node.rpc_faa(l, 0, 1) == 42
        assert node.rpc_cas(l, 0, 43, 7) == 43
        assert node.rpc_read(l, 8) == (7).to_bytes(8, "little")
        node.rpc_write(l, b"abc", 8)
        assert node.read(l, 3, 8) == b"abc"
        with pytest.raises(ProtectionError):
            node.rpc_write(l, b"x", 64)
        with pytest.raises(InvalidArgument):
            node.faa(l, 3, 1)  # unaligned


def test_four_threads_faa_sum_exactly(node):
    errors = []

    def work():
        try:
            node.register_client_thread()
            with node.get_wlease(0, 0, 20480, 0, 8, 0, AcquireFlag.NO_GC) as l:
                for _ in range(2000):
                    node.faa(l, 0, 1)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=60)
        assert not t.is_alive(), "a FAA thread hung"
    assert not errors, errors
    with node.get_rlease(0, 0, 20480, 0, 8, 0, AcquireFlag.NO_GC) as l:
        assert int.from_bytes(node.read(l, 8), "little") == 8000


def test_batches(node):
    with node.get_wlease(0, 0, 24576, 0, 256, 0, AcquireFlag.NO_GC) as l, node.batch() as b:
        assert b.commit() == []
        b.prepare_write(l, b"batched!", 0)
        b.prepare_read(l, 8, 0)
        b.prepare_faa(l, 64, 3)
        assert b.commit() == [None, b"batched!", 0]
        b.prepare_read(l, 8, 0)
        b.prepare_read(l, 8, 1000)
        with pytest.raises(ProtectionError):
            b.commit()
        b.prepare_cas(l, 64, 3, 4)
        assert b.commit() == [3]


def test_allocation(node):
    g = node.alloc(0, 0, 100)
    g2 = node.alloc(0, 0, 100)
    assert g != g2 and not g.is_null()
    with pytest.raises(PatronusError) as e:
        node.alloc(0, 0, 100, hint=999)
    assert e.value.rc == RC.NO_MEM
    node.dealloc(g, 0, 100)
    with pytest.raises(InvalidArgument):
        node.dealloc(g, 0, 100)  # double free is refused
    with node.get_wlease(0, 0, None, 0, 64, 50 * MS, AcquireFlag.WITH_ALLOCATION) as l:
        node.write(l, b"allocated")
        assert l.gaddr.offset >= len(node.lease_buffer())
    with pytest.raises(AcquireError) as e:
        node.get_wlease(0, 0, None, 0, 64, 50 * MS,
                        AcquireFlag.WITH_ALLOCATION | AcquireFlag.WITH_CONFLICT_DETECT)


def test_conflict_detection(node):
    a = node.get_wlease(0, 0, 28672, 0, 8, 100 * MS, AcquireFlag.WITH_CONFLICT_DETECT)
    with pytest.raises(AcquireError) as e:
        node.get_wlease(0, 0, 28672, 0, 8, 100 * MS, AcquireFlag.WITH_CONFLICT_DETECT)
    assert e.value.status == AcquireStatus.LOCKED_ERR
    node.relinquish(a)
    node.relinquish(a)  # twice is fine
    a.close()


def test_keeper(node):
    node.put("answer", b"42")
    assert node.get("answer") == b"42"
    assert node.try_get("never-put") is None
    big = os.urandom(5000)
    node.put("big", big)
    assert node.get("big") == big
    assert node.try_get("big") == big
    # A barrier of every node of the cluster: both must arrive.
    t = threading.Thread(target=node.server.keeper_barrier, args=("both",))
    t.start()
    node.keeper_barrier("both")
    t.join(timeout=30)
    assert not t.is_alive(), "the memory node never left the barrier"
    assert node.server.get("answer") == b"42"


def test_invalid_arguments_name_the_problem(node):
    with pytest.raises(InvalidArgument, match="flag"):
        node.get_wlease(0, 0, 0, 0, 64, MS, 1 << 40)
    with pytest.raises(InvalidArgument, match="size"):
        node.get_wlease(0, 0, 0, 0, 0, MS)
    with pytest.raises(InvalidArgument):
        node.get_wlease(9, 0, 0, 0, 64, MS)
    with pytest.raises(InvalidArgument):
        node.read(None, 8)
    with pytest.raises(AcquireError) as e:
        node.get_wlease(0, 0, GlobalAddress(0, 1 << 40), 0, 64, MS)
    assert e.value.status == AcquireStatus.ADDRESS_OUT_OF_RANGE_ERR
    with pytest.raises(TypeError):
        patronus.Patronus(no_such_field=1)
    with pytest.raises(PatronusError):
        patronus.Patronus(machine_nr=0)
    # Values ctypes would wrap or coerce are refused before the library sees them.
    for kw, words in [({"lease_buffer_size": -5}, "lease_buffer_size=-5 is outside"),
                      ({"machine_nr": 1 << 16}, "machine_nr=65536 is outside 0..65535"),
                      ({"fabric": b"shm"}, "fabric must be a str"),
                      ({"simplify": 1}, "simplify must be a bool"),
                      ({"dir_nr": 1.5}, "dir_nr must be an int")]:
        with pytest.raises(InvalidArgument) as e:
            patronus.Patronus(**kw)
        assert words in str(e.value), (kw, str(e.value))
    with pytest.raises(InvalidArgument):
        GlobalAddress(0, 1 << 48)


def test_a_refused_lease_says_why():
    # No thread serves directory 0: the acquisition times out, and the error
    # names the timeout, not only the RESERVED status.
    with patronus.Patronus(cluster=f"py-api-why-{os.getpid()}", rpc_timeout_ms=300) as p:
        p.register_client_thread()
        with pytest.raises(AcquireError) as e:
            p.get_wlease(0, 0, GlobalAddress(0, 64), 0, 8, 100 * MS)
        assert e.value.status == AcquireStatus.RESERVED
        assert "no reply from node 0 dir 0 within 300ms" in str(e.value), str(e.value)


def test_a_lone_node_of_two_names_the_keeper_it_needs():
    # Two nodes on the in-process keeper but only one created: the join times
    # out (after 10 s) with the way out in the message.
    t0 = time.monotonic()
    with pytest.raises(PatronusError) as e:
        patronus.Patronus(machine_nr=2, cluster=f"py-api-lone-{os.getpid()}")
    msg = str(e.value)
    assert "in-process keeper" in msg and "memcached://" in msg, msg
    assert time.monotonic() - t0 < 30


def test_closed_objects_are_refused_not_crashes(node):
    l = node.get_wlease(0, 0, 0, 0, 64, MS)
    l.close()
    l.close()
    with pytest.raises(InvalidArgument):
        node.read(l, 8)
    repr(l)
