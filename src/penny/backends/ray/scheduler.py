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
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
from concurrent.futures._base import PENDING
import re
import socket
import threading
import time

try:
    import ray
    from ray import exceptions as _rex
except ImportError:  # the optional extra is not installed
    ray = None
    _rex = None

from ... import _context
from ...frontend.base import Frontend, chunked_map
from ...errors import (
    PennyError,
    RemoteTraceback,
    SchedulerClosedError,
    TaskError,
    UnknownFunctionError,
    WorkerCrashedError,
)
from ...frontend.futures import _Condition
from ...shm.registry import validate_static

__all__ = ["RayScheduler", "RayFuture", "RayHandle", "ClusterUnreachableError", "RayUnavailableError",
           "ReadOnlyArrayError"]


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

#: Keywords of the local Scheduler that size its shared region; meaningless on Ray.
_LOCAL_ONLY = ("deque_capacity", "task_capacity", "arena_size", "arena_max", "function_slots", "seed",
               "trace", "trace_buffer")


def _require_ray():
    if ray is None:
        raise RayUnavailableError(
            "penny: the Ray backend needs Ray, which is not installed: pip install 'penny[ray]' "
            "(or pip install ray)"
        )


# ---- errors ---------------------------------------------------------------------------

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


# ---- shared arrays ------------------------------------------------------------------------

_freeze_lock = threading.Lock()


def _load_shared(ref):
    """Unpickled in a task: Ray's zero-copy, read-only view of the array, which
    remembers its ObjectRef so that handing it on to children sends only that."""
    view = ray.get(ref).view(_shared_array_type())
    view._penny_ref = ref
    return view


_shared_type = None


def _shared_array_type():
    """`RaySharedArray`, made on first use: NumPy is imported only where arrays
    are shared (a fresh Ray worker that never meets one starts ~90 ms sooner)."""
    global _shared_type
    if _shared_type is not None:
        return _shared_type
    np = _numpy("a shared array")

    class RaySharedArray(np.ndarray):
        """A NumPy array that travels to Ray tasks as an ObjectRef.

        Made by `RayScheduler.share` (already in the object store, read-only)
        or `RayScheduler.shared_array` (writable here until it is first sent
        to a task, then put in the object store once and read-only).  Slices,
        views and results of arithmetic are ordinary arrays sent by value.
        """

        _penny_ref = None      # its ObjectRef once in the object store
        _penny_pending = False  # made by shared_array: put on first send

        def __array_wrap__(self, arr, context=None, return_scalar=False):
            arr = arr.view(np.ndarray)
            return arr[()] if return_scalar else arr

        def __setitem__(self, key, value):
            if not self.flags.writeable:
                raise ReadOnlyArrayError(_READ_ONLY.format("assignment destination is read-only"))
            super().__setitem__(key, value)

        def _freeze(self):
            with _freeze_lock:
                if self._penny_ref is None:
                    self._penny_ref = ray.put(self.view(np.ndarray))
                    self.flags.writeable = False
                    self._penny_pending = False
            return self._penny_ref

        def __reduce_ex__(self, protocol):
            ref = self._penny_ref
            if ref is None and self._penny_pending:
                ref = self._freeze()
            if ref is None:
                return self.view(np.ndarray).__reduce_ex__(protocol)
            return _load_shared, (ref,)

        def __reduce__(self):
            return self.__reduce_ex__(2)

    RaySharedArray.__module__ = __name__
    _shared_type = RaySharedArray
    return RaySharedArray


def __getattr__(name):
    if name == "RaySharedArray":
        return _shared_array_type()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _numpy(what: str):
    try:
        import numpy
    except ImportError:
        raise ImportError(f"penny: {what} needs NumPy: pip install numpy") from None
    return numpy


# ---- the driver side --------------------------------------------------------------------

class _WatchedList(list):
    """`Future._waiters` of a `RayFuture`: `concurrent.futures.wait` and
    `as_completed` append their waiter here (holding the future's lock), which
    is when Ray must start resolving the future in the background."""

    __slots__ = ("fut",)

    def append(self, waiter):
        super().append(waiter)  # first: a resolution during _watch() notifies it
        self.fut._watch()


