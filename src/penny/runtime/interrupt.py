"""Interrupting a running task (`Scheduler.interrupt`): the request word and its delivery.

A request names one life of one task record: its `R_INTERRUPT` word holds

    bit 31 VALID | bit 30 DELIVERED | bits 24-29 request number | bits 0-23 generation (low 24 bits)

0 (or a word of another generation) means "no request".  The main process
writes a request, the workers deliver it and pass it on to children; every
write is a CAS, since both sides write.

The request (main process, `frontend/scheduler.py` `Scheduler.interrupt`):

1. ``H_INTERRUPTS += 1`` (requests outstanding: while it is 0 no worker
   looks at any word, so a claim pays one load for all this);
2. the task's word := VALID | next request number | generation (CAS);
3. the signal `SIGNAL` to every worker (the task's descendants may run on any);
4. when the task's future completes: the word is cleared if it still names
   this life, and ``H_INTERRUPTS -= 1``.

A task is *due* when its own word, or the word of an ancestor (the
`R_PARENT` chain), is a request not yet DELIVERED for that record's life.
It is interrupted in one of three places, each inside the task:

* the signal handler (`Interrupts.on_signal`), which runs in the worker's
  main thread at the next bytecode boundary (or when a blocking call of the
  standard library returns EINTR, which cuts `time.sleep`, reads and waits
  short).  It raises `TaskInterrupted` only when every frame from the
  innermost one down to the innermost `Worker.run_task` frame is task code:
  not Penny's own (the whole `penny` package except `workloads`, `joblib`
  and the internal task functions behind `map` and `parallel_for`).  So the
  exception never lands in the worker's loop, in another fiber, or half way
  through spawn, sync, claim or finish.  Found in Penny's code, the handler
  leaves it to a helper thread, which sends the signal again after
  `config.INTERRUPT_RETRY` (doubling) for as long as the running task stays
  due;
* the claim (`Worker.run_task`): a due task that has not started fails at
  once, without running (a published child queued when its parent was
  interrupted, a root task retried after a crash);
* the return of Penny's `sync` into the task (`ForkJoin.sync`, penny.sync()
  of all children): a task that was suspended, waiting for its children,
  when the signal came is interrupted when it resumes.

Delivering to task T (`Interrupts.deliver`), in this order:

1. T's pending children are interrupted too: each published child not yet
   finished gets a request of its own (so it stays due after T's request is
   delivered), each private one (not started: a plain call waiting in T's
   list) is settled as failed with `TaskInterrupted` without running;
2. T's word is marked DELIVERED, so the request is delivered once: a task
   that catches the exception and goes on is not interrupted again unless
   `interrupt` is called again (a new request number); children it spawns
   afterwards run normally;
3. `TaskInterrupted` is raised in T.

Step 1 comes before step 2 so that a worker walking a child's chain always
finds a request that is not delivered, either T's or the child's own.
"""

from __future__ import annotations

import _thread
import dis
import os
import signal
import sys
import threading
import time

from .. import _core, config
from ..errors import TaskInterrupted
from ..shm.layout import H_INTERRUPTS, S_QUEUED, S_RUNNING

#: The signal that carries a request to a worker.
SIGNAL = signal.SIGRTMIN + config.INTERRUPT_SIGNAL_OFFSET

VALID = 1 << 31
DELIVERED = 1 << 30
REQ_SHIFT = 24
REQ_MASK = 0x3F
GEN24 = 0xFF_FFFF

#: Longest ancestor chain walked (a bound for a corrupt region, far beyond real trees).
MAX_CHAIN = 1 << 16

_PRIVATE, _PUBLISHED = 0, 1


def gen24(ref: int) -> int:
    return (ref >> 32) & GEN24


def names_life(word: int, ref: int) -> bool:
    """Whether `word` is a request word of this life (generation) of `ref`'s record."""
    return bool(word & VALID) and (word & GEN24) == gen24(ref)


def pending(word: int, ref: int) -> bool:
    """Whether `word` is an undelivered request for this life of `ref`'s record."""
    return names_life(word, ref) and not word & DELIVERED


def request(tasks, ref: int) -> None:
    """Write a new request into `ref`'s word (main process): a pending one
    stays as it is, a delivered one gets the next request number."""
    rec = tasks.record(ref)
    while True:
        old = tasks.interrupt_word(rec)
        if names_life(old, ref):
            if not old & DELIVERED:
                return
            n = ((old >> REQ_SHIFT) & REQ_MASK) % REQ_MASK + 1
        else:
            n = 1
        if tasks.cas_interrupt(rec, old, VALID | (n << REQ_SHIFT) | gen24(ref)):
            return


