"""Scheduler.interrupt: a running task sees penny.TaskInterrupted in its own code,
its children too, the worker goes on (docs/interrupt.md).

Every test checks afterwards that nothing is left: no outstanding request,
every task record free, the same worker processes (none died or was replaced).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import random
import time

import pytest

import penny
from penny.runtime import interrupt as intr
from penny.shm.layout import H_IDLE, H_INTERRUPTS, S_FREE, S_RUNNING
from tests import helpers
from tests import interrupt_tasks as it

pytestmark = [pytest.mark.usefixtures("no_leaked_processes"), pytest.mark.timeout(240)]

LONG = 30.0  # a task's spin limit: far beyond any test's patience, so "finished" means "not interrupted"


def wait_running(fut, timeout=60.0):
    end = time.monotonic() + timeout
    while not fut.running():
        assert not fut.done(), f"the task ended before it was seen running: {fut}"
        assert time.monotonic() < end, "the task did not start"
        time.sleep(0.002)


def wait_idle(s, timeout=60.0):
    """Until every worker is idle: a spawn publishes a child only when some worker is."""
    end = time.monotonic() + timeout
    while s._s.load32(H_IDLE, 0) < s.workers:
        assert time.monotonic() < end, "the workers did not all go idle"
        time.sleep(0.005)


def wait_stolen_child(s, timeout=30.0):
    """Wait until a published child runs on another worker than its parent; its ref."""
    tasks = s._tasks
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for i in range(tasks.capacity):
            ref, st = tasks.ref_at(i)
            rec = tasks.record_at(i)
            if st == S_RUNNING and tasks.parent(rec):
                parent = tasks.parent(rec)
                if tasks.status(parent) == S_RUNNING and tasks.owner(tasks.record(parent)) != tasks.owner(rec):
                    return ref
        time.sleep(0.01)
    raise AssertionError("no child was stolen")


def assert_clean(s, pids, timeout=30.0):
    """No request outstanding, every record free, the same workers."""
    end = time.monotonic() + timeout
    tasks = s._tasks
    while True:
        count = s._s.load32(H_INTERRUPTS, 0)
        busy = [i for i in range(tasks.capacity) if tasks.ref_at(i)[1] != S_FREE]
        if count == 0 and not busy:
            break
        assert time.monotonic() < end, f"left: {count} requests, records not free: {busy[:10]}"
        time.sleep(0.01)
    words = [i for i in range(tasks.capacity) if tasks.interrupt_word(tasks.record_at(i))]
    assert not words, f"request words left in records {words[:10]}"
    assert helpers.worker_pids(s) == pids, "a worker died or was replaced"
    assert s._supervisor.crashes == 0


def interrupted(fut, timeout=60.0):
    with pytest.raises(penny.TaskInterrupted):
        fut.result(timeout=timeout)


@pytest.fixture
def s1(make_sched):
    return make_sched(1)


# ---- a running task ----------------------------------------------------------------------------

def test_spin_loop_is_interrupted_and_the_worker_goes_on(sched_any):
    s = sched_any
    pids = helpers.worker_pids(s)
    f = s.submit(it.spin, LONG)
    wait_running(f)
    assert s.interrupt(f) is True
    with pytest.raises(penny.TaskInterrupted, match="interrupted"):
        f.result(timeout=60)
    assert isinstance(f.exception(), BaseException) and not isinstance(f.exception(), Exception)
    assert s.submit(it.add_one, 1).result(timeout=60) == 2
    assert s.interrupt(f) is False  # done
    assert_clean(s, pids)


def test_exported_and_not_an_exception():
    assert penny.TaskInterrupted is penny.errors.TaskInterrupted
    assert issubclass(penny.TaskInterrupted, BaseException)
    assert not issubclass(penny.TaskInterrupted, Exception)  # `except Exception:` does not swallow it


def test_a_function_of_main_travelling_by_value(sched):
    # Wrapped in Penny's by-value call (wire/functions.call): still task code.
    pids = helpers.worker_pids(sched)

    def local_spin():
        while True:
            pass

    f = sched.submit(local_spin)
    wait_running(f)
    assert sched.interrupt(f)
    interrupted(f)
    assert_clean(sched, pids)


def test_blocking_sleep_is_cut_short(sched):
    pids = helpers.worker_pids(sched)
    f = sched.submit(it.sleeper, 60.0)
    wait_running(f)
    t0 = time.monotonic()
    assert sched.interrupt(f)
    interrupted(f, timeout=50)
    assert time.monotonic() - t0 < 50  # the sleep of 60 s was cut short
    assert_clean(sched, pids)


def test_a_builtin_run_directly_is_not_interrupted(sched):
    # No Python frame of the task: it is interrupted only when it returns, and
    # then it has finished (docs/interrupt.md).
    pids = helpers.worker_pids(sched)
    f = sched.submit(time.sleep, 1.0)
    wait_running(f)
    assert sched.interrupt(f)
    assert f.result(timeout=60) is None
    assert_clean(sched, pids)


def test_finally_blocks_run(sched, tmp_path):
    path = str(tmp_path / "marker")
    f = sched.submit(it.finally_marker, path, LONG)
    wait_running(f)
    sched.interrupt(f)
    interrupted(f)
    assert open(path).read() == "cleaned"


# ---- queued, done, wrong futures --------------------------------------------------------------

def test_a_queued_task_is_cancelled(s1):
    pids = helpers.worker_pids(s1)
    busy = s1.submit(it.spin, LONG)
    wait_running(busy)
    queued = s1.submit(it.add_one, 1)
    assert s1.interrupt(queued) is True
    assert queued.cancelled()
    assert s1.interrupt(busy) is True
    interrupted(busy)
    assert s1.submit(it.add_one, 2).result(timeout=60) == 3
    assert_clean(s1, pids)


def test_future_cancel_keeps_its_meaning(sched):
    f = sched.submit(it.spin, LONG)
    wait_running(f)
    assert f.cancel() is False  # a running task is not cancelled by cancel()
    assert sched.interrupt(f)
    interrupted(f)


def test_done_task_and_foreign_futures(sched, make_sched):
    f = sched.submit(it.add_one, 1)
    assert f.result(timeout=60) == 2
    assert sched.interrupt(f) is False
    other = make_sched(1)
    g = other.submit(it.add_one, 1)
    with pytest.raises(ValueError, match="future returned by this scheduler"):
        sched.interrupt(g)
    with pytest.raises(ValueError):
        sched.interrupt(cf.Future())
    g.result(timeout=60)


def test_executor_interrupt():
    with penny.Executor(max_workers=1) as ex:
        f = ex.submit(it.spin, LONG)
        wait_running(f)
        assert ex.interrupt(f)
        interrupted(f)
        assert ex.submit(it.add_one, 1).result(timeout=60) == 2


def test_ray_backend_says_it_is_not_implemented():
    from penny.backends.ray.scheduler import RayScheduler

    with pytest.raises(NotImplementedError, match="not implemented on the Ray backend"):
        RayScheduler.interrupt(object.__new__(RayScheduler), cf.Future())


# ---- a task that catches the exception ---------------------------------------------------------

def test_catch_and_ignore_returns_its_own_result(sched):
    pids = helpers.worker_pids(sched)
    f = sched.submit(it.ignore_once, LONG)
    wait_running(f)
    assert sched.interrupt(f)
    assert f.result(timeout=60) == "ignored"
    assert_clean(sched, pids)


def test_an_ignored_interrupt_is_delivered_once_and_again_on_request(sched):
    pids = helpers.worker_pids(sched)
    f = sched.submit(it.ignore_then_spin, LONG)
    wait_running(f)
    assert sched.interrupt(f)
    time.sleep(1.0)  # delivered, caught; the task spins again and is not interrupted again by itself
    assert not f.done()
    assert sched.interrupt(f)  # a new request
    interrupted(f)
    assert_clean(sched, pids)


def test_children_spawned_after_an_ignored_interrupt_run_normally(sched):
    pids = helpers.worker_pids(sched)
    f = sched.submit(it.ignore_then_child, LONG)
    wait_running(f)
    assert sched.interrupt(f)
    assert f.result(timeout=60) == 42
    assert_clean(sched, pids)


def test_children_pending_at_the_request_are_interrupted_even_if_the_parent_goes_on(s1):
    pids = helpers.worker_pids(s1)
    f = s1.submit(it.ignore_then_sync_old_child, LONG)
    wait_running(f)
    assert s1.interrupt(f)
    assert f.result(timeout=60) == "child interrupted"
    assert_clean(s1, pids)


# ---- trees -------------------------------------------------------------------------------------

def test_private_children_of_an_interrupted_parent_never_run(s1):
    pids = helpers.worker_pids(s1)
    counter = s1.shared_array((1,), "i8", fill=0)
    f = s1.submit(it.parent_private, counter, 10, LONG)
    wait_running(f)
    time.sleep(0.2)
    assert s1.interrupt(f)
    interrupted(f)
    assert counter[0] == 0
    assert_clean(s1, pids)


@pytest.mark.parametrize("task", [it.parent_spinning_children, it.parent_waiting, it.parent_sync_all])
def test_published_children_are_interrupted_with_their_parent(sched_any, task):
    s = sched_any
    pids = helpers.worker_pids(s)
    wait_idle(s)
    f = s.submit(task, 4, LONG)
    wait_running(f)
    stolen = wait_stolen_child(s)  # the other worker spins in a child
    assert s.interrupt(f)
    interrupted(f)
    # Both workers are free again: the children were interrupted, not run out.
    futs = [s.submit(it.add_one, i) for i in range(4)]
    assert [x.result(timeout=60) for x in futs] == [1, 2, 3, 4]
    assert_clean(s, pids)
    assert stolen


def test_a_deep_tree_is_interrupted_everywhere(sched_any):
    s = sched_any
    pids = helpers.worker_pids(s)
    wait_idle(s)
    f = s.submit(it.tree, 4, LONG)
    wait_running(f)
    assert wait_stolen_child(s)
    assert s.interrupt(f)
    interrupted(f)
    assert [s.submit(it.add_one, i).result(timeout=60) for i in range(2)] == [1, 2]
    assert_clean(s, pids)


def test_join_halves_are_interrupted(sched):
    pids = helpers.worker_pids(sched)
    wait_idle(sched)
    f = sched.submit(it.join_halves, LONG)
    wait_running(f)
    assert wait_stolen_child(sched)
    assert sched.interrupt(f)
    interrupted(f)
    assert_clean(sched, pids)


def test_other_tasks_go_on(sched):
    pids = helpers.worker_pids(sched)
    victim = sched.submit(it.spin, LONG)
    bystander = sched.submit(it.spin, 1.0)
    wait_running(victim)
    wait_running(bystander)
    assert sched.interrupt(victim)
    interrupted(victim)
    assert bystander.result(timeout=60) == "finished"
    assert_clean(sched, pids)


# ---- races -------------------------------------------------------------------------------------

def test_interrupt_racing_with_completion(start_method, make_sched):
    """Tasks of random short lengths, each interrupted at a random moment:
    every outcome is the value, TaskInterrupted or a cancellation; no worker
    dies; nothing is left."""
    s = make_sched(2, start_method=start_method)
    pids = helpers.worker_pids(s)
    rng = random.Random(1234)
    outcomes = {"value": 0, "interrupted": 0, "cancelled": 0}
    for _ in range(150):
        d = rng.choice([0.0, 0.0001, 0.0005, 0.002])
        f = s.submit(it.spin_for, d)
        time.sleep(rng.choice([0.0, 0.0002, 0.001, 0.003]))
        s.interrupt(f)
        try:
            assert f.result(timeout=60) == d
            outcomes["value"] += 1
        except penny.TaskInterrupted:
            outcomes["interrupted"] += 1
        except cf.CancelledError:
            outcomes["cancelled"] += 1
    assert sum(outcomes.values()) == 150
    assert s.submit(it.add_one, 1).result(timeout=60) == 2
    assert_clean(s, pids)


def test_interrupt_lands_only_in_task_code_under_fork_join(start_method, make_sched):
    """Trees that spawn and sync all the time (Penny's own code is on the
    stack half of the time), interrupted at random moments: the exception
    never escapes into the runtime (no worker dies, every record is freed)."""
    s = make_sched(2, start_method=start_method)
    pids = helpers.worker_pids(s)
    # Workers up first: under spawn they take about a second to start (more
    # on 3.13t), and an interrupt before then only cancels a queued task.
    assert s.run(it.fib_repeat, 1, 1) == [1]
    rng = random.Random(99)
    got = set()
    for _ in range(25):
        f = s.submit(it.fib_repeat, 14, 50)
        time.sleep(rng.uniform(0.0, 0.05))
        s.interrupt(f)
        try:
            f.result(timeout=60)
            got.add("value")
        except penny.TaskInterrupted:
            got.add("interrupted")
        except cf.CancelledError:
            got.add("cancelled")
    assert "interrupted" in got
    assert s.submit(it.fib, 15).result(timeout=60) == 610
    assert_clean(s, pids)


def test_many_interrupts_concurrently(make_sched):
    s = make_sched(2)
    pids = helpers.worker_pids(s)
    futs = [s.submit(it.spin, LONG) for _ in range(6)]
    wait_running(futs[0])
    for f in futs:
        s.interrupt(f)
    for f in futs:
        with pytest.raises((penny.TaskInterrupted, cf.CancelledError)):
            f.result(timeout=60)
    assert_clean(s, pids)


# ---- the request word -----------------------------------------------------------------------------

def test_request_word_names_one_life():
    ref = (5 << 32) | 1
    w = intr.VALID | (1 << intr.REQ_SHIFT) | 5
    assert intr.pending(w, ref)
    assert not intr.pending(w | intr.DELIVERED, ref)
    assert intr.names_life(w | intr.DELIVERED, ref)
    assert not intr.names_life(w, (6 << 32) | 1)  # the record's next life
    assert not intr.pending(0, ref)


def test_the_handler_boundaries_are_found():
    from penny.runtime.forkjoin import ForkJoin
    from penny.runtime.worker import Worker

    lines = intr.call_lines(Worker.run_task, "*")
    assert len(lines) == 2  # fn(*args, **kwargs) and fn(*args)
    assert intr.call_lines(ForkJoin.end_task, "run_handle")
    with pytest.raises(RuntimeError):
        intr.call_lines(it.add_one, "no_such_call")
