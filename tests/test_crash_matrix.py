"""The crash matrix (after loky's): how a task can fail x when x start method.

    {segfault, os._exit(3), raised exception}
  x {while unpickling its arguments, while running, while pickling its result}
  x {fork, forkserver, spawn}
  x {retries=1 (the default), retries=0}

Expected, for a task submitted from the main process:

* a crash (segfault, os._exit) while unpickling the arguments or running:
  the task is started ``1 + retries`` times (each start crashes again), then
  its future raises `WorkerCrashedError` naming the signal (SIGSEGV) or the
  exit code, and how many times it was started;
* a crash while pickling the result: the task had returned and its arguments
  were released, so it is *not* retried (it has had its effects once):
  `WorkerCrashedError` at once, saying so ("after it had returned");
* an exception while running: the same exception type, message, and the
  worker's traceback as ``__cause__`` (`RemoteTraceback`);
* an exception while unpickling the arguments: the same exception type, with
  the worker's traceback showing it came from decoding the arguments;
* an exception while pickling the result: ``ResultPicklingError`` (a
  TypeError) naming the result's type and the original error.

After every case the scheduler still runs tasks, and its pool is whole again
(two live workers).  One scheduler serves every case of one (start method,
retries) pair; the cases run grouped by that pair, so only six schedulers
are started in all.

Every attempt is counted in a file (tests/crash_tasks.py, `note_run`), so
the number of starts is checked from the outside, not only from the message.

The last section covers a crash in a *child* task (penny.spawn) stolen by
another worker while its parent waits in `sync`.
"""

from __future__ import annotations

import collections
import os
import time

import pytest

import penny
from penny import WorkerCrashedError
from penny.errors import RemoteTraceback
from penny.wire.marshal import ArgumentUnpicklingError, ResultPicklingError
from tests import crash_tasks as ct
from tests import helpers as h

START_METHODS = ("fork", "forkserver", "spawn")
RETRIES = (1, 0)
TIMEOUT = 120  # seconds for any one future: generous, the machine is shared

CASES = [
    (method, retries, crash, phase)
    for method in START_METHODS
    for retries in RETRIES
    for crash in ct.CRASHES
    for phase in ct.PHASES
]

#: outcome of every case that ran, for the tally at the end: (method, retries, crash, phase) -> text
OUTCOMES: dict = {}


def _case_id(case):
    method, retries, crash, phase = case
    return f"{method}-retries{retries}-{crash}-{phase}"


# ---------------------------------------------------------------------------
# one scheduler per (start method, retries), reused by consecutive cases
# ---------------------------------------------------------------------------


class Pool:
    """Keeps one scheduler open at a time, keyed by (method, retries); a
    request for another key closes the current one (and checks that its
    workers are gone)."""

    def __init__(self):
        self.key = None
        self.sched = None
        self.all_pids: set[int] = set()

    def get(self, method, retries) -> penny.Scheduler:
        if self.key != (method, retries):
            self.close()
            self.sched = penny.Scheduler(2, start_method=method, retries=retries)
            self.key = (method, retries)
        self.all_pids.update(h.worker_pids(self.sched))
        return self.sched

    def close(self):
        s, self.sched, self.key = self.sched, None, None
        if s is None:
            return
        pids = h.worker_pids(s)
        self.all_pids.update(pids)
        s.shutdown(wait=True)
        left = h.wait_gone(pids, timeout=15)
        h.kill_all(left)
        assert not left, f"worker processes {left} still alive after shutdown"


@pytest.fixture(scope="module")
def pool():
    p = Pool()
    try:
        yield p
    finally:
        p.close()
        left = h.wait_gone(p.all_pids, timeout=15)
        h.kill_all(left)
        assert not left, f"worker processes {left} (some replaced after crashes) still alive"


def live_workers(s) -> list[int]:
    return [pid for pid in h.worker_pids(s) if h.pid_alive(pid)]


def wait_pool_whole(s, timeout=60.0) -> list[int]:
    """Wait until the supervisor has replaced every dead worker."""
    end = time.monotonic() + timeout
    while True:
        live = live_workers(s)
        if len(live) == s.workers or time.monotonic() > end:
            return live
        time.sleep(0.02)


