"""Nested fork-join inside tasks: spawn, sync, and continuations on fibers.

A spawned child starts *private*: a `Handle` in this worker's private list,
no record, no atomic.  If the parent syncs it before anyone wanted it, it is
simply called: `penny.spawn` and `penny.sync` are C functions (_core.c,
section 9) and the unstolen case costs those two calls around the call
itself.  The child is *published* (given a task record and pushed on the
worker's shared Chase-Lev deque, where thieves steal from the top) only when
another worker is idle: each spawn reads the idle-worker count and, if
someone is idle and our shared deque is empty, publishes the oldest private
child, the biggest piece of work in a divide-and-conquer recursion (lazy task
creation).  This module holds the slow paths the C code calls back into.

Waiting for a published child (`sync`):

1. if it is done, take its result and free its record;
2. else pop the children of this task from our own shared deque and run them
   inline (on this stack) until it is done;
3. else it was stolen: *suspend*.  The running task holds one count on its
   own record's join counter (its token; every published child holds one
   more).  The task publishes its remaining private children, parks its
   fiber (a greenlet: its Python frames stay intact), gives up its token, and
   the worker goes on with its loop on a pooled fiber.  The child that takes
   the count to zero knows the parent's token is gone, so the parent is
   suspended: it posts the parent's ref to the owner worker's inbox and wakes
   it.  The owner's loop finds the ref and switches back to the fiber;
   `sync` returns.  A continuation never moves between processes.

Inline nesting is capped (config.MAX_INLINE_DEPTH): past it, a sync suspends
instead of running the child on the same stack, and a fresh fiber (with its
own recursion depth) runs it, so spawn chains of any depth finish without
hitting Python's recursion limit.

Every task ends with an implicit sync: private children still pending are
run, published ones are waited for and their records freed; an exception of
a child nobody synced fails the parent.
"""

from __future__ import annotations

import threading

from greenlet import getcurrent

from . import _core, config, marshal
from .errors import PennyError
from .layout import F_SUSPENDED, H_IDLE, R_FLAGS, R_JOIN, R_OWNER, RECORD_SIZE, S_DONE, S_FAILED, S_RUNNING
from .trace import PUBLISH, RESUME, SUSPEND

#: A child spawned by the running task (implemented in C: _core.Handle).
Handle = _core.Handle
_PRIVATE, _PUBLISHED, _DONE = 0, 1, 2

#: This process's ForkJoin when it is a worker (None in the main process).
_fork: "ForkJoin | None" = None


