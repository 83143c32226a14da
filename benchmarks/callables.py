#!/usr/bin/env python
"""Any callable: what shipping code costs (issue 13's targets), side by side in one run.

    python benchmarks/callables.py [--quick] [--json out.json]

a. empty-task throughput, ``submit(fn, i)`` x N in flight then gather, for
   fn = a named module-level function (``tasks.noop``: travels by name),
   a function defined in this script's ``__main__`` (travels by value), a
   ``functools.partial`` of a module function, and a lambda; best of R rounds
   after a warm-up, and the first call's latency (submit to result, first
   time this callable is seen) for each.  Target: the ``__main__`` function
   and the partial within 10% of the named function after the first call.
c. FunctionTable.route alone, in this process: the part of a submit that
   differs between the kinds (an id, and the check that a by-value pickle
   cannot have changed).
b. lambda throughput, ``submit(lambda x: x, i)`` x N in flight then gather:
   Penny(2) vs loky's ``get_reusable_executor(2)`` (joblib's executor, which
   also pickles lambdas with cloudpickle).  Target: at least 10x loky.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
os.environ["PYTHONPATH"] = os.pathsep.join([BENCH_DIR] + [p for p in os.environ.get("PYTHONPATH", "").split(
    os.pathsep) if p])

import tasks  # noqa: E402

import penny  # noqa: E402

perf = time.perf_counter


def main_noop(x):
    """Defined in __main__: workers never import this script, so it travels by value."""
    return x


def gather(submit_one, n: int) -> float:
    t0 = perf()
    futs = [submit_one(i) for i in range(n)]
    results = [f.result() for f in futs]
    dt = perf() - t0
    if results != list(range(n)):
        raise SystemExit("callables benchmark: wrong results")
    return dt


def first_call(s, fn) -> float:
    t0 = perf()
    if s.submit(fn, 7).result() != 7:
        raise SystemExit("callables benchmark: wrong first result")
    return perf() - t0


def bench_kinds(n: int, reps: int) -> dict:
    kinds = {
        "named module function (tasks.noop)": tasks.noop,
        "function of __main__ (by value)": main_noop,
        "functools.partial(tasks.add, 0)": functools.partial(tasks.add, 0),
        "lambda x: x": lambda x: x,
    }
    out = {}
    with penny.Scheduler(2) as s:
        s.submit(tasks.noop, 0).result()  # workers up
        gather(lambda i: s.submit(tasks.noop, i), 500)
        firsts = {name: first_call(s, fn) for name, fn in kinds.items()}
        for name, fn in kinds.items():
            submit = s.submit
            gather(lambda i: submit(fn, i), 500)  # warm: registered, loaded by the workers
        # Alternate the kinds round by round so that drift hits each alike.
        times = {name: [] for name in kinds}
        for _ in range(reps):
            for name, fn in kinds.items():
                submit = s.submit
                times[name].append(gather(lambda i: submit(fn, i), n))
    base = n / min(times["named module function (tasks.noop)"])
    for name in kinds:
        best = n / min(times[name])
        out[name] = {"tasks_per_s": best, "median_tasks_per_s": n / statistics.median(times[name]),
                     "vs_named": best / base, "first_call_ms": firsts[name] * 1e3}
    return out


def bench_route(n: int = 50_000, rounds: int = 7) -> dict:
    """c. what differs between the kinds, alone: FunctionTable.route (the id,
    and for a by-value callable the check that its pickle cannot have
    changed), best of `rounds` alternating rounds, in this process."""
    import timeit

    kinds = {"named": tasks.noop, "__main__": main_noop, "partial": functools.partial(tasks.add, 0),
             "lambda": lambda x: x}
    with penny.Scheduler(2) as s:
        for fn in kinds.values():
            for _ in range(3):  # seen, registered, cached
                s.submit(fn, 1).result()
        route = s._functions.route
        best = {k: float("inf") for k in kinds}
        for _ in range(rounds):
            for name, fn in kinds.items():
                t = timeit.timeit(lambda: route(fn, (1,), None), number=n) / n
                best[name] = min(best[name], t)
    return {k: v * 1e6 for k, v in best.items()}


def bench_vs_loky(n: int, reps: int) -> dict:
    import loky

    fn = lambda x: x  # noqa: E731
    with penny.Scheduler(2) as s:
        gather(lambda i: s.submit(fn, i), 500)
        p = [gather(lambda i: s.submit(fn, i), n) for _ in range(reps)]
    ex = loky.get_reusable_executor(max_workers=2)
    try:
        gather(lambda i: ex.submit(fn, i), 200)
        q = [gather(lambda i: ex.submit(fn, i), n) for _ in range(reps)]
    finally:
        ex.shutdown(wait=True)
    return {"penny_tasks_per_s": n / min(p), "loky_tasks_per_s": n / min(q), "ratio": min(q) / min(p)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    n, reps = (5_000, 3) if args.quick else (20_000, 5)
    t0 = perf()
    kinds = bench_kinds(n, reps)
    print(f"a. empty-task throughput by kind of callable: submit(fn, i) x {n:,} in flight, best of {reps}")
    print(f"   {'callable':<40} {'tasks/s':>10} {'[median]':>10} {'vs named':>9} {'first call':>11}")
    for name, r in kinds.items():
        print(f"   {name:<40} {r['tasks_per_s']:>10,.0f} {r['median_tasks_per_s']:>10,.0f} "
              f"{r['vs_named']:>9.2f} {r['first_call_ms']:>9.2f} ms")
    ok = all(kinds[k]["vs_named"] >= 0.90 for k in ("function of __main__ (by value)",
                                                     "functools.partial(tasks.add, 0)"))
    print(f"   target: __main__ function and partial within 10% of the named function: {'met' if ok else 'MISSED'}")
    rt = bench_route(20_000 if args.quick else 50_000)
    print("\nc. FunctionTable.route alone (the per-submit cost that differs), best of 7, us: "
          + ", ".join(f"{k} {v:.2f}" for k, v in rt.items()))
    ln = n // 4 if not args.quick else n // 5
    lk = bench_vs_loky(ln, reps)
    print(f"\nb. lambda throughput: submit(lambda x: x, i) x {ln:,} in flight, best of {reps}")
    print(f"   Penny(2) {lk['penny_tasks_per_s']:,.0f} tasks/s, loky reusable executor(2) "
          f"{lk['loky_tasks_per_s']:,.0f} tasks/s: {lk['ratio']:.1f}x (target >= 10x: "
          f"{'met' if lk['ratio'] >= 10 else 'MISSED'})")
    print(f"\nDone in {perf() - t0:.1f} s; load average {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"kinds": kinds, "route_us": rt, "loky": lk, "n": n, "reps": reps}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
