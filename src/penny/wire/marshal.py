"""Moving arguments and results through task records, without message passing.

Small values (None, bools, 64-bit ints, floats, str and bytes that fit)
are packed inline in the record by the C codec: no pickle, no allocation.
Anything else is pickled (protocol 5) into an arena block whose offset the
record carries.  Exceptions travel pickled with the worker's formatted
traceback; one that cannot be pickled becomes a `TaskError` that keeps its
type name, message and traceback.

Shared arrays (shared.py) pickle as descriptors, and the blob holds a
reference to each block it names, so the data cannot be freed between the
sender dropping its view and the receiver making its own.  Other buffers of
at least `shared.OOB_MIN` bytes (NumPy arrays, PickleBuffer) go out of band:
each is copied once, straight into its own arena block, and the receiver gets
a view of that block (pickle protocol 5; no pipe, no second copy).  Such a
blob starts with `EXT_MAGIC` and lists its blocks::

    b"PNYX" | u32 held | u32 oob | held x u64 block | oob x (u64 block, u64 nbytes, u64 readonly) | pickle
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import sys
import threading
import traceback

from .. import _context
from ..errors import (
    ArgumentPicklingError,
    ArgumentUnpicklingError,
    RemoteTraceback,
    ResultPicklingError,
    TaskError,
)
from ..shm.arena import Arena
from ..shm.layout import F_ARGS_BLOB, F_RESULT_BLOB
from ..shm.tasks import TaskTable
from . import shared

try:
    import cloudpickle
except ImportError:  # pragma: no cover - a dependency
    cloudpickle = None

_NO_KWARGS: dict = {}


_INLINE_TYPES = frozenset((int, float, bool, type(None), str, bytes))


EXT_MAGIC = b"PNYX"
_EXT_HEAD = struct.Struct("<4sII")


class _Pickling:
    """The blocks one pickle refers to: shared arrays it names (`held`, one
    reference each) and out-of-band buffers copied into blocks (`oob`)."""

    __slots__ = ("arena", "held", "oob")

    def __init__(self, arena: Arena):
        self.arena = arena
        self.held: list[int] = []
        self.oob: list[tuple[int, int, int]] = []

    def hold(self, block: int) -> None:
        self.arena.incref(block)
        self.held.append(block)

    def buffer(self, pb: pickle.PickleBuffer) -> bool:
        raw = pb.raw()
        n = raw.nbytes
        if n < shared.OOB_MIN:
            return True  # in band
        off = self.arena.alloc(n)
        self.oob.append((off, n, int(raw.readonly)))
        self.arena.s.write_bytes(off, raw)
        return False

    def discard(self) -> None:
        for block in self.held:
            self.arena.release(block)
        for off, _, _ in self.oob:
            self.arena.release(off)
        self.held, self.oob = [], []


def dumps(obj, arena: Arena, to_worker: bool = True) -> bytes:
    """Pickle `obj` for a task record in `arena`'s region (see the module doc).

    The C pickler first.  What it cannot pickle by reference (a lambda or a
    closure among the arguments, say) is pickled again with cloudpickle, which
    pickles such functions and classes by value; so is a pickle bound for a
    worker that names ``__main__`` (workers never import the user's main
    module).  A result bound for the main process keeps its references to
    ``__main__``: there they find the user's own classes."""
    _tls_main.count = 0
    try:
        data = _dumps(obj, arena, pickle.Pickler)
    except (pickle.PicklingError, AttributeError, TypeError) as first:
        if cloudpickle is None:
            raise
        try:
            return _dumps(obj, arena, cloudpickle.Pickler)
        except Exception:  # noqa: BLE001 - the first error says more
            raise first from None
    if to_worker and cloudpickle is not None and data.count(b"__main__") > _tls_main.count:
        try:
            by_value = _dumps(obj, arena, cloudpickle.Pickler)
        except Exception:  # noqa: BLE001 - e.g. a function of the script naming an unpicklable global
            return data  # by reference: the worker imports the main script (_MainUnpickler)
        discard(data, arena)
        return by_value
    return data


def pickle_module_by_value(fn) -> None:
    """If `fn` comes from a module made at run time (no spec: a worker could
    not import it), have cloudpickle pickle that module's functions by value."""
    mod = sys.modules.get(getattr(fn, "__module__", None) or "")
    if mod is not None and getattr(mod, "__spec__", None) is None and mod.__name__ not in ("__main__", "builtins"):
        try:
            cloudpickle.register_pickle_by_value(mod)
        except ValueError:  # pragma: no cover - not registrable
            pass


