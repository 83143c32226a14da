"""The data arena: variable-size, reference-counted blocks in the shared region.

Two allocators behind one interface, both shared by every process:

* **Small blocks** (up to ``config.LARGE_BLOCK``): powers of two from 64
  bytes, each with a 16-byte header.  A request pops a block of its class from
  that class's free list (a Treiber stack with a tagged head, lock-free) or
  carves a new one from the small arena with one atomic bump.  Freeing pushes
  the block back; it is reused by requests of its class.

* **Large blocks**: extents of whole pages in the large area, a range of the
  region reserved as address space only (the memfd is sparse).  Extents carry
  boundary tags (their size and their lower neighbour's size), so a freed
  extent merges with free neighbours and a free extent at the top gives the
  space back (unless it is kept committed, below).  Allocation is first fit with splitting, under a lock held for
  a few microseconds (allocations this size cost a page fault per 4 KiB
  anyway).  **Memory** is committed per extent when it is allocated
  (``posix_fallocate``: a clear ``MemoryError`` instead of a ``SIGBUS`` later)
  and handed back to the system when the extent is freed (``MADV_REMOVE``),
  except that up to ``config.ARENA_KEEP_COMMITTED`` bytes of freed extents
  stay committed for reuse, so a big block that comes and goes every task
  costs one copy instead of a commit and a release each time.
  So the arena grows by committing extents as long as the reservation and
  the machine allow, and a long run of allocations and frees does not grow.

When the small arena is full, small requests take an extent too.

Every block ends its header with ``magic, class, refs`` just before its data.
`alloc` returns a block with one reference; `incref` adds one; `release`
drops one and frees the block when none is left.  Shared arrays are blocks
whose references are held by `_core.Lease` objects (one per process view)
and by task records that carry them (see marshal.py).

The lock is a word holding the holder's pid.  A waiter that finds the holder
dead takes the lock over (a worker killed mid-allocation) and, before using
the lists the dead holder may have left half-updated, rebuilds them from the
extent chain (`_rebuild`: every extent's header has its size and state): the
extent it was working on may be lost, never handed out twice
(docs/crash-model.md, "arena").  `release` runs from garbage
collection at any moment, so it never waits for the lock: when the lock is
busy it pushes the extent on a lock-free stack that the next holder drains.
"""

from __future__ import annotations

import mmap
import os
import time

from .. import _core, _killpoints, config
from .._proc import process_alive as _alive
from .layout import (
    ARENA_CLASSES,
    ARENA_MIN_SHIFT,
    B_CLASS,
    B_LINK,
    B_MAGIC,
    B_REFS,
    BLOCK_HEADER,
    BLOCK_MAGIC,
    H_ARENA_BUMP,
    H_ARENA_FREE,
    H_LARGE_CACHED,
    H_LARGE_DEFERRED,
    H_LARGE_FREE,
    H_LARGE_LAST,
    H_LARGE_LOCK,
    H_LARGE_TOP,
    H_LARGE_USED,
    LARGE_CLASS,
    LINE,
    PAGE,
    X_ALLOCATED,
    X_COMMITTED,
    X_FREE,
    X_HEADER,
    X_NEXT_FREE,
    X_PREV,
    X_PREV_FREE,
    X_SIZE,
    X_STATE,
    Layout,
)

_R = _core.RELAXED
_MINUS_ONE = (1 << 64) - 1
#: A free extent is split when the rest is at least this big.
_MIN_SPLIT = 16 * PAGE
_SMALL_MAX_SHIFT = (config.LARGE_BLOCK - 1).bit_length()
_HDR = X_HEADER - BLOCK_HEADER  # where the common block header sits in an extent


