"""penny.Executor as a concurrent.futures.ProcessPoolExecutor drop-in (docs/executor.md):
its signature and messages, cancel with wait/as_completed, initializer,
max_tasks_per_child, mp_context, no lingering references, map's results
before a failure, and a Scheduler made inside a task."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import logging
import multiprocessing as mp
import queue
import threading
import time
import weakref
from concurrent.futures.process import BrokenProcessPool

import pytest

import penny
from tests import executor_tasks as et
from tests import helpers as h

T = 120  # generous: the test machine is shared and slow


def _ex(*args, **kwargs):
    kwargs.setdefault("start_method", None if "mp_context" in kwargs else "fork")
    if kwargs["start_method"] is None:
        del kwargs["start_method"]
    return penny.Executor(*args, **kwargs)


# ---- the signature and the standard messages -----------------------------------------


@pytest.mark.parametrize("bad", [0, -1])
def test_max_workers_message_is_the_standard_one(bad):
    with pytest.raises(ValueError, match=r"^max_workers must be greater than 0$"):
        penny.Executor(bad)
    with pytest.raises(ValueError, match=r"^max_workers must be greater than 0$"):
        cf.ProcessPoolExecutor(bad)


def test_bad_initializer_and_max_tasks_messages():
    with pytest.raises(TypeError, match=r"^initializer must be a callable$"):
        penny.Executor(1, initializer=5)
    with pytest.raises(TypeError, match=r"^max_tasks_per_child must be an integer$"):
        penny.Executor(1, max_tasks_per_child="3")
    with pytest.raises(ValueError, match=r"^max_tasks_per_child must be >= 1$"):
        penny.Executor(1, max_tasks_per_child=0)
    with pytest.raises(ValueError, match="incompatible with the 'fork' multiprocessing start method"):
        penny.Executor(1, mp_context=mp.get_context("fork"), max_tasks_per_child=2)


def test_positional_signature_and_mp_context():
    # Executor(max_workers, mp_context, initializer, initargs) as ProcessPoolExecutor
    with penny.Executor(2, mp_context=mp.get_context("spawn")) as ex:
        assert ex.start_method == "spawn"
        assert ex._mp_context.get_start_method() == "spawn"
        assert ex.submit(h.add, 1, 2).result(T) == 3
    with penny.Executor(1, mp.get_context("fork"), et.init, ("positional",)) as ex:
        assert ex.start_method == "fork"
        assert ex.submit(et.get_state).result(T)[0] == "positional"


def test_max_tasks_per_child_defaults_to_spawn():
    with penny.Executor(1, max_tasks_per_child=2) as ex:
        assert ex.start_method == "spawn"


# ---- cancel: wait() and as_completed() see cancelled futures ---------------------------


def test_cancelled_future_is_done_for_wait_and_as_completed(gate):
    with _ex(1) as ex:
        blocker = ex.submit(h.block, *gate.args(0, value=1))
        gate.wait_started(0)
        queued = [ex.submit(h.square, i) for i in range(5)]
        assert queued[2].cancel()
        assert queued[2].cancelled() and queued[2].done()
        # wait() called after the cancel: the cancelled one is done at once
        done, not_done = cf.wait([queued[2]], timeout=10)
        assert done == {queued[2]} and not not_done
        # as_completed yields it
        assert list(cf.as_completed([queued[2]], timeout=10)) == [queued[2]]
        # a wait already blocked when the cancel happens is woken by it
        got = []
        t = threading.Thread(target=lambda: got.append(cf.wait([queued[3]], timeout=60)))
        t.start()
        time.sleep(0.3)
        assert queued[3].cancel()
        t.join(30)
        assert not t.is_alive() and got[0][0] == {queued[3]}
        gate.release()
        assert blocker.result(T)[1] == 1
        rest = [f for i, f in enumerate(queued) if i not in (2, 3)]
        assert [f.result(T) for f in rest] == [0, 1, 16]


def test_shutdown_cancel_futures_then_wait_returns(gate):
    ex = _ex(1)
    blocker = ex.submit(h.block, *gate.args(0, value=1))
    gate.wait_started(0)
    queued = [ex.submit(h.square, i) for i in range(20)]
    threading.Timer(0.5, gate.release).start()
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    done, not_done = cf.wait(queued + [blocker], timeout=10)
    assert not not_done
    assert len(list(cf.as_completed(queued, timeout=10))) == 20


# ---- initializer ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_initializer_runs_in_every_worker_before_its_first_task(method):
    with penny.Executor(2, mp_context=mp.get_context(method), initializer=et.init,
                        initargs=("ready",)) as ex:
        got = [f.result(T) for f in [ex.submit(et.get_state) for _ in range(20)]]
    assert {state for state, _ in got} == {"ready"}


def test_initializer_runs_in_replacement_workers():
    with penny.Executor(1, mp_context=mp.get_context("forkserver"), initializer=et.init,
                        initargs=("again",), max_tasks_per_child=1) as ex:
        got = [ex.submit(et.get_state).result(T) for _ in range(3)]
    assert [state for state, _ in got] == ["again"] * 3
    assert len({pid for _, pid in got}) == 3  # each task in a new worker


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_failing_initializer_breaks_the_executor_like_the_standard_library(method):
    ctx = mp.get_context(method)
    log_queue = ctx.Queue()
    ex = penny.Executor(2, mp_context=ctx, initializer=et.init_fail, initargs=(log_queue,))
    try:
        try:
            fut = ex.submit(h.square, 3)
        except BrokenProcessPool:
            fut = None
        if fut is not None:
            with pytest.raises(BrokenProcessPool) as info:
                fut.result(T)
            assert isinstance(info.value, penny.BrokenExecutorError)
            assert isinstance(info.value, penny.PennyError)
        deadline = time.monotonic() + T
        while not ex._broken and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ex._broken
        with pytest.raises(penny.BrokenExecutorError, match="initializer"):
            ex.submit(h.square, 3)
        lines = []
        deadline = time.monotonic() + 30
        while not any("ValueError: error in initializer" in m for m in lines) and time.monotonic() < deadline:
            try:
                lines.append(log_queue.get(timeout=1).getMessage())
            except queue.Empty:
                pass
        assert any("Exception in initializer:" in m and "ValueError: error in initializer" in m for m in lines), lines
    finally:
        ex.shutdown(wait=True)


# ---- max_tasks_per_child ----------------------------------------------------------------


def test_max_tasks_per_child_replaces_the_worker_without_a_crash(caplog):
    with caplog.at_level(logging.WARNING, logger="penny"):
        with penny.Executor(1, mp_context=mp.get_context("forkserver"), max_tasks_per_child=3) as ex:
            pids = [ex.submit(et.getpid).result(T) for _ in range(7)]
            assert [f.result(T) for f in [ex.submit(h.square, i) for i in range(30)]] == [i * i for i in range(30)]
            assert ex._supervisor.crashes == 0
            assert len(ex._processes) == 1
    assert pids[0] == pids[1] == pids[2] != pids[3]
    assert pids[3] == pids[4] == pids[5] != pids[6]
    assert not [r for r in caplog.records if r.name.startswith("penny")], [r.getMessage() for r in caplog.records]


def test_max_tasks_per_child_loses_nothing_queued_on_the_worker():
    # Many tasks in flight: a retiring worker gives back what it took in a batch.
    with penny.Executor(2, mp_context=mp.get_context("forkserver"), max_tasks_per_child=5) as ex:
        futs = [ex.submit(h.square, i) for i in range(200)]
        assert [f.result(T) for f in futs] == [i * i for i in range(200)]
        assert list(ex.map(h.square, range(100), chunksize=3)) == [i * i for i in range(100)]
        assert ex._supervisor.crashes == 0


# ---- no lingering references ------------------------------------------------------------


def _collected(ref, timeout=30.0) -> bool:
    deadline = time.monotonic() + timeout
    while ref() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    return ref() is None


def test_no_reference_to_arguments_or_results_after_the_future_resolves():
    with _ex(2) as ex:
        arg = et.Box(5)
        wr_arg = weakref.ref(arg)
        fut = ex.submit(et.unbox, arg)
        assert fut.result(T) == 5
        del arg
        assert _collected(wr_arg), "the argument is still referenced"
        # a bound method (pickled, as ProcessPoolExecutor does): its object too
        obj = et.Box(7)
        wr_obj = weakref.ref(obj)
        assert ex.submit(obj.get).result(T) == 7
        del obj
        assert _collected(wr_obj), "the bound method's object is still referenced"
        # the result: referenced by the future only
        fut = ex.submit(et.new_box, 3)
        wr_res = weakref.ref(fut.result(T))
        del fut
        assert _collected(wr_res), "the result is still referenced"


def test_map_iterator_keeps_no_reference_to_results_it_yielded():
    with _ex(2) as ex:
        for box in ex.map(et.new_box, range(20), chunksize=5):
            wr = weakref.ref(box)
            del box
            gc.collect()
            assert wr() is None


# ---- map ------------------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [None, 1, 10, 100])
def test_map_delivers_every_result_before_a_failing_item(chunksize):
    with _ex(2) as ex:
        got = []
        with pytest.raises(KeyError):
            for x in ex.map(et.fail_at, range(100), chunksize=chunksize):
                got.append(x)
    assert got == [2 * i for i in range(37)]


def test_map_buffersize_and_its_messages():
    with _ex(2) as ex:
        assert list(ex.map(h.square, range(50), buffersize=2)) == [i * i for i in range(50)]
        assert list(ex.map(h.square, iter(range(50)), buffersize=1, chunksize=4)) == [i * i for i in range(50)]
        with pytest.raises(TypeError, match=r"^buffersize must be an integer or None$"):
            ex.map(h.square, range(3), buffersize=1.5)
        with pytest.raises(ValueError, match=r"^buffersize must be None or > 0$"):
            ex.map(h.square, range(3), buffersize=0)


def test_map_timeout_runs_from_the_call():
    with _ex(1) as ex:
        it = ex.map(et.sleep, [0.0, 5.0], timeout=1.0, chunksize=1)
        time.sleep(1.5)
        t0 = time.monotonic()
        with pytest.raises(cf.TimeoutError):
            list(it)
        assert time.monotonic() - t0 < 4.0  # not a fresh 1 s from the first next() plus the 5 s task


def test_submit_and_map_a_callable_that_is_not_importable_by_name():
    with _ex(2) as ex:
        box = et.Box(4)
        assert ex.submit(box.get).result(T) == 4
        assert list(ex.map(et.Box(0).__class__, range(3))) and [b.n for b in ex.map(et.Box, range(3))] == [0, 1, 2]
        # and what ProcessPoolExecutor refuses: a lambda, a closure
        k = 2
        assert ex.submit(lambda: 1).result(T) == 1
        assert list(ex.map(lambda x: x * k, range(3))) == [0, 2, 4]


# ---- a Scheduler made inside a task -----------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_scheduler_inside_a_task_is_a_penny_error_naming_spawn(method):
    with penny.Executor(1, mp_context=mp.get_context(method)) as ex:
        name, is_penny, text = ex.submit(et.make_scheduler).result(T)
    assert is_penny, (name, text)
    assert "penny.spawn" in text and "daemonic" not in text
