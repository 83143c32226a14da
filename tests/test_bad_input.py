"""The bad-input matrix: every way a caller can hand Penny something wrong.

Each case asserts that the error is the intended type, that its message
names the problem, and that the scheduler still runs tasks afterwards (with
the same worker processes, where no worker was meant to die).  `CASES`
lists them; `test_zz_tally` prints how many ran and passed.

Runtime gaps found while writing these (a replaced fork worker inheriting
the main process's scheduler, map dropping the results before a failing
input item, an unnamed argument-unpickling error) are fixed; their tests are
kept at the end as regressions and are not counted in the tally.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import sys
import threading
import time

import pytest

import penny
from penny import (
    PennyError,
    SchedulerClosedError,
    UnknownFunctionError,
    WorkerCrashedError,
)
from penny.errors import RemoteTraceback
from penny.wire.marshal import ArgumentUnpicklingError
from tests import crash_tasks as ct
from tests import helpers as h

pytestmark = pytest.mark.usefixtures("no_leaked_processes")

TIMEOUT = 120

#: Every case of the matrix, in order.  A test records its case in PASSED
#: when all its assertions hold (scheduler still usable included).
CASES = [
    "unknown function id in new_task",
    "new_task arguments not a list or tuple",
    "lambda",
    "closure",
    "nested function",
    "__main__-only function under spawn (python -c)",
    "__main__ function of a script under spawn (works)",
    "unpicklable argument (threading.Lock)",
    "argument whose pickling raises in the caller",
    "argument whose unpickling raises in the worker",
    "argument whose unpickling crashes the worker",
    "lambda result (travels by value)",
    "result that cannot be pickled (generator)",
    "argument larger than the arena",
    "result larger than the arena",
    "task raises SystemExit",
    "task raises KeyboardInterrupt",
    "RecursionError in a task",
    "map over an iterable that raises part way",
    "map with a bad chunksize",
    "result(timeout=) expires",
    "current_scheduler().submit inside a task",
    "Scheduler passed as an argument",
    "Scheduler created inside a task",
    "use after shutdown",
]
PASSED: dict[str, str] = {}  # case -> what it gave


def passed(case: str, what: str) -> None:
    assert case in CASES, case
    PASSED[case] = what


# ---------------------------------------------------------------------------
# fixtures and checks
# ---------------------------------------------------------------------------


def _module_scheduler(**kw):
    s = penny.Scheduler(2, **kw)
    try:
        yield s
    finally:
        pids = h.worker_pids(s)
        s.shutdown(wait=True)
        left = h.wait_gone(pids, timeout=15)
        h.kill_all(left)
        assert not left


@pytest.fixture(scope="module")
def sched():
    """One forkserver scheduler for the cases that do not need their own."""
    yield from _module_scheduler(functions={1: ct.add, 2: ct.double})


@pytest.fixture(scope="module")
def small_arena():
    """A scheduler with a 1 MiB data arena."""
    yield from _module_scheduler(arena_size=1 << 20)


class SameWorkers:
    """Snapshot of the pool: afterwards, the same live workers and no crash."""

    def __init__(self, s):
        self.s = s
        wait_pool_whole(s)
        self.pids = sorted(h.worker_pids(s))
        self.crashes = s._supervisor.crashes

    def check(self):
        assert sorted(h.worker_pids(self.s)) == self.pids, "a worker was replaced"
        assert all(h.pid_alive(p) for p in self.pids), "a worker died"
        assert self.s._supervisor.crashes == self.crashes


def wait_pool_whole(s, timeout=60.0):
    """Until every worker slot has a live process (a crash is replaced asynchronously)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pids = h.worker_pids(s)
        if len(pids) == s.workers and all(h.pid_alive(p) for p in pids):
            return
        time.sleep(0.02)
    raise AssertionError(f"the pool is not whole after {timeout} s: {h.worker_pids(s)}")


def still_usable(s):
    assert s.submit(ct.add, 40, 2).result(TIMEOUT) == 42
    assert list(s.map(ct.square, range(50), chunksize=7)) == [i * i for i in range(50)]
    assert s.run(ct.ident, b"y" * 10_000) == b"y" * 10_000  # through the arena
    if s._functions.static:
        assert s.new_task(1, [1, 2]).result(TIMEOUT) == 3


