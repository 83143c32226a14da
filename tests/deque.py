"""The Chase-Lev work-stealing deque, as two role handles over the C core.

A worker's deque lives in its slice of the shared region.  Its owner holds a
`Worker` handle (push and pop at the bottom, no CAS unless one item is left);
every process may hold a `Stealer` (take from the top with a CAS).  A steal
distinguishes `EMPTY` (nothing there) from `RETRY` (lost a race with another
thief or the owner: there may be more), as crossbeam-deque's ``Steal`` does.

Items are task refs: positive 63-bit integers.  The ring is bounded; `push`
returns False when it is full and the caller spills to the global queue, so
nothing is ever dropped.  Orderings follow Le, Pop, Cohen and Zappa Nardelli
(PPoPP 2013) and are commented at each access in ``src/penny/native/chase_lev.h``.
"""

from __future__ import annotations

from penny import _core

EMPTY = _core.EMPTY   # 0: the deque was empty
RETRY = _core.RETRY   # -1: lost a race; try again (or another victim)


def init(shared: _core.Shared, offset: int, capacity: int) -> None:
    """Initialise an empty deque at `offset` (before any process uses it)."""
    shared.deque_init(offset, capacity)


def size(capacity: int) -> int:
    """Bytes a deque of `capacity` slots occupies."""
    return _core.DEQUE_HEADER + 8 * capacity


class Worker:
    """The owner's end: only the worker that owns the deque may use it."""

    __slots__ = ("_push", "_pop", "_len", "offset")

    def __init__(self, shared: _core.Shared, offset: int):
        self.offset = offset
        self._push = shared.deque_push
        self._pop = shared.deque_pop
        self._len = shared.deque_len

    def push(self, ref: int) -> bool:
        """Push at the bottom; False if the ring is full (spill elsewhere)."""
        return self._push(self.offset, ref)

    def pop(self) -> int:
        """Pop the bottom (LIFO); EMPTY if there is nothing."""
        return self._pop(self.offset)

    def __len__(self) -> int:
        return self._len(self.offset)


class Stealer:
    """A thief's end: any process may steal from the top (FIFO)."""

    __slots__ = ("_steal", "_len", "offset")

    def __init__(self, shared: _core.Shared, offset: int):
        self.offset = offset
        self._steal = shared.deque_steal
        self._len = shared.deque_len

    def steal(self) -> int:
        """A ref, EMPTY, or RETRY when another process won the race."""
        return self._steal(self.offset)

    def __len__(self) -> int:
        return self._len(self.offset)
