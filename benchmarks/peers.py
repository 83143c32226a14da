#!/usr/bin/env python
"""Penny next to joblib, Ray and Dask on the same workloads, in the same run.

    python benchmarks/peers.py [--quick] [--workers N] [--only joblib,ray,dask] [--json PATH]

Each peer runs in its own child process (a peer that crashes, hangs or
leaves threads behind must not take the suite with it), and inside that
process Penny is measured first, shut down, then the peer, on identical
inputs with the same number of worker processes; every result is checked.

joblib (loky backend, ``Parallel(n_jobs=N)``):
  * many small items: ``square`` over range(n), Penny ``map`` vs joblib with
    its automatic batching;
  * CPU-bound tasks: 64 tasks busy 2 ms each, ``submit`` vs ``delayed``.
Ray (``ray.init(num_cpus=N)``) and Dask (``LocalCluster``, N processes, one
thread each):
  * empty tasks: n tasks submitted one call each, then gathered;
  * nested fork-join: fib with leaves at n <= 14, children spawned from inside
    tasks (``ray.get`` inside Ray tasks; ``worker_client`` in Dask tasks):
    fib(18) (15 tasks) with --quick, fib(28) (1,973 tasks) otherwise.
A peer that is not installed is reported as skipped.  Rows use the format of
benchmarks/core.py (ratio = Penny's advantage, > 1: Penny better).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)
_env = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
if BENCH_DIR not in _env:
    os.environ["PYTHONPATH"] = os.pathsep.join([BENCH_DIR] + _env)

PEERS = ("joblib", "ray", "dask")
INSTALL = {"joblib": "joblib", "ray": "ray", "dask": "dask[distributed]"}
TIMEOUT_S = {True: 150, False: 600}
perf = time.perf_counter


def installed(peer: str) -> bool:
    mod = "distributed" if peer == "dask" else peer
    return importlib.util.find_spec(mod) is not None


def _best(fn, reps):
    times, out = [], None
    for _ in range(reps):
        t0 = perf()
        out = fn()
        times.append(perf() - t0)
    return min(times), statistics.median(times), out


def _row(metric, unit, penny_v, peer_v, peer_name, higher_is_better, penny_med=None, peer_med=None):
    ratio = None
    if penny_v and peer_v:
        ratio = penny_v / peer_v if higher_is_better else peer_v / penny_v
    return {"metric": metric, "unit": unit, "penny": penny_v, "penny_median": penny_med, "peer": peer_v,
            "peer_median": peer_med, "peer_name": peer_name, "ratio": ratio,
            "higher_is_better": higher_is_better, "target": None, "target_met": None}


def _check(cond, what):
    if not cond:
        raise AssertionError(f"benchmark result check failed: {what}")


# ---- each peer (run inside the child process) -----------------------------------------------
def run_joblib(quick: bool, workers: int) -> dict:
    import joblib
    from joblib import Parallel, delayed

    import fj_tasks as T
    import penny
    import tasks

    n = 100_000 if quick else 1_000_000
    reps = 2 if quick else 3
    spins, us = 64, 2000.0
    want = [i * i for i in range(n)]
    with penny.Scheduler(workers) as s:
        list(s.map(tasks.square, range(1000)))
        s.submit(T.spin, 10).result()
        p_map = _best(lambda: list(s.map(tasks.square, range(n))), reps)
        p_cpu = _best(lambda: [f.result() for f in [s.submit(T.spin, us) for _ in range(spins)]], reps)
    _check(p_map[2] == want, "Penny map results")
    with Parallel(n_jobs=workers) as par:
        par(delayed(tasks.square)(i) for i in range(1000))
        q_map = _best(lambda: par(delayed(tasks.square)(i) for i in range(n)), reps)
        q_cpu = _best(lambda: par(delayed(T.spin)(us) for _ in range(spins)), reps)
    _check(q_map[2] == want, "joblib results")
    _check(len(p_cpu[2]) == len(q_cpu[2]) == spins, "CPU-bound task counts")
    peer = f"joblib {joblib.__version__} Parallel(n_jobs={workers})"
    rows = [
        _row(f"map(square, range({n:,}))", "items/s", n / p_map[0], n / q_map[0], peer, True,
             n / p_map[1], n / q_map[1]),
        _row(f"{spins} tasks busy {us / 1000:.0f} ms each", "s", p_cpu[0], q_cpu[0], peer, False,
             p_cpu[1], q_cpu[1]),
    ]
    return {"title": "joblib: the same map and CPU-bound tasks", "rows": rows,
            "notes": [f"best of {reps} [median]; joblib batches small items automatically (loky backend)"],
            "details": {"n": n, "reps": reps, "workers": workers, "peer": peer}}


def _ray_api(workers):
    import ray

    ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
    import tasks

    rnoop = ray.remote(tasks.noop)

    def empty(n):
        return ray.get([rnoop.remote(i) for i in range(n)])

    def fib(n, c):
        import peer_tasks as P

        return ray.get(P._fib_ray_remote().remote(n, c))

    return f"Ray {ray.__version__} (num_cpus={workers})", empty, fib, ray.shutdown


def _dask_api(workers):
    import dask
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    import peer_tasks as P
    import tasks

    def empty(n):
        return client.gather([client.submit(tasks.noop, i, pure=False) for i in range(n)])

    def fib(n, c):
        return client.submit(P.fib_dask, n, c, pure=False).result()

    def stop():
        client.close()
        cluster.close()

    return f"Dask {dask.__version__} (LocalCluster, {workers} processes)", empty, fib, stop


def run_cluster_peer(peer: str, quick: bool, workers: int) -> dict:
    import fj_tasks as T
    import penny
    import tasks

    n_empty = 2000 if quick else 10_000
    fib_n, cutoff = (18, 14) if quick else (28, 14)
    reps = 2 if quick else 3
    with penny.Scheduler(workers) as s:
        s.run(T.fib, 18, 10)
        [f.result() for f in [s.submit(tasks.noop, i) for i in range(200)]]
        p_empty = _best(lambda: [f.result() for f in [s.submit(tasks.noop, i) for i in range(n_empty)]], reps)
        p_fib = _best(lambda: s.run(T.fib, fib_n, cutoff), reps)
    _check(p_empty[2] == list(range(n_empty)), "Penny empty tasks")
    _check(p_fib[2] == T.fib_serial(fib_n), "Penny fib")
    t0 = perf()
    name, empty, fib, stop = (_ray_api if peer == "ray" else _dask_api)(workers)
    startup = perf() - t0
    try:
        empty(50)
        fib(16, 14)
        q_empty = _best(lambda: empty(n_empty), reps)
        q_fib = _best(lambda: fib(fib_n, cutoff), 1)
    finally:
        stop()
    _check(q_empty[2] == list(range(n_empty)), f"{peer} empty tasks")
    _check(q_fib[2] == T.fib_serial(fib_n), f"{peer} fib")
    tasks_n = T.fib_tasks(fib_n, cutoff)
    rows = [
        _row(f"empty tasks x {n_empty:,}, submit then gather", "tasks/s", n_empty / p_empty[0],
             n_empty / q_empty[0], name, True, n_empty / p_empty[1], n_empty / q_empty[1]),
        _row(f"nested fib({fib_n}), leaves n<={cutoff} ({tasks_n:,} tasks)", "s", p_fib[0], q_fib[0], name,
             False, p_fib[1], q_fib[1]),
    ]
    return {"title": f"{peer}: empty tasks and nested fork-join", "rows": rows,
            "notes": [f"Penny best of {reps} [median]; {peer}: empty tasks best of {reps}, fib once; "
                      f"{peer} started in {startup:.1f} s (not counted)"],
            "details": {"n_empty": n_empty, "fib": [fib_n, cutoff], "fib_tasks": tasks_n, "peer": name,
                        "peer_startup_s": startup}}


def run_peer(peer: str, quick: bool, workers: int) -> dict:
    if peer == "joblib":
        return run_joblib(quick, workers)
    return run_cluster_peer(peer, quick, workers)


# ---- the parent's side ----------------------------------------------------------------------
def run_isolated(peer: str, quick: bool, workers: int = 2, out=print) -> dict:
    """Run one peer's comparison in a child process; a result dict, or
    {"skipped": why} / {"error": why}."""
    if not installed(peer):
        return {"skipped": f"not installed (pip install {INSTALL[peer]})"}
    cmd = [sys.executable, os.path.abspath(__file__), "--child", peer, "--workers", str(workers)]
    if quick:
        cmd.append("--quick")
    timeout = TIMEOUT_S[quick]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired:
        return {"error": f"gave up after {timeout} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PEER-JSON ")]
    if proc.returncode or not lines:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1][len("PEER-JSON "):])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", default=",".join(PEERS), help="comma-separated subset of joblib,ray,dask")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--child", choices=PEERS, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        res = run_peer(a.child, a.quick, a.workers)
        print("PEER-JSON " + json.dumps(res), flush=True)
        return 0
    results = {}
    for peer in [p.strip() for p in a.only.split(",") if p.strip()]:
        res = results[peer] = run_isolated(peer, a.quick, a.workers)
        if "rows" in res:
            for r in res["rows"]:
                print(f"{peer:7} {r['metric']:48} Penny advantage {r['ratio']:.2f}x")
        else:
            print(f"{peer:7} {res}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
