"""What runs inside Ray tasks: the remote function of each task function
(`_execute` around it), the task context that `penny.spawn` / `penny.sync`
use there, and `RayHandle`, a child spawned inside a task.
"""

from __future__ import annotations

import threading
import time

from ... import _context
from .errors import (
    _READ_ONLY,
    ReadOnlyArrayError,
    _is_read_only_error,
    _map_error,
    _rex,
    ray,
)

# ---- remote functions -------------------------------------------------------------------

#: (function, settings) -> Ray remote function, one per process (Ray exports each once).
_remotes: dict = {}
_remotes_lock = threading.Lock()


def _make_remote(fn, settings, chunks=0):
    """The Ray remote function for `fn`: calls of it, or (`chunks` 1 or 2) the
    chunks of a map over one or several iterables, whose items then travel
    alone, with nothing that forces Ray off its msgpack fast path."""
    retries, options = settings
    name = getattr(fn, "__qualname__", type(fn).__name__)
    if not chunks:
        def task(*args, **kwargs):
            return _execute(fn, settings, args, kwargs)
    else:
        runner = _run_chunk1 if chunks == 1 else _run_chunk

        def task(items):
            return _execute(runner, settings, (fn, items), {})

        name = f"map({name})"
    # A name no module has, so cloudpickle sends this wrapper by value; Ray shows it.
    task.__name__ = task.__qualname__ = f"penny:{name}"
    return ray.remote(max_retries=retries, retry_exceptions=False, **dict(options))(task)


def _launch(fn, settings, args, kwargs, chunks=0):
    """Start ``fn(*args, **kwargs)`` (or, with `chunks`, a map chunk ``args[0]``
    of `fn`) as a Ray task; its ObjectRef."""
    key = (fn, settings, chunks)
    try:
        rf = _remotes.get(key)
    except TypeError:  # an unhashable callable: one generic wrapper carries it
        if chunks:
            args, fn = (fn, *args), (_run_chunk1 if chunks == 1 else _run_chunk)
        else:
            args, fn = (fn, *args), _call
        key = (fn, settings, 0)
        rf = _remotes.get(key)
    if rf is None:
        with _remotes_lock:
            rf = _remotes.get(key)
            if rf is None:
                rf = _remotes[key] = _make_remote(*key)
    return rf.remote(*args, **kwargs) if kwargs else rf.remote(*args)


def _call(fn, *args, **kwargs):
    return fn(*args, **kwargs)


def _run_chunk1(fn, items):
    """A chunk of `map` over one iterable."""
    return list(map(fn, items))


def _run_chunk(fn, items):
    """A chunk of `map` over several iterables."""
    return [fn(*args) for args in items]


def _execute(fn, settings, args, kwargs):
    """Body of every Penny task on Ray: run `fn` with this thread's task context
    installed, then the implicit sync.  Returns the value, or ``_Counted(value,
    tasks)`` when children ran."""
    ctx = _TaskContext(settings)
    local = _context.task_context
    prev = getattr(local, "scheduler", None)
    local.scheduler = ctx
    spawned = _context.outside_spawned()  # where penny.spawn/sync outside Penny workers keep futures
    saved = spawned[:]
    del spawned[:]
    try:
        failed = True
        try:
            value = fn(*args, **kwargs)
            failed = False
        except ValueError as e:
            if _is_read_only_error(e):
                raise ReadOnlyArrayError(_READ_ONLY.format(e)) from e
            raise
        finally:
            # Implicit sync: no child outlives its parent.  After a failure the
            # children are still waited for, their outcomes dropped.
            first = None
            for h in spawned:
                if type(h) is RayHandle:
                    h._fetch(None)
                    if not failed and h._exc is not None and not h._observed and first is None:
                        first = h._exc
                        h._observed = True
        if first is not None:
            raise first
        return value if ctx.count == 1 else _Counted(value, ctx.count)
    finally:
        spawned[:] = saved
        local.scheduler = prev


class _Counted:
    """The value of a task that had children, and how many tasks ran in all."""

    __slots__ = ("value", "n")

    def __init__(self, value, n: int):
        self.value = value
        self.n = n

    def __reduce__(self):
        return _Counted, (self.value, self.n)


# ---- inside a task ----------------------------------------------------------------------

_cpus_cache = [0, 0.0]  # (cluster CPUs, when read): a GCS call (~0.3 ms), so not on every map


def _cluster_cpus(max_age: float = 10.0) -> int:
    now = time.monotonic()
    if not _cpus_cache[0] or now - _cpus_cache[1] > max_age:
        _cpus_cache[0] = max(1, int(ray.cluster_resources().get("CPU", 1)))
        _cpus_cache[1] = now
    return _cpus_cache[0]


class _TaskContext:
    """What `current_scheduler()` returns inside a task running on Ray: children
    are Ray tasks with the same settings as the task that spawns them."""

    _closed = False

    def __init__(self, settings):
        self._settings = settings
        self.count = 1  # this task; its children's counts are added when synced

    def submit(self, fn, /, *args, **kwargs) -> "RayHandle":
        return RayHandle(_launch(fn, self._settings, args, kwargs), self)

    def run(self, fn, /, *args, **kwargs):
        return self.submit(fn, *args, **kwargs).result()

    @property
    def workers(self) -> int:
        return _cluster_cpus()

    def __repr__(self):
        return f"<penny Ray task context retries={self._settings[0]}>"


class RayHandle:
    """A child spawned inside a task on Ray (``penny.spawn``): ``result()`` or
    ``penny.sync(h)`` waits with ``ray.get``, which lends this task's CPU to
    others meanwhile."""

    __slots__ = ("_ref", "_ctx", "_fetched", "_value", "_exc", "_observed")

    def __init__(self, ref, ctx):
        self._ref = ref
        self._ctx = ctx
        self._fetched = False
        self._value = self._exc = None
        self._observed = False

    def _fetch(self, timeout) -> None:
        if self._fetched:
            return
        try:
            value = ray.get(self._ref, timeout=timeout)
        except _rex.GetTimeoutError:
            raise TimeoutError(f"penny: the child task did not finish within {timeout} s") from None
        except Exception as e:  # noqa: BLE001 - the child's outcome, re-raised by result()
            self._exc = _map_error(e, self._ctx._settings[0])
        else:
            if type(value) is _Counted:
                self._value = value.value
                self._ctx.count += value.n
            else:
                self._value = value
                self._ctx.count += 1
        self._fetched = True
        self._ref = None

    def result(self, timeout=None):
        self._fetch(timeout)
        self._observed = True
        if self._exc is not None:
            raise self._exc
        return self._value

    def exception(self, timeout=None):
        self._fetch(timeout)
        self._observed = True
        return self._exc

    def done(self) -> bool:
        if self._fetched:
            return True
        ready, _ = ray.wait([self._ref], timeout=0)
        return bool(ready)

    def cancel(self) -> bool:
        if self._fetched:
            return False
        ray.cancel(self._ref)
        return True

    def __repr__(self):
        state = "pending" if not self._fetched else ("failed" if self._exc is not None else "done")
        return f"<penny.RayHandle {state}>"