def remote_tb(err) -> str:
    assert isinstance(err.__cause__, RemoteTraceback), f"no worker traceback on {err!r}"
    return str(err.__cause__)


# ---------------------------------------------------------------------------
# naming functions
# ---------------------------------------------------------------------------


def test_unknown_function_id(sched):
    same = SameWorkers(sched)
    with pytest.raises(UnknownFunctionError) as info:
        sched.new_task(99, [1, 2])
    msg = str(info.value)
    assert "99" in msg and "[1, 2]" in msg and "functions=" in msg, msg
    assert isinstance(info.value, LookupError)
    still_usable(sched)
    same.check()
    passed("unknown function id in new_task", f"UnknownFunctionError: {msg}")


def test_new_task_arguments_not_a_sequence(sched):
    with pytest.raises(TypeError, match="list or tuple") as info:
        sched.new_task(1, 5)
    still_usable(sched)
    passed("new_task arguments not a list or tuple", f"TypeError: {info.value}")


def _make_closure(k):
    def add_k(x):
        return x + k

    return add_k


def _make_nested_inc():
    def inner(x):
        return x + 1

    return inner


@pytest.mark.parametrize("case, fn", [
    ("lambda", lambda x: x + 1),
    ("closure", _make_closure(1)),
    ("nested function", _make_nested_inc()),
], ids=["lambda", "closure", "nested"])
def test_functions_without_an_importable_name_run(sched, case, fn):
    """Lambdas, closures and nested functions travel by value (cloudpickle)."""
    same = SameWorkers(sched)
    assert sched.submit(fn, 1).result(60) == 2
    assert sched.run(fn, 2) == 3
    assert list(sched.map(fn, [1, 2])) == [2, 3]
    still_usable(sched)
    same.check()
    passed(case, "runs (by value)")


MAIN_SCRIPT = h.SCRIPT_PRELUDE + """
import penny

def double(x):
    return 2 * x

def main():
    with penny.Scheduler(2, start_method="spawn") as s:
        try:
            report("result", value=s.submit(double, 21).result(60))
        except Exception as e:
            report("error", type=type(e).__name__, error=str(e))
        report("after", value=s.run(helpers.add, 1, 2))

if __name__ == "__main__":
    main()
"""


