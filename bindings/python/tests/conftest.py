import os
import sys
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[3]

# PATRONUS_TEST_INSTALLED=1: test the package as installed (pip install
# ./bindings/python bundles the library), with no PATRONUS_LIB: nothing from
# this tree is put on the path, and the library must be the bundled one.
INSTALLED = os.environ.get("PATRONUS_TEST_INSTALLED") == "1"

if INSTALLED:
    assert "PATRONUS_LIB" not in os.environ, "PATRONUS_TEST_INSTALLED runs without PATRONUS_LIB"
    import patronus._lib  # noqa: E402

    _pkg = pathlib.Path(patronus._lib.__file__).resolve().parent
    assert _pkg != (ROOT / "bindings" / "python" / "patronus").resolve(), (
        f"imported the tree's package {_pkg}, not the installed one")
    assert pathlib.Path(patronus._lib.LIB_PATH).resolve() == _pkg / "libpatronus.so", (
        f"the installed package loaded {patronus._lib.LIB_PATH}, not its bundled library")
else:
    # Test the package in this tree (pip-installed copies are tested separately).
    sys.path.insert(0, str(ROOT / "bindings" / "python"))

    # Use the freshly built library unless the caller chose one; a relative
    # path is made absolute so subprocesses started elsewhere find it too.
    if "PATRONUS_LIB" in os.environ:
        os.environ["PATRONUS_LIB"] = os.path.abspath(os.environ["PATRONUS_LIB"])
    else:
        for prof in ("debug", "release"):
            cand = ROOT / "target" / prof / "libpatronus.so"
            if cand.exists():
                os.environ["PATRONUS_LIB"] = str(cand)
                break

    # The tests must run against that library, not against whatever else the
    # loader would find: a missing build is a failure, not a silent fallback.
    _want = os.environ.get("PATRONUS_LIB")
    assert _want and os.path.exists(_want), (
        f"libpatronus.so is not built ({_want or 'no PATRONUS_LIB, nothing under target/'}): "
        "run `cargo build` (scripts/test.sh does) or set PATRONUS_LIB")

    import patronus._lib  # noqa: E402 - loads the library, after the path is set

    assert os.path.realpath(patronus._lib.LIB_PATH) == os.path.realpath(_want), (
        f"the package loaded {patronus._lib.LIB_PATH}, not the library under test {_want}")

# The directory holding the package under test, for child processes.
PKG_PARENT = pathlib.Path(patronus._lib.__file__).resolve().parent.parent