def still_usable(s):
    assert s.submit(ct.add, 40, 2).result(TIMEOUT) == 42
    assert s.run(ct.ident, b"x" * 1000) == b"x" * 1000  # through the arena
    assert len(wait_pool_whole(s)) == s.workers, "the supervisor did not replace a dead worker"


def submit_case(s, crash, phase, counter):
    if phase == "unpickle":
        return s.submit(ct.takes_arg, ct.CrashOnLoad(crash, counter))
    if phase == "run":
        return s.submit(ct.crash_while_running, crash, counter)
    if phase == "pickle":
        return s.submit(ct.return_crash_on_dump, crash, counter)
    raise ValueError(phase)


# ---------------------------------------------------------------------------
# the matrix
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_crash_matrix(pool, tmp_path, case):
    method, retries, crash, phase = case
    s = pool.get(method, retries)
    assert len(wait_pool_whole(s)) == 2
    counter = str(tmp_path / "runs")
    crashes_before = s._supervisor.crashes

    fut = submit_case(s, crash, phase, counter)
    with pytest.raises(BaseException) as info:
        fut.result(TIMEOUT)
    err = info.value
    msg = str(err)
    starts = ct.runs(counter)

    if crash in ("segv", "exit"):
        assert type(err) is WorkerCrashedError, f"{type(err).__name__}: {msg}"
        assert msg.startswith("penny:")
        if crash == "segv":
            assert "SIGSEGV" in msg, msg
        else:
            assert f"exited with code {ct.EXIT_CODE}" in msg, msg
        assert f"retries={retries}" in msg, msg  # says which knob decides
        if phase == "pickle":
            # The task had returned: not run again (its effects happened once).
            expected = 1
            assert "after it had returned" in msg, msg
        else:
            expected = 1 + retries
        assert starts == expected, f"started {starts} times, expected {expected}: {msg}"
        assert f"started {expected} time" in msg, msg
        assert s._supervisor.crashes - crashes_before == expected
    else:  # a raised exception: never retried, no worker died
        assert starts == 1
        assert s._supervisor.crashes == crashes_before
        if phase == "pickle":
            assert isinstance(err, ResultPicklingError) and isinstance(err, TypeError)
            assert "CrashOnDump" in msg and "cannot be pickled" in msg, msg
            assert "CrashMatrixError" in msg and "while pickling the result" in msg, msg
            assert "return plain data" in msg  # what to do
        elif phase == "unpickle":
            assert isinstance(err, ArgumentUnpicklingError) and isinstance(err, TypeError)
            assert "arguments could not be unpickled in the worker" in msg, msg
            assert "CrashMatrixError: crash-matrix failure while unpickling the arguments" in msg, msg
            assert "decode_args" in str(err.__cause__)
        else:
            assert type(err) is ct.CrashMatrixError, f"{type(err).__name__}: {msg}"
            where = "while running" if phase == "run" else "while unpickling the arguments"
            assert msg == f"crash-matrix failure {where}"
            cause = err.__cause__
            assert isinstance(cause, RemoteTraceback)
            tb = str(cause)
            assert "Traceback (most recent call last)" in tb
            if phase == "run":
                assert "crash_while_running" in tb
            else:
                # The worker's traceback shows the failure was in decoding the arguments.
                assert "decode_args" in tb and "pickle.loads" in tb and "_crash_on_load" in tb, tb

    still_usable(s)
    OUTCOMES[case] = f"{type(err).__name__} after {starts} start(s)"


def test_unpickling_error_names_the_arguments(pool):
    """An argument that raises while the worker unpickles it (ValueError
    "refused"): the result side wraps its error (ResultPicklingError: "the
    task's return value ... cannot be pickled"); the argument side should say
    as much, e.g. "penny: the task's arguments could not be unpickled in the
    worker (ValueError: refused)"."""
    s = pool.get("forkserver", 1)
    fut = s.submit(ct.takes_arg, ct.RefuseOnLoad())
    with pytest.raises(Exception) as info:
        fut.result(TIMEOUT)
    still_usable(s)
    text = f"{type(info.value).__name__}: {info.value}".lower()
    assert "argument" in text and "unpickl" in text, text


# ---------------------------------------------------------------------------
# a crashing child task (penny.spawn) stolen by another worker
# ---------------------------------------------------------------------------


