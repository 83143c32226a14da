"""The threads backend (``Scheduler(n, backend="threads")``): what it promises
beyond the parity suite (tests/test_backends.py): arguments and results by
reference, exceptions as themselves, nested fork-join under stress on 2 and
8 threads checked against serial, shutdown and interpreter-exit hygiene, a
loud failure of the runtime itself, and the Executor spelling."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import io
import os
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import traceback
import weakref

import pytest

import penny
from penny.backends.threads import ThreadExecutor, ThreadScheduler
from tests import thread_tasks as tt
from tests.helpers import ROOT

pytestmark = pytest.mark.timeout(300)


def _workers_alive():
    return [t.name for t in threading.enumerate() if t.name.startswith("penny-worker")]


@pytest.fixture
def s2():
    s = penny.Scheduler(2, backend="threads")
    yield s
    s.shutdown(wait=True, cancel_futures=True)


def test_backend_is_registered_and_refuses_start_methods():
    with penny.Scheduler(2, backend="threads") as s:
        assert isinstance(s, ThreadScheduler) and s.start_method == "threads" and s.workers == 2
        assert sorted(s._supervisor.threads[i].name for i in range(2)) == ["penny-worker-0", "penny-worker-1"]
    with pytest.raises(ValueError, match="start_method"):
        penny.Scheduler(2, start_method="spawn", backend="threads")
    assert not _workers_alive()


# ---- by reference ----------------------------------------------------------------------


def test_identity_of_arguments_and_results(s2, tmp_path):
    lock = threading.Lock()
    assert s2.submit(tt.identity, lock).result(timeout=60) is lock
    fn = lambda x: (x, threading.current_thread().name)  # noqa: E731 - a lambda, by reference
    value, name = s2.submit(fn, 5).result(timeout=60)
    assert value == 5 and name.startswith("penny-worker-")
    with open(tmp_path / "f.txt", "w") as f:
        assert s2.submit(lambda fh: fh.write("written by a task"), f).result(timeout=60) == 17
        assert s2.submit(tt.identity, f).result(timeout=60) is f
    assert (tmp_path / "f.txt").read_text() == "written by a task"
    data = [1, 2, 3]
    assert s2.submit(tt.identity, data).result(timeout=60) is data  # not a copy
    s2.submit(data.append, 4).result(timeout=60)                    # a bound method of the caller's list
    assert data == [1, 2, 3, 4]
    big = 10 ** 30
    assert s2.submit(tt.identity, big).result(timeout=60) is big
    assert s2.new_task  # the static table takes any callable too
    with penny.Scheduler(2, functions={1: lambda a, b: (a, b)}, backend="threads") as s:
        out = s.new_task(1, [lock, data]).result(timeout=60)
        assert out[0] is lock and out[1] is data


def test_children_by_reference(s2):
    buf = io.StringIO()

    def child(b):
        b.write("x")
        return b

    def parent(b):
        hs = [penny.spawn(child, b) for _ in range(50)]
        return [penny.sync(h) for h in hs]

    out = s2.run(parent, buf)
    assert all(o is buf for o in out) and buf.getvalue() == "x" * 50
    assert s2.run(tt.spawn_kw, 1, b=2, c=3) == (1, 2, 3)


def test_calls_are_freed_once_read(s2):
    class Payload:
        pass

    p = Payload()
    ref = weakref.ref(p)
    fut = s2.submit(tt.identity, p)
    assert fut.result(timeout=60) is p
    assert len(s2._table) == 0  # the call left the table when its outcome was read
    del p, fut
    gc.collect()
    assert ref() is None        # and nothing of Penny's keeps the argument or the result
    gate = threading.Event()
    blocker = [s2.submit(gate.wait, 60) for _ in range(2)]
    queued = [s2.submit(tt.identity, Payload()) for _ in range(5)]
    assert all(q.cancel() for q in queued)  # both workers are busy: these are still queued
    gate.set()
    cf.wait(blocker, timeout=60)
    assert len(s2._table) == 0


# ---- exceptions ------------------------------------------------------------------------


def test_exceptions_are_the_same_objects_with_tracebacks(s2):
    exc = KeyError("mine")
    with pytest.raises(KeyError) as info:
        s2.submit(tt.raise_it, exc).result(timeout=60)
    assert info.value is exc
    names = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "raise_it" in names  # the frame that raised, on the worker thread
    got = s2.run(tt.child_raises, exc)  # a child's exception reaches its parent as itself
    assert got is exc
    with pytest.raises(SystemExit):  # a BaseException is an outcome too, the worker lives on
        s2.run(tt.raise_it, SystemExit(3))
    assert s2.run(tt.identity, 1) == 1


def test_map_failure_keeps_results_before_it(s2):
    def f(x):
        if x == 37:
            raise ValueError(x)
        return threading.Lock() if x == 0 else x  # results need not pickle

    it = s2.map(f, range(100), chunksize=10)
    got = []
    with pytest.raises(ValueError):
        for v in it:
            got.append(v)
    assert len(got) == 37 and got[1:] == list(range(1, 37))


# ---- nested fork-join under stress -------------------------------------------------------


@pytest.mark.parametrize("workers", [2, 8])
def test_nested_spawn_sync_stress_matches_serial(workers):
    with penny.Scheduler(workers, backend="threads") as s:
        assert s.run(tt.fib, 20, 2) == tt.fib_serial(20)  # every call spawns: ~10,000 children
        futs = [s.submit(tt.tree, 4, 4, seed) for seed in range(40)]
        assert [f.result(timeout=240) for f in futs] == [tt.tree_serial(4, 4, seed) for seed in range(40)]
        many = [s.submit(tt.fib, 12 + i % 5, 3) for i in range(200)]
        assert [f.result(timeout=240) for f in many] == [tt.fib_serial(12 + i % 5) for i in range(200)]
        assert s.run(tt.stolen_then_suspended, 0.2) == [0, 1, 2, 3]
        assert s.run(tt.join_and_pfor, 50) == (tt.fib_serial(12), tt.fib_serial(13), list(range(50)))
        totals = s.stats()["totals"]
        assert totals["spawns"] > 10_000
    assert not _workers_alive()


def test_tasks_run_concurrently(s2):
    barrier = threading.Barrier(2)  # passes only if both tasks wait at once, on two threads
    names = [f.result(timeout=120) for f in [s2.submit(tt.wait_on, barrier) for _ in range(2)]]
    assert sorted(names) == ["penny-worker-0", "penny-worker-1"]


def test_spawn_join_parallel_for_outside_tasks(s2):
    with s2:
        assert penny.sync(penny.spawn(tt.identity, s2)) is s2
        assert penny.join((tt.fib, 10), (tt.fib, 11)) == (55, 89)
        hits = []
        penny.parallel_for(0, 40, lambda lo, hi: hits.extend(range(lo, hi)), grain=5)
        assert sorted(hits) == list(range(40))


# ---- failing loudly ----------------------------------------------------------------------


def test_a_fault_of_the_runtime_fails_loudly(caplog):
    s = penny.Scheduler(2, backend="threads")
    try:
        assert s.run(tt.identity, 1) == 1
        # Each thread builds its worker itself: the one that did not run the
        # task above may still be at it (seen on a free-threaded build).
        deadline = time.monotonic() + 60
        while None in s._supervisor.workers and time.monotonic() < deadline:
            time.sleep(0.01)
        for w in s._supervisor.workers:
            w.find_work = _fault
        futs = [s.submit(tt.identity, i) for i in range(4)]
        for f in futs:
            with pytest.raises(penny.WorkerCrashedError, match="worker thread .* failed inside Penny"):
                f.result(timeout=120)
        with pytest.raises(penny.SchedulerClosedError, match="broken"):
            s.submit(tt.identity, 1)
        assert any(r.levelname == "CRITICAL" and "worker thread" in r.getMessage() for r in caplog.records)
    finally:
        s.shutdown()
    assert not _workers_alive()


def _fault():
    raise RuntimeError("a bug in the loop")


# ---- shutdown and interpreter exit --------------------------------------------------------


def test_shutdown_joins_every_thread_and_frees_the_region():
    before = set(threading.enumerate())
    s = penny.Scheduler(3, backend="threads")
    futs = [s.submit(tt.fib, 15, 5) for _ in range(20)]
    s.shutdown(wait=True)
    assert [f.result() for f in futs] == [tt.fib_serial(15)] * 20
    assert set(threading.enumerate()) <= before  # workers, collector: all joined
    assert s._s is None and s._region.map is None
    with pytest.raises(penny.SchedulerClosedError):
        s.submit(tt.identity, 1)


def test_shutdown_from_inside_a_task():
    s = penny.Scheduler(2, backend="threads")
    assert s.submit(tt.shutdown_from_task, s).result(timeout=60) == "returned"
    assert s._torn_down.wait(60)
    assert not _workers_alive()


def _run_script(code: str, timeout=120):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "src") + os.pathsep + ROOT})


def test_interpreter_exit_without_shutdown_does_not_hang():
    out = _run_script(
        "import penny, time\n"
        "s = penny.Scheduler(2, backend='threads')\n"
        "futs = [s.submit(time.sleep, 0.2) for _ in range(20)]\n"   # queued at exit: cancelled
        "assert s.submit(lambda: 42).result() == 42\n"
        "print('done', flush=True)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "done"


def test_interpreter_exit_cancels_queued_tasks_and_waits_for_running_ones(tmp_path):
    marks = tmp_path / "marks"
    out = _run_script(
        "import penny, time\n"
        f"path = {str(marks)!r}\n"
        "def job(i):\n"
        "    time.sleep(0.5)\n"
        "    with open(path, 'a') as f:\n"
        "        f.write(f'{i}\\n')\n"
        "s = penny.Scheduler(2, backend='threads')\n"
        "futs = [s.submit(job, i) for i in range(20)]\n"
        "time.sleep(0.2)\n"                                  # two of them are running now
    )
    assert out.returncode == 0, out.stderr
    ran = marks.read_text().split()
    assert 2 <= len(ran) < 20  # the running ones finished (written), the queued ones never ran
    out = _run_script(
        "import penny\n"
        "s = penny.Executor(max_workers=2, backend='threads')\n"
        "s.submit(print, 'from a worker thread', flush=True).result()\n"
        "raise SystemExit(5)\n"
    )
    assert out.returncode == 5, out.stderr
    assert "from a worker thread" in out.stdout


# ---- the Executor spelling ------------------------------------------------------------------


def test_executor_threads_parity():
    with penny.Executor(max_workers=2, backend="threads") as ex:
        assert isinstance(ex, ThreadExecutor) and ex._max_workers == 2
        assert ex.submit(pow, 2, 10).result(timeout=60) == 1024
        assert list(ex.map(lambda x: -x, range(5))) == [0, -1, -2, -3, -4]
        assert list(ex.map(pow, [2, 3], [3, 2])) == [8, 9]
    with pytest.raises(penny.SchedulerClosedError):
        ex.submit(pow, 2, 2)
    with ThreadExecutor(2, initializer=tt.init_thread, initargs=("ready",)) as ex:
        assert {ex.submit(tt.read_tag).result(timeout=60) for _ in range(10)} == {"ready"}
    ex = penny.Executor(max_workers=2, backend="threads", initializer=tt.bad_init)
    try:
        with pytest.raises(penny.BrokenExecutorError):
            for _ in range(100):  # broken as soon as a worker thread ran the initializer
                ex.submit(tt.identity, 1).result(timeout=60)
    finally:
        ex.shutdown()
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        penny.Executor(max_workers=0, backend="threads")
    import multiprocessing

    with pytest.raises(ValueError, match="no meaning"):
        penny.Executor(max_workers=2, mp_context=multiprocessing.get_context("spawn"), backend="threads")
    assert not _workers_alive()


def test_processes_backend_after_threads_in_the_same_process():
    """Once a threads scheduler ran, spawn/sync read the per-thread fork state
    (native/forkjoin.c per_thread); a worker process forked afterwards binds
    both, so nested fork-join there still takes its fast path."""
    with penny.Scheduler(2, backend="threads") as s:
        assert s.run(tt.fib, 15, 5) == tt.fib_serial(15)
    for method in ("fork", "forkserver"):
        with penny.Scheduler(2, start_method=method) as p:
            assert p.run(tt.fib, 18, 5) == tt.fib_serial(18)
            deadline = time.monotonic() + 60
            while p.stats()["totals"]["spawns"] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert p.stats()["totals"]["spawns"] > 0  # spawned through the worker's ForkJoin


def test_gil_state_is_what_the_docs_say():
    """docs/backends.md: the C core declares Py_MOD_GIL_NOT_USED, so on a
    free-threaded CPython importing Penny keeps the GIL off (more of it:
    tests/test_freethreaded.py); on a GIL build the GIL is simply on."""
    with open(os.path.join(ROOT, "src", "penny", "native", "module.c")) as f:
        src = f.read()
    assert "PyUnstable_Module_SetGIL(m, Py_MOD_GIL_NOT_USED)" in src
    out = _run_script("import sys, penny; print(getattr(sys, '_is_gil_enabled', lambda: True)())")
    assert out.returncode == 0, out.stderr
    free_threaded = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    assert out.stdout.strip() == ("False" if free_threaded else "True")


def test_spawn_cache_keeps_no_object_alive(s2):
    """Children of lambdas and of methods bound to an object are not cached by
    function (the cache would keep them, and what they hold, alive)."""
    class Box(list):
        pass

    box = Box()
    ref = weakref.ref(box)

    def parent(b):
        penny.sync(penny.spawn(b.append, 1))
        penny.sync(penny.spawn(lambda: b.append(2)))
        return len(b)

    assert s2.run(parent, box) == 2
    del box
    s2.run(tt.identity, None)  # the collector's last future is another one now
    gc.collect()
    assert ref() is None


def test_interrupt_is_refused_clearly_on_threads():
    with penny.Scheduler(1, backend="threads") as s:
        f = s.submit(pow, 2, 3)
        with pytest.raises(NotImplementedError, match="threads backend"):
            s.interrupt(f)
        f.result(timeout=60)
