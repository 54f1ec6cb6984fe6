"""`pip install ./bindings/python` installs an importable package."""

import os
import subprocess
import sys

from conftest import ROOT


def test_pip_install_then_import(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(ROOT / "bindings" / "python")],
        check=True,
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run(
        [sys.executable, "-c", "import patronus, patronus._lib as l; print(l.LIB_PATH, patronus.ABI_VERSION)"],
        check=True, capture_output=True, text=True, env=env, cwd=str(tmp_path),
    )
    assert out.stdout.strip().endswith(" 3")
    # Without the library the import and help() work; the first call fails
    # with a LoadError naming the paths it tried and how to get the library.
    env["PATRONUS_LIB"] = str(tmp_path / "nowhere" / "libpatronus.so")
    env["LD_LIBRARY_PATH"] = ""
    probe = (
        "import io, contextlib, patronus\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    help(patronus.Patronus)\n"
        "assert 'get_wlease' in buf.getvalue()\n"
        "try:\n"
        "    patronus.Patronus()\n"
        "except patronus.LoadError as e:\n"
        "    print('LOADERROR', e)\n"
    )
    bad = subprocess.run([sys.executable, "-c", probe], capture_output=True,
                         text=True, env=env, cwd=str(tmp_path))
    assert bad.returncode == 0, bad.stderr
    assert "LOADERROR" in bad.stdout and "tried" in bad.stdout, bad.stdout
    assert "nowhere" in bad.stdout and "cargo build --release" in bad.stdout, bad.stdout