class RayFuture(cf.Future):
    """A `concurrent.futures.Future` for one Ray task.

    Resolved lazily, the way plain Ray is used: ``result()`` and
    ``exception()`` call ``ray.get`` in the calling thread, ``done()`` asks
    ``ray.wait``; only `add_done_callback`, `concurrent.futures.wait` and
    `as_completed` (and `shutdown`) have Ray resolve it in the background
    (``ObjectRef.future()``), whose callback thread costs about a quarter more
    per task than ``ray.get``.  `cancel` also asks Ray to cancel the task
    (``ray.cancel``: a queued task never runs, a running one is interrupted).
    """

    def __init__(self, sched, ref):
        # Future.__init__'s attributes, with the local backend's slim condition
        # (futures.py: a stock Condition costs more than the rest of a submit here).
        self._condition = _Condition()
        self._state = PENDING
        self._result = None
        self._exception = None
        self._done_callbacks = []
        self._waiters = _WatchedList()
        self._waiters.fut = self
        self._ref = ref
        self._sched = sched
        self._watched = False
        self._settled = False

    def _watch(self) -> None:
        ref = self._ref
        if self._watched or ref is None:
            return
        self._watched = True
        ref.future().add_done_callback(self._from_ray)

    def _from_ray(self, rfut) -> None:
        """Ray's callback thread: the outcome is here."""
        try:
            value = rfut.result()
        except BaseException as e:  # noqa: BLE001 - the task's outcome
            self._sched._settle(self, None, e)
        else:
            self._sched._settle(self, value, None)

    def _fetch(self, timeout) -> None:
        ref = self._ref
        if ref is None or self._state != PENDING:
            return
        try:
            value = ray.get(ref, timeout=timeout)
        except _rex.GetTimeoutError:
            raise TimeoutError(f"penny: the task did not finish within {timeout} s") from None
        except Exception as e:  # noqa: BLE001 - the task's outcome
            self._sched._settle(self, None, e)
        else:
            self._sched._settle(self, value, None)

    def result(self, timeout=None):
        self._fetch(timeout)
        return super().result(timeout)

    def exception(self, timeout=None):
        self._fetch(timeout)
        return super().exception(timeout)

    def done(self) -> bool:
        ref = self._ref
        if ref is not None and self._state == PENDING:
            ready, _ = ray.wait([ref], timeout=0, fetch_local=False)
            if ready:
                self._fetch(None)
        return super().done()

    def add_done_callback(self, fn) -> None:
        self._watch()
        super().add_done_callback(fn)

    def cancel(self) -> bool:
        ref = self._ref
        if not cf.Future.cancel(self):
            return False
        self._sched._settle(self, None, None, cancelled=True)
        if ref is not None:
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 - finished meanwhile, or Ray is gone
                pass
        return True


