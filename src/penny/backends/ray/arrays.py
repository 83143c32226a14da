"""Shared arrays on Ray's object store: `RaySharedArray` (made on first use,
so that NumPy is imported only where arrays are shared) and `_load_shared`,
how a task receives one.
"""

from __future__ import annotations

import threading

from .errors import _READ_ONLY, ReadOnlyArrayError, ray

_freeze_lock = threading.Lock()


def _load_shared(ref):
    """Unpickled in a task: Ray's zero-copy, read-only view of the array, which
    remembers its ObjectRef so that handing it on to children sends only that."""
    view = ray.get(ref).view(_shared_array_type())
    view._penny_ref = ref
    return view


_shared_type = None


def _shared_array_type():
    """`RaySharedArray`, made on first use: NumPy is imported only where arrays
    are shared (a fresh Ray worker that never meets one starts ~90 ms sooner)."""
    global _shared_type
    if _shared_type is not None:
        return _shared_type
    np = _numpy("a shared array")

    class RaySharedArray(np.ndarray):
        """A NumPy array that travels to Ray tasks as an ObjectRef.

        Made by `RayScheduler.share` (already in the object store, read-only)
        or `RayScheduler.shared_array` (writable here until it is first sent
        to a task, then put in the object store once and read-only).  Slices,
        views and results of arithmetic are ordinary arrays sent by value.
        """

        _penny_ref = None      # its ObjectRef once in the object store
        _penny_pending = False  # made by shared_array: put on first send

        def __array_wrap__(self, arr, context=None, return_scalar=False):
            arr = arr.view(np.ndarray)
            return arr[()] if return_scalar else arr

        def __setitem__(self, key, value):
            if not self.flags.writeable:
                raise ReadOnlyArrayError(_READ_ONLY.format("assignment destination is read-only"))
            super().__setitem__(key, value)

        def _freeze(self):
            with _freeze_lock:
                if self._penny_ref is None:
                    self._penny_ref = ray.put(self.view(np.ndarray))
                    self.flags.writeable = False
                    self._penny_pending = False
            return self._penny_ref

        def __reduce_ex__(self, protocol):
            ref = self._penny_ref
            if ref is None and self._penny_pending:
                ref = self._freeze()
            if ref is None:
                return self.view(np.ndarray).__reduce_ex__(protocol)
            return _load_shared, (ref,)

        def __reduce__(self):
            return self.__reduce_ex__(2)

    RaySharedArray.__module__ = __name__
    _shared_type = RaySharedArray
    return RaySharedArray


def __getattr__(name):
    if name == "RaySharedArray":
        return _shared_array_type()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _numpy(what: str):
    try:
        import numpy
    except ImportError:
        raise ImportError(f"penny: {what} needs NumPy: pip install numpy") from None
    return numpy
