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

from .. import _core
from ..errors import PennyError
from .layout import (
    H_TASK_FREE,
    INLINE_SIZE,
    JOIN_GIVEN,
    R_ATTEMPTS,
    R_BLOB,
    R_BLOB_LEN,
    R_FLAGS,
    R_FN,
    R_INLINE,
    R_INTERRUPT,
    R_JOIN,
    R_LINK,
    R_OWNER,
    R_PARENT,
    R_SPAWNED,
    R_STATE,
    RECORD_SIZE,
    Layout,
    make_ref,
)

GEN_MASK = 0x7FFF_FFFF  # generations stay below 2**31 so refs are positive int64
_R = _core.RELAXED


class TaskTable:
    """The task table of one region, and the only Python code that knows the
    fields of a record.  `record(ref)` is a record's offset; the accessors
    below read and write its fields, each with the memory order it needs.
    Plain field reads and writes are relaxed: a record is published (and its
    fields made visible) by the release store or CAS of its status, or by the
    release push of its ref, and read after the matching acquire."""

    __slots__ = ("s", "base", "capacity", "_pop", "_push", "_load32", "_store32", "_load64", "_store64",
                 "_cas64", "_free")

    def __init__(self, shared: _core.Shared, layout: Layout):
        self.s = shared
        self.base = layout.tasks
        self.capacity = layout.task_capacity
        self._pop = shared.stack_pop
        self._push = shared.stack_push
        self._load32 = shared.load32
        self._store32 = shared.store32
        self._load64 = shared.load64
        self._store64 = shared.store64
        self._cas64 = shared.cas64
        self._free = shared.free_task

    def init_free_list(self) -> None:
        """Put every record on the free list, index 0 on top (creator only)."""
        push = self._push
        for i in range(self.capacity - 1, -1, -1):
            push(H_TASK_FREE, self.base, RECORD_SIZE, R_LINK, self.capacity, i)

    # ---- where a record is ---------------------------------------------------------
    def record(self, ref: int) -> int:
        """Offset of the record that `ref` names (PennyError if it names none:
        refs come from shared memory, which this process does not trust)."""
        i = (ref & 0xFFFF_FFFF) - 1
        if not 0 <= i < self.capacity:
            raise PennyError(f"penny: task ref {ref:#x} names no record (table of {self.capacity})")
        return self.base + i * RECORD_SIZE

    def record_at(self, index: int) -> int:
        return self.base + index * RECORD_SIZE

    def ref_at(self, index: int) -> tuple[int, int]:
        """(ref, status) of the record at `index` as it is now.  Acquire: pairs
        with the release of the status' writer."""
        word = self._load64(self.base + index * RECORD_SIZE + R_STATE, _core.ACQUIRE)
        return make_ref(index, word & GEN_MASK), word >> 32

    # ---- fields -----------------------------------------------------------------------
    def fn(self, rec: int) -> int:
        return self._load32(rec + R_FN, _R)

    def flags(self, rec: int) -> int:
        return self._load32(rec + R_FLAGS, _R)

    def set_flags(self, rec: int, flags: int) -> None:
        self._store32(rec + R_FLAGS, flags, _R)

    def flags_offset(self, rec: int) -> int:
        return rec + R_FLAGS

    def parent(self, rec: int) -> int:
        return self._load64(rec + R_PARENT, _R)

    def owner(self, rec: int) -> int:
        return self._load32(rec + R_OWNER, _R)

    def join(self, rec: int) -> int:
        """The join word: children finished, plus JOIN_GIVEN once the token is
        gone.  Acquire: pairs with the children's acq_rel counts, so their
        results are visible once they are seen counted."""
        return self._load32(rec + R_JOIN, _core.ACQUIRE)

    def spawned(self, rec: int) -> int:
        """Children published (written by the task's own worker only)."""
        return self._load32(rec + R_SPAWNED, _R)

    def set_spawned(self, rec: int, n: int) -> None:
        """For a supervisor finishing a dead worker's spawn (its owner is gone)."""
        self._store32(rec + R_SPAWNED, n, _R)

    def outstanding(self, rec: int) -> int:
        """Published children not yet finished (the task's own worker, or a
        supervisor after that worker died: the spawned count is then final).
        Never below 0: a worker that died between the two stores of a reset
        (spawned first) leaves more finished than spawned, and none is."""
        return max(0, self.spawned(rec) - (self.join(rec) & ~JOIN_GIVEN))

    def give_token(self, rec: int) -> int:
        """Give up the token of a task that holds it (its worker died): the
        join word before, as token_give's RMW.  AcqRel: paired with the
        children's counts."""
        return self.s.fetch_add32(rec + R_JOIN, JOIN_GIVEN, _core.ACQ_REL)

    def count_start(self, rec: int) -> int:
        """Add one to the times the task was started; the new count (relaxed:
        only the supervisor of a dead worker writes it, under its own lock)."""
        return self.s.fetch_add32(rec + R_ATTEMPTS, 1, _R) + 1

    def interrupt_word(self, rec: int) -> int:
        """The record's interrupt request word (runtime/interrupt.py).  Acquire:
        pairs with the release CAS of its writer (the main process, or the
        worker that delivers or passes a request on)."""
        return self._load32(rec + R_INTERRUPT, _core.ACQUIRE)

    def cas_interrupt(self, rec: int, old: int, new: int) -> bool:
        """CAS the interrupt request word (AcqRel: the main process and the
        workers both write it)."""
        return self.s.cas32(rec + R_INTERRUPT, old, new, _core.ACQ_REL)[0]

    def blob(self, rec: int) -> tuple[int, int]:
        """(arena offset, length) of the record's pickled arguments or result."""
        return self._load64(rec + R_BLOB, _R), self._load64(rec + R_BLOB_LEN, _R)

    def set_blob(self, rec: int, off: int, n: int) -> None:
        self._store64(rec + R_BLOB, off, _R)
        self._store64(rec + R_BLOB_LEN, n, _R)

    def inline(self, rec: int) -> tuple[int, int]:
        """(offset, capacity) of the record's inline area (for the C codec)."""
        return rec + R_INLINE, INLINE_SIZE

    # ---- the life of a record ---------------------------------------------------------

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
