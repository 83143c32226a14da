#!/usr/bin/env python
"""Penny's core benchmarks, each side by side with its Python peer in the same run.

    python benchmarks/core.py [--quick] [--json out.json] [--only a,c,...]
    python -m penny bench [--quick] [--json out.json]

a. empty-task throughput: ``submit`` one task at a time, 20,000 in flight,
   then gather every result (tasks/s); Penny(2) vs ProcessPoolExecutor(2).
b. the same through the static table: ``new_task(1, [a, b])`` with {1: add}.
c. ``map`` over 1,000,000 small items (square), every result gathered;
   Penny's default chunking vs ``multiprocessing.Pool(2).map`` at its best
   chunksize among a few.
d. wake latency: with the runtime idle ~50 ms (workers parked), a task that
   returns ``perf_counter_ns()`` taken as it starts; latency = start - the
   stamp taken just before ``submit`` (CLOCK_MONOTONIC is one clock for the
   whole machine); median and p90.
e. record round trip, single process: allocate a task record, pack two
   arguments inline, store the function id, push the ref on a Chase-Lev
   deque, pop it, read the function id, unpack the arguments, free the
   record; per operation, next to a plain Python call ``f(1, 2)``.
f. startup: ``Scheduler(2)`` construction alone and construction to the first
   result of a trivial task, for forkserver, spawn and fork; in a fresh
   interpreter (cold: includes starting the forkserver server) and repeated in
   one process (warm); vs ProcessPoolExecutor(2) with the same start method.

Every result is checked (a wrong or missing result aborts the benchmark), and
every scheduler and pool is shut down before the benchmark returns.  Timed
numbers are the best of the repetitions (median in brackets), the usual
choice on a machine shared with other work; latencies are distributions over
samples.  The ratio column is Penny's advantage: >1 means Penny is better
(faster, higher throughput, lower latency).

Usable as a library: ``import core; core.run_suite(quick=True)`` or any
``bench_*`` function, which return plain dicts (the ``--json`` payload).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)


def _ensure_importable() -> None:
    """Make `tasks` (and penny, from a plain checkout) importable here and in
    every worker process: spawn and forkserver workers import task functions
    by module name, with the parent's sys.path (spawn, and the forkserver when
    it starts) or PYTHONPATH (any interpreter started from here)."""
    paths = [BENCH_DIR]
    try:
        import penny  # noqa: F401
    except ImportError:  # running from a checkout without an install
        src = os.path.join(REPO_DIR, "src")
        if os.path.isdir(os.path.join(src, "penny")):
            paths.append(src)
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)
    env = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([p for p in paths if p not in env] + env)


_ensure_importable()

import tasks

if os.path.dirname(os.path.abspath(tasks.__file__)) != BENCH_DIR:
    raise ImportError(f"benchmarks: 'tasks' resolved to {tasks.__file__}, not {BENCH_DIR}/tasks.py")

import penny
from penny import _core
from penny.shm.layout import (
    H_TASK_FREE,
    INLINE_SIZE,
    R_FN,
    R_INLINE,
    R_LINK,
    R_STATE,
    W_CURRENT,
    W_HELD,
    RECORD_SIZE,
    Layout,
)
from penny.shm.region import Region
from penny.shm.tasks import GEN_MASK, TaskTable

perf = time.perf_counter
perf_ns = time.perf_counter_ns


class BenchmarkError(AssertionError):
    """A benchmark got a wrong or missing result: its timing would be meaningless."""


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise BenchmarkError(f"benchmark result check failed: {what}")


# ---- numbers and rows --------------------------------------------------------------
def _summary(values: list[float]) -> dict:
    return {"best": min(values), "median": statistics.median(values), "all": list(values)}


def _percentile(sorted_values: list, q: float):
    """Nearest-rank percentile of an already sorted list."""
    k = max(0, min(len(sorted_values) - 1, int(-(-q * len(sorted_values) // 100)) - 1))
    return sorted_values[k]


def _row(metric: str, unit: str, penny_v, peer_v, peer_name: str, *, higher_is_better: bool,
         target: str | None = None, met: bool | None = None, penny_med=None, peer_med=None) -> dict:
    ratio = None
    if penny_v and peer_v:
        ratio = penny_v / peer_v if higher_is_better else peer_v / penny_v
    return {
        "metric": metric, "unit": unit, "penny": penny_v, "penny_median": penny_med,
        "peer": peer_v, "peer_median": peer_med, "peer_name": peer_name, "ratio": ratio,
        "higher_is_better": higher_is_better, "target": target, "target_met": met,
    }


def _fmt(v, unit: str) -> str:
    if v is None:
        return "-"
    if unit in ("tasks/s", "items/s"):
        if v >= 1e6:
            return f"{v / 1e6:.2f}M"
        if v >= 1e3:
            return f"{v / 1e3:.1f}k"
        return f"{v:.0f}"
    if unit == "us":
        return f"{v:.1f} us" if v < 1000 else f"{v / 1000:.2f} ms"
    if unit == "ns":
        return f"{v:.0f} ns"
    if unit == "s":
        if v < 0.01:
            return f"{v * 1e6:.0f} us" if v < 0.001 else f"{v * 1000:.2f} ms"
        return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"
    return f"{v:.3g}"


def print_table(title: str, rows: list[dict], notes: list[str] = ()) -> None:
    cells = [("metric", "Penny", "peer", "Penny adv.", "target")]
    for r in rows:
        p = _fmt(r["penny"], r["unit"])
        if r.get("penny_median") is not None:
            p += f" [{_fmt(r['penny_median'], r['unit'])}]"
        q = _fmt(r["peer"], r["unit"])
        if r.get("peer_median") is not None:
            q += f" [{_fmt(r['peer_median'], r['unit'])}]"
        if r["peer"] is not None:
            q = f"{r['peer_name']}: {q}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        tgt = r["target"] or ""
        if r["target_met"] is not None:
            tgt += "  ok" if r["target_met"] else "  MISSED"
        cells.append((r["metric"], p, q, ratio, tgt))
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    print(f"\n== {title} ==")
    for i, c in enumerate(cells):
        print("  " + "  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip())
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))
    for n in notes:
        print(f"  note: {n}")
    sys.stdout.flush()


# ---- a, b: empty-task throughput ------------------------------------------------------
def _gather_round(submit_one, n: int, expect) -> float:
    """Submit n tasks one call each, then gather every result; seconds."""
    t0 = perf()
    futs = [submit_one(i) for i in range(n)]
    results = [f.result() for f in futs]
    dt = perf() - t0
    _check(len(results) == n, f"{len(results)} results for {n} tasks")
    bad = next((i for i, r in enumerate(results) if r != expect(i)), None)
    _check(bad is None, f"task {bad} returned {results[bad] if bad is not None else None!r}")
    return dt


def bench_throughput(n: int = 20_000, reps: int = 5, workers: int = 2, static: bool = False) -> dict:
    """a (static=False): submit(noop, i); b (static=True): new_task(1, [i, 1]) on {1: add}."""
    if static:
        expect = lambda i: i + 1
        title = f"b. static-table throughput: new_task(1, [i, 1]) x {n:,} in flight, then gather"
    else:
        expect = lambda i: i
        title = f"a. empty-task throughput: submit(noop, i) x {n:,} in flight, then gather"
    warm = 2 * workers * 50
    with penny.Scheduler(workers, functions={1: tasks.add}) as s:
        if static:
            new_task = s.new_task
            one = lambda i: new_task(1, [i, 1])
        else:
            submit, noop = s.submit, tasks.noop
            one = lambda i: submit(noop, i)
        _gather_round(one, warm, expect)  # workers up, functions imported
        p_times = [_gather_round(one, n, expect) for _ in range(reps)]
        p_stats = s.stats()["totals"]
    with cf.ProcessPoolExecutor(workers) as pool:
        psubmit = pool.submit
        if static:
            add = tasks.add
            one = lambda i: psubmit(add, i, 1)
        else:
            noop = tasks.noop
            one = lambda i: psubmit(noop, i)
        _gather_round(one, warm, expect)
        q_times = [_gather_round(one, n, expect) for _ in range(reps)]
    pt, qt = _summary(p_times), _summary(q_times)
    peer = f"ProcessPoolExecutor({workers}).submit"
    row = _row("tasks/s", "tasks/s", n / pt["best"], n / qt["best"], peer, higher_is_better=True,
               penny_med=n / pt["median"], peer_med=n / qt["median"], target=">= 20x peer")
    row["target_met"] = row["ratio"] >= 20
    notes = [(f"best of {reps} rounds [median]; workers started and warm before timing; "
              f"Penny worker totals: {p_stats['tasks']} tasks, {p_stats['steals']} steals, "
              f"{p_stats['parks']} parks")]
    return {"title": title, "rows": [row], "notes": notes,
            "details": {"n": n, "reps": reps, "workers": workers, "penny_s": pt, "peer_s": qt,
                        "penny_worker_totals": p_stats,
                        "peer_start_method": multiprocessing.get_start_method()}}


# ---- c: map ---------------------------------------------------------------------------
def bench_map(n: int = 1_000_000, reps: int = 3, workers: int = 2,
              chunksizes=(1000, 10_000, 62_500)) -> dict:
    items = range(n)
    expected = [i * i for i in items]

    def timed(call):
        t0 = perf()
        out = call()
        dt = perf() - t0
        _check(out == expected, "map results differ from [i*i for i in range(n)]")
        return dt

    with penny.Scheduler(workers) as s:
        _check(list(s.map(tasks.square, range(1000))) == expected[:1000], "warm-up map")
        p_times = [timed(lambda: list(s.map(tasks.square, items))) for _ in range(reps)]
    per_chunk = {}
    with multiprocessing.Pool(workers) as pool:
        _check(pool.map(tasks.square, range(1000)) == expected[:1000], "warm-up Pool.map")
        for cs in chunksizes:
            per_chunk[cs] = _summary([timed(lambda cs=cs: pool.map(tasks.square, items, chunksize=cs))
                                      for _ in range(reps)])
    best_cs = min(per_chunk, key=lambda cs: per_chunk[cs]["best"])
    pt, qt = _summary(p_times), per_chunk[best_cs]
    row = _row("items/s", "items/s", n / pt["best"], n / qt["best"],
               f"Pool({workers}).map(chunksize={best_cs})", higher_is_better=True,
               penny_med=n / pt["median"], peer_med=n / qt["median"])
    notes = [f"best of {reps} [median]; Penny map with its default chunking; peer's best chunksize of "
             + ", ".join(f"{cs}: {_fmt(n / v['best'], 'items/s')}" for cs, v in per_chunk.items())]
    return {"title": f"c. map(square, range({n:,})), all results gathered in order",
            "rows": [row], "notes": notes,
            "details": {"n": n, "reps": reps, "workers": workers, "penny_s": pt,
                        "peer_s_by_chunksize": {str(k): v for k, v in per_chunk.items()},
                        "peer_best_chunksize": best_cs,
                        "peer_start_method": multiprocessing.get_start_method()}}


# ---- d: wake latency ------------------------------------------------------------------
def _latency_samples(submit_one, samples: int, warmup: int, idle_s: float):
    """Sorted lists (us) of: submit -> task start, submit -> result(), the submit call itself."""
    starts, trips, calls = [], [], []
    for i in range(warmup + samples):
        time.sleep(idle_s)
        t0 = perf_ns()
        fut = submit_one()
        t_sub = perf_ns()
        started = fut.result()
        t1 = perf_ns()
        _check(isinstance(started, int) and t0 < started < t1,
               f"task start stamp {started!r} not between submit {t0} and result {t1}")
        if i >= warmup:
            starts.append((started - t0) / 1000)
            trips.append((t1 - t0) / 1000)
            calls.append((t_sub - t0) / 1000)
    return sorted(starts), sorted(trips), sorted(calls)


def _floor_child(region, n: int) -> None:
    """The bare mechanism: sleep on a futex word, stamp the time when woken, wake the parent back."""
    s, base = region.shared, region.layout.arena
    for i in range(1, n + 1):
        while s.load32(base, _core.ACQUIRE) < i:
            s.futex_wait(base, i - 1, 1.0)
        s.store64(base + 128, perf_ns(), _core.RELAXED)
        s.store32(base + 64, i, _core.RELEASE)
        s.futex_wake(base + 64)


def _wake_floor(samples: int, warmup: int, idle_s: float) -> dict:
    """What waking a sleeping process costs on this machine without any runtime: one process
    futex-waits, the other stores, futex_wakes and waits for its stamp (same protocol as below)."""
    layout = Layout(workers=1, deque_capacity=2, task_capacity=2, function_slots=1, arena_size=1 << 16)
    region = Region.create(layout)
    proc = None
    try:
        s, base = region.shared, layout.arena
        n = warmup + samples
        proc = multiprocessing.get_context("fork").Process(target=_floor_child, args=(region, n), daemon=True)
        proc.start()
        starts, calls = [], []
        for i in range(1, n + 1):
            time.sleep(idle_s)
            t0 = perf_ns()
            s.store32(base, i, _core.RELEASE)
            s.futex_wake(base)
            t_wake = perf_ns()
            while s.load32(base + 64, _core.ACQUIRE) < i:
                _check(proc.is_alive() or s.load32(base + 64, _core.ACQUIRE) >= i, "floor child died")
                s.futex_wait(base + 64, i - 1, 1.0)
            started = s.load64(base + 128, _core.RELAXED)
            _check(started > t0, "floor stamp before the wake")
            if i > warmup:
                starts.append((started - t0) / 1000)
                calls.append((t_wake - t0) / 1000)
        proc.join(10)
        _check(proc.exitcode == 0, f"floor child exit code {proc.exitcode}")
    finally:
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join()
        region.close()
    starts.sort()
    calls.sort()
    return {"start_us": starts, "wake_call_us": calls}


def bench_wake_latency(samples: int = 200, idle_s: float = 0.05, workers: int = 2, warmup: int = 10) -> dict:
    clock = time.get_clock_info("perf_counter").implementation
    with penny.Scheduler(workers) as s:
        submit, stamp = s.submit, tasks.stamp
        before = s.stats()["totals"]
        p_start, p_trip, p_call = _latency_samples(lambda: submit(stamp), samples, warmup, idle_s)
        time.sleep(0.05)  # workers flush their counters when they go idle
        after = s.stats()["totals"]
    with cf.ProcessPoolExecutor(workers) as pool:
        psubmit = pool.submit
        q_start, q_trip, q_call = _latency_samples(lambda: psubmit(stamp), samples, warmup, idle_s)
    floor = _wake_floor(samples, warmup, idle_s)
    peer = f"ProcessPoolExecutor({workers})"
    med = statistics.median
    rows = [
        _row("submit -> task start, median", "us", med(p_start), med(q_start), peer,
             higher_is_better=False, target="<= 50 us", met=med(p_start) <= 50),
        _row("submit -> task start, p90", "us", _percentile(p_start, 90), _percentile(q_start, 90), peer,
             higher_is_better=False),
        _row("submit -> result(), median", "us", med(p_trip), med(q_trip), peer, higher_is_better=False),
        _row("the submit() call itself, median", "us", med(p_call), med(q_call), peer, higher_is_better=False),
    ]
    wakeups = after["wakeups"] - before["wakeups"]
    notes = [(f"{samples} samples after {warmup} warm-up ones, {idle_s * 1000:.0f} ms idle before each; "
              f"clock: {clock}; Penny worker futex wake-ups during the run: {wakeups} "
              f"(~1 per sample means the workers were parked)"),
             (f"floor on this machine now, no runtime (one process futex-waits, the other wakes it): "
              f"wake -> stamp median {med(floor['start_us']):.1f} us, "
              f"p90 {_percentile(floor['start_us'], 90):.1f} us; "
              f"the futex_wake call alone: median {med(floor['wake_call_us']):.1f} us")]
    return {"title": "d. wake latency: a parked worker starts a newly submitted task",
            "rows": rows, "notes": notes,
            "details": {"samples": samples, "idle_s": idle_s, "clock": clock,
                        "penny_start_us": p_start, "peer_start_us": q_start,
                        "penny_roundtrip_us": p_trip, "peer_roundtrip_us": q_trip,
                        "penny_submit_call_us": p_call, "peer_submit_call_us": q_call,
                        "floor_start_us": floor["start_us"], "floor_wake_call_us": floor["wake_call_us"],
                        "penny_wakeups": wakeups, "penny_parks": after["parks"] - before["parks"]}}


# ---- e: record round trip -------------------------------------------------------------
def bench_record_roundtrip(n: int = 200_000, reps: int = 5) -> dict:
    layout = Layout(workers=1, deque_capacity=1024, task_capacity=1024, function_slots=16,
                    arena_size=1 << 16)
    region = Region.create(layout)
    try:
        s = region.shared
        table = TaskTable(s, layout)
        table.init_free_list()
        alloc, free, base = table.alloc, table.free, table.base
        pack, unpack = s.pack_inline, s.unpack_inline
        store32, load32 = s.store32, s.load32
        push, pop = s.deque_push, s.deque_pop
        dq = layout.deque(0)
        relaxed = _core.RELAXED

        def roundtrip(count, a, b):
            args = [a, b]
            for _ in range(count):
                ref = alloc()
                rec = base + ((ref & 0xFFFF_FFFF) - 1) * RECORD_SIZE
                pack(rec + R_INLINE, INLINE_SIZE, args)
                store32(rec + R_FN, 1, relaxed)
                push(dq, ref)
                got = pop(dq)
                rec = base + ((got & 0xFFFF_FFFF) - 1) * RECORD_SIZE
                fid = load32(rec + R_FN, relaxed)
                out = unpack(rec + R_INLINE, INLINE_SIZE)
                free(got)
            return ref, got, fid, out

        spop, spush, load64, store64 = s.stack_pop, s.stack_push, s.load64, s.store64
        cap = layout.task_capacity

        def roundtrip_inlined(count, a, b):
            """The same operations with TaskTable.alloc/free written out (the same C calls)."""
            args = [a, b]
            for _ in range(count):
                i = spop(H_TASK_FREE, base, RECORD_SIZE, R_LINK, cap)
                rec = base + i * RECORD_SIZE
                ref = ((load64(rec + R_STATE, relaxed) & GEN_MASK) << 32) | (i + 1)
                pack(rec + R_INLINE, INLINE_SIZE, args)
                store32(rec + R_FN, 1, relaxed)
                push(dq, ref)
                got = pop(dq)
                i = (got & 0xFFFF_FFFF) - 1
                rec = base + i * RECORD_SIZE
                fid = load32(rec + R_FN, relaxed)
                out = unpack(rec + R_INLINE, INLINE_SIZE)
                store64(rec + R_STATE, ((got >> 32) + 1) & GEN_MASK, relaxed)
                spush(H_TASK_FREE, base, RECORD_SIZE, R_LINK, cap, i)
            return ref, got, fid, out

        parent = table.alloc()  # a record to be the children's parent (its spawned count counts them)
        cur = layout.slice(0) + W_CURRENT
        held = layout.slice(0) + W_HELD  # the held words of a spawn in progress
        cspawn, claim, free_task = s.spawn, s.claim, s.free_task

        def roundtrip_runtime(count, a, b):
            """What the runtime runs for a published child: Shared.spawn (take a
            record, mark it in the held words, pack the arguments inline, commit
            it, count it on the parent, push it on the deque, check for
            sleepers), deque_pop, claim (CAS to RUNNING,
            decode), free_task (next generation, back on the free list)."""
            args = (a, b)
            for _ in range(count):
                ref = cspawn(1, args, parent, dq, held)
                got = pop(dq)
                fid, flags, out = claim(got, cur, 0)
                free_task(got)
            return ref, got, fid, out

        # Checked pass: every step does what it claims, on varying arguments, and
        # the two variants share one free list (same generations, same records).
        seen = set()
        for i in range(2000):
            variant = roundtrip if i % 2 else roundtrip_inlined
            ref, got, fid, out = variant(1, i, -i * 7)
            _check(ref == got and ref > 0, f"popped {got:#x}, pushed {ref:#x}")
            _check(fid == 1 and out == (i, -i * 7), f"decoded fn {fid}, args {out!r}")
            seen.add(ref)
        _check(len(seen) == 2000, "a freed record came back with the same generation")
        _check(pop(dq) == _core.EMPTY, "deque not empty after the checked pass")
        _check(table.alloc() == ref + (1 << 32), "free list / generation bookkeeping")
        table.free(ref + (1 << 32))

        def plain(count, a, b):
            f = tasks.add
            for _ in range(count):
                out = f(a, b)
            return out

        def empty(count, a, b):
            for _ in range(count):
                pass

        def best_per_op(fn):
            times = []
            for _ in range(reps):
                t0 = perf_ns()
                result = fn(n, 1, 2)
                times.append((perf_ns() - t0) / n)
            return _summary(times), result

        for i in range(2000):
            ref, got, fid, out = roundtrip_runtime(1, i, -i * 7)
            _check(ref == got and fid == 1 and out == (i, -i * 7), f"runtime path decoded {fid} {out!r}")
        rt0, (ref, got, fid, out) = best_per_op(roundtrip_runtime)
        _check(ref == got and fid == 1 and out == (1, 2) and pop(dq) == _core.EMPTY, "timed runtime round trip")
        rt, (ref, got, fid, out) = best_per_op(roundtrip)
        _check(ref == got and fid == 1 and out == (1, 2) and pop(dq) == _core.EMPTY, "timed round trip")
        rt2, (ref, got, fid, out) = best_per_op(roundtrip_inlined)
        _check(ref == got and fid == 1 and out == (1, 2) and pop(dq) == _core.EMPTY, "timed inlined round trip")
        call, out = best_per_op(plain)
        _check(out == 3, "plain call")
        loop, _ = best_per_op(empty)
    finally:
        region.close()
    rows = [
        _row("record round trip, the runtime's C path", "ns", rt0["best"], None, "", higher_is_better=False,
             target="<= 500 ns", met=rt0["best"] <= 500, penny_med=rt0["median"]),
        _row("record round trip, generic ops from Python", "ns", rt["best"], None, "", higher_is_better=False,
             target="<= 500 ns", met=rt["best"] <= 500, penny_med=rt["median"]),
        _row("same, TaskTable.alloc/free written out", "ns", rt2["best"], None, "", higher_is_better=False,
             target="<= 500 ns", met=rt2["best"] <= 500, penny_med=rt2["median"]),
        _row("plain Python call f(1, 2)", "ns", call["best"], None, "", higher_is_better=False,
             penny_med=call["median"]),
        _row("empty loop iteration", "ns", loop["best"], None, "", higher_is_better=False,
             penny_med=loop["median"]),
    ]
    notes = [(f"{n:,} ops, best of {reps} [median]; runtime path per op: Shared.spawn (alloc + held mark + pack + "
              "commit + spawned count + deque push + sleeper check), deque_pop, claim (CAS + decode), free_task; "
              "generic path per op: TaskTable.alloc, pack_inline([a, b]), "
              "store32(fn id), deque_push, deque_pop, load32(fn id), unpack_inline, TaskTable.free; "
              f"loop overhead included in each row; round trip = {rt['best'] / call['best']:.1f} plain calls")]
    return {"title": "e. task record round trip in one process (encode, push, pop, decode, free)",
            "rows": rows, "notes": notes,
            "details": {"n": n, "reps": reps, "runtime_roundtrip_ns": rt0, "roundtrip_ns": rt, "roundtrip_inlined_ns": rt2, "plain_call_ns": call, "empty_loop_ns": loop}}


# ---- f: startup -----------------------------------------------------------------------
def _startup_once(kind: str, method: str, workers: int = 2) -> dict:
    """Seconds: construction, construction to first result, shutdown."""
    t0 = perf()
    if kind == "penny":
        ex = penny.Scheduler(workers, start_method=method)
    else:
        ex = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))
    try:
        t1 = perf()
        value = ex.submit(tasks.noop, 7).result(timeout=60)
        t2 = perf()
    finally:
        t3 = perf()
        ex.shutdown(wait=True)
        t4 = perf()
    _check(value == 7, f"first task returned {value!r}")
    return {"construct": t1 - t0, "first": t2 - t0, "shutdown": t4 - t3}


def _startup_cold(kind: str, method: str) -> dict:
    """One `_startup_once` in a fresh interpreter (imports done before timing)."""
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--_startup-child", kind, method],
        capture_output=True, text=True, timeout=120, env=os.environ.copy(), check=False,
    )
    if proc.returncode != 0:
        raise BenchmarkError(f"startup child {kind}/{method} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_startup(methods=None, reps: int = 3, cold_reps: int = 1, workers: int = 2) -> dict:
    if methods is None:
        methods = [m for m in ("forkserver", "spawn", "fork") if m in multiprocessing.get_all_start_methods()]
    rows, details = [], {}
    peer = f"ProcessPoolExecutor({workers})"
    for method in methods:
        res = {}
        for kind in ("penny", "peer"):
            cold = [_startup_cold(kind, method) for _ in range(cold_reps)]
            warm = [_startup_once(kind, method, workers) for _ in range(reps)]
            res[kind] = {"cold": cold, "warm": warm}
        details[method] = res

        def pick(kind, which, key, res=res):
            vals = [r[key] for r in res[kind][which]]
            return min(vals), statistics.median(vals)

        for which in ("cold", "warm"):
            pb, pm = pick("penny", which, "construct")
            rows.append(_row(f"{method:<10} {which}: Scheduler() alone", "s", pb, None, peer,
                             higher_is_better=False, target="< 0.3 s", met=pb < 0.3, penny_med=pm))
            pb, pm = pick("penny", which, "first")
            qb, qm = pick("peer", which, "first")
            rows.append(_row(f"{method:<10} {which}: to first result", "s", pb, qb, peer, higher_is_better=False,
                             target="< 0.3 s", met=pb < 0.3, penny_med=pm, peer_med=qm))
    notes = [(f"cold: a fresh interpreter, imports done, best of {cold_reps} [median] (forkserver cold "
              f"includes starting the fork server); warm: repeated in this process, best of {reps} [median]; "
              "the peer's executor starts no process until the first submit, so it is compared on "
              "'to first result' only (its construction times are in the JSON)")]
    return {"title": f"f. startup: Scheduler({workers}) to first result of a trivial task",
            "rows": rows, "notes": notes, "details": details}


# ---- the suite ------------------------------------------------------------------------
def _child_processes() -> list[str]:
    """Live child processes of this one, as 'pid cmdline'."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != me:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue
        found.append(f"{entry} {cmd[:160]}")
    return found