class ForkJoin(_core.ForkCore):
    """One worker's fork-join machinery.

    The C base holds what the fast paths touch (the running task, the inline
    depth, the private handles, the function-id cache); this class adds the
    slow paths: publication, waiting, suspending, the implicit sync.
    """

    def __init__(self, worker):
        global _fork
        super().__init__(worker.s, H_IDLE, worker.own, config.MAX_INLINE_DEPTH)
        _fork = self
        self.bind()
        self.w = worker
        self.s = worker.s
        self.suspended: dict = {}       # parent ref -> greenlet waiting for its children
        self.pool: list = []            # idle loop fibers, reused instead of created
        self.published: dict = {}       # task ref -> set of its published, untaken handles
        self.root = None                # the process's main greenlet

    def register(self, fn) -> int:
        """Function id for a first spawn of `fn` here (NotImportableError if a
        worker could not import it)."""
        fid = self.w.functions.id_for(fn)
        self.fids[fn] = fid
        return fid

    # ---- publication ---------------------------------------------------------------
    def publish_oldest(self) -> None:
        while True:
            h = self.take_oldest()
            if h is None:
                return
            if h.state != _PRIVATE:
                continue
            if not self.publish(h):
                self.untake(h)
            return

    def publish(self, h) -> bool:
        """Give a private child a record on our shared deque.  False if no record is free."""
        w = self.w
        ref = -1 if h.kwargs else self.s.spawn(h.fid, h.args, h.parent, w.own)
        if ref < 0:
            ref = w.spawn_slow(h.fid, h.args, h.kwargs, h.parent)
        if ref == 0:
            return False
        h.state = _PUBLISHED
        h.ref = ref
        h.fn = h.args = h.kwargs = None
        if w.tracing:
            w.trace.emit(PUBLISH, h.fid, ref)
        pub = self.published.get(h.parent)
        if pub is None:
            self.published[h.parent] = {h}
        else:
            pub.add(h)
        w.counts["published"] += 1
        return True

    # ---- sync (what the C fast path leaves) ---------------------------------------------
    def sync(self, h):
        """The child's result (its exception re-raised here)."""
        if h.state == _DONE:
            return self._outcome(h)
        if h.parent != self.task:
            raise PennyError("penny: a handle can only be synced by the task that spawned it")
        if h.state == _PRIVATE:
            if not self.remove(h):
                raise PennyError("penny: this handle is not pending in this worker")
            if self.depth < self.max_depth or not self.publish(h):
                return self.run_handle(h)
            # Too deep for this stack: it is published; a fresh fiber runs it.
        self.wait_for(h)
        return self._outcome(h)

    @staticmethod
    def _outcome(h):
        h.observed = True
        if h.failed:
            raise h.value
        return h.value

    def wait_for(self, h) -> None:
        """Until the published child `h` is done: help, then suspend."""
        w = self.w
        tasks = w.tasks
        parent = h.parent
        while True:
            st = tasks.status(h.ref)
            if st == S_DONE or st == S_FAILED:
                self.take(h)
                return
            if self.depth >= self.max_depth:
                break
            ref = self.s.pop_child(w.own, parent, w.current)
            if not ref:
                break
            self.run_inline(ref)
        # Stolen (or too deep): wait for every published child of this task.
        self.wait_all(parent, help=False)
        self.take(h)

    def wait_all(self, parent: int, help: bool = True) -> None:
        """Until every published child of task `parent` has finished."""
        w = self.w
        join = w.tasks.base + ((parent & 0xFFFF_FFFF) - 1) * RECORD_SIZE + R_JOIN
        load32 = self.s.load32
        # Acquire: pairs with the children's acq_rel decrements (their results).
        while load32(join, _core.ACQUIRE) > 1:
            if not help or self.depth >= self.max_depth:
                break
            ref = self.s.pop_child(w.own, parent, w.current)
            if not ref:
                break
            self.run_inline(ref)
        if load32(join, _core.ACQUIRE) > 1:
            self.suspend(parent, join)

    def run_inline(self, ref: int) -> None:
        self.depth += 1
        try:
            if self.w.tracing:
                self.w.run_traced(ref)
            else:
                self.w.run_task(ref)
        finally:
            self.depth -= 1

    def take(self, h) -> None:
        """Read a finished published child's outcome into its handle and free its record."""
        w = self.w
        s, tasks = self.s, w.tasks
        rec = tasks.base + ((h.ref & 0xFFFF_FFFF) - 1) * RECORD_SIZE
        st = tasks.status(h.ref)  # acquire: pairs with the child's release
        flags = s.load32(rec + R_FLAGS, _core.RELAXED)
        try:
            if st == S_DONE:
                h.value = marshal.decode_result(s, w.arena, rec, flags)
            else:
                h.value = marshal.decode_exception(s, w.arena, rec)
                h.failed = True
        except BaseException as e:  # noqa: BLE001 - an outcome that cannot be unpickled here
            h.value, h.failed = e, True
        finally:
            tasks.free(h.ref)
        h.state = _DONE
        pub = self.published.get(h.parent)
        if pub is not None:
            pub.discard(h)

    # ---- the end of a task -----------------------------------------------------------
    def end_task(self, ref: int) -> BaseException | None:
        """Implicit sync: run private children, wait for published ones, free their
        records.  Returns the first exception of a child nobody observed."""
        first = None
        while True:
            h = self.pop_newest(ref)
            if h is None:
                break
            if h.state != _PRIVATE:
                continue
            if self.depth >= self.max_depth and self.publish(h):
                continue
            try:
                self.run_handle(h)
            except BaseException as e:  # noqa: BLE001 - reported below
                h.observed = False
                if first is None:
                    first = e
        if ref in self.published:
            self.wait_all(ref)
            for h in self.published.pop(ref, ()):
                if h.state != _DONE:
                    self.take(h)
                if h.failed and not h.observed and first is None:
                    first = h.value
            self.published.pop(ref, None)
        return first

    # ---- fibers ----------------------------------------------------------------------
    def suspend(self, parent: int, join: int) -> None:
        """Park this fiber until every published child of `parent` has finished."""
        s = self.s
        # Whatever this fiber still holds privately goes where others can run it.
        kept = []
        while True:
            h = self.take_oldest()
            if h is None:
                break
            if h.state == _PRIVATE and not self.publish(h):
                kept.append(h)
        self.suspended[parent] = getcurrent()
        saved = (self.task, self.depth)
        self.w.counts["suspends"] += 1
        # Mark the task suspended and give up its token (AcqRel: pairs with the
        # children's decrements); the mark tells a supervisor that finds this
        # worker dead that the token is gone (supervisor.py).
        flags = join - R_JOIN + R_FLAGS
        if s.token_give(flags, F_SUSPENDED, join) == 1:
            # Every child finished in the meantime: no one will post us.
            del self.suspended[parent]
            s.token_take(flags, F_SUSPENDED, join)
            self.swap_private(kept)
            return
        self.task = 0
        self.depth = 0
        self.swap_private([])
        if self.w.tracing:
            self.w.trace.emit(SUSPEND, 0, parent)
        if self.pool:
            self.pool.pop().switch()
        else:
            from .worker import NEW_FIBER

            self.root.switch(NEW_FIBER)  # the root starts a fresh loop fiber
        # Resumed by our own loop: all children are done, the count is 0.
        self.task, self.depth = saved
        self.swap_private(kept)
        s.token_take(flags, F_SUSPENDED, join)  # token back, mark cleared

    def reap_orphan(self, ref: int) -> None:
        """A ref in our inbox that no fiber of ours waits for: a continuation of
        the worker this one replaced, whose last child has just finished.  Its
        frame died with that worker: fail it (supervisor.reap).  A stale ref
        (the record was reaped and recycled meanwhile) is ignored."""
        from .supervisor import reap

        w = self.w
        rec = w.tasks.base + ((ref & 0xFFFF_FFFF) - 1) * RECORD_SIZE
        s = self.s
        if (w.tasks.status(ref) == S_RUNNING and s.load32(rec + R_OWNER, _core.RELAXED) == w.wid
                and s.load32(rec + R_JOIN, _core.ACQUIRE) == 0):
            reap(s, w.lay, w.tasks, w.arena, ref,
                 f"penny: the worker running this task (worker {w.wid}) died while it was suspended in "
                 "sync (its Python frame is lost)")

    def resume(self, ref: int) -> None:
        """Switch to the fiber suspended on `ref` (from a loop fiber)."""
        g = self.suspended.pop(ref, None)
        if g is None:
            self.reap_orphan(ref)
            return
        self.w.counts["resumes"] += 1
        if self.w.tracing:
            self.w.trace.emit(RESUME, 0, ref)
        self.pool.append(getcurrent())
        g.switch()
        # Back here when some task suspends and picks this fiber from the pool.


