"""Trace rings: the per-worker event records in the shared region (the writer's side).

Recording (docs/observability.md has the user's view):

* Each worker owns a ring of fixed-size records in the shared region
  (layout.py: ``Layout.trace``; TRACE_RECORD = 32 bytes: CLOCK_MONOTONIC ns
  u64, kind u32, a u32, b u64, c u64).  Only its owner writes it, with plain
  stores, then publishes the count of records written (the ring's head) with
  a release store.  Records are never waited for: a full ring overwrites its
  oldest records.
* Workers write only while the header word H_TRACE (active recorders) is
  non-zero.  They read that word when they flush their counters (every
  STATS_FLUSH_EVERY tasks) and when they come back from idling, and keep it
  in a local bool: the per-task cost of tracing being off is one test of a
  local variable.  So tracing starts within one flush interval on a busy
  worker, and before the first task on an idle one.
* What is recorded is what the Python worker loop sees: a task's start and end
  (around ``run_task``, for tasks taken from a deque or the global queue and
  for published children run inline by a ``sync``), steals, batches taken
  from the global queue, entering and leaving idleness, parking and waking,
  publication of a spawned child (a spawn made visible to thieves) and the
  suspension and resumption of a task waiting in ``sync``.  Private children
  that the C fast paths run as plain calls (an unstolen ``spawn`` + ``sync``)
  leave no event: they are part of their parent's time, as in Cilk.
* A `Recorder` in the main process drains every ring every TRACE_POLL
  seconds on a thread, copying raw bytes (the seqlock-style read below);
  records are parsed only when the trace is exported.

Reading a ring while its owner writes it (a seqlock in all but name): the
head is loaded with acquire, records below it are complete.  While they are
copied the owner may lap the ring and overwrite some; after the copy an
acquire fence and a second load of the head tell which: a record of index i
is intact if i > head2 - capacity (the owner, having published head2, may be
writing the slot of index head2, which held index head2 - capacity).  The
writer issues a release fence before it writes a record, so a reader that
saw an overwritten slot also sees the head that announced it.  Overwritten
records are counted as dropped, never returned half-written.
"""

from __future__ import annotations

import struct
import time

from .. import _core
from ..shm.layout import H_TRACE, T_HEAD, T_RECORDS, TRACE_RECORD

# ---- event kinds (record field `kind`); a, b, c as noted ----
TASK_BEGIN = 1     # a: function id, b: task ref
TASK_END = 2       # a: function id, b: task ref
STEAL = 3          # a: victim worker, b: task ref
INJECTED = 4       # a: refs taken from the global queue in one batch
IDLE_BEGIN = 5     # the loop found no work: look again, spin, then park
IDLE_END = 6       # a: 1 if it found work, 0 if it is exiting
PARK = 7           # asleep on the futex
WAKE = 8           # a: 1 if notified by a publisher, 0 if the park timed out
PUBLISH = 9        # a: function id, b: child ref (a spawn given a record, stealable)
SUSPEND = 10       # b: ref of the task whose fiber parks in sync
RESUME = 11        # b: ref of the task resumed
START = 12         # a: pid (the worker started tracing)

KIND_NAMES = {
    TASK_BEGIN: "task_begin", TASK_END: "task_end", STEAL: "steal", INJECTED: "injected",
    IDLE_BEGIN: "idle_begin", IDLE_END: "idle_end", PARK: "park", WAKE: "wake",
    PUBLISH: "publish", SUSPEND: "suspend", RESUME: "resume", START: "start",
}

RECORD = struct.Struct("<QIIQQ")
assert RECORD.size == TRACE_RECORD

_now = time.monotonic_ns  # CLOCK_MONOTONIC: one clock for every process on the machine


# ---- the worker's side ---------------------------------------------------------------
class TraceWriter:
    """Appends records to one worker's ring (only that worker may use it)."""

    __slots__ = ("_write", "_store", "_fence", "_head_off", "_records", "_mask", "head")

    def __init__(self, shared: _core.Shared, layout, wid: int):
        ring = layout.trace(wid)
        self._write = shared.write_bytes
        self._store = shared.store64
        self._fence = _core.fence
        self._head_off = ring + T_HEAD
        self._records = ring + T_RECORDS
        self._mask = layout.trace_events - 1
        # A replacement worker (after a crash) continues after its predecessor's
        # records; relaxed: nobody else writes this word.
        self.head = shared.load64(self._head_off, _core.RELAXED)

    def emit(self, kind: int, a: int = 0, b: int = 0, c: int = 0) -> None:
        h = self.head
        # Release fence: our previous head store is visible before this record's
        # bytes start to overwrite a slot (what the reader's re-check relies on).
        self._fence(_core.RELEASE)
        self._write(self._records + (h & self._mask) * TRACE_RECORD, RECORD.pack(_now(), kind, a, b, c))
        self.head = h + 1
        # Release: pairs with the reader's acquire load of the head.
        self._store(self._head_off, h + 1, _core.RELEASE)


def tracing_requested(shared: _core.Shared) -> bool:
    """Whether some recorder is active (workers call this off the hot path)."""
    # Relaxed: a hint; a missed change is seen at the next flush or wake-up.
    return bool(shared.load32(H_TRACE, _core.RELAXED))
