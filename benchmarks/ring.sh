#!/usr/bin/env bash
# The MPMC ring's cost in C (benchmarks/ring.c), for the working tree's
# src/penny/native/mpmc_ring.h and, given a git revision, that revision's,
# alternately (ROUNDS times, default 3), so the two are measured side by side:
#
#   bash benchmarks/ring.sh [REV] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:-}
rounds=${2:-3}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
build() {  # build DIR: the headers in DIR
    gcc -O2 -std=gnu11 -pthread -I"$1" benchmarks/ring.c -o "$1/ring"
}
mkdir -p "$scratch/tree"
cp src/penny/native/{atomics,layout,mpmc_ring}.h "$scratch/tree/"
build "$scratch/tree"
if [ -n "$rev" ]; then
    mkdir -p "$scratch/rev"
    for h in atomics layout mpmc_ring; do
        git show "$rev:src/penny/native/$h.h" > "$scratch/rev/$h.h"
    done
    build "$scratch/rev"
fi
echo "ring.sh: $(date -u '+%F %T') UTC, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$rounds"); do
    echo "-- round $r: working tree"
    "$scratch/tree/ring"
    if [ -n "$rev" ]; then
        echo "-- round $r: $rev"
        "$scratch/rev/ring"
    fi
done
