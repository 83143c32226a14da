"""Penny: a Cilk-style work-stealing parallel runtime for Python.

Worker processes, Chase-Lev deques and a global injection queue in one
shared-memory region, atomics and futexes from a small C core.

    import penny

    def add(a, b):
        return a + b

    with penny.Scheduler(4, functions={1: add}) as s:
        assert s.new_task(1, [40, 2]).result() == 42
        assert s.submit(add, 1, 2).result() == 3
"""

from .errors import (
    NotImportableError,
    PennyError,
    SchedulerClosedError,
    TaskError,
    UnknownFunctionError,
    WorkerCrashedError,
)
from .fibers import Handle, join, parallel_for, spawn, sync
from .scheduler import Executor, Scheduler

__version__ = "0.1.0"

__all__ = [
    "Executor",
    "Handle",
    "NotImportableError",
    "PennyError",
    "Scheduler",
    "SchedulerClosedError",
    "TaskError",
    "UnknownFunctionError",
    "WorkerCrashedError",
    "__version__",
    "join",
    "parallel_for",
    "spawn",
    "sync",
]
