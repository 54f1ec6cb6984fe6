import os
import sys
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[3]

# Test the package in this tree (pip-installed copies are tested separately).
sys.path.insert(0, str(ROOT / "bindings" / "python"))

# Use the freshly built library unless the caller chose one.
if "PATRONUS_LIB" not in os.environ:
    for prof in ("debug", "release"):
        cand = ROOT / "target" / prof / "libpatronus.so"
        if cand.exists():
            os.environ["PATRONUS_LIB"] = str(cand)
            break
