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

import logging as _logging

# A library adds no handler of its own: the application configures logging.
# Records go to "penny" and its children ("penny.supervisor", "penny.worker", ...).
_logging.getLogger("penny").addHandler(_logging.NullHandler())

from .errors import (  # noqa: E402
    NotImportableError,
    PennyError,
    SchedulerClosedError,
    TaskError,
    UnknownFunctionError,
    WorkerCrashedError,
)
from .fibers import Handle, join, parallel_for, spawn, sync
from .scheduler import Executor, Scheduler
from .shared import share, shared_array, shared_buffer

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
    "share",
    "shared_array",
    "shared_buffer",
    "spawn",
    "sync",
]
