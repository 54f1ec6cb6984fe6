"""`pip install ./bindings/python` builds libpatronus.so with cargo and
bundles it: in a fresh venv the package works with nothing else, and the
whole suite passes against it. Without the library (PATRONUS_NO_CARGO=1)
the import still works and the first call says what to do."""

import os
import subprocess
import sys

import pytest

from conftest import INSTALLED, ROOT

pytestmark = pytest.mark.skipif(INSTALLED, reason="this is the installed-package run itself")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "PATRONUS_LIB"}
    # Reuse the build the suite runs against (scripts/test.sh builds the dev
    # profile): the install then copies it instead of building again.
    env.setdefault("PATRONUS_CARGO_PROFILE", "dev")
    env.update(extra)
    return env


def test_pip_install_in_a_fresh_venv_bundles_the_library(tmp_path):
    venv = tmp_path / "venv"
    # System site packages only for pytest; the venv's own come first.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", str(ROOT / "bindings" / "python")],
                   check=True, env=_env(), cwd=str(tmp_path))
    env = _env(PATRONUS_TEST_INSTALLED="1", LD_LIBRARY_PATH="")
    out = subprocess.run(
        [py, "-c", "import patronus, patronus._lib as l; print(l.LIB_PATH, patronus.ABI_VERSION)"],
        check=True, capture_output=True, text=True, env=env, cwd=str(tmp_path))
    path, abi = out.stdout.split()
    assert path.startswith(str(venv)) and abi == "5", out.stdout
    # The suite against the installed package (conftest checks it is that one).
    suite = subprocess.run(
        [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "bindings" / "python" / "tests")],
        capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600)
    assert suite.returncode == 0, suite.stdout[-4000:] + suite.stderr[-2000:]
    assert " passed" in suite.stdout and "failed" not in suite.stdout, suite.stdout[-2000:]


def test_without_the_library_import_and_help_work_and_the_error_says_what_to_do(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(ROOT / "bindings" / "python")],
        check=True, env=_env(PATRONUS_NO_CARGO="1"), cwd=str(tmp_path))
    assert not (target / "patronus" / "libpatronus.so").exists()
    env = _env(PYTHONPATH=str(target), LD_LIBRARY_PATH="",
               PATRONUS_LIB=str(tmp_path / "nowhere" / "libpatronus.so"))
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
