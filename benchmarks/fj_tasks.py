"""Task functions of the fork-join benchmarks: the classic workloads (one copy,
penny.workloads) and the spawn/sync microbenchmarks.  Workers import this
module by name."""

import time

import penny
from penny.workloads import (  # noqa: F401 - the benchmarks use them as T.fib, T.queens, ...
    UTS_BRANCH,
    UTS_DEPTH,
    fib,
    fib_serial,
    fib_tasks,
    queens,
    queens_serial,
    uts,
    uts_root,
    uts_serial,
)


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
