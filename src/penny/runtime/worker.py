"""A worker process and its loop.

    loop:
      1. pop the bottom of my own deque            (no CAS unless one item is left)
      2. steal the top of a random victim's deque   (CAS on top; RETRY -> next victim)
      3. take a batch from the global queue, keep one, push the rest on my deque
      4. spin briefly (yielding the CPU), then park on my state word (parking.py)

The hot path (1, then running the task) is inline in `Worker.run`; stealing,
parking and errors are methods out of its way.  A task's outcome is written
into its record, and its ref goes to the completion queue, where the main
process's collector picks it up.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import signal
import sys
import time

from greenlet import getcurrent, greenlet

from .. import _context, _core, _killpoints, config
from .._proc import process_alive
from ..shm.arena import Arena
from ..shm.layout import (
    F_ARGS_BLOB,
    F_ARGS_CONSUMED,
    F_RESULT_BLOB,
    H_COLLECTOR,
    H_COLLECTOR_SLEEPERS,
    H_IDLE,
    H_INTERRUPTS,
    H_SHUTDOWN,
    H_SLEEPERS,
    S_CANCELLED,
    S_DONE,
    S_FAILED,
    STAT_NAMES,
    W_BATCH,
    W_CURRENT,
    W_HELD,
    W_PUSH,
    W_ID,
    W_PID,
)
from ..shm.parking import Notifier, Parker
from ..shm.region import RegionHandle
from ..shm.tasks import TaskTable
from ..trace.rings import (
    IDLE_BEGIN,
    IDLE_END,
    INJECTED,
    PARK,
    START,
    STEAL,
    TASK_BEGIN,
    TASK_END,
    WAKE,
    TraceWriter,
    tracing_requested,
)
from ..wire import marshal
from ..wire.functions import FunctionTable
from ..wire.functions import call as _call_by_value
from . import interrupt as _interrupt
from .forkjoin import NEW_FIBER, ForkJoin, _pfor, _pfor_counted

_EMPTY = _core.EMPTY
#: Attribute of a map chunk's exception carrying the results before it (frontend/base.py PARTIAL).
PARTIAL = "_penny_map_partial"
_RETRY = _core.RETRY
_RELAXED = _core.RELAXED

# Workers log to "penny.worker" only and add no handler: under fork they use
# the parent's logging setup, under spawn/forkserver none (records are dropped
# unless the application configures logging in the worker, e.g. at import).
log = logging.getLogger("penny.worker")

#: The Worker running in this process (None in the main process).
current = None


#: Exit status of a worker whose `initializer` raised (Executor): the supervisor
#: marks the scheduler broken (BrokenExecutorError) instead of replacing it.
EXIT_INIT_FAILED = 81
#: Exit status of a worker that ran its `max_tasks` tasks and left (Executor
#: max_tasks_per_child): the supervisor replaces it without counting a crash.
EXIT_RETIRED = 82


def main(handle: RegionHandle, wid: int, static_functions: dict, start_method: str, seed: int | None = None,
         options: dict | None = None, *, pdeathsig: bool = False) -> None:
    """Entry point of a worker process.

    `options` (Executor): ``initializer`` and ``initargs`` run before the first
    task, ``max_tasks`` ends the worker after that many tasks.  `pdeathsig`:
    arm ``PR_SET_PDEATHSIG(SIGKILL)``, for a worker whose parent is the main
    process (fork, spawn) started from a thread that lives as long as the
    main process or the scheduler.  Workers of Penny's launcher are killed by
    the launcher when the main process dies (launcher.py).
    """
    global current
    # Ctrl-C goes to the whole foreground process group: the main process
    # handles it and shuts us down; a worker that died of it would lose work.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the main process's handler (fork)
    _killpoints.arm("worker", wid)  # PENNY_KILL_AT (docs/crash-model.md); nothing when unset
    armed = pdeathsig and set_pdeathsig(signal.SIGKILL)  # first: the window before it is the start-up's
    region = handle.attach()
    _context.forget_in_worker()  # after attach: under fork our descriptor is the parent's copy
    main_pid = region.main_pid
    if armed and os.getppid() != main_pid:
        os._exit(3)  # the main process died before the signal was armed
    watch_parent(main_pid)
    global _worker_pid
    _worker_pid = os.getpid()
    options = options or {}
    retired = False
    try:
        if options.get("initializer") is not None and not run_initializer(options):
            sys.exit(EXIT_INIT_FAILED)  # before attaching: the supervisor sees a start failure
        current = Worker(region, wid, static_functions, start_method, seed)
        current.max_tasks = current.tasks_left = options.get("max_tasks")
        log.debug("penny worker %d started (pid %d, %s)", wid, os.getpid(), start_method)
        current.run()
        log.debug("penny worker %d exiting (pid %d)", wid, os.getpid())
        retired = current.retired
        if current.fork.suspended:
            # Stopped with continuations parked (shutdown that did not wait):
            # their frames must not be unwound into a closed region.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    finally:
        # No interrupt may reach a worker on its way out (the handler goes with
        # the interpreter, and the signal's default action is to terminate).
        _interrupt.Interrupts.block_here()
        current = None
        region.close()
    if retired:
        sys.exit(EXIT_RETIRED)


def run_initializer(options: dict) -> bool:
    """Run the Executor's initializer; False (logged as the standard library
    logs it, on "concurrent.futures") if it raised."""
    try:
        options["initializer"](*options.get("initargs", ()))
        return True
    except BaseException:  # noqa: BLE001 - reported, and the worker exits
        logging.getLogger("concurrent.futures").critical("Exception in initializer:", exc_info=True)
        return False


#: The pid of this worker process (0 until main runs).
_worker_pid = 0
#: True in the child of an os.fork() that a task made.
_forked = False


def _after_fork_in_child() -> None:
    """A task called os.fork(): the child is not a worker.  It must never run
    the loop on our slot nor touch the region: `leave_forked_child` ends it
    when the task returns in it; penny.spawn there raises (no fork-join)."""
    global _forked
    if _worker_pid:
        _forked = True
        _context.fork = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def leave_forked_child(failed: bool) -> None:
    """In the child of an os.fork() made by a task, once the task returned
    (or raised) there: exit at once, 0 or 1, without touching anything shared."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(1 if failed else 0)