class RayScheduler(Frontend):
    """``penny.Scheduler(workers=None, functions=None, backend="ray", *,
    address=None, retries=1, task_options=None, **ray_init_kwargs)``.

    `address`: None starts a local Ray (`workers` is then its ``num_cpus``
    unless given in the keywords), ``"auto"`` joins the cluster this machine
    is part of, ``"host:port"`` or ``"ray://host:10001"`` a remote one; if this
    process is already connected (``ray.init`` was called), that connection is
    used and left open at shutdown.  `retries` is Ray's ``max_retries``: how
    often a task whose worker died is run again.  `task_options` are Ray
    options for every task (``{"num_cpus": 2}``, resources, ...).
    """

    def __init__(self, workers: int | None = None, functions: dict | None = None, start_method=None, *,
                 address: str | None = None, retries: int = 1, task_options: dict | None = None,
                 max_workers: int | None = None, **ray_init_kwargs):
        _require_ray()
        for key in _LOCAL_ONLY:  # sizes of the local backend's region: meaningless here
            ray_init_kwargs.pop(key, None)
        if workers is None:
            workers = max_workers
        if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
            raise ValueError(f"penny: workers must be a positive int, got {workers!r}")
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"penny: retries must be an int >= 0, got {retries!r}")
        self._static = validate_static(functions, "fork")  # ids and callables; Ray pickles by value if needed
        options = tuple(sorted((task_options or {}).items()))
        self._settings = (retries, options)
        self._closed = False
        self._torn_down = threading.Event()
        self._lock = threading.Lock()
        self._pending: set = set()
        self._counts = collections.Counter()
        self._stats_base: dict = {}
        self._stats_t0 = time.monotonic()
        self._owns_ray = False
        if address not in (None, "auto", "local"):
            _probe(address)
        if not ray.is_initialized():
            kwargs = dict(ray_init_kwargs)
            if address in (None, "local"):
                if workers is not None:
                    kwargs.setdefault("num_cpus", workers)
                kwargs.setdefault("include_dashboard", False)
            try:
                ray.init(address=address, **kwargs)
            except ConnectionError as e:
                raise ClusterUnreachableError(
                    f"penny: could not connect to a Ray cluster at address={address!r}: {e}; start one with "
                    f"`ray start --head`, or pass address=None for a local Ray"
                ) from e
            except ValueError as e:
                if "ray[client]" in str(e):
                    raise RayUnavailableError(
                        f"penny: connecting to {address!r} needs Ray's client: pip install 'ray[client]'"
                    ) from e
                raise
            self._owns_ray = True
        self._address = _gcs_address()
        _cpus_cache[0] = 0  # a new connection: read the cluster's size afresh
        _context.live.add(self)
        self._make_current()

    # ---- submitting ---------------------------------------------------------------
    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        """Run ``fn(*args, **kwargs)`` as a Ray task."""
        self._check_open()
        return self._submit(fn, args, kwargs)

    def new_task(self, fn_id: int, args=()) -> cf.Future:
        """Run function `fn_id` of the static table with the argument list `args`."""
        self._check_open()
        fn = self._static.get(fn_id) if isinstance(fn_id, int) else None
        if fn is None:
            raise UnknownFunctionError(
                f"penny: no function with id {fn_id!r} in this scheduler's table "
                f"(ids: {sorted(self._static)}); pass it in Scheduler(functions={{id: fn}})"
            )
        if not isinstance(args, (list, tuple)):
            raise TypeError(f"penny: new_task arguments must be a list or tuple, got {type(args).__name__}")
        return self._submit(fn, tuple(args), None)

    def run(self, fn, /, *args, **kwargs):
        """``submit(fn, ...).result()``."""
        return self.submit(fn, *args, **kwargs).result()

    def _check_open(self) -> None:
        if self._closed:
            raise SchedulerClosedError("penny: this scheduler was shut down; create a new one")

    def _submit(self, fn, args, kwargs, chunks=0) -> cf.Future:
        ref = _launch(fn, self._settings, args, kwargs, chunks)  # TypeError if an argument cannot be pickled
        fut = RayFuture(self, ref)
        with self._lock:
            self._pending.add(fut)
            self._counts["submitted"] += 1
        return fut

    def _settle(self, fut: RayFuture, value, error, cancelled: bool = False) -> None:
        """Move a task's outcome (its value, `_Counted`, or a Ray exception) into its
        future, once, whichever thread got it first."""
        with self._lock:
            if fut._settled:
                return
            fut._settled = True
            self._pending.discard(fut)
            if cancelled:
                self._counts["cancelled"] += 1
            elif error is None:
                n = 1
                if type(value) is _Counted:
                    value, n = value.value, value.n
                self._counts["completed"] += 1
                self._counts["tasks"] += n
            else:
                error = _map_error(error, self._settings[0])
                self._counts["cancelled" if isinstance(error, cf.CancelledError)
                             else "crashed" if isinstance(error, WorkerCrashedError) else "failed"] += 1
        fut._ref = None  # the value is read: let the object store free it
        if cancelled:
            return
        try:
            if error is None:
                fut.set_result(value)
            else:
                fut.set_exception(error)
        except cf.InvalidStateError:
            pass  # cancelled by the caller meanwhile

    def _reap(self) -> None:
        """Settle the futures whose tasks have finished (nobody asked yet)."""
        with self._lock:
            futs = [f for f in self._pending if f._ref is not None]
        if not futs:
            return
        ready, _ = ray.wait([f._ref for f in futs], num_returns=len(futs), timeout=0, fetch_local=False)
        ready = set(ready)
        for f in futs:
            ref = f._ref
            if ref is not None and ref in ready:
                f._fetch(None)

    # ---- map ----------------------------------------------------------------------------
    def map(self, fn, *iterables, timeout=None, chunksize=None, progress=None):
        """Ordered results of ``fn(*args)`` over zipped `iterables`, as on the
        local backend: chunks of items are tasks, input is consumed lazily a
        bounded window of chunks ahead of the consumer; `progress` draws a bar
        of the results consumed (penny/progress.py)."""
        if not iterables:
            raise TypeError("penny: map() needs at least one iterable")
        self._check_open()
        workers = self.workers
        single = len(iterables) == 1

        def submit_chunk(chunk):
            self._check_open()
            return self._submit(fn, (chunk,), None, 1 if single else 2)

        # Twice the local backend's window: a Ray round trip is 1-2 ms, so more chunks
        # must be in flight to keep every CPU busy.
        return chunked_map(fn, iterables, chunksize, workers, max(8, 8 * workers), submit_chunk,
                                  timeout, progress)

    # ---- shared arrays ------------------------------------------------------------------
    def shared_array(self, shape, dtype="f8", fill=None):
        """A NumPy array of `shape` and `dtype` (uninitialised unless `fill` is
        given, like ``numpy.empty``), writable here until it is first sent to a
        task: it is then put in Ray's object store once, passed to every task
        as its ObjectRef (zero-copy there), and read-only from then on."""
        self._check_open()
        np_ = _numpy("shared_array")
        arr = np_.empty(shape, dtype).view(_shared_array_type())
        if fill is not None:
            np_.ndarray.fill(arr, fill)
        arr._penny_pending = True
        return arr

    def share(self, data):
        """`data` (an array, anything ``numpy.asarray`` takes, or bytes-like:
        then a uint8 array) put in Ray's object store once; a read-only,
        zero-copy view of it that tasks receive by ObjectRef."""
        self._check_open()
        np_ = _numpy("share")
        if isinstance(data, _shared_array_type()) and data._penny_ref is not None:
            return data
        if isinstance(data, (bytes, bytearray, memoryview)) and not isinstance(data, np_.ndarray):
            src = np_.frombuffer(memoryview(data).cast("B"), np_.uint8)
        else:
            src = np_.asarray(data)
        if src.dtype.hasobject:
            raise TypeError("penny.share: arrays of Python objects cannot be shared zero-copy; "
                            "use a numeric or structured dtype")
        ref = ray.put(np_.ascontiguousarray(src).view(np_.ndarray))
        return _load_shared(ref)

    def shared_buffer(self, nbytes: int):
        """``shared_array((nbytes,), "u1")``: on Ray a uint8 array, not a memoryview."""
        if not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"penny.shared_buffer: nbytes must be an int >= 0, got {nbytes!r}")
        return self.shared_array((nbytes,), "u1")

    # ---- shutting down --------------------------------------------------------------------
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; with `wait`, let pending ones finish first.
        Stops Ray too if this scheduler started it."""
        with self._lock:
            first = not self._closed
            self._closed = True
        if cancel_futures:
            self._cancel_pending()
        if not first:
            if wait:
                self._torn_down.wait()
            return
        if wait:
            self._wait_pending()
            self._teardown()
        else:
            threading.Thread(target=self._finish_in_background, name="penny-ray-shutdown", daemon=True).start()

    def _finish_in_background(self) -> None:
        self._wait_pending()
        self._teardown()

    def _cancel_pending(self) -> None:
        with self._lock:
            futs = list(self._pending)
        for fut in futs:
            fut.cancel()

    def _wait_pending(self) -> None:
        while True:
            with self._lock:
                futs = [f for f in self._pending if f._state == PENDING]
            if not futs:
                return
            cf.wait(futs, timeout=0.5)

    def _abort(self) -> None:
        """Interpreter exit, Ctrl-C: cancel what is pending, stop now."""
        with self._lock:
            self._closed = True
        self._cancel_pending()
        self._teardown()

    def _teardown(self) -> None:
        with self._lock:
            if self._torn_down.is_set():
                return
            futs = list(self._pending)
            self._pending.clear()
        try:
            err = SchedulerClosedError("penny: the scheduler shut down before this task finished")
            for fut in futs:
                if not fut.done():
                    try:
                        fut.set_exception(err)
                    except cf.InvalidStateError:
                        pass
            if self._owns_ray and ray.is_initialized():
                ray.shutdown()
        finally:
            _context.live.discard(self)
            self._torn_down.set()

    # ---- introspection ----------------------------------------------------------------------
    @property
    def workers(self) -> int:
        """CPUs of the Ray cluster (read again at most every 10 s: it may grow or shrink)."""
        if self._torn_down.is_set() and self._owns_ray:
            return _cpus_cache[0]
        return _cluster_cpus()

    @property
    def backend(self) -> str:
        return "ray"

    @property
    def address(self) -> str | None:
        return self._address

    def stats(self, reset: bool = False) -> dict:
        """Counters kept by this scheduler: ``totals["tasks"]`` counts every task
        run for it, children spawned inside tasks included; ``submitted`` only
        those submitted from this process.  Since the start or the last
        ``stats(reset=True)``, as on the local backend."""
        if self._torn_down.is_set():
            raise SchedulerClosedError("penny: the scheduler is shut down")
        self._reap()
        with self._lock:
            now = time.monotonic()
            c = dict(self._counts)
            pending = len(self._pending)
            base, since = self._stats_base, self._stats_t0
            if reset:
                self._stats_base, self._stats_t0 = c, now
        c = {k: v - base.get(k, 0) for k, v in c.items()}
        totals = {name: c.get(name, 0) for name in ("tasks", "submitted", "completed", "failed", "crashed",
                                                    "cancelled")}
        totals["spawned"] = max(0, totals["tasks"] - totals["completed"])
        return {
            "backend": "ray",
            "address": self._address,
            "cpus": self.workers,
            "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
            "totals": totals,
            "interval_s": now - since,
            "pending": pending,
        }

    # ---- tracing ----------------------------------------------------------------------------
    def trace(self, path=None) -> "_RayTrace":
        """As on the local backend, ``with s.trace(path):`` writes a Chrome trace
        (Perfetto, chrome://tracing) at the block's end, here Ray's
        ``ray.timeline()``: every task of this Ray job so far, not only the block's."""
        self._check_open()
        return _RayTrace(path)

    def save_trace(self, path) -> str:
        """Write Ray's timeline of this job (Chrome trace JSON) to `path`."""
        return _RayTrace(path).save()

    def __repr__(self):
        state = "closed" if self._closed else "running"
        return f"<penny.Scheduler backend='ray' address={self._address!r} {state}>"


class _RayTrace:
    """`RayScheduler.trace`: the local Recorder's start/stop/save/with, over ray.timeline."""

    def __init__(self, path=None):
        self.path = path

    def start(self) -> "_RayTrace":
        return self

    def stop(self) -> "_RayTrace":
        return self

    def save(self, path=None) -> str:
        path = path or self.path
        if path is None:
            raise ValueError("penny: trace.save() needs a path")
        ray.timeline(filename=str(path))
        return str(path)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        if self.path is not None:
            self.save()
        return False


def _gcs_address() -> str | None:
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - client mode, older Ray
        return None


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast, with the address in the message, when nothing listens there
    (``ray.init`` to a dead address retries for minutes)."""
    target = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = target.rpartition(":")
    if not sep:
        host, port = target, "10001" if address.startswith("ray://") else "6379"
    host = host.strip("[]") or "127.0.0.1"
    try:
        port_no = int(port)
    except ValueError:
        return  # not host:port; let Ray judge it
    try:
        socket.create_connection((host, port_no), timeout=timeout).close()
    except OSError as e:
        raise ClusterUnreachableError(
            f"penny: cannot reach a Ray cluster at address={address!r} ({host}:{port_no}: {e}); "
            f"start one there with `ray start --head`, or pass address=None for a local Ray"
        ) from None
