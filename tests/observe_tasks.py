"""Task functions for tests/test_observe.py (workers import them by name)."""

import os
import time

import penny


def nap(seconds, value=None):
    time.sleep(seconds)
    return value


def whoami(seconds=0.0):
    time.sleep(seconds)
    return os.getpid()


def sleepy_children(k, seconds):
    """`k` rounds of: spawn a child that sleeps, sleep as long here, sync it.
    With the other worker idle, each child is published and stolen; returns
    the pids that ran the children."""
    pids = []
    for _ in range(k):
        h = penny.spawn(whoami, seconds)
        time.sleep(seconds)
        pids.append(penny.sync(h))
    return pids


def slow_body(lo, hi):
    """parallel_for body: 5 ms per item."""
    time.sleep(0.005 * (hi - lo))


def square(x):
    return x * x


def kill_self():
    os.kill(os.getpid(), 9)
