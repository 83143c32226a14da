"""`penny.Executor`: the `concurrent.futures.ProcessPoolExecutor` spelling of a Scheduler.

Same signature and the same messages for bad values as ProcessPoolExecutor
(3.10-3.14): ``Executor(max_workers=None, mp_context=None, initializer=None,
initargs=(), *, max_tasks_per_child=None)``, plus Penny's own keywords
(`start_method`, the region sizes of Scheduler).  docs/executor.md says what
is the same and what differs, and which of CPython's own tests run against it
(scripts/cpython-futures-tests.sh).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle

from ..errors import NotImportableError
from .scheduler import Scheduler


class Executor(Scheduler):
    """A `concurrent.futures.ProcessPoolExecutor` drop-in: ``Executor(max_workers=4)``.

    * `mp_context`: a multiprocessing context (or None); its start method is
      the workers' (``start_method=`` says the same by name).
    * `initializer(*initargs)` runs in every worker process before its first
      task, replacement workers included.  If it raises, the exception is
      logged on the ``concurrent.futures`` logger ("Exception in
      initializer:", as the standard library does) and the executor is broken:
      pending futures fail and `submit` raises `penny.BrokenExecutorError`,
      a `concurrent.futures.process.BrokenProcessPool`.
    * `max_tasks_per_child`: a worker exits after that many tasks (a `map`
      chunk is one task) and a new one takes its place; such an exit is not a
      crash.  As in the standard library it needs a start method other than
      "fork", and without `mp_context` it makes the default "spawn".
    """

    def __init__(self, max_workers: int | None = None, mp_context=None, initializer=None, initargs=(), *,
                 max_tasks_per_child: int | None = None, start_method: str | None = None, **kwargs):
        # The checks and messages of ProcessPoolExecutor.__init__, in its order.
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if mp_context is not None:
            method = mp_context.get_start_method()
            if start_method is not None and start_method != method:
                raise ValueError(f"penny: start_method={start_method!r} contradicts mp_context "
                                 f"(start method {method!r}); pass one of them")
            start_method = method
        elif start_method is None and max_tasks_per_child is not None:
            start_method = "spawn"  # as ProcessPoolExecutor: fork cannot be combined with it
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            elif max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
            if (start_method or "") == "fork":
                raise ValueError("max_tasks_per_child is incompatible with"
                                 " the 'fork' multiprocessing start method;"
                                 " supply a different mp_context.")
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._max_tasks_per_child = max_tasks_per_child
        # Read by the supervisor when it starts a worker (runtime/worker.py main).
        self._worker_options = {"initializer": initializer, "initargs": self._initargs,
                                "max_tasks": max_tasks_per_child}
        super().__init__(int(max_workers), start_method=start_method, **kwargs)
        self._mp_context = mp_context if mp_context is not None else multiprocessing.get_context(self._method)

    def submit(self, fn, /, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` in a worker.  As ProcessPoolExecutor, `fn`
        may be any callable that pickles (a bound method, a functools.partial):
        one importable by name is sent as its name, another pickled with the call."""
        self._check_open()
        try:
            fid = self._functions.id_for(fn)
        except NotImportableError as e:
            _check_pickles(fn, e)
            return self._submit(self._functions.id_for(call), (fn, *args), kwargs)
        return self._submit(fid, args, kwargs)

    def map(self, fn, *iterables, timeout=None, chunksize=None, buffersize=None, progress=None):
        """Scheduler.map, for any callable that pickles (as `submit`)."""
        if not iterables:
            raise TypeError("penny: map() needs at least one iterable")
        self._check_open()
        try:
            self._functions.id_for(fn)
        except NotImportableError as e:
            _check_pickles(fn, e)
            cfid = self._functions.id_for(run_chunk_pickled)
            star = len(iterables) > 1
            return self._chunked_map(fn, iterables, chunksize, timeout, progress, buffersize,
                                     lambda chunk: self._submit(cfid, (fn, chunk, star), None))
        return super().map(fn, *iterables, timeout=timeout, chunksize=chunksize, progress=progress,
                           buffersize=buffersize)

    @property
    def _max_workers(self) -> int:
        return self.workers

    @property
    def _processes(self) -> dict:
        """``{pid: process}`` of the live workers, as ProcessPoolExecutor's attribute
        (a snapshot: a replacement worker appears once it is started)."""
        sup = getattr(self, "_supervisor", None)
        procs = [] if sup is None else list(sup.procs)
        return {p.pid: p for p in procs if p is not None}


def _check_pickles(fn, why: NotImportableError) -> None:
    try:
        pickle.dumps(fn, protocol=5)
    except Exception as e:  # noqa: BLE001 - neither importable nor picklable
        raise why from e


def call(fn, /, *args, **kwargs):
    """The task of `Executor.submit` for a callable that is not importable by name."""
    return fn(*args, **kwargs)


def run_chunk_pickled(fn, items: list, star: bool) -> list:
    """A map chunk for a pickled callable (runtime/worker.py run_chunk, run_chunk1)."""
    from ..runtime.worker import keep_partial

    done: list = []
    try:
        done.extend(fn(*args) for args in items) if star else done.extend(map(fn, items))
    except BaseException as e:
        keep_partial(e, done)
        raise
    return done