def _close_hard(s):
    """Shut down a scheduler that may hold a future that never resolves."""
    pids = h.worker_pids(s)
    s._abort()  # shutdown(wait=True) would wait for the stuck future forever
    left = h.wait_gone(pids, timeout=15)
    h.kill_all(left)
    assert not left


@pytest.mark.parametrize("retries", [0, 1])
@pytest.mark.parametrize("crash", ["exit", "raise"])
def test_crash_in_a_stolen_child(tmp_path, crash, retries):
    """A parent spawns a child, waits until another worker stole it, and
    syncs; the child crashes there.  The parent's sync must raise (and with
    it the parent's future): WorkerCrashedError for a crash, the child's
    exception for a raise.  Never a future that hangs."""
    s = penny.Scheduler(2, start_method="forkserver", retries=retries)
    try:
        counter = str(tmp_path / "runs")
        fut = s.submit(ct.spawn_stolen_crashing_child, crash, counter)
        try:
            fut.result(20)
        except WorkerCrashedError as e:
            assert crash == "exit", e
            # The child's own error names the exit code; when the retried child
            # ran on the parent's worker and killed it, the parent's error says
            # that it died while suspended in sync (the exit code is not carried
            # to the replacement worker that reports it: reported).
            msg = str(e)
            assert f"exited with code {ct.EXIT_CODE}" in msg or "suspended in sync" in msg, msg
        except ct.CrashMatrixError:
            assert crash == "raise"
        except TimeoutError:
            runs = ct.runs(counter)
            pytest.fail(
                f"the parent's future never resolved after its stolen child "
                f"{'exited' if crash == 'exit' else 'raised'} (child started {runs} time(s), "
                f"retries={retries})"
            )
        else:
            pytest.fail("the parent returned although its child crashed")
        still_usable(s)
    finally:
        _close_hard(s)


def test_dead_parent_survives_a_second_death_of_its_slot(tmp_path):
    """A parent runs (not in sync) while its published child runs on the other
    worker.  Kill the parent's worker, then kill its replacement (which never
    ran the parent) before the child ends.  The parent must fail once, naming
    the worker that ran it, and only after its child has finished."""
    import signal

    d = str(tmp_path)
    s = penny.Scheduler(2, start_method="forkserver")
    try:
        fut = s.submit(ct.parent_of_slow_child, d, 3.0, 6.0)
        ppid = int(h.wait_for_file(os.path.join(d, "parent")))
        cpid = int(h.wait_for_file(os.path.join(d, "child-start")))
        assert ppid != cpid, "the child was not stolen"
        slot = h.worker_pids(s).index(ppid)
        os.kill(ppid, signal.SIGKILL)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            p = s._supervisor.procs[slot]
            if p is not None and p.pid != ppid and h.pid_alive(p.pid):
                break
            time.sleep(0.01)
        time.sleep(0.3)
        replacement = s._supervisor.procs[slot].pid
        os.kill(replacement, signal.SIGKILL)  # the child is still sleeping
        with pytest.raises(WorkerCrashedError) as info:
            fut.result(TIMEOUT)
        child_done = os.path.exists(os.path.join(d, "child-end"))
        msg = str(info.value)
        assert child_done, f"the parent was completed while its child was still running: {msg}"
        assert f"pid {ppid}" in msg, f"the error should name the worker that ran the parent ({ppid}): {msg}"
        still_usable(s)
    finally:
        _close_hard(s)


# ---------------------------------------------------------------------------
# the tally
# ---------------------------------------------------------------------------


def test_zz_tally(capsys):
    """Print what every case of the matrix gave (run with -s to see it)."""
    if not OUTCOMES:
        pytest.skip("no crash-matrix case ran")
    per_method = collections.Counter(case[0] for case in OUTCOMES)
    lines = [f"crash matrix: {len(OUTCOMES)} of {len(CASES)} cases ran, all gave the intended error "
             "and the scheduler stayed usable (a failing case fails its own test)"]
    for method in START_METHODS:
        lines.append(f"  {method}: {per_method[method]} cases")
        for case, outcome in OUTCOMES.items():
            if case[0] == method:
                lines.append(f"    retries={case[1]} {case[2]:5} {case[3]:8} -> {outcome}")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
