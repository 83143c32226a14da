"""Penny on a Ray cluster: ``penny.Scheduler(backend="ray")``.

`RayScheduler` offers the local Scheduler's API (`new_task`, `submit`, `run`,
`map`, `shutdown`, `stats`, `workers`, `shared_array`, `share`, context
manager, `concurrent.futures.Future` results) and runs every task as a Ray
task.  Task functions are unchanged: inside a task, `penny.spawn`,
`penny.sync`, `penny.join` and `penny.parallel_for` work as on the local
backend.

How a task runs
---------------
Each function gets one Ray remote function per process (cached): a small
wrapper, `_execute`, around it.  While the function runs, the wrapper
installs a *task context* for the running thread
(``penny.scheduler._task_context``, which `current_scheduler()` checks
first).  `penny.spawn` outside a Penny worker falls back to
``current_scheduler().submit``, so a spawn inside a Ray task launches a child
Ray task and returns a `RayHandle`; ``penny.sync(h)`` / ``h.result()`` is
``ray.get``, which gives the task's CPU back to Ray while it waits, so nested
fork-join at any depth cannot deadlock the cluster.  When the function
returns, the wrapper does the implicit sync of the local backend: children
spawned and never synced are waited for, and the exception of one nobody
observed fails the parent.

A task that spawned children returns ``_Counted(value, n)``: `n` counts it
and all its descendants, summed up the tree as children are synced, so
``stats()["totals"]["tasks"]`` counts nested tasks as the local backend does,
at no extra round trip.  A task without children returns its value as is
(Ray then keeps its fast path for plain values: msgpack, not pickle).

Errors
------
A task's exception comes back as itself (not Ray's ``RayTaskError(X)``
wrapper), with the remote traceback as its ``__cause__``; a worker killed
with Ray's retries (``retries`` = Ray's ``max_retries``) used up becomes
`penny.WorkerCrashedError`; a cluster that cannot be reached,
`ClusterUnreachableError` (a `ConnectionError`) naming the address.

Shared arrays
-------------
Ray's object store is immutable: `share(a)` puts `a` there once
(``ray.put``) and returns a read-only, zero-copy view of it; passing that
view (or handing it on from a task to its children) sends only its
ObjectRef, and each task gets Ray's zero-copy read-only NumPy view.
`shared_array(shape, dtype, fill)` returns an ordinary writable array that is
put in the object store the first time it is sent to a task, and is
read-only from then on.  Writing into such an array raises
`ReadOnlyArrayError` (a `ValueError`) saying to return a new array instead.

Files
-----
Each imports only the ones above it:

- ``errors.py``: the backend's errors, the Penny form of Ray's exceptions,
  and the guarded ``import ray`` (None without the extra);
- ``context.py``: what runs inside Ray tasks: the remote functions,
  `_execute`, the task context, `RayHandle`;
- ``arrays.py``: shared arrays on the object store (`RaySharedArray`);
- ``futures.py``: `RayFuture`, the driver's futures;
- ``scheduler.py``: `RayScheduler`, which uses all of them.
"""

from __future__ import annotations

from .context import RayHandle
from .errors import ClusterUnreachableError, RayUnavailableError, ReadOnlyArrayError
from .futures import RayFuture
from .scheduler import RayScheduler

__all__ = ["RayScheduler", "RayFuture", "RayHandle", "ClusterUnreachableError", "RayUnavailableError",
           "ReadOnlyArrayError"]


def __getattr__(name):
    if name == "RaySharedArray":  # made on first use (arrays.py): NumPy is imported only then
        from .arrays import _shared_array_type

        return _shared_array_type()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
