"""Nested fork-join benchmarks: fib, nqueens, UTS, spawn/sync cost.

    python benchmarks/forkjoin.py [--quick] [--workers N] [--json PATH]

Every parallel run is checked against its serial twin, measured in the same
run in the main process (plain recursive Python, no runtime).  Parallel
efficiency = T_serial / (workers x T_parallel).  Times are the best of
--reps runs (median in brackets).  Ray and Dask are run on the same
workloads when they are installed (`ray.get` inside tasks;
`distributed.worker_client`), otherwise the table says so.
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
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)
os.environ["PYTHONPATH"] = os.pathsep.join([BENCH_DIR] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

import fj_tasks as T  # noqa: E402

import penny  # noqa: E402


def timed(fn, reps):
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), out


def workloads(quick: bool):
    return [
        ("fib(28), leaves n<=14", (T.fib_serial, (28,)), (T.fib, (28, 14)), T.fib_tasks(28, 14), 0.90),
        ("fib(30), leaves n<=10", (T.fib_serial, (30,)), (T.fib, (30, 10)), T.fib_tasks(30, 10), 0.75),
        ("nqueens(11), spawn rows<3", (T.queens_serial, (11,)), (T.queens, (11, 3)), None, 0.85),
        ("UTS geometric b=4 d=9", (T.uts_serial, (T.uts_root(12), 0)), (T.uts, (T.uts_root(12), 0, 5)), None, 0.85),
    ]


def run(quick: bool = False, workers: int = 2, json_path: str | None = None, out=print,
        peers=("ray", "dask")) -> dict:
    """The suite; `peers` (Ray, Dask on fib(28)) may be () when the caller runs
    its own peer comparisons (``penny bench`` uses benchmarks/peers.py)."""
    reps = 3 if quick else 5
    results = {"meta": {"python": platform.python_version(), "machine": platform.machine(),
                        "cpus": os.cpu_count(), "workers": workers,
                        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": quick}, "rows": []}
    out(f"Fork-join benchmarks: Penny {penny.__version__}, {workers} workers, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, best of {reps} [median]")
    with penny.Scheduler(workers) as s:
        s.run(T.fib, 18, 10)  # warm up: workers up, functions imported
        out(f"{'workload':28} {'tasks':>8} {'serial s':>16} {'penny s':>16} {'speedup':>8} {'eff':>6} {'target':>7}")
        for name, (sf, sa), (pf, pa), ntasks, target in workloads(quick):
            ts, ts_med, want = timed(lambda: sf(*sa), reps)
            tp, tp_med, got = timed(lambda: s.run(pf, *pa), reps)
            if got != want:
                raise AssertionError(f"{name}: penny {got!r} != serial {want!r}")
            eff = ts / (workers * tp)
            row = {"workload": name, "tasks": ntasks, "result": want, "serial_s": ts, "serial_med_s": ts_med,
                   "penny_s": tp, "penny_med_s": tp_med, "speedup": ts / tp, "efficiency": eff,
                   "target_efficiency": target, "met": eff >= target}
            results["rows"].append(row)
            out(f"{name:28} {ntasks if ntasks else '':>8} {ts:8.3f} [{ts_med:5.3f}] {tp:8.3f} [{tp_med:5.3f}] "
                f"{ts / tp:7.2f}x {eff:6.2f} {'>=' + str(target):>7} {'ok' if eff >= target else 'MISSED'}")
        uts_nodes = results["rows"][-1]["result"]
        out(f"  (UTS tree: {uts_nodes:,} nodes)")
    # spawn/sync cost, unstolen: one worker, so nobody is idle to publish to.
    with penny.Scheduler(1) as s1:
        n = 200_000 if quick else 1_000_000
        best = min((s1.run(T.spawn_sync_loop, n) for _ in range(reps)), key=lambda r: r[1])
        plain, both = best
        results["spawn_sync"] = {"plain_ns": plain, "spawn_sync_ns": both, "ratio": both / plain, "n": n}
        out(f"spawn+sync of an empty child, not stolen: {both:.0f} ns vs plain call {plain:.0f} ns "
            f"= {both / plain:.1f}x (target <= 10x)")
    with penny.Scheduler(workers) as s:
        pairs, us = (200, 500.0) if quick else (1000, 500.0)
        s.run(T.stolen_pairs, 20, us)
        per, stolen = min((s.run(T.stolen_pairs, pairs, us) for _ in range(reps)), key=lambda r: r[0])
        overhead = per / 1000 - us
        results["stolen"] = {"pairs": pairs, "work_us": us, "round_us": per / 1000, "stolen": stolen,
                             "overhead_us": overhead}
        out(f"stolen child: rounds of two {us:.0f} us halves took {per / 1000:.0f} us each "
            f"({stolen}/{pairs} children ran on the other worker): {overhead:.0f} us over perfect overlap")
    results["peers"] = {}
    for peer in peers:
        results["peers"][peer] = run_peer_isolated(peer, workers, reps, out)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
    return results


PEER_WORKLOADS = [("fib(28), leaves n<=14", 28, 14), ("fib(30), leaves n<=10", 30, 10)]


def run_peer_isolated(peer: str, workers: int, reps: int, out) -> dict:
    """Run `peers` for one peer in a child process (a peer that crashes or
    hangs must not take the suite with it); its JSON comes back on stdout."""
    import subprocess

    cmd = [sys.executable, os.path.abspath(__file__), "--peer", peer, "--workers", str(workers),
           "--reps", str(reps)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PEER_TIMEOUT_S,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        out(f"{peer}: gave up after {PEER_TIMEOUT_S} s")
        return {"error": f"timed out after {PEER_TIMEOUT_S} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PEER-JSON ")]
    for ln in proc.stdout.splitlines():
        if not ln.startswith("PEER-JSON "):
            out(ln)
    if proc.returncode or not lines:
        tail = proc.stderr.strip().splitlines()[-3:]
        out(f"{peer}: failed (exit {proc.returncode}): {' | '.join(tail)}")
        return {"error": f"exit {proc.returncode}", "stderr_tail": tail}
    return json.loads(lines[-1][len("PEER-JSON "):])


PEER_TIMEOUT_S = 300


def peers(workers: int, reps: int, out, which=("ray", "dask")) -> dict:
    """Ray and Dask on the fib workload, each next to Penny in the same run.
    Only fib(28) with leaves at n <= 14 (1,973 tasks): Ray needs about 25 s
    for it here already, and fib(30) with 35,421 tasks would take minutes."""
    import peer_tasks as P

    res = {}
    cases = PEER_WORKLOADS[:1]
    preps = max(1, reps // 2)
    with penny.Scheduler(workers) as s:
        s.run(T.fib, 18, 10)
        penny_t = {name: timed(lambda: s.run(T.fib, n, c), reps)[0] for name, n, c in cases}
    for peer in which:
        try:
            start, stop, call = _peer_api(peer, workers)
        except ImportError:
            res[peer] = "not installed"
            out(f"{peer}: not installed (pip install {'ray' if peer == 'ray' else 'dask[distributed]'})")
            continue
        handle = start()
        try:
            call(handle, P, 20, 10)  # warm up
            for name, n, c in cases:
                tp, tp_med, got = timed(lambda: call(handle, P, n, c), preps)
                if got != T.fib_serial(n):
                    raise AssertionError(f"{peer} {name}: {got}")
                ratio = tp / penny_t[name]
                res.setdefault(peer, {})[name] = {"peer_s": tp, "peer_med_s": tp_med, "penny_s": penny_t[name],
                                                  "penny_faster": ratio, "met_20x": ratio >= 20}
                out(f"{peer:5} {name:24} {tp:8.3f} s [{tp_med:.3f}] vs Penny {penny_t[name]:.3f} s: "
                    f"Penny {ratio:.0f}x faster (target >= 20x {'ok' if ratio >= 20 else 'MISSED'})")
        finally:
            stop(handle)
    return res


def _peer_api(peer: str, workers: int):
    if peer == "ray":
        import ray

        def start():
            ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR",
                     runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
            return ray

        def call(r, P, n, c):
            return r.get(P._fib_ray_remote().remote(n, c))

        return start, lambda r: r.shutdown(), call
    from distributed import Client, LocalCluster

    def start():
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        return cluster, Client(cluster)

    def call(h, P, n, c):
        return h[1].submit(P.fib_dask, n, c, pure=False).result()

    def stop(h):
        h[1].close()
        h[0].close()

    return start, stop, call


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--peer", choices=("ray", "dask"), help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, default=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.peer:
        res = peers(a.workers, a.reps, lambda line: print(line, flush=True), (a.peer,))
        print("PEER-JSON " + json.dumps(res.get(a.peer)), flush=True)
        return 0
    run(a.quick, a.workers, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
