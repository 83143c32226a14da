"""The fork-join functions of the public API: penny.spawn, sync, join, parallel_for.

`spawn` and `sync` are the C fast paths of _core (native/forkjoin); inside a
task they work on the worker's fork-join machinery (runtime.forkjoin).  What
the C code cannot finish itself it hands to the two fallbacks below: outside
any task, `spawn` submits to the current scheduler and `sync` waits for
those futures.
"""

from __future__ import annotations

from .. import _context, _core
from ..errors import PennyError
from ..runtime import interrupt as _interrupt
from ..runtime.forkjoin import _pfor
from .progress import run_parallel_for

#: A child spawned by the running task (implemented in C: _core.Handle).
Handle = _core.Handle

spawn = _core.spawn
sync = _core.sync


def _spawn_slow(fn, args, kwargs):
    """penny.spawn outside any task: submit to the current scheduler."""
    fut = _context.current_scheduler().submit(fn, *args, **(kwargs or {}))
    _context.outside_spawned().append(fut)
    return fut


def _sync_slow(handle):
    """penny.sync beyond the C fast path."""
    fork = _context.current_fork()
    if handle is not None:
        if type(handle) is Handle:
            if fork is None:
                raise PennyError("penny: a task's handle can only be synced inside the task that spawned it")
            return fork.sync(handle)
        if hasattr(handle, "result"):
            return handle.result()  # a Future from spawn outside tasks
        raise TypeError(f"penny.sync: expected a handle from penny.spawn, got {type(handle).__name__}")
    if fork is not None and fork.task:
        err = fork.end_task(fork.task)
        fork.check_interrupt()  # Scheduler.interrupt while it waited (runtime/interrupt.py)
        if err is not None:
            raise err
        return None
    futs = _context.outside_spawned()
    pending, futs[:] = list(futs), []
    for f in pending:
        f.result()
    return None


_core.set_fallbacks(_spawn_slow, _sync_slow)
# An interrupt raised in a private child that fork.sync runs passes through here.
_interrupt.register_transparent(_sync_slow, "sync")


def join(a, b):
    """Run `a` and `b`, possibly in parallel; return both results (Rayon's join).
    Each is a callable taking no argument or a tuple ``(fn, *args)``; `b` may
    run in another worker, so its function must be importable."""
    fa, aa = _split(a)
    fb, ab = _split(b)
    fork = _context.current_fork()
    if fork is not None and fork.task:
        h = spawn(fb, *ab)
        try:
            ra = fa(*aa)
        except BaseException:
            try:
                sync(h)
            except BaseException:  # noqa: BLE001 - the first exception wins
                pass
            raise
        return ra, sync(h)
    sched = _context.current_scheduler()
    fut_b = sched.submit(fb, *ab)
    fut_a = sched.submit(fa, *aa)
    return fut_a.result(), fut_b.result()


# An interrupt raised in join's first half passes through join (which syncs the second).
_interrupt.register_transparent(join, "*")


def _split(x):
    if isinstance(x, tuple):
        if not x or not callable(x[0]):
            raise TypeError("penny.join: a tuple argument must be (function, *args)")
        return x[0], x[1:]
    if not callable(x):
        raise TypeError(f"penny.join: {x!r} is not callable")
    return x, ()


def parallel_for(start: int, stop: int, body, grain: int | None = None, progress=None) -> None:
    """Call ``body(lo, hi)`` over [start, stop) split in halves recursively down to
    `grain` items, the halves run in parallel.  Inside or outside tasks.

    `progress` (outside tasks only): True, a description string or a tqdm-like
    object shows a progress bar of the items done (progress.py)."""
    if not (isinstance(start, int) and isinstance(stop, int)):
        raise TypeError("penny.parallel_for: start and stop must be ints")
    if stop <= start:
        return None
    fork = _context.current_fork()
    inside = fork is not None and fork.task
    if grain is None:
        workers = fork.w.lay.workers if inside else _context.current_scheduler().workers
        grain = max(1, (stop - start) // (8 * workers))
    if not isinstance(grain, int) or grain < 1:
        raise ValueError(f"penny.parallel_for: grain must be a positive int, got {grain!r}")
    if inside:
        if progress:
            raise PennyError("penny.parallel_for: progress= works outside tasks only "
                             "(the main process draws the bar)")
        return _pfor(body, start, stop, grain)
    if progress:
        return run_parallel_for(_context.current_scheduler(), start, stop, body, grain, progress)
    return _context.current_scheduler().submit(_pfor, body, start, stop, grain).result()
