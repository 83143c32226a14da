"""Nested fork-join: spawn/sync at any depth, join, parallel_for, exceptions."""

import os

import pytest

import penny
from tests import fj_tasks as t

METHODS = ["fork", "forkserver", "spawn"]


@pytest.fixture(scope="module", params=METHODS)
def sched(request):
    with penny.Scheduler(2, start_method=request.param) as s:
        yield s


def test_fib_matches_serial(sched):
    assert sched.run(t.fib, 22, 8) == t.fib_serial(22)


def test_nqueens_matches_serial(sched):
    assert sched.run(t.queens, 8) == t.queens_serial(8) == 92


def test_tree_sum_matches_serial(sched):
    assert sched.run(t.tree_sum, 0, 5000) == sum(range(5000))


def test_spawn_with_kwargs_and_pickled_results(sched):
    assert sched.run(t.spawn_kwargs) == 42
    assert sched.run(t.big_results, 40) == [i * 10 for i in range(40)]


@pytest.mark.parametrize("depth", [0, 1, 5, 60, 300])
def test_exception_in_child_reaches_root(sched, depth):
    with pytest.raises(ValueError, match="boom") as info:
        sched.run(t.fail_at, depth)
    # The worker's traceback is attached.
    assert "fail_at" in "".join(str(c) for c in _causes(info.value))


def _causes(exc):
    while exc is not None:
        yield exc
        exc = exc.__cause__


def test_unsynced_failing_child_fails_parent(sched):
    with pytest.raises(ValueError, match="nobody synced me"):
        sched.run(t.unsynced_failure)


def test_siblings_complete_when_one_fails(sched, tmp_path):
    path = str(tmp_path / "marks")
    with pytest.raises(ValueError, match="sibling"):
        sched.run(t.siblings_then_fail, 50, path)
    with open(path) as f:
        assert sorted(int(x) for x in f.read().split()) == list(range(50))
    # Nothing leaked: the scheduler still works and has no pending task.
    assert sched.run(t.fib, 15, 5) == t.fib_serial(15)
    assert sched.stats()["pending"] == 0


def test_sync_all(sched):
    assert sched.run(t.fan_out_sync_all, 1000) == sum(range(1, 1001))


def test_join_inside_and_outside(sched):
    assert sched.run(t.join_pair, 16) == (t.fib_serial(16), t.fib_serial(15))
    assert penny.join((t.add, 1, 2), (t.add, 3, 4)) == (3, 7)


def test_spawn_outside_task_is_submit(sched):
    f = penny.spawn(t.add, 20, 22)
    assert penny.sync(f) == 42
    g = penny.spawn(t.add, 1, 1)
    penny.sync()
    assert g.done() and g.result() == 2


def test_parallel_for_covers_range_exactly(sched):
    import shutil

    path = t.pfor_dir(os.getpid())
    os.makedirs(path, exist_ok=True)
    try:
        assert sched.run(t.pfor_inside, 1000, 37) == "ok"
        _check_cover(path, 1000, 37)
        shutil.rmtree(path)
        os.makedirs(path)
        penny.parallel_for(0, 500, t.pfor_mark, grain=50)  # outside tasks
        _check_cover(path, 500, 50)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _check_cover(path, n, grain):
    ranges = sorted(tuple(map(int, f.split("-"))) for f in os.listdir(path))
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    for (a, b), (c, _) in zip(ranges, ranges[1:]):
        assert b == c
    assert all(0 < hi - lo <= grain for lo, hi in ranges)


@pytest.mark.parametrize("seed", range(6))
def test_random_trees_match_serial(sched, seed):
    assert sched.run(t.random_tree, seed + 1, 7) == t.serial_tree(seed + 1, 7)


def test_handle_cannot_leave_its_task(sched):
    with pytest.raises(penny.PennyError):
        penny.sync(penny.Handle(0, t.add, (1, 2), None, 12345))


# ---- depth, width, recycling (one start method: they test the runtime, not the start) ----

@pytest.fixture(scope="module")
def big():
    with penny.Scheduler(2) as s:
        yield s


def test_ten_thousand_deep(big):
    assert big.run(t.chain, 10_000) == 10_000


def test_million_wide_fan_out(big):
    n = 1_000_000
    assert big.run(t.fan_out, n) == n * (n + 1) // 2
    assert big.stats()["pending"] == 0


@pytest.mark.slow
def test_ten_million_small_tasks_recycle_records(big):
    before = big.stats()
    futs = [big.submit(t.many_small, 1_000_000) for _ in range(10)]
    assert [f.result() for f in futs] == [sum(range(1, 1_000_001))] * 10
    after = big.stats()
    assert after["region_bytes"] == before["region_bytes"]
    # The arena only grows for pickled data; these tasks have none.
    assert after["arena_used"] == before["arena_used"]
    assert after["totals"]["spawns"] - before["totals"]["spawns"] == 10_000_000
