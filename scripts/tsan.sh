#!/usr/bin/env bash
# ThreadSanitizer run of the lock-free structures of the C core: builds
# tests/c/deque_tsan.c (which #includes the pure C headers chase_lev.h,
# mpmc_ring.h and tagged_stack.h of src/penny/native/, so it tests the very
# code the extension is built from; no Python headers or library needed)
# with -fsanitize=thread into a scratch directory and runs it: a Chase-Lev
# deque with one owner and several thieves (spilling to a Vyukov ring), the
# Vyukov ring with several producers and consumers, and the tagged Treiber
# stack.  Every item must be taken exactly once, and any TSan report fails
# the run (exit status 66).
#
# TSan does not model store-load reordering: scripts/stress.sh runs the same
# harness built with plain -O2, and scripts/mutation.sh shows it catches a
# removed fence that this run does not.
#
#   bash scripts/tsan.sh [SCALE]      # SCALE multiplies the item counts (default 1)
set -euo pipefail
cd "$(dirname "$0")/.."
CC=${CC:-gcc}
scale=${1:-1}

if [ ! -e "$($CC -print-file-name=libtsan.so)" ]; then
    echo "tsan: libtsan not found next to $CC; install it (Debian: libgcc-12-dev)" >&2
    exit 1
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# -Wno-tsan: the harness handles atomic_thread_fence itself (see its header).
"$CC" -std=gnu11 -fsanitize=thread -O1 -g -fno-omit-frame-pointer -Wall -Wextra -Wno-tsan \
    tests/c/deque_tsan.c -o "$scratch/deque_tsan" -lpthread

export TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
run() { "$scratch/deque_tsan" "$scale"; }
set +e
out=$(run 2>&1)
rc=$?
# Kernels with high mmap randomisation break TSan's memory layout
# ("unexpected memory mapping"); run without ASLR there if setarch can.
if [ "$rc" -ne 0 ] && grep -q "unexpected memory mapping" <<<"$out" && command -v setarch >/dev/null; then
    echo "tsan: retrying without address-space randomisation" >&2
    out=$(setarch "$(uname -m)" -R "$scratch/deque_tsan" "$scale" 2>&1)
    rc=$?
fi
set -e
echo "$out"
if [ "$rc" -ne 0 ]; then
    echo "tsan: FAILED (exit status $rc; 66 = a ThreadSanitizer report, 1 = a lost or duplicated item, 3 = no progress)" >&2
    exit "$rc"
fi
echo "tsan: no data race reported, every item taken exactly once"
