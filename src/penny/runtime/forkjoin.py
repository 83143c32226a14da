"""Nested fork-join inside tasks: spawn, sync, and continuations on fibers.

A spawned child starts *private*: a `Handle` in this worker's private list,
no record, no atomic.  If the parent syncs it before anyone wanted it, it is
simply called: `penny.spawn` and `penny.sync` are C functions
(native/forkjoin.c) and the unstolen case costs those two calls around the
call itself.  The child is *published* (given a task record and pushed on the
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
   own record's join token (the word children count themselves finished
   on; the task counts the children it published).  The task publishes its
   remaining private children, parks its fiber (a greenlet: its Python
   frames stay intact), gives up its token, and the worker goes on with its
   loop on a pooled fiber.  The child whose count makes every published
   child finished after the token is gone knows the parent is suspended: it posts the parent's ref to the owner worker's inbox and wakes
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

from greenlet import getcurrent

from .. import _context, _core, _killpoints, config
from ..errors import ArgumentPicklingError, NotImportableError, PennyError
from ..shm.layout import (
    H_IDLE,
    JOIN_GIVEN,
    S_DONE,
    S_FAILED,
    S_RUNNING,
)
from ..trace.rings import PUBLISH, RESUME, SUSPEND
from ..wire import marshal
from ..wire.functions import qualified_name
from .interrupt import clear as clear_interrupt
from .recovery import reap

#: A child spawned by the running task (implemented in C: _core.Handle).
Handle = _core.Handle
_PRIVATE, _PUBLISHED, _DONE = 0, 1, 2

#: What a suspending task sends the root greenlet (Worker.run): "start a new loop fiber".
NEW_FIBER = "new-fiber"

#: The function id of a private child whose callable does not travel by name:
#: the real id (and maybe its pickle) is chosen only if the child is published.
ROUTE_AT_PUBLISH = 0xFFFF_FFFF


class ForkJoin(_core.ForkCore):
    """One worker's fork-join machinery.

    The C base holds what the fast paths touch (the running task, the inline
    depth, the private handles, the function-id cache); this class adds the
    slow paths: publication, waiting, suspending, the implicit sync.
    """

    def __init__(self, worker):
        super().__init__(worker.s, H_IDLE, worker.own, config.MAX_INLINE_DEPTH)
        self.install()
        self.w = worker
        self.s = worker.s
        self.suspended: dict = {}       # parent ref -> greenlet waiting for its children
        self.pool: list = []            # idle loop fibers, reused instead of created
        self.published: dict = {}       # task ref -> set of its published, untaken handles
        self.root = None                # the process's main greenlet
        self.pinned: set = set()        # private children that cannot be published (unpicklable)

    def install(self) -> None:
        """Become the fork state that penny.spawn/sync (C: per thread) and
        `_context.current_fork()` find: the process's, in a worker process."""
        _context.fork = self
        self.bind()

    def register(self, fn) -> int:
        """Function id for a spawn of `fn` that the C fast path did not know.
        A callable that travels by name is cached for the fast path; any other
        (a lambda, a closure, a partial) keeps ROUTE_AT_PUBLISH: nothing is
        pickled unless the child is published, and then its pickle is fresh."""
        functions = self.w.functions
        fid = functions.cached(fn)
        if fid is None and callable(fn) and qualified_name(fn) is not None:
            fid = functions.id_for(fn)
        if fid is None:
            if not callable(fn):
                raise TypeError(f"penny.spawn: {fn!r} is not callable")
            return ROUTE_AT_PUBLISH
        if functions.by_name(fn):
            try:
                self.fids[fn] = fid
            except TypeError:  # unhashable callable: the fast path asks again next time
                pass
        return fid

    # ---- publication ---------------------------------------------------------------
    def publish_oldest(self) -> None:
        """Publish the oldest private child that can be published; children
        that cannot (pinned) keep their place."""
        stuck = []
        try:
            while True:
                h = self.take_oldest()
                if h is None:
                    return
                if h.state != _PRIVATE:
                    continue
                if h in self.pinned:
                    stuck.append(h)
                    continue
                if not self.publish(h):
                    self.untake(h)
                return
        finally:
            for h in reversed(stuck):
                self.untake(h)

    def publish(self, h) -> bool:
        """Give a private child a record on our shared deque.  False if no record
        is free, or if its callable or arguments cannot be pickled: then it stays
        private (pinned) and its parent runs it at its sync, as if nobody had
        been idle, so a steal never changes a program's outcome."""
        w = self.w
        fid, args, kwargs = h.fid, h.args, h.kwargs
        try:
            if fid == ROUTE_AT_PUBLISH:
                fid, args, kwargs = w.functions.route(h.fn, args, kwargs)
            ref = -1 if kwargs else self.s.spawn(fid, args, h.parent, w.own, w.held)
            if ref < 0:
                ref = w.spawn_slow(fid, args, kwargs, h.parent)
        except (NotImportableError, ArgumentPicklingError, MemoryError):
            self.pinned.add(h)
            return False
        if ref == 0:
            return False
        h._publish(ref)  # private -> published; drops fn/args/kwargs (Handle fields are read-only)
        if w.tracing:
            w.trace.emit(PUBLISH, fid, ref)
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
        self.check_interrupt()  # back from waiting (maybe suspended): interrupted meanwhile?
        return self._outcome(h)

    def check_interrupt(self) -> None:
        """Raise TaskInterrupted here if the running task is due (runtime/interrupt.py):
        where a sync returns into the task, the state of fork-join consistent."""
        task = self.task
        if task:
            self.w.interrupts.check(task)

    @staticmethod
    def _outcome(h):
        h._observe(True)
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
        rec = w.tasks.record(parent)
        outstanding = w.tasks.outstanding  # acquire: pairs with the children's acq_rel counts (their results)
        while outstanding(rec):
            if not help or self.depth >= self.max_depth:
                break
            ref = self.s.pop_child(w.own, parent, w.current)
            if not ref:
                break
            self.run_inline(ref)
        if outstanding(rec):
            self.suspend(parent, rec)

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
        tasks = w.tasks
        rec = tasks.record(h.ref)
        st = tasks.status(h.ref)  # acquire: pairs with the child's release
        flags = tasks.flags(rec)
        try:
            if st == S_DONE:
                value, failed = marshal.decode_result(tasks, w.arena, rec, flags), False
            else:
                value, failed = marshal.decode_exception(tasks, w.arena, rec), True
        except BaseException as e:  # noqa: BLE001 - an outcome that cannot be unpickled here
            value, failed = e, True
        finally:
            if w.interrupts.active():
                clear_interrupt(tasks, h.ref)  # the record's next life starts without a request
            tasks.free(h.ref)
        h._settle(value, failed)  # published -> done
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
                h._observe(False)
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
        if self.pinned:  # this task's children are all done: forget those that were pinned
            self.pinned = {h for h in self.pinned if h.parent != ref}
        return first

    # ---- fibers ----------------------------------------------------------------------
    def suspend(self, parent: int, rec: int) -> None:
        """Park this fiber until every published child of `parent` (record `rec`) has finished."""
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
        # Give up its token: one RMW that adds JOIN_GIVEN to the join word
        # (AcqRel: pairs with the children's counts), which tells a
        # supervisor that finds this worker dead that the token is gone.
        if s.token_give(rec):
            # Every child finished in the meantime: no one will post us.
            del self.suspended[parent]
            s.token_take(rec)
            self.swap_private(kept)
            return
        if _killpoints.ARMED:
            _killpoints.hit("suspend.after_give")
        self.task = 0
        self.depth = 0
        self.swap_private([])
        if self.w.tracing:
            self.w.trace.emit(SUSPEND, 0, parent)
        if self.pool:
            self.pool.pop().switch()
        else:
            self.root.switch(NEW_FIBER)  # the root starts a fresh loop fiber
        # Resumed by our own loop: all children are done, the count is 0.
        self.task, self.depth = saved
        self.swap_private(kept)
        s.token_take(rec)  # token back
        if _killpoints.ARMED:
            _killpoints.hit("resume.after_take")

    def reap_orphan(self, ref: int) -> None:
        """A ref in our inbox that no fiber of ours waits for: a continuation of
        the worker this one replaced, whose last child has just finished.  Its
        frame died with that worker: fail it (supervisor.reap).  A stale ref
        (the record was reaped and recycled meanwhile) is ignored."""
        w = self.w
        tasks = w.tasks
        rec = tasks.record(ref)
        if (tasks.status(ref) == S_RUNNING and tasks.owner(rec) == w.wid
                and tasks.join(rec) & JOIN_GIVEN and not tasks.outstanding(rec)):
            reap(tasks, w.arena, ref,
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


# ---- the task behind parallel_for (runs in workers) ----------------------------------

spawn = _core.spawn
sync = _core.sync


def _body(body):
    """parallel_for's body: the callable itself, or its function id (one
    registration per parallel_for call, named by every subrange)."""
    return body if callable(body) else _context.current_fork().w.functions.lookup(body)


def _pfor(body, lo: int, hi: int, grain: int) -> None:
    """Task behind parallel_for: halve until `grain`, spawning the upper halves.
    `body` is a function id (or, on another backend, the callable)."""
    fn = _body(body)
    handles = []
    while hi - lo > grain:
        mid = (lo + hi) // 2
        handles.append(spawn(_pfor, body, mid, hi, grain))
        hi = mid
    fn(lo, hi)
    for h in reversed(handles):
        sync(h)
    return None


def _pfor_counted(body, lo: int, hi: int, grain: int, counter: int) -> None:
    """`_pfor` that adds the items of each leaf to the shared word at offset
    `counter` (a progress slot, layout.H_PROGRESS), which the main process polls."""
    fn = _body(body)
    handles = []
    while hi - lo > grain:
        mid = (lo + hi) // 2
        handles.append(spawn(_pfor_counted, body, mid, hi, grain, counter))
        hi = mid
    fn(lo, hi)
    # Relaxed: a progress hint; the bar is completed by the result anyway.
    _context.current_fork().s.fetch_add64(counter, hi - lo, _core.RELAXED)
    for h in reversed(handles):
        sync(h)
    return None
