#!/usr/bin/env bash
# Interleaved A/B of posted READs at 32 in flight: alternates the given
# `patronus` binaries ROUNDS times on `bench inflight --depth 32 --only read
# --only floor-chain` and prints, per binary, the best and median READ rate
# and its ratio to the floor-chain of the same run, over the rounds that ran
# in the host's fast mode (floor-chain above FAST M/s, default 9). This host
# flips between a slow and a fast mode within seconds: compare binaries only
# with rounds like these, never with runs minutes apart.
#
#   scripts/ab_inflight.sh 10 /tmp/patronus-before target/release/patronus
set -euo pipefail
rounds=${1:?usage: ab_inflight.sh ROUNDS BIN...}
shift
[ $# -ge 1 ] || { echo "usage: ab_inflight.sh ROUNDS BIN..." >&2; exit 2; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for _ in $(seq "$rounds"); do
    for b in "$@"; do
        r=$(timeout 60 "$b" bench inflight --fabric shm --seconds "${SECONDS_PER_RUN:-0.5}" \
            --depth 32 --only read --only floor-chain 2>&1 |
            awk '$1 == "read" || $1 == "floor-chain" { printf "%s ", $5 }')
        echo "$b $r" >>"$out"
    done
done
FAST=${FAST:-9} python3 - "$out" <<'PY'
import collections, os, statistics, sys
fast = float(os.environ["FAST"])
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) == 3:
        runs[f[0]].append((float(f[1]), float(f[2])))
for b, v in runs.items():
    fv = [x for x in v if x[1] > fast]
    if not fv:
        print(f"{b}: {len(v)} rounds, none in fast mode")
        continue
    reads = sorted(x[0] for x in fv)
    ratios = sorted(x[0] / x[1] for x in fv)
    print(f"{b}: {len(fv)} of {len(v)} rounds in fast mode: READ@32 {reads[0]:.2f}-{reads[-1]:.2f} M/s "
          f"(median {statistics.median(reads):.2f}), vs floor-chain {ratios[0]:.2f}-{ratios[-1]:.2f}x")
PY
