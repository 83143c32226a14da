"""The main process's side of tracing: a `Recorder` drains the workers' rings
(rings.py has the format and the lock-free read) and exports them (export.py)."""

from __future__ import annotations

import json
import os
import threading
import time

from .. import _core, config
from .._version import __version__
from ..errors import PennyError
from ..shm.layout import (
    H_TRACE,
    T_HEAD,
    T_RECORDS,
    TRACE_RECORD,
    W_PID,
)
from ..shm.registry import DYNAMIC_BASE, KIND_NAME, FunctionDirectory
from .export import to_chrome
from .rings import PUBLISH, RECORD, TASK_BEGIN, TASK_END

_now = time.monotonic_ns

# ---- the main process's side ------------------------------------------------------------
class Recorder:
    """Records the events of a scheduler's workers from `start` to `stop`.

    ``with sched.trace("run.json") as rec:`` starts it, and at the end stops
    it and writes the file; ``rec.chrome()`` is the trace as a dict,
    ``rec.save(path)`` writes it, ``rec.dropped`` counts records lost
    because a ring was overwritten before it was drained.
    """

    def __init__(self, sched, path: str | os.PathLike | None = None):
        self._sched = sched
        self.path = path
        self.dropped = 0
        self.start_ns = 0
        self.end_ns = 0
        self._chunks: list[list] = []
        self._tails: list[int] = []
        self._names: dict[int, str] = {}
        self._pids: dict[int, int] = {}
        self._active = False
        self._stop_evt = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ---- life ----
    def start(self) -> "Recorder":
        """Start recording: raise the workers' trace flag and drain on a thread."""
        self.begin()
        self.start_draining()
        return self

    def begin(self) -> None:
        """Note where each ring stands and raise the flag (no thread yet: a
        Scheduler(trace=True) does this before it forks its workers)."""
        sched = self._sched
        s, lay = sched._s, sched._layout
        if s is None:
            raise PennyError("penny: the scheduler is shut down; there is nothing to trace")
        if not lay.trace_events:
            raise PennyError("penny: this scheduler has no trace rings (it was created with trace_buffer=0); "
                             "create it with Scheduler(trace=True) or a trace_buffer of a power of two")
        if self._active:
            raise PennyError("penny: this recorder is already recording")
        self._chunks = [[] for _ in range(lay.workers)]
        # Acquire: nothing older than this is ours.
        self._tails = [s.load64(lay.trace(w) + T_HEAD, _core.ACQUIRE) for w in range(lay.workers)]
        self.start_ns = _now()
        # SeqCst: a worker that reads the flag after this sees the tails state above as past.
        s.fetch_add32(H_TRACE, 1, _core.SEQ_CST)
        self._active = True
        sched._recorders.add(self)

    def start_draining(self) -> None:
        self._stop_evt.clear()
        self._thread = threading.Thread(target=self._drain_loop, name="penny-trace", daemon=True)
        self._thread.start()

    def stop(self) -> "Recorder":
        """Stop recording (idempotent); the events stay available for export."""
        with self._lock:
            if not self._active:
                return self
            self._active = False
        sched = self._sched
        self._stop_evt.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        s = sched._s
        if s is not None:
            self._poll()
            s.fetch_add32(H_TRACE, 0xFFFF_FFFF, _core.SEQ_CST)
            self._resolve_names()
        self.end_ns = _now()
        sched._recorders.discard(self)
        return self

    def __enter__(self) -> "Recorder":
        if not self._active:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        if self.path is not None:
            self.save(self.path)

    # ---- draining ----
    def _drain_loop(self) -> None:
        while not self._stop_evt.wait(config.TRACE_POLL):
            try:
                self._poll()
            except Exception:  # noqa: BLE001 - the region went away under us: stop draining
                return

    def _poll(self) -> None:
        with self._lock:
            sched = self._sched
            s, lay = sched._s, sched._layout
            if s is None:
                return
            cap = lay.trace_events
            for w in range(lay.workers):
                ring = lay.trace(w)
                head = s.load64(ring + T_HEAD, _core.ACQUIRE)  # records below are complete
                tail = self._tails[w]
                if head <= tail:
                    continue
                first = max(tail, head - cap)
                data = self._copy(s, ring, first, head, cap)
                # Acquire fence, then the head again: which copied slots the owner
                # may have overwritten meanwhile (see the module docstring).
                _core.fence(_core.ACQUIRE)
                head2 = s.load64(ring + T_HEAD, _core.RELAXED)
                safe = head2 - cap + 1
                if safe > first:
                    skip = min(safe, head) - first
                    data = data[skip * TRACE_RECORD:]
                    first += skip
                self.dropped += first - tail
                if data:
                    self._chunks[w].append(data)
                self._tails[w] = head

    @staticmethod
    def _copy(s, ring: int, first: int, head: int, cap: int) -> bytes:
        base = ring + T_RECORDS
        lo, n = first % cap, head - first
        if lo + n <= cap:
            return s.read_bytes(base + lo * TRACE_RECORD, n * TRACE_RECORD)
        k = cap - lo
        return (s.read_bytes(base + lo * TRACE_RECORD, k * TRACE_RECORD)
                + s.read_bytes(base, (n - k) * TRACE_RECORD))

    def _resolve_names(self) -> None:
        """Function names and worker pids, read while the region is mapped."""
        sched = self._sched
        fids = set()
        for chunks in self._chunks:
            for data in chunks:
                for _, kind, a, _, _ in RECORD.iter_unpack(data):
                    if kind in (TASK_BEGIN, TASK_END, PUBLISH):
                        fids.add(a)
        for fid in fids - set(self._names):
            self._names[fid] = function_name(sched, fid)
        s, lay = sched._s, sched._layout
        for w in range(lay.workers):
            pid = s.load32(lay.slice(w) + W_PID, _core.ACQUIRE)
            if pid:
                self._pids[w] = pid

    # ---- export ----
    def records(self) -> list[list[tuple]]:
        """Per worker, the raw records (time ns, kind, a, b, c) in the order written."""
        return [[r for data in chunks for r in RECORD.iter_unpack(data)] for chunks in self._chunks]

    def chrome(self) -> dict:
        """The trace as a Chrome trace event dict (``json.dump`` it, or use `save`)."""
        if self._active:
            self._poll()
            self._resolve_names()
        sched = self._sched
        meta = {
            "penny_version": __version__,
            "workers": sched._layout.workers,
            "start_method": sched._method,
            "main_pid": os.getpid(),
            "clock": "CLOCK_MONOTONIC",
            "t0_ns": self.start_ns,
            "duration_ns": (self.end_ns or _now()) - self.start_ns,
            "dropped_events": self.dropped,
        }
        return to_chrome(self.records(), self._names, self._pids, self.start_ns, meta)

    def save(self, path) -> str:
        """Write the trace as Chrome trace JSON to `path`; returns the path."""
        path = os.fspath(path)
        trace = self.chrome()
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(trace, f, separators=(",", ":"))
        os.replace(tmp, path)
        return path


def stop_all(sched) -> None:
    """Stop every recorder of a scheduler that is shutting down (before its
    region is unmapped); a recorder with a path writes its file."""
    for rec in list(getattr(sched, "_recorders", ())):
        try:
            rec.stop()
            if rec.path is not None and rec is getattr(sched, "_own_recorder", None):
                rec.save(rec.path)
        except Exception:  # noqa: BLE001 - tracing must never break a shutdown
            import logging

            logging.getLogger("penny.trace").warning("penny: could not finish a trace", exc_info=True)


def function_name(sched, fid: int) -> str:
    """``module.qualname`` of a function id of `sched` (the main process's view)."""
    fn = sched._functions._by_id.get(fid)
    if fn is not None:
        return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
    if fid >= DYNAMIC_BASE and sched._s is not None:
        try:
            kind, payload = FunctionDirectory(sched._s, sched._layout).read(fid)
        except PennyError:
            return f"function {fid}"
        if kind == KIND_NAME:
            return payload.decode(errors="replace").replace(":", ".")
        return f"pickled function {fid}"
    return f"function {fid}"
