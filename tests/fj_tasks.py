"""Task functions for the fork-join tests (workers import them by name)."""

import random

import penny
from penny.workloads import fib, fib_serial, queens, queens_serial  # noqa: F401 - tests call them as t.fib, ...


def tree_sum(lo, hi):
    """Sum of lo..hi-1 by binary splitting."""
    if hi - lo <= 16:
        return sum(range(lo, hi))
    mid = (lo + hi) // 2
    h = penny.spawn(tree_sum, lo, mid)
    right = tree_sum(mid, hi)
    return penny.sync(h) + right


def chain(n):
    """n nested levels, each spawning one child and syncing it."""
    if n == 0:
        return 0
    h = penny.spawn(chain, n - 1)
    return penny.sync(h) + 1


def add(a, b):
    return a + b


def fan_out(n):
    handles = [penny.spawn(add, i, 1) for i in range(n)]
    return sum(penny.sync(h) for h in handles)


def fan_out_sync_all(n):
    handles = [penny.spawn(add, i, 1) for i in range(n)]
    penny.sync()
    return sum(h.result() for h in handles)


def fail_at(depth, msg="boom"):
    if depth == 0:
        raise ValueError(msg)
    h = penny.spawn(fail_at, depth - 1, msg)
    return penny.sync(h)


def siblings_then_fail(n, marker_path):
    """Spawn n children that each append to a file, then one that fails."""
    hs = [penny.spawn(append_line, marker_path, i) for i in range(n)]
    bad = penny.spawn(fail_at, 0, "sibling")
    try:
        penny.sync(bad)
    finally:
        for h in hs:
            penny.sync(h)
    return "unreachable"


def append_line(path, i):
    with open(path, "a") as f:
        f.write(f"{i}\n")
    return i


def unsynced_failure():
    penny.spawn(fail_at, 0, "nobody synced me")
    return 1


def random_tree(seed, depth):
    """Evaluate a seeded random spawn/sync tree; `serial_tree` is the reference."""
    rng = random.Random(seed)
    if depth == 0 or rng.random() < 0.15:
        return seed % 1000
    kids = rng.randint(1, 4)
    handles = [penny.spawn(random_tree, seed * 31 + k + 1, depth - 1) for k in range(kids)]
    order = list(range(kids))
    rng.shuffle(order)  # sync out of order
    results = {k: penny.sync(handles[k]) for k in order}
    return (sum(results.values()) * 7 + seed) % 1_000_003


def serial_tree(seed, depth):
    rng = random.Random(seed)
    if depth == 0 or rng.random() < 0.15:
        return seed % 1000
    kids = rng.randint(1, 4)
    vals = [serial_tree(seed * 31 + k + 1, depth - 1) for k in range(kids)]
    rng.shuffle(list(range(kids)))
    return (sum(vals) * 7 + seed) % 1_000_003


def many_small(n):
    total = 0
    for i in range(n):
        total += penny.sync(penny.spawn(add, i, 1))
    return total


def pfor_dir(main_pid):
    import os
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"penny-pfor-{main_pid}")


def pfor_mark(lo, hi):
    """parallel_for body: record the range it was given as an empty file in the
    directory named after the scheduler's main process."""
    import os

    from penny.runtime import worker

    open(os.path.join(pfor_dir(worker.current.main_pid), f"{lo}-{hi}"), "w").close()


def pfor_inside(n, grain):
    penny.parallel_for(0, n, pfor_mark, grain=grain)
    return "ok"


def join_pair(n):
    return penny.join((fib, n, 5), (fib, n - 1, 5))


def big_results(n):
    hs = [penny.spawn(make_list, i) for i in range(n)]
    return [len(penny.sync(h)) for h in hs]


def make_list(i):
    return list(range(i * 10))


def kw_child(a, *, b=0):
    return a * 10 + b


def spawn_kwargs():
    h = penny.spawn(kw_child, 4, b=2)
    return penny.sync(h)
