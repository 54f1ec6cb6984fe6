"""Build hook: ``pip install ./bindings/python`` builds libpatronus.so with
cargo and bundles it in the package, so ``import patronus`` needs nothing
else. The rest of the metadata is in pyproject.toml.

Environment:
- ``PATRONUS_CARGO_PROFILE``: the cargo profile (default ``release``; ``dev``
  reuses a debug build, as the test suite does).
- ``CARGO_TARGET_DIR``: where cargo builds (default the repository's target/).
- ``PATRONUS_NO_CARGO=1``: install the pure-Python package without building;
  the library is then found through ``PATRONUS_LIB`` or the system loader.
"""

import os
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
MANIFEST = os.path.join(REPO, "Cargo.toml")


def _bundling():
    return os.environ.get("PATRONUS_NO_CARGO") != "1"


class BuildWithCargo(build_py):
    """build_py that also builds the cdylib and copies it into the package."""

    def run(self):
        super().run()
        if not _bundling():
            return
        if not os.path.exists(MANIFEST):
            sys.exit(f"patronus-rs: no Cargo.toml at {MANIFEST}: build from the repository's "
                     "bindings/python, or set PATRONUS_NO_CARGO=1 and PATRONUS_LIB")
        cargo = shutil.which("cargo") or os.path.expanduser("~/.cargo/bin/cargo")
        if not os.path.exists(cargo):
            sys.exit("patronus-rs: cargo not found: install Rust (https://rustup.rs) to build "
                     "libpatronus.so, or set PATRONUS_NO_CARGO=1 and PATRONUS_LIB")
        profile = os.environ.get("PATRONUS_CARGO_PROFILE", "release")
        subprocess.run([cargo, "build", "--lib", "--profile", profile, "--manifest-path",
                        MANIFEST], check=True)
        target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
        sub = "debug" if profile == "dev" else profile
        lib = os.path.join(target, sub, "libpatronus.so")
        if not os.path.exists(lib):
            sys.exit(f"patronus-rs: cargo built no {lib}")
        dest = os.path.join(self.build_lib, "patronus")
        os.makedirs(dest, exist_ok=True)
        shutil.copyfile(lib, os.path.join(dest, "libpatronus.so"))


class BinaryDistribution(Distribution):
    """A wheel with a bundled native library is platform-specific."""

    def has_ext_modules(self):
        return _bundling()


cmdclass = {"build_py": BuildWithCargo}
try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70: the wheel package's command
    try:
        from wheel.bdist_wheel import bdist_wheel
    except ImportError:
        bdist_wheel = None

if bdist_wheel is not None:

    class PlatformWheel(bdist_wheel):
        """The bundled library is native but uses no Python C API: one wheel
        serves every Python 3 on the platform (py3-none-<platform>)."""

        def get_tag(self):
            python, abi, plat = super().get_tag()
            return ("py3", "none", plat) if _bundling() else (python, abi, plat)

    cmdclass["bdist_wheel"] = PlatformWheel

setup(cmdclass=cmdclass, distclass=BinaryDistribution)
