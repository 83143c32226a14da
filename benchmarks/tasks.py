"""Task functions for the benchmarks.

They live in their own module (not in a script's ``__main__``) so that worker
processes started with ``spawn`` or ``forkserver`` can import them by name,
both Penny's and the peers' (``concurrent.futures``, ``multiprocessing``).
`benchmarks/core.py` puts this directory on ``sys.path`` and ``PYTHONPATH``
before it starts any pool.
"""

import time


def noop(x):
    """An empty task: returns its argument (so results can be checked)."""
    return x


def add(a, b):
    return a + b


def square(x):
    return x * x


def stamp(_=None):
    """``time.perf_counter_ns()`` taken as the task starts.

    perf_counter is CLOCK_MONOTONIC on Linux, one clock for the whole
    system, so the value compares with a stamp taken in the submitting
    process.
    """
    return time.perf_counter_ns()
