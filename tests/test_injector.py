"""The global injection queue: Vyukov's bounded MPMC ring (penny.injector).

Sequential behaviour against a FIFO model (including tiny capacities, so the
sequence numbers go round the ring many times), then producers and consumers
in separate processes: every item popped exactly once, none lost, and each
consumer sees each producer's items in the order they were pushed.
"""

from __future__ import annotations

import array
import collections
import mmap
import multiprocessing
import os
import time

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from penny import _core
from penny.errors import CorruptRegionError
from tests import injector
from tests.injector import Injector
from tests.procs import join_all

FORK = multiprocessing.get_context("fork")
EMPTY = _core.EMPTY
MAX_REF = (1 << 63) - 1


class Mem:
    def __init__(self, size: int):
        self.map = mmap.mmap(-1, (size + 4095) // 4096 * 4096)
        self.s = _core.Shared(self.map)

    def close(self):
        self.s.release()
        self.map.close()


@pytest.fixture
def make_queue():
    mems = []

    def make(capacity: int, offset: int = 0):
        mem = Mem(offset + injector.size(capacity))
        mems.append(mem)
        injector.init(mem.s, offset, capacity)
        return mem.s, Injector(mem.s, offset)

    yield make
    for mem in mems:
        mem.close()




# ---- geometry -------------------------------------------------------------------


def test_size_is_header_plus_slots():
    assert injector.size(4) == _core.QUEUE_HEADER + 4 * 16
    assert _core.QUEUE_HEADER % 64 == 0


@pytest.mark.parametrize("capacity", [0, 1, 3, 5, 100, -2])
def test_capacity_must_be_a_power_of_two(capacity):
    mem = Mem(4096)
    try:
        with pytest.raises(ValueError, match="power of two"):
            injector.init(mem.s, 0, capacity)
    finally:
        mem.close()


def test_offset_must_be_aligned_and_in_range():
    mem = Mem(4096)
    try:
        with pytest.raises(ValueError, match="aligned"):
            injector.init(mem.s, 16, 4)
        with pytest.raises(IndexError):
            injector.init(mem.s, 0, 256)  # 192 + 4 KiB of slots > 4 KiB
        with pytest.raises(IndexError):
            injector.init(mem.s, 4096, 2)
        with pytest.raises(ValueError, match="aligned"):
            mem.s.queue_push(8, 1)
        with pytest.raises(IndexError):
            mem.s.queue_pop(4096 - 64)
    finally:
        mem.close()


def test_a_corrupt_mask_cannot_make_the_ring_scribble(make_queue):
    s, q = make_queue(4)
    s.store64(128, (1 << 24) - 1)  # Q_MASK
    with pytest.raises(CorruptRegionError, match="corrupt"):
        q.push(1)
    with pytest.raises(CorruptRegionError, match="corrupt"):
        q.pop()


def test_queue_at_a_nonzero_offset(make_queue):
    s, q = make_queue(2, offset=512)
    assert q.offset == 512
    assert q.push(3)
    assert q.pop() == 3
    assert s.read_bytes(0, 512) == bytes(512)


# ---- sequential behaviour ---------------------------------------------------------


def test_empty_queue(make_queue):
    s, q = make_queue(4)
    assert q.pop() == EMPTY == 0
    assert len(q) == 0
    assert q.pop_many(10) == []
    assert q.pop() == EMPTY


def test_fifo_order(make_queue):
    s, q = make_queue(8)
    for x in (5, 3, 9, 1):
        assert q.push(x) is True
    assert len(q) == 4
    assert [q.pop() for _ in range(5)] == [5, 3, 9, 1, EMPTY]


def test_raw_shared_methods_agree_with_the_handle(make_queue):
    s, q = make_queue(4)
    assert s.queue_push(0, 7) is True
    assert s.queue_len(0) == 1
    assert q.pop() == 7
    q.push(8)
    assert s.queue_pop(0) == 8
    assert s.queue_pop_many(0, 3) == []


@pytest.mark.parametrize("bad", [0, -1, 1 << 63, (1 << 64) - 1])
def test_items_must_be_positive_63_bit_ints(make_queue, bad):
    s, q = make_queue(4)
    with pytest.raises(ValueError, match="positive"):
        q.push(bad)
    assert len(q) == 0


def test_largest_ref_round_trips(make_queue):
    s, q = make_queue(2)
    assert q.push(MAX_REF)
    assert q.pop() == MAX_REF


@pytest.mark.parametrize("capacity", [2, 4, 8])
def test_full_ring_refuses_a_push(make_queue, capacity):
    s, q = make_queue(capacity)
    for x in range(1, capacity + 1):
        assert q.push(x) is True
    assert q.push(99) is False
    assert q.push(99) is False
    assert len(q) == capacity
    assert q.pop() == 1
    assert q.push(100) is True
    assert q.push(101) is False
    assert [q.pop() for _ in range(capacity)] == list(range(2, capacity + 1)) + [100]
    assert q.pop() == EMPTY


@pytest.mark.parametrize("capacity", [2, 4])
def test_wrap_around_many_laps(make_queue, capacity):
    s, q = make_queue(capacity)
    nxt, expect = 1, 1
    for lap in range(5_000):
        k = lap % capacity + 1  # 1..capacity items per lap
        for _ in range(k):
            assert q.push(nxt)
            nxt += 1
        if k == capacity:
            assert not q.push(nxt)
        got = q.pop_many(k) if lap % 2 else [q.pop() for _ in range(k)]
        assert got == list(range(expect, expect + k))
        expect += k
        assert q.pop() == EMPTY
    assert s.load64(0) == s.load64(64) == nxt - 1  # enqueue and dequeue positions


def test_pop_many(make_queue):
    s, q = make_queue(8)
    for x in range(1, 7):
        q.push(x)
    assert q.pop_many(0) == []
    assert q.pop_many(-5) == []
    assert q.pop_many(2) == [1, 2]
    assert len(q) == 4
    assert q.pop_many(100) == [3, 4, 5, 6]
    assert q.pop_many(100) == []
    for x in range(10, 18):
        assert q.push(x)
    assert q.pop_many(8) == list(range(10, 18))


def test_pop_many_needs_an_int(make_queue):
    s, q = make_queue(4)
    with pytest.raises(TypeError):
        q.pop_many(1.5)


class InjectorModel(RuleBasedStateMachine):
    """push / pop / pop_many against a bounded collections.deque."""

    def __init__(self):
        super().__init__()
        self.mem = None

    @initialize(capacity=st.sampled_from([2, 4, 8, 16]))
    def make(self, capacity):
        self.capacity = capacity
        self.mem = Mem(injector.size(capacity))
        injector.init(self.mem.s, 0, capacity)
        self.q = Injector(self.mem.s, 0)
        self.model = collections.deque()

    @rule(ref=st.integers(min_value=1, max_value=MAX_REF))
    def push(self, ref):
        ok = self.q.push(ref)
        assert ok == (len(self.model) < self.capacity)
        if ok:
            self.model.append(ref)

    @rule()
    def pop(self):
        assert self.q.pop() == (self.model.popleft() if self.model else EMPTY)

    @rule(limit=st.integers(min_value=-1, max_value=20))
    def pop_many(self, limit):
        want = [self.model.popleft() for _ in range(min(max(limit, 0), len(self.model)))]
        assert self.q.pop_many(limit) == want

    @rule(n=st.integers(min_value=1, max_value=40))
    def stream(self, n):
        """Long push/pop runs: many laps of the sequence numbers."""
        for i in range(n):
            self.push(i + 1)
            self.pop()

    @invariant()
    def same_length(self):
        if self.mem is not None:
            assert len(self.q) == len(self.model)

    def teardown(self):
        if self.mem is not None:
            self.mem.close()


TestInjectorModel = InjectorModel.TestCase
TestInjectorModel.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


# ---- multi-process stress ----------------------------------------------------------
#
# Items are producer << 32 | sequence (sequence from 1), so a consumer can
# check that it saw each producer's items in push order.

CTRL_READY = 0      # u32: processes ready to start
CTRL_PRODUCED = 4   # u32: producers that have pushed everything
CTRL_FULL = 8       # u64: pushes refused because the ring was full


class Harness:
    def __init__(self, capacity: int, per_producer: int, producers: int, consumers: int):
        self.n = per_producer
        self.producers = producers
        self.consumers = consumers
        self.ctrl = (injector.size(capacity) + 63) // 64 * 64
        self.rec = self.ctrl + 64
        self.rec_size = 8 + 8 * per_producer * producers
        self.mem = Mem(self.rec + consumers * self.rec_size)
        injector.init(self.mem.s, 0, capacity)

    def start_together(self):
        s = self.mem.s
        s.fetch_add32(self.ctrl + CTRL_READY, 1)
        deadline = time.monotonic() + 20
        while s.load32(self.ctrl + CTRL_READY) < self.producers + self.consumers:
            assert time.monotonic() < deadline
            os.sched_yield()

    def producer(self, pid: int) -> None:
        s = self.mem.s
        q = Injector(s, 0)
        full = 0
        self.start_together()
        for i in range(1, self.n + 1):
            item = (pid << 32) | i
            while not q.push(item):
                full += 1
                if full % 8 == 0:
                    os.sched_yield()
        s.fetch_add64(self.ctrl + CTRL_FULL, full)
        s.fetch_add32(self.ctrl + CTRL_PRODUCED, 1)  # SeqCst: after the last push

    def consumer(self, cid: int, batch: int) -> None:
        s = self.mem.s
        q = Injector(s, 0)
        taken = []
        idle = 0
        self.start_together()
        while True:
            # Read "all produced" before popping: if the pop then finds the
            # ring empty, every item has already been taken.
            done = s.load32(self.ctrl + CTRL_PRODUCED) == self.producers
            if batch > 1:
                got = q.pop_many(batch)
                taken.extend(got)
                empty = not got
            else:
                x = q.pop()
                if x:
                    taken.append(x)
                empty = x == EMPTY
            if empty:
                if done:
                    break
                idle += 1
                if idle % 16 == 0:
                    os.sched_yield()
        off = self.rec + cid * self.rec_size
        s.write_bytes(off + 8, array.array("q", taken).tobytes())
        s.store64(off, len(taken))

    def taken(self, cid: int) -> list:
        off = self.rec + cid * self.rec_size
        n = self.mem.s.load64(off)
        return array.array("q", self.mem.s.read_bytes(off + 8, 8 * n)).tolist()

    def run(self, batches, timeout: float = 30.0) -> dict:
        procs = [FORK.Process(target=self.producer, args=(p + 1,)) for p in range(self.producers)]
        procs += [FORK.Process(target=self.consumer, args=(c, batches[c])) for c in range(self.consumers)]
        for p in procs:
            p.start()
        join_all(procs, timeout)
        per_consumer = [self.taken(c) for c in range(self.consumers)]
        everything = [x for t in per_consumer for x in t]
        want = {(p << 32) | i for p in range(1, self.producers + 1) for i in range(1, self.n + 1)}
        counts = collections.Counter(everything)
        dup = {x: c for x, c in counts.items() if c > 1}
        lost = want - counts.keys()
        bogus = counts.keys() - want
        assert not dup, f"{len(dup)} items popped more than once, e.g. {sorted(dup.items())[:10]}"
        assert not lost, f"{len(lost)} items lost, e.g. {sorted(lost)[:10]}"
        assert not bogus, f"items never pushed were popped: {sorted(bogus)[:10]}"
        for c, t in enumerate(per_consumer):
            for p in range(1, self.producers + 1):
                seq = [x & 0xFFFF_FFFF for x in t if x >> 32 == p]
                assert seq == sorted(seq), f"consumer {c} saw producer {p}'s items out of order"
        assert Injector(self.mem.s, 0).pop() == EMPTY
        return {"taken": [len(t) for t in per_consumer], "full": self.mem.s.load64(self.ctrl + CTRL_FULL)}

    def close(self):
        self.mem.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "capacity,batches",
    [(4, (1, 1)), (64, (1, 8)), (1024, (1, 1)), (2, (3, 1))],
    ids=["cap4", "cap64-pop_many", "cap1024", "cap2-pop_many"],
)
def test_two_producers_two_consumers_exactly_once(capacity, batches):
    per_producer = 100_000
    h = Harness(capacity, per_producer, producers=2, consumers=2)
    try:
        stats = h.run(batches)
    finally:
        h.close()
    assert sum(stats["taken"]) == 2 * per_producer


@pytest.mark.timeout(120)
def test_three_producers_three_consumers_on_a_tiny_ring():
    h = Harness(2, 20_000, producers=3, consumers=3)
    try:
        stats = h.run((1, 2, 1))
    finally:
        h.close()
    assert stats["full"] > 0  # the ring really was full at times
    assert sum(stats["taken"]) == 60_000
