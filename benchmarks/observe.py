#!/usr/bin/env python
"""What observing the scheduler costs: tracing on vs off, side by side in one run.

    python benchmarks/observe.py [--quick] [--rounds N]

* empty-task throughput (benchmarks/core.py section a: ``submit(noop, i)`` x
  20,000 in flight, then gather) and fib(30) with leaves at n <= 10, on
  ``Scheduler(2)`` and on ``Scheduler(2, trace=True)``, in alternating rounds
  (a loaded machine then slows both alike); best and median of all rounds;
* the cost of one trace event in a worker (``TraceWriter.emit``), single
  process, next to an empty loop;
* how many events each workload produced, and whether any were dropped.

Tracing *off* against a build without the trace hooks cannot be measured in
one process; benchmarks/RESULTS.md ("Observability") says how that A/B run
was made.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [BENCH_DIR] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != BENCH_DIR])

import fj_tasks as T  # noqa: E402
import tasks  # noqa: E402

import penny  # noqa: E402
from penny.trace import export as trace  # noqa: E402
from penny.shm.layout import Layout  # noqa: E402
from penny.shm.region import Region  # noqa: E402


def empty_round(s, n):
    submit, noop = s.submit, tasks.noop
    t0 = time.perf_counter()
    futs = [submit(noop, i) for i in range(n)]
    out = [f.result() for f in futs]
    dt = time.perf_counter() - t0
    assert out[-1] == n - 1 and len(out) == n
    return n / dt


def fib_round(s):
    t0 = time.perf_counter()
    assert s.run(T.fib, 30, 10) == 832040
    return time.perf_counter() - t0


def one_round(traced: bool, n: int, reps: int) -> dict:
    with penny.Scheduler(2, trace=traced) as s:
        empty_round(s, 200)
        s.run(T.fib, 18, 10)
        rec = s._own_recorder
        e0 = sum(len(r) for r in rec.records()) if rec else 0
        empty = [empty_round(s, n) for _ in range(reps)]
        if rec:
            rec._poll()
        e1 = sum(len(r) for r in rec.records()) if rec else 0
        fib = [fib_round(s) for _ in range(reps)]
        if rec:
            rec._poll()
        e2 = sum(len(r) for r in rec.records()) if rec else 0
        dropped = rec.dropped if rec else 0
    return {"empty": empty, "fib": fib, "empty_events": (e1 - e0) / reps, "fib_events": (e2 - e1) / reps,
            "dropped": dropped}


def emit_cost(n=200_000) -> tuple:
    lay = Layout(workers=1, deque_capacity=2, task_capacity=2, function_slots=1, arena_size=1 << 16,
                 trace_events=1 << 12)
    region = Region.create(lay)
    try:
        w = trace.TraceWriter(region.shared, lay, 0)
        emit = w.emit
        t0 = time.perf_counter_ns()
        for i in range(n):
            emit(1, 7, i)
        t1 = time.perf_counter_ns()
        for i in range(n):
            pass
        t2 = time.perf_counter_ns()
    finally:
        region.close()
    return (t1 - t0) / n, (t2 - t1) / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    a = ap.parse_args(argv)
    rounds = a.rounds or (2 if a.quick else 4)
    n, reps = 20_000, 3
    res = {False: {"empty": [], "fib": []}, True: {"empty": [], "fib": []}}
    events = {}
    for _ in range(rounds):
        for traced in (False, True):
            r = one_round(traced, n, reps)
            res[traced]["empty"] += r["empty"]
            res[traced]["fib"] += r["fib"]
            if traced:
                events = {"empty": r["empty_events"], "fib": r["fib_events"],
                          "dropped": events.get("dropped", 0) + r["dropped"]}
    print(f"Penny {penny.__version__}, 2 workers, {os.cpu_count()} CPUs, load average {os.getloadavg()}; "
          f"{rounds} alternating rounds x {reps} runs each; best [median]")
    off, on = res[False], res[True]
    be, bo = max(off["empty"]), max(on["empty"])
    me, mo = statistics.median(off["empty"]), statistics.median(on["empty"])
    print(f"  empty tasks x {n:,}:  tracing off {be / 1e3:6.1f}k/s [{me / 1e3:.1f}k]   "
          f"on {bo / 1e3:6.1f}k/s [{mo / 1e3:.1f}k]   on/off {bo / be:.2f} [{mo / me:.2f}]   "
          f"({events.get('empty', 0):,.0f} events per run)")
    fe, fo = min(off["fib"]), min(on["fib"])
    mfe, mfo = statistics.median(off["fib"]), statistics.median(on["fib"])
    print(f"  fib(30), leaves<=10:  tracing off {fe * 1e3:6.1f} ms [{mfe * 1e3:.1f}]   "
          f"on {fo * 1e3:6.1f} ms [{mfo * 1e3:.1f}]   off/on {fe / fo:.2f} [{mfe / mfo:.2f}]   "
          f"({events.get('fib', 0):,.0f} events per run)")
    print(f"  events dropped: {events.get('dropped', 0)}")
    ev, loop = emit_cost()
    print(f"  one trace event (TraceWriter.emit), single process: {ev:.0f} ns (empty loop {loop:.0f} ns)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
