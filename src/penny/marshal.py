"""Moving arguments and results through task records, without message passing.

Small values (None, bools, 64-bit ints, floats, str and bytes that fit)
are packed inline in the record by the C codec: no pickle, no allocation.
Anything else is pickled (protocol 5) into an arena block whose offset the
record carries.  Exceptions travel pickled with the worker's formatted
traceback; one that cannot be pickled becomes a `TaskError` that keeps its
type name, message and traceback.
"""

from __future__ import annotations

import pickle
import traceback

from . import _core
from .arena import Arena
from .errors import RemoteTraceback, TaskError
from .layout import F_ARGS_BLOB, F_RESULT_BLOB, INLINE_SIZE, R_BLOB, R_BLOB_LEN, R_INLINE

_NO_KWARGS: dict = {}


class ArgumentPicklingError(TypeError):
    """Raised in the caller when a task's arguments cannot be pickled."""


class ResultPicklingError(TypeError):
    """Raised (in the caller's future) when a task's return value cannot be pickled."""


_INLINE_TYPES = frozenset((int, float, bool, type(None), str, bytes))


def _pickle_args(args, kwargs) -> bytes:
    try:
        return pickle.dumps((tuple(args), kwargs or _NO_KWARGS), protocol=5)
    except Exception as e:
        raise ArgumentPicklingError(
            f"penny: the task's arguments cannot be pickled ({type(e).__name__}: {e}); "
            "pass plain data, or objects whose classes are importable at module level"
        ) from e


def prepickle(args, kwargs) -> bytes | None:
    """Pickle arguments now unless they are plain values that will go inline
    (those always pickle); raises ArgumentPicklingError in the caller."""
    if not kwargs and all(type(a) in _INLINE_TYPES for a in args):
        return None
    return _pickle_args(args, kwargs)


def encode_args(s: _core.Shared, arena: Arena, rec: int, args, kwargs, data: bytes | None = None) -> int:
    """Write a call's arguments into record `rec`; returns the F_* flags to store.
    `data` is their pickle when the caller made it already."""
    if data is None:
        if not kwargs and s.pack_inline(rec + R_INLINE, INLINE_SIZE, args) >= 0:
            return 0
        data = _pickle_args(args, kwargs)
    off, n = arena.put(data)
    # Relaxed: published with the record by the queue push's release.
    s.store64(rec + R_BLOB, off, _core.RELAXED)
    s.store64(rec + R_BLOB_LEN, n, _core.RELAXED)
    return F_ARGS_BLOB


def decode_args(s: _core.Shared, arena: Arena, rec: int, flags: int):
    """(args, kwargs) of record `rec`.  The blob stays until `release_args`, so a
    task whose worker dies while running it can be retried."""
    if not flags & F_ARGS_BLOB:
        return s.unpack_inline(rec + R_INLINE, INLINE_SIZE), _NO_KWARGS
    off = s.load64(rec + R_BLOB, _core.RELAXED)
    n = s.load64(rec + R_BLOB_LEN, _core.RELAXED)
    return pickle.loads(arena.get(off, n))


def release_args(s: _core.Shared, arena: Arena, rec: int, flags: int) -> None:
    """Free the argument blob of a task that has run (before its result is written)."""
    if flags & F_ARGS_BLOB:
        off = s.load64(rec + R_BLOB, _core.RELAXED)
        if off:
            s.store64(rec + R_BLOB, 0, _core.RELAXED)
            arena.free(off)


def encode_result(s: _core.Shared, arena: Arena, rec: int, value) -> int:
    """Write a return value; returns the result flag bits.  May raise (unpicklable)."""
    if s.pack_inline(rec + R_INLINE, INLINE_SIZE, (value,)) >= 0:
        return 0
    try:
        data = pickle.dumps(value, protocol=5)
    except Exception as e:
        raise ResultPicklingError(
            f"penny: the task's return value of type {type(value).__qualname__} cannot be pickled "
            f"({type(e).__name__}: {e}); return plain data instead"
        ) from e
    off, n = arena.put(data)
    s.store64(rec + R_BLOB, off, _core.RELAXED)
    s.store64(rec + R_BLOB_LEN, n, _core.RELAXED)
    return F_RESULT_BLOB


def encode_exception(s: _core.Shared, arena: Arena, rec: int, exc: BaseException) -> int:
    """Write an exception with its formatted traceback (always succeeds)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        data = pickle.dumps((exc, tb), protocol=5)
        pickle.loads(data)  # an exception that pickles but cannot be rebuilt must not fail the caller
    except Exception as e:
        name = f"{type(exc).__module__}.{type(exc).__qualname__}"
        wrapped = TaskError(
            f"{name}: {exc} (the original exception could not be pickled: {type(e).__name__}: {e})",
            name, tb,
        )
        data = pickle.dumps((wrapped, tb), protocol=5)
    try:
        off, n = arena.put(data)
    except MemoryError:
        data = pickle.dumps((TaskError(f"{type(exc).__name__}: {str(exc)[:1000]}", type(exc).__name__, tb[-4000:]), ""), 5)
        off, n = arena.put(data)
    s.store64(rec + R_BLOB, off, _core.RELAXED)
    s.store64(rec + R_BLOB_LEN, n, _core.RELAXED)
    return F_RESULT_BLOB


def decode_result(s: _core.Shared, arena: Arena, rec: int, flags: int):
    """The value stored by encode_result; frees its blob."""
    if not flags & F_RESULT_BLOB:
        return s.unpack_inline(rec + R_INLINE, INLINE_SIZE)[0]
    off = s.load64(rec + R_BLOB, _core.RELAXED)
    n = s.load64(rec + R_BLOB_LEN, _core.RELAXED)
    data = arena.get(off, n)
    arena.free(off)
    return pickle.loads(data)


def decode_exception(s: _core.Shared, arena: Arena, rec: int) -> BaseException:
    """The exception stored by encode_exception, with the remote traceback as its cause."""
    off = s.load64(rec + R_BLOB, _core.RELAXED)
    n = s.load64(rec + R_BLOB_LEN, _core.RELAXED)
    data = arena.get(off, n)
    arena.free(off)
    exc, tb = pickle.loads(data)
    if tb:
        exc.__cause__ = RemoteTraceback(tb)
    return exc