def set_pdeathsig(sig: int) -> bool:
    """prctl(PR_SET_PDEATHSIG, sig) for this process; False where unavailable."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, int(sig), 0, 0, 0) == 0  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return False


class Worker:
    #: The fork-join machinery each worker makes (backends/threads: its own subclass).
    fork_class = ForkJoin
    #: Whether Scheduler.interrupt reaches this worker's tasks (its signal
    #: handler needs the process's main thread: not on the threads backend).
    interruptible = True
    #: Whether this worker is a process of its own, which can die alone and
    #: whose half-done ring steps a supervisor then finishes (not a thread).
    own_process = True

    def __init__(self, region, wid: int, static_functions: dict, start_method: str, seed: int | None):
        s = region.shared
        lay = region.layout
        self.region = region
        self.s = s
        self.lay = lay
        self.wid = wid
        self.slice = lay.slice(wid)
        self.own = lay.deque(wid)
        self.victims = [lay.deque(v) for v in range(lay.workers) if v != wid]
        self.tasks = TaskTable(s, lay)
        self.arena = Arena(s, lay, region.fd, region.map)
        self.functions = FunctionTable(s, lay, static_functions, start_method, self.arena)
        self.parker = Parker(s, lay.state(wid), H_SLEEPERS)
        self.wake_worker = Notifier(s, H_SLEEPERS, lay.state(0), lay.slice_size, lay.workers)
        self.wake_main = Notifier(s, H_COLLECTOR_SLEEPERS, H_COLLECTOR, 4, 1)
        self.main_pid = region.main_pid
        self.rng = random.Random(seed)
        self.stats_base = lay.stats(wid)
        # Counters continue from what the slice holds (a replacement worker
        # after a crash goes on from its predecessor's last flush), so they
        # only grow and Scheduler.stats(reset=True) can subtract a baseline.
        self.counts = {name: s.load64(self.stats_base + 8 * i, _core.RELAXED)
                       for i, name in enumerate(STAT_NAMES)}
        self.spawns_base = self.counts["spawns"]  # fork.spawns (counted in C) starts at 0
        # Tracing: the ring writer exists when the layout has rings; `tracing`
        # follows the header flag, re-read off the hot path (trace.py).
        self.trace = TraceWriter(s, lay, wid) if lay.trace_events else None
        self.tracing = False
        self.idle_since = 0
        self.current = self.slice + W_CURRENT   # offset of our "current task" word
        self.batch = self.slice + W_BATCH       # take_batch's area (refs popped, not yet handed on)
        self.held = self.slice + W_HELD         # the held words of a spawn in progress (crash-model.md, "spawn")
        if self.own_process:
            # Our id in the rings' claims, and where each push's value is
            # noted first: what the supervisor needs to finish a ring step
            # we die in (crash-model.md, "Rings").  Before our first ring step.
            s.set_taker(wid, self.slice + W_PUSH)
        self.inbox = lay.inbox(wid)
        self.by_id = self.functions._by_id
        self.fork = self.fork_class(self)
        # Scheduler.interrupt: the handler is installed before our pid is
        # published below, and the main process signals only published pids.
        self.interrupts = _interrupt.Interrupts(
            self,
            boundaries={Worker.run_task.__code__: _interrupt.call_lines(Worker.run_task, "*"),
                        ForkJoin.end_task.__code__: _interrupt.call_lines(ForkJoin.end_task, "run_handle")},
            transparent={ForkJoin.sync.__code__: _interrupt.call_lines(ForkJoin.sync, "run_handle"),
                         **_interrupt.transparent_frames()},
            task_functions=(run_chunk, run_chunk1, _pfor, _pfor_counted, _call_by_value),
        )
        if self.interruptible:
            self.interrupts.install()
        self.max_tasks = self.tasks_left = None   # Executor(max_tasks_per_child=): set by main
        self.retired = False
        s.store32(self.slice + W_ID, wid, _core.RELAXED)
        # Release: the supervisor reads the pid to know this worker attached.
        s.store32(self.slice + W_PID, os.getpid(), _core.RELEASE)
        self.refresh_tracing()

    # ---- the loop ---------------------------------------------------------
    def run(self) -> None:
        """Run the loop on fibers; returns when the worker should exit.

        This root greenlet makes every loop fiber, so each starts at a shallow
        Python recursion depth (a greenlet inherits its creator's depth): a
        suspending task asks for a new fiber by switching here with NEW_FIBER.
        """
        root = self.fork.root = getcurrent()
        while greenlet(self.loop, parent=root).switch() is NEW_FIBER:
            pass

    def loop(self) -> None:
        """The worker loop.  Several fibers may run it in turn (fibers.py)."""
        s = self.s
        pop, own, cur = s.deque_pop, self.own, self.current  # pop marks the ref as ours (supervisor.py)
        inbox, qpop = self.inbox, s.queue_pop
        fork = self.fork
        run_task = self.run_task
        flush_every = config.STATS_FLUSH_EVERY
        counts = self.counts
        perf = time.perf_counter_ns
        ran = 0
        tracing = self.tracing  # the only trace check per task; refreshed off the hot path
        limited = self.max_tasks is not None  # Executor(max_tasks_per_child=): retire after them
        while True:
            if fork.suspended:
                ref = qpop(inbox)
                if ref > 0:
                    fork.resume(ref)
                    tracing = self.tracing
                    continue
            ref = pop(own, cur)
            if ref == _EMPTY:
                ref = self.find_work()
                if ref == _EMPTY:
                    if not fork.suspended:
                        # Posts for continuations of the worker we replaced
                        # (supervisor.py): checked here, off the hot path.
                        orphan = qpop(inbox)
                        if orphan > 0:
                            fork.resume(orphan)
                            continue
                    counts["tasks"] += ran
                    ran = 0
                    if not self.idle():
                        return
                    tracing = self.tracing
                    continue
            t0 = perf()
            try:
                if tracing:
                    self.run_traced(ref)
                else:
                    run_task(ref)
            except BaseException:
                # Not the task's exception (run_task reports those): a fault
                # in the runtime itself.  Die: the supervisor finds the ref in
                # our current word and queues it again or fails it.
                raise
            counts["busy_ns"] += perf() - t0
            ran += 1
            if limited:
                self.tasks_left -= 1  # on self, not a local: every loop fiber counts
                if self.tasks_left <= 0 and not fork.suspended:  # no continuation of ours waits
                    counts["tasks"] += ran
                    self.retire()
                    return
            if ran >= flush_every:
                counts["tasks"] += ran
                ran = 0
                self.flush_stats()
                tracing = self.tracing
                # Relaxed: a hint; shutdown also wakes us explicitly.
                if s.load32(H_SHUTDOWN, _core.RELAXED):
                    return

    def retire(self) -> None:
        """Leave after `max_tasks` tasks: the refs on our deque go back to the
        global queue (each marked as ours while moved, so a death on the way
        loses none), the counters are published, and the loop ends."""
        s, own, cur, inj = self.s, self.own, self.current, self.lay.injector
        while True:
            ref = s.deque_pop(own, cur)
            if ref == _EMPTY:
                break
            if not s.queue_push(inj, ref):
                raise RuntimeError("penny: global queue full (broken invariant)")
            s.store64(cur, 0, _core.RELAXED)  # as run_task's end: the ref is no longer ours
        self.retired = True
        self.flush_stats()
        self.wake_worker.notify_one(self.wid + 1)

    def run_task(self, ref: int) -> None:
        """Claim, run and finish one task (from the loop, or inline from a sync)."""
        s = self.s
        item = s.claim(ref, self.current, self.wid)
        if item is None:
            self.not_claimed(ref)
            return
        fid, flags, args = item
        if _killpoints.ARMED:
            _killpoints.hit("run_task.after_claim")
        fork = self.fork
        outer = fork.task
        fork.task = ref
        try:
            if s.load32(H_INTERRUPTS, _RELAXED):  # Scheduler.interrupt: requests outstanding
                self.interrupts.check(ref)        # a due task fails here, unstarted
            fn = self.by_id.get(fid)
            if fn is None or args is None:
                fn, args, kwargs = self.resolve(ref, fid, flags, args)
                value = fn(*args, **kwargs)
            else:
                value = fn(*args)  # (interrupt.py finds this call and the one above by their *args)
            failed = False
        except BaseException as exc:  # noqa: BLE001 - every outcome goes back to the caller
            value, failed = exc, True
            del exc
        if _forked:
            leave_forked_child(failed)  # the task forked and returned in the child
        if _killpoints.ARMED:
            _killpoints.hit("run_task.after_run")
        if ref in fork.published or fork.live() or fork.pinned:
            err = fork.end_task(ref)  # implicit sync: children finish before their parent
            if err is not None and not failed:
                value, failed = err, True
        fork.task = outer
        if failed or not s.finish(ref, value, self.current):
            self.finish_slow(ref, flags, value, failed)
        value = None
        if outer:
            s.store64(self.current, outer, _core.RELAXED)  # the enclosing task runs on

    def run_traced(self, ref: int) -> None:
        """`run_task` between a begin and an end event (tracing on)."""
        # Relaxed: the ref came from an acquire pop/steal, so its record is initialised.
        fid = self.tasks.fn(self.tasks.record(ref))
        emit = self.trace.emit
        emit(TASK_BEGIN, fid, ref)
        try:
            self.run_task(ref)
        finally:
            emit(TASK_END, fid, ref)

    def resolve(self, ref: int, fid: int, flags: int, args):
        """Function and arguments of a task off the fast path (pickled, or new id)."""
        fn = self.functions.lookup(fid)
        if args is None:
            args, kwargs = marshal.decode_args(self.tasks, self.arena, self.tasks.record(ref), flags)
        else:
            kwargs = marshal._NO_KWARGS
        return fn, args, kwargs

    def not_claimed(self, ref: int) -> None:
        # Cancelled while queued: hand the record back to the main process.
        if self.tasks.status(ref) == S_CANCELLED:
            self.s.publish(ref, 0)

    def finish_slow(self, ref: int, flags: int, value, failed: bool) -> None:
        """Publish an outcome that needs the arena: a pickled result or an exception."""
        s, tasks, arena = self.s, self.tasks, self.arena
        rec = tasks.record(ref)
        # From here on the arguments are gone: a crash is no longer retried.
        flags |= F_ARGS_CONSUMED
        tasks.set_flags(rec, flags)
        if _killpoints.ARMED:
            _killpoints.hit("finish_slow.after_consumed")
        marshal.release_args(tasks, arena, rec, flags)
        if not failed:
            try:
                rflags = marshal.encode_result(tasks, arena, rec, value)
            except BaseException as exc:  # noqa: BLE001 - e.g. a result that cannot be pickled
                value, failed = exc, True
                del exc
        if failed:
            rflags = marshal.encode_exception(tasks, arena, rec, value)
        value = None
        # F_ARGS_BLOB goes with the result's flag: the blob word now holds the
        # result's blob (or 0), which a supervisor must not free as arguments
        # (crash-model.md, "finish_slow").
        tasks.set_flags(rec, (flags & ~(F_RESULT_BLOB | F_ARGS_BLOB)) | rflags)
        if _killpoints.ARMED:
            _killpoints.hit("finish_slow.after_result")
        # Status (release: the result first), current cleared, routed: one call.
        s.settle(ref, S_FAILED if failed else S_DONE, self.current)

    def spawn_slow(self, fid: int, args, kwargs, parent: int) -> int:
        """Publish a child whose arguments must be pickled; its ref, or 0 if no
        record is free or our deque is full.
        The arguments are encoded here; `Shared.enqueue_child` takes the steps
        it shares with `Shared.spawn` (count it on the parent, publish, push, wake)."""
        tasks = self.tasks
        # Taken and marked in our `held` word in one call: a death from here
        # until enqueue_child commits it leaves the record (and its blob) for
        # the supervisor to free (crash-model.md, "spawn_slow").
        ref = self.s.alloc_child(self.held)
        if not ref:
            return 0
        if _killpoints.ARMED:
            _killpoints.hit("spawn_slow.after_alloc")
        rec = tasks.record(ref)
        try:
            flags = marshal.encode_args(tasks, self.arena, rec, args, kwargs)
        except BaseException:
            tasks.free(ref)
            raise
        if _killpoints.ARMED:
            _killpoints.hit("spawn_slow.after_encode")
        try:
            got = self.s.enqueue_child(ref, fid, flags, parent, self.own, self.held)
        except BaseException:
            got = 0
            raise
        finally:
            if not got:  # raised, or our deque is full: the child stays private
                marshal.unencode_args(tasks, self.arena, rec, flags, owned=True)
                tasks.free(ref)
        return got

    # ---- finding work (cold path) -------------------------------------------
    def find_work(self) -> int:
        s = self.s
        victims = self.victims
        if victims:
            counts = self.counts
            n = len(victims)
            start = self.rng.randrange(n)
            for attempt in range(2):  # a second round only if some steal lost a race
                contended = False
                for i in range(n):
                    counts["steals_tried"] += 1
                    ref = s.deque_steal(victims[(start + i) % n], self.current)
                    if ref > 0:
                        counts["steals"] += 1
                        if self.tracing:
                            v = (start + i) % n
                            self.trace.emit(STEAL, v + (v >= self.wid), ref)
                        return ref
                    if ref == _RETRY:
                        contended = True
                if not contended:
                    break
        return self.take_injected()

    def take_injected(self) -> int:
        s = self.s
        inj = self.lay.injector
        backlog = s.queue_len(inj)
        if not backlog:
            return _EMPTY
        want = min(config.INJECTOR_BATCH, 1 + backlog // self.lay.workers)
        # One C call pops the batch, marks the first ref as ours and pushes the
        # rest on our deque (oldest at the bottom, so we run them in submission
        # order; others may steal them from the top); each popped ref is in
        # our batch area until then: none is lost if we die (crash-model.md).
        ref, n = s.take_batch(inj, want, self.own, self.current, self.batch)
        if not n:
            return _EMPTY
        if _killpoints.ARMED:
            _killpoints.hit("take_injected.after_take")
        self.counts["injected"] += n
        if self.tracing:
            self.trace.emit(INJECTED, n)
        if n > 1:
            self.wake_worker.notify_one(self.wid + 1)
        return ref

    def push(self, ref: int) -> None:
        """Push on our deque; spill to the global queue when it is full."""
        s = self.s
        if not s.deque_push(self.own, ref):
            self.counts["spilled"] += 1
            if not s.queue_push(self.lay.injector, ref):
                raise RuntimeError("penny: global queue full (broken invariant)")

    def has_work(self) -> bool:
        s = self.s
        if s.queue_len(self.lay.injector) or s.deque_len(self.own):
            return True
        if s.queue_len(self.inbox):  # a resume, or an orphan to reap
            return True
        return any(s.deque_len(v) for v in self.victims)

    # ---- idling (cold path) -------------------------------------------------
    def idle(self) -> bool:
        """Wait for work.  False when the worker should exit."""
        s = self.s
        # Relaxed RMWs: the idle count is only a hint for lazy publication
        # (fibers.py); waking is the parking protocol's job.
        s.fetch_add32(H_IDLE, 1, _core.RELAXED)
        self.idle_since = time.perf_counter_ns()
        if self.tracing:
            self.trace.emit(IDLE_BEGIN)
        found = False
        try:
            found = self._idle()
            return found
        finally:
            s.fetch_add32(H_IDLE, 0xFFFF_FFFF, _core.RELAXED)
            self.note_idle()
            if self.tracing:
                self.trace.emit(IDLE_END, int(found))
            self.refresh_tracing()  # a recorder may have started or stopped while we slept

    def _idle(self) -> bool:
        s = self.s
        self.flush_stats()
        for _ in range(config.SPIN_ROUNDS):
            if s.load32(H_SHUTDOWN, _core.ACQUIRE):
                return False
            if self.has_work():
                return True
            os.sched_yield()
        while True:
            # Acquire: pairs with the release store of the flag in shutdown.
            if s.load32(H_SHUTDOWN, _core.ACQUIRE):
                return False
            self.counts["parks"] += 1
            # Publish the counters before sleeping: a parked worker's stats are exact.
            self.note_idle()
            self.flush_stats()
            if self.tracing:
                self.trace.emit(PARK)
            notified = self.parker.park(self.has_work_or_shutdown, config.PARK_TIMEOUT)
            if self.tracing:
                self.trace.emit(WAKE, int(notified))
            if notified:
                self.counts["wakeups"] += 1
                return True
            if self.has_work():
                return True
            if not self.parent_alive():
                return False

    def note_idle(self) -> None:
        """Add the time idle since the last note to the idle_ns counter."""
        now = time.perf_counter_ns()
        self.counts["idle_ns"] += now - self.idle_since
        self.idle_since = now

    def has_work_or_shutdown(self) -> bool:
        return bool(self.s.load32(H_SHUTDOWN, _core.ACQUIRE)) or self.has_work()

    def parent_alive(self) -> bool:
        return process_alive(self.main_pid)

    def flush_stats(self) -> None:
        s, base = self.s, self.stats_base
        self.counts["spawns"] = self.spawns_base + self.fork.spawns
        for i, name in enumerate(STAT_NAMES):
            # Relaxed: this worker is the only writer; readers want a snapshot.
            s.store64(base + 8 * i, self.counts[name], _core.RELAXED)
        self.refresh_tracing()

    def refresh_tracing(self) -> None:
        """Follow the header's trace flag (at flushes and after idling, never per task)."""
        on = self.trace is not None and tracing_requested(self.s)
        if on and not self.tracing:
            self.trace.emit(START, os.getpid())
        self.tracing = on


def watch_parent(pid: int) -> None:
    """Exit this worker soon after the main process dies, even mid-task.

    The backup of the launcher's SIGKILL (or PR_SET_PDEATHSIG under fork and
    spawn): a daemon thread checks every 0.5 s whether the main process still
    runs (a zombie counts as dead).  It keeps no descriptor open, so a task
    that closes descriptors cannot break it, nor make a reused number look
    like the parent's death.
    """
    import threading

    def watch():
        _interrupt.Interrupts.block_here()  # Scheduler.interrupt's signal is for the main thread
        while process_alive(pid):
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=watch, name="penny-parent-watch", daemon=True).start()