def clear(tasks, ref: int) -> None:
    """Forget the request word of `ref`'s life, if the record still holds it
    (the record may already serve a new task, whose word is left alone)."""
    rec = tasks.record(ref)
    while True:
        old = tasks.interrupt_word(rec)
        if not names_life(old, ref) or tasks.cas_interrupt(rec, old, 0):
            return


ROOT_MESSAGE = "penny: the task was interrupted (Scheduler.interrupt)"
CHILD_MESSAGE = "penny: the task was interrupted with its parent (Scheduler.interrupt)"


def call_lines(fn, callee: str) -> set[int]:
    """Line numbers of `fn`'s calls of `callee`: a method or attribute of that
    name, or, for ``"*"``, a call with ``*args`` (run_task's ``fn(*args)``).
    What a frame's ``f_lineno`` is while that call runs."""
    out, line = set(), None
    for ins in dis.get_instructions(fn):
        pos = getattr(ins, "positions", None)
        if pos is not None and pos.lineno is not None:
            line = pos.lineno
        elif type(ins.starts_line) is int:  # Python 3.10
            line = ins.starts_line
        if callee == "*" and ins.opname == "CALL_FUNCTION_EX":
            out.add(line)
        elif callee != "*" and ins.opname in ("LOAD_METHOD", "LOAD_ATTR") and ins.argval == callee:
            out.add(line)
    if not out:
        raise RuntimeError(f"penny: no call of {callee!r} found in {fn.__qualname__} (interrupt.py)")
    return out


#: Transparent frames registered by the layers above (frontend/api.py's sync
#: fallback): {code: lines}, see `Interrupts`.
_TRANSPARENT: dict = {}


def register_transparent(fn, callee: str) -> None:
    """Mark `fn`'s calls of `callee` as transparent frames (an exception of the
    task code they run passes through unchanged)."""
    _TRANSPARENT[fn.__code__] = call_lines(fn, callee)


def transparent_frames() -> dict:
    return dict(_TRANSPARENT)


def _penny_dir() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _code_objects(fn) -> set:
    """The code object of `fn` and those nested in it (generator expressions)."""
    out, todo = set(), [fn.__code__]
    while todo:
        code = todo.pop()
        out.add(code)
        todo.extend(c for c in code.co_consts if hasattr(c, "co_code"))
    return out


