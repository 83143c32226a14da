"""Task functions for tests/test_interrupt.py (importable by name in every worker)."""

from __future__ import annotations

import time

import penny


def spin(limit=60.0):
    """Pure Python, never blocking: returns "finished" after `limit` seconds."""
    end = time.monotonic() + limit
    n = 0
    while time.monotonic() < end:
        n += 1
    return "finished"


def spin_for(seconds):
    """A short spin that returns its argument (the race with completion)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def sleeper(seconds=60.0):
    time.sleep(seconds)
    return "slept"


def ignore_once(limit=60.0):
    """Catches the first TaskInterrupted and returns normally."""
    try:
        spin(limit)
    except penny.TaskInterrupted:
        return "ignored"
    return "finished"


def ignore_then_spin(limit=60.0):
    """Catches the first TaskInterrupted and spins again: a second interrupt() is needed."""
    try:
        spin(limit)
    except penny.TaskInterrupted:
        pass
    spin(limit)
    return "finished"


def ignore_then_child(limit=60.0):
    """Catches the interrupt, then spawns and syncs a child: it runs normally."""
    try:
        spin(limit)
    except penny.TaskInterrupted:
        pass
    return penny.sync(penny.spawn(add_one, 41))


def add_one(x):
    return x + 1


def count_and_spin(counter, limit=60.0):
    counter[0] += 1
    return spin(limit)


def parent_private(counter, n=10, limit=60.0):
    """Spawns `n` children (private: nobody is idle in a 1-worker scheduler)
    that would count themselves, then spins; interrupted, none of them runs."""
    hs = [penny.spawn(count_and_spin, counter, 0.0) for _ in range(n)]
    spin(limit)
    return [penny.sync(h) for h in hs]


def parent_spinning_children(n=4, limit=60.0):
    """Children that spin (some are stolen by the other worker), the parent spins too."""
    hs = [penny.spawn(spin, limit) for _ in range(n)]
    spin(limit)
    return [penny.sync(h) for h in hs]


def parent_waiting(n=4, limit=60.0):
    """Children that spin; the parent waits for them in sync, suspended: the
    first child (published while the other worker is idle) is stolen during
    the pause, before the parent syncs it."""
    hs = [penny.spawn(spin, limit)]
    time.sleep(0.3)
    hs += [penny.spawn(spin, limit) for _ in range(n - 1)]
    return [penny.sync(h) for h in hs]


def parent_sync_all(n=4, limit=60.0):
    """As parent_waiting, with penny.sync() of all children."""
    penny.spawn(spin, limit)
    time.sleep(0.3)
    for _ in range(n - 1):
        penny.spawn(spin, limit)
    penny.sync()
    return "finished"


def tree(depth, limit=60.0):
    """A binary tree of spinning leaves (published where a worker is idle)."""
    if depth == 0:
        return spin(limit)
    a = penny.spawn(tree, depth - 1, limit)
    b = tree(depth - 1, limit)
    return [penny.sync(a), b]


def fib(n):
    """Fork-join with many spawns and syncs (the race with Penny's own code)."""
    if n < 2:
        return n
    x = penny.spawn(fib, n - 1)
    y = fib(n - 2)
    return penny.sync(x) + y


def fib_repeat(n, times):
    return [fib(n) for _ in range(times)]


def join_halves(limit=60.0):
    return penny.join((spin, limit), (spin, limit))


def finally_marker(path, limit=60.0):
    """Cleans up in a finally block when interrupted (the exception is a normal one)."""
    try:
        spin(limit)
    finally:
        with open(path, "w") as f:
            f.write("cleaned")


def ignore_then_sync_old_child(limit=60.0):
    """Spawns a child (private in a 1-worker scheduler), catches the interrupt,
    then syncs the child: it was interrupted with its parent."""
    h = penny.spawn(add_one, 41)
    try:
        spin(limit)
    except penny.TaskInterrupted:
        pass
    try:
        return penny.sync(h)
    except penny.TaskInterrupted:
        return "child interrupted"
