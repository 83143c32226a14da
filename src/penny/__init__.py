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

from ._version import __version__  # noqa: E402
from .errors import (  # noqa: E402
    ArgumentPicklingError,
    ArgumentUnpicklingError,
    BrokenExecutorError,
    CorruptRegionError,
    NotImportableError,
    PennyError,
    ResultPicklingError,
    SchedulerClosedError,
    TaskError,
    TaskInterrupted,
    UnknownFunctionError,
    WorkerCrashedError,
)
from .frontend.api import Handle, join, parallel_for, spawn, sync  # noqa: E402
from .frontend.base import register_backend as _register_backend  # noqa: E402
from .frontend.executor import Executor  # noqa: E402
from .frontend.scheduler import Scheduler  # noqa: E402
from .wire.shared import share, shared_array, shared_buffer  # noqa: E402


def _ray_scheduler(*args, **kwargs):
    """Scheduler(backend="ray"): imported on first use (Ray is optional)."""
    from .backends.ray import RayScheduler

    return RayScheduler(*args, **kwargs)


def _threads_scheduler(*args, **kwargs):
    """Scheduler(backend="threads"): worker threads of this process."""
    from .backends.threads import ThreadScheduler

    return ThreadScheduler(*args, **kwargs)


def _threads_executor(*args, **kwargs):
    """Executor(backend="threads")."""
    from .backends.threads import ThreadExecutor

    return ThreadExecutor(*args, **kwargs)


# The package is the top layer: it tells the frontend which backends exist.
_register_backend("ray", _ray_scheduler)
_register_backend("threads", _threads_scheduler, _threads_executor)

__all__ = [
    "ArgumentPicklingError",
    "ArgumentUnpicklingError",
    "BrokenExecutorError",
    "CorruptRegionError",
    "Executor",
    "Handle",
    "NotImportableError",
    "PennyError",
    "ResultPicklingError",
    "Scheduler",
    "SchedulerClosedError",
    "TaskError",
    "TaskInterrupted",
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
