"""The ambient state of this process, in one place.

Penny's layers need to know a few facts about where they run, and those facts
must not make the lower layers import the upper ones:

* `live` and `current`: the schedulers of this process and the one that
  `penny.spawn`, `join` and `parallel_for` use outside tasks;
* `in_worker`: this process is one of Penny's workers (it has no scheduler
  of its own, and the ones a fork copied are not its to use);
* `fork`: this worker's fork-join machinery (runtime.forkjoin.ForkJoin), None
  in the main process; `current_fork()` is the one to read: it also knows
  the worker threads of the threads backend (one ForkJoin per thread);
* `task_context`: per thread, the scheduler of a task that another backend
  runs (backends/ray): what spawn and sync submit children to there;
* `main_path`, `main_module()`: in a worker of Penny's launcher, the main
  script, imported only when a task names one of its functions by name;
* `outside_spawned()`: per thread, the futures of `penny.spawn` calls made
  outside any task, for the `penny.sync()` that waits for them.

Nothing here imports anything of Penny's: every layer may read it.  Schedulers
are duck-typed (`_closed`, `_region`).
"""

from __future__ import annotations

import os
import threading
import weakref

from .errors import SchedulerClosedError

#: Every scheduler of this process that is not shut down.
live: "weakref.WeakSet" = weakref.WeakSet()
#: The scheduler of the innermost ``with`` block, or the last one created.
current: "weakref.ref | None" = None
#: True in a worker process.
in_worker = False
#: This worker's ForkJoin (None in the main process).
fork = None
#: ``.scheduler``: set per thread by another backend's task wrapper.
task_context = threading.local()
#: ``.fork``: a worker thread's ForkJoin (backends/threads), where `fork` stays None.
thread_fork = threading.local()


def current_fork():
    """The fork-join machinery of the worker running on this thread: the
    process's (a worker process), this thread's (a worker thread of the
    threads backend), or None (the caller's threads)."""
    f = fork
    if f is None:
        return getattr(thread_fork, "fork", None)
    return f

_outside = threading.local()  # .futures: penny.spawn outside tasks, per thread


def set_current(sched) -> None:
    global current
    current = weakref.ref(sched)


def current_scheduler():
    """The scheduler that penny.spawn/join/parallel_for use outside tasks: the
    one whose ``with`` block is innermost, else the most recently created.
    Inside a task run by another backend, that backend's task context."""
    ctx = getattr(task_context, "scheduler", None)
    if ctx is not None:
        return ctx
    if in_worker:
        raise SchedulerClosedError(
            "penny: a task cannot use the scheduler that runs it (it belongs to the main process): "
            "spawn children with penny.spawn/penny.sync (or penny.join, penny.parallel_for), "
            "or return the data and submit from the caller"
        )
    sched = current() if current is not None else None
    if sched is None or sched._closed:
        running = [x for x in list(live) if not x._closed]
        if not running:
            raise SchedulerClosedError(
                "penny: no running Scheduler; create one (penny.Scheduler()) before calling "
                "penny.spawn, penny.join or penny.parallel_for outside a task"
            )
        sched = running[-1]
    return sched


def forget_in_worker() -> None:
    """In a new worker process: the schedulers a fork copied from the main
    process are not ours to use, and their mappings are not ours to keep
    (unmapped here, so a scheduler's memory goes with its own shutdown)."""
    global in_worker, current
    in_worker = True
    for sched in list(live):
        region = getattr(sched, "_region", None)
        if region is not None:
            try:
                region.close()
            except Exception:  # noqa: BLE001 - best effort in a child
                pass
    live.clear()
    current = None


#: In a worker of Penny's launcher: the path of the main script, imported
#: (as ``__mp_main__``, like multiprocessing does) only if a task names one of
#: its functions by name (one that cannot be pickled by value: see
#: wire/functions.py); never at start, so a script without a main guard is not
#: run again by every worker.
main_path = None
_main_loaded = False


def main_module():
    """The module that ``__main__:name`` functions are looked up in."""
    global _main_loaded
    import sys

    if in_worker and main_path and not _main_loaded:
        _main_loaded = True
        import runpy
        import types

        mod = types.ModuleType("__mp_main__")
        mod.__file__ = main_path
        sys.modules["__mp_main__"] = mod
        mod.__dict__.update(runpy.run_path(main_path, run_name="__mp_main__"))
        sys.modules["__main__"] = mod
    return sys.modules["__main__"]


#: Incremented in the child of every os.fork(): a scheduler made before the
#: fork compares it with its own (no getpid() system call per submit).
fork_generation = 0


def _after_fork_in_child() -> None:
    global fork_generation
    fork_generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


def outside_spawned() -> list:
    """This thread's futures of penny.spawn calls made outside tasks."""
    try:
        return _outside.futures
    except AttributeError:
        _outside.futures = []
        return _outside.futures