def test_main_only_function_under_spawn_interactive():
    """``python -c``: a function of an interactive __main__ travels by value,
    also to spawn workers (which cannot import it)."""
    r = h.run_script(MAIN_SCRIPT, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = h.reports(r.stdout)
    assert rep.get("result", {}).get("value") == 42, (rep, r.stderr[-3000:])
    assert rep["after"]["value"] == 3
    passed("__main__-only function under spawn (python -c)", "result 42")


def test_main_function_of_a_script_under_spawn(tmp_path):
    """``python script.py``: spawn workers re-import the script as __mp_main__, so it works."""
    import subprocess

    path = tmp_path / "script.py"
    path.write_text(MAIN_SCRIPT)
    r = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120,
                       env=h.subprocess_env(), cwd=h.ROOT, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = h.reports(r.stdout)
    assert rep.get("result", {}).get("value") == 42, (rep, r.stderr[-3000:])
    assert rep["after"]["value"] == 3
    passed("__main__ function of a script under spawn (works)", "result 42")


# ---------------------------------------------------------------------------
# arguments and results that do not travel
# ---------------------------------------------------------------------------


def test_unpicklable_argument(sched):
    same = SameWorkers(sched)
    for call in (
        lambda: sched.submit(ct.ident, threading.Lock()),
        lambda: sched.submit(ct.ident, x=[1, threading.Lock()]),
        lambda: sched.new_task(1, [threading.Lock(), 1]),
    ):
        with pytest.raises(TypeError) as info:
            call()
        msg = str(info.value)
        assert "arguments cannot be pickled" in msg and "lock" in msg, msg
    assert sched.stats()["pending"] == 0  # nothing half-submitted
    still_usable(sched)
    same.check()
    passed("unpicklable argument (threading.Lock)", f"{type(info.value).__name__}: {msg}")


def test_argument_whose_pickling_raises(sched):
    same = SameWorkers(sched)
    with pytest.raises(TypeError) as info:
        sched.submit(ct.ident, ct.PickleRaises())
    msg = str(info.value)
    assert "arguments cannot be pickled" in msg and "PickleRaises refuses to be pickled" in msg, msg
    assert isinstance(info.value.__cause__, ValueError)  # the original error is chained
    still_usable(sched)
    same.check()
    passed("argument whose pickling raises in the caller", f"{type(info.value).__name__}: {msg}")


def test_argument_whose_unpickling_raises(sched):
    """Raised in the worker by pickle.loads: the caller gets an
    ArgumentUnpicklingError naming the original; the worker's traceback shows
    it came from decoding the arguments."""
    same = SameWorkers(sched)
    with pytest.raises(ArgumentUnpicklingError, match="UnpickleRaises cannot be rebuilt in the worker") as info:
        sched.submit(ct.takes_arg, ct.UnpickleRaises()).result(TIMEOUT)
    assert "arguments could not be unpickled in the worker" in str(info.value)
    tb = remote_tb(info.value)
    assert "decode_args" in tb and "_raise_on_load" in tb, tb
    still_usable(sched)
    same.check()
    passed("argument whose unpickling raises in the worker", f"ArgumentUnpicklingError: {info.value}")


def test_argument_whose_unpickling_crashes_the_worker(sched, tmp_path):
    counter = str(tmp_path / "runs")
    with pytest.raises(WorkerCrashedError) as info:
        sched.submit(ct.takes_arg, ct.CrashOnLoad("exit", counter)).result(TIMEOUT)
    msg = str(info.value)
    assert f"exited with code {ct.EXIT_CODE}" in msg and "started 2 time" in msg, msg
    assert ct.runs(counter) == 2  # retries=1: once more, then reported
    still_usable(sched)
    wait_pool_whole(sched)  # both crashed workers were replaced
    passed("argument whose unpickling crashes the worker", f"WorkerCrashedError: {msg}")


def test_a_lambda_result_travels_by_value(sched):
    """What the C pickler refuses (a lambda) goes by value with cloudpickle."""
    f = sched.submit(ct.return_lambda).result(TIMEOUT)
    assert f(41) == 41
    still_usable(sched)
    passed("lambda result (travels by value)", "a function that works")


@pytest.mark.parametrize("case, fn, type_name", [
    ("result that cannot be pickled (generator)", ct.return_generator, "generator"),
], ids=["generator"])
def test_unpicklable_result(sched, case, fn, type_name):
    same = SameWorkers(sched)
    with pytest.raises(TypeError) as info:
        sched.submit(fn).result(TIMEOUT)
    msg = str(info.value)
    assert type(info.value).__name__ == "ResultPicklingError"
    assert f"return value of type {type_name} cannot be pickled" in msg and "return plain data" in msg, msg
    remote_tb(info.value)
    still_usable(sched)
    same.check()
    passed(case, f"ResultPicklingError: {msg}")


BIG = 64 << 20  # 64 MiB, against a 1 MiB arena


def test_argument_larger_than_the_arena(small_arena):
    """The arena is being reworked to grow: accept either a MemoryError that
    gives the sizes in bytes (fixed arena), or the correct result (growing
    arena).  The case's tally line records which one happened."""
    s = small_arena
    same = SameWorkers(s)
    try:
        got = s.submit(ct.nbytes, b"z" * BIG).result(TIMEOUT)
    except MemoryError as e:
        msg = str(e)
        assert "bytes" in msg and "arena" in msg, msg
        what = f"MemoryError (fixed arena): {msg}"
    else:
        assert got == BIG
        what = "correct result (the arena grew)"
    still_usable(s)
    same.check()
    passed("argument larger than the arena", what)


def test_result_larger_than_the_arena(small_arena):
    s = small_arena
    same = SameWorkers(s)
    try:
        got = s.submit(ct.make_bytes, BIG).result(TIMEOUT)
    except MemoryError as e:
        msg = str(e)
        assert "bytes" in msg and "arena" in msg, msg
        what = f"MemoryError (fixed arena): {msg}"
    else:
        assert len(got) == BIG and got[:1] == b"\x07" and got[-1:] == b"\x07"
        what = "correct result (the arena grew)"
    del got
    still_usable(s)
    same.check()
    passed("result larger than the arena", what)


# ---------------------------------------------------------------------------
# exceptions that are not errors, and runaway recursion
# ---------------------------------------------------------------------------


def test_task_raises_system_exit(sched):
    same = SameWorkers(sched)
    with pytest.raises(SystemExit) as info:
        sched.submit(ct.raise_system_exit, 4).result(TIMEOUT)
    assert info.value.code == 4
    remote_tb(info.value)
    still_usable(sched)
    same.check()  # the worker caught it: no process exited
    passed("task raises SystemExit", "SystemExit(4) re-raised in the caller; the worker lives")


def test_task_raises_keyboard_interrupt(sched):
    same = SameWorkers(sched)
    with pytest.raises(KeyboardInterrupt, match="raised by a task") as info:
        sched.submit(ct.raise_keyboard_interrupt).result(TIMEOUT)
    remote_tb(info.value)
    still_usable(sched)
    same.check()
    passed("task raises KeyboardInterrupt", "KeyboardInterrupt re-raised in the caller; the worker lives")


def test_recursion_error(sched):
    same = SameWorkers(sched)
    with pytest.raises(RecursionError, match="maximum recursion depth") as info:
        sched.submit(ct.raise_recursion_error).result(TIMEOUT)
    tb = remote_tb(info.value)
    assert "recurse_forever" in tb and len(tb) < 200_000, len(tb)  # repeated frames are folded
    still_usable(sched)
    same.check()
    passed("RecursionError in a task", "RecursionError re-raised in the caller; the worker lives")


# ---------------------------------------------------------------------------
# map, timeouts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n, chunksize", [(50, None), (5000, None), (5000, 10)])
def test_map_over_failing_iterable(sched, n, chunksize):
    """The iterable's exception reaches the caller, as itself, after the
    results of every item before it; nothing stays pending."""
    same = SameWorkers(sched)
    got = []
    with pytest.raises(ValueError, match=f"failed after {n} items"):
        for x in sched.map(ct.square, ct.failing_iterable(n), chunksize=chunksize):
            got.append(x)  # noqa: PERF402 - keep what came before the failure
    assert got == [i * i for i in range(len(got))]
    end = time.monotonic() + 30
    while sched.stats()["pending"] and time.monotonic() < end:
        time.sleep(0.05)  # chunks already submitted finish (or were cancelled)
    assert sched.stats()["pending"] == 0
    still_usable(sched)
    same.check()
    if n == 5000 and chunksize == 10:
        passed("map over an iterable that raises part way",
               f"ValueError after {len(got)} of {n} results (chunksize=10)")


def test_map_bad_chunksize(sched):
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="chunksize must be a positive int"):
            sched.map(ct.square, range(3), chunksize=bad)
    with pytest.raises(TypeError, match="at least one iterable"):
        sched.map(ct.square)
    still_usable(sched)
    passed("map with a bad chunksize", "ValueError: chunksize must be a positive int")


