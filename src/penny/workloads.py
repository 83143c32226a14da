"""The classic fork-join workloads: fib, nqueens, UTS (unbalanced tree search).

One copy, used by the demo (`python -m penny demo`), the benchmarks and the
tests.  Each parallel version has a plain serial twin, the baseline it is
measured against.  Workers import this module by name.
"""

import hashlib
import math

from .frontend.api import spawn, sync

# ---- fib ----------------------------------------------------------------------------


def fib_serial(n):
    return n if n < 2 else fib_serial(n - 1) + fib_serial(n - 2)


def fib(n, cutoff=10):
    if n <= cutoff:
        return fib_serial(n)
    x = spawn(fib, n - 1, cutoff)
    y = fib(n - 2, cutoff)
    return sync(x) + y


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


def queens(n, cutoff=3, row=0, cols=0, d1=0, d2=0):
    if row >= cutoff:
        return queens_serial(n, row, cols, d1, d2)
    handles = []
    free = ~(cols | d1 | d2) & ((1 << n) - 1)
    while free:
        bit = free & -free
        free ^= bit
        handles.append(spawn(queens, n, cutoff, row + 1, cols | bit,
                                   ((d1 | bit) << 1) & ((1 << n) - 1), (d2 | bit) >> 1))
    return sum(sync(h) for h in handles)


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
    handles = [spawn(uts, _uts_child(node, i), depth + 1, cutoff) for i in range(_uts_kids(node, depth))]
    return 1 + sum(sync(h) for h in handles)
