"""`ThreadScheduler` and `ThreadExecutor`: Penny's runtime on threads of this process.

The local Scheduler with two things swapped: the workers are threads
(supervisor.py) and a task travels as a key into the object table
(calls.py), so `submit`, `new_task` and `map` put their call (a `ThreadFuture`) in the table and
inject its key through the same C fast path (`Shared.inject`).  The
collector, the backlog, cancellation, stats, tracing, shared arrays and
shutdown are the Scheduler's own.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
import weakref

from ...errors import UnknownFunctionError
from concurrent.futures._base import PENDING

from ...frontend.futures import TaskFuture, _Condition
from ...frontend.scheduler import Scheduler
from ...runtime.worker import PARTIAL
from ...wire.functions import validate_static
from .calls import CALL_FID, Call, CallTable
from .supervisor import ThreadSupervisor

#: Every ThreadScheduler not yet shut down (for the interpreter-exit hook).
_live: "weakref.WeakSet" = weakref.WeakSet()


class ThreadFuture(TaskFuture):
    """A task's future, which is also its call (calls.py): the worker thread
    runs it and leaves the outcome on it; the collector's `set_result` then
    resolves it with that outcome, by reference.  One object per task."""

    def __init__(self, scheduler, fn, args, kwargs):
        # TaskFuture.__init__'s fields, written out (one call less per submit).
        self._condition = _Condition()
        self._state = PENDING
        self._result = None
        self._exception = None
        self._waiters = []
        self._done_callbacks = []
        self._scheduler = scheduler
        self._ref = 0
        self._key = 0
        self.fn, self.args, self.kwargs = fn, args, kwargs or None
        self.value = None
        self.failed = False

    run = Call.run  # on the worker thread: fn(*args, **kwargs) -> value / failed

    def set_result(self, result) -> None:
        """From the collector once the task's record says DONE (`result` is the
        record's inline None): resolve with the outcome the worker left here."""
        table = getattr(self._scheduler, "_table", None)
        if table is not None:
            table.calls.pop(self._key, None)
        value, self.value = self.value, None
        if self.failed:
            cf.Future.set_exception(self, value)
        else:
            cf.Future.set_result(self, value)


def _run_chunk(fn, items: list) -> list:
    """Internal task behind ThreadScheduler.map over several iterables."""
    done: list = []
    try:
        done.extend(fn(*args) for args in items)
    except BaseException as e:
        _keep_partial(e, done)
        raise
    return done


def _run_chunk1(fn, items: list) -> list:
    """Internal task behind ThreadScheduler.map over one iterable."""
    done: list = []
    try:
        done.extend(map(fn, items))
    except BaseException as e:
        _keep_partial(e, done)
        raise
    return done


def _keep_partial(exc: BaseException, done: list) -> None:
    # By reference: no need to check that the results pickle (runtime/worker.py keep_partial).
    if done and hasattr(exc, "__dict__"):
        exc.__dict__[PARTIAL] = done


