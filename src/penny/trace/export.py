"""Trace export: Chrome trace JSON, a summary, and a timeline plot.

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

from ..errors import PennyError
from .rings import (
    IDLE_BEGIN,
    IDLE_END,
    INJECTED,
    PARK,
    PUBLISH,
    RESUME,
    START,
    STEAL,
    SUSPEND,
    TASK_BEGIN,
    TASK_END,
    WAKE,
)


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
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
    except ImportError as e:
        raise PennyError("penny: drawing a timeline needs matplotlib (pip install 'penny-runtime[plot]' "
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
