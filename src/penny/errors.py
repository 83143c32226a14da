"""Penny's exceptions.  Every message says what went wrong and what to do."""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool


class PennyError(Exception):
    """Base class of all Penny errors."""


class UnknownFunctionError(PennyError, LookupError):
    """A task named a function id that is not in the scheduler's table."""


class NotImportableError(PennyError, TypeError):
    """A function cannot be named by module and qualified name in a worker."""


class WorkerCrashedError(PennyError):
    """The worker process running a task died (signal or exit code in the message)."""


class TaskError(PennyError):
    """A task failed and its exception could not be sent back as itself.

    `remote_type` is the qualified name of the original exception type and
    `remote_traceback` the worker's formatted traceback.
    """

    def __init__(self, message: str, remote_type: str = "", remote_traceback: str = ""):
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback

    def __reduce__(self):
        return (type(self), (self.args[0], self.remote_type, self.remote_traceback))


class CorruptRegionError(PennyError, RuntimeError):
    """A word read from the shared region is impossible (a ref, index, count,
    capacity or offset outside what the layout allows): another process
    scribbled on the region, or it is not a Penny region.  The native core
    raises this instead of following the word; a scheduler that meets it in
    its collector marks itself broken and fails every pending future."""


class SchedulerClosedError(PennyError, RuntimeError):
    """The scheduler was shut down; it accepts no new tasks."""


class ArgumentPicklingError(PennyError, TypeError):
    """Raised in the caller when a task's arguments (or its callable) cannot be pickled."""


class ArgumentUnpicklingError(PennyError, TypeError):
    """Raised (in the caller's future) when a worker cannot unpickle a task's arguments."""


class ResultPicklingError(PennyError, TypeError):
    """Raised (in the caller's future) when a task's return value cannot be pickled."""


class BrokenExecutorError(PennyError, BrokenProcessPool):
    """A worker's `initializer` raised: the executor is broken (as
    `concurrent.futures.ProcessPoolExecutor` is then), its pending futures
    fail and `submit` raises this.  Also a `BrokenProcessPool`, so code written
    for the standard library catches it unchanged."""


class TaskInterrupted(BaseException):
    """The task was interrupted by `Scheduler.interrupt` (or its parent was).

    Raised inside the task's own code, at the bytecode boundary where the
    worker's main thread next runs Python code of the task, and re-raised by
    ``future.result()``.  Like `KeyboardInterrupt` and
    `asyncio.CancelledError`, a `BaseException` and not a `PennyError`, so
    that a task's ``except Exception:`` does not swallow it (docs/interrupt.md)."""


class RemoteTraceback(Exception):
    """Attached as ``__cause__`` of an exception re-raised from a worker, so the
    worker's traceback prints after the local one (as concurrent.futures does)."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return self.tb
