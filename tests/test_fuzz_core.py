"""Fuzz every `_core` entry point over randomised region bytes (issue 12).

Each entry point runs in its own subprocess (tests/fuzz_core_driver.py), so
a segfault or a hang fails this test instead of killing pytest.  "No crash"
means: every call ends in a value or a Python exception, never a signal,
never a hang, never SystemError.

CI size: PENNY_FUZZ_SECONDS in total (default 60), shared by the entry
points, with a fixed seed per entry point so a failure reproduces.  Longer
by hand, e.g.  PENNY_FUZZ_SECONDS=1800 python -m pytest tests/test_fuzz_core.py
(or one entry point: python -m tests.fuzz_core_driver deque_push 300 1).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

import pytest

from tests.conftest import ROOT
from tests.fuzz_core_driver import CALLS

TOTAL = float(os.environ.get("PENNY_FUZZ_SECONDS", "60"))
PER_ENTRY = max(0.5, TOTAL / len(CALLS))

# Entry points known to crash on a scribbled region (strict xfails: a fix
# makes them XPASS and fail until the marker goes).  None now: collect
# bound-checks its refs and the inline count (tasks.c).
PENDING: dict = {}


def _params():
    return [pytest.param(name, marks=[pytest.mark.xfail(strict=True, reason=PENDING[name])] if name in PENDING else [],
                         id=name) for name in sorted(CALLS)]


def test_every_entry_point_of_the_core_is_fuzzed():
    from penny import _core

    shared = {n for n in dir(_core.Shared) if not n.startswith("_")} - {"nbytes", "address", "leases"}
    # arm_kill_point reads no region: it arms a test build's SIGKILL (kill points).
    module = {n for n in dir(_core) if callable(getattr(_core, n)) and not n.startswith("_")
              and n not in ("Shared", "CorruptRegionError", "arm_kill_point")}
    missing = (shared | module) - set(CALLS)
    assert not missing, f"entry points the fuzz driver does not call: {sorted(missing)}"


@pytest.mark.parametrize("entry", _params())
def test_fuzz_entry_point_never_crashes(entry):
    seed = zlib.crc32(entry.encode())
    cmd = [sys.executable, "-m", "tests.fuzz_core_driver", entry, str(PER_ENTRY), str(seed)]
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=PER_ENTRY + 120)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"fuzz {entry} (seed {seed}) hung: {(e.stderr or '')[-2000:]}")
    assert p.returncode == 0, (
        f"fuzz {entry} (seed {seed}) died with status {p.returncode} (negative: signal {-p.returncode})\n"
        f"{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    )
    assert "no crash" in p.stdout
