"""Task functions of the fork-join benchmarks (fib, nqueens, UTS, spawn/sync).

Each has a plain serial twin, the baseline the parallel version is measured
against in the same run.  Workers import this module by name.
"""

import hashlib
import math
import time

import penny

# ---- fib ----------------------------------------------------------------------------


def fib_serial(n):
    return n if n < 2 else fib_serial(n - 1) + fib_serial(n - 2)


def fib(n, cutoff):
    if n <= cutoff:
        return fib_serial(n)
    x = penny.spawn(fib, n - 1, cutoff)
    y = fib(n - 2, cutoff)
    return penny.sync(x) + y


def fib_tasks(n, cutoff):
    """How many tasks fib(n, cutoff) runs (spawned children + the root)."""
    return 1 if n <= cutoff else 1 + fib_tasks(n - 1, cutoff) + fib_tasks(n - 2, cutoff)


# ---- nqueens ------------------------------------------------------------------------


def queens_serial(n, row=0, cols=0, d1=0, d2=0):
    if row == n:
        return 1
    count = 0
    free = ~(cols | d1 | d2) & ((1 << n) - 1)
    while free:
        bit = free & -free
        free ^= bit
        count += queens_serial(n, row + 1, cols | bit, ((d1 | bit) << 1) & ((1 << n) - 1), (d2 | bit) >> 1)
    return count


def queens(n, cutoff, row=0, cols=0, d1=0, d2=0):
    if row >= cutoff:
        return queens_serial(n, row, cols, d1, d2)
    handles = []
    free = ~(cols | d1 | d2) & ((1 << n) - 1)
    while free:
        bit = free & -free
        free ^= bit
        handles.append(penny.spawn(queens, n, cutoff, row + 1, cols | bit,
                                   ((d1 | bit) << 1) & ((1 << n) - 1), (d2 | bit) >> 1))
    return sum(penny.sync(h) for h in handles)


# ---- UTS: unbalanced tree search (geometric tree, SHA-1 splittable hash) ----------------

UTS_BRANCH = 4.0     # mean children per node (geometric distribution)
UTS_DEPTH = 9        # no children below this depth


def _uts_kids(node: bytes, depth: int) -> int:
    if depth >= UTS_DEPTH:
        return 0
    u = int.from_bytes(node[:4], "little") / 4294967296.0
    p = 1.0 / (1.0 + UTS_BRANCH)
    return int(math.log(1.0 - u) / math.log(1.0 - p))


def _uts_child(node: bytes, i: int) -> bytes:
    return hashlib.sha1(node + i.to_bytes(4, "little")).digest()


def uts_root(seed: int) -> bytes:
    return hashlib.sha1(seed.to_bytes(4, "little")).digest()


def uts_serial(node: bytes, depth: int = 0) -> int:
    """Nodes in the subtree of `node`."""
    count = 1
    for i in range(_uts_kids(node, depth)):
        count += uts_serial(_uts_child(node, i), depth + 1)
    return count


def uts(node: bytes, depth: int, cutoff: int) -> int:
    if depth >= cutoff:
        return uts_serial(node, depth)
    handles = [penny.spawn(uts, _uts_child(node, i), depth + 1, cutoff) for i in range(_uts_kids(node, depth))]
    return 1 + sum(penny.sync(h) for h in handles)


# ---- spawn/sync microbenchmarks ---------------------------------------------------------


def empty(x):
    return x


def spawn_sync_loop(n: int) -> tuple:
    """ns per plain call of `empty`, and per spawn + sync of it (inside a task)."""
    t0 = time.perf_counter_ns()
    for i in range(n):
        empty(i)
    plain = time.perf_counter_ns() - t0
    spawn, sync = penny.spawn, penny.sync
    t0 = time.perf_counter_ns()
    for i in range(n):
        sync(spawn(empty, i))
    both = time.perf_counter_ns() - t0
    return plain / n, both / n


def spin(us: float) -> int:
    """Busy for `us` microseconds; returns iterations."""
    end = time.perf_counter_ns() + int(us * 1000)
    k = 0
    while time.perf_counter_ns() < end:
        k += 1
    return k


def stolen_pairs(pairs: int, us: float) -> tuple:
    """Each round spawns a child busy `us` µs and is itself busy `us` µs, then
    syncs: with an idle second worker the child is published and stolen.
    Returns (ns per round, rounds whose child ran elsewhere)."""
    import os

    me = os.getpid()
    stolen = 0
    t0 = time.perf_counter_ns()
    for _ in range(pairs):
        h = penny.spawn(spin_pid, us)
        spin(us)
        stolen += penny.sync(h) != me
    return (time.perf_counter_ns() - t0) / pairs, stolen


def spin_pid(us: float) -> int:
    import os

    spin(us)
    return os.getpid()