def _mapped(target):
    """Scheduler.map's function: its id, or the function itself (wire/functions.py)."""
    return current.functions.lookup(target) if type(target) is int else target


def run_chunk(target, items: list) -> list:
    """Internal task behind Scheduler.map over several iterables: ``fn(*args)`` per tuple."""
    fn = _mapped(target)
    done: list = []
    try:
        done.extend(fn(*args) for args in items)
    except BaseException as e:
        keep_partial(e, done)
        raise
    return done


def run_chunk1(target, items: list) -> list:
    """Internal task behind Scheduler.map over one iterable: ``fn(item)`` per item."""
    done: list = []
    try:
        done.extend(map(_mapped(target), items))  # extend keeps what came before a raise
    except BaseException as e:
        keep_partial(e, done)
        raise
    return done


def keep_partial(exc: BaseException, done: list) -> None:
    """A map chunk failed at item len(done): the results before it ride on the
    exception (its __dict__ pickles with it) to the main process, which yields
    them before raising (frontend/base.py partial_results).  Only if they
    pickle: an exception that could no longer be sent would lose its type."""
    if not done:
        return
    try:
        pickle.dumps(done, protocol=5)
        exc.__dict__[PARTIAL] = done
    except Exception:  # noqa: BLE001 - unpicklable results, or an exception without __dict__
        pass
