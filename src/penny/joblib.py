"""A joblib backend on Penny whose nested ``Parallel`` calls stay parallel.

    import joblib, penny.joblib

    penny.joblib.register()
    with joblib.parallel_config(backend="penny", n_jobs=2):
        joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(10))

Outside tasks (the main process) a batch is ``Scheduler.submit``-ted; the
scheduler is the current one if there is one (``penny._context``), else one
this backend starts with ``n_jobs`` workers and shuts down when joblib drops
the backend (the end of the ``parallel_config`` block, or of a
``Parallel(backend="penny")`` call) or at interpreter exit.  Results come
back through joblib's callback (``supports_retrieve_callback``): for a list
result the calling thread runs it as each future finishes (`retrieval_context`),
for ``return_as="generator"`` the scheduler's collector thread does.  After
an error the batches not started yet are cancelled.

Inside a Penny task (a batch that calls ``Parallel`` again) the backend is
Penny again (`get_nested_backend`), Cilk style: each batch is
``penny.spawn``-ed as a child of the running task except the last one
submitted before retrieval, which the task itself runs first at retrieval
(`retrieval_context`); then the children are synced in order, each one's
callback called (a callback may submit the next batches: those are spawned at
once), until one fails.  A child nobody stole is run there by the sync; one
that was stolen makes the task suspend on its fiber while its worker steals
other work; no thread, no process, no new scheduler is started there.  After
an error the spawned children are still synced (their results dropped), the
held-back batch and those not submitted yet never run.  There ``Parallel``'s
`timeout` is not applied (the batches are synced in order).

Lazy splitting (``lazy=True``, the default): inside a task a nested call is
split as above only if some worker is idle when the call starts (the idle
count a spawn reads for lazy publication); otherwise `configure` returns 1
and joblib runs the call sequentially in the task (its ``n_jobs=1`` path: no
batches, no callbacks, a fraction of its per-call cost; its items then see
the task's own backend and nesting level, as under joblib's own sequential
path).  Every worker busy means the batches would all be run by this task
anyway; a call made once a worker is idle is split for it, and its first
spawn publishes this worker's oldest private child for the thief (the
spawn's own rule: someone idle and this worker's shared deque empty).
(Splitting also while the worker holds no private child, as lazy binary
splitting does, measured no better on two workers: 17 more calls split on
one worker, none of them stolen; benchmarks/RESULTS.md.)
``parallel_config(backend="penny", lazy=False)`` splits every nested call;
the setting travels to the nested levels.

joblib keeps its active config in a ``threading.local``, which all fibers
of a worker share: while a task waits in a nested call's sync the config is
put aside and restored when it resumes (`_sync_own_config`), so a task
resumes under its own config and the tasks run meanwhile do not inherit it.
(A task suspended in its own ``penny.sync`` inside a joblib batch is not
covered.)

``import penny.joblib`` does not import joblib: `register()` (or the first use
of `PennyBackend`) does.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import threading
import weakref

from . import _context, _core, spawn, sync
from .shm.layout import H_IDLE

__all__ = ["PennyBackend", "register"]  # noqa: F822 - PennyBackend comes from __getattr__ (joblib on first use)

_CLASS = None
_CLASS_LOCK = threading.Lock()
# Set with the class (joblib is imported then): what the per-batch paths use.
_parallel_config = None
_BatchedCalls = None
_joblib_local = None  # joblib.parallel._backend: the threading.local that holds joblib's active config
_CARRIERS: dict = {}  # (nesting level, lazy) -> the backend get_nested_backend names in a task's batches


def register(name: str = "penny", make_default: bool = False):
    """Register the backend with joblib under `name` (joblib's
    ``register_parallel_backend``) and return its class."""
    import joblib

    cls = _backend_class()
    joblib.register_parallel_backend(name, cls, make_default=make_default)
    return cls


def __getattr__(name):
    if name == "PennyBackend":
        return _backend_class()
    raise AttributeError(f"module 'penny.joblib' has no attribute {name!r}")


def _in_task() -> bool:
    fork = _context.current_fork()
    return fork is not None and bool(fork.task)


def _someone_idle(fork) -> bool:
    """Whether a worker is looking for work: the idle count that a spawn reads
    for lazy publication (runtime/forkjoin.py), read the same way (relaxed, a hint)."""
    s = getattr(fork, "s", None)
    return s is None or s.load32(H_IDLE, _core.RELAXED) != 0  # no shared region to ask: split


def _nested(nesting_level, lazy=True):
    """How a pickled backend comes back in a worker (see PennyBackend.__reduce__)."""
    cls = _CLASS if _CLASS is not None else _backend_class()
    return cls(nesting_level=nesting_level, lazy=lazy)


class _Child:
    """The future-like object of a batch inside a task: spawned (`handle`), or
    still held back to run in the parent itself (`call`, see PennyBackend.submit)."""

    __slots__ = ("call", "done", "error", "handle", "value")

    def __init__(self, call):
        self.call = call
        self.handle = None
        self.done = False
        self.value = None
        self.error = None

    def spawn(self) -> None:
        fn, args = self.call
        self.call = None
        self.handle = spawn(fn, *args)

    def wait(self) -> None:
        """Sync the spawned child, or run the held-back one here."""
        if self.done:
            return
        try:
            if self.handle is not None:
                self.value = _sync_own_config(self.handle)
            else:
                fn, args = self.call
                self.call = None
                self.value = fn(*args)
        except Exception as e:  # noqa: BLE001 - handed to joblib by result(); KeyboardInterrupt,
            self.error = e          # SystemExit and a fiber's GreenletExit go straight through
        self.done = True
        self.handle = None

    def result(self, timeout=None):
        self.wait()
        if self.error is not None:
            raise self.error
        return self.value

    get = result


def _sync_own_config(handle):
    """penny.sync(handle), with joblib's active config kept per fiber.

    joblib keeps it in a threading.local, which every fiber of a worker
    shares: a task suspended in this sync would otherwise resume under the
    config of whatever ran meanwhile (another task's batch, with its backend
    object and that call's children), and leave its own behind for the
    tasks that run while it waits.  So the config is taken away for the wait
    and put back after it (a child run inline here enters its own config)."""
    local = _joblib_local
    saved = local.__dict__.pop("config", None)
    try:
        return sync(handle)
    finally:
        if saved is None:
            local.__dict__.pop("config", None)
        else:
            local.config = saved


def _run_batch(items, n_jobs, nesting_level, lazy=True):
    """A joblib batch inside a task, as BatchedCalls.__call__ runs it: under the
    nested backend (Penny again, one level deeper)."""
    backend = _nested(nesting_level, lazy)  # first: in a fresh worker it imports joblib
    with _parallel_config(backend=backend, n_jobs=n_jobs):
        return [func(*args, **kwargs) for func, args, kwargs in items]


def _backend_class():
    global _CLASS, _parallel_config, _BatchedCalls, _joblib_local
    with _CLASS_LOCK:
        if _CLASS is None:
            from joblib import parallel_config
            from joblib.parallel import BatchedCalls
            from joblib.parallel import _backend as joblib_local

            _parallel_config, _BatchedCalls, _joblib_local = parallel_config, BatchedCalls, joblib_local
            _CLASS = _make_class()
        return _CLASS


def _make_class():
    from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase

    class PennyBackend(AutoBatchingMixin, ParallelBackendBase):
        """joblib's backend protocol on Penny (see the module docstring).

        ``parallel_config(backend="penny", scheduler=s)`` uses the Scheduler `s`."""

        #: n_jobs=None means every worker (as Dask's backend does).
        default_n_jobs = -1
        supports_retrieve_callback = True
        supports_inner_max_num_threads = False
        #: Batches run in worker processes: no shared memory, no threads.
        uses_threads = False
        supports_sharedmem = False

        def __init__(self, nesting_level=None, inner_max_num_threads=None, scheduler=None, lazy=True,
                     **kwargs):
            super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads,
                             **kwargs)
            self.lazy = lazy            # inside a task: lazy splitting (see the module docstring)
            self._given = scheduler
            self._sched = None
            self._owned = None          # [Scheduler] this backend started, shared with its finalizer
            self._futures = set()       # outside tasks: futures not done yet
            self._waiting = {}          # outside tasks, list results: future -> joblib's callback
            self._done = queue.SimpleQueue()  # those futures, as they finish
            self._children = collections.deque()  # inside a task: (child, callback) spawned, not synced
            self._held = None           # inside a task: (child, callback) held back (see submit)
            self._retrieving = False    # inside a task: in retrieval_context
            self._lock = threading.Lock()
            self._parallel_ref = None

        # joblib sets `parallel`; a weak reference keeps Parallel -> backend one way
        # (no cycle), so a dropped backend is freed, and its scheduler shut down, at once.
        @property
        def parallel(self):
            return self._parallel_ref() if self._parallel_ref is not None else None

        @parallel.setter
        def parallel(self, value):
            self._parallel_ref = weakref.ref(value) if value is not None else None

        def __reduce__(self):
            # A batch carries its nested backend to a worker: only the level and `lazy` travel.
            return (_nested, (self.nesting_level, self.lazy))

        # ---- sizes -----------------------------------------------------------
        def _workers(self):
            if _in_task():
                return _context.current_fork().w.lay.workers
            sched = self._sched or self._given or _current()
            if sched is not None:
                return sched.workers
            return os.cpu_count() or 1

        def effective_n_jobs(self, n_jobs):
            if n_jobs == 0:
                raise ValueError("n_jobs == 0 in Parallel has no meaning")
            if n_jobs is None:
                n_jobs = self.default_n_jobs
            if n_jobs < 0:
                return max(self._workers() + 1 + n_jobs, 1)
            return n_jobs

        def configure(self, n_jobs=1, parallel=None, prefer=None, require=None, **backend_kwargs):
            self.parallel = parallel
            n = self.effective_n_jobs(n_jobs)
            if n > 1:
                fork = _context.current_fork()
                if fork is None or not fork.task:
                    self._scheduler(n)
                elif self.lazy and not _someone_idle(fork):
                    # Lazy splitting: every worker is busy, so this call's batches
                    # would only be run by this task anyway.  joblib runs it
                    # sequentially here, at a fraction of its per-call cost; a call
                    # made once a worker is idle is split, and its first spawn
                    # publishes this worker's oldest private child for the thief.
                    return 1
            return n

        def _scheduler(self, n):
            if self._sched is not None and not self._sched._closed:
                return self._sched
            sched = self._given
            if sched is None and self._owned and not self._owned[0]._closed:
                sched = self._owned[0]
            if sched is None:
                sched = _current()
            if sched is None:
                from . import Scheduler

                sched = Scheduler(n)
                self._owned = [sched]
                weakref.finalize(self, _shutdown, self._owned)
            self._sched = sched
            return sched

        def get_nested_backend(self):
            level = (self.nesting_level or 0) + 1
            if _in_task():
                # joblib puts it in each BatchedCalls; in a task submit only reads its
                # level (a batch runs under a backend of its own: _run_batch), so one
                # object per level serves every batch of this process.
                key = (level, self.lazy)
                carrier = _CARRIERS.get(key)
                if carrier is None:
                    carrier = _CARRIERS[key] = type(self)(nesting_level=level, lazy=self.lazy)
                return carrier, None
            # Outside tasks the BatchedCalls travels to a worker, and its backend with it.
            return type(self)(nesting_level=level, lazy=self.lazy), None

        # ---- submitting and retrieving -------------------------------------------
        def submit(self, func, callback=None):
            if _in_task():
                return self._submit_child(func, callback)
            fut = self._scheduler(2).submit(func)
            with self._lock:
                self._futures.add(fut)
            fut.add_done_callback(self._forget)
            if callback is None:
                return fut
            parallel = self.parallel
            if parallel is not None and not parallel.return_generator:
                # A list result: retrieval_context calls the callbacks in this
                # thread as the futures finish (no polling: joblib's own loop
                # sleeps 10 ms while a result is pending).
                self._waiting[fut] = callback
                fut.add_done_callback(self._done.put)
            else:
                # A generator: the collector thread calls joblib's callback.
                fut.add_done_callback(callback)
            return fut

        def _submit_child(self, func, callback):
            if type(func) is _BatchedCalls:
                # The items travel as arguments of a function named by module
                # (cheaper than a cloudpickle of the BatchedCalls object).
                nested = func._backend
                call = (_run_batch, (func.items, func._n_jobs, getattr(nested, "nesting_level", None),
                                     getattr(nested, "lazy", self.lazy)))
            else:
                call = (func, ())
            child = _Child(call)
            if self._retrieving:
                # Submitted by a callback (the next batch of a long iterable): spawned
                # at once, where an idle worker can take it.
                child.spawn()
                self._children.append((child, callback))
                return child
            # Cilk style: the batch submitted last is held back, the parent runs it
            # itself at retrieval; the one held before it is spawned now.
            held, self._held = self._held, (child, callback)
            if held is not None:
                held[0].spawn()
                self._children.append(held)
            return child

        def _forget(self, fut):
            with self._lock:
                self._futures.discard(fut)

        def retrieve_result_callback(self, out):
            return out.result()

        @contextlib.contextmanager
        def retrieval_context(self):
            # Outside tasks, for a list result, wait here for each future to finish
            # and call its callback, until one fails (joblib then aborts the rest).
            # Inside a task: _run_children.
            if not _in_task():
                self._drain_futures()
                yield
                return
            self._retrieving = True
            try:
                self._run_children()
                yield
            finally:
                self._retrieving = False

        def _run_children(self):
            # Inside a task nothing calls joblib's callbacks: the parent runs the
            # batch held back first (its own share, as in Cilk), then syncs the
            # spawned ones in order, and calls each one's callback (which may
            # submit the next batches), until one fails (joblib then aborts the
            # rest; batches not submitted yet never run).  joblib's callbacks may
            # come in any order: each records its own batch's outcome and joblib
            # keeps the results in the items' order.
            children = self._children
            while True:
                held = self._held
                if held is not None:
                    self._held = None
                    child, callback = held
                elif children:
                    child, callback = children.popleft()
                else:
                    return
                child.wait()
                if callback is not None:
                    callback(child)
                if child.error is not None:
                    return

        def _drain_futures(self):
            while self._waiting:
                fut = self._done.get()
                callback = self._waiting.pop(fut, None)
                if callback is None:
                    continue  # a future of an aborted call
                callback(fut)
                if fut.cancelled() or fut.exception() is not None:
                    break

        def _sync_children(self):
            # A batch held back never ran: it is dropped (cancelled).  Spawned
            # children are synced, their results dropped, so none is left behind.
            self._held = None
            self._retrieving = False
            children = self._children
            while children:
                children.pop()[0].wait()

        def abort_everything(self, ensure_ready=True):
            # Queued futures are cancelled; a task's children are synced (above).
            self._sync_children()
            self._waiting.clear()
            with self._lock:
                pending = list(self._futures)
            for fut in pending:
                fut.cancel()

        def terminate(self):
            self._sync_children()
            self._waiting.clear()
            self._sched = None

    PennyBackend.__module__ = __name__
    PennyBackend.__qualname__ = "PennyBackend"
    return PennyBackend


def _current():
    if _context.in_worker:
        return None
    try:
        return _context.current_scheduler()
    except Exception:  # noqa: BLE001 - SchedulerClosedError: none is running
        return None


def _shutdown(owned) -> None:
    for sched in owned:
        sched.shutdown()
    owned.clear()