# ---- the public functions (penny.spawn, penny.sync, penny.join, penny.parallel_for) ----

spawn = _core.spawn
sync = _core.sync


def _spawn_slow(fn, args, kwargs):
    """penny.spawn outside any task: submit to the current scheduler."""
    from .scheduler import current_scheduler

    fut = current_scheduler().submit(fn, *args, **(kwargs or {}))
    _outside_spawned().append(fut)
    return fut


def _sync_slow(handle):
    """penny.sync beyond the C fast path."""
    fork = _fork
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
        if err is not None:
            raise err
        return None
    futs = _outside_spawned()
    pending, futs[:] = list(futs), []
    for f in pending:
        f.result()
    return None


_core.set_fallbacks(_spawn_slow, _sync_slow)


def join(a, b):
    """Run `a` and `b`, possibly in parallel; return both results (Rayon's join).
    Each is a callable taking no argument or a tuple ``(fn, *args)``; `b` may
    run in another worker, so its function must be importable."""
    fa, aa = _split(a)
    fb, ab = _split(b)
    fork = _fork
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
    from .scheduler import current_scheduler

    sched = current_scheduler()
    fut_b = sched.submit(fb, *ab)
    fut_a = sched.submit(fa, *aa)
    return fut_a.result(), fut_b.result()


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
    fork = _fork
    inside = fork is not None and fork.task
    if grain is None:
        from .scheduler import current_scheduler

        workers = fork.w.lay.workers if inside else current_scheduler().workers
        grain = max(1, (stop - start) // (8 * workers))
    if not isinstance(grain, int) or grain < 1:
        raise ValueError(f"penny.parallel_for: grain must be a positive int, got {grain!r}")
    if inside:
        if progress:
            raise PennyError("penny.parallel_for: progress= works outside tasks only "
                             "(the main process draws the bar)")
        return _pfor(body, start, stop, grain)
    from .scheduler import current_scheduler

    if progress:
        from .progress import run_parallel_for

        return run_parallel_for(current_scheduler(), start, stop, body, grain, progress)
    return current_scheduler().submit(_pfor, body, start, stop, grain).result()


def _pfor(body, lo: int, hi: int, grain: int) -> None:
    """Task behind parallel_for: halve until `grain`, spawning the upper halves."""
    handles = []
    while hi - lo > grain:
        mid = (lo + hi) // 2
        handles.append(spawn(_pfor, body, mid, hi, grain))
        hi = mid
    body(lo, hi)
    for h in reversed(handles):
        sync(h)
    return None


def _pfor_counted(body, lo: int, hi: int, grain: int, counter: int) -> None:
    """`_pfor` that adds the items of each leaf to the shared word at offset
    `counter` (a progress slot, layout.H_PROGRESS), which the main process polls."""
    handles = []
    while hi - lo > grain:
        mid = (lo + hi) // 2
        handles.append(spawn(_pfor_counted, body, mid, hi, grain, counter))
        hi = mid
    body(lo, hi)
    # Relaxed: a progress hint; the bar is completed by the result anyway.
    _fork.s.fetch_add64(counter, hi - lo, _core.RELAXED)
    for h in reversed(handles):
        sync(h)
    return None


_outside = threading.local()  # .futures: penny.spawn outside tasks, per thread


def _outside_spawned() -> list:
    try:
        return _outside.futures
    except AttributeError:
        _outside.futures = []
        return _outside.futures