class ByValue:
    """A callable that must travel by value, whatever the pickler that meets it
    (FunctionTable.route sends a callable that captures mutable state this
    way, as the first argument of its call): cloudpickle pickles it inside
    the enclosing pickle, with the shared-array reducers, so a captured shared
    array arrives as a view of the same memory."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __reduce__(self):
        pickle_module_by_value(self.fn)
        f = io.BytesIO()
        _cloud_pickler(shared.dispatch_table())(f, protocol=5).dump(self.fn)
        data = f.getvalue()
        _tls_main.count += data.count(b"__main__")  # names of the function itself, not references
        return _identity, (pickle.loads, data)


def _identity(loads, data):
    return loads(data)


class _MainCount(threading.local):
    count = 0


_tls_main = _MainCount()


def _dumps(obj, arena: Arena, pickler) -> bytes:
    p = _Pickling(arena)
    try:
        if arena.s.leases == 0 and pickler is pickle.Pickler:
            # No shared array of this region lives in this process, so none
            # can be in `obj`: the C pickler alone, out-of-band buffers aside.
            data = pickle.dumps(obj, protocol=5, buffer_callback=p.buffer)
        else:
            f = io.BytesIO()
            if pickler is pickle.Pickler:
                pk = pickler(f, protocol=5, buffer_callback=p.buffer)
                pk.dispatch_table = shared.dispatch_table()  # copyreg's and the shared-array reducers
            else:
                pk = _cloud_pickler(shared.dispatch_table())(f, protocol=5, buffer_callback=p.buffer)
            prev = getattr(shared._tls, "pickling", None)
            shared._tls.pickling = p
            try:
                pk.dump(obj)
            finally:
                shared._tls.pickling = prev
            data = f.getvalue()
    except BaseException:
        p.discard()
        raise
    if not p.held and not p.oob:
        return data
    parts = [_EXT_HEAD.pack(EXT_MAGIC, len(p.held), len(p.oob))]
    parts += [struct.pack("<Q", b) for b in p.held]
    parts += [struct.pack("<QQQ", *o) for o in p.oob]
    parts.append(data)
    return b"".join(parts)


_cloud_cache: list = [None, None]  # (dispatch table, its cloudpickle Pickler class)


def _cloud_pickler(table):
    """cloudpickle's Pickler with the shared-array reducers before its own.  A
    subclass, not an instance attribute: the C pickler reads its dispatch
    table when it is made, and cloudpickle's is a class attribute."""
    if _cloud_cache[0] is not table:
        class _Pickler(cloudpickle.Pickler):
            dispatch_table = collections.ChainMap(table, cloudpickle.Pickler.dispatch_table)

        _cloud_cache[:] = [table, _Pickler]
    return _cloud_cache[1]


def _ext_blocks(data):
    """(held, oob, pickle offset) of an extended blob."""
    _, nheld, noob = _EXT_HEAD.unpack_from(data, 0)
    pos = _EXT_HEAD.size
    held = struct.unpack_from(f"<{nheld}Q", data, pos)
    pos += 8 * nheld
    flat = struct.unpack_from(f"<{3 * noob}Q", data, pos)
    pos += 24 * noob
    return held, [flat[i:i + 3] for i in range(0, len(flat), 3)], pos


class _MainUnpickler(pickle.Unpickler):
    """Finds ``__main__`` objects in the main script, imported on demand in a
    worker (a pickle by reference that by-value pickling could not replace)."""

    def find_class(self, module, name):
        if module in ("__main__", "__mp_main__"):
            obj = _context.main_module()
            for part in name.split("."):
                obj = getattr(obj, part)
            return obj
        return super().find_class(module, name)


def _loads(raw: bytes, start: int = 0, buffers=None):
    """pickle.loads of raw[start:] (a view, no copy)."""
    view = memoryview(raw)[start:] if start else raw
    if _context.in_worker and b"__main__" in raw:
        return _MainUnpickler(io.BytesIO(view), buffers=buffers).load()
    return pickle.loads(view, buffers=buffers)


def loads(data, arena: Arena):
    """Inverse of `dumps`; the blocks it names stay held by the blob."""
    prev = getattr(shared._tls, "arena", None)
    shared._tls.arena = arena
    try:
        if data[:4] != EXT_MAGIC:
            return _loads(data)
        _, oob, pos = _ext_blocks(data)
        buffers = [shared.lease_block(arena, off, n, bool(ro)) for off, n, ro in oob]
        return _loads(data, pos, buffers)
    finally:
        shared._tls.arena = prev


def discard(data, arena: Arena) -> None:
    """Drop the block references of a pickle made by `dumps` that will never be read."""
    if data[:4] == EXT_MAGIC:
        held, oob, _ = _ext_blocks(data)
        for block in held:
            arena.release(block)
        for off, _, _ in oob:
            arena.release(off)


def free_blob(arena: Arena, off: int, n: int) -> None:
    """Free a record's blob and the references it holds."""
    s = arena.s
    if n >= _EXT_HEAD.size:
        head = s.read_bytes(off, _EXT_HEAD.size)
        if head[:4] == EXT_MAGIC:
            _, nheld, noob = _EXT_HEAD.unpack(head)
            discard(s.read_bytes(off, _EXT_HEAD.size + 8 * nheld + 24 * noob), arena)
    arena.free(off)


