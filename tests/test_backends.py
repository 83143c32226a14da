"""The same Penny programs on every backend: Penny's own worker processes
("local"), Penny's runtime on threads ("threads") and Ray.

Every test that takes `backend` (or `sched`) runs once per backend, with the
same task functions (tests/backend_tasks.py).  Where a backend's contract
differs (threads pass by reference, so nothing fails to pickle; there is no
process to kill), the test asserts that backend's own contract.  Ray is started once for the
module by the `backend` fixture (2 CPUs, no dashboard) and stopped after it;
the schedulers attach to it.  The Ray parameter is skipped, with the reason
given, only where Ray is not installed.
"""

from __future__ import annotations

import concurrent.futures as cf
import inspect
import json
import os
import subprocess
import sys
import threading
import time
import traceback

import pytest

import penny
from penny.errors import RemoteTraceback
from tests import backend_tasks as bt
from tests.helpers import ROOT

pytestmark = pytest.mark.timeout(240)

BACKENDS = ("local", "threads", "ray")


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    if request.param in ("local", "threads"):
        yield request.param
        return
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'penny-runtime[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20)
    try:
        yield "ray"
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def sched(backend):
    """One 2-worker scheduler per backend for the tests that do not stop it."""
    s = penny.Scheduler(2, backend=backend)
    try:
        yield s
    finally:
        s.shutdown()


@pytest.fixture
def make(backend):
    """Schedulers of this backend made by the test, all shut down afterwards."""
    made = []

    def make_(*args, **kwargs):
        s = penny.Scheduler(*args, backend=backend, **kwargs)
        made.append(s)
        return s

    yield make_
    for s in made:
        _shutdown_or_fail(s)