def test_result_timeout_expires(sched):
    same = SameWorkers(sched)
    f = sched.submit(ct.sleep_then, 1.5, "late")
    with pytest.raises(cf.TimeoutError):
        f.result(timeout=0.05)
    assert not f.done() and not f.cancelled()
    still_usable(sched)  # the other worker goes on meanwhile
    assert f.result(TIMEOUT) == "late"  # and the task still completes
    same.check()
    passed("result(timeout=) expires", "concurrent.futures.TimeoutError, then the result")


# ---------------------------------------------------------------------------
# the scheduler inside tasks, and after shutdown
# ---------------------------------------------------------------------------


def test_current_scheduler_inside_a_task(sched):
    """Workers have no scheduler of their own: the task gets a PennyError at
    once (and penny.spawn, the supported way, works)."""
    same = SameWorkers(sched)
    t0 = time.monotonic()
    with pytest.raises(PennyError) as info:
        sched.submit(ct.submit_from_task, 1, 10.0).result(TIMEOUT)
    assert time.monotonic() - t0 < 10, "the task waited instead of failing"
    assert isinstance(info.value, SchedulerClosedError)
    assert "cannot use the scheduler that runs it" in str(info.value) and "penny.spawn" in str(info.value)
    assert sched.submit(ct.spawn_inside_task, 1).result(TIMEOUT) == 2
    still_usable(sched)
    same.check()
    passed("current_scheduler().submit inside a task", f"{type(info.value).__name__}: {info.value}")


