"""Recovering the tasks of a dead worker: finding them, dooming them, reaping them.

The supervisor (supervisor.py) calls these when it finds a worker dead; a
replacement worker calls `reap` for a continuation of its predecessor whose
last child finished after the recovery (forkjoin.py).  The whole procedure is
described in docs/crash-model.md.
"""

from __future__ import annotations

from ..errors import WorkerCrashedError
from ..shm.layout import (
    F_ARGS_BLOB,
    F_ARGS_CONSUMED,
    F_DEAD,
    F_RESULT_BLOB,
    H_SCRATCH,
    S_DONE,
    S_FAILED,
    S_FREE,
    S_RUNNING,
)
from ..wire import marshal


def dead_tasks(tasks, w: int) -> list[int]:
    """Refs of the tasks that were RUNNING on worker `w` (its current task, the
    inline ancestors on its stacks, its suspended continuations)."""
    out = []
    for i in range(tasks.capacity):
        ref, status = tasks.ref_at(i)
        if status == S_RUNNING and tasks.owner(tasks.record_at(i)) == w:
            out.append(ref)
    return out


def doom(tasks, arena, ref: int, why: str) -> None:
    """Store `WorkerCrashedError(why)` as the outcome of dead task `ref` now
    (its arguments, or a result it had written before dying, are released),
    and mark it F_DEAD, so that whoever reaps it later (perhaps the worker that
    replaced a replacement) reports the death that actually killed it."""
    rec = tasks.record(ref)
    flags = tasks.flags(rec)
    if flags & F_DEAD:
        return
    marshal.release_args(tasks, arena, rec, flags)
    if flags & F_RESULT_BLOB:  # it died after writing its result, before publishing it
        marshal.free_blob(arena, *tasks.blob(rec))
    rflags = marshal.encode_exception(tasks, arena, rec, WorkerCrashedError(why))
    tasks.set_flags(rec, (flags & ~(F_RESULT_BLOB | F_ARGS_BLOB)) | F_ARGS_CONSUMED | F_DEAD | rflags)


def free_finished_children(tasks, arena, ref: int) -> None:
    """Free the records (and result blobs) of the finished children of task
    `ref` that it never read: its frame died.  Before a reap, and before a
    retry (the task runs again with new children under the same ref; the old
    records would leak: crash-model.md, "retry")."""
    for i in range(tasks.capacity):
        child = tasks.record_at(i)
        if tasks.parent(child) != ref:
            continue
        cref, status = tasks.ref_at(i)
        if status in (S_DONE, S_FAILED):
            if tasks.flags(child) & F_RESULT_BLOB:
                marshal.free_blob(arena, *tasks.blob(child))
            tasks.free(cref)


def reap(tasks, arena, ref: int, why: str) -> None:
    """Complete dead task `ref`, whose children have all finished, with its
    WorkerCrashedError (stored by `doom`; `why` if it was not): free the
    records of children it never read and route it to its parent or the main
    process.  Runs in the supervisor, or in the replacement worker when the
    last child finished after the recovery."""
    rec = tasks.record(ref)
    free_finished_children(tasks, arena, ref)
    doom(tasks, arena, ref, why)
    tasks.set_flags(rec, tasks.flags(rec) & ~F_DEAD)
    # Status (release: the outcome first) and routing in one call; current_off
    # is a scratch word nobody reads (the task is nobody's current any more).
    tasks.s.settle(ref, S_FAILED, H_SCRATCH)


def finish_spawn(tasks, arena, child: int, parent: int, spawned_before: int, not_pushed: bool, push) -> None:
    """The steps of a spawn (native/tasks.c queue_child) that a dead worker
    did not take, from its held words: `child`'s record was taken, then
    committed (QUEUED), counted on `parent` (whose spawned count was
    `spawned_before`), pushed on the worker's deque (`not_pushed`: the deque's
    bottom is still where it was).  A record never committed is freed with
    its blob; a committed one is counted if it was not (the parent's worker
    is dead: nobody else writes that count) and pushed, with `push`, if it
    was not, so it runs and counts itself finished on its doomed parent.  A
    stale mark (the record since given back: another generation) is left."""
    tasks.record(child)  # bounds-checked: the words came from the region
    status = tasks.status(child)
    if status == S_FREE:
        free_uncommitted(tasks, arena, child)
        return
    if status == -1:
        return
    prec = tasks.record(parent)
    if tasks.spawned(prec) == spawned_before:
        tasks.set_spawned(prec, spawned_before + 1)
    if not_pushed:
        push(child)


def free_uncommitted(tasks, arena, ref: int) -> bool:
    """Free the record a dead worker took for a child (`alloc_child`) and
    never committed: still FREE of the ref's generation.  Its blob, if the
    arguments were stored, goes with it (alloc_child cleared the fields, so
    a nonzero offset is this child's).  False, touching nothing, for a stale
    ref (committed, or given back: the state word changed)."""
    rec = tasks.record(ref)  # bounds-checked: the word came from the region
    if tasks.status(ref) != S_FREE:
        return False
    off, n = tasks.blob(rec)
    if off:
        tasks.set_blob(rec, 0, 0)
        marshal.free_blob(arena, off, n)
    tasks.free(ref)
    return True