def _meta() -> dict:
    try:
        commit = subprocess.run(["git", "-C", REPO_DIR, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "penny": penny.__version__, "commit": commit, "python": sys.version.split()[0],
        "implementation": platform.python_implementation(), "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


BENCHES = {
    "a": ("empty-task throughput", lambda q: bench_throughput(20_000, 2 if q else 5)),
    "b": ("static-table throughput", lambda q: bench_throughput(20_000, 2 if q else 5, static=True)),
    "c": ("map", lambda q: bench_map(1_000_000, 1 if q else 3)),
    "d": ("wake latency", lambda q: bench_wake_latency(40 if q else 200)),
    "e": ("record round trip", lambda q: bench_record_roundtrip(100_000 if q else 200_000, 3 if q else 5)),
    "f": ("startup", lambda q: bench_startup(reps=2 if q else 3, cold_reps=1 if q else 3)),
}


def run_suite(quick: bool = False, only=None, json_path: str | None = None, out=print) -> dict:
    """Run the benchmarks (all, or the keys in `only`), print their tables, return the results."""
    keys = list(BENCHES) if not only else [k for k in BENCHES if k in only]
    meta = _meta()
    out(f"Penny {meta['penny']} ({meta['commit']}) on Python {meta['python']}, {meta['cpu_count']} CPUs, "
        f"load average {meta['loadavg_start']}; {'quick' if quick else 'full'} run")
    results, t_all = {}, perf()
    for k in keys:
        fn = BENCHES[k][1]
        t0 = perf()
        res = fn(quick)
        res["seconds"] = perf() - t0
        results[k] = res
        print_table(res["title"], res["rows"], res.get("notes", ()))
    meta["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    meta["seconds"] = perf() - t_all
    meta["quick"] = quick
    # Every scheduler and pool was shut down: only multiprocessing's own helpers
    # (the fork server, the resource tracker), which exit with this process, may remain.
    workers_left = [repr(p) for p in multiprocessing.active_children()]
    children = _child_processes()
    helpers = [c for c in children if "forkserver" in c or "resource_tracker" in c]
    others = [c for c in children if c not in helpers]
    meta["leftover_children"] = children
    payload = {"meta": meta, "results": results}
    out(f"\nDone in {meta['seconds']:.1f} s; load average at the end {meta['loadavg_end']}.")
    if helpers:
        out(f"Still running: {len(helpers)} multiprocessing helper(s) (fork server, resource tracker) "
            "that exit with this process.")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(payload, f, indent=1)
        out(f"Results written to {json_path}")
    _check(not workers_left and not others,
           f"processes still running after the benchmarks: {workers_left + others}")
    return payload


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/core.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and samples (well under 2 minutes)")
    ap.add_argument("--json", metavar="PATH", help="also write every number (and raw samples) to PATH")
    ap.add_argument("--only", metavar="KEYS", help=f"comma-separated subset of {','.join(BENCHES)}")
    ap.add_argument("--_startup-child", nargs=2, metavar=("KIND", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._startup_child:
        kind, method = args._startup_child
        print(json.dumps(_startup_once(kind, method)))
        return 0
    only = None
    if args.only:
        only = {k.strip() for k in args.only.split(",") if k.strip()}
        unknown = only - set(BENCHES)
        if unknown:
            ap.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {','.join(BENCHES)}")
    run_suite(quick=args.quick, only=only, json_path=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
