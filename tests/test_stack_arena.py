"""Free lists and what is built on them: the Treiber stack of penny._core,
the data arena (penny.arena.Arena) and the task table (penny.tasks.TaskTable).
"""

from __future__ import annotations

import collections
import mmap
import multiprocessing
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from penny import _core
from penny.shm.arena import Arena
from penny.shm.layout import (
    ARENA_MIN_SHIFT,
    BLOCK_HEADER,
    LINE,
    R_STATE,
    RECORD_SIZE,
    S_CANCELLED,
    S_DONE,
    S_FREE,
    S_QUEUED,
    S_RUNNING,
    Layout,
    make_ref,
    ref_generation,
    ref_index,
)
from penny.shm.region import Region
from penny.shm.tasks import GEN_MASK, TaskTable
from tests.procs import join_all

FORK = multiprocessing.get_context("fork")




def run_procs(target, args_list, timeout=60.0):
    procs = [FORK.Process(target=target, args=args) for args in args_list]
    for p in procs:
        p.start()
    join_all(procs, timeout)


# ---- Treiber stack ------------------------------------------------------------------
#
# Geometry used below: head word at 0, K nodes of 64 bytes from offset 64,
# each with its link at +8.  Tests use +0 of a node as a "held by" word and
# +16 as a use counter, which the stack never touches.

HEAD, BASE, STRIDE, LINK = 0, 64, 64, 8
CTRL = 32  # u64 in the head's line: ownership violations seen by any process


