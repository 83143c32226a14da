#!/usr/bin/env bash
# Plain -O2 multi-thread stress of the lock-free structures (issue 12, 16):
# builds tests/c/deque_tsan.c (the very headers of src/penny/native/, as the
# extension compiles them; without -fsanitize=thread the harness uses the
# headers' atomics untouched) with plain -O2 -pthread and runs
#   1. its stress mode: the Chase-Lev deque with capacity 2 and 3 thieves,
#      round after round of 20,000 items for SECONDS, failing on the first
#      round that loses or duplicates an item;
#   2. its normal mode once (deque, ring and stack rounds, every item
#      exactly once).
# TSan (scripts/tsan.sh) sees data races but not store-load reordering;
# this run does: on real hardware, a missing SeqCst fence in cl_pop lets the
# owner and a thief both take the last item (scripts/mutation.sh proves it).
#
#   bash scripts/stress.sh [SECONDS]     # default 20
#   SRC=/some/copy bash scripts/stress.sh   # build the copy's harness instead
set -euo pipefail
cd "$(dirname "$0")/.."
CC=${CC:-gcc}
seconds=${1:-20}
src=${SRC:-.}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$CC" -std=gnu11 -O2 -pthread -Wall -Wextra "$src/tests/c/deque_tsan.c" -o "$scratch/deque_stress"
set +e
"$scratch/deque_stress" stress "$seconds"
rc=$?
if [ "$rc" -eq 0 ]; then
    "$scratch/deque_stress" 1 >"$scratch/normal.txt" 2>&1
    rc=$?
    cat "$scratch/normal.txt"
fi
set -e
if [ "$rc" -ne 0 ]; then
    echo "stress: FAILED (exit status $rc; 1 = a lost or duplicated item, 3 = no progress)" >&2
    exit "$rc"
fi
echo "stress: every item taken exactly once"