def test_scheduler_as_an_argument(sched):
    same = SameWorkers(sched)
    with pytest.raises(TypeError) as info:
        sched.submit(ct.use_scheduler_arg, sched)
    msg = str(info.value)
    assert "a Scheduler cannot be sent to a task" in msg and "penny.spawn" in msg, msg
    assert sched.stats()["pending"] == 0
    still_usable(sched)
    same.check()
    passed("Scheduler passed as an argument", f"{type(info.value).__name__}: {msg}")


def test_scheduler_created_inside_a_task(sched):
    """A worker cannot start workers of its own: a PennyError (SchedulerClosedError)
    that says to use spawn/sync reaches the caller; the worker lives on."""
    same = SameWorkers(sched)
    with pytest.raises(penny.PennyError) as info:
        sched.submit(ct.scheduler_in_task).result(TIMEOUT)
    msg = str(info.value)
    assert type(info.value).__name__ == "SchedulerClosedError", f"{type(info.value).__name__}: {msg}"
    assert "cannot create a Scheduler" in msg and "penny.spawn/penny.sync" in msg and "daemonic" not in msg, msg
    still_usable(sched)
    same.check()
    passed("Scheduler created inside a task", f"{type(info.value).__name__}: {msg}")


def test_use_after_shutdown(make_sched):
    s = make_sched(2, functions={1: ct.add})
    assert s.run(ct.add, 1, 2) == 3
    s.shutdown()
    calls = {
        "submit": lambda: s.submit(ct.add, 1, 2),
        "submit (new function)": lambda: s.submit(ct.double, 1),
        "run": lambda: s.run(ct.add, 1, 2),
        "new_task": lambda: s.new_task(1, [1, 2]),
        "map": lambda: s.map(ct.square, range(3)),
    }
    for name, call in calls.items():
        with pytest.raises(SchedulerClosedError, match="shut down") as info:
            call()
        assert isinstance(info.value, RuntimeError), name
    with pytest.raises(SchedulerClosedError):
        s.stats()
    s.shutdown()  # again: a no-op
    # a new scheduler works
    t = make_sched(2)
    still_usable(t)
    passed("use after shutdown", f"SchedulerClosedError: {info.value}")


# ---------------------------------------------------------------------------
# regressions of the runtime gaps found (not in the tally)
# ---------------------------------------------------------------------------


def test_current_scheduler_inside_a_task_on_a_replaced_fork_worker(make_sched):
    import signal

    s = make_sched(2, start_method="fork")
    assert s.run(ct.add, 1, 2) == 3
    first = set(h.worker_pids(s))
    for pid in first:  # idle workers: nothing is lost; the supervisor replaces them
        os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 60
    while (set(h.worker_pids(s)) & first or len(h.worker_pids(s)) < 2) and time.monotonic() < end:
        time.sleep(0.02)
    wait_pool_whole(s)
    assert not set(h.worker_pids(s)) & first
    assert s.run(ct.add, 1, 2) == 3
    t0 = time.monotonic()
    with pytest.raises(PennyError):
        s.submit(ct.submit_from_task, 1, 5.0).result(TIMEOUT)  # TimeoutError after 5 s today
    assert time.monotonic() - t0 < 5


def test_map_delivers_every_result_before_the_failure(sched):
    got = []
    with pytest.raises(ValueError):
        for x in sched.map(ct.square, ct.failing_iterable(5000)):
            got.append(x)  # noqa: PERF402
    assert got == [i * i for i in range(5000)], f"{len(got)} of 5000 results delivered"


# ---------------------------------------------------------------------------
# the tally
# ---------------------------------------------------------------------------


def test_zz_tally(capsys):
    """Print the tally (a case that ran and failed has failed its own test)."""
    if not PASSED:
        pytest.skip("no bad-input case ran")
    lines = [f"bad-input matrix: {len(PASSED)} of {len(CASES)} cases give the intended error "
             "and leave the scheduler usable"]
    lines += [f"  ok   {c}: {PASSED[c][:160]}" for c in CASES if c in PASSED]
    lines += [f"  --   {c} (not run or failed)" for c in CASES if c not in PASSED]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