class Stack:
    def __init__(self, count: int):
        self.count = count
        self.map = mmap.mmap(-1, (BASE + STRIDE * count + 4095) // 4096 * 4096)
        self.s = _core.Shared(self.map)

    def push(self, i):
        self.s.stack_push(HEAD, BASE, STRIDE, LINK, self.count, i)

    def pop(self):
        return self.s.stack_pop(HEAD, BASE, STRIDE, LINK, self.count)

    def drain(self):
        out = []
        while (i := self.pop()) >= 0:
            out.append(i)
        return out

    def close(self):
        self.s.release()
        self.map.close()


@pytest.fixture
def stack():
    made = []

    def make(count):
        made.append(Stack(count))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_stack_is_lifo_and_empty_pops_minus_one(stack):
    st_ = stack(8)
    assert st_.pop() == -1
    for i in (3, 0, 7, 5):
        st_.push(i)
    assert st_.drain() == [5, 7, 0, 3]
    assert st_.pop() == -1


def test_stack_head_tag_changes_on_every_operation(stack):
    st_ = stack(4)
    heads = {st_.s.load64(HEAD)}
    for _ in range(10):
        st_.push(2)
        heads.add(st_.s.load64(HEAD))
        assert st_.pop() == 2
        heads.add(st_.s.load64(HEAD))
    # the same node on top again and again, but never the same head word (ABA)
    assert len(heads) == 21


def test_stack_geometry_is_checked(stack):
    st_ = stack(4)
    s = st_.s
    with pytest.raises(IndexError):
        s.stack_push(HEAD, BASE, STRIDE, LINK, 4, 4)
    with pytest.raises(IndexError):
        s.stack_push(HEAD, BASE, STRIDE, LINK, 4, -1)
    bad = [
        (4, BASE, STRIDE, LINK, 4),       # misaligned head
        (HEAD, 68, STRIDE, LINK, 4),      # misaligned base
        (HEAD, BASE, 60, LINK, 4),        # stride not a multiple of 8
        (HEAD, BASE, STRIDE, 60, 4),      # link runs past the node
        (HEAD, BASE, STRIDE, -8, 4),      # negative link
        (HEAD, BASE, 0, 0, 4),            # empty nodes
        (HEAD, BASE, STRIDE, LINK, 0),    # no nodes
    ]
    for geometry in bad:
        with pytest.raises(ValueError, match="geometry"):
            s.stack_pop(*geometry)
        with pytest.raises(ValueError, match="geometry"):
            s.stack_push(*geometry, 0)
    with pytest.raises(IndexError):
        s.stack_pop(HEAD, BASE, STRIDE, LINK, 1 << 20)  # nodes past the buffer
    with pytest.raises(IndexError):
        s.stack_pop(1 << 20, BASE, STRIDE, LINK, 4)


def test_stack_detects_a_corrupt_head(stack):
    st_ = stack(4)
    st_.s.store64(HEAD, (7 << 32) | 9)  # index 8 of 4 nodes
    with pytest.raises(RuntimeError, match="corrupt"):
        st_.pop()


def _stack_churn(st_, me, iterations, seed):
    s = st_.s
    rng = random.Random(seed)
    held = []
    misses = 0
    for _ in range(iterations):
        want = rng.randint(1, 3)
        while len(held) < want:
            i = st_.pop()
            if i < 0:
                misses += 1
                if misses % 8 == 0:
                    os.sched_yield()
                break
            node = BASE + i * STRIDE
            ok, other = s.cas32(node, 0, me)  # nobody else may hold it now
            if not ok:
                s.fetch_add64(CTRL, 1)
            s.fetch_add64(node + 16, 1)
            held.append(i)
        rng.shuffle(held)
        for _ in range(rng.randint(0, len(held))):
            i = held.pop()
            node = BASE + i * STRIDE
            if s.load32(node) != me:
                s.fetch_add64(CTRL, 1)
            s.store32(node, 0)
            st_.push(i)
    for i in held:
        s.store32(BASE + i * STRIDE, 0)
        st_.push(i)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("count", [4, 64])
def test_stack_exactly_once_across_processes(stack, count):
    """Processes pop and push back indices; no index is ever held twice and
    at the end every index is on the stack exactly once."""
    st_ = stack(count)
    for i in range(count):
        st_.push(i)
    iterations = 20_000
    run_procs(_stack_churn, [(st_, me, iterations, me) for me in (1, 2, 3)])
    assert st_.s.load64(CTRL) == 0, "an index was held by two processes at once"
    got = st_.drain()
    assert sorted(got) == list(range(count)), collections.Counter(got)
    uses = sum(st_.s.load64(BASE + i * STRIDE + 16) for i in range(count))
    assert uses > iterations  # the processes really churned the stack


# ---- region-backed fixtures ------------------------------------------------------------

SMALL = dict(workers=2, deque_capacity=8, task_capacity=64, function_slots=16, arena_size=1 << 16)


@pytest.fixture
def region():
    made = []

    def make(**kw):
        r = Region.create(Layout(**{**SMALL, **kw}))
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def arena(region):
    r = region()
    return Arena(r.shared, r.layout, r.fd, r.map)


# ---- arena --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nbytes,k",
    [(0, 6), (1, 6), (48, 6), (49, 7), (112, 7), (113, 8), (1008, 10), (1009, 11), ((1 << 20) - 16, 20)],
)
def test_size_class(nbytes, k):
    assert Arena.size_class(nbytes) == k


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=1 << 40))
def test_size_class_is_the_smallest_power_of_two_that_fits(nbytes):
    k = Arena.size_class(nbytes)
    assert k >= ARENA_MIN_SHIFT
    assert (1 << k) >= nbytes + BLOCK_HEADER
    assert k == ARENA_MIN_SHIFT or (1 << (k - 1)) < nbytes + BLOCK_HEADER


def test_alloc_returns_data_inside_the_arena(arena):
    off = arena.alloc(100)
    assert arena.base <= off - BLOCK_HEADER < arena.base + arena.size
    assert (off - BLOCK_HEADER - arena.base) % LINE == 0
    assert arena.used() == 128


