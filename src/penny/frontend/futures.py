"""The futures Penny hands out: `concurrent.futures.Future` objects, slimmed.

A stock Future builds a `threading.Condition` (an RLock, a deque, five bound
methods) when it is created: about 1.6 KB and, when 20,000 are in flight,
most of the main process's time per task on these VMs (fresh memory is paid
in page faults).  `TaskFuture` keeps the Future's own code and state machine
and swaps in `_Condition`, the same algorithm as `threading.Condition` with
only what `Future`, `wait` and `as_completed` use (enter/exit, acquire,
release, wait, notify_all), its waiter list made on first wait: 0.4 KB.
"""

from __future__ import annotations

import _thread
import concurrent.futures as cf
import threading
import time
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, PENDING

from ..shm.layout import S_RUNNING


# How long the main thread blocks before it looks at its signals again.
SIGNAL_CHECK_S = 0.1


def _main_thread_acquire(waiter, timeout) -> bool:
    """`waiter.acquire(True, timeout)` in slices, for the main thread.

    A signal whose C handler runs just before the main thread blocks in a lock
    (or on another thread) leaves its Python handler pending until the main
    thread next runs bytecode: a SIGTERM or Ctrl-C could then wait for the
    result forever (seen on free-threaded 3.13t under load, a few times in
    ten).  Returning to Python every SIGNAL_CHECK_S runs it within that time."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = SIGNAL_CHECK_S if deadline is None else min(SIGNAL_CHECK_S, deadline - time.monotonic())
        if step <= 0:
            return waiter.acquire(False)
        if waiter.acquire(True, step):
            return True


class _Condition:
    __slots__ = ("_lock", "_waiters")

    def __init__(self):
        self._lock = _thread.RLock()
        self._waiters = None

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)

    def acquire(self, blocking=True, timeout=-1):
        return self._lock.acquire(blocking, timeout)

    def release(self):
        self._lock.release()

    def wait(self, timeout=None) -> bool:
        """Release the lock, block until notified or `timeout`, re-acquire.
        Must be called with the lock held (as threading.Condition.wait)."""
        waiter = _thread.allocate_lock()
        waiter.acquire()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        saved = self._lock._release_save()
        got = False
        try:
            if timeout is not None and timeout <= 0:
                got = waiter.acquire(False)
            elif _thread.get_ident() != threading.main_thread().ident:
                got = waiter.acquire() if timeout is None else waiter.acquire(True, timeout)
            else:
                got = _main_thread_acquire(waiter, timeout)
            return got
        finally:
            self._lock._acquire_restore(saved)
            if not got:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass

    def notify_all(self) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            waiter.release()

    def notify(self, n: int = 1) -> None:
        waiters = self._waiters or []
        for waiter in waiters[:n]:
            waiter.release()
            waiters.remove(waiter)


class TaskFuture(cf.Future):
    """A `concurrent.futures.Future` whose `cancel` also withdraws a queued task."""

    _interrupt_ref = 0  # the ref of an outstanding Scheduler.interrupt request (scheduler.py)

    def __init__(self, scheduler):
        # The attributes of Future.__init__, with the slim condition.
        self._condition = _Condition()
        self._state = PENDING
        self._result = None
        self._exception = None
        self._waiters = []
        self._done_callbacks = []
        self._scheduler = scheduler
        self._ref = 0  # 0 while waiting in the backlog

    def cancel(self) -> bool:
        """Cancel a task that no worker has started; True if it is cancelled.

        As an executor of the standard library does when it drops a cancelled
        work item, the future then goes on to CANCELLED_AND_NOTIFIED and tells
        its waiters, so `concurrent.futures.wait` and `as_completed` count it
        as done."""
        sched = self._scheduler
        if sched is None or self.done():
            ok = super().cancel()
        else:
            ok = sched._cancel(self)
        if ok:
            self._notify_cancelled()
        return ok

    def _notify_cancelled(self) -> None:
        with self._condition:
            if self._state != CANCELLED:
                return  # already notified (or never cancelled)
            self._state = CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)

    def running(self) -> bool:
        """True while a worker runs the task: read from its record in shared
        memory (the main process is not told when a task starts)."""
        if self._state != PENDING or not self._ref:
            return super().running()
        tasks = getattr(self._scheduler, "_tasks", None)
        try:
            return tasks is not None and tasks.status(self._ref) == S_RUNNING
        except (ValueError, AttributeError):  # the region is closed
            return False