class Interrupts:
    """One worker's side: the signal handler, the checks, the delivery."""

    def __init__(self, worker, boundaries: dict, transparent: dict, task_functions=()):
        """`boundaries`: {code: lines} of the Penny frames that call task code
        and catch what it raises (run_task's call of the function; end_task's
        run of a private child).  `transparent`: {code: lines} of Penny frames
        that only pass an exception of the task code they call on to their
        caller (sync running a private child).  `task_functions`: task code
        that lives in Penny's own files (map's chunks, parallel_for)."""
        self.w = worker
        self.tasks = worker.tasks
        self.load32 = worker.s.load32
        self.boundaries = boundaries
        self.transparent = transparent
        self.task_code = set()
        for fn in task_functions:
            self.task_code |= _code_objects(fn)
        root = _penny_dir()
        self.internal_prefix = root
        self.task_files = {root + "workloads.py", root + "joblib.py"}
        self.retry_pending = False
        self.in_handler = False
        self.delivered = 0       # deliveries made by this worker
        self._wake = _thread.allocate_lock()
        self._wake.acquire()
        self._main = threading.main_thread().ident
        self._helper = None

    # ---- installing ------------------------------------------------------------------------
    def install(self) -> None:
        """Install the handler (main thread) and start the retry helper."""
        signal.signal(SIGNAL, self.on_signal)
        self._helper = threading.Thread(target=self._retry_loop, name="penny-interrupt", daemon=True)
        self._helper.start()

    @staticmethod
    def block_here() -> None:
        """Keep `SIGNAL` off the calling thread, so the kernel hands it to the
        main thread (whose blocking call it then cuts short)."""
        signal.pthread_sigmask(signal.SIG_BLOCK, {SIGNAL})

    def _retry_loop(self) -> None:
        self.block_here()
        while True:
            self._wake.acquire()
            delay = config.INTERRUPT_RETRY
            while self.retry_pending:
                time.sleep(delay)
                if not self.retry_pending:
                    break
                try:
                    signal.pthread_kill(self._main, SIGNAL)
                except (OSError, ValueError):  # pragma: no cover - the main thread is gone
                    return
                delay = min(delay * 2, config.INTERRUPT_RETRY_MAX)

    def _ask_retry(self) -> None:
        self.retry_pending = True
        try:
            self._wake.release()
        except RuntimeError:  # already released: the helper is awake
            pass

    # ---- is a task due? --------------------------------------------------------------------
    def active(self) -> bool:
        """Any request outstanding in this scheduler (one relaxed load)."""
        return bool(self.load32(H_INTERRUPTS, _core.RELAXED))

    def due(self, ref: int) -> bool:
        """Whether `ref` or one of its ancestors has an undelivered request."""
        tasks = self.tasks
        r, n = ref, 0
        while r and n < MAX_CHAIN:
            rec = tasks.record(r)
            if pending(tasks.interrupt_word(rec), r):
                return True
            r = tasks.parent(rec)
            n += 1
        return False

    # ---- delivering --------------------------------------------------------------------------
    def deliver(self, ref: int) -> TaskInterrupted:
        """Interrupt task `ref` (the running task, at a point where the
        worker's fork-join state is consistent): pass the request on to its
        pending children, mark it delivered, and return the exception to raise."""
        fork = self.w.fork
        tasks = self.tasks
        for h in list(fork.published.get(ref, ())):
            if h.state == _PUBLISHED and h.ref:
                st = tasks.status(h.ref)
                if st == S_QUEUED or st == S_RUNNING:
                    request(tasks, h.ref)
        live = fork.swap_private([])
        keep = []
        for h in live:
            if h.parent == ref and h.state == _PRIVATE:
                fork.pinned.discard(h)
                h._publish(0)  # no record: "published" only so that it can be settled
                h._settle(TaskInterrupted(CHILD_MESSAGE), True)
                pub = fork.published.get(ref)
                if pub is None:
                    fork.published[ref] = {h}
                else:
                    pub.add(h)
            else:
                keep.append(h)
        fork.swap_private(keep)
        self._mark_delivered(ref)
        self.delivered += 1
        return TaskInterrupted(CHILD_MESSAGE if tasks.parent(tasks.record(ref)) else ROOT_MESSAGE)

    def _mark_delivered(self, ref: int) -> None:
        tasks = self.tasks
        rec = tasks.record(ref)
        while True:
            old = tasks.interrupt_word(rec)
            new = old | DELIVERED if names_life(old, ref) else VALID | DELIVERED | gen24(ref)
            if old == new or tasks.cas_interrupt(rec, old, new):
                return

    def check(self, ref: int) -> None:
        """At a point inside task `ref` where Penny's state is consistent (the
        claim, the return of a sync): raise `TaskInterrupted` if it is due."""
        if ref and self.load32(H_INTERRUPTS, _core.RELAXED) and self.due(ref):
            raise self.deliver(ref)

    # ---- the signal handler -------------------------------------------------------------------
    def in_task_code(self, frame) -> bool:
        """Whether an exception raised in `frame` (the main thread's innermost)
        would travel through task code only, into a Penny frame that catches
        it as the task's outcome: every frame from `frame` down to a boundary
        (run_task calling the task's function, end_task running a private
        child) is task code, or a transparent Penny frame at its call of task
        code, and there is at least one."""
        prefix, task_code, task_files = self.internal_prefix, self.task_code, self.task_files
        boundaries, transparent = self.boundaries, self.transparent
        f = frame
        while f is not None:
            code = f.f_code
            lines = boundaries.get(code)
            if lines is not None:
                return f is not frame and f.f_lineno in lines
            lines = transparent.get(code)
            if lines is not None:
                if f is frame or f.f_lineno not in lines:
                    return False
            else:
                name = code.co_filename
                if name.startswith(prefix) and code not in task_code and name not in task_files:
                    return False
            f = f.f_back
        return False

    def on_signal(self, signum, frame) -> None:
        """SIGNAL: interrupt the running task here if it is due and this is its code."""
        if self.in_handler:  # a signal during the handler itself: look again later
            self._ask_retry()
            return
        self.in_handler = True
        try:
            ref = self.w.fork.task
            if not ref or not self.load32(H_INTERRUPTS, _core.ACQUIRE) or not self.due(ref):
                self.retry_pending = False
                return
            if not self.in_task_code(frame):
                self._ask_retry()
                return
            self.retry_pending = False
            exc = self.deliver(ref)
        except Exception as e:  # noqa: BLE001 - the handler must never break the worker
            self.retry_pending = False
            print(f"penny: interrupt handler failed: {e!r}", file=sys.stderr)
            return
        finally:
            self.in_handler = False
        raise exc
