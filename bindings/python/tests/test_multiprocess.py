"""A multi-process cluster through a real memcached that the test starts on
a free loopback port: one memory-node process and two client processes."""

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import PKG_PARENT

MEMCACHED = shutil.which("memcached") or "/usr/bin/memcached"

NODE = r"""
import sys, threading
sys.path.insert(0, {pkg!r})
import patronus
role, keeper, cluster = sys.argv[1], sys.argv[2], sys.argv[3]
p = patronus.Patronus(machine_nr=3, keeper=keeper, cluster=cluster)
if role == "server":
    p.put("server", str(p.get_node_id()).encode())
    p.server_serve(0)
    print("served", flush=True)
else:
    srv = int(p.get("server"))
    p.register_client_thread()
    l = p.get_wlease(srv, 0, patronus.GlobalAddress(srv, 0), 0, 8, 50_000_000)
    for _ in range(2000):
        p.faa(l, 0, 1, patronus.RWFlag.WITH_AUTO_EXTEND)
    p.relinquish(l)
    # Clients meet: a counter word at offset 8 counts finished clients.
    c = p.get_wlease(srv, 0, 8, 0, 8, 0, patronus.AcquireFlag.NO_GC)
    p.faa(c, 0, 1)
    import time
    t0 = time.time()
    while int.from_bytes(p.read(c, 8), "little") < 2:
        assert time.time() - t0 < 30, "the other client never finished"
        time.sleep(0.001)
    r = p.get_rlease(srv, 0, 0, 0, 8, 0, patronus.AcquireFlag.NO_GC)
    print("total", int.from_bytes(p.read(r, 8), "little"), flush=True)
    p.finished(0)
p.close()
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def memcached():
    """A memcached on a free loopback port, accepting connections. CI
    installs memcached: its absence is a failure, not a skip."""
    assert os.path.exists(MEMCACHED), (
        f"memcached is not installed at {MEMCACHED} (apt-get install memcached; "
        ".ci/run installs it)")
    port = free_port()
    args = [MEMCACHED, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-t", "2"]
    if os.geteuid() == 0:
        args += ["-u", "root"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        give_up = time.monotonic() + 5
        while True:
            assert proc.poll() is None, f"memcached exited ({proc.returncode}) on port {port}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                assert time.monotonic() < give_up, f"memcached not accepting on port {port} within 5 s"
                time.sleep(0.02)
        yield f"memcached://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def test_three_processes_through_memcached(memcached, tmp_path):
    script = tmp_path / "node.py"
    script.write_text(NODE.format(pkg=str(PKG_PARENT)))
    cluster = f"py-mp-{os.getpid()}"
    procs = [
        subprocess.Popen([sys.executable, str(script), role, memcached, cluster],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for role in ("server", "client", "client")
    ]
    try:
        outs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, f"{out}\n{err}"
    assert outs[0][0].split() == ["served"], outs
    assert outs[1][0].split() == ["total", "4000"], outs
    assert outs[2][0].split() == ["total", "4000"], outs
