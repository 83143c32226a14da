"""Task functions for tests/test_backends.py.

They live at module level (``tests.backend_tasks.<name>``) so that both
backends' workers import them by name, and none of them knows which backend
runs it: the same functions run on Penny's workers and on Ray.
"""

from __future__ import annotations

import os
import signal

import penny


class Boom(Exception):
    """Raised by a task; must come back to the caller as itself."""


def add(a, b):
    return a + b


def square(x):
    return x * x


def mul(a, b):
    return a * b


def echo_kw(a, b=10, *, c=100):
    return (a, b, c)


# ---- nested fork-join -------------------------------------------------------------------

def fib_serial(n):
    return n if n < 2 else fib_serial(n - 1) + fib_serial(n - 2)


def fib(n, cutoff=20):
    if n < cutoff:
        return fib_serial(n)
    x = penny.spawn(fib, n - 1, cutoff)
    y = fib(n - 2, cutoff)
    return penny.sync(x) + y


def _queens_ok(cols, c):
    row = len(cols)
    return all(c != q and abs(c - q) != row - r for r, q in enumerate(cols))


def nqueens_serial(n, cols=()):
    if len(cols) == n:
        return 1
    return sum(nqueens_serial(n, cols + (c,)) for c in range(n) if _queens_ok(cols, c))


def nqueens(n, cols=(), spawn_depth=2):
    """Solutions of n-queens below the placed `cols`; the first `spawn_depth`
    rows spawn one child per legal column and sum their results."""
    if len(cols) >= spawn_depth:
        return nqueens_serial(n, cols)
    handles = [penny.spawn(nqueens, n, cols + (c,), spawn_depth) for c in range(n) if _queens_ok(cols, c)]
    return sum(h.result() for h in handles)


def join_fib(n):
    a, b = penny.join((fib, n - 1, 15), (fib, n - 2, 15))
    return a + b


def write_range(directory, lo, hi):
    """parallel_for body: one file per piece, named by its range."""
    with open(os.path.join(directory, f"{lo}-{hi}"), "w"):
        pass


def pfor_task(directory, n, grain):
    """parallel_for inside a task."""
    penny.parallel_for(0, n, _Body(directory), grain=grain)
    return n


class _Body:
    """A picklable callable: parallel_for bodies travel to other workers."""

    def __init__(self, directory):
        self.directory = directory

    def __call__(self, lo, hi):
        write_range(self.directory, lo, hi)


def body_for(directory):
    return _Body(directory)


# ---- exceptions and implicit sync -------------------------------------------------------

def fail(x):
    raise Boom(f"boom {x}")


def fail_nested(depth):
    """Fails `depth` levels down; every level syncs its child."""
    if depth == 0:
        fail(depth)
    return penny.sync(penny.spawn(fail_nested, depth - 1))


def catch_child(x):
    """A parent that handles its child's exception by its type."""
    try:
        penny.sync(penny.spawn(fail, x))
    except Boom as e:
        return f"caught {e}"
    return "not raised"


def touch_later(path):
    import time

    time.sleep(0.2)
    with open(path, "w"):
        pass
    return path


def spawn_and_forget(paths):
    """Spawns children and returns without syncing: the implicit sync waits."""
    for p in paths:
        penny.spawn(touch_later, p)
    return len(paths)


def spawn_failing_and_forget(x):
    """An unsynced child's exception fails the parent (nobody observed it)."""
    penny.spawn(fail, x)
    return "parent returned"


def bare_sync(n):
    """Children summed through their handles after one bare ``penny.sync()``."""
    hs = [penny.spawn(square, i) for i in range(n)]
    penny.sync()
    return sum(penny.sync(h) for h in hs)


# ---- crashes ----------------------------------------------------------------------------

def die():
    os.kill(os.getpid(), signal.SIGKILL)


def die_once(marker):
    """Killed on its first attempt, succeeds when retried."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os.kill(os.getpid(), signal.SIGKILL)
    return "second attempt"


# ---- arrays -----------------------------------------------------------------------------

def array_sum(a, lo=0, hi=None):
    return float(a[lo:hi].sum())


def array_info(a):
    """How the argument arrived: (writable, owns its data, length)."""
    return (bool(a.flags.writeable), bool(a.flags.owndata), len(a))


def array_write(a, i, value):
    a[i] = value
    return float(a[i])


def array_inplace_add(a):
    a += 1
    return float(a.sum())


def array_psum(a, lo, hi, grain):
    """Divide and conquer over a shared array, handing it on to children."""
    if hi - lo <= grain:
        return float(a[lo:hi].sum())
    mid = (lo + hi) // 2
    h = penny.spawn(array_psum, a, mid, hi, grain)
    left = array_psum(a, lo, mid, grain)
    return left + penny.sync(h)


def array_double(a):
    """The Ray way to change an array: return a new one."""
    return a * 2


def nap(seconds):
    import time

    time.sleep(seconds)
    return seconds


def spawn_die():
    """A parent whose child's worker is killed: the parent's sync raises WorkerCrashedError."""
    try:
        penny.sync(penny.spawn(die))
    except penny.WorkerCrashedError as e:
        return f"caught {type(e).__name__}"
    return "not raised"


def identity(x):
    return x


def spawn_die_stolen(pause):
    """Like spawn_die, but the parent works `pause` seconds before its sync, so an
    idle worker steals the child first (on the local backend)."""
    import time

    h = penny.spawn(die)
    time.sleep(pause)
    try:
        penny.sync(h)
    except penny.WorkerCrashedError as e:
        return f"caught {type(e).__name__}"
    return "not raised"


class Unpicklable(Exception):
    """An exception that cannot travel back (it holds a lock)."""

    def __init__(self, msg):
        super().__init__(msg)
        import threading

        self.lock = threading.Lock()


def fail_unpicklable(x):
    raise Unpicklable(f"cannot send {x}")