def test_put_and_get_round_trip(arena):
    blobs = [b"", b"x", bytes(range(256)) * 3, b"\0" * 48, b"z" * 49]
    placed = [arena.put(b) for b in blobs]
    for b, (off, n) in zip(blobs, placed, strict=True):
        assert n == len(b)
        assert arena.get(off, n) == b
    assert len({off for off, _ in placed}) == len(blobs)
    assert arena.put(memoryview(b"view")) is not None
    assert arena.put(bytearray(b"ba"))[1] == 2


def test_freed_blocks_are_reused_lifo_within_a_class(arena):
    a = arena.alloc(40)
    b = arena.alloc(40)
    used = arena.used()
    arena.free(a)
    arena.free(b)
    assert arena.alloc(30) == b
    assert arena.alloc(1) == a
    assert arena.used() == used
    c = arena.alloc(100)  # another class: a new block
    assert c not in (a, b)
    assert arena.used() == used + 128


def test_alloc_free_cycles_do_not_grow_the_arena(arena):
    rng = random.Random(1)
    live = []
    for _ in range(1000):  # warm up: at most 8 live blocks of up to 1 KiB
        if len(live) < 8:
            live.append(arena.alloc(rng.randrange(1, 1000)))
        else:
            arena.free(live.pop(rng.randrange(len(live))))
    for off in live:
        arena.free(off)
    warm = arena.used()
    # Each class holds at most 8 blocks: bounded by 8 blocks of every class used.
    assert warm <= 8 * sum(1 << k for k in range(6, 11))
    for i in range(100_000):
        off = arena.alloc(i % 1000)
        arena.free(off)
    assert arena.used() == warm


def test_blocks_never_overlap(arena):
    rng = random.Random(2)
    live = {}
    for _ in range(3000):
        if live and (len(live) > 40 or rng.random() < 0.4):
            off = rng.choice(list(live))
            assert arena.get(off, len(live[off])) == live.pop(off), "a block was overwritten"
            arena.free(off)
        else:
            data = rng.randbytes(rng.randrange(0, 600))
            off, n = arena.put(data)
            live[off] = data
    for off, data in live.items():
        assert arena.get(off, len(data)) == data


def test_too_large_a_request_raises_memory_error_with_sizes(arena):
    with pytest.raises(MemoryError, match="does not fit the 65536-byte small arena") as e:
        arena.alloc(1 << 16)
    assert "arena_size" in str(e.value)
    with pytest.raises(MemoryError):
        arena.alloc(1 << 60)
    assert arena.used() == 0  # a refused request takes nothing


def test_the_whole_arena_as_one_block(arena):
    off = arena.alloc((1 << 16) - BLOCK_HEADER)
    assert off == arena.base + BLOCK_HEADER
    with pytest.raises(MemoryError):
        arena.alloc(1)
    arena.free(off)
    with pytest.raises(MemoryError):
        arena.alloc(1000)  # freed blocks are not split for other classes...
    assert arena.alloc((1 << 16) - BLOCK_HEADER) == off  # ...but serve their own


def test_exhaustion_raises_memory_error_with_sizes_and_recovers_after_free(arena):
    blocks = []
    with pytest.raises(MemoryError) as e:
        while True:
            blocks.append(arena.alloc(48))
    assert len(blocks) == (1 << 16) // 64
    msg = str(e.value)
    assert "a 48-byte request" in msg
    assert "65536" in msg
    assert arena.used() == 1 << 16
    victim = blocks[123]
    arena.free(victim)
    assert arena.alloc(10) == victim  # a freed block of the class is reused
    with pytest.raises(MemoryError):
        arena.alloc(10)


# Regression (found by this test, fixed with Shared.bump): the bump allocation
# was a bare fetch_add, so a request that did not fit still advanced the bump
# pointer past the end and the untouched rest of the arena was lost for good.
def test_a_refused_request_does_not_leak_the_untouched_rest(arena):
    big = arena.alloc(30_000)  # a 32 KiB block: half the arena
    assert arena.used() == 1 << 15
    with pytest.raises(MemoryError, match="32768 bytes never used"):
        arena.alloc(40_000)  # a 64 KiB block cannot fit
    assert arena.used() == 1 << 15, "the refused request consumed the rest of the arena"
    small = arena.alloc(1000)  # a 1 KiB block fits easily in the 32 KiB left
    assert small != big


