"""Seeing what the scheduler does: trace rings, Chrome trace export, timeline plot.

Recording (docs/observability.md has the user's view):

* Each worker owns a ring of fixed-size records in the shared region
  (layout.py: ``Layout.trace``; TRACE_RECORD = 32 bytes: CLOCK_MONOTONIC ns
  u64, kind u32, a u32, b u64, c u64).  Only its owner writes it, with plain
  stores, then publishes the count of records written (the ring's head) with
  a release store.  Records are never waited for: a full ring overwrites its
  oldest records.
* Workers write only while the header word H_TRACE (active recorders) is
  non-zero.  They read that word when they flush their counters (every
  STATS_FLUSH_EVERY tasks) and when they come back from idling, and keep it
  in a local bool: the per-task cost of tracing being off is one test of a
  local variable.  So tracing starts within one flush interval on a busy
  worker, and before the first task on an idle one.
* What is recorded is what the Python worker loop sees: a task's start and end
  (around ``run_task``, for tasks taken from a deque or the global queue and
  for published children run inline by a ``sync``), steals, batches taken
  from the global queue, entering and leaving idleness, parking and waking,
  publication of a spawned child (a spawn made visible to thieves) and the
  suspension and resumption of a task waiting in ``sync``.  Private children
  that the C fast paths run as plain calls (an unstolen ``spawn`` + ``sync``)
  leave no event: they are part of their parent's time, as in Cilk.
* A `Recorder` in the main process drains every ring every TRACE_POLL
  seconds on a thread, copying raw bytes (the seqlock-style read below);
  records are parsed only when the trace is exported.

Reading a ring while its owner writes it (a seqlock in all but name): the
head is loaded with acquire, records below it are complete.  While they are
copied the owner may lap the ring and overwrite some; after the copy an
acquire fence and a second load of the head tell which: a record of index i
is intact if i > head2 - capacity (the owner, having published head2, may be
writing the slot of index head2, which held index head2 - capacity).  The
writer issues a release fence before it writes a record, so a reader that
saw an overwritten slot also sees the head that announced it.  Overwritten
records are counted as dropped, never returned half-written.

Export: the Chrome trace event format (JSON with "traceEvents"), which
Perfetto (ui.perfetto.dev) and chrome://tracing open.  One process (the
scheduler), one thread per worker; tasks are "X" (complete) events named by
their function, nested when a sync runs a child inline, and cut in segments
around a suspension (the worker runs other tasks meanwhile); "idle" and
"parked" spans are "X" events in category "idle"; steals, spawns made
visible and batches from the global queue are "i" (instant) events.
Timestamps are microseconds from the start of the recording.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time

from . import _core, config
from .errors import PennyError
from .layout import FN_ENTRY, FN_LEN, FN_NAME, H_TRACE, T_HEAD, T_RECORDS, TRACE_RECORD, W_PID

# ---- event kinds (record field `kind`); a, b, c as noted ----
TASK_BEGIN = 1     # a: function id, b: task ref
TASK_END = 2       # a: function id, b: task ref
STEAL = 3          # a: victim worker, b: task ref
INJECTED = 4       # a: refs taken from the global queue in one batch
IDLE_BEGIN = 5     # the loop found no work: look again, spin, then park
IDLE_END = 6       # a: 1 if it found work, 0 if it is exiting
PARK = 7           # asleep on the futex
WAKE = 8           # a: 1 if notified by a publisher, 0 if the park timed out
PUBLISH = 9        # a: function id, b: child ref (a spawn given a record, stealable)
SUSPEND = 10       # b: ref of the task whose fiber parks in sync
RESUME = 11        # b: ref of the task resumed
START = 12         # a: pid (the worker started tracing)

KIND_NAMES = {
    TASK_BEGIN: "task_begin", TASK_END: "task_end", STEAL: "steal", INJECTED: "injected",
    IDLE_BEGIN: "idle_begin", IDLE_END: "idle_end", PARK: "park", WAKE: "wake",
    PUBLISH: "publish", SUSPEND: "suspend", RESUME: "resume", START: "start",
}

RECORD = struct.Struct("<QIIQQ")
assert RECORD.size == TRACE_RECORD

_now = time.monotonic_ns  # CLOCK_MONOTONIC: one clock for every process on the machine


# ---- the worker's side ---------------------------------------------------------------
class TraceWriter:
    """Appends records to one worker's ring (only that worker may use it)."""

    __slots__ = ("_write", "_store", "_fence", "_head_off", "_records", "_mask", "head")

    def __init__(self, shared: _core.Shared, layout, wid: int):
        ring = layout.trace(wid)
        self._write = shared.write_bytes
        self._store = shared.store64
        self._fence = _core.fence
        self._head_off = ring + T_HEAD
        self._records = ring + T_RECORDS
        self._mask = layout.trace_events - 1
        # A replacement worker (after a crash) continues after its predecessor's
        # records; relaxed: nobody else writes this word.
        self.head = shared.load64(self._head_off, _core.RELAXED)

    def emit(self, kind: int, a: int = 0, b: int = 0, c: int = 0) -> None:
        h = self.head
        # Release fence: our previous head store is visible before this record's
        # bytes start to overwrite a slot (what the reader's re-check relies on).
        self._fence(_core.RELEASE)
        self._write(self._records + (h & self._mask) * TRACE_RECORD, RECORD.pack(_now(), kind, a, b, c))
        self.head = h + 1
        # Release: pairs with the reader's acquire load of the head.
        self._store(self._head_off, h + 1, _core.RELEASE)