def _shutdown_or_fail(s, timeout=90):
    """Shut `s` down; if a task hangs, stop it anyway and fail (rather than hang)."""
    t = threading.Thread(target=s.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        s.shutdown(wait=False, cancel_futures=True)
        if hasattr(s, "_abort"):
            s._abort()
        pytest.fail(f"{s!r}: shutdown still waiting for a task after {timeout} s")


def _has_shared_arrays(s) -> bool:
    return hasattr(s, "shared_array") and hasattr(s, "share")


# ---- the API ----------------------------------------------------------------------------


def test_quick_start(make, backend):
    s = make(2, functions={1: bt.add})
    assert s.new_task(1, [40, 2]).result(timeout=120) == 42
    assert s.new_task(1, (1, 2)).result(timeout=120) == 3
    with pytest.raises(penny.UnknownFunctionError):
        s.new_task(99, [1, 2])
    assert s.workers == 2


def test_submit_run_and_futures(sched, backend):
    f = sched.submit(bt.add, 1, 2)
    assert isinstance(f, cf.Future)
    assert f.result(timeout=120) == 3
    assert sched.run(bt.echo_kw, 1, c=3) == (1, 10, 3)
    futs = [sched.submit(bt.square, i) for i in range(20)]
    done, not_done = cf.wait(futs, timeout=120)
    assert not not_done
    assert sorted(f.result() for f in cf.as_completed(futs, timeout=120)) == [i * i for i in range(20)]
    seen = threading.Event()
    g = sched.submit(bt.add, 2, 2)
    g.add_done_callback(lambda fut: seen.set())
    assert g.result(timeout=120) == 4
    assert seen.wait(30)
    polled = sched.submit(bt.add, 3, 3)
    deadline = time.monotonic() + 120
    while not polled.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert polled.done() and polled.result() == 6
    lock = threading.Lock()
    if backend == "threads":  # by reference: nothing is pickled, the task gets the object itself
        assert sched.submit(bt.identity, lock).result(timeout=120) is lock
        return
    with pytest.raises(TypeError):  # an argument that cannot be pickled fails in the caller
        sched.submit(bt.add, lock, 1)


def test_stats_count_tasks(sched, backend):
    before = sched.stats()["totals"]["tasks"]
    assert sched.run(bt.fib, 24, 20) == bt.fib_serial(24)
    deadline = time.monotonic() + 60  # local counters are published when the worker goes idle
    while sched.stats()["totals"]["tasks"] <= before and time.monotonic() < deadline:
        time.sleep(0.01)
    st = sched.stats()
    assert st["totals"]["tasks"] > before
    fire_and_forget = [sched.submit(bt.square, i) for i in range(4)]
    cf.wait(fire_and_forget, timeout=120)
    assert sched.stats()["pending"] == 0
    if backend == "ray":
        assert st["backend"] == "ray"
        # fib(24) with cutoff 20: 12 calls with n >= 20, each spawns one child, plus the root.
        assert st["totals"]["tasks"] - before == 13
        assert st["pending"] == 0


# ---- nested fork-join inside tasks ------------------------------------------------------


def test_fib_nested_spawn_sync(sched):
    assert sched.run(bt.fib, 25, 21) == bt.fib_serial(25)
    assert sched.run(bt.fib, 10, 20) == 55  # below the cutoff: no spawn at all


def test_nqueens_nested_spawn(sched):
    assert sched.run(bt.nqueens, 6) == 4       # two spawning levels
    assert sched.run(bt.nqueens, 8, (), 1) == 92


def test_join_inside_a_task(sched):
    assert sched.run(bt.join_fib, 18) == bt.fib_serial(18)


def _pieces(directory):
    return sorted(tuple(int(x) for x in name.split("-")) for name in os.listdir(directory))


def _assert_cover(pieces, n, grain):
    assert pieces[0][0] == 0 and pieces[-1][1] == n
    for (lo, hi), (lo2, _) in zip(pieces, pieces[1:]):
        assert hi == lo2
    assert all(0 < hi - lo <= grain for lo, hi in pieces)


def test_parallel_for_inside_a_task(sched, tmp_path):
    assert sched.run(bt.pfor_task, str(tmp_path), 100, 10) == 100
    _assert_cover(_pieces(tmp_path), 100, 10)


def test_spawn_join_parallel_for_outside_tasks(backend, tmp_path):
    with penny.Scheduler(2, backend=backend):
        h = penny.spawn(bt.add, 1, 2)
        assert penny.sync(h) == 3
        assert penny.join((bt.add, 1, 2), (bt.add, 3, 4)) == (3, 7)
        penny.parallel_for(0, 64, bt.body_for(str(tmp_path)), grain=8)
        _assert_cover(_pieces(tmp_path), 64, 8)


# ---- exceptions and the implicit sync ---------------------------------------------------


def test_nested_exception_keeps_its_type(sched, backend):
    with pytest.raises(bt.Boom) as info:
        sched.run(bt.fail_nested, 3)
    assert type(info.value) is bt.Boom
    assert str(info.value) == "boom 0"
    if backend == "threads":  # the exception object itself, its traceback reaching the raise in the task
        assert "fail_nested" in [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    else:
        assert isinstance(info.value.__cause__, RemoteTraceback)  # the worker's traceback
    e = sched.submit(bt.fail, 7).exception(timeout=120)
    assert type(e) is bt.Boom and str(e) == "boom 7"
    assert sched.run(bt.catch_child, 5) == "caught boom 5"  # caught by type in the parent


def test_exception_that_cannot_travel_is_a_task_error(sched, backend):
    if backend == "threads":  # it does not travel: the caller gets the very exception
        with pytest.raises(bt.Unpicklable, match="cannot send 3") as info:
            sched.run(bt.fail_unpicklable, 3)
        assert type(info.value.lock) is type(threading.Lock())
        return
    with pytest.raises(penny.TaskError) as info:
        sched.run(bt.fail_unpicklable, 3)
    assert info.value.remote_type == "tests.backend_tasks.Unpicklable"
    assert "cannot send 3" in str(info.value)


def test_implicit_sync_waits_for_children(sched, tmp_path):
    paths = [str(tmp_path / f"child-{i}") for i in range(3)]
    assert sched.run(bt.spawn_and_forget, paths) == 3
    assert all(os.path.exists(p) for p in paths)  # the parent returned only after its children
    with pytest.raises(bt.Boom):  # an exception nobody synced fails the parent
        sched.run(bt.spawn_failing_and_forget, 1)
    assert sched.run(bt.bare_sync, 5) == sum(i * i for i in range(5))


# ---- map --------------------------------------------------------------------------------


def test_map_ordered_and_chunked(sched):
    want = [i * i for i in range(100)]
    assert list(sched.map(bt.square, range(100))) == want
    assert list(sched.map(bt.square, range(100), chunksize=1)) == want
    assert list(sched.map(bt.square, range(100), chunksize=7)) == want
    assert list(sched.map(bt.square, (i for i in range(100)), timeout=120)) == want  # unknown length
    assert list(sched.map(bt.mul, range(10), range(10, 30))) == [i * (i + 10) for i in range(10)]
    assert list(sched.map(bt.square, [])) == []
    assert list(sched.map(bt.square, range(10_000))) == [i * i for i in range(10_000)]
    with pytest.raises(ValueError):
        sched.map(bt.square, range(3), chunksize=0)
    if "progress" in inspect.signature(sched.map).parameters:
        assert list(sched.map(bt.square, range(50), progress=True)) == want[:50]
    with pytest.raises(bt.Boom):
        list(sched.map(bt.fail, range(3)))


def test_stats_reset_and_trace(sched, backend, tmp_path):
    sched.run(bt.add, 1, 1)
    sched.stats(reset=True)
    if backend == "ray":  # (local workers publish their counters lazily: may lag into this interval)
        assert sched.stats()["totals"]["tasks"] == 0
    sched.run(bt.add, 1, 1)
    deadline = time.monotonic() + 60  # local counters are published when the worker goes idle
    while sched.stats()["totals"]["tasks"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sched.stats()["totals"]["tasks"] >= 1
    path = tmp_path / "trace.json"
    with sched.trace(str(path)):
        assert sched.run(bt.fib, 21, 20) == bt.fib_serial(21)
    with open(path) as f:
        assert json.load(f)  # Chrome trace JSON, not empty


# ---- shared arrays ----------------------------------------------------------------------


def test_shared_array_passing(sched, backend):
    np = pytest.importorskip("numpy", reason="shared arrays need NumPy")
    if not _has_shared_arrays(sched):
        pytest.skip(f"Scheduler.shared_array/share are not in the {backend} backend yet (issue 4)")
    n = 100_000
    arr = sched.shared_array((n,), "f8")
    arr[:] = np.arange(n, dtype="f8")
    total = float(np.arange(n, dtype="f8").sum())
    parts = [sched.submit(bt.array_sum, arr, lo, lo + n // 8) for lo in range(0, n, n // 8)]
    assert sum(f.result(timeout=120) for f in parts) == total
    assert sched.run(bt.array_psum, arr, 0, n, n // 4) == total  # handed on from task to children
    shared = sched.share(np.ones(1000))
    assert sched.run(bt.array_sum, shared) == 1000.0
    assert float(sched.run(bt.array_double, arr)[-1]) == 2.0 * (n - 1)
    if backend == "ray":
        # In the object store once; every task gets the same object, zero-copy and read-only.
        ref = arr._penny_ref
        assert ref is not None
        assert sched.run(bt.array_info, arr) == (False, False, n)
        assert arr._penny_ref is ref


def test_shared_array_writes(sched, backend):
    pytest.importorskip("numpy", reason="shared arrays need NumPy")
    if not _has_shared_arrays(sched):
        pytest.skip(f"Scheduler.shared_array/share are not in the {backend} backend yet (issue 4)")
    arr = sched.shared_array((10,), "f8", fill=0.0)
    if backend in ("local", "threads"):
        # Penny's shared memory (threads: the same memory): the task writes into the caller's array.
        assert sched.run(bt.array_write, arr, 3, 5.0) == 5.0
        assert arr[3] == 5.0
        return
    # Ray's object store is immutable: a clear error that names Ray and says what to do.
    from penny.backends.ray import ReadOnlyArrayError

    for fn, args in ((bt.array_write, (arr, 3, 5.0)), (bt.array_inplace_add, (arr,))):
        with pytest.raises(ReadOnlyArrayError, match="Ray") as info:
            sched.run(fn, *args)
        assert isinstance(info.value, ValueError) and "return a new array" in str(info.value)
    with pytest.raises(ReadOnlyArrayError):  # here too, once it is in the object store
        arr[0] = 1.0
    assert sched.run(bt.array_double, arr).tolist() == [0.0] * 10


# ---- crashes, shutdown, configuration ----------------------------------------------------


def _thread_fault_breaks_loudly(make):
    """The threads backend has no process to kill: its crash is a fault of
    Penny's own code on a worker thread, which breaks the scheduler loudly
    (every pending future fails, submits refuse) instead of hanging it."""
    s = make(2)
    assert s.submit(bt.add, 1, 1).result(timeout=120) == 2
    # One task done says one worker runs; each thread builds its own worker, so
    # wait until every thread has (on 3.13t the second is often still starting).
    deadline = time.monotonic() + 120
    while any(w is None for w in s._supervisor.workers):
        assert time.monotonic() < deadline, "a worker thread never started"
        time.sleep(0.01)
    for w in s._supervisor.workers:
        w.find_work = _injected_fault  # the loop calls it when its own deque is empty
    futs = [s.submit(bt.nap, 0.05) for _ in range(6)]
    for f in futs:
        with pytest.raises(penny.WorkerCrashedError, match="injected fault") as info:
            f.result(timeout=120)
        assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(penny.SchedulerClosedError, match="broken"):
        s.submit(bt.add, 1, 1)
    assert isinstance(s._broken, penny.WorkerCrashedError)


def _injected_fault():
    raise RuntimeError("injected fault")


def test_killed_worker(make, backend, tmp_path):
    if backend == "threads":
        return _thread_fault_breaks_loudly(make)
    s = make(2, retries=0)
    with pytest.raises(penny.WorkerCrashedError):
        s.submit(bt.die).result(timeout=120)
    assert s.submit(bt.add, 1, 1).result(timeout=120) == 2  # still usable
    s1 = make(2, retries=1)
    assert s1.submit(bt.die_once, str(tmp_path / "attempt")).result(timeout=120) == "second attempt"


def test_killed_worker_under_a_parent(make, backend):
    if backend == "threads":
        return _thread_fault_breaks_loudly(make)
    s = make(2, retries=0)
    for fn, args in ((bt.spawn_die, ()), (bt.spawn_die_stolen, (0.3,))):
        fut = s.submit(fn, *args)
        if backend == "ray":
            # Each child is its own Ray task: its parent survives and its sync raises.
            assert fut.result(timeout=120) == "caught WorkerCrashedError"
        else:
            # Local: a stolen child dies alone and its parent's sync raises; an unstolen
            # one runs inline in its parent's worker, both die, and the caller gets it.
            try:
                assert fut.result(timeout=120) == "caught WorkerCrashedError"
            except penny.WorkerCrashedError:
                pass
    assert s.submit(bt.add, 2, 2).result(timeout=120) == 4


def test_shutdown_from_a_done_callback_while_a_task_is_pending(backend):
    """shutdown(wait=True) called from a done-callback cannot wait there (the
    thread running callbacks may be the one that would complete the pending
    futures): it finishes in the background, the pending task still completes
    and nothing hangs (seen hanging on Ray: Ray's callback thread waited for
    the future only it could resolve)."""
    s = penny.Scheduler(2, backend=backend)
    slow = s.submit(bt.nap, 1.0)
    fast = s.submit(bt.add, 1, 2)
    called = threading.Event()

    def stop(_fut):
        s.shutdown(wait=True)
        called.set()

    fast.add_done_callback(stop)  # before the result: resolved in the background
    assert called.wait(60), "shutdown(wait=True) in a done-callback never returned"
    assert slow.result(timeout=60) == 1.0
    assert fast.result(timeout=60) == 3
    _shutdown_or_fail(s)


def test_use_after_shutdown(backend):
    s = penny.Scheduler(2, functions={1: bt.add}, backend=backend)
    assert s.new_task(1, [1, 2]).result(timeout=120) == 3
    pending = [s.submit(bt.square, i) for i in range(4)]
    s.shutdown(wait=True)
    assert [f.result(timeout=60) for f in pending] == [0, 1, 4, 9]  # wait=True finished them
    with pytest.raises(penny.SchedulerClosedError):
        s.submit(bt.add, 1, 2)
    with pytest.raises(penny.SchedulerClosedError):
        s.new_task(1, [1, 2])
    with pytest.raises(penny.SchedulerClosedError):
        s.map(bt.square, range(3))
    s.shutdown()  # again: a no-op
    if backend == "ray":
        import ray

        assert ray.is_initialized()  # it attached to the fixture's Ray: left running


def test_shutdown_cancel_futures(make):
    s = make(2)
    futs = [s.submit(bt.nap, 0.5) for _ in range(8)]
    s.shutdown(wait=True, cancel_futures=True)
    assert all(f.done() for f in futs)
    assert any(f.cancelled() for f in futs)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        penny.Scheduler(2, backend="dask")


def test_ray_unreachable_address_is_named():
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'penny-runtime[ray]')")
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"127.0.0.1:{port}"
    with pytest.raises(ConnectionError, match=address) as info:
        penny.Scheduler(backend="ray", address=address)
    assert isinstance(info.value, penny.PennyError)


def test_without_ray_the_error_says_what_to_install():
    code = (
        "import sys; sys.modules['ray'] = None\n"  # import ray now raises ImportError
        "import penny\n"
        "try:\n"
        "    penny.Scheduler(backend='ray')\n"
        "except ImportError as e:\n"
        "    print('IMPORTERROR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "src")})
    assert "IMPORTERROR" in out.stdout, out.stderr
    assert "pip install 'penny-runtime[ray]'" in out.stdout
