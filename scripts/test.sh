#!/usr/bin/env bash
# Runs every test of Patronus-rs: Rust unit and integration tests (soft fabric
# on shm and tcp, multi-process, hostile inputs), the verbs backend's
# device-free unit tests, formatting and lints.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings

echo "== cargo build (the cdylib the C tests link against)"
cargo build --all-targets

echo "== cargo test (default features)"
cargo test --all-targets -- --test-threads=2

echo "== Python bindings (pytest against the fresh libpatronus.so)"
PATRONUS_LIB="${CARGO_TARGET_DIR:-$PWD/target}/debug/libpatronus.so" python3 -m pytest -q bindings/python/tests

echo "== hostile-input tests under valgrind memcheck (no invalid reads or writes)"
if command -v valgrind >/dev/null; then
  bin=$(cargo test --test fabric_malformed --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import sys,json
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="fabric_malformed": print(m["executable"])' | tail -1)
  valgrind --error-exitcode=9 --quiet "$bin" --test-threads=1
else
  echo "valgrind missing: apt-get install valgrind" >&2
  exit 1
fi

if pkg-config --exists libibverbs 2>/dev/null || [ -f /usr/include/infiniband/verbs.h ]; then
  echo "== cargo test --features verbs (no RDMA device needed)"
  cargo clippy --all-targets --features verbs -- -D warnings
  cargo test --features verbs --lib -- fabric::verbs
  cargo test --features verbs --test fabric_conformance --test cli_bench -- --test-threads=2 verbs
else
  echo "libibverbs-dev missing: install it (apt-get install libibverbs-dev librdmacm-dev libclang-dev) to build the verbs backend" >&2
  exit 1
fi