def tracing_requested(shared: _core.Shared) -> bool:
    """Whether some recorder is active (workers call this off the hot path)."""
    # Relaxed: a hint; a missed change is seen at the next flush or wake-up.
    return bool(shared.load32(H_TRACE, _core.RELAXED))


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
            "penny_version": _version(),
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
    from .registry import DYNAMIC_BASE

    slot = fid - DYNAMIC_BASE
    if 0 <= slot < sched._layout.function_slots and sched._s is not None:
        entry = sched._layout.functions + slot * FN_ENTRY
        n = sched._s.load32(entry + FN_LEN, _core.ACQUIRE)
        if n:
            return sched._s.read_bytes(entry + FN_NAME, n).decode(errors="replace").replace(":", ".")
    return f"function {fid}"


def _version() -> str:
    try:
        from . import __version__

        return __version__
    except ImportError:  # pragma: no cover - during a partial import
        return "?"


def to_chrome(per_worker: list, names: dict, pids: dict, t0_ns: int, meta: dict | None = None) -> dict:
    """Chrome trace events from per-worker records (see the module docstring)."""
    meta = meta or {}
    pid = meta.get("main_pid", os.getpid())
    first = min((recs[0][0] for recs in per_worker if recs), default=t0_ns)
    t0 = min(t0_ns, first) if t0_ns else first
    # Spans still open when the recording stopped (a parked worker) end with it.
    stop_ns = max([t0_ns + meta.get("duration_ns", 0)] + [recs[-1][0] for recs in per_worker if recs])
    out = [{"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
            "args": {"name": f"penny scheduler (main pid {pid})"}}]

    def us(ns):
        return (ns - t0) / 1000.0

    for w, recs in enumerate(per_worker):
        label = f"worker {w}" + (f" (pid {pids[w]})" if w in pids else "")
        out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": w, "args": {"name": label}})
        out.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": w, "args": {"sort_index": w}})
        stack: list = []            # open task segments: [name, fid, ref, start_us, resumed]
        saved: dict = {}            # suspended task ref -> its fiber's open tasks
        idle_at = park_at = None
        last = t0

        def close(entry, end, **extra):
            name, fid, ref, start, resumed = entry
            args = {"fn": name, "ref": f"{ref:#x}"}
            if resumed:
                args["resumed"] = True
            args.update(extra)
            out.append({"ph": "X", "cat": "task", "name": name, "pid": pid, "tid": w,
                        "ts": start, "dur": max(0.0, end - start), "args": args})

        for ts, kind, a, b, c in recs:
            t = us(ts)
            last = ts
            if kind == TASK_BEGIN:
                stack.append([names.get(a, f"function {a}"), a, b, t, False])
            elif kind == TASK_END:
                for i in range(len(stack) - 1, -1, -1):
                    if stack[i][2] == b:
                        while len(stack) > i + 1:  # unmatched inner segments (events lost)
                            close(stack.pop(), t, unfinished=True)
                        close(stack.pop(), t, **({"raised": True} if c else {}))
                        break
            elif kind == SUSPEND:
                for entry in stack:
                    close(entry, t, suspended=True)
                saved[b] = [e[:3] for e in stack]
                stack = []
            elif kind == RESUME:
                for name, fid, ref in saved.pop(b, ()):
                    stack.append([name, fid, ref, t, True])
            elif kind == IDLE_BEGIN:
                idle_at = t
            elif kind == IDLE_END:
                if idle_at is not None:
                    out.append({"ph": "X", "cat": "idle", "name": "idle", "pid": pid, "tid": w,
                                "ts": idle_at, "dur": max(0.0, t - idle_at)})
                idle_at = None
            elif kind == PARK:
                park_at = t
            elif kind == WAKE:
                if park_at is not None:
                    out.append({"ph": "X", "cat": "idle", "name": "parked", "pid": pid, "tid": w,
                                "ts": park_at, "dur": max(0.0, t - park_at),
                                "args": {"woken_by": "notify" if a else "timeout"}})
                park_at = None
            elif kind == STEAL:
                out.append({"ph": "i", "s": "t", "cat": "steal", "name": "steal", "pid": pid, "tid": w,
                            "ts": t, "args": {"victim": a, "ref": f"{b:#x}"}})
            elif kind == PUBLISH:
                out.append({"ph": "i", "s": "t", "cat": "spawn", "name": "spawn", "pid": pid, "tid": w,
                            "ts": t, "args": {"fn": names.get(a, f"function {a}"), "ref": f"{b:#x}"}})
            elif kind == INJECTED:
                out.append({"ph": "i", "s": "t", "cat": "queue", "name": "from global queue", "pid": pid,
                            "tid": w, "ts": t, "args": {"tasks": a}})
            elif kind == START:
                out.append({"ph": "i", "s": "t", "cat": "worker", "name": "worker traced", "pid": pid,
                            "tid": w, "ts": t, "args": {"pid": a}})
        end = us(max(last, stop_ns))
        for entry in stack:  # still running when the recording stopped
            close(entry, end, unfinished=True)
        # (tasks still suspended at the end: their segments before the suspension are out already)
        if park_at is not None:
            out.append({"ph": "X", "cat": "idle", "name": "parked", "pid": pid, "tid": w,
                        "ts": park_at, "dur": max(0.0, end - park_at), "args": {"woken_by": None}})
        if idle_at is not None:
            out.append({"ph": "X", "cat": "idle", "name": "idle", "pid": pid, "tid": w,
                        "ts": idle_at, "dur": max(0.0, end - idle_at)})
    return {"traceEvents": out, "displayTimeUnit": "ms", "otherData": dict(meta)}


