"""A process SIGKILLed in the middle of a ring step (native/mpmc_ring.h),
repaired by `queue_repair` (docs/crash-model.md, "Rings").

Each case kills a real process at a named kill point inside a push or a
pop, on a ring in a file both processes map, and checks from the outside:
the ring is wedged as the crash model says (so the fault is real), and after
the repair nothing is lost, nothing is there twice, the order is kept and
the ring goes on working for several laps.  The scheduler-level cases (a
worker killed at the same steps) are in tests/test_kill_points.py.
"""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys

import pytest

from penny import _core
from tests import helpers as h

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAP = 8
RING = 0
NOTE = 4096  # the dead worker's note word (its slice's W_PUSH, in a scheduler)
SIZE = 8192
TAKER = 3

CHILD = """
import mmap, os, sys
from penny import _core
path, point, n, op = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
f = open(path, "r+b")
m = mmap.mmap(f.fileno(), {size})
s = _core.Shared(m)
s.set_taker({taker}, {note})
_core.arm_kill_point(point, n)
values = [int(v) for v in sys.argv[5:]]
for v in values:
    if op == "push":
        assert s.queue_push({ring}, v)
    else:
        print(s.queue_pop({ring}), flush=True)
os._exit(0)  # not reached: the kill point fires first
""".format(size=SIZE, taker=TAKER, note=NOTE, ring=RING)


@pytest.fixture
def ring(tmp_path):
    path = tmp_path / "ring"
    path.write_bytes(b"\0" * SIZE)
    f = open(path, "r+b")
    m = mmap.mmap(f.fileno(), SIZE)
    s = _core.Shared(m)
    s.queue_init(RING, CAP)
    yield s, str(path)
    s.release()
    m.close()
    f.close()


def die_at(path, point, n, op, values):
    """Run `op` on each value in a child that dies at the n-th pass of `point`."""
    p = subprocess.run([sys.executable, "-c", CHILD, path, point, str(n), op, *map(str, values)],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stdout, p.stderr)
    return [int(v) for v in p.stdout.split()]


def drain(s):
    out = []
    while (v := s.queue_pop(RING)) != _core.EMPTY:
        out.append(v)
    return out


def laps(s, start):
    """Three laps of pushes and pops, one item at a time and a full ring at
    a time: FIFO and exact."""
    for i in range(3 * CAP):
        assert s.queue_push(RING, start + i)
        assert s.queue_pop(RING) == start + i
    for lap in range(3):
        base = start + 1000 * (lap + 1)
        for i in range(CAP):
            assert s.queue_push(RING, base + i), "a ring of CAP slots takes CAP items"
        assert not s.queue_push(RING, base + CAP), "and no more"
        assert drain(s) == list(range(base, base + CAP))
    assert h.claimed_slots(s, RING) == []


def test_a_consumer_killed_after_its_claim(ring):
    s, path = ring
    for v in (1, 2, 3, 4, 5):
        assert s.queue_push(RING, v)
    # The child pops 1 and 2 and dies holding 3's slot.
    assert die_at(path, "inbox.pop_claimed", 3, "pop", range(5)) == [1, 2]
    assert len(h.claimed_slots(s, RING)) == 1
    assert drain(s) == [4, 5]
    # The wedge: one lap later the dead consumer's slot (position 2) is still
    # not free: positions 5-9 take pushes, position 10 (its slot) refuses
    # although the ring holds 5 items, fewer than its CAP - 1 free slots.
    pushed = 0
    while s.queue_push(RING, 100 + pushed):
        pushed += 1
    assert pushed == 2 + CAP - 5, "the claimed slot must block the push one lap later"
    # Repaired: its value comes back (the caller decides where it goes),
    # the slot is free, and the ring goes on.
    assert s.queue_repair(RING, TAKER, 0) == [3]
    assert h.claimed_slots(s, RING) == []
    assert s.queue_push(RING, 100 + pushed)
    assert drain(s) == list(range(100, 100 + pushed + 1))
    laps(s, 10_000)


@pytest.mark.parametrize("fill", ["note", "tombstone"])
def test_a_producer_killed_after_its_claim(ring, fill):
    s, path = ring
    # The child pushes 10 and 11 and dies having claimed a slot for 12.
    die_at(path, "queue_push.claimed", 3, "push", [10, 11, 12])
    assert s.load64(NOTE, _core.RELAXED) == 12, "the value is noted before the claim"
    assert len(h.claimed_slots(s, RING)) == 1
    assert s.queue_pop(RING) == 10
    assert s.queue_pop(RING) == 11
    # The wedge: what is pushed after the claim stays behind it.
    assert s.queue_push(RING, 20) and s.queue_push(RING, 21)
    assert s.queue_pop(RING) == _core.EMPTY
    assert s.queue_len(RING) >= 2
    value = s.load64(NOTE, _core.RELAXED) if fill == "note" else 0
    assert s.queue_repair(RING, TAKER, value) == []
    assert h.claimed_slots(s, RING) == []
    # Published with the noted value, or skipped as a tombstone; in order.
    assert drain(s) == ([12] if fill == "note" else []) + [20, 21]
    laps(s, 20_000)


def test_a_producer_killed_before_it_moved_the_position(ring):
    """The kill point sits before the claimant moves the shared position on:
    the next producer helps it along rather than pushing into its slot."""
    s, path = ring
    die_at(path, "queue_push.claimed", 1, "push", [7])
    assert s.queue_push(RING, 8)
    s.queue_repair(RING, TAKER, 7)
    assert drain(s) == [7, 8]
    laps(s, 30_000)


def test_repair_touches_only_the_dead_takers_claims(ring):
    s, path = ring
    for v in (1, 2, 3):
        assert s.queue_push(RING, v)
    die_at(path, "inbox.pop_claimed", 1, "pop", [0])  # holds 1's slot
    assert s.queue_repair(RING, TAKER + 1, 0) == [], "another worker's id: nothing to do"
    assert len(h.claimed_slots(s, RING)) == 1
    assert s.queue_repair(RING, TAKER, 0) == [1]
    assert s.queue_repair(RING, TAKER, 0) == [], "a second repair finds nothing"
    assert drain(s) == [2, 3]
    laps(s, 40_000)


def test_queue_repair_and_set_taker_refuse_bad_arguments(ring):
    s, _ = ring
    for bad in (-1, 1 << 14, 1 << 40):
        with pytest.raises((ValueError, OverflowError)):
            s.queue_repair(RING, bad, 0)
        with pytest.raises((ValueError, OverflowError)):
            s.set_taker(bad, NOTE)
    with pytest.raises((ValueError, OverflowError)):
        s.queue_repair(RING, 0, -5)
    with pytest.raises(ValueError):
        s.set_taker(0, NOTE + 3)  # not aligned
    with pytest.raises((ValueError, IndexError)):
        s.set_taker(0, SIZE)  # outside the buffer


def test_a_tombstone_is_skipped_by_every_pop(ring):
    """A cancelled push (repair with fill 0) is never handed out, whatever
    pops it: queue_pop, queue_pop_many."""
    s, path = ring
    die_at(path, "queue_push.claimed", 1, "push", [5])
    assert s.queue_push(RING, 6)
    s.queue_repair(RING, TAKER, 0)
    assert s.queue_pop_many(RING, 10) == [6]
    assert s.queue_pop(RING) == _core.EMPTY
    laps(s, 50_000)
