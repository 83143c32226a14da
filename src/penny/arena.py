"""The data arena: variable-size blocks in the shared region.

Blocks are powers of two from 64 bytes up, each with a 16-byte header
(magic, size class; the free-list link while free).  A request takes a
block of its class from that class's free list (a Treiber stack with a
tagged head, lock-free and shared by all processes), or else carves a new
one from the untouched end of the arena with one fetch_add.  Freed blocks go
back to their class's list and are reused by any process.

Limits of this first version: no coalescing or splitting across classes,
so a workload that frees many small blocks and then asks for large ones can
exhaust the arena although bytes are free; the error says so with sizes.
"""

from __future__ import annotations

from . import _core
from .layout import (
    ARENA_CLASSES,
    ARENA_MIN_SHIFT,
    B_CLASS,
    B_LINK,
    B_MAGIC,
    BLOCK_HEADER,
    BLOCK_MAGIC,
    H_ARENA_BUMP,
    H_ARENA_FREE,
    LINE,
)


class Arena:
    __slots__ = ("s", "base", "size", "_count")

    def __init__(self, shared: _core.Shared, base: int, size: int):
        self.s = shared
        self.base = base
        self.size = size
        self._count = size // LINE

    @staticmethod
    def size_class(nbytes: int) -> int:
        return max(ARENA_MIN_SHIFT, (nbytes + BLOCK_HEADER - 1).bit_length())

    def alloc(self, nbytes: int) -> int:
        """Offset (in the region) of `nbytes` of writable data.  MemoryError if
        the arena cannot hold it."""
        k = self.size_class(nbytes)
        if k - ARENA_MIN_SHIFT >= ARENA_CLASSES or (1 << k) > self.size:
            raise MemoryError(
                f"penny: a {nbytes}-byte block does not fit the {self.size}-byte arena; "
                "pass a larger arena_size= to Scheduler"
            )
        s = self.s
        head = H_ARENA_FREE + 8 * (k - ARENA_MIN_SHIFT)
        i = s.stack_pop(head, self.base, LINE, B_LINK, self._count)
        if i >= 0:
            block = self.base + i * LINE
        else:
            # The bump pointer refuses a block that does not fit (C CAS loop),
            # so a refused request leaves the rest of the arena usable.
            start = s.bump(H_ARENA_BUMP, 1 << k, self.size)
            if start < 0:
                used = self.used()
                raise MemoryError(
                    f"penny: arena exhausted: needed a {1 << k}-byte block for {nbytes} bytes, "
                    f"{self.size - used} of {self.size} bytes never used remain (freed blocks are "
                    "reused only for requests of their own size class); pass a larger arena_size= "
                    "to Scheduler or keep fewer large arguments and results in flight"
                )
            block = self.base + start
        # Plain stores: the block is ours alone until published.
        s.store32(block + B_MAGIC, BLOCK_MAGIC, _core.RELAXED)
        s.store32(block + B_CLASS, k, _core.RELAXED)
        return block + BLOCK_HEADER

    def free(self, data_offset: int) -> None:
        s = self.s
        block = data_offset - BLOCK_HEADER
        if not (self.base <= block < self.base + self.size) or (block - self.base) % LINE:
            raise ValueError(f"penny: offset {data_offset} is not an arena block")
        k = s.load32(block + B_CLASS, _core.RELAXED)
        if s.load32(block + B_MAGIC, _core.RELAXED) != BLOCK_MAGIC or not ARENA_MIN_SHIFT <= k < ARENA_MIN_SHIFT + ARENA_CLASSES:
            raise RuntimeError(f"penny: corrupt or doubly freed arena block at {block}")
        s.store32(block + B_MAGIC, 0, _core.RELAXED)  # catches a double free
        # stack_push is a release CAS: our reads of the block happen-before reuse.
        s.stack_push(H_ARENA_FREE + 8 * (k - ARENA_MIN_SHIFT), self.base, LINE, B_LINK, self._count,
                     (block - self.base) // LINE)

    def put(self, data) -> tuple[int, int]:
        """Copy bytes-like `data` into a new block; (offset, length)."""
        n = len(data)
        off = self.alloc(n)
        self.s.write_bytes(off, data)
        return off, n

    def get(self, offset: int, length: int) -> bytes:
        return self.s.read_bytes(offset, length)

    def used(self) -> int:
        """Bytes carved from the arena so far (freed blocks included)."""
        return min(self.s.load64(H_ARENA_BUMP, _core.RELAXED), self.size)
