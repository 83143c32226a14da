"""Parking and waking: idle processes sleep on a futex, publishers wake one.

The protocol (docs/protocols.md has the proof sketch):

Sleeper (a worker with nothing to do, or the main process's collector):
  1. sleepers += 1                            (SeqCst RMW)
  2. state := SLEEPY                          (SeqCst store)
  2'. SeqCst fence                            (pairs with the publisher's)
  3. look for work once more; if found, undo and go back to work
  4. CAS state SLEEPY -> SLEEPING             (fails if a publisher notified us)
  5. futex_wait(state, SLEEPING, timeout)     (returns at once if state moved)
  6. state := AWAKE; sleepers -= 1

Publisher (after making work visible with a release operation):
  a. SeqCst fence; if sleepers == 0: done (no syscall on a busy runtime)
  b. for each parking word: CAS SLEEPY/SLEEPING -> NOTIFIED; on success,
     futex_wake it if it was SLEEPING, and stop (wake one).

No lost wake-up: by the two SeqCst fences (2' and a), either the
sleeper's re-check (3) sees the work, or the publisher's load (a) and scan
(b) see everything the sleeper did before its fence: it is counted and
SLEEPY (or SLEEPING), the publisher's CAS succeeds, and step 4 fails or step
5 returns.  The fence 2' is what makes this hold beyond x86: a SeqCst store
or RMW followed by acquire loads is the store-buffering shape, which C11
(and AArch64, POWER) let go wrong.

Counted before SLEEPY, AWAKE before uncounted: a word that is not AWAKE is
always counted, so the supervisor's repair for a dead sleeper (decrement iff
its word is not AWAKE) never takes the count below the truth.  A death in
the one-instruction windows between 1 and 2, or between the two halves of 6,
leaves the count one high: publishers then scan the words once per publish
and find nobody, a cost, never a lost or late wake-up
(docs/crash-model.md, "park").
"""

from __future__ import annotations

from .. import _core, _killpoints

#: The sleeper's SeqCst fence (2'); a module global so a test can see it issued.
_fence = _core.fence
_SEQ_CST = _core.SEQ_CST

AWAKE = _core.AWAKE
SLEEPY = _core.SLEEPY
SLEEPING = _core.SLEEPING
NOTIFIED = _core.NOTIFIED
_MINUS_ONE = 0xFFFF_FFFF  # 32-bit fetch_add of -1


class Parker:
    """The sleeping side of one parking word."""

    __slots__ = ("s", "state", "sleepers")

    def __init__(self, shared: _core.Shared, state_offset: int, sleepers_offset: int):
        self.s = shared
        self.state = state_offset
        self.sleepers = sleepers_offset

    def park(self, has_work, timeout: float | None) -> bool:
        """Sleep until notified or `timeout` s, unless `has_work()` turns true
        first.  Returns True if a publisher notified us."""
        s = self.s
        # Counted first, then SLEEPY; AWAKE first, then uncounted: a parking
        # word that is not AWAKE always means "counted", so the supervisor's
        # repair for a dead sleeper (decrement iff its word is not AWAKE) is
        # never one too many (docs/crash-model.md, "park").
        s.fetch_add32(self.sleepers, 1, _core.SEQ_CST)         # 1
        if _killpoints.ARMED:
            _killpoints.hit("park.announce")
        s.store32(self.state, SLEEPY, _core.SEQ_CST)           # 2: SeqCst, see module doc
        try:
            # 2': SeqCst fence between the announcement (1, 2) and the re-check's
            # acquire loads; pairs with the publisher's fence (notify_one).
            _fence(_SEQ_CST)
            if not has_work():                                  # 3
                ok, _ = s.cas32(self.state, SLEEPY, SLEEPING, _core.ACQ_REL)  # 4
                if ok:
                    s.futex_wait(self.state, SLEEPING, timeout)  # 5
                    if _killpoints.ARMED:
                        _killpoints.hit("park.after_wait")
        finally:
            # 6: AcqRel exchange: if a publisher notified us, its published
            # work happens-before what we do next.
            old = s.exchange32(self.state, AWAKE, _core.ACQ_REL)
            s.fetch_add32(self.sleepers, _MINUS_ONE, _core.SEQ_CST)
        return old == NOTIFIED


class Notifier:
    """The publishing side for a table of parking words (one per sleeper)."""

    __slots__ = ("_notify", "sleepers", "states", "stride", "count")

    def __init__(self, shared: _core.Shared, sleepers_offset: int, states_offset: int, stride: int, count: int):
        self._notify = shared.notify
        self.sleepers = sleepers_offset
        self.states = states_offset
        self.stride = stride
        self.count = count

    def notify_one(self, start: int = 0) -> int:
        """Wake one sleeper, preferring index `start` onwards.  The index woken, or -1."""
        return self._notify(self.sleepers, self.states, self.stride, self.count, start)


def wake_all(shared: _core.Shared, state_offsets) -> None:
    """Notify every parking word (shutdown): each sleeper wakes and re-checks."""
    for off in state_offsets:
        # AcqRel: the shutdown flag stored before is visible to the sleeper.
        shared.exchange32(off, NOTIFIED, _core.ACQ_REL)
        shared.futex_wake(off)
