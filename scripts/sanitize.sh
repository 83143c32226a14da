#!/usr/bin/env bash
# Build the C core (src/penny/native/) with AddressSanitizer +
# UndefinedBehaviorSanitizer into a scratch copy of the tree and run the
# tests of the concurrent structures (atomics, Chase-Lev deque, MPMC ring,
# Treiber stack and arena, parking) against it, multi-process stress tests
# included.  Any sanitizer report fails the run (halt_on_error).
#
# Not covered: the fork-join tests, whose greenlet stack switching ASan
# cannot follow without fiber annotations (it reports false errors).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
asan=$(gcc -print-file-name=libasan.so)
ubsan=$(gcc -print-file-name=libubsan.so)
if [ ! -e "$asan" ] || [ ! -e "$ubsan" ]; then
    echo "sanitize: libasan/libubsan not found next to gcc; install them (Debian: libgcc-12-dev)" >&2
    exit 1
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp -r src tests setup.py pyproject.toml README.md "$scratch"/
cd "$scratch"
rm -f src/penny/*.so
PENNY_SANITIZE=address,undefined "$PY" setup.py build_ext --inplace -q 2>&1 | grep -v -i "warn" || true
export LD_PRELOAD="$asan:$ubsan" ASAN_OPTIONS=detect_leaks=0:halt_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 PYTHONPATH="$scratch/src:$scratch"
core=$("$PY" -c "import penny._core as c; print(c.__file__)")
case "$core" in
    "$scratch"/*) echo "sanitize: testing the sanitizer build $core" ;;
    *) echo "sanitize: imported $core, not the sanitizer build" >&2; exit 1 ;;
esac
"$PY" -m pytest -q -p no:cacheprovider tests/test_core_atomics.py tests/test_deque.py \
    tests/test_injector.py tests/test_stack_arena.py tests/test_parking.py \
    tests/test_untrusted_region.py tests/test_fuzz_core.py tests/test_core_layout.py \
    -k "not collect_error and not broken_collector"