# ---- reading a trace file back -------------------------------------------------------------
def load(path) -> dict:
    with open(path) as f:
        trace = json.load(f)
    if isinstance(trace, list):  # the bare-array form of the format
        trace = {"traceEvents": trace}
    if not isinstance(trace, dict) or "traceEvents" not in trace:
        raise ValueError(f"{path}: not a Chrome trace (no 'traceEvents')")
    return trace


def summarize(trace: dict) -> dict:
    """Per worker (tid): tasks, busy/idle/parked milliseconds, steals, spawns; and per function."""
    workers: dict = {}
    funcs: dict = {}
    names = {}
    for ev in trace["traceEvents"]:
        ph, tid = ev.get("ph"), ev.get("tid", 0)
        if ph == "M":
            if ev.get("name") == "thread_name":
                names[tid] = ev["args"]["name"]
            continue
        row = workers.setdefault(tid, {"tasks": 0, "busy_ms": 0.0, "idle_ms": 0.0, "parked_ms": 0.0,
                                       "steals": 0, "spawns": 0, "first_us": None, "last_us": None})
        ts = ev.get("ts", 0.0)
        end = ts + ev.get("dur", 0.0)
        row["first_us"] = ts if row["first_us"] is None else min(row["first_us"], ts)
        row["last_us"] = end if row["last_us"] is None else max(row["last_us"], end)
        cat = ev.get("cat")
        if ph == "X" and cat == "task":
            if not ev.get("args", {}).get("resumed"):
                row["tasks"] += 1
            f = funcs.setdefault(ev["name"], {"segments": 0, "ms": 0.0})
            f["segments"] += 1
            f["ms"] += ev.get("dur", 0.0) / 1000
        elif ph == "X" and cat == "idle":
            row["parked_ms" if ev["name"] == "parked" else "idle_ms"] += ev.get("dur", 0.0) / 1000
        elif ph == "i" and cat == "steal":
            row["steals"] += 1
        elif ph == "i" and cat == "spawn":
            row["spawns"] += 1
    # busy = time in outermost task segments (nested inline children are inside them)
    for tid, row in workers.items():
        row["busy_ms"] = _outer_ms([ev for ev in trace["traceEvents"]
                                    if ev.get("ph") == "X" and ev.get("cat") == "task" and ev.get("tid", 0) == tid])
        row["name"] = names.get(tid, f"thread {tid}")
    return {"workers": dict(sorted(workers.items())), "functions": funcs,
            "meta": trace.get("otherData", {})}


def _outer_ms(events: list) -> float:
    total, end = 0.0, float("-inf")
    for ev in sorted(events, key=lambda e: e["ts"]):
        s, e = ev["ts"], ev["ts"] + ev.get("dur", 0.0)
        if s >= end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total / 1000


