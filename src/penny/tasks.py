"""Task records: a fixed table in the shared region, recycled through a free list.

A record is named by a *ref*: its index plus the generation it had when it
was allocated (layout.make_ref).  The generation and the status share one
64-bit word (R_STATE), so a compare-and-swap on the status also checks that
the record was not freed and reused in between: a stale ref can never
cancel, claim or complete somebody else's task.

Status transitions (who makes them):

    FREE --alloc (submitter)--> QUEUED --claim (worker, CAS)--> RUNNING
    RUNNING --finish (worker)--> DONE | FAILED
    QUEUED --cancel (main, CAS)--> CANCELLED
    RUNNING --worker died (supervisor)--> CRASHED or QUEUED again (retry)
    DONE | FAILED | CANCELLED | CRASHED --free (main, after reading)--> FREE, generation+1
"""

from __future__ import annotations

from . import _core
from .layout import (
    H_TASK_FREE,
    R_LINK,
    R_STATE,
    RECORD_SIZE,
    Layout,
    make_ref,
)

GEN_MASK = 0x7FFF_FFFF  # generations stay below 2**31 so refs are positive int64


class TaskTable:
    __slots__ = ("s", "base", "capacity", "_pop", "_push", "_load64", "_store64", "_cas64", "_free")

    def __init__(self, shared: _core.Shared, layout: Layout):
        self.s = shared
        self.base = layout.tasks
        self.capacity = layout.task_capacity
        self._pop = shared.stack_pop
        self._push = shared.stack_push
        self._load64 = shared.load64
        self._store64 = shared.store64
        self._cas64 = shared.cas64
        self._free = shared.free_task

    def init_free_list(self) -> None:
        """Put every record on the free list, index 0 on top (creator only)."""
        push = self._push
        for i in range(self.capacity - 1, -1, -1):
            push(H_TASK_FREE, self.base, RECORD_SIZE, R_LINK, self.capacity, i)

    def record(self, index: int) -> int:
        return self.base + index * RECORD_SIZE

    def alloc(self) -> int:
        """A new ref, its record in state QUEUED-to-be (still FREE); 0 if the table is full."""
        i = self._pop(H_TASK_FREE, self.base, RECORD_SIZE, R_LINK, self.capacity)
        if i < 0:
            return 0
        # Relaxed: the pop's acquire already ordered us after the last free.
        gen = self._load64(self.base + i * RECORD_SIZE + R_STATE, _core.RELAXED) & GEN_MASK
        return make_ref(i, gen)

    def set_status(self, ref: int, status: int) -> None:
        """Store a status for a record we own (no one else may write it now).
        Release: the record's contents are visible to whoever reads this status."""
        i = (ref & 0xFFFF_FFFF) - 1
        self._store64(self.base + i * RECORD_SIZE + R_STATE, (status << 32) | (ref >> 32), _core.RELEASE)

    def transition(self, ref: int, old: int, new: int) -> bool:
        """CAS the status of *this generation* of the record from `old` to `new`.
        AcqRel: the winner sees the record as the last writer left it and
        publishes its own writes."""
        i = (ref & 0xFFFF_FFFF) - 1
        gen = ref >> 32
        ok, _ = self._cas64(self.base + i * RECORD_SIZE + R_STATE, (old << 32) | gen, (new << 32) | gen,
                            _core.ACQ_REL)
        return ok

    def status(self, ref: int) -> int:
        """Current status of this generation, or -1 if the record was recycled.
        Acquire: pairs with the release of the status' writer."""
        i = (ref & 0xFFFF_FFFF) - 1
        word = self._load64(self.base + i * RECORD_SIZE + R_STATE, _core.ACQUIRE)
        if (word & GEN_MASK) != ref >> 32:
            return -1
        return word >> 32

    def free(self, ref: int) -> None:
        """Recycle a record whose task is over (its blobs already freed)."""
        self._free(ref)  # C: state FREE|gen+1, then the free list's release CAS