def test_double_free_is_detected(arena):
    off = arena.alloc(200)
    arena.free(off)
    with pytest.raises(RuntimeError, match="doubly freed"):
        arena.free(off)
    again = arena.alloc(200)
    assert again == off  # the block is still usable after the refused free
    arena.free(again)


def test_free_of_something_that_is_not_a_block(arena):
    with pytest.raises(ValueError, match="not an arena block"):
        arena.free(0)
    with pytest.raises(ValueError, match="not an arena block"):
        arena.free(arena.base + arena.size + BLOCK_HEADER)
    off = arena.alloc(500)
    with pytest.raises(ValueError, match="not an arena block"):
        arena.free(off + 8)  # not at a block boundary
    with pytest.raises(RuntimeError, match="corrupt"):
        arena.free(arena.base + 4096 + BLOCK_HEADER)  # aligned, but never allocated
    arena.free(off)


def _arena_churn(r, me, iterations, violations_off):
    a = Arena(r.shared, r.layout, r.fd, r.map)
    rng = random.Random(me)
    live = []
    for _ in range(iterations):
        if live and (len(live) >= 6 or rng.random() < 0.5):
            off, data = live.pop(rng.randrange(len(live)))
            if a.get(off, len(data)) != data:
                r.shared.fetch_add64(violations_off, 1)
            a.free(off)
        else:
            data = bytes([me]) * rng.randrange(1, 300)
            off, _ = a.put(data)
            live.append((off, data))
    for off, data in live:
        if a.get(off, len(data)) != data:
            r.shared.fetch_add64(violations_off, 1)
        a.free(off)


@pytest.mark.timeout(120)
def test_arena_shared_by_processes(region):
    """Blocks allocated and freed concurrently by several processes are never
    handed to two of them at once (each checks its own bytes before freeing)."""
    r = region()
    violations = r.layout.functions  # a spare u64 in the function directory
    run_procs(_arena_churn, [(r, me, 20_000, violations) for me in (1, 2, 3)])
    assert r.shared.load64(violations) == 0
    a = Arena(r.shared, r.layout, r.fd, r.map)
    # 3 processes x at most 6 live blocks of at most 512 bytes, per class
    assert a.used() <= 3 * 6 * (64 + 128 + 256 + 512)


# ---- task table -------------------------------------------------------------------------


@pytest.fixture
def table(region):
    r = region()
    t = TaskTable(r.shared, r.layout)
    t.init_free_list()
    return t


def test_refs_name_index_and_generation():
    ref = make_ref(5, 7)
    assert ref_index(ref) == 5
    assert ref_generation(ref) == 7
    assert make_ref(0, 0) == 1  # never 0: 0 is EMPTY
    assert 0 < make_ref(2**31 - 2, GEN_MASK) < 2**63


def test_alloc_hands_out_every_record_once_then_zero(table):
    refs = [table.alloc() for _ in range(64)]
    assert [ref_index(r) for r in refs] == list(range(64))  # index 0 on top
    assert all(ref_generation(r) == 0 for r in refs)
    assert table.alloc() == 0
    assert table.alloc() == 0
    for r in refs:
        assert table.status(r) == S_FREE  # allocated, not yet queued


def test_record_offsets(table):
    assert table.record_at(0) == table.base
    assert table.record_at(3) == table.base + 3 * RECORD_SIZE


