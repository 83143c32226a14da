"""Starting workers, watching them, and recovering when one dies.

A worker's deque and its current task live in shared memory, so its death
loses nothing that the supervisor cannot see:

1. the task it was running (its slice's `current` ref) is queued again if its
   arguments are intact and it has been started at most `retries` times, and
   otherwise completes as CRASHED, which its future raises as
   `WorkerCrashedError` naming the signal or exit code;
2. every ref left in its deque is stolen and pushed on the global queue;
3. a replacement worker starts on the same slice.

A worker that dies before it attached (bad main module under spawn, say)
three times in a row marks the scheduler broken: pending futures fail and
submissions raise, instead of restarting forever.

What a death leaves behind at every protocol step, and how `_recover`
repairs it (the order of its steps, the retry rule, dooming and reaping the
tasks whose frames died, the windows that remain), is docs/crash-model.md;
every step there has a named kill point (penny/_killpoints.py) exercised by
tests/test_kill_points.py.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from multiprocessing import context as mp_context
from multiprocessing.connection import wait as wait_sentinels


from .. import _core
from .._proc import oom_kills
from ..errors import BrokenExecutorError, CorruptRegionError, WorkerCrashedError
from ..shm.layout import (
    F_ARGS_CONSUMED,
    F_DEAD,
    H_SLEEPERS,
    HELD_BOTTOM,
    HELD_PARENT,
    HELD_REF,
    HELD_SPAWNED,
    JOIN_GIVEN,
    S_DONE,
    S_FAILED,
    S_QUEUED,
    BATCH_BOTTOM,
    BATCH_COUNT,
    BATCH_REFS,
    TAKE_BATCH_MAX,
    W_BATCH,
    W_CURRENT,
    W_HELD,
    W_PID,
    W_PUSH,
)
from ..shm.parking import AWAKE
from . import launcher, worker
from .recovery import dead_tasks, doom, finish_spawn, free_finished_children, reap

_MINUS_ONE = 0xFFFF_FFFF
log = logging.getLogger("penny.supervisor")
MAX_START_FAILURES = 3


def describe_exit(code, proc=None) -> str:
    if proc is not None and getattr(proc, "status_lost", False):
        return "exited (its exit status was lost with the worker launcher)"
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor:
    def __init__(self, scheduler, ctx, static_functions: dict, seed):
        self.sched = scheduler
        self.ctx = ctx
        self.static = static_functions
        self.seed = seed
        self.procs: list = [None] * scheduler._layout.workers
        self.start_failures = 0
        self.crashes = 0
        self._oom_kills = oom_kills()
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._watch, name="penny-supervisor", daemon=True)
        self._lock = threading.Lock()
        self._launcher = None  # launcher.Launcher of the default start method

    # ---- starting ---------------------------------------------------------------
    def start_workers(self) -> None:
        if self.sched._method == "forkserver" and launcher.supported():
            self._launcher = launcher.get()
            self._launcher.acquire()
        for w in range(len(self.procs)):
            self._start(w)
        self._thread.start()

    def _start(self, w: int) -> None:
        sched = self.sched
        seed = None if self.seed is None else self.seed * 1_000_003 + w
        options = getattr(sched, "_worker_options", None)  # Executor: initializer, max_tasks
        if self._launcher is not None:
            # Penny's own fork server (launcher.py): it never imports the
            # user's __main__, and its death is not the workers' death.
            # cloudpickle: an Executor's initializer may be a lambda.
            spawning = launcher.Spawning()
            mp_context.set_spawning_popen(spawning)  # a Queue in initargs: its fds travel too
            try:
                payload = launcher.dumps_for_worker((sched._layout, w, self.static, sched._method, seed, options))
            finally:
                mp_context.set_spawning_popen(None)
            p = self._launcher.start(payload, sched._region.fd, f"penny-worker-{w}", extra_fds=spawning.fds)
        else:
            if sched._method == "forkserver":  # no pidfds (Linux < 5.3): multiprocessing's
                self.ctx.set_forkserver_preload(["penny.runtime.worker"])
            # Arm PR_SET_PDEATHSIG only if the thread starting the worker
            # lives as long as it should: the kernel sends it when the
            # *thread* that made the child exits (the main thread, or ours).
            me = threading.current_thread()
            # (Not under multiprocessing's forkserver: it, not we, is the parent.)
            pdeath = sched._method != "forkserver" and (me is threading.main_thread() or me is self._thread)
            p = self.ctx.Process(
                target=worker.main,
                args=(sched._region.handle(), w, self.static, sched._method, seed, options),
                kwargs={"pdeathsig": pdeath},
                name=f"penny-worker-{w}",
                daemon=True,
            )
            p.start()
        self.procs[w] = p
        log.debug("penny: started worker %d (pid %s, %s)", w, p.pid, sched._method)

    # ---- watching -----------------------------------------------------------------
    def _watch(self) -> None:
        while True:
            with self._lock:
                by_sentinel = {p.sentinel: w for w, p in enumerate(self.procs) if p is not None}
            ready = wait_sentinels(list(by_sentinel) + [self._wake_r])
            if self._stopping:
                return
            for r in ready:
                if r == self._wake_r:
                    continue
                w = by_sentinel[r]
                with self._lock:
                    proc, self.procs[w] = self.procs[w], None  # watched no more
                proc.join(0.1)
                try:
                    self._recover(w, proc)
                except Exception as e:  # noqa: BLE001 - never let the supervisor die silently
                    self.sched._broken = WorkerCrashedError(f"penny: recovering worker {w} failed: {e!r}")
                    log.error("penny: the scheduler is broken: recovering worker %d failed: %r", w, e)
                    self._fail_everything(self.sched._broken)
                finally:
                    proc.close()
                if self.sched._broken is not None:
                    return

    def _repair_rings(self, w: int) -> list:
        """Finish the ring steps worker `w` died in (native/mpmc_ring.h: a
        slot claimed and not finished names its taker), before its id is
        reused; returns the refs it had claimed from the global queue and
        perhaps not yet recorded in its batch area (docs/crash-model.md,
        "Rings")."""
        s, lay = self.sched._s, self.sched._layout
        note = s.load64(lay.slice(w) + W_PUSH, _core.RELAXED)
        if not 0 < note < 1 << 63:
            note = 0  # untrusted: a word no push could have noted; a tombstone then
        # A push to the global queue: cancelled (a tombstone).  What a worker
        # pushes there is also in a place the steps below queue again from
        # (`current` when it retires, the held words when it spills a spawn).
        taken = s.queue_repair(lay.injector, w, 0)
        # A root's completion: published with the noted ref (a second
        # completion, if `current` is routed again below, is dropped by
        # collect: its generation is stale by then).
        s.queue_repair(lay.completions, w, note)
        # A parent's post to its owner's inbox: published with the noted
        # parent, since it exists nowhere else.  In its own inbox, the posts
        # it had claimed to pop are released (the inbox is drained below).
        for v in range(lay.workers):
            s.queue_repair(lay.inbox(v), w, note)
        return taken

    def _requeue_batch(self, w: int, current: int, claimed: list) -> None:
        """Queue again the refs a worker killed inside take_batch held only in
        its batch area or in a global-queue slot it had claimed (`claimed`,
        from _repair_rings; native/tasks.c explains the area).  Exactly the
        refs that are in no other place: never a second copy (two claimants
        of one record would both write it)."""
        s, lay, tasks = self.sched._s, self.sched._layout, self.sched._tasks
        area = lay.slice(w) + W_BATCH
        n = s.load64(area + BATCH_COUNT, _core.RELAXED)
        orphans = []
        if n:
            s.store64(area + BATCH_COUNT, 0, _core.RELAXED)
            pushed = (s.load64(lay.deque(w) + _core.DEQUE_BOTTOM, _core.RELAXED)
                      - s.load64(area + BATCH_BOTTOM, _core.RELAXED))
            if not 1 <= n <= TAKE_BATCH_MAX or not 0 <= pushed < n:
                raise CorruptRegionError(f"penny: worker {w}'s batch area is corrupt (count {n}, pushed {pushed})")
            refs = [s.load64(area + BATCH_REFS + 8 * i, _core.RELAXED) for i in range(n)]
            # refs[0] is in `current` once marked; refs[n - pushed:] are on the
            # deque (a slot is released only after its ref is recorded, so
            # every claimed ref in the area is among the last, not pushed).
            orphans = [ref for i, ref in enumerate(refs[:n - pushed]) if not (i == 0 and ref == current)]
            claimed = [ref for ref in claimed if ref not in refs]
        for ref in orphans + claimed:
            tasks.record(ref)  # bounds-checked: CorruptRegionError for a bad ref
            if tasks.status(ref) != -1:  # QUEUED, or cancelled while queued: as the queue had it
                s.queue_push(lay.injector, ref)

    def _recover(self, w: int, proc) -> None:
        sched = self.sched
        s, lay, tasks = sched._s, sched._layout, sched._tasks
        if s is None or self._stopping:
            return
        if proc.exitcode == worker.EXIT_INIT_FAILED and getattr(sched, "_worker_options", None):
            # Executor(initializer=) raised in the worker (logged there): broken, as
            # ProcessPoolExecutor; the worker never attached, so it held nothing.
            err = BrokenExecutorError(
                f"penny: the initializer raised in worker {w} (pid {proc.pid}; logged on the "
                "'concurrent.futures' logger); the executor is broken: create a new one")
            sched._broken = err
            self._fail_everything(err)
            return
        # Executor(max_tasks_per_child=): a planned exit, recovered as any (it
        # holds nothing: the steps below find nothing to do) but no crash.
        retired = proc.exitcode == worker.EXIT_RETIRED and getattr(sched, "_worker_options", None)
        how = describe_exit(proc.exitcode, proc)
        oom = oom_kills()
        if proc.exitcode == -signal.SIGKILL and oom > self._oom_kills:
            how += " (probably by the kernel's OOM killer: its kill count rose meanwhile; the task may need less memory)"
        self._oom_kills = oom
        if retired:
            log.debug("penny: worker %d (pid %s) retired after its max_tasks_per_child tasks", w, proc.pid)
        else:
            self.crashes += 1
            log.warning("penny: worker %d (pid %s) %s; recovering its tasks", w, proc.pid, how)
        sl = lay.slice(w)
        attached = s.load32(sl + W_PID, _core.ACQUIRE)
        # 0. the ring steps it died in, finished before anything is queued
        # again (and before its id is reused by the replacement, 3.).
        claimed = self._repair_rings(w)
        # 1. the tasks it held: the one it was running (retried if it can be)
        # and every other task whose frame lived in it (inline ancestors,
        # suspended continuations): they fail, once their children are done.
        cur = cur_was = s.load64(sl + W_CURRENT, _core.RELAXED)
        cur_status = tasks.status(cur) if cur else -1  # -1: recycled (another generation)
        if cur_status == S_QUEUED:
            # Taken (popped, stolen, batched: the take marks it) but not claimed:
            # no other process has it.  Queue it again; it did not start.
            s.queue_push(lay.injector, cur)
            cur = 0
        elif cur_status in (S_DONE, S_FAILED) and tasks.parent(tasks.record(cur)) == 0:
            # Settled (settle clears `current` only after routing) and perhaps
            # not routed: route it (again).  A second completion of one ref is
            # dropped by collect (its generation is stale by then), so this
            # never completes a future twice (docs/crash-model.md, "settle").
            s.publish(cur, 0)
            cur = 0
        # ... and the refs of a take_batch it died in: recorded in its batch
        # area as popped; the first is in `current` once marked (queued again
        # just above), the last `bottom - b0` were pushed on its deque, newest
        # first (stolen onto the queue below); the rest are nowhere else.
        self._requeue_batch(w, cur_was, claimed)
        # ... and a spawn it died in: the child's record taken and perhaps
        # committed, counted, pushed; the held words say which.
        held = sl + W_HELD
        child = s.load64(held + HELD_REF, _core.RELAXED)
        if child:
            s.store64(held + HELD_REF, 0, _core.RELAXED)
            finish_spawn(tasks, sched._arena, child, s.load64(held + HELD_PARENT, _core.RELAXED),
                         s.load64(held + HELD_SPAWNED, _core.RELAXED),
                         s.load64(held + HELD_BOTTOM, _core.RELAXED) == s.load64(lay.deque(w) + _core.DEQUE_BOTTOM, _core.RELAXED),
                         lambda ref: s.queue_push(lay.injector, ref))
        while s.queue_pop(lay.inbox(w)) > 0:
            pass  # continuations ready to resume: handled by the scan below
        for ref in dead_tasks(tasks, w):
            rec = tasks.record(ref)
            flags = tasks.flags(rec)
            given = tasks.join(rec) & JOIN_GIVEN  # its token is gone: suspended in sync, or doomed before
            left = tasks.outstanding(rec)  # its published children not yet finished
            if ref == cur and not given and not left:
                started = tasks.count_start(rec)
                intact = not flags & F_ARGS_CONSUMED
                if intact and started <= sched._retries:
                    # Every published child finished; free those it never
                    # read, or they leak when it runs again.
                    free_finished_children(tasks, sched._arena, ref)
                    tasks.set_status(ref, S_QUEUED)
                    s.queue_push(lay.injector, ref)
                    log.warning("penny: task %#x that worker %d was running is queued again (start %d of at most %d)",
                                ref, w, started + 1, sched._retries + 1)
                    continue
                why = (
                    f"penny: worker {w} (pid {proc.pid}) {how} while running this task"
                    f"{'' if intact else ' (after it had returned: a result is never computed twice)'}; "
                    f"it was started {started} time(s) (Scheduler(retries={sched._retries}))"
                )
            else:
                why = (f"penny: worker {w} (pid {proc.pid}) {how} while this task was "
                       f"{'suspended in sync' if given else 'running'} on it (its Python frame is lost)")
            if not flags & F_DEAD:  # else an earlier death of this slot doomed it already
                log.warning("penny: task %#x fails with WorkerCrashedError: %s", ref, why)
                doom(tasks, sched._arena, ref, why)
            if given:
                if not left:  # no child outstanding: nobody will post it
                    reap(tasks, sched._arena, ref, why)
            else:
                # Give up its token for it (one RMW that adds JOIN_GIVEN to
                # the word, so that a later death of this slot, while the task
                # still waits here for its children, leaves the token alone).
                before = tasks.give_token(rec)
                if (before & ~JOIN_GIVEN) >= tasks.spawned(rec):  # >=: see TaskTable.outstanding
                    reap(tasks, sched._arena, ref, why)
            # Else children are still running: the last one to finish posts this
            # task to worker w's inbox, and w's replacement reaps it (worker.py).
        s.store64(sl + W_CURRENT, 0, _core.RELAXED)
        # 2. its deque: steal everything onto the global queue
        dq = lay.deque(w)
        while True:
            r = s.deque_steal(dq)
            if r > 0:
                s.queue_push(lay.injector, r)
            elif r == _core.EMPTY:
                break
        # A death in the middle of pop can leave bottom below top; with no owner
        # alive, the supervisor may write bottom (thieves only CAS top).
        top = s.load64(dq + _core.DEQUE_TOP, _core.ACQUIRE)
        if s.load64(dq + _core.DEQUE_BOTTOM, _core.RELAXED) != top:
            s.store64(dq + _core.DEQUE_BOTTOM, top, _core.RELEASE)
        # A sleeper that died while counted would make publishers scan forever.
        if s.exchange32(lay.state(w), AWAKE, _core.ACQ_REL) != AWAKE:
            s.fetch_add32(H_SLEEPERS, _MINUS_ONE, _core.SEQ_CST)
        s.store32(sl + W_PID, 0, _core.RELEASE)
        sched._wake_workers.notify_one()
        # 3. a replacement
        if not attached:
            self.start_failures += 1
            if self.start_failures >= MAX_START_FAILURES:
                err = WorkerCrashedError(
                    f"penny: worker processes keep dying before they start (last: worker {w} {how}); "
                    "see the worker's output above (an import error in the main module is common)"
                )
                sched._broken = err
                log.error("%s", err)
                self._fail_everything(err)
                return
        else:
            self.start_failures = 0
        with self._lock:
            if not self._stopping:
                self._start(w)
                (log.debug if retired else log.warning)(
                    "penny: worker %d replaced (new pid %s); the scheduler goes on", w, self.procs[w].pid)

    def _fail_everything(self, err: BaseException) -> None:
        """The scheduler is broken: every pending future fails with `err`."""
        sched = self.sched
        with sched._backlog_lock:
            futs = [item[0] for item in sched._backlog]
            sched._backlog.clear()
        while sched._futures:
            try:
                futs.append(sched._futures.popitem()[1])
            except KeyError:
                break
        for fut in futs:
            if not fut.done():
                try:
                    fut.set_exception(err)
                except Exception:  # noqa: BLE001 - already resolved
                    pass

    # ---- stopping -----------------------------------------------------------------
    def begin_stop(self) -> None:
        """From now on a worker's exit is the shutdown's, not a crash: called
        before the workers are told to exit, so that one that exits at once is
        never "recovered" (nor replaced) while `stop` is still to come."""
        with self._lock:
            self._stopping = True

    def stop(self, timeout: float) -> None:
        """Join every worker (they were told to exit), terminating stragglers."""
        self.begin_stop()
        os.write(self._wake_w, b"x")
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        for p in self.procs:
            if p is None:
                continue
            p.join(timeout)
            if p.exitcode is None:
                p.terminate()
                p.join(1.0)
            if p.exitcode is None:
                p.kill()
                p.join()
            log.debug("penny: worker process %s %s", p.pid, describe_exit(p.exitcode, p))
            p.close()
        self.procs = [None] * len(self.procs)
        if self._launcher is not None:
            self._launcher.release()
            self._launcher = None
        os.close(self._wake_r)
        os.close(self._wake_w)
