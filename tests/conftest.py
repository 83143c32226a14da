"""Shared fixtures for the scheduler tests.

Task functions live in tests/helpers.py and are imported as
``tests.helpers``: `tests` is a package and the repository root is put on
sys.path here, so ``spawn`` and ``forkserver`` workers (which inherit the
parent's sys.path) import them by the same name as the test process.
"""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import penny
from tests import helpers

START_METHODS = ("fork", "forkserver", "spawn")

_open_gates: list = []


class Gate:
    """Holds tasks (helpers.block) in their worker until released.

    ``gate.args(i)`` are the arguments of a blocking task number `i`;
    ``gate.wait_started(i)`` waits until that task runs and returns its
    worker's pid; ``gate.release()`` lets every blocked task return.
    """

    def __init__(self, directory):
        self.dir = str(directory)
        self.release_path = os.path.join(self.dir, "release")

    def started_path(self, i):
        return os.path.join(self.dir, f"started-{i}")

    def args(self, i, value=None, timeout=60.0):
        return (self.started_path(i), self.release_path, timeout, value)

    def wait_started(self, i, timeout=30.0) -> int:
        return int(helpers.wait_for_file(self.started_path(i), timeout))

    def is_started(self, i) -> bool:
        return os.path.exists(self.started_path(i))

    def release(self):
        if not os.path.exists(self.release_path):
            with open(self.release_path, "w"):
                pass


def release_all_gates():
    for g in _open_gates:
        g.release()


@pytest.fixture
def gate(tmp_path):
    g = Gate(tmp_path)
    _open_gates.append(g)
    try:
        yield g
    finally:
        g.release()
        _open_gates.remove(g)


@pytest.fixture(params=START_METHODS)
def start_method(request):
    return request.param


def _close(s):
    release_all_gates()
    pids = helpers.worker_pids(s) if s._supervisor.procs else []
    s.shutdown(wait=True)
    left = helpers.wait_gone(pids, timeout=10)
    helpers.kill_all(left)
    assert not left, f"worker processes {left} still alive after shutdown"


@pytest.fixture
def sched():
    """Two workers, default start method (forkserver on Linux)."""
    s = penny.Scheduler(2)
    try:
        yield s
    finally:
        _close(s)


@pytest.fixture
def sched_any(start_method):
    """Two workers, for each start method."""
    s = penny.Scheduler(2, start_method=start_method)
    try:
        yield s
    finally:
        _close(s)


@pytest.fixture
def make_sched():
    """A factory of schedulers that are all shut down (and checked) afterwards."""
    made = []

    def make(*args, **kwargs):
        s = penny.Scheduler(*args, **kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        _close(s)


def _helper_process(pid) -> bool:
    """Penny's worker launcher, multiprocessing's forkserver and resource
    tracker (long-lived, shared by the process's schedulers)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return (b"penny.runtime.launcher" in cmd or b"multiprocessing.forkserver" in cmd
            or b"multiprocessing.resource_tracker" in cmd)


@pytest.fixture
def no_leaked_processes():
    """After the test: no new process under this one except multiprocessing's
    shared helpers and the workers of schedulers opened before the test
    (wider-scoped fixtures); a scheduler the test left open counts as a leak."""
    from penny import _context

    me = os.getpid()
    before = helpers.descendants(me)
    older = list(_context.live)
    yield

    def leaked():
        live_workers = set()
        for s in older:
            sup = getattr(s, "_supervisor", None)
            if sup is not None:
                live_workers.update(p.pid for p in sup.procs if p is not None)
        out = set()
        for pid in helpers.descendants(me) - before - live_workers:
            if helpers.ppid_of(pid) == me and _helper_process(pid):
                continue
            out.add(pid)
        return out

    left = leaked()
    if left:
        left = set(helpers.wait_gone(left, timeout=10))
        left &= leaked()
    helpers.kill_all(left)
    assert not left, f"processes left behind: {sorted(left)}"
