"""Starting, joining and watching the worker threads.

No process supervisor: a thread cannot be killed or replaced half way, and
there is nothing to recover (a task's exception is its outcome, on its Call).
What is left is what must not hang:

* a worker thread that raises out of Penny's own code (not a task's
  exception: the loop itself) logs the error with its traceback on
  "penny.threads", marks the scheduler broken and fails every pending future
  with `WorkerCrashedError` (its ``__cause__`` the error); submits then raise
  `SchedulerClosedError`;
* `stop` joins every worker thread; one still running a task past the
  timeout (an abort: Ctrl-C, interpreter exit) keeps the region mapped, and
  the last such thread unmaps it when it leaves.
"""

from __future__ import annotations

import logging
import threading
import time

from ...errors import BrokenExecutorError, WorkerCrashedError
from ...runtime.supervisor import Supervisor
from ...runtime.worker import run_initializer
from .worker import ThreadWorker

log = logging.getLogger("penny.threads")


class ThreadSupervisor:
    _thread = None  # Scheduler.shutdown asks for the supervisor's thread: there is none
    procs: list = []

    def __init__(self, sched, seed, options: dict, name_prefix: str):
        self.sched = sched
        self.seed = seed
        self.options = options
        self.prefix = name_prefix or "penny-worker"
        n = sched._layout.workers
        self.threads: list = [None] * n
        self.workers: list = [None] * n
        self._lock = threading.Lock()
        self._kept_region = None   # the region, while a straggler still runs in it
        self._stopping = False

    # ---- starting ----------------------------------------------------------------
    def start_workers(self) -> None:
        for w in range(len(self.threads)):
            # Not daemon threads: they are joined at shutdown, and at interpreter
            # exit (threading's own atexit, before non-daemon threads are joined:
            # scheduler.py) every scheduler still running is aborted first.
            t = threading.Thread(target=self._main, args=(w,), name=f"{self.prefix}-{w}")
            self.threads[w] = t
            t.start()

    def is_worker_thread(self, t=None) -> bool:
        t = t or threading.current_thread()
        return any(t is x for x in self.threads)

    def _main(self, wid: int) -> None:
        worker = None
        try:
            if self.options.get("initializer") is not None and not run_initializer(self.options):
                self._broken(BrokenExecutorError(
                    "A thread initializer failed, the thread pool is not usable anymore"))
                return
            seed = None if self.seed is None else self.seed + wid
            worker = ThreadWorker(self.sched, wid, seed)
            self.workers[wid] = worker
            worker.run()
        except BaseException as e:  # noqa: BLE001 - a fault of Penny's own code: fail loudly
            if self._stopping or self.sched._s is None:
                log.debug("penny: worker thread %d stopped during shutdown: %r", wid, e)
            else:
                log.critical("penny: worker thread %d failed inside Penny's runtime; the scheduler is broken",
                             wid, exc_info=e)
                err = WorkerCrashedError(
                    f"penny: worker thread {wid} failed inside Penny's runtime ({type(e).__name__}: {e}); "
                    "the scheduler is broken: create a new one")
                err.__cause__ = e
                self._broken(err)
        finally:
            if worker is not None:
                worker.fork.uninstall()
            self._leave()

    def _broken(self, err: BaseException) -> None:
        sched = self.sched
        if sched._broken is None:
            sched._broken = err
        self._fail_everything(sched._broken)

    # Only reads the scheduler's futures and backlog: the same for processes and threads.
    _fail_everything = Supervisor._fail_everything

    # ---- stopping ------------------------------------------------------------------
    def begin_stop(self) -> None:
        """From now on a worker thread's end is the shutdown's (as the process
        supervisor's begin_stop)."""
        self._stopping = True

    def stop(self, timeout: float) -> None:
        """Join every worker thread (the shutdown flag is up and they were woken)."""
        self._stopping = True
        me = threading.current_thread()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            if t is not None and t is not me and t.ident is not None:
                t.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = [t.name for t in self.threads if t is not None and t is not me and t.is_alive()]
            if left or self.is_worker_thread(me):
                # Still running a task (or we are one of them: shutdown from a
                # task): the region stays mapped until the last of them leaves.
                self._kept_region, self.sched._region = self.sched._region, None
        if left:
            log.warning("penny: worker thread(s) %s still running a task at shutdown; they finish it and exit",
                        ", ".join(left))

    def _leave(self) -> None:
        me = threading.current_thread()
        with self._lock:
            if self._kept_region is None:
                return
            if any(t is not None and t is not me and t.is_alive() for t in self.threads):
                return
            region, self._kept_region = self._kept_region, None
        region.close()
