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

from .scheduler import Scheduler


class Executor(Scheduler):
    """A `concurrent.futures.ProcessPoolExecutor` drop-in: ``Executor(max_workers=4)``.

    `submit` and `map` are the Scheduler's: any callable that pickles, and
    lambdas, closures and functions of ``__main__`` too (wire/functions.py).

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

    _kind = "executor"

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
