"""Worker death with tasks suspended in sync and inline frames (issue 5, item 1).

A worker that dies takes the Python frames of every task it held: the one it
ran, their inline ancestors and its suspended continuations.  Those fail with
WorkerCrashedError, their parents see it at sync, root futures resolve, and
the scheduler goes on (supervisor.reap, ForkJoin.reap_orphan)."""

import os
import signal
import time

import pytest

import penny
from penny.shm.layout import R_STATE, S_FREE

from . import helpers as h
from . import recovery_tasks as rt


def _wait_pid(path, timeout=30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                return int(f.read())
        except (FileNotFoundError, ValueError):
            time.sleep(0.01)
    raise AssertionError(f"no pid written to {path}")


def _warm(s):
    """Every worker started and idle, so that a spawn publishes its child for them."""
    assert sorted(s.map(rt.quick, range(64), chunksize=1)) == list(range(64))
    time.sleep(0.3)


def _still_works(s):
    assert s.submit(rt.quick, 7).result(timeout=60) == 7
    assert list(s.map(rt.quick, range(20))) == list(range(20))


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_a_task_suspended_on_a_killed_worker_fails_and_its_future_resolves(make_sched, tmp_path, method):
    s = make_sched(2, start_method=method)
    _warm(s)
    path = str(tmp_path / "pid")
    fut = s.submit(rt.parent_suspends, path, 1.5)
    pid = _wait_pid(path)
    time.sleep(0.2)  # in sync now, suspended: its child sleeps on the other worker
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(penny.WorkerCrashedError, match="suspended in sync|died while it was suspended"):
        fut.result(timeout=60)
    _still_works(s)


def test_the_parent_of_a_dead_suspended_task_sees_the_error_at_its_sync(make_sched, tmp_path):
    s = make_sched(3)
    _warm(s)
    path = str(tmp_path / "pid")
    fut = s.submit(rt.grandparent, path, 1.5)
    pid = _wait_pid(path)
    time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    out = fut.result(timeout=60)
    assert out.startswith("crashed: ") and "suspended in sync" in out, out
    _still_works(s)


@pytest.mark.parametrize("retries", [1, 0])
def test_a_killed_stolen_child_is_retried_or_fails_at_its_parents_sync(make_sched, tmp_path, retries):
    s = make_sched(2, retries=retries)
    _warm(s)
    path = str(tmp_path / "pid")
    fut = s.submit(rt.parent_of_killed_child, path, 1.0)
    pid = _wait_pid(path)
    os.remove(path)
    os.kill(pid, signal.SIGKILL)
    out = fut.result(timeout=60)
    if retries:
        assert out == "result 42"  # the retry ran the child again
    else:
        assert out.startswith("crashed: ") and "SIGKILL" in out
    _still_works(s)


def test_records_are_not_leaked_by_reaping(make_sched, tmp_path):
    s = make_sched(2)
    _warm(s)
    for i in range(3):
        path = str(tmp_path / f"pid{i}")
        fut = s.submit(rt.parent_suspends, path, 1.0)
        pid = _wait_pid(path)
        time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(penny.WorkerCrashedError):
            fut.result(timeout=60)
    _still_works(s)
    # Every record is back on the free list once the work is done (reaped
    # tasks and the children they never read included).
    def in_use():
        return sum(1 for i in range(s._layout.task_capacity)
                   if s._s.load64(s._layout.record(i) + R_STATE) >> 32 != S_FREE)

    deadline = time.monotonic() + 10
    while in_use() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert in_use() == 0


def test_future_running_reflects_the_task(make_sched, tmp_path):
    s = make_sched(2)
    path = str(tmp_path / "pid")
    fut = s.submit(rt.slow_child, 1.0, 5, path)
    assert not fut.done()
    _wait_pid(path)
    assert fut.running()  # read from the task's record: a worker runs it
    assert fut.result(timeout=60) == 5
    assert not fut.running() and fut.done()


def test_a_completion_collected_twice_frees_its_record_once(make_sched):
    """A supervisor may route a settled root task a second time (crash-model.md,
    "settle"); when both completions reach the collector, the second must be
    dropped.  It used to free the record again: the record then sat twice on
    the free list and two tasks got it (seen in a 10-minute soak as "task ref
    ... is not a record taken for a new task" and lost futures)."""
    from penny.shm.layout import S_CANCELLED

    s = make_sched(1)
    s.run(h.add, 1, 1)
    tasks = s._tasks
    ref = tasks.alloc()
    tasks.set_status(ref, S_CANCELLED)  # an outcome that needs no future
    s._complete(ref)
    s._complete(ref)  # the second completion of the same ref
    a, b = tasks.alloc(), tasks.alloc()
    try:
        assert (a & 0xFFFF_FFFF) != (b & 0xFFFF_FFFF), "one record handed out twice"
    finally:
        tasks.free(a)
        tasks.free(b)
    assert s.run(h.add, 2, 3) == 5


def test_freeing_a_task_ref_twice_is_refused(make_sched):
    s = make_sched(1)
    tasks = s._tasks
    ref = tasks.alloc()
    tasks.free(ref)
    with pytest.raises(ValueError, match="freed twice"):
        tasks.free(ref)
