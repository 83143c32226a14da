"""Penny's runtime on threads of the calling process: ``Scheduler(n, backend="threads")``.

The same worker loop as the processes backend (runtime/worker.py `Worker`:
Chase-Lev deques, the injection queue, futex parking) over the same region
layout, in a memfd that no other process maps; greenlet fibers per worker
thread for continuations; penny.spawn/sync/join/parallel_for unchanged (the C
fast paths find their thread's fork state).  What differs:

* nothing is pickled: a task's record carries a key into the scheduler's
  object table (calls.py), so lambdas, locks, open files and any object pass
  by reference and keep their identity, and an exception comes back as the
  same object with its traceback;
* no process supervisor (supervisor.py): worker threads are joined at
  shutdown and aborted at interpreter exit; a fault of Penny's own code on a
  worker thread breaks the scheduler loudly instead of hanging it.

On a GIL build the threads run Python one at a time: the backend pays when
tasks release the GIL (NumPy, I/O, C extensions); docs/backends.md says
when to choose which backend.

Files: ``calls.py`` (the object table), ``worker.py`` (ThreadWorker,
ThreadForkJoin), ``supervisor.py`` (starting, joining, failing loudly),
``scheduler.py`` (ThreadScheduler, ThreadExecutor, ThreadFuture).
"""

from __future__ import annotations

from .scheduler import ThreadExecutor, ThreadFuture, ThreadScheduler

__all__ = ["ThreadScheduler", "ThreadExecutor", "ThreadFuture"]
