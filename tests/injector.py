"""The global injection queue: a bounded MPMC ring (Vyukov), in shared memory.

Any thread of any process may push and pop.  The main process injects root
tasks here, full deques spill here, and idle workers take from here.  Each
slot carries a sequence number that tells producers and consumers whose turn
it is, so a push and a pop each cost one CAS on the shared position.

The same structure carries completions from the workers to the main
process.  Both rings have as many slots as there are task records, and a
ref is in at most one ring at a time, so a push can never find them full:
`push` still reports it, and callers treat a full ring as a broken invariant.
"""

from __future__ import annotations

from penny import _core


def init(shared: _core.Shared, offset: int, capacity: int) -> None:
    shared.queue_init(offset, capacity)


def size(capacity: int) -> int:
    return _core.QUEUE_HEADER + 16 * capacity


class Injector:
    __slots__ = ("_push", "_pop", "_pop_many", "_len", "offset")

    def __init__(self, shared: _core.Shared, offset: int):
        self.offset = offset
        self._push = shared.queue_push
        self._pop = shared.queue_pop
        self._pop_many = shared.queue_pop_many
        self._len = shared.queue_len

    def push(self, ref: int) -> bool:
        return self._push(self.offset, ref)

    def pop(self) -> int:
        """A ref, or EMPTY (0)."""
        return self._pop(self.offset)

    def pop_many(self, limit: int) -> list:
        return self._pop_many(self.offset, limit)

    def __len__(self) -> int:
        return self._len(self.offset)
