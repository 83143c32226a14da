#!/usr/bin/env bash
# CPython's own concurrent.futures tests (executor, wait, as_completed,
# initializer, process pool) with penny.Executor in place of
# ProcessPoolExecutor; see scripts/cpython_futures_tests.py for the exclusion
# list and its reasons.  Exits non-zero on any failure.
#   bash scripts/cpython-futures-tests.sh [-v] [--methods forkserver] [-k REGEX]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CACHE=${PENNY_CPYTHON_TESTS_CACHE:-$HOME/.cache/penny/cpython-tests}
VER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
export PENNY_CPYTHON_TESTS_CACHE=$CACHE
# Workers (spawn, forkserver) import the suites' task functions by name.
export PYTHONPATH="$CACHE/$VER:$PWD:$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" scripts/cpython_futures_tests.py "$@"
