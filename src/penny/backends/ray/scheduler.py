"""`RayScheduler`: the local Scheduler's API on a Ray cluster (connecting,
submitting, map, shared arrays, shutdown, stats, tracing).  The package
docstring (``penny.backends.ray``) explains the design.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import socket
import threading
import time
from concurrent.futures._base import PENDING

from ... import _context
from ...errors import SchedulerClosedError, UnknownFunctionError, WorkerCrashedError
from ...frontend.base import Frontend, chunked_map
from ...wire.functions import validate_static
from .arrays import _load_shared, _numpy, _shared_array_type
from .context import _cluster_cpus, _Counted, _cpus_cache, _launch
from .errors import (
    ClusterUnreachableError,
    RayUnavailableError,
    _map_error,
    _require_ray,
    ray,
)
from .futures import RayFuture

#: Keywords of the local Scheduler that size its shared region; meaningless on Ray.
_LOCAL_ONLY = ("deque_capacity", "task_capacity", "arena_size", "arena_max", "function_slots", "seed",
               "trace", "trace_buffer")



#: Per thread: how deep it is inside `_settle`'s set_result/set_exception,
#: i.e. inside done-callbacks (shutdown must not wait there).
_settling = threading.local()

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

    def interrupt(self, future) -> bool:
        """Not available on this backend (docs/interrupt.md): Penny's
        interrupt is delivered by its own workers' signal handler."""
        raise NotImplementedError(
            "penny: Scheduler.interrupt is not implemented on the Ray backend; future.cancel() withdraws a "
            "queued task, and ray.cancel(ref) interrupts a running one with Ray's own semantics "
            "(KeyboardInterrupt in the task)"
        )

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
        _settling.depth = getattr(_settling, "depth", 0) + 1  # done-callbacks run inside
        try:
            if error is None:
                fut.set_result(value)
            else:
                fut.set_exception(error)
        except cf.InvalidStateError:
            pass  # cancelled by the caller meanwhile
        finally:
            _settling.depth -= 1

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
        Stops Ray too if this scheduler started it.

        Called from a future's done-callback (which runs on the thread that
        settles futures: Ray's callback thread, or one in ``result()``),
        `wait` cannot wait, since that thread may be the one to settle the
        pending futures: the shutdown then finishes in the background, as
        with ``wait=False`` (the local backend does the same)."""
        if wait and getattr(_settling, "depth", 0):
            wait = False
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
