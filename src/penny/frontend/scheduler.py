"""The Scheduler: owns the region, starts the workers, injects tasks, collects results.

The main process never runs tasks.  Its threads:

* callers of `submit`/`new_task`/`map` (any thread): take a record from the
  free list, encode the arguments into it, push its ref on the global queue,
  and wake a sleeping worker if there is one;
* the *collector* thread: pops finished refs from the completion queue,
  decodes the outcome into the task's `concurrent.futures.Future`, and
  recycles the record; it parks on its own futex word when idle;
* the *supervisor* thread (supervisor.py): waits on the workers' sentinels
  and recovers from a worker's death.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures as cf
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time

from .. import _context, _core, _killpoints, config
from ..errors import (
    CorruptRegionError,
    BrokenExecutorError,
    PennyError,
    SchedulerClosedError,
    TaskError,
    UnknownFunctionError,
    WorkerCrashedError,
)
from ..runtime import interrupt as _interrupt
from ..runtime.supervisor import Supervisor
from ..shm import parking
from ..shm.arena import Arena
from ..shm.layout import (
    F_ARGS_BLOB,
    H_COLLECTOR,
    H_COLLECTOR_SLEEPERS,
    H_INTERRUPTS,
    H_SHUTDOWN,
    H_SLEEPERS,
    S_CANCELLED,
    S_CRASHED,
    S_DONE,
    S_FAILED,
    S_QUEUED,
    S_RUNNING,
    STAT_NAMES,
    W_PID,
    Layout,
)
from ..shm.parking import Notifier, Parker
from ..shm.region import Region
from ..shm.tasks import TaskTable
from ..trace import recorder as _trace
from ..wire import marshal, shared
from ..wire.functions import FunctionTable, validate_static
from .base import Frontend, chunked_map, make_backend
from .futures import TaskFuture


def _default_start_method() -> str:
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


class Scheduler(Frontend):
    """A pool of worker processes with work-stealing deques in shared memory.

    ``Scheduler(workers=None, functions=None, start_method=None)``: `workers`
    defaults to ``os.cpu_count()``; `functions` is the static table
    ``{id: function}`` for `new_task`; `start_method` is ``"forkserver"``
    (default on Linux: workers fork from Penny's own launcher, which never
    runs the main module again, so no main guard is needed),
    ``"spawn"`` (multiprocessing's: re-imports a main module that has a
    path) or ``"fork"`` (a copy of the parent).  The remaining keywords size
    the shared region (see config.py).

    ``Scheduler(..., backend="threads")`` returns a
    `penny.backends.threads.ThreadScheduler`: the same runtime on threads of
    this process, arguments and results by reference.
    ``Scheduler(..., backend="ray", address=None, **ray_init_kwargs)`` returns
    a `penny.backends.ray.RayScheduler` instead: the same API on a Ray cluster.
    """

    #: Which factory of another backend `__new__` asks for (Executor: "executor").
    _kind = "scheduler"

    def __new__(cls, *args, backend: str = "local", **kwargs):
        if backend == "local":
            return super().__new__(cls)
        # Another backend's scheduler.  Python calls __init__ again on what __new__
        # returns only if it is an instance of cls (a ThreadScheduler under
        # Scheduler(...): its __init__ returns at once when already initialised).
        return make_backend(backend, *args, kind=cls._kind, **kwargs)

    def __init__(
        self,
        workers: int | None = None,
        functions: dict | None = None,
        start_method: str | None = None,
        *,
        retries: int = 1,
        deque_capacity: int | None = None,
        task_capacity: int | None = None,
        arena_size: int | None = None,
        arena_max: int | None = None,
        function_slots: int | None = None,
        seed: int | None = None,
        trace=False,
        trace_buffer: int | None = None,
        backend: str = "local",
    ):
        if _context.in_worker:
            raise SchedulerClosedError(
                "penny: a task cannot create a Scheduler (it runs in a worker process, which does not "
                "start workers of its own): spawn children with penny.spawn/penny.sync (or penny.join, "
                "penny.parallel_for), or return the data and submit from the caller"
            )
        if workers is None:
            workers = os.cpu_count() or 1
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"penny: workers must be a positive int, got {workers!r}")
        method = start_method or _default_start_method()
        if method not in multiprocessing.get_all_start_methods():
            raise ValueError(
                f"penny: unknown start_method {method!r}; use one of {multiprocessing.get_all_start_methods()}"
            )
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"penny: retries must be an int >= 0, got {retries!r}")
        static = validate_static(functions, method)
        trace_events = config.TRACE_EVENTS if trace_buffer is None else trace_buffer
        if not isinstance(trace, (bool, str, os.PathLike)):
            raise TypeError(f"penny: trace must be a bool or a file path, got {type(trace).__name__}")
        if trace is not False and not trace_events:
            raise ValueError("penny: trace needs trace rings; do not pass trace_buffer=0 with it")
        self._method = method
        self._retries = retries
        self._pid = os.getpid()  # the owning process: a fork of it may not use us
        self._fork_generation = _context.fork_generation
        self._layout = Layout(
            workers=workers,
            deque_capacity=deque_capacity or config.DEQUE_CAPACITY,
            task_capacity=task_capacity or config.TASK_CAPACITY,
            function_slots=function_slots or config.FUNCTION_SLOTS,
            arena_size=arena_size or config.ARENA_SIZE,
            large_size=(config.default_arena_max() if arena_max is None else arena_max) // 4096 * 4096,
            trace_events=trace_events,
        )
        self._closed = False
        self._broken: BaseException | None = None
        self._shutdown_lock = threading.Lock()
        self._stopping_threads: set = set()  # idents of threads inside shutdown/abort (callbacks reenter)
        self._backlog_lock = threading.RLock()
        self._backlog: collections.deque = collections.deque()
        self._futures: dict[int, TaskFuture] = {}
        self._crash_info: dict[int, str] = {}
        self._torn_down = threading.Event()
        self._next_worker = itertools.count()
        self._recorders: set = set()     # active trace recorders (trace.py)
        self._own_recorder = None        # the one Scheduler(trace=...) started
        self._stats_lock = threading.Lock()
        self._stats_base = [[0] * len(STAT_NAMES) for _ in range(workers)]
        self._stats_t0 = time.monotonic()
        self._interrupt_lock = threading.Lock()

        region = Region.create(self._layout)
        self._region = region
        try:
            s = region.shared
            self._s = s
            self._tasks = TaskTable(s, self._layout)
            self._tasks.init_free_list()
            self._arena = Arena(s, self._layout, region.fd, region.map)
            self._functions = FunctionTable(s, self._layout, static, method, self._arena)
            self._injector = self._layout.injector
            self._wake_workers = Notifier(s, H_SLEEPERS, self._layout.state(0), self._layout.slice_size, workers)
            self._collector_parker = Parker(s, H_COLLECTOR, H_COLLECTOR_SLEEPERS)
            self._collector_stop = False
            self._collector = threading.Thread(target=self._collect_loop, name="penny-collector", daemon=True)
            if trace is not False:
                # The flag is up before the workers start: they trace from their first task.
                self._own_recorder = _trace.Recorder(self, None if trace is True else trace)
                self._own_recorder.begin()
            # Workers first, our threads after: under "fork" a child then copies
            # a single-threaded parent (Python 3.12+ warns otherwise).
            self._supervisor = self._make_supervisor(static, seed)
            self._supervisor.start_workers()
            _killpoints.arm("main")  # PENNY_KILL_AT=main:... (docs/crash-model.md); nothing when unset
            self._collector.start()
            if self._own_recorder is not None:
                self._own_recorder.start_draining()
        except BaseException:
            self._teardown(force=True)
            raise
        _context.live.add(self)
        _install_sigterm()
        self._make_current()

    def _make_supervisor(self, static, seed):
        """What starts and watches the workers (backends/threads has its own)."""
        return Supervisor(self, multiprocessing.get_context(self._method), static, seed)

    # ---- submitting ---------------------------------------------------------
    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        """Run ``fn(*args, **kwargs)`` in a worker.  `fn` is any callable that
        pickles (functions of any module or of ``__main__``, lambdas, closures,
        partials, bound methods, callable objects); see wire/functions.py."""
        self._check_open()
        return self._submit(*self._functions.route(fn, args, kwargs))

    def new_task(self, fn_id: int, args=()) -> cf.Future:
        """Run function `fn_id` of the static table with the argument list `args`."""
        self._check_open()
        if fn_id not in self._functions.static:
            raise UnknownFunctionError(
                f"penny: no function with id {fn_id!r} in this scheduler's table "
                f"(ids: {sorted(self._functions.static)}); pass it in Scheduler(functions={{id: fn}})"
            )
        if not isinstance(args, (list, tuple)):
            raise TypeError(f"penny: new_task arguments must be a list or tuple, got {type(args).__name__}")
        return self._submit(fn_id, args, None)

    def run(self, fn, /, *args, **kwargs):
        """``submit(fn, ...).result()``."""
        return self.submit(fn, *args, **kwargs).result()

    def _foreign(self) -> bool:
        """True in a process forked from the one that made this scheduler."""
        return _context.fork_generation != self._fork_generation

    def _check_foreign(self) -> None:
        if _context.fork_generation != self._fork_generation:
            raise SchedulerClosedError(
                f"penny: this scheduler belongs to process {self._pid}; this process ({os.getpid()}) is a "
                "fork of it and cannot use it: create a new Scheduler here"
            )

    def _check_open(self) -> None:
        # On every submit: three attribute tests, the reasons only when one fails.
        if self._closed or self._broken is not None or _context.fork_generation != self._fork_generation:
            self._refuse()

    def _refuse(self) -> None:
        self._check_foreign()
        if self._closed:
            raise SchedulerClosedError("penny: this scheduler was shut down; create a new one")
        if self._broken is not None:
            if isinstance(self._broken, BrokenExecutorError):  # Executor(initializer=) raised
                raise BrokenExecutorError(str(self._broken)) from self._broken
            raise SchedulerClosedError(f"penny: this scheduler is broken: {self._broken}") from self._broken

    def _submit(self, fid: int, args, kwargs) -> cf.Future:
        self._check_open()
        fut = TaskFuture(self)
        if not self._backlog and self._try_inject(fut, fid, args, kwargs, None):
            return fut
        # Every record is in flight: queue the call here.  Its arguments are
        # pickled now, so an unpicklable one still fails in the caller.
        data = marshal.prepickle(args, kwargs, self._arena)
        with self._backlog_lock:
            self._backlog.append((fut, fid, args, kwargs, data))
        self._drain_backlog()
        return fut

    def _try_inject(self, fut: TaskFuture, fid: int, args, kwargs, data) -> bool:
        """Inject one call; False if no task record is free (the caller backlogs it)."""
        if not kwargs:
            # Fast path: one C call takes a record, packs inline arguments,
            # registers the future and publishes the ref.
            ref = self._s.inject(fid, args, fut, self._futures)
            if ref >= 0:
                return ref > 0
        return self._inject(fut, fid, args, kwargs, data)

    def _inject(self, fut: TaskFuture, fid: int, args, kwargs, data=None) -> bool:
        """Put one call in a record and on the global queue; False if no record is free.
        The general path (pickled arguments): the arguments are encoded here,
        and `Shared.enqueue` takes the steps it shares with `Shared.inject`
        (register the future, publish the record, push, wake a worker)."""
        tasks = self._tasks
        ref = tasks.alloc()
        if not ref:
            return False
        rec = tasks.record(ref)
        try:
            flags = marshal.encode_args(tasks, self._arena, rec, args, kwargs, data)
        except BaseException:
            tasks.free(ref)
            raise
        try:
            self._s.enqueue(ref, fid, flags, fut, self._futures)
        except BaseException:
            marshal.unencode_args(tasks, self._arena, rec, flags, owned=data is None)
            tasks.free(ref)
            raise
        return True

    def _drain_backlog(self) -> None:
        """Inject backlogged calls while records are free (submitters and the collector).
        Futures are resolved outside the lock: their callbacks may submit or cancel."""
        failed = []
        with self._backlog_lock:
            while self._backlog:
                fut, fid, args, kwargs, data = self._backlog[0]
                if fut.cancelled():
                    self._backlog.popleft()
                    if data is not None:
                        marshal.discard(data, self._arena)
                    continue
                try:
                    if not self._try_inject(fut, fid, args, kwargs, data):
                        break
                except BaseException as e:  # e.g. the arena is full
                    failed.append((fut, e))
                    if data is not None:
                        marshal.discard(data, self._arena)
                self._backlog.popleft()
        for fut, e in failed:
            try:
                fut.set_exception(e)
            except cf.InvalidStateError:
                pass

    def _cancel(self, fut: TaskFuture) -> bool:
        found = False
        with self._backlog_lock:
            if fut._ref == 0:
                for i, item in enumerate(self._backlog):
                    if item[0] is fut:
                        del self._backlog[i]
                        if item[4] is not None:
                            marshal.discard(item[4], self._arena)
                        found = True
                        break
                else:
                    return fut.cancelled()
        if found:
            return cf.Future.cancel(fut)  # outside the lock: it runs callbacks
        if self._tasks.transition(fut._ref, S_QUEUED, S_CANCELLED):
            # The worker that meets it hands the record back; the collector frees it.
            return cf.Future.cancel(fut)
        return fut.cancelled()

    # ---- interrupting -------------------------------------------------------------
    def interrupt(self, future) -> bool:
        """Ask the task of `future` to stop (docs/interrupt.md).

        A running task sees `penny.TaskInterrupted` raised in its own code at
        the next bytecode boundary of the worker's main thread (a blocking call
        such as ``time.sleep`` is cut short; a long computation in C is
        interrupted when it returns to Python), and so do its children, and
        ``future.result()`` raises it; the worker goes on with other work.  A
        task that has not started is cancelled, as by ``future.cancel()``.

        True if the request was made (the task was running, or was cancelled
        while queued); False if it had already finished (or the scheduler is
        shut down).  A task that catches
        the exception and goes on is not interrupted again unless this is
        called again; one that finishes before the request reaches it
        completes normally."""
        if not isinstance(future, TaskFuture) or future._scheduler is not self:
            raise ValueError("penny: interrupt() takes a future returned by this scheduler")
        self._check_foreign()
        if future.done() or self._s is None:
            return False
        if future._ref == 0 or self._tasks.status(future._ref) == S_QUEUED:
            if future.cancel():  # in the backlog, or queued: it never starts
                return True
        with self._interrupt_lock:
            s = self._s
            ref = future._ref  # 0: still in the backlog, being injected right now
            if s is None or not ref or future.done() or self._tasks.status(ref) != S_RUNNING:
                return False
            first = not future._interrupt_ref
            if first:
                # Counted before the word is written: a worker that sees the
                # word also sees the count (and claims look at the count).
                s.fetch_add32(H_INTERRUPTS, 1, _core.SEQ_CST)
                future._interrupt_ref = ref
            _interrupt.request(self._tasks, ref)
        if first:
            future.add_done_callback(self._interrupt_done)  # runs at once if it finished meanwhile
        self._signal_workers()
        return True

    def _interrupt_done(self, future) -> None:
        """The interrupted task's future completed: forget its request."""
        with self._interrupt_lock:
            s = self._s
            ref, future._interrupt_ref = future._interrupt_ref, 0
            if s is None or not ref:
                return
            _interrupt.clear(self._tasks, ref)
            s.fetch_add32(H_INTERRUPTS, 0xFFFF_FFFF, _core.SEQ_CST)

    def _signal_workers(self) -> None:
        """Send the interrupt signal to every worker that has installed its
        handler (it publishes its pid after installing it)."""
        sup, s, lay = self._supervisor, self._s, self._layout
        with sup._lock:  # a process object is not reaped (its pid not reused) while we hold it
            for w, p in enumerate(sup.procs):
                if p is None or s is None or s.load32(lay.slice(w) + W_PID, _core.ACQUIRE) != p.pid:
                    continue
                try:
                    if isinstance(p, multiprocessing.process.BaseProcess):
                        os.kill(p.pid, _interrupt.SIGNAL)
                    else:
                        p._signal(_interrupt.SIGNAL)  # launcher.LaunchedProcess: through its pidfd
                except (ProcessLookupError, OSError):
                    pass  # it died meanwhile: the supervisor recovers its tasks

    # ---- map ------------------------------------------------------------------
    def map(self, fn, *iterables, timeout=None, chunksize=None, progress=None, buffersize=None):
        """Ordered results of ``fn(*args)`` over zipped `iterables`.

        Work starts at once; input is consumed lazily, a bounded window of
        chunks ahead of the consumer, so a huge or endless iterable is not
        materialised.  `chunksize` defaults to about 1/8 of a worker's share
        when the length is known, else it grows from 16 to 1024; `buffersize`
        (as in Python 3.14) is the number of chunks in flight.  `progress`
        (True, a description, or a tqdm-like object) shows a bar of the
        results consumed (progress.py).
        """
        from ..runtime.worker import run_chunk, run_chunk1

        if not iterables:
            raise TypeError("penny: map() needs at least one iterable")
        self._check_open()
        # The function's id when it has a stable one, else the function itself,
        # pickled with each chunk (it captures something mutable).
        fid = self._functions.stable_id(fn)
        target = fn if fid is None else fid
        # One iterable: send the items themselves (not 1-tuples) and map over them.
        chunk_fid = self._functions.id_for(run_chunk1 if len(iterables) == 1 else run_chunk)
        return self._chunked_map(fn, iterables, chunksize, timeout, progress, buffersize,
                                 lambda chunk: self._submit(chunk_fid, (target, chunk), None))

    def _chunked_map(self, fn, iterables, chunksize, timeout, progress, buffersize, submit_chunk):
        window = max(4, 4 * self._layout.workers)
        return chunked_map(fn, iterables, chunksize, self._layout.workers, window,
                           submit_chunk, timeout, progress, buffersize)

    # ---- collecting -----------------------------------------------------------
    def _collect_loop(self) -> None:
        s = self._s
        comp = self._layout.completions
        collect = s.collect
        qlen = s.queue_len
        futures = self._futures
        complete = self._complete
        spin = config.SPIN_ROUNDS

        def has_work():
            return self._collector_stop or qlen(comp) > 0

        idle = 0
        while True:
            try:
                fast, slow = collect(1024, futures)
                if fast or slow:
                    idle = 0
                    for fut, value in fast:
                        if fut is not None:
                            try:
                                fut.set_result(value)
                            except cf.InvalidStateError:
                                pass  # cancelled by the caller in the meantime
                    fut = value = None  # keep no result alive while idle (the caller may have dropped it)
                    for ref in slow:
                        complete(ref)
                    if self._backlog:
                        self._drain_backlog()
                    continue
            except Exception as e:  # noqa: BLE001 - never let the collector die silently
                self._collector_failed(e)
                return
            if self._collector_stop:
                return
            idle += 1
            if idle < spin:
                os.sched_yield()
                continue
            self._collector_parker.park(has_work, 0.5)

    def _collector_failed(self, e: Exception) -> None:
        """The collector cannot go on (a corrupt completion ring, a record it
        cannot read): mark the scheduler broken and fail every pending future
        with the error, now and until shutdown (a submit racing with this
        may register a future after the first sweep), so nothing hangs."""
        if isinstance(e, PennyError):
            err = e
        else:
            err = CorruptRegionError(f"penny: the result collector failed: {e!r}")
            err.__cause__ = e
        if self._broken is None:
            self._broken = err
        logging.getLogger("penny").error("penny: the scheduler is broken: %s", err)
        fail = self._supervisor._fail_everything
        while True:
            fail(self._broken)
            if self._collector_stop:
                return
            self._collector_parker.park(lambda: self._collector_stop, 0.1)

    def _complete(self, ref: int) -> None:
        """Move a finished task's outcome into its future and recycle the record."""
        tasks = self._tasks
        rec = tasks.record(ref)
        status = tasks.status(ref)  # acquire: pairs with the worker's release
        if status == -1:
            # Another generation: a second completion of a ref collected (and
            # its record freed) already, e.g. in the same batch, after a
            # supervisor routed a settled task again (crash-model.md,
            # "settle").  Freeing it again would put the record on the free
            # list twice.
            return
        fut = self._futures.pop(ref, None)
        flags = tasks.flags(rec)
        ok, value = False, None
        try:
            if status == S_DONE:
                value = marshal.decode_result(tasks, self._arena, rec, flags)
                ok = True
            elif status == S_FAILED:
                value = marshal.decode_exception(tasks, self._arena, rec)
            elif status == S_CANCELLED:
                if flags & F_ARGS_BLOB and tasks.blob(rec)[0]:
                    marshal.free_blob(self._arena, *tasks.blob(rec))
            elif status == S_CRASHED:
                value = WorkerCrashedError(self._crash_info.pop(ref, "penny: the worker running this task died"))
            else:
                value = RuntimeError(f"penny: task {ref:#x} completed in unexpected state {status}")
        except BaseException as e:  # noqa: BLE001 - e.g. a result that cannot be unpickled here
            value = TaskError(f"penny: the task's outcome could not be read back: {type(e).__name__}: {e}",
                              type(e).__name__)
            value.__cause__ = e
        finally:
            tasks.free(ref)
        if fut is None or status == S_CANCELLED:
            return
        try:
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
        except cf.InvalidStateError:
            pass  # cancelled by the caller in the meantime

    # ---- shutting down --------------------------------------------------------
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; with `wait`, finish the pending ones and release
        everything (processes, shared memory, threads) before returning.

        Called from a future's done-callback (which runs on the collector
        thread, the one that completes the pending futures, or on the thread
        that is shutting the scheduler down and fails or cancels futures),
        `wait` cannot wait: the shutdown then finishes in the background, as
        with ``wait=False``."""
        if self._foreign():
            return  # the parent's scheduler: nothing here is ours to stop
        me = threading.current_thread()
        if wait and (me in (self._collector, getattr(self._supervisor, "_thread", None))
                     or me.ident in self._stopping_threads):
            wait = False
        self._stopping_threads.add(me.ident)
        try:
            with self._shutdown_lock:
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
                self._teardown(force=False)
            else:
                threading.Thread(target=self._finish_in_background, name="penny-shutdown", daemon=True).start()
        finally:
            self._stopping_threads.discard(me.ident)

    def _finish_in_background(self) -> None:
        ident = threading.get_ident()
        self._stopping_threads.add(ident)
        try:
            self._wait_pending()
            self._teardown(force=False)
        finally:
            self._stopping_threads.discard(ident)

    def _cancel_pending(self) -> None:
        with self._backlog_lock:
            backlog = list(self._backlog)
        for fut, *_ in backlog:
            fut.cancel()
        for fut in list(self._futures.values()):
            fut.cancel()

    def _wait_pending(self) -> None:
        while not self._torn_down.is_set() and self._broken is None:
            with self._backlog_lock:
                futs = [item[0] for item in self._backlog]
            futs += list(self._futures.values())
            if not futs:
                return
            cf.wait(futs, timeout=0.5)

    def _abort(self) -> None:
        """Stop now (Ctrl-C, interpreter exit): cancel what is queued, give
        running tasks a moment, then terminate the workers."""
        if self._foreign():
            return  # a fork's exit touches nothing of its parent's
        ident = threading.get_ident()
        self._stopping_threads.add(ident)
        try:
            with self._shutdown_lock:
                self._closed = True
            self._cancel_pending()
            self._teardown(force=True)
        finally:
            self._stopping_threads.discard(ident)

    def _teardown(self, force: bool) -> None:
        with self._shutdown_lock:
            if self._torn_down.is_set() or getattr(self, "_tearing_down", False):
                already = True
            else:
                self._tearing_down = True
                already = False
        if already:
            self._torn_down.wait()
            return
        try:
            s = getattr(self, "_s", None)
            sup = getattr(self, "_supervisor", None)
            if sup is not None:
                sup.begin_stop()  # the exits below are not crashes
            if s is not None:
                # Release: workers that see the flag see everything before it.
                s.store32(H_SHUTDOWN, 1, _core.RELEASE)
                parking.wake_all(s, [self._layout.state(w) for w in range(self._layout.workers)])
            if sup is not None:
                sup.stop(timeout=1.0 if force else config.JOIN_TIMEOUT)
            if getattr(self, "_collector", None) is not None and self._collector.is_alive():
                self._collector_stop = True
                parking.wake_all(s, [H_COLLECTOR])
                if threading.current_thread() is not self._collector:
                    self._collector.join()
            err = SchedulerClosedError("penny: the scheduler shut down before this task finished")
            for fut in list(self._futures.values()):
                if not fut.done():
                    try:
                        fut.set_exception(err)
                    except cf.InvalidStateError:
                        pass
            self._futures.clear()
            for fut, *_ in list(self._backlog):
                if not fut.done():
                    fut.cancel()
            self._backlog.clear()
        finally:
            if getattr(self, "_recorders", None):
                _trace.stop_all(self)  # the last events, read while the region is mapped
            if getattr(self, "_region", None) is not None:
                self._s = None
                self._region.close()
            _context.live.discard(self)
            self._torn_down.set()

    # ---- shared arrays ----------------------------------------------------------
    def shared_array(self, shape, dtype="f8", fill=None):
        """A NumPy array of `shape` and `dtype` in this scheduler's shared memory,
        uninitialised unless `fill` is given (like ``numpy.empty``).  Passing it
        or any view of it to a task sends a descriptor, not the data; the task
        writes into the same memory.  Freed when the last view in any process is
        collected (its memory stays valid here even after shutdown)."""
        self._check_open()
        return shared.new_array(self._arena, shape, dtype, fill)

    def share(self, data):
        """A shared copy of an existing array (anything ``numpy.asarray`` takes),
        or, for bytes-like `data` without NumPy, of its bytes (a memoryview)."""
        self._check_open()
        return shared.share_any(self._arena, data)

    def shared_buffer(self, nbytes: int) -> memoryview:
        """A writable memoryview of `nbytes` in shared memory (no NumPy needed);
        it and its slices pass to tasks by reference, like shared arrays."""
        self._check_open()
        return shared.new_buffer(self._arena, nbytes)

    # ---- introspection --------------------------------------------------------
    @property
    def workers(self) -> int:
        return self._layout.workers

    @property
    def start_method(self) -> str:
        return self._method

    def stats(self, reset: bool = False) -> dict:
        """Per-worker counters (kept in shared memory by the workers) and totals,
        counted since the scheduler started or since the last ``stats(reset=True)``,
        which returns them and starts a new interval.  Workers publish their
        counters every config.STATS_FLUSH_EVERY tasks, when they go idle and
        before they park, so a busy worker's latest counts may lag."""
        self._check_foreign()
        s = self._s
        if s is None:
            raise SchedulerClosedError("penny: the scheduler is shut down")
        # Reset by baseline: the shared counters only grow (one writer each, the
        # worker, which keeps storing absolute values; a replacement worker goes
        # on from its predecessor's), so a reset records them here and later
        # reads subtract.  Nothing is written to shared memory, so a reset can
        # never race with a worker's flush: counts not yet flushed at the reset
        # simply land in the next interval, none is lost or counted twice.
        with self._stats_lock:
            now = time.monotonic()
            raw = [[s.load64(self._layout.stats(w) + 8 * i, _core.RELAXED) for i in range(len(STAT_NAMES))]
                   for w in range(self._layout.workers)]
            base, since = self._stats_base, self._stats_t0
            if reset:
                self._stats_base, self._stats_t0 = raw, now
        per = []
        for w, (vals, old) in enumerate(zip(raw, base)):
            row = {name: max(0, v - o) for name, v, o in zip(STAT_NAMES, vals, old)}
            row["worker"] = w
            per.append(row)
        totals = {name: sum(r[name] for r in per) for name in STAT_NAMES}
        return {
            "workers": per,
            "totals": totals,
            "interval_s": now - since,
            "pending": len(self._futures) + len(self._backlog),
            "queued": s.queue_len(self._layout.injector),
            "arena_used": self._arena.used(),
            "arena": self._arena.stats(),
            "region_bytes": self._layout.size,
        }

    # ---- tracing ----------------------------------------------------------------
    def trace(self, path=None) -> "_trace.Recorder":
        """Record the workers' events (task start and end, steals, spawns made
        visible, idle, park and wake) while a ``with`` block runs; with `path`,
        write them there as Chrome trace JSON at its end (open it in Perfetto or
        chrome://tracing; ``penny trace PATH --png out.png`` draws a timeline).
        ``rec = s.trace(); rec.start() ... rec.stop(); rec.save(path)`` works too."""
        self._check_open()
        return _trace.Recorder(self, path)

    def save_trace(self, path) -> str:
        """Write what a ``Scheduler(trace=True)`` recorded so far to `path` (Chrome trace JSON)."""
        if self._own_recorder is None:
            raise ValueError("penny: this scheduler was not created with trace=True; "
                             "use `with s.trace(path):` around the work to record")
        return self._own_recorder.save(path)

    def __repr__(self):
        state = "closed" if self._closed else "running"
        return f"<penny.Scheduler workers={self._layout.workers} start_method={self._method!r} {state}>"


def _install_sigterm() -> None:
    """SIGTERM of the main process shuts down cleanly: unless the program set
    its own handler, it raises SystemExit(143) in the main thread, so `with`
    blocks and `atexit` stop every scheduler (workers exit, nothing is left)
    instead of the process vanishing and its workers noticing a moment later."""
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # pragma: no cover - embedded interpreters
        pass


def _on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


@atexit.register
def _shutdown_all() -> None:
    for sched in list(_context.live):
        sched._abort()  # a no-op for a scheduler of the process we were forked from
