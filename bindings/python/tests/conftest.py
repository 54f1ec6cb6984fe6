import os
import sys
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[3]

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
