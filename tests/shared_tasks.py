"""Task functions for tests/test_shared.py (workers import them by name).

NumPy is imported if available: the no-NumPy test runs the memoryview tasks
below in a process where ``import numpy`` fails.
"""

from __future__ import annotations

import os
import sys
import time

try:
    import numpy as np
except ImportError:  # the shared_buffer-without-NumPy test
    np = None

import penny
from penny import _core


def lease_of(x):
    """The penny._core.Lease at the end of the `.base` (or memoryview `.obj`)
    chain of `x`, or None."""
    b = x
    for _ in range(64):
        if type(b) is _core.Lease:
            return b
        b = b.obj if isinstance(b, memoryview) else getattr(b, "base", None)
        if b is None:
            return None
    return None


def data_address(a) -> int:
    return a.__array_interface__["data"][0]


# ---- arrays: what the task sees, and writes through it -------------------------------
def describe(a):
    """Everything the task sees of `a` (a copy of the values included)."""
    return {
        "shape": a.shape,
        "strides": a.strides,
        "dtype": a.dtype,
        "writeable": bool(a.flags.writeable),
        "c": bool(a.flags.c_contiguous),
        "f": bool(a.flags.f_contiguous),
        "shared": lease_of(a) is not None,
        "copy": a.copy(order="K"),
        "pid": os.getpid(),
    }


def describe_and_overwrite(a, src):
    """describe(a) as it arrived, then ``a[...] = src``."""
    d = describe(a)
    a[...] = src
    return d


def fill(a, value):
    a[...] = value
    return os.getpid()


def fill_arange(a, start=0):
    """a[...] = start, start+1, ... in a's logical (C) order."""
    a[...] = np.arange(start, start + a.size).reshape(a.shape)
    return float(a.sum()) if a.size else 0.0


def total(a):
    return float(np.sum(a))


def alias_write_read(x, y, value):
    """x and y are views of the same memory: a write through x is read through y."""
    x[0] = value
    return float(y[0])


def sleep_then_describe(a, seconds):
    time.sleep(seconds)
    return float(a.sum()), float(a.min()), float(a.max())


def identity(x):
    return x


def view_of(a, start, stop, step=None):
    return a[start:stop:step]


def several_views(a):
    return {"head": a[:3], "tail": a[-3:], "pair": (a[::2], a[1::2])}


def make_shared(shape, dtype="f8", start=0):
    """A shared array made in the task (penny.shared_array), filled 0, 1, 2..."""
    b = penny.shared_array(shape, dtype)
    b[...] = np.arange(start, start + b.size).reshape(b.shape)
    return b


def make_shared_strided_view(n):
    b = penny.shared_array(n, "i8", fill=0)
    b[...] = np.arange(n)
    return b[::-3]


def make_shared_readonly(n):
    b = penny.shared_array(n, "f8", fill=1.5)
    b.setflags(write=False)
    return b


def make_plain(n):
    return np.arange(n, dtype="f8")


def make_ones(n):
    return np.ones(n)


def share_in_task(data):
    """penny.share inside a task: the worker's scheduler."""
    return penny.share(data)


def bump_and_view(a, value):
    """Receives a shared view, writes into it, returns a view of it."""
    a += value
    return a[1:-1]


def raise_with(a):
    a[0] = -1
    raise ValueError(f"task failed after writing; saw {a.shape}")


# ---- read-only ------------------------------------------------------------------------
def try_write(a):
    """(error of a write or None, error of setflags(write=True) or None, writeable)."""
    write_err = flag_err = None
    try:
        a[...] = 1
    except ValueError as e:
        write_err = str(e)
    try:
        a.setflags(write=True)
    except ValueError as e:
        flag_err = str(e)
    return write_err, flag_err, bool(a.flags.writeable)


# ---- nested ---------------------------------------------------------------------------
def fill_part_child(a, value, seconds, expect_id):
    """Fill a part; report our pid and whether we got the parent's very object
    (run inline) or a view rebuilt from a descriptor (published child)."""
    if seconds:
        time.sleep(seconds)
    a[...] = value
    return os.getpid(), id(a) == expect_id


def fill_parts(a, nparts, seconds=0.0):
    """Spawn one child per part of `a`; each fills its part with its index + 1."""
    k = len(a) // nparts
    views = [a[i * k:(i + 1) * k] for i in range(nparts)]
    handles = [penny.spawn(fill_part_child, v, i + 1, seconds, id(v)) for i, v in enumerate(views)]
    out = [penny.sync(h) for h in handles]
    del views
    return out


def fill_tree(a, lo, hi, grain):
    """Divide and conquer over a[lo:hi] (a passed down whole): a[i] = i."""
    if hi - lo <= grain:
        a[lo:hi] = np.arange(lo, hi)
        return hi - lo
    mid = (lo + hi) // 2
    h = penny.spawn(fill_tree, a, lo, mid, grain)
    right = fill_tree(a, mid, hi, grain)
    return penny.sync(h) + right


def build_in_task(n, nparts):
    """A task that makes a shared array, has children fill it, and returns it."""
    a = penny.shared_array(n, "f8", fill=0)
    fill_parts(a, nparts)
    return a


def fill_slice(view, value):
    view[...] = value
    return int(view.size)


def square_slice(view):
    view **= 2
    return float(view.sum())


# ---- memoryviews (no NumPy needed) --------------------------------------------------
def mv_describe(mv):
    return {
        "nbytes": mv.nbytes,
        "format": mv.format,
        "shape": mv.shape,
        "readonly": mv.readonly,
        "data": mv.tobytes(),
        "tolist": mv.tolist(),
        "shared": lease_of(mv) is not None,
    }


def mv_write(mv, offset, data):
    """Write `data` at byte `offset` of `mv` (a "B" view); its bytes before the write."""
    before = mv.tobytes()
    mv[offset:offset + len(data)] = data
    return before


def mv_try_write(mv):
    try:
        mv[0] = mv[0]
    except TypeError as e:
        return str(e)
    return None


def mv_return_slice(mv, start, stop):
    return mv[start:stop]


def numpy_loaded() -> bool:
    return sys.modules.get("numpy") is not None


# ---- stress, failures, crashes --------------------------------------------------------
def churn(n, seed, keep=4):
    """Allocate `n` shared arrays of mixed sizes (8 B .. 1.6 MB) in this process,
    `keep` alive at a time, each filled with its own value; "ok" if every one
    still held its value when dropped."""
    rng = np.random.default_rng(seed)
    live = []
    for i in range(n):
        k = int(rng.choice([1, 10, 1000, 40_000, 70_000, 200_000]))
        tag = seed * 1_000_000 + i
        x = penny.shared_array(k, "i8", fill=tag)
        live.append((x, tag))
        if len(live) > keep:
            y, t = live.pop(0)
            if not (y == t).all():
                return f"block of tag {t} was overwritten"
    return "ok"


def return_view_and_lock(a):
    import threading

    return a[1:3], threading.Lock()


def crash_holding(a):
    a[0] = 1.0
    os._exit(3)


def crash_once_then_fill(a, marker, value):
    """The first attempt dies (leaving `marker`); the retry fills `a`."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os._exit(3)
    a[...] = value
    return os.getpid()


def reverse_last_axis(a):
    return a[..., ::-1]
