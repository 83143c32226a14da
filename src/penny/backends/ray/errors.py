"""The Ray backend's errors, and the Penny form of the exceptions Ray raises.

Also where the backend imports Ray: `ray` and `_rex` (``ray.exceptions``) are
None when the optional extra is not installed, and `_require_ray` says so.
"""

from __future__ import annotations

import concurrent.futures as cf
import re

try:
    import ray
    from ray import exceptions as _rex
except ImportError:  # the optional extra is not installed
    ray = None
    _rex = None

from ...errors import PennyError, RemoteTraceback, TaskError, WorkerCrashedError


class RayUnavailableError(PennyError, ImportError):
    """The Ray backend was asked for and Ray (or a part of it) is not installed."""


class ClusterUnreachableError(PennyError, ConnectionError):
    """The Ray cluster at the given address could not be reached."""


class ReadOnlyArrayError(PennyError, ValueError):
    """A task on the Ray backend wrote into an array argument (Ray's are read-only)."""


_READ_ONLY = (
    "penny: on the Ray backend an array is read-only once it is in Ray's object store (shared, "
    "passed to a task, or returned by one): tasks get zero-copy views of the store, which is "
    "immutable ({}); return a new array (or the changed part) from the task instead of writing "
    "into its argument, or use backend='local', whose shared arrays tasks can write"
)


def _require_ray():
    if ray is None:
        raise RayUnavailableError(
            "penny: the Ray backend needs Ray, which is not installed: pip install 'penny-runtime[ray]' "
            "(or pip install ray)"
        )


def _map_error(e: BaseException, retries) -> BaseException:
    """The Penny form of an exception out of ``ray.get``."""
    if _rex is None or not isinstance(e, _rex.RayError):
        return e
    if isinstance(e, _rex.RayTaskError):
        cause = e.cause
        if isinstance(cause, _rex.RayTaskError):  # a task re-raised a child's RayTaskError
            return _map_error(cause, retries)
        if isinstance(cause, _rex.RayError):
            if type(cause) is _rex.RayError:
                return _unpicklable_error(str(cause))
            return _map_error(cause, retries)  # e.g. ray.get of a crashed child, unwrapped by no one
        if isinstance(cause, BaseException):
            if cause.__cause__ is None:
                cause.__cause__ = RemoteTraceback(str(e))
            return cause
        return TaskError(f"penny: a task failed: {e}", getattr(e, "function_name", "") or "", str(e))
    if isinstance(e, (_rex.WorkerCrashedError, _rex.NodeDiedError, _rex.LocalRayletDiedError,
                      _rex.OutOfMemoryError)):
        err = WorkerCrashedError(
            f"penny: the Ray worker running this task died and Ray's retries are used up "
            f"(retries={retries}; raise Scheduler(retries=...) for flaky nodes): {type(e).__name__}: {e}"
        )
    elif isinstance(e, _rex.ObjectLostError):
        err = WorkerCrashedError(f"penny: the task's result was lost with the Ray node holding it: "
                                 f"{type(e).__name__}: {e}")
    elif isinstance(e, _rex.TaskCancelledError):
        err = cf.CancelledError(f"penny: the task was cancelled: {e}")
    elif isinstance(e, _rex.GetTimeoutError):
        err = TimeoutError(str(e))
    else:
        err = TaskError(f"penny: Ray could not run the task: {type(e).__name__}: {e}", type(e).__name__)
    err.__cause__ = e
    return err


def _unpicklable_error(text: str) -> TaskError:
    """Ray's stand-in for an exception it could not pickle ("Exception T isn't
    serializable: why\nOriginal exception details:\n<traceback>") as a TaskError,
    worded as the local backend's."""
    first, _, details = text.partition("\n")
    m = re.match(r"Exception (\S+) isn't serializable: (.*)", first)
    remote_type, why = (m.group(1), m.group(2)) if m else ("", first)
    lines = [ln for ln in details.splitlines() if ln.strip()]
    last = next((ln for ln in reversed(lines) if remote_type and ln.startswith(remote_type + ":")), "")
    err = TaskError(f"penny: {last or remote_type or 'a task failed'} (the original exception could not "
                    f"be pickled: {why})", remote_type, details)
    err.__cause__ = RemoteTraceback(details or text)
    return err


def _is_read_only_error(e: BaseException) -> bool:
    # NumPy's messages: "assignment destination is read-only", "output array is read-only".
    return type(e) is ValueError and "read-only" in str(e)
