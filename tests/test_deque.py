"""The Chase-Lev deque: penny.deque.Worker / Stealer over penny._core.Shared.

Single-process tests pin the sequential behaviour (LIFO pop, FIFO steal,
bounded ring, wrap-around) against a Python model; multi-process stress tests
check that every item pushed is taken exactly once while thieves race the
owner, as crossbeam-deque's steal tests do.
"""

from __future__ import annotations

import array
import collections
import mmap
import multiprocessing
import os
import random
import time

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from penny import _core
from penny.errors import CorruptRegionError
from tests import deque
from tests.deque import EMPTY, RETRY, Stealer, Worker
from tests.procs import join_all

FORK = multiprocessing.get_context("fork")
MAX_REF = (1 << 63) - 1


class Mem:
    """An anonymous shared mapping and its accessor, released on close."""

    def __init__(self, size: int):
        self.map = mmap.mmap(-1, (size + 4095) // 4096 * 4096)
        self.s = _core.Shared(self.map)

    def close(self):
        self.s.release()
        self.map.close()


@pytest.fixture
def make_deque():
    mems = []

    def make(capacity: int, offset: int = 0):
        mem = Mem(offset + deque.size(capacity))
        mems.append(mem)
        deque.init(mem.s, offset, capacity)
        return mem.s, Worker(mem.s, offset), Stealer(mem.s, offset)

    yield make
    for mem in mems:
        mem.close()




# ---- geometry -------------------------------------------------------------------


def test_size_is_header_plus_ring():
    assert deque.size(8) == _core.DEQUE_HEADER + 64
    assert _core.DEQUE_TOP != _core.DEQUE_BOTTOM
    assert _core.DEQUE_HEADER % 64 == 0


@pytest.mark.parametrize("capacity", [0, 1, 3, 6, 12, -4])
def test_capacity_must_be_a_power_of_two(capacity):
    mem = Mem(4096)
    try:
        with pytest.raises(ValueError, match="power of two"):
            deque.init(mem.s, 0, capacity)
    finally:
        mem.close()


def test_offset_must_be_aligned_and_in_range():
    mem = Mem(4096)
    try:
        with pytest.raises(ValueError, match="aligned"):
            deque.init(mem.s, 8, 4)
        with pytest.raises(IndexError):
            deque.init(mem.s, 4096 - 64, 4)
        with pytest.raises(IndexError):
            deque.init(mem.s, 0, 1024)  # header + 8 KiB ring does not fit 4 KiB
        with pytest.raises(ValueError, match="aligned"):
            mem.s.deque_push(8, 1)
        with pytest.raises(IndexError):
            mem.s.deque_pop(4096)
    finally:
        mem.close()


def test_a_corrupt_mask_cannot_make_the_deque_scribble(make_deque):
    s, w, t = make_deque(4)
    s.store64(128, (1 << 20) - 1)  # DQ_MASK: claims a 1M-slot ring
    with pytest.raises(CorruptRegionError, match="corrupt"):
        w.push(1)
    with pytest.raises(CorruptRegionError, match="corrupt"):
        t.steal()


def test_deque_at_a_nonzero_offset(make_deque):
    s, w, t = make_deque(4, offset=256)
    assert w.offset == t.offset == 256
    assert w.push(5) and w.push(6)
    assert t.steal() == 5
    assert w.pop() == 6
    assert s.read_bytes(0, 256) == bytes(256)  # nothing before it was touched


# ---- sequential behaviour ---------------------------------------------------------


def test_empty_deque(make_deque):
    s, w, t = make_deque(4)
    assert w.pop() == EMPTY == 0
    assert t.steal() == EMPTY
    assert len(w) == len(t) == 0
    assert w.pop() == EMPTY  # popping an empty deque leaves it consistent
    assert w.push(3)
    assert len(w) == 1
    assert w.pop() == 3


def test_pop_is_lifo_and_steal_is_fifo(make_deque):
    s, w, t = make_deque(8)
    for x in (1, 2, 3, 4, 5):
        assert w.push(x)
    assert len(w) == 5
    assert w.pop() == 5
    assert t.steal() == 1
    assert t.steal() == 2
    assert w.pop() == 4
    assert w.pop() == 3
    assert w.pop() == EMPTY
    assert t.steal() == EMPTY


def test_raw_shared_methods_agree_with_the_handles(make_deque):
    s, w, t = make_deque(4)
    assert s.deque_push(0, 10) is True
    assert s.deque_push(0, 11) is True
    assert s.deque_len(0) == 2
    assert s.deque_steal(0) == 10
    assert s.deque_pop(0) == 11
    assert s.deque_pop(0) == _core.EMPTY
    assert s.deque_steal(0) == _core.EMPTY
    assert RETRY == _core.RETRY == -1


@pytest.mark.parametrize("bad", [0, -1, 1 << 63, (1 << 64) - 1, -(1 << 62)])
def test_items_must_be_positive_63_bit_ints(make_deque, bad):
    s, w, t = make_deque(4)
    with pytest.raises(ValueError, match="positive"):
        w.push(bad)
    assert len(w) == 0


def test_largest_ref_round_trips(make_deque):
    s, w, t = make_deque(4)
    assert w.push(MAX_REF) and w.push(MAX_REF - 1)
    assert t.steal() == MAX_REF
    assert w.pop() == MAX_REF - 1


@pytest.mark.parametrize("capacity", [2, 4, 8])
def test_full_ring_refuses_a_push(make_deque, capacity):
    s, w, t = make_deque(capacity)
    for x in range(1, capacity + 1):
        assert w.push(x) is True
    assert w.push(99) is False
    assert len(w) == capacity
    assert t.steal() == 1  # a steal frees a slot at the top...
    assert w.push(100) is True
    assert w.push(101) is False
    assert w.pop() == 100  # ...and a pop one at the bottom
    assert w.push(102) is True
    got = [t.steal() for _ in range(capacity)]
    assert got == list(range(2, capacity + 1)) + [102]
    assert t.steal() == EMPTY


@pytest.mark.parametrize("capacity", [4, 8])
def test_wrap_around_many_laps(make_deque, capacity):
    """Push and take across the ring boundary thousands of times."""
    s, w, t = make_deque(capacity)
    model = collections.deque()
    rng = random.Random(capacity)
    nxt = 1
    for _ in range(20_000):
        op = rng.random()
        if op < 0.5:
            ok = w.push(nxt)
            assert ok == (len(model) < capacity)
            if ok:
                model.append(nxt)
            nxt += 1
        elif op < 0.75:
            assert w.pop() == (model.pop() if model else EMPTY)
        else:
            assert t.steal() == (model.popleft() if model else EMPTY)
        assert len(w) == len(model)
    top = s.load64(_core.DEQUE_TOP)
    assert top > 10 * capacity  # really went round the ring many times


@pytest.mark.parametrize("capacity", [4, 8])
def test_fill_and_drain_repeatedly(make_deque, capacity):
    s, w, t = make_deque(capacity)
    nxt = 1
    for lap in range(500):
        items = list(range(nxt, nxt + capacity))
        nxt += capacity
        for x in items:
            assert w.push(x)
        assert not w.push(nxt)
        if lap % 2:
            assert [w.pop() for _ in items] == items[::-1]
        else:
            assert [t.steal() for _ in items] == items
        assert w.pop() == EMPTY and t.steal() == EMPTY


class DequeModel(RuleBasedStateMachine):
    """Single-process sequences of push/pop/steal against collections.deque."""

    def __init__(self):
        super().__init__()
        self.mem = None

    @initialize(capacity=st.sampled_from([2, 4, 8, 16]))
    def make(self, capacity):
        self.capacity = capacity
        self.mem = Mem(deque.size(capacity))
        deque.init(self.mem.s, 0, capacity)
        self.w = Worker(self.mem.s, 0)
        self.t = Stealer(self.mem.s, 0)
        self.model = collections.deque()

    @rule(ref=st.integers(min_value=1, max_value=MAX_REF))
    def push(self, ref):
        ok = self.w.push(ref)
        assert ok == (len(self.model) < self.capacity)
        if ok:
            self.model.append(ref)

    @rule()
    def pop(self):
        assert self.w.pop() == (self.model.pop() if self.model else EMPTY)

    @rule()
    def steal(self):
        assert self.t.steal() == (self.model.popleft() if self.model else EMPTY)

    @precondition(lambda self: self.mem is not None)
    @rule(n=st.integers(min_value=1, max_value=20))
    def push_then_steal_many(self, n):
        """Long runs that cross the ring boundary."""
        for i in range(n):
            self.push(i + 1)
            self.steal()

    @invariant()
    def same_length(self):
        if self.mem is not None:
            assert len(self.w) == len(self.t) == len(self.model)

    def teardown(self):
        if self.mem is not None:
            self.mem.close()


TestDequeModel = DequeModel.TestCase
TestDequeModel.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


# ---- multi-process stress -------------------------------------------------------
#
# Region: [deque | control line | one record area per process].  Each process
# keeps what it took in a local list and writes it to its record area when it
# is done: count (u64) then the items (u64 each).

CTRL_READY = 0     # u32: thieves that are running
CTRL_DONE = 4      # u32: 1 once the owner has pushed everything and drained
CTRL_RETRIES = 8   # u64: RETRY results seen by all thieves
CTRL_STEALS = 16   # u64: successful steals by all thieves


class Harness:
    def __init__(self, capacity: int, n_items: int, thieves: int):
        self.capacity = capacity
        self.n = n_items
        self.thieves = thieves
        self.ctrl = (deque.size(capacity) + 63) // 64 * 64
        self.rec = self.ctrl + 64
        self.rec_size = 8 + 8 * n_items
        self.mem = Mem(self.rec + (thieves + 1) * self.rec_size)
        deque.init(self.mem.s, 0, capacity)

    def record(self, slot: int, taken: list) -> None:
        off = self.rec + slot * self.rec_size
        self.mem.s.write_bytes(off + 8, array.array("q", taken).tobytes())
        self.mem.s.store64(off, len(taken))  # SeqCst: after the items

    def taken(self, slot: int) -> list:
        off = self.rec + slot * self.rec_size
        n = self.mem.s.load64(off)
        return array.array("q", self.mem.s.read_bytes(off + 8, 8 * n)).tolist()

    def thief(self, slot: int, raw: bool) -> None:
        s = self.mem.s
        steal = (lambda: s.deque_steal(0)) if raw else Stealer(s, 0).steal
        taken = []
        retries = empty = 0
        s.fetch_add32(self.ctrl + CTRL_READY, 1)
        while True:
            x = steal()
            if x > 0:
                taken.append(x)
            elif x == RETRY:
                retries += 1  # lost a race: there may be more, try again
            elif x == EMPTY:
                if s.load32(self.ctrl + CTRL_DONE):
                    break
                empty += 1
                if empty % 32 == 0:
                    os.sched_yield()  # nothing to take for a while: let the owner run
            else:
                raise AssertionError(f"steal returned {x}")
        s.fetch_add64(self.ctrl + CTRL_RETRIES, retries)
        s.fetch_add64(self.ctrl + CTRL_STEALS, len(taken))
        self.record(slot, taken)

    def owner(self, seed: int, pop_rate: float, yield_every: int) -> tuple[list, int]:
        s = self.mem.s
        w = Worker(s, 0)
        rng = random.Random(seed)
        taken = []
        full = 0
        deadline = time.monotonic() + 20
        while s.load32(self.ctrl + CTRL_READY) < self.thieves:
            assert time.monotonic() < deadline, "thieves did not start"
            time.sleep(0.001)
        for i in range(1, self.n + 1):
            while not w.push(i):
                # A full ring: the runtime would spill to the global queue.
                # Here we let the thieves run, then take one back ourselves.
                full += 1
                if full % yield_every == 0:
                    os.sched_yield()
                    if w.push(i):
                        break
                x = w.pop()
                if x:
                    taken.append(x)
            if rng.random() < pop_rate:
                x = w.pop()
                if x:
                    taken.append(x)
        while True:
            x = w.pop()
            if x == EMPTY:
                break
            taken.append(x)
        assert len(w) == 0
        s.store32(self.ctrl + CTRL_DONE, 1)
        return taken, full

    def run(self, seed: int = 1, pop_rate: float = 0.3, yield_every: int = 16, timeout: float = 60.0) -> dict:
        procs = [
            FORK.Process(target=self.thief, args=(k + 1, k % 2 == 1), name=f"thief-{k}")
            for k in range(self.thieves)
        ]
        for p in procs:
            p.start()
        try:
            own, full = self.owner(seed, pop_rate, yield_every)
        finally:
            self.mem.s.store32(self.ctrl + CTRL_DONE, 1)
            join_all(procs, timeout)
        per_thief = [self.taken(k + 1) for k in range(self.thieves)]
        everything = own + [x for t in per_thief for x in t]
        counts = collections.Counter(everything)
        dup = {x: c for x, c in counts.items() if c > 1}
        lost = set(range(1, self.n + 1)) - counts.keys()
        bogus = counts.keys() - set(range(1, self.n + 1))
        assert not dup, f"{len(dup)} items taken more than once, e.g. {sorted(dup.items())[:10]}"
        assert not lost, f"{len(lost)} items lost, e.g. {sorted(lost)[:10]}"
        assert not bogus, f"items never pushed were taken: {sorted(bogus)[:10]}"
        assert len(everything) == self.n
        for t in per_thief:  # thieves take from the top: each one's items in push order
            assert t == sorted(t)
        return {
            "owner": len(own),
            "stolen": [len(t) for t in per_thief],
            "retries": self.mem.s.load64(self.ctrl + CTRL_RETRIES),
            "full": full,
        }

    def close(self):
        self.mem.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "capacity,pop_rate",
    [(16, 0.3), (16, 0.6), (1024, 0.3), (4, 0.9)],
    ids=["cap16-pushy", "cap16-poppy", "cap1024", "cap4-last-item"],
)
def test_owner_and_three_thieves_take_each_item_exactly_once(capacity, pop_rate):
    n = 200_000
    h = Harness(capacity, n_items=n, thieves=3)
    try:
        stats = h.run(seed=capacity, pop_rate=pop_rate)
    finally:
        h.close()
    assert stats["owner"] + sum(stats["stolen"]) == n


@pytest.mark.timeout(120)
def test_last_item_races_between_owner_and_thieves():
    """The owner pops almost at once after each push, so it mostly races the
    thieves for the last item (the CAS on top in pop)."""
    h = Harness(4, n_items=50_000, thieves=2)
    try:
        stats = h.run(seed=7, pop_rate=0.95)
    finally:
        h.close()
    assert stats["owner"] + sum(stats["stolen"]) == 50_000


@pytest.mark.timeout(120)
def test_retry_happens_and_is_handled():
    """Thieves that lose a CAS get RETRY, try again, and nothing is lost.

    RETRY needs a real race, so batches run until one is seen (each batch is
    checked for exactly-once on its own), within a generous deadline."""
    deadline = time.monotonic() + 60
    retries = 0
    batches = 0
    while retries == 0 and time.monotonic() < deadline:
        h = Harness(16, n_items=100_000, thieves=3)
        try:
            retries += h.run(seed=batches, pop_rate=0.3, yield_every=4)["retries"]
        finally:
            h.close()
        batches += 1
    assert retries > 0, f"no steal returned RETRY in {batches} contended batches"
