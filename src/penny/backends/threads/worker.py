"""A worker thread: the processes backend's Worker and ForkJoin, by reference.

`ThreadWorker` is `runtime.worker.Worker` (the same loop: pop, steal, take a
batch from the global queue, spin, park on a futex) running on a thread of
the calling process over the scheduler's region, which no other process ever
maps.  What differs is only how a task's function, arguments and outcome
travel: every record names `calls.CALL_FID` with one inline key into the
scheduler's `CallTable`, so nothing is pickled and objects keep their
identity.  `ThreadForkJoin` is `runtime.forkjoin.ForkJoin` bound to its
thread (penny.spawn/sync find it per thread) that publishes a child as such
a key instead of encoding it.
"""

from __future__ import annotations

import types

from ... import _context
from ...runtime.forkjoin import ForkJoin
from ...runtime.worker import Worker
from ...shm.layout import S_DONE
from ...trace.rings import PUBLISH
from ...wire import marshal
from .calls import CALL_FID, Call



def _module_level(fn) -> bool:
    """A function of a module (lives as long as its module): safe to cache.
    Not lambdas, nested functions, nor builtin methods bound to an object."""
    if type(fn) is types.FunctionType:
        return "<" not in fn.__qualname__
    if type(fn) is types.BuiltinFunctionType:
        owner = fn.__self__
        return owner is None or isinstance(owner, types.ModuleType)
    return False


class ThreadForkJoin(ForkJoin):
    """One worker thread's fork-join machinery."""

    def __init__(self, worker):
        self.table = worker.table
        super().__init__(worker)
        self.pub: dict = {}  # ref of a published child -> its table key

    def install(self) -> None:
        # Per thread: the C fast paths' fork state is thread-local, and the
        # Python side's is `_context.thread_fork` (`_context.fork` stays None).
        _context.thread_fork.fork = self
        self.bind_thread()

    def uninstall(self) -> None:
        self.unbind()
        if getattr(_context.thread_fork, "fork", None) is self:
            _context.thread_fork.fork = None

    def register(self, fn) -> int:
        """Every child runs as CALL_FID.  Plain module-level functions are
        cached for the C fast path (lambdas and nested functions are not: the
        cache would keep each one alive)."""
        if not callable(fn):
            raise TypeError(f"penny.spawn: {fn!r} is not callable")
        if _module_level(fn):
            self.fids[fn] = CALL_FID
        return CALL_FID

    def publish(self, h) -> bool:
        """Give a private child a record on our shared deque: its call goes in
        the table, its record carries the key.  False if no record is free."""
        w = self.w
        key = self.table.put(Call(h.fn, h.args, h.kwargs))
        ref = self.s.spawn(CALL_FID, (key,), h.parent, w.own, w.held)
        if ref <= 0:
            self.table.pop(key)
            if ref < 0:
                raise RuntimeError("penny: a call key did not fit a task record (broken invariant)")
            return False
        h._publish(ref)
        self.pub[ref] = key
        if w.tracing:
            w.trace.emit(PUBLISH, CALL_FID, ref)
        pub = self.published.get(h.parent)
        if pub is None:
            self.published[h.parent] = {h}
        else:
            pub.add(h)
        w.counts["published"] += 1
        return True

    def take(self, h) -> None:
        """A finished published child: its outcome from its Call, its record freed."""
        w = self.w
        tasks = w.tasks
        st = tasks.status(h.ref)  # acquire: pairs with the child's release (the Call's outcome)
        call = self.table.pop(self.pub.pop(h.ref, 0))
        try:
            if st == S_DONE and call is not None:
                value, failed = call.value, call.failed
            else:  # a fault of Penny's own code in the thief (finish_slow pickled it)
                value, failed = marshal.decode_exception(tasks, w.arena, tasks.record(h.ref)), True
        except BaseException as e:  # noqa: BLE001
            value, failed = e, True
        finally:
            tasks.free(h.ref)
        h._settle(value, failed)
        pub = self.published.get(h.parent)
        if pub is not None:
            pub.discard(h)


class ThreadWorker(Worker):
    """`runtime.worker.Worker` on a thread of the scheduler's process."""

    fork_class = ThreadForkJoin
    interruptible = False  # the interrupt's signal handler needs the main thread (docs/interrupt.md)
    own_process = False    # threads share one Shared and never die alone: no ring claims to repair

    def __init__(self, sched, wid: int, seed):
        self.table = sched._table
        super().__init__(sched._region, wid, sched._functions.static, sched._method, seed)
        calls = self.table.calls

        def run_call(key):
            calls[key].run()  # the outcome stays on the Call; the task's value is None (inline)

        self.by_id[CALL_FID] = run_call

    def finish_slow(self, ref: int, flags: int, value, failed: bool) -> None:
        """The implicit sync failed the task (a child's exception nobody synced):
        the outcome goes on its Call like any other, the record says DONE."""
        call = None
        try:
            (key,) = self.s.unpack_inline(*self.tasks.inline(self.tasks.record(ref)))
            call = self.table.calls.get(key)
        except Exception:  # noqa: BLE001 - not a call record: the general path below
            pass
        if call is None:
            return super().finish_slow(ref, flags, value, failed)
        if failed and not call.failed:
            call.value, call.failed = value, True
        value = None
        if not self.s.finish(ref, None, self.current):
            super().finish_slow(ref, flags, None, False)