class ThreadScheduler(Scheduler):
    """``Scheduler(workers, backend="threads")``: worker threads of this process
    running Penny's worker loop over a private region; arguments and results
    pass by reference (nothing is pickled; identity is kept).

    `functions` may hold any callables.  `start_method` is refused (there is no
    process to start).  The region keywords, `seed` and `trace` are the
    Scheduler's.  `initializer(*initargs)` runs on every worker thread before
    its first task (`penny.Executor`'s semantics)."""

    def interrupt(self, future) -> bool:
        """Not available on this backend yet (docs/interrupt.md): Penny's
        interrupt is a signal to a worker process's main thread."""
        raise NotImplementedError(
            "penny: Scheduler.interrupt is not implemented on the threads backend yet; "
            "future.cancel() withdraws a queued task")

    def __init__(self, workers: int | None = None, functions: dict | None = None, start_method: str | None = None,
                 *, initializer=None, initargs=(), thread_name_prefix: str = "", retries: int = 1, seed=None,
                 **kwargs):
        if "_table" in self.__dict__:
            # `Scheduler(..., backend="threads")`: __new__ made and initialised us;
            # type.__call__ calls __init__ again on a Scheduler subclass.
            return
        kwargs.pop("backend", None)
        if start_method is not None:
            raise ValueError(f"penny: backend='threads' starts no processes; start_method={start_method!r} "
                             "has no meaning there (leave it out)")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if functions is not None:
            validate_static({fid: _any for fid in functions}, "fork")  # the same id checks and messages
            for fid, fn in functions.items():
                if not callable(fn):
                    raise TypeError(f"penny: functions[{fid}] = {fn!r} is not callable")
        self._static = dict(functions or {})
        self._table = CallTable()
        self._calls, self._next_key = self._table.calls, self._table.next  # the submit path's two steps
        self._thread_options = {"initializer": initializer, "initargs": tuple(initargs)}
        self._thread_prefix = thread_name_prefix
        self._seed = seed
        super().__init__(workers, None, None, retries=retries, seed=seed, **kwargs)
        _live.add(self)

    def _make_supervisor(self, static, seed):
        return ThreadSupervisor(self, seed, self._thread_options, self._thread_prefix)

    # ---- submitting ---------------------------------------------------------------
    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        """Run ``fn(*args, **kwargs)`` on a worker thread; any callable, any arguments."""
        if not callable(fn):
            raise TypeError(f"penny: {fn!r} is not callable")
        return self._submit_call(fn, args, kwargs)

    def new_task(self, fn_id: int, args=()) -> cf.Future:
        """Run function `fn_id` of the static table with the argument list `args`."""
        self._check_open()
        fn = self._static.get(fn_id) if isinstance(fn_id, int) else None
        if fn is None:
            raise UnknownFunctionError(
                f"penny: no function with id {fn_id!r} in this scheduler's table "
                f"(ids: {sorted(self._static)}); pass it in Scheduler(functions={{id: fn}})"
            )
        if not isinstance(args, (list, tuple)):
            raise TypeError(f"penny: new_task arguments must be a list or tuple, got {type(args).__name__}")
        return self._submit_call(fn, args, None)

    def _submit_call(self, fn, args, kwargs) -> cf.Future:
        if self._closed or self._broken is not None or self._foreign():
            self._refuse()
        fut = ThreadFuture(self, fn, args, kwargs)
        fut._key = key = self._next_key()
        self._calls[key] = fut
        if not self._backlog:
            ref = self._s.inject(CALL_FID, (key,), fut, self._futures)
            if ref > 0:
                return fut
            if ref < 0:
                self._table.pop(key)
                raise RuntimeError("penny: a call key did not fit a task record (broken invariant)")
        # Every record is in flight: the call waits here (by reference, as ever).
        with self._backlog_lock:
            self._backlog.append((fut, CALL_FID, (key,), None, None))
        self._drain_backlog()
        return fut

    def _cancel(self, fut) -> bool:
        ok = super()._cancel(fut)
        if ok:
            self._table.pop(fut._key)
        return ok

    def map(self, fn, *iterables, timeout=None, chunksize=None, progress=None, buffersize=None):
        """Ordered results of ``fn(*args)`` over zipped `iterables` (the Scheduler's
        semantics: chunked, lazy input, a bounded window in flight)."""
        if not iterables:
            raise TypeError("penny: map() needs at least one iterable")
        self._check_open()
        runner = _run_chunk1 if len(iterables) == 1 else _run_chunk
        return self._chunked_map(fn, iterables, chunksize, timeout, progress, buffersize,
                                 lambda chunk: self._submit_call(runner, (fn, chunk), None))

    # ---- stopping -------------------------------------------------------------------
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """The Scheduler's; called from a task (a worker thread), it cannot wait
        for that task and finishes in the background, as with ``wait=False``."""
        sup = getattr(self, "_supervisor", None)
        if wait and sup is not None and sup.is_worker_thread():
            wait = False
        super().shutdown(wait, cancel_futures=cancel_futures)

    def _teardown(self, force: bool) -> None:
        try:
            super()._teardown(force)
        finally:
            self._table.clear()
            _live.discard(self)

    # ---- introspection ----------------------------------------------------------------
    @property
    def start_method(self) -> str:
        return "threads"

    @property
    def backend(self) -> str:
        return "threads"

    def __repr__(self):
        state = "closed" if self._closed else "running"
        return f"<penny.ThreadScheduler workers={self.workers} {state}>"


def _any(*args):  # a stand-in callable for validate_static's id checks
    return None


class ThreadExecutor(ThreadScheduler):
    """``penny.Executor(max_workers, backend="threads")``: the Executor's
    spelling (``max_workers``, ``initializer``, ``initargs``, the standard
    messages) on worker threads; ``mp_context`` and ``max_tasks_per_child``
    have no meaning there and are refused."""

    def __init__(self, max_workers: int | None = None, mp_context=None, initializer=None, initargs=(), *,
                 max_tasks_per_child: int | None = None, thread_name_prefix: str = "", **kwargs):
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if mp_context is not None or max_tasks_per_child is not None:
            raise ValueError("penny: backend='threads' runs tasks on threads of this process: "
                             "mp_context and max_tasks_per_child have no meaning there")
        super().__init__(int(max_workers), initializer=initializer, initargs=initargs,
                         thread_name_prefix=thread_name_prefix, **kwargs)

    @property
    def _max_workers(self) -> int:
        return self.workers

    def __repr__(self):
        state = "closed" if self._closed else "running"
        return f"<penny.ThreadExecutor max_workers={self.workers} {state}>"


def _abort_all() -> None:
    """Interpreter exit: stop every threads scheduler still running, before
    threading joins the (non-daemon) worker threads."""
    for sched in list(_live):
        sched._abort()


try:
    # Runs at the start of threading._shutdown, before non-daemon threads are
    # joined (concurrent.futures.thread registers its exit hook the same way);
    # a plain atexit hook would run only after that join, which would wait forever.
    threading._register_atexit(_abort_all)
except (AttributeError, RuntimeError):  # pragma: no cover - Python < 3.9, or already exiting
    import atexit

    atexit.register(_abort_all)