def test_status_transitions(table):
    ref = table.alloc()
    table.set_status(ref, S_QUEUED)
    assert table.status(ref) == S_QUEUED
    assert table.transition(ref, S_QUEUED, S_RUNNING) is True
    assert table.transition(ref, S_QUEUED, S_RUNNING) is False  # already claimed
    assert table.transition(ref, S_QUEUED, S_CANCELLED) is False  # too late to cancel
    assert table.status(ref) == S_RUNNING
    assert table.transition(ref, S_RUNNING, S_DONE) is True
    assert table.status(ref) == S_DONE


def test_free_bumps_the_generation_and_stale_refs_are_refused(table):
    ref = table.alloc()
    table.set_status(ref, S_QUEUED)
    table.transition(ref, S_QUEUED, S_DONE)
    table.free(ref)
    assert table.status(ref) == -1  # recycled
    new = table.alloc()
    assert ref_index(new) == ref_index(ref)  # the free list is LIFO
    assert ref_generation(new) == ref_generation(ref) + 1
    assert new != ref
    table.set_status(new, S_QUEUED)
    for old in range(7):
        for nxt in range(7):
            assert table.transition(ref, old, nxt) is False  # a stale ref changes nothing
    assert table.status(ref) == -1
    assert table.status(new) == S_QUEUED
    assert table.transition(new, S_QUEUED, S_CANCELLED) is True


def test_generation_wraps_below_2_31(table):
    ref = table.alloc()
    i = ref_index(ref)
    last = make_ref(i, GEN_MASK)
    table.s.store64(table.record_at(i) + R_STATE, (S_DONE << 32) | GEN_MASK)
    assert table.status(last) == S_DONE
    table.free(last)
    again = table.alloc()
    assert ref_index(again) == i
    assert ref_generation(again) == 0
    assert 0 < again < 2**63
    assert table.status(last) == -1
    assert table.status(again) == S_FREE


def test_many_alloc_free_cycles_keep_generations_and_capacity(table):
    gens = collections.Counter()
    live = []
    rng = random.Random(3)
    for _ in range(20_000):
        if live and (len(live) == 64 or rng.random() < 0.5):
            ref = live.pop(rng.randrange(len(live)))
            assert table.transition(ref, S_QUEUED, S_DONE)
            table.free(ref)
        else:
            ref = table.alloc()
            assert ref != 0
            assert gens[ref_index(ref)] == ref_generation(ref)
            gens[ref_index(ref)] += 1
            table.set_status(ref, S_QUEUED)
            live.append(ref)
    for ref in live:
        table.free(ref)
    refs = [table.alloc() for _ in range(64)]
    assert sorted(ref_index(r) for r in refs) == list(range(64))
    assert table.alloc() == 0


def _claim(r, refs, wins_off):
    t = TaskTable(r.shared, r.layout)
    for ref in refs:
        if t.transition(ref, S_QUEUED, S_RUNNING):
            r.shared.fetch_add64(wins_off + 8 * ref_index(ref), 1)


@pytest.mark.timeout(120)
def test_exactly_one_process_wins_each_claim(region):
    r = region(task_capacity=4096, arena_size=1 << 16)
    t = TaskTable(r.shared, r.layout)
    t.init_free_list()
    refs = [t.alloc() for _ in range(4096)]
    for ref in refs:
        t.set_status(ref, S_QUEUED)
    wins = r.layout.arena  # 4096 u64 counters in the (unused) arena
    run_procs(_claim, [(r, refs, wins)] * 3)
    counts = [r.shared.load64(wins + 8 * i) for i in range(4096)]
    assert counts == [1] * 4096
    assert all(t.status(ref) == S_RUNNING for ref in refs)


def _alloc_churn(r, iterations, violations_off):
    t = TaskTable(r.shared, r.layout)
    held = []
    for _ in range(iterations):
        if len(held) < 4:
            ref = t.alloc()
            if ref == 0:
                os.sched_yield()
            # a record handed to two processes would let both claim it
            elif not t.transition(ref, S_FREE, S_RUNNING):
                r.shared.fetch_add64(violations_off, 1)
            else:
                held.append(ref)
        if held and (len(held) == 4 or random.random() < 0.5):
            ref = held.pop(0)
            if not t.transition(ref, S_RUNNING, S_DONE):
                r.shared.fetch_add64(violations_off, 1)
            t.free(ref)
    for ref in held:
        t.free(ref)