class Arena:
    """Blocks in the region `shared`, laid out by `layout`.  `fd` and `map` are
    this process's descriptor and mapping of the region (to commit and to
    release the memory of large extents); without them (tests on a plain
    buffer) extents are used uncommitted."""

    __slots__ = ("s", "base", "size", "_count", "large", "large_size", "_pages", "fd", "map", "_pid", "keep")

    def __init__(self, shared: _core.Shared, layout: Layout, fd: int = -1, map: mmap.mmap | None = None):
        self.s = shared
        self.base = layout.arena
        self.size = layout.arena_size
        self._count = self.size // LINE
        self.large = layout.large
        self.large_size = layout.large_size
        self._pages = max(1, self.large_size // PAGE)
        self.fd = fd
        self.map = map
        self._pid = os.getpid()
        self.keep = min(config.ARENA_KEEP_COMMITTED, self.large_size // 4) if map is not None else 0

    # ---- the interface ---------------------------------------------------------
    @staticmethod
    def size_class(nbytes: int) -> int:
        return max(ARENA_MIN_SHIFT, (nbytes + BLOCK_HEADER - 1).bit_length())

    def alloc(self, nbytes: int) -> int:
        """Offset (in the region) of `nbytes` of writable data with one reference.
        MemoryError (with sizes) if neither the arena nor the machine can hold it."""
        if nbytes < 0:
            raise ValueError(f"penny: cannot allocate {nbytes} bytes")
        k = self.size_class(nbytes)
        if k <= _SMALL_MAX_SHIFT and (1 << k) <= self.size:
            off = self._alloc_small(k)
            if off:
                return off
        return self._alloc_large(nbytes)

    def incref(self, data_offset: int) -> None:
        """One more reference to an allocated block (the caller holds one already)."""
        s = self.s
        hdr = self._header(data_offset)
        if s.load32(hdr + B_MAGIC, _R) != BLOCK_MAGIC:
            # Freed (the magic is cleared before the block is pushed on a free
            # list): the count word is a free-list link now (B_LINK == B_REFS),
            # and adding to it would corrupt the list.  Refuse before touching it.
            raise RuntimeError(f"penny: reference to a freed arena block at {data_offset}")
        # Relaxed: the caller's own reference keeps the block alive meanwhile,
        # so there is nothing to order (as for shared_ptr copies).
        old = s.fetch_add64(hdr + B_REFS, 1, _R)
        if old == 0 or old >= 1 << 62:
            s.fetch_add64(hdr + B_REFS, _MINUS_ONE, _R)  # undo: leave the evidence intact
            raise RuntimeError(f"penny: reference to a freed arena block at {data_offset}")

    def _header(self, data_offset: int) -> int:
        """The header of the block whose data is at `data_offset`; ValueError if none can be there."""
        hdr = data_offset - BLOCK_HEADER
        if not (self.base <= hdr < self.base + self.size and (hdr - self.base) % LINE == 0) and not (
            self.large <= data_offset - X_HEADER < self.large + self.large_size
            and (data_offset - X_HEADER - self.large) % PAGE == 0
        ):
            raise ValueError(f"penny: offset {data_offset} is not an arena block")
        return hdr

    def release(self, data_offset: int) -> None:
        """Drop one reference; the last one frees the block.  Safe from garbage
        collection in any thread or process: it never waits for a lock."""
        s = self.s
        if s.nbytes == 0:
            return  # the region is closed here: it goes away as a whole
        hdr = self._header(data_offset)
        if s.load32(hdr + B_MAGIC, _R) != BLOCK_MAGIC:
            # Freed already (the magic is cleared before the block is reused):
            # refuse before touching the count, which is a free-list link now.
            raise RuntimeError(f"penny: corrupt or doubly freed arena block at {data_offset}")
        # Acq_rel: release so this process's uses of the data happen-before the
        # block's reuse; acquire (for the last owner) to see every other use.
        old = s.fetch_add64(hdr + B_REFS, _MINUS_ONE, _core.ACQ_REL)
        if old != 1:
            if old == 0 or old >= 1 << 62:
                s.fetch_add64(hdr + B_REFS, 1, _R)  # undo: leave the evidence intact
                raise RuntimeError(f"penny: arena block at {data_offset} released once too often (doubly freed)")
            return
        k = s.load32(hdr + B_CLASS, _R)
        s.store32(hdr + B_MAGIC, 0, _R)  # catches a double free
        if k == LARGE_CLASS:
            self._free_large(data_offset - X_HEADER)
        elif ARENA_MIN_SHIFT <= k < ARENA_MIN_SHIFT + ARENA_CLASSES:
            # stack_push is a release CAS: our reads of the block happen-before reuse.
            s.stack_push(H_ARENA_FREE + 8 * (k - ARENA_MIN_SHIFT), self.base, LINE, B_LINK, self._count,
                         (hdr - self.base) // LINE)
        else:
            raise RuntimeError(f"penny: corrupt arena block class {k} at {data_offset}")

    free = release  # a block with a single owner (pickles in task records)

    def block_size(self, data_offset: int) -> int:
        """Usable bytes of an allocated block."""
        hdr = data_offset - BLOCK_HEADER
        k = self.s.load32(hdr + B_CLASS, _R)
        if k == LARGE_CLASS:
            return self.s.load64(data_offset - X_HEADER + X_SIZE, _R) - X_HEADER
        return (1 << k) - BLOCK_HEADER

    def refs(self, data_offset: int) -> int:
        return self.s.load64(data_offset - BLOCK_HEADER + B_REFS, _core.ACQUIRE)

    def contains(self, offset: int) -> bool:
        return self.base <= offset < self.large + self.large_size

    def put(self, data) -> tuple[int, int]:
        """Copy bytes-like `data` into a new block; (offset, length)."""
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        off = self.alloc(n)
        self.s.write_bytes(off, data)
        return off, n

    def get(self, offset: int, length: int) -> bytes:
        return self.s.read_bytes(offset, length)

    def used(self) -> int:
        """Bytes carved from the small arena so far (freed blocks included)."""
        return min(self.s.load64(H_ARENA_BUMP, _R), self.size)

    def stats(self) -> dict:
        """Sizes, for Scheduler.stats() and tests."""
        self._drain_if_free()
        s = self.s
        return {
            "small_carved": self.used(),
            "small_size": self.size,
            "large_used": s.load64(H_LARGE_USED, _R),
            "large_cached": s.load64(H_LARGE_CACHED, _R),
            "large_carved": s.load64(H_LARGE_TOP, _R),
            "large_reserved": self.large_size,
        }

    # ---- small blocks --------------------------------------------------------------
    def _alloc_small(self, k: int) -> int:
        s = self.s
        i = s.stack_pop(H_ARENA_FREE + 8 * (k - ARENA_MIN_SHIFT), self.base, LINE, B_LINK, self._count)
        if i >= 0:
            block = self.base + i * LINE
        else:
            # The bump refuses a block that does not fit (C CAS loop), so a
            # refused request leaves the rest of the small arena usable.
            start = s.bump(H_ARENA_BUMP, 1 << k, self.size)
            if start < 0:
                return 0
            block = self.base + start
        # Plain stores: the block is ours alone until published (by the
        # release that publishes whatever refers to it).
        s.store32(block + B_MAGIC, BLOCK_MAGIC, _R)
        s.store32(block + B_CLASS, k, _R)
        s.store64(block + B_REFS, 1, _R)
        return block + BLOCK_HEADER

    # ---- large extents ---------------------------------------------------------------
    def _lock(self) -> None:
        s, pid = self.s, self._pid_now()
        spins = 0
        while True:
            # Acquire: the previous holder's updates of the extent lists are visible.
            ok, holder = s.cas32(H_LARGE_LOCK, 0, pid, _core.ACQUIRE)
            if ok:
                return
            spins += 1
            if spins < 64:
                os.sched_yield()
                continue
            time.sleep(0.0002)
            if spins % 256 == 0 and holder != pid and not _alive(holder):
                # The holder died holding the lock: take it over, and do not
                # trust what it was doing to the lists.
                if s.cas32(H_LARGE_LOCK, holder, pid, _core.ACQUIRE)[0]:
                    self._rebuild()
                    return

    def _rebuild(self) -> None:
        """The free list, the last extent's size and the used/cached counts,
        recomputed from the extent chain (lock held, taken over from a dead
        holder).  Walks the extents from the start of the large area by their
        sizes: an ALLOCATED one stays allocated (its owner may be alive); a FREE
        one, or one in no list (state 0: the dead holder was unlinking,
        splitting or merging it; nobody was handed it, since an allocation is
        marked ALLOCATED before the lock is released) is linked free.  A torn
        size stops the walk: the rest is lost to the free list, never reused
        while in use.  The deferred stack is left alone (its extents are
        ALLOCATED until drained)."""
        s = self.s
        end = self.large + s.load64(H_LARGE_TOP, _R)
        x, head, tail, prev_size, used, cached = self.large, 0, 0, 0, 0, 0
        while x < end:
            size = s.load64(x + X_SIZE, _R)
            if size < PAGE or size % PAGE or x + size > end:
                break
            s.store64(x + X_PREV, prev_size, _R)
            if s.load32(x + X_STATE, _R) == X_ALLOCATED:
                used += size
            else:
                s.store32(x + X_STATE, X_FREE, _R)
                s.store64(x + X_NEXT_FREE, 0, _R)
                s.store64(x + X_PREV_FREE, tail, _R)
                if tail:
                    s.store64(tail + X_NEXT_FREE, x, _R)
                else:
                    head = x
                tail = x
                if s.load32(x + X_COMMITTED, _R):
                    cached += size
            prev_size = size
            x += size
        s.store64(H_LARGE_FREE, head, _R)
        s.store64(H_LARGE_LAST, prev_size, _R)
        s.store64(H_LARGE_USED, used, _R)
        s.store64(H_LARGE_CACHED, cached, _R)

    def _try_lock(self) -> bool:
        return self.s.cas32(H_LARGE_LOCK, 0, self._pid_now(), _core.ACQUIRE)[0]

    def _unlock(self) -> None:
        # Release: our updates happen-before the next holder's acquire.
        self.s.store32(H_LARGE_LOCK, 0, _core.RELEASE)

    def _pid_now(self) -> int:
        pid = self._pid
        if pid != os.getpid():  # a forked child
            pid = self._pid = os.getpid()
        return pid

    def _alloc_large(self, nbytes: int) -> int:
        need = (nbytes + X_HEADER + PAGE - 1) // PAGE * PAGE
        s = self.s
        if not self.large_size:
            raise MemoryError(
                f"penny: arena exhausted: a {nbytes}-byte request does not fit the {self.size}-byte "
                f"small arena ({self.size - self.used()} bytes never used; freed blocks are reused for "
                "requests of their own size class) and there is no large area; pass a larger "
                "arena_size= or arena_max= to Scheduler"
            )
        self._lock()
        try:
            if _killpoints.ARMED:
                _killpoints.hit("arena.after_lock")
            self._drain_deferred()
            start, ready = self._take_free(need)
            if not start:
                top = s.load64(H_LARGE_TOP, _R)
                if top + need > self.large_size:
                    raise MemoryError(self._exhausted(nbytes, need))
                start = self.large + top
                s.store64(start + X_SIZE, need, _R)
                s.store64(start + X_PREV, s.load64(H_LARGE_LAST, _R), _R)
                s.store64(H_LARGE_LAST, need, _R)
                s.store64(H_LARGE_TOP, top + need, _R)
            size = s.load64(start + X_SIZE, _R)
            s.store32(start + X_STATE, X_ALLOCATED, _R)
            s.store32(start + X_COMMITTED, 0, _R)
            s.fetch_add64(H_LARGE_USED, size, _R)
        finally:
            self._unlock()
        hdr = start + _HDR
        s.store32(hdr + B_MAGIC, BLOCK_MAGIC, _R)
        s.store32(hdr + B_CLASS, LARGE_CLASS, _R)
        s.store64(hdr + B_REFS, 1, _R)
        if self.fd >= 0 and not ready:
            try:
                os.posix_fallocate(self.fd, start, size)
            except OSError as e:
                s.store64(hdr + B_REFS, 0, _R)
                s.store32(hdr + B_MAGIC, 0, _R)
                self._free_large(start)
                raise MemoryError(
                    f"penny: the system could not provide {size} bytes of shared memory for a "
                    f"{nbytes}-byte block ({e.strerror}); free some memory or use smaller blocks"
                ) from e
        return start + X_HEADER

    def _take_free(self, need: int) -> tuple[int, bool]:
        """First free extent of at least `need` bytes, unlinked and split (lock
        held), and whether its memory is committed already; (0, False) if none.
        A committed extent that fits exactly is preferred (no commit to pay)."""
        s = self.s
        best = 0
        x = s.load64(H_LARGE_FREE, _R)
        while x:
            size = s.load64(x + X_SIZE, _R)
            if size >= need:
                committed = s.load32(x + X_COMMITTED, _R)
                if committed or not best:
                    best = x
                if committed:
                    break
            x = s.load64(x + X_NEXT_FREE, _R)
        if not best:
            return 0, False
        x = best
        size = s.load64(x + X_SIZE, _R)
        committed = s.load32(x + X_COMMITTED, _R)
        self._unlink(x)
        if committed:
            s.fetch_add64(H_LARGE_CACHED, (1 << 64) - size, _R)
        if size - need >= _MIN_SPLIT:
            rest = x + need
            s.store64(rest + X_SIZE, size - need, _R)
            s.store64(rest + X_PREV, need, _R)
            if x + size < self.large + s.load64(H_LARGE_TOP, _R):
                s.store64(rest + size - need + X_PREV, size - need, _R)
            else:  # the top extent (a committed one kept free): the rest is the top now
                s.store64(H_LARGE_LAST, size - need, _R)
            s.store64(x + X_SIZE, need, _R)
            s.store32(rest + X_COMMITTED, committed, _R)
            if committed:
                s.fetch_add64(H_LARGE_CACHED, size - need, _R)
            self._link(rest)
        return x, bool(committed)

    def _link(self, x: int) -> None:
        s = self.s
        head = s.load64(H_LARGE_FREE, _R)
        s.store32(x + X_STATE, X_FREE, _R)
        s.store64(x + X_NEXT_FREE, head, _R)
        s.store64(x + X_PREV_FREE, 0, _R)
        if head:
            s.store64(head + X_PREV_FREE, x, _R)
        if _killpoints.ARMED:
            _killpoints.hit("arena.in_link")
        s.store64(H_LARGE_FREE, x, _R)

    def _unlink(self, x: int) -> None:
        s = self.s
        nxt = s.load64(x + X_NEXT_FREE, _R)
        prv = s.load64(x + X_PREV_FREE, _R)
        if prv:
            s.store64(prv + X_NEXT_FREE, nxt, _R)
        else:
            s.store64(H_LARGE_FREE, nxt, _R)
        if nxt:
            s.store64(nxt + X_PREV_FREE, prv, _R)
        s.store32(x + X_STATE, 0, _R)

    def _free_large(self, start: int) -> None:
        s = self.s
        size = s.load64(start + X_SIZE, _R)
        # Keep it committed for reuse while the cache has room (a soft limit:
        # read without the lock), else give the memory back now, outside the
        # lock (the extent is still ours): everything but the header's page.
        keep = size <= self.keep - s.load64(H_LARGE_CACHED, _R) if self.keep else False
        s.store32(start + X_COMMITTED, int(keep), _R)
        if not keep:
            self._punch(start, size)
        if not self._try_lock():
            # Busy (perhaps by this very thread, interrupted by the garbage
            # collector): leave it to the holder.  stack_push is a release CAS.
            s.stack_push(H_LARGE_DEFERRED, self.large, PAGE, X_NEXT_FREE, self._pages,
                         (start - self.large) // PAGE)
            return
        try:
            self._coalesce(start)
            self._drain_deferred()
        finally:
            self._unlock()

    def _drain_deferred(self) -> None:
        s = self.s
        while True:
            i = s.stack_pop(H_LARGE_DEFERRED, self.large, PAGE, X_NEXT_FREE, self._pages)
            if i < 0:
                return
            self._coalesce(self.large + i * PAGE)

    def _drain_if_free(self) -> None:
        if self.large_size and self._try_lock():
            try:
                self._drain_deferred()
            finally:
                self._unlock()

    def _punch(self, start: int, size: int) -> None:
        """Hand the memory of an extent back to the system (all but its header's page)."""
        if self.map is not None and size > PAGE:
            try:
                self.map.madvise(mmap.MADV_REMOVE, start + PAGE, size - PAGE)
            except (OSError, ValueError):
                pass  # the memory stays committed until reused; nothing is wrong

    def _coalesce(self, x: int) -> None:
        """Return allocated extent `x` to the free list, merged with free
        neighbours (lock held).  A merged extent is committed only if all its
        parts were: a committed part merged with an uncommitted one is handed
        back, so the count of cached bytes stays exact."""
        s = self.s
        size = s.load64(x + X_SIZE, _R)
        s.fetch_add64(H_LARGE_USED, (1 << 64) - size, _R)
        committed = s.load32(x + X_COMMITTED, _R)
        end = self.large + s.load64(H_LARGE_TOP, _R)
        nxt = x + size
        if nxt < end and s.load32(nxt + X_STATE, _R) == X_FREE:
            committed = self._absorb(nxt, x, size, committed)
            self._unlink(nxt)
            size += s.load64(nxt + X_SIZE, _R)
        prev_size = s.load64(x + X_PREV, _R)
        if prev_size:
            p = x - prev_size
            if s.load32(p + X_STATE, _R) == X_FREE:
                committed = self._absorb(p, x, size, committed)
                self._unlink(p)
                x, size = p, prev_size + size
        s.store64(x + X_SIZE, size, _R)
        if x + size >= end:
            if committed:  # kept for reuse: it stays the top extent, free
                s.store64(H_LARGE_LAST, size, _R)
            else:  # give the space back to the untouched area
                s.store64(H_LARGE_TOP, x - self.large, _R)
                s.store64(H_LARGE_LAST, s.load64(x + X_PREV, _R), _R)
                s.store32(x + X_STATE, 0, _R)
                return
        else:
            s.store64(x + size + X_PREV, size, _R)
        s.store32(x + X_COMMITTED, committed, _R)
        if committed:
            s.fetch_add64(H_LARGE_CACHED, size, _R)
        self._link(x)

    def _absorb(self, other: int, x: int, size: int, committed: int) -> int:
        """About to merge free extent `other` with `x` (`size` bytes, `committed`):
        the commitment of the result (lock held)."""
        s = self.s
        osize = s.load64(other + X_SIZE, _R)
        ocommitted = s.load32(other + X_COMMITTED, _R)
        if ocommitted:
            s.fetch_add64(H_LARGE_CACHED, (1 << 64) - osize, _R)  # re-added with the result if kept
        if committed and ocommitted:
            return 1
        if ocommitted:
            self._punch(other, osize)
        if committed:
            self._punch(x, size)
        return 0

    def _exhausted(self, nbytes: int, need: int) -> str:
        s = self.s
        largest, free = 0, 0
        x = s.load64(H_LARGE_FREE, _R)
        while x:
            size = s.load64(x + X_SIZE, _R)
            largest, free = max(largest, size), free + size
            x = s.load64(x + X_NEXT_FREE, _R)
        top = s.load64(H_LARGE_TOP, _R)
        return (
            f"penny: arena exhausted: a {nbytes}-byte block needs {need} bytes; the large area "
            f"reserves {self.large_size} bytes, {s.load64(H_LARGE_USED, _R)} are in use, "
            f"{self.large_size - top} never used and {free} free in pieces (largest {largest}); "
            "pass a larger arena_max= to Scheduler or hold fewer large objects at once"
        )
