"""The object table of the threads backend: calls passed by reference.

A task of the threads backend never has its function, arguments or result
encoded.  Its record (the same task record, on the same deques and queues as
the processes backend's) carries one inline int, a *key*, under the function
id `CALL_FID`; the key names a `Call` in the scheduler's table, a dict the
worker threads share.  The worker runs ``table[key]`` and leaves the outcome
on the `Call`; whoever reads the outcome (the future of a submitted task, the
parent of a published child) takes the entry out of the table, so a Call is
alive from its submission until its outcome is read and no longer.

Atomicity relied on: one dict insertion, lookup or pop is atomic (under the
GIL; on a free-threaded build the dict's own per-object lock).  A key is put
before its record is published (the release push of the ref) and read after
the acquiring pop or steal, so a worker always finds it; the outcome is
written before the record's release status store and read after the
acquire load of the status (collector, `take`).
"""

from __future__ import annotations

import itertools

#: The function id of every task of the threads backend: "run ``table[args[0]]``".
#: Above the dynamic ids the function registry hands out (registry.DYNAMIC_BASE
#: plus its slots) and below forkjoin.ROUTE_AT_PUBLISH.
CALL_FID = 0xFFFF_FFFE


class Call:
    """``fn(*args, **kwargs)`` and, once run, its outcome (`value`, `failed`)."""

    __slots__ = ("fn", "args", "kwargs", "value", "failed")

    def __init__(self, fn, args, kwargs):
        self.fn = fn
        self.args = args
        self.kwargs = kwargs or None
        self.value = None
        self.failed = False

    def run(self) -> None:
        """Run it; the result or the exception (with its traceback) stays here."""
        fn, args, kwargs = self.fn, self.args, self.kwargs
        self.fn = self.args = self.kwargs = None  # the arguments die with the call
        try:
            self.value = fn(*args, **kwargs) if kwargs else fn(*args)
        except BaseException as exc:  # noqa: BLE001 - every outcome goes back to the caller
            self.value = exc
            self.failed = True

    def outcome(self):
        """The result, or the exception raised again (its traceback kept)."""
        if self.failed:
            raise self.value
        return self.value


class CallTable:
    """key -> Call (or ThreadFuture, the call of a submitted task), shared by a scheduler's caller threads and worker threads."""

    __slots__ = ("calls", "next")

    def __init__(self):
        self.calls: dict = {}
        # itertools.count's __next__ is one C call: atomic under the GIL, and
        # internally locked on a free-threaded build.
        self.next = itertools.count(1).__next__

    def put(self, call) -> int:
        """Enter `call` (anything with `run()`, `value`, `failed`); its key."""
        key = self.next()
        self.calls[key] = call
        return key

    def pop(self, key: int):
        return self.calls.pop(key, None)

    def __len__(self) -> int:
        return len(self.calls)

    def clear(self) -> None:
        self.calls.clear()
