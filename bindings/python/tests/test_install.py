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
    # Without the library the import fails with the paths it tried.
    env.pop("PATRONUS_LIB", None)
    env["LD_LIBRARY_PATH"] = ""
    bad = subprocess.run([sys.executable, "-c", "import patronus"], capture_output=True,
                         text=True, env=env, cwd=str(tmp_path))
    assert bad.returncode != 0 and "tried" in bad.stderr