@pytest.mark.timeout(120)
def test_task_records_are_allocated_exactly_once_across_processes(region):
    r = region(task_capacity=8)  # fewer records than the processes want: contention
    t = TaskTable(r.shared, r.layout)
    t.init_free_list()
    violations = r.layout.arena
    run_procs(_alloc_churn, [(r, 20_000, violations)] * 3)
    assert r.shared.load64(violations) == 0
    refs = [t.alloc() for _ in range(8)]
    assert sorted(ref_index(x) for x in refs) == list(range(8))
    assert t.alloc() == 0


# ---- the large area: extents, coalescing, the cache of committed extents ----


def _check_extents(a):
    """Walk the large area: boundary tags, the free list, the counters."""
    from penny.shm.layout import (H_LARGE_CACHED, H_LARGE_FREE, H_LARGE_LAST, H_LARGE_TOP, H_LARGE_USED,
                              PAGE, X_ALLOCATED, X_COMMITTED, X_FREE, X_NEXT_FREE, X_PREV, X_SIZE, X_STATE)
    s = a.s
    top = s.load64(H_LARGE_TOP)
    x, prev, prev_free, frees, cached, used = a.large, 0, False, set(), 0, 0
    while x < a.large + top:
        size = s.load64(x + X_SIZE)
        assert size and size % PAGE == 0
        assert s.load64(x + X_PREV) == prev, "boundary tag"
        st = s.load32(x + X_STATE)
        if st == X_FREE:
            assert not prev_free, "two free extents side by side (not merged)"
            frees.add(x)
            cached += size if s.load32(x + X_COMMITTED) else 0
        else:
            assert st == X_ALLOCATED
            used += size
        prev_free, prev, x = st == X_FREE, size, x + size
    assert x == a.large + top and s.load64(H_LARGE_LAST) == prev
    listed, y = set(), s.load64(H_LARGE_FREE)
    while y:
        listed.add(y)
        y = s.load64(y + X_NEXT_FREE)
    assert listed == frees
    assert s.load64(H_LARGE_CACHED) == cached and s.load64(H_LARGE_USED) == used


@pytest.mark.parametrize("keep", [0, 3 << 20, 64 << 20])
def test_large_extents_stay_consistent_under_random_alloc_and_free(keep, monkeypatch):
    import random

    from penny import config

    monkeypatch.setattr(config, "ARENA_KEEP_COMMITTED", keep)
    lay = Layout(workers=1, deque_capacity=16, task_capacity=16, function_slots=16,
                 arena_size=1 << 16, large_size=256 << 20)
    r = Region.create(lay)
    try:
        a = Arena(r.shared, lay, r.fd, r.map)
        rng = random.Random(keep)
        live = {}
        for i in range(6000):
            if live and (rng.random() < 0.5 or len(live) > 40):
                off = rng.choice(list(live))
                assert r.shared.read_bytes(off, 8) == live.pop(off)  # nobody else wrote it
                a.release(off)
            else:
                try:
                    off = a.alloc(rng.choice([100_000, 300_000, 1 << 20, 3 << 20, 9 << 20]))
                except MemoryError:
                    continue
                tag = i.to_bytes(8, "little")
                r.shared.write_bytes(off, tag)
                live[off] = tag
            if i % 25 == 0:
                _check_extents(a)
        for off in live:
            a.release(off)
        _check_extents(a)
        st = a.stats()
        assert st["large_used"] == 0 and st["large_carved"] == st["large_cached"] <= min(keep, (256 << 20) // 4)
    finally:
        r.close()
