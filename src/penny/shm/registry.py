"""The function directory: what the function id of a task record stands for.

A record carries a 32-bit function id, never code.  Ids below 2**31 are the
*static* table given to the Scheduler (``functions={1: add}``), copied to
every worker at start.  Ids from 2**31 up are entries of this directory in
the shared region, added when a function is first submitted or spawned
(wire/functions.py decides how a callable travels):

* ``KIND_NAME``: the entry holds ``module:qualname``; a worker imports the
  module and looks the name up;
* ``KIND_PICKLE``: the entry holds the arena offset and length of the
  callable's pickle (cloudpickle: by value for lambdas, closures and
  functions of ``__main__``); a worker loads it once.

An entry is written once by the process that adds it and published by the
release store of its length; readers load the length with acquire.
"""

from __future__ import annotations

import struct
import threading

from .. import _core
from ..errors import NotImportableError, UnknownFunctionError
from .layout import FN_ENTRY, FN_KIND, FN_LEN, FN_NAME, FN_NAME_MAX, H_FN_COUNT, Layout

DYNAMIC_BASE = 1 << 31
MAX_STATIC_ID = DYNAMIC_BASE - 1

KIND_NAME = 0
KIND_PICKLE = 1
_BLOB = struct.Struct("<QQ")  # a KIND_PICKLE entry's payload: arena offset, length


class FunctionDirectory:
    """One process's access to the directory of a region."""

    def __init__(self, shared: _core.Shared, layout: Layout):
        self.s = shared
        self.base = layout.functions
        self.slots = layout.function_slots
        self._lock = threading.Lock()  # one adder at a time in this process (slots are atomic across)

    def add_name(self, name: str) -> int:
        data = name.encode()
        if len(data) > FN_NAME_MAX:
            raise NotImportableError(f"penny: the qualified name {name!r} is longer than {FN_NAME_MAX} bytes")
        return self._add(KIND_NAME, data)

    def add_blob(self, off: int, n: int) -> int:
        return self._add(KIND_PICKLE, _BLOB.pack(off, n))

    def _add(self, kind: int, payload: bytes) -> int:
        with self._lock:
            # Relaxed: the slot is ours alone; its contents are published below.
            slot = self.s.fetch_add32(H_FN_COUNT, 1, _core.RELAXED)
            if slot >= self.slots:
                raise NotImportableError(
                    f"penny: more than {self.slots} distinct functions were submitted; "
                    "raise function_slots= or use a static function table"
                )
            entry = self.base + slot * FN_ENTRY
            self.s.write_bytes(entry + FN_NAME, payload)
            self.s.store32(entry + FN_KIND, kind, _core.RELAXED)
            # Release: kind and payload are visible to a reader that sees the length.
            self.s.store32(entry + FN_LEN, len(payload), _core.RELEASE)
            return DYNAMIC_BASE + slot

    def read(self, fid: int) -> tuple[int, bytes | tuple[int, int]]:
        """(KIND_NAME, name bytes) or (KIND_PICKLE, (offset, length)) of entry `fid`."""
        slot = fid - DYNAMIC_BASE
        if not 0 <= slot < self.slots:
            raise UnknownFunctionError(f"penny: no function with id {fid} in this scheduler's table")
        entry = self.base + slot * FN_ENTRY
        # Acquire: pairs with the adding process's release of the length.
        n = self.s.load32(entry + FN_LEN, _core.ACQUIRE)
        if n == 0:
            raise UnknownFunctionError(f"penny: function id {fid} was never registered")
        kind = self.s.load32(entry + FN_KIND, _core.RELAXED)
        if kind == KIND_NAME and n <= FN_NAME_MAX:
            return kind, self.s.read_bytes(entry + FN_NAME, n)
        if kind == KIND_PICKLE and n == _BLOB.size:
            return kind, _BLOB.unpack(self.s.read_bytes(entry + FN_NAME, n))
        raise UnknownFunctionError(f"penny: function directory entry {fid} is corrupt (kind {kind}, length {n})")
