"""The shared region: one anonymous memfd per scheduler, mapped by every process.

Why a memfd and not ``multiprocessing.shared_memory``: a memfd has no name in
``/dev/shm``, so nothing can leak when every process holding it dies, however
it dies (SIGKILL included), there is no resource tracker to warn or to unlink
it under its creator, and no other user can open it (it is reachable only
through ``/proc/<pid>/fd`` of a process of the same user).  Workers receive
the file descriptor itself: inherited under ``fork``, passed with
``SCM_RIGHTS`` over the launcher's socket under the default start method
(runtime/launcher.py), over multiprocessing's start channel (``pass_fds``)
under ``spawn``, as ``multiprocessing.heap.Arena`` does.  Every copy a worker
keeps is close-on-exec (`RegionHandle.attach`)."""

from __future__ import annotations

import mmap
import os
import tempfile

from .. import _core
from .layout import (
    H_ARENA,
    H_DEQUE,
    H_FUNCTIONS,
    H_LARGE,
    H_MAGIC,
    H_MAIN_PID,
    H_SIZE,
    H_TASKS,
    H_VERSION,
    H_WORKERS,
    MAGIC,
    VERSION,
    Layout,
    bind,
)


class RegionMismatchError(RuntimeError):
    """A process attached to a region whose header does not match its layout."""


def _new_fd(size: int) -> int:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("penny", os.MFD_CLOEXEC)
    else:  # pragma: no cover - non-Linux fallback: an unlinked file in /dev/shm
        fd, path = tempfile.mkstemp(prefix="penny-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        os.unlink(path)
    try:
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


class Region:
    """A mapping of the shared region plus its `_core.Shared` accessor.

    `create` makes and initialises a new region (main process); pickling a
    Region for a child process sends its file descriptor, and the child's
    copy attaches to the same memory and checks the header.
    """

    def __init__(self, fd: int, layout: Layout, *, owner: bool):
        self.fd = fd
        self.layout = layout
        self.owner = owner
        self.map = mmap.mmap(fd, layout.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.shared = _core.Shared(self.map)
        bind(self.shared, layout)

    # ---- creation and attachment ----
    @classmethod
    def create(cls, layout: Layout) -> "Region":
        fd = _new_fd(layout.size)
        try:
            region = cls(fd, layout, owner=True)
        except BaseException:
            os.close(fd)
            raise
        region._init_header()
        return region

    def _init_header(self) -> None:
        s, lay = self.shared, self.layout
        s.store32(H_VERSION, VERSION, _core.RELAXED)
        s.store32(H_WORKERS, lay.workers, _core.RELAXED)
        s.store64(H_SIZE, lay.size, _core.RELAXED)
        s.store32(H_TASKS, lay.task_capacity, _core.RELAXED)
        s.store32(H_DEQUE, lay.deque_capacity, _core.RELAXED)
        s.store64(H_ARENA, lay.arena_size, _core.RELAXED)
        s.store64(H_LARGE, lay.large_size, _core.RELAXED)
        s.store32(H_FUNCTIONS, lay.function_slots, _core.RELAXED)
        s.store32(H_MAIN_PID, os.getpid(), _core.RELAXED)
        for w in range(lay.workers):
            s.deque_init(lay.deque(w), lay.deque_capacity)
            s.queue_init(lay.inbox(w), lay.task_capacity)
        s.queue_init(lay.injector, lay.task_capacity)
        s.queue_init(lay.completions, lay.task_capacity)
        # Release: everything above is visible to a process that reads the
        # magic with acquire (workers attach after this, through process
        # start, which is itself a full barrier; this is belt and braces).
        s.store64(H_MAGIC, MAGIC, _core.RELEASE)

    def check_header(self) -> None:
        """Refuse a region whose header does not match our layout (security, versions)."""
        s, lay = self.shared, self.layout
        got = {
            "magic": s.load64(H_MAGIC, _core.ACQUIRE),
            "version": s.load32(H_VERSION, _core.RELAXED),
            "workers": s.load32(H_WORKERS, _core.RELAXED),
            "size": s.load64(H_SIZE, _core.RELAXED),
            "tasks": s.load32(H_TASKS, _core.RELAXED),
            "deque": s.load32(H_DEQUE, _core.RELAXED),
            "arena": s.load64(H_ARENA, _core.RELAXED),
            "large": s.load64(H_LARGE, _core.RELAXED),
            "functions": s.load32(H_FUNCTIONS, _core.RELAXED),
        }
        want = {
            "magic": MAGIC, "version": VERSION, "workers": lay.workers, "size": lay.size,
            "tasks": lay.task_capacity, "deque": lay.deque_capacity, "arena": lay.arena_size, "large": lay.large_size,
            "functions": lay.function_slots,
        }
        bad = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
        if bad:
            raise RegionMismatchError(f"shared region header does not match this process's layout: {bad}")

    @property
    def main_pid(self) -> int:
        return self.shared.load32(H_MAIN_PID, _core.RELAXED)

    def handle(self) -> "RegionHandle":
        """What a worker process is given to attach to this region."""
        return RegionHandle(self.fd, self.layout)

    def close(self) -> None:
        """Unmap and close.  Safe to call twice.  Shared arrays still referenced
        in this process keep the mapping (not the descriptor) until they are
        collected: their memory never disappears under them."""
        unmap = True
        if self.shared is not None:
            unmap = self.shared.release()
            self.shared = None
        if self.map is not None:
            if unmap:
                self.map.close()
            self.map = None  # else unmapped when the last lease lets go of it
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class RegionHandle:
    """A file descriptor and a layout; pickles the descriptor itself for a child.

    Under ``fork`` the handle is inherited as is and `attach` duplicates the
    inherited descriptor; under ``spawn`` pickling hands the descriptor to the
    child through multiprocessing's start channel; Penny's launcher builds the
    handle in the child from the descriptor it received (``owned``).
    """

    def __init__(self, fd: int, layout: Layout, owned: bool = False):
        self.fd = fd
        self.layout = layout
        self._owned = owned  # True when the descriptor was received for us alone

    def __reduce__(self):
        from multiprocessing import context, reduction

        if context.get_spawning_popen() is None:
            raise RuntimeError("a RegionHandle can only be pickled to start a worker process")
        return _rebuild_handle, (reduction.DupFd(self.fd), self.layout)

    def attach(self) -> Region:
        fd = self.fd if self._owned else os.dup(self.fd)
        self._owned = False
        # Close-on-exec in every process: a descriptor received over a socket
        # or through spawn's pass_fds arrives inheritable, and a program that
        # a task starts (os.system, subprocess(close_fds=False)) must not
        # hold the region.  (os.dup already gives a non-inheritable copy.)
        os.set_inheritable(fd, False)
        region = Region(fd, self.layout, owner=False)
        try:
            region.check_header()
        except BaseException:
            region.close()
            raise
        return region


def _rebuild_handle(dupfd, layout: Layout) -> RegionHandle:
    return RegionHandle(dupfd.detach(), layout, owned=True)
