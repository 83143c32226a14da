"""How long Scheduler.interrupt takes to stop a running task (not a test).

    python benchmarks/interrupt.py [--reps N] [--workers N] [--start-method M] [--json PATH]

Each rep submits a task, waits until it runs (``future.running()``), then
times ``interrupt(future)`` up to ``future.result()`` raising
`penny.TaskInterrupted` in the caller: the signal to the workers, the
handler raising at the next bytecode boundary, the task's failure travelling
back through the completion queue and the collector.  Rows:

* a pure-Python spin loop (the target: median under 100 ms);
* a task blocked in ``time.sleep(60)`` (cut short by the signal);
* a tree of spinning tasks (4 levels, children stolen by the other worker),
  interrupted at its root: until the root's future raises, i.e. every
  child has stopped too.

Also the cost when nothing is interrupted: the round trip of an empty task
(the claim reads one more shared word).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))  # tests.interrupt_tasks: importable in the workers
os.environ["PYTHONPATH"] = os.pathsep.join([os.path.dirname(BENCH_DIR)]
                                           + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

import penny  # noqa: E402
from penny.shm.layout import H_IDLE  # noqa: E402
from tests import interrupt_tasks as T  # noqa: E402


def wait_running(fut):
    while not fut.running():
        if fut.done():
            raise RuntimeError("the task ended before it ran")
        time.sleep(0.0005)


def wait_idle(s):
    while s._s.load32(H_IDLE, 0) < s.workers:
        time.sleep(0.001)


def latency(s, fn, args, reps, settle=0.0, idle=False):
    out = []
    for _ in range(reps):
        if idle:
            wait_idle(s)
        f = s.submit(fn, *args)
        wait_running(f)
        if settle:
            time.sleep(settle)
        t0 = time.perf_counter()
        s.interrupt(f)
        try:
            f.result(timeout=60)
            raise RuntimeError("the task was not interrupted")
        except penny.TaskInterrupted:
            out.append(time.perf_counter() - t0)
    return out


def roundtrip(s, n):
    t0 = time.perf_counter()
    for _ in range(n):
        s.submit(T.add_one, 1).result()
    return (time.perf_counter() - t0) / n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--start-method", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    res = {"meta": {"python": platform.python_version(), "cpus": os.cpu_count(), "workers": a.workers,
                    "date": time.strftime("%Y-%m-%d %H:%M:%S"), "load": os.getloadavg()[0]}, "rows": {}}
    with penny.Scheduler(a.workers, start_method=a.start_method) as s:
        res["meta"]["start_method"] = s.start_method
        print(f"Scheduler.interrupt latency: Penny {penny.__version__}, {a.workers} workers "
              f"({s.start_method}), Python {platform.python_version()}, {os.cpu_count()} CPUs, "
              f"load {os.getloadavg()[0]:.1f}, {a.reps} reps")
        s.submit(T.add_one, 0).result()
        rows = [
            ("spin loop (pure Python)", T.spin, (600.0,), 0.0, False),
            ("time.sleep(60)", T.sleeper, (60.0,), 0.0, False),
            ("tree of 16 spinning leaves, 2 workers", T.tree, (4, 600.0), 0.05, True),
        ]
        for name, fn, args, settle, idle in rows:
            reps = a.reps if fn is not T.tree else max(5, a.reps // 5)
            xs = latency(s, fn, args, reps, settle, idle)
            ms = sorted(x * 1e3 for x in xs)
            row = {"median_ms": statistics.median(ms), "p90_ms": ms[int(0.9 * (len(ms) - 1))],
                   "min_ms": ms[0], "max_ms": ms[-1], "reps": len(ms)}
            res["rows"][name] = row
            print(f"  {name:40s} median {row['median_ms']:7.2f} ms  p90 {row['p90_ms']:7.2f}  "
                  f"min {row['min_ms']:6.2f}  max {row['max_ms']:7.2f}  ({len(ms)} reps)")
        rt = min(roundtrip(s, 2000) for _ in range(3))
        res["rows"]["empty task round trip"] = {"us": rt * 1e6}
        print(f"  {'empty task round trip (no interrupt)':40s} {rt * 1e6:7.1f} us (best of 3 x 2000)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
