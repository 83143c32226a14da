"""Shared arrays and buffers: data that tasks share without copying it.

A shared array is a NumPy array whose memory is a block of the scheduler's
arena (see arena.py), exported by a `_core.Lease`: the array (and every view
or slice of it) keeps the lease alive, and the lease holds one reference to
the block.  Passing such an array to a task pickles a *descriptor* (block,
offset, shape, strides, dtype, read-only flag) instead of the data; the task
gets a new lease and a view of the same memory.  The block is freed when the
last view in any process is collected, or when the scheduler shuts down.

Without NumPy, `shared_buffer` gives a memoryview with the same semantics.

This module owns the descriptors; marshal.py decides when to use them.
"""

from __future__ import annotations

import copyreg
import sys
import threading

from .. import _context, _core

_tls = threading.local()  # .arena: the arena being pickled into or read from

#: Plain (non-shared) buffers at least this big travel out of band: written
#: straight into their own arena block, received as a view of it.
OOB_MIN = 64 << 10


class SharedDescriptorError(RuntimeError):
    """A shared-array descriptor met outside the scheduler that made it."""


# ---- making shared arrays ------------------------------------------------------------
def new_array(arena, shape, dtype="f8", fill=None, *, readonly: bool = False):
    """A NumPy array of `shape` and `dtype` in a new block of `arena`."""
    np = _numpy("shared_array")
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise TypeError("penny.shared_array: a dtype holding Python objects cannot live in shared "
                        "memory (other processes cannot follow its pointers); use a numeric, "
                        "string or structured dtype without object fields")
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(int(n) for n in shape)
    if any(n < 0 for n in shape):
        raise ValueError(f"penny.shared_array: negative dimension in shape {shape}")
    count = 1
    for n in shape:
        count *= n
    nbytes = count * dt.itemsize
    lease = _lease_new(arena, nbytes)
    arr = np.ndarray(shape, dt, buffer=lease)
    if fill is not None:
        arr[...] = fill
    if readonly:
        arr.setflags(write=False)
    return arr


def share_array(arena, data):
    """A shared copy of `data` (an array, or anything np.asarray takes)."""
    np = _numpy("share")
    src = np.asarray(data)
    if src.dtype.hasobject:
        raise TypeError("penny.share: arrays of Python objects cannot live in shared memory; "
                        "use a numeric or structured dtype")
    arr = new_array(arena, src.shape, src.dtype)
    arr[...] = src
    return arr


def new_buffer(arena, nbytes: int, data=None) -> memoryview:
    """A writable memoryview of `nbytes` in a new block (NumPy not needed)."""
    if not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"penny.shared_buffer: nbytes must be an int >= 0, got {nbytes!r}")
    mv = memoryview(_lease_new(arena, nbytes))
    if data is not None:
        mv[:] = data
    return mv


def share_any(arena, data):
    """A shared copy of `data`: an array for anything NumPy takes, a memoryview
    for bytes-like data that is not a NumPy array."""
    np = sys.modules.get("numpy")
    if isinstance(data, (bytes, bytearray, memoryview)) and not (np is not None and isinstance(data, np.ndarray)):
        return share_bytes(arena, data)
    return share_array(arena, data)


def share_bytes(arena, data) -> memoryview:
    src = memoryview(data).cast("B")
    return new_buffer(arena, src.nbytes, src)


def _lease_new(arena, nbytes: int) -> _core.Lease:
    off = arena.alloc(max(nbytes, 1))
    try:
        return _core.Lease(arena.s, off, nbytes, False, arena.release)
    except BaseException:
        arena.release(off)
        raise


def _numpy(what: str):
    try:
        import numpy
    except ImportError:
        raise ImportError(f"penny.{what} needs NumPy (pip install numpy); without it, use "
                          "penny.shared_buffer(nbytes) for a shared memoryview") from None
    return numpy


# ---- descriptors: pickling side -----------------------------------------------------
def lease_of(obj):
    """The Lease under a NumPy array or memoryview, or None."""
    b = obj
    for _ in range(64):
        if type(b) is _core.Lease:
            return b
        if isinstance(b, memoryview):
            b = b.obj
        else:
            b = getattr(b, "base", None)
        if b is None:
            return None
    return None


def _in_arena(lease, arena) -> bool:
    s = arena.s
    lo = s.address
    return lo <= lease.address < lo + s.nbytes


