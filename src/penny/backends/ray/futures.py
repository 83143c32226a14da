"""The driver's futures: `RayFuture`, a `concurrent.futures.Future` for one
Ray task, resolved lazily; its scheduler (``_sched._settle``) moves the
outcome in.
"""

from __future__ import annotations

import concurrent.futures as cf
from concurrent.futures._base import PENDING

from ...frontend.futures import _Condition
from .errors import _rex, ray


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