# ---- the timeline picture -------------------------------------------------------------------
def plot_timeline(trace, png_path, title: str | None = None, max_legend: int = 10) -> str:
    """Draw a per-worker timeline of `trace` (a dict or a path to a Chrome trace
    JSON) into `png_path` with matplotlib (Agg canvas: no display needed).
    Tasks are bars coloured by function, idle time light grey, parked time
    hatched grey, steals red triangles, spawns made visible small ticks."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
        from matplotlib.lines import Line2D
    except ImportError as e:
        raise PennyError("penny: drawing a timeline needs matplotlib (pip install 'penny[plot]' "
                         "or pip install matplotlib)") from e
    if not isinstance(trace, dict):
        trace = load(trace)
    events = trace["traceEvents"]
    labels = {ev["tid"]: ev["args"]["name"] for ev in events
              if ev.get("ph") == "M" and ev.get("name") == "thread_name"}
    tids = sorted({ev.get("tid", 0) for ev in events if ev.get("ph") in ("X", "i")} | set(labels))
    row_of = {tid: i for i, tid in enumerate(tids)}
    tasks = [ev for ev in events if ev.get("ph") == "X" and ev.get("cat") == "task"]
    by_fn: dict = {}
    for ev in tasks:
        by_fn[ev["name"]] = by_fn.get(ev["name"], 0.0) + ev.get("dur", 0.0)
    ranked = sorted(by_fn, key=by_fn.get, reverse=True)
    import matplotlib

    cmap = matplotlib.colormaps.get_cmap("tab10") if hasattr(matplotlib, "colormaps") else matplotlib.cm.get_cmap("tab10")
    colour = {name: cmap(i % 10) for i, name in enumerate(ranked[:max_legend])}
    other = (0.45, 0.45, 0.45, 1.0)

    height = max(2.5, 0.9 * len(tids) + 1.6)
    fig = Figure(figsize=(12, height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ms = 1 / 1000.0
    bars: dict = {}
    for ev in events:
        if ev.get("ph") != "X":
            continue
        y = row_of.get(ev.get("tid", 0))
        if y is None:
            continue
        span = (ev["ts"] * ms, max(ev.get("dur", 0.0) * ms, 1e-6))
        if ev.get("cat") == "task":
            key = ("task", colour.get(ev["name"], other))
        elif ev.get("name") == "parked":
            key = ("parked", None)
        else:
            key = ("idle", None)
        bars.setdefault((y, key), []).append(span)
    for (y, (kind, col)), spans in bars.items():
        if kind == "task":
            ax.broken_barh(spans, (y - 0.35, 0.7), facecolors=col, linewidth=0, zorder=3)
        elif kind == "idle":
            ax.broken_barh(spans, (y - 0.15, 0.3), facecolors=(0.85, 0.85, 0.85, 1.0), zorder=1)
        else:  # parked spans lie inside idle ones: drawn over them
            ax.broken_barh(spans, (y - 0.15, 0.3), facecolors=(0.7, 0.7, 0.7, 1.0), hatch="///",
                           edgecolors=(0.5, 0.5, 0.5, 1.0), linewidth=0.0, zorder=2)
    steals = [(ev["ts"] * ms, row_of[ev.get("tid", 0)] + 0.42) for ev in events
              if ev.get("ph") == "i" and ev.get("cat") == "steal" and ev.get("tid", 0) in row_of]
    if steals:
        xs, ys = zip(*steals)
        ax.scatter(xs, ys, marker="v", s=18, c="red", zorder=3, linewidths=0)
    spawns = [(ev["ts"] * ms, row_of[ev.get("tid", 0)] - 0.42) for ev in events
              if ev.get("ph") == "i" and ev.get("cat") == "spawn" and ev.get("tid", 0) in row_of]
    if spawns:
        xs, ys = zip(*spawns)
        ax.scatter(xs, ys, marker="|", s=14, c="black", zorder=3, linewidths=0.6)
    ax.set_yticks(range(len(tids)))
    ax.set_yticklabels([labels.get(t, f"thread {t}") for t in tids])
    ax.set_ylim(len(tids) - 0.4, -0.6)
    ax.set_xlabel("time (ms)")
    meta = trace.get("otherData", {})
    ax.set_title(title or f"Penny timeline: {len(tasks):,} task segments on {len(tids)} workers"
                 + (f" ({meta['dropped_events']} events dropped)" if meta.get("dropped_events") else ""))
    handles = [Patch(facecolor=colour[n], label=_short(n)) for n in ranked[:max_legend]]
    if len(ranked) > max_legend:
        handles.append(Patch(facecolor=other, label="other functions"))
    handles.append(Patch(facecolor=(0.85, 0.85, 0.85, 1.0), label="idle (looking for work)"))
    handles.append(Patch(facecolor=(0.7, 0.7, 0.7, 1.0), hatch="///", label="parked (asleep)"))
    if steals:
        handles.append(Line2D([], [], marker="v", color="red", linestyle="", label="steal"))
    if spawns:
        handles.append(Line2D([], [], marker="|", color="black", linestyle="", label="spawn published"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    png_path = os.fspath(png_path)
    fig.savefig(png_path)
    return png_path


def _short(name: str, n: int = 40) -> str:
    return name if len(name) <= n else "..." + name[-(n - 3):]