def _reduce_ndarray(arr):
    pickling = getattr(_tls, "pickling", None)
    if pickling is not None:
        lease = lease_of(arr)
        # An empty view has no data to share (and its pointer may lie past its
        # block): it travels as what it is, an empty array.
        if lease is not None and arr.size and _in_arena(lease, pickling.arena):
            addr = arr.__array_interface__["data"][0]
            readonly = not arr.flags.writeable or lease.readonly
            pickling.hold(lease.offset)
            return _rebuild_array, (lease.offset, lease.nbytes, addr - lease.address, arr.shape,
                                    arr.strides, arr.dtype, readonly)
    return arr.__reduce_ex__(5)


def _reduce_memoryview(mv):
    pickling = getattr(_tls, "pickling", None)
    lease = lease_of(mv) if pickling is not None else None
    if lease is None or not _in_arena(lease, pickling.arena):
        raise TypeError("cannot pickle 'memoryview' object (only views of penny.shared_buffer "
                        "travel to tasks; pass bytes otherwise)")
    if not mv.contiguous:
        raise TypeError("penny: only contiguous views of a shared buffer can be passed to tasks")
    if mv.format.lstrip("@") not in _NATIVE_FORMATS:
        raise TypeError(f"penny: a memoryview of format {mv.format!r} cannot be passed to tasks (memoryview "
                        "only rebuilds native single-character formats); pass the NumPy array itself")
    addr = _core.buffer_info(mv)[0]
    pickling.hold(lease.offset)
    return _rebuild_memoryview, (lease.offset, lease.nbytes, addr - lease.address, mv.nbytes,
                                 mv.format, mv.shape, mv.readonly or lease.readonly)


_NATIVE_FORMATS = frozenset("cbB?hHiIlLqQnNfdeP")
_table = None


def dispatch_table() -> dict:
    """copyreg's table plus our reducers (NumPy's only once NumPy is imported)."""
    global _table
    np = sys.modules.get("numpy")
    if _table is None or (np is not None and np.ndarray not in _table):
        t = dict(copyreg.dispatch_table)
        t[memoryview] = _reduce_memoryview
        if np is not None:
            t[np.ndarray] = _reduce_ndarray
        _table = t
    return _table


# ---- descriptors: receiving side ----------------------------------------------------
def _arena_for(kind: str):
    arena = getattr(_tls, "arena", None)
    if arena is None:
        raise SharedDescriptorError(
            f"penny: a shared {kind} descriptor can only be read by the scheduler that made it")
    return arena


def _lease_ref(arena, block: int, nbytes: int, readonly: bool) -> _core.Lease:
    arena.incref(block)
    try:
        return _core.Lease(arena.s, block, nbytes, readonly, arena.release)
    except BaseException:
        arena.release(block)
        raise


def _rebuild_array(block, nbytes, rel, shape, strides, dtype, readonly):
    import numpy as np

    lease = _lease_ref(_arena_for("array"), block, nbytes, readonly)
    arr = np.ndarray(shape, dtype, buffer=lease, offset=rel, strides=strides)
    if readonly and arr.flags.writeable:
        arr.setflags(write=False)
    return arr


def _rebuild_memoryview(block, nbytes, rel, length, fmt, shape, readonly):
    lease = _lease_ref(_arena_for("buffer"), block, nbytes, readonly)
    mv = memoryview(lease)[rel:rel + length]
    if fmt != "B" or len(shape) != 1:
        mv = mv.cast(fmt, shape)
    return mv


def lease_block(arena, off: int, nbytes: int, readonly: bool) -> _core.Lease:
    """A lease on an out-of-band buffer block (the receiver's own reference)."""
    return _lease_ref(arena, off, nbytes, readonly)


# ---- the public functions (inside tasks: the worker's scheduler) -----------------------
def _current_arena():
    fork = _context.current_fork()
    if fork is not None:  # in a worker (process or thread)
        return fork.w.arena
    sched = _context.current_scheduler()
    sched._check_open()
    return sched._arena


def shared_array(shape, dtype="f8", fill=None):
    """`Scheduler.shared_array` of the scheduler running this task (outside
    tasks: of the current scheduler)."""
    return new_array(_current_arena(), shape, dtype, fill)


def share(data):
    """`Scheduler.share` of the scheduler running this task (or the current one)."""
    return share_any(_current_arena(), data)


def shared_buffer(nbytes: int) -> memoryview:
    """`Scheduler.shared_buffer` of the scheduler running this task (or the current one)."""
    return new_buffer(_current_arena(), nbytes)