def _store_blob(tasks: TaskTable, arena: Arena, rec: int, data: bytes) -> None:
    """Copy a pickle made by `dumps` into a block and point record `rec` at it;
    if there is no room, its block references are dropped before the error."""
    try:
        off, n = arena.put(data)
    except BaseException:
        discard(data, arena)
        raise
    # Relaxed: published with the record by the release that publishes the
    # record (the queue push, or the status store).
    tasks.set_blob(rec, off, n)


def _pickle_args(args, kwargs, arena: Arena) -> bytes:
    try:
        return dumps((tuple(args), kwargs or _NO_KWARGS), arena, to_worker=True)
    except MemoryError:
        raise
    except Exception as e:
        raise ArgumentPicklingError(
            f"penny: the task's arguments cannot be pickled ({type(e).__name__}: {e}); "
            "pass plain data, or objects whose classes are importable at module level"
            + ("; only views of penny.shared_buffer travel as memoryviews" if "memoryview" in str(e) else "")
        ) from e


def prepickle(args, kwargs, arena: Arena) -> bytes | None:
    """Pickle arguments now unless they are plain values that will go inline
    (those always pickle); raises ArgumentPicklingError in the caller.  A
    pickle that is never sent must be given to `discard`."""
    if not kwargs and all(type(a) in _INLINE_TYPES for a in args):
        return None
    return _pickle_args(args, kwargs, arena)


def encode_args(tasks: TaskTable, arena: Arena, rec: int, args, kwargs, data: bytes | None = None) -> int:
    """Write a call's arguments into record `rec`; returns the F_* flags to store.
    `data` is their pickle when the caller made it already."""
    if data is None:
        if not kwargs and tasks.s.pack_inline(*tasks.inline(rec), args) >= 0:
            return 0
        data = _pickle_args(args, kwargs, arena)
    _store_blob(tasks, arena, rec, data)
    return F_ARGS_BLOB


def decode_args(tasks: TaskTable, arena: Arena, rec: int, flags: int):
    """(args, kwargs) of record `rec`.  The blob stays until `release_args`, so a
    task whose worker dies while running it can be retried."""
    if not flags & F_ARGS_BLOB:
        return tasks.s.unpack_inline(*tasks.inline(rec)), _NO_KWARGS
    off, n = tasks.blob(rec)
    try:
        return loads(arena.get(off, n), arena)
    except Exception as e:
        raise ArgumentUnpicklingError(
            f"penny: the task's arguments could not be unpickled in the worker ({type(e).__name__}: {e}); "
            "their classes must be importable by workers and rebuild there"
        ) from e


def unencode_args(tasks: TaskTable, arena: Arena, rec: int, flags: int, owned: bool) -> None:
    """Undo `encode_args` for a record that will never be published.  With
    `owned` False the pickle was the caller's (`prepickle`): only its block is
    freed here, its references stay the caller's to `discard`."""
    if flags & F_ARGS_BLOB:
        off, n = tasks.blob(rec)
        tasks.set_blob(rec, 0, 0)
        if owned:
            free_blob(arena, off, n)
        else:
            arena.free(off)


def release_args(tasks: TaskTable, arena: Arena, rec: int, flags: int) -> None:
    """Free the argument blob of a task that has run (before its result is written)."""
    if flags & F_ARGS_BLOB:
        off, n = tasks.blob(rec)
        if off:
            tasks.set_blob(rec, 0, n)
            free_blob(arena, off, n)


def encode_result(tasks: TaskTable, arena: Arena, rec: int, value) -> int:
    """Write a return value; returns the result flag bits.  May raise (unpicklable)."""
    if tasks.s.pack_inline(*tasks.inline(rec), (value,)) >= 0:
        return 0
    try:
        # A child's result goes to its parent in a worker; a root task's to the main process.
        data = dumps(value, arena, to_worker=tasks.parent(rec) != 0)
    except MemoryError:
        raise
    except Exception as e:
        raise ResultPicklingError(
            f"penny: the task's return value of type {type(value).__qualname__} cannot be pickled "
            f"({type(e).__name__}: {e}); return plain data instead"
        ) from e
    _store_blob(tasks, arena, rec, data)
    return F_RESULT_BLOB


def encode_exception(tasks: TaskTable, arena: Arena, rec: int, exc: BaseException) -> int:
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
    tasks.set_blob(rec, off, n)
    return F_RESULT_BLOB


def decode_result(tasks: TaskTable, arena: Arena, rec: int, flags: int):
    """The value stored by encode_result; frees its blob."""
    if not flags & F_RESULT_BLOB:
        return tasks.s.unpack_inline(*tasks.inline(rec))[0]
    off, n = tasks.blob(rec)
    data = arena.get(off, n)
    try:
        return loads(data, arena)
    finally:
        free_blob(arena, off, n)


def decode_exception(tasks: TaskTable, arena: Arena, rec: int) -> BaseException:
    """The exception stored by encode_exception, with the remote traceback as its cause."""
    off, n = tasks.blob(rec)
    data = arena.get(off, n)
    try:
        exc, tb = loads(data, arena)
    finally:
        free_blob(arena, off, n)
    if tb:
        exc.__cause__ = RemoteTraceback(tb)
    return exc
