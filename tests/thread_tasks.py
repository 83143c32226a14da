"""Task functions for tests/test_threads.py (module level: spawned children are
cached by the C fast path by function, as in the processes backend)."""

from __future__ import annotations

import threading
import time

import penny


def fib_serial(n):
    return n if n < 2 else fib_serial(n - 1) + fib_serial(n - 2)


def fib(n, cutoff=2):
    if n < cutoff:
        return fib_serial(n)
    x = penny.spawn(fib, n - 1, cutoff)
    y = fib(n - 2, cutoff)
    return penny.sync(x) + y


def tree(depth, width, seed):
    """Sum of a tree of spawns, of irregular shape (children 0..width-1 by seed)."""
    if depth == 0:
        return seed % 7
    n = 1 + seed % width
    hs = [penny.spawn(tree, depth - 1, width, seed * 31 + i + 1) for i in range(n)]
    return seed % 7 + sum(penny.sync(h) for h in hs)


def tree_serial(depth, width, seed):
    if depth == 0:
        return seed % 7
    n = 1 + seed % width
    return seed % 7 + sum(tree_serial(depth - 1, width, seed * 31 + i + 1) for i in range(n))


def slow_child(x, pause):
    time.sleep(pause)
    return x


def stolen_then_suspended(pause):
    """The parent keeps its worker busy while the child sleeps elsewhere, then
    syncs a child that is still running: the parent suspends on its fiber."""
    hs = [penny.spawn(slow_child, i, pause) for i in range(4)]
    time.sleep(pause / 2)
    return [penny.sync(h) for h in hs]


def identity(x):
    return x


def raise_it(exc):
    raise exc


def child_raises(exc):
    h = penny.spawn(raise_it, exc)
    time.sleep(0.05)
    try:
        penny.sync(h)
    except BaseException as e:  # noqa: BLE001
        return e
    return None


def spawn_kw(a, b=0, *, c=0):
    return penny.sync(penny.spawn(kw_child, a, b=b, c=c))


def kw_child(a, b=0, *, c=0):
    return (a, b, c)


def join_and_pfor(n):
    seen = []
    lock = threading.Lock()

    def body(lo, hi):
        with lock:
            seen.extend(range(lo, hi))

    a, b = penny.join((fib, 12), (fib, 13))
    penny.parallel_for(0, n, body, grain=3)
    return a, b, sorted(seen)


def which_thread():
    return threading.current_thread().name


def wait_on(barrier):
    barrier.wait(timeout=60)
    return threading.current_thread().name


_local = threading.local()


def init_thread(tag):
    _local.tag = tag


def read_tag():
    return getattr(_local, "tag", None)


def bad_init():
    raise RuntimeError("initializer failed")


def shutdown_from_task(sched):
    sched.shutdown(wait=True)  # cannot wait for itself: finishes in the background
    return "returned"
