#!/usr/bin/env bash
# Proof that the -O2 stress harness has teeth (issue 12, 16): in a scratch
# copy of the harness and the native headers, replace the SeqCst fence of
# cl_pop (chase_lev.h, between the owner's store of bottom and its load of
# top) with atomic_signal_fence, which only stops the compiler: the CPU may
# then satisfy the load of top before the store of bottom is visible to
# thieves (store buffering, real on x86), and the owner and a thief both
# take the last item.  This script
#   1. runs scripts/stress.sh on the unmutated tree: it must PASS;
#   2. applies the mutation to the copy (and checks it applied: exactly one
#      fence replaced, inside cl_pop);
#   3. runs scripts/stress.sh on the copy: it must FAIL (a lost or
#      duplicated item), within SECONDS.
# Exit status 0 means: the harness passes the real code and catches the
# mutant.
#
#   bash scripts/mutation.sh [SECONDS]   # time allowed for each run, default 30
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

echo "mutation: 1. the unmutated harness must pass ($seconds s)"
if ! bash scripts/stress.sh "$seconds"; then
    echo "mutation: FAILED: the unmutated code fails the stress run" >&2
    exit 1
fi

mkdir -p "$scratch/tests/c" "$scratch/src/penny/native" "$scratch/scripts"
cp tests/c/deque_tsan.c "$scratch/tests/c/"
cp src/penny/native/*.h "$scratch/src/penny/native/"
python3 - "$scratch/src/penny/native/chase_lev.h" <<'PY'
import sys
path = sys.argv[1]
src = open(path).read()
fence, weak = "atomic_thread_fence(memory_order_seq_cst);", "atomic_signal_fence(memory_order_seq_cst);"
start = src.index("cl_pop(char *b, uint64_t mask)")
end = src.index("\n}\n", start)
body = src[start:end]
if body.count(fence) != 1:
    sys.exit(f"mutation: expected exactly one SeqCst fence in cl_pop, found {body.count(fence)}")
src = src[:start] + body.replace(fence, weak) + src[end:]
open(path, "w").write(src)
print("mutation: 2. cl_pop's atomic_thread_fence(seq_cst) -> atomic_signal_fence(seq_cst)")
PY
if diff -q src/penny/native/chase_lev.h "$scratch/src/penny/native/chase_lev.h" >/dev/null; then
    echo "mutation: FAILED: the mutation did not change chase_lev.h" >&2
    exit 1
fi

echo "mutation: 3. the mutant must fail ($seconds s at most)"
set +e
SRC="$scratch" bash scripts/stress.sh "$seconds"
rc=$?
set -e
if [ "$rc" -eq 1 ]; then
    echo "mutation: the stress harness caught the missing fence (lost/duplicated items): it has teeth"
    exit 0
fi
if [ "$rc" -eq 0 ]; then
    echo "mutation: FAILED: the mutant passed $seconds s of stress; the harness cannot see the missing fence" >&2
else
    echo "mutation: FAILED: the mutant run ended with status $rc, not a lost/duplicated item" >&2
fi
exit 1
