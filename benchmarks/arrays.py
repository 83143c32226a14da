#!/usr/bin/env python
"""Zero-copy arrays: Penny's shared arrays side by side with the peers, one run.

    python benchmarks/arrays.py [--quick] [--json out.json]

a. Passing a 200 MB float64 array to a task that returns a scalar, per call:
   - "pass": the task returns a[0] + a[-1] (the cost of getting the array to
     the task and a scalar back; the target is at most 1 ms, constant in the
     array's size, so it is measured at 200 MB and 2 GB);
   - "sum": the task returns a.sum() (the issue's task; includes ~15-30 ms of
     summing that no runtime can avoid, shown as "in-process sum").
   Penny with a shared array (s.shared_array: a descriptor travels), Penny
   with a plain NumPy array (copied once, out of band, into the arena),
   concurrent.futures.ProcessPoolExecutor (pickled through a pipe), Ray
   (ray.put once, then tasks on the ObjectRef: zero-copy reads from Ray's
   object store; in a subprocess so its processes stay apart), and a bare
   pickle.dumps + pickle.loads round trip in one process.
b. A data-parallel kernel on shared arrays, 2 workers vs single-process NumPy:
   - blocked matrix multiply C = A @ B, n = 4096 (three 128 MiB float64
     matrices, 384 MiB in all), one task per block of rows;
   - 2-D heat stencil, 6000 x 6000 float64 grids (two of 275 MiB), one task
     per block of rows per step.
   Every NumPy call is single-threaded in both cases: OMP_NUM_THREADS,
   OPENBLAS_NUM_THREADS, MKL_NUM_THREADS and friends are set to 1 before
   NumPy is imported, here and (inherited) in every worker; the script
   prints the BLAS NumPy uses, and checks that one matmul takes as long with
   the limit as a second process that sets it again (a multi-threaded BLAS
   would be faster).

Timed numbers are the best of the repetitions (median in brackets).
"""

from __future__ import annotations

# Single-threaded BLAS everywhere, before NumPy is imported (see above).
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import concurrent.futures as cf  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
sys.path[:0] = [BENCH_DIR, os.path.join(REPO_DIR, "src")]
os.environ["PYTHONPATH"] = os.pathsep.join([BENCH_DIR, os.path.join(REPO_DIR, "src"),
                                            os.environ.get("PYTHONPATH", "")])

import numpy as np  # noqa: E402

import array_tasks as T  # noqa: E402
import penny  # noqa: E402

MB = 1 << 20


def timed(fn, reps: int) -> tuple[float, float]:
    """(best, median) seconds of `reps` calls of fn()."""
    xs = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t)
    return min(xs), statistics.median(xs)


def ms(pair) -> str:
    return f"{pair[0] * 1e3:9.3f} [{pair[1] * 1e3:.3f}]"


# ---- a. passing a big array ----------------------------------------------------------
def bench_pass(mb: int, reps: int, peers: bool) -> dict:
    n = mb * MB // 8
    out: dict = {"mb": mb}
    plain = np.ones(n)
    expect = float(n)
    out["in-process sum"] = timed(lambda: T.total(plain), reps)
    with penny.Scheduler(2) as s:
        shared = s.share(plain) if peers else s.shared_array((n,), "f8", fill=1.0)
        assert s.submit(T.total, shared).result() == expect
        out["penny shared: pass"] = timed(lambda: s.submit(T.ends, shared).result(), reps * 20)
        out["penny shared: sum"] = timed(lambda: s.submit(T.total, shared).result(), reps)
        if peers:
            assert s.submit(T.total, plain).result() == expect
            out["penny plain array: pass"] = timed(lambda: s.submit(T.ends, plain).result(), reps)
            out["penny plain array: sum"] = timed(lambda: s.submit(T.total, plain).result(), reps)
        del shared
        gc.collect()
    if not peers:
        return out
    with cf.ProcessPoolExecutor(2) as pool:
        assert pool.submit(T.total, plain).result() == expect
        out["ProcessPoolExecutor: pass"] = timed(lambda: pool.submit(T.ends, plain).result(), reps)
        out["ProcessPoolExecutor: sum"] = timed(lambda: pool.submit(T.total, plain).result(), reps)
    out["pickle round trip"] = timed(lambda: pickle.loads(pickle.dumps(plain, protocol=5)), reps)
    ray = _ray_pass(mb, reps)
    out.update(ray)
    return out


def _ray_pass(mb: int, reps: int) -> dict:
    try:
        import ray  # noqa: F401
    except ImportError:
        return {"ray": "not installed"}
    proc = subprocess.run([sys.executable, __file__, "--ray-peer", str(mb), "--reps", str(reps)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode:
        return {"ray": f"failed: {proc.stderr.strip().splitlines()[-1:]}"}
    return {k: tuple(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def ray_peer(mb: int, reps: int) -> dict:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        n = mb * MB // 8
        plain = np.ones(n)
        total = ray.remote(T.total)
        ends = ray.remote(T.ends)
        ref = ray.put(plain)
        assert ray.get(total.remote(ref)) == float(n)
        out = {
            "ray put once, task on the ref: pass": timed(lambda: ray.get(ends.remote(ref)), reps * 20),
            "ray put once, task on the ref: sum": timed(lambda: ray.get(total.remote(ref)), reps),
            "ray put + task, each call: sum": timed(lambda: ray.get(total.remote(ray.put(plain))), reps),
        }
    finally:
        ray.shutdown()
    return out


# ---- b. kernels ------------------------------------------------------------------------
def blas_info() -> str:
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - older NumPy
        return "unknown"


def bench_matmul(n: int, reps: int, workers: int) -> dict:
    rng = np.random.default_rng(1)
    a0, b0 = rng.random((n, n)), rng.random((n, n))
    c0 = np.empty((n, n))
    serial = timed(lambda: np.matmul(a0, b0, out=c0), reps)
    with penny.Scheduler(workers) as s:
        a, b = s.share(a0), s.share(b0)
        c = s.shared_array((n, n), "f8", fill=0.0)
        blocks = max(workers * 4, 8)
        step = -(-n // blocks)

        def parallel():
            futs = [s.submit(T.matmul_rows, a, b, c, lo, min(lo + step, n)) for lo in range(0, n, step)]
            for f in futs:
                f.result()

        par = timed(parallel, reps)
        assert np.allclose(c, c0), "parallel matmul differs from NumPy's"
        del a, b, c
    return {"n": n, "bytes": 3 * n * n * 8, "numpy 1 thread": serial, f"penny {workers} workers": par,
            "speedup": serial[0] / par[0]}


def bench_heat(n: int, steps: int, reps: int, workers: int) -> dict:
    alpha = 0.1
    g0 = np.zeros((n, n))
    g0[n // 4:n // 2, n // 4:n // 2] = 100.0
    h0 = g0.copy()

    def serial():
        src, dst = g0.copy(), h0
        for _ in range(steps):
            T.heat_rows(src, dst, 0, n, alpha)
            src, dst = dst, src
        return src

    ref = serial()
    t_serial = timed(serial, reps)
    with penny.Scheduler(workers) as s:
        grids = [s.share(g0), s.share(h0)]
        blocks = max(workers * 2, 4)
        step = -(-n // blocks)

        def parallel():
            grids[0][...] = g0
            src, dst = grids
            for _ in range(steps):
                futs = [s.submit(T.heat_rows, src, dst, lo, min(lo + step, n), alpha)
                        for lo in range(0, n, step)]
                for f in futs:
                    f.result()
                src, dst = dst, src
            return src

        out = parallel()
        assert np.allclose(out, ref), "parallel stencil differs from NumPy's"
        t_par = timed(parallel, reps)
        del grids, out
    # Both timings include copying the initial grid once (serial: g0.copy()).
    return {"n": n, "steps": steps, "bytes": 2 * n * n * 8, "numpy 1 thread": t_serial,
            f"penny {workers} workers": t_par, "speedup": t_serial[0] / t_par[0]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ray-peer", type=int, metavar="MB", help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, default=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ray_peer:
        print(json.dumps(ray_peer(args.ray_peer, args.reps)))
        return 0
    reps = 3 if args.quick else 5
    print(f"# Penny zero-copy arrays, {time.strftime('%Y-%m-%d')}, {platform.platform()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, NumPy {np.__version__} "
          f"(BLAS: {blas_info()}, threads limited to 1)")
    results: dict = {}
    print("\n## a. A 200 MB float64 array to a task that returns a scalar (ms per call, best [median])")
    results["pass_200"] = r = bench_pass(200, reps, peers=True)
    for k, v in r.items():
        if k != "mb":
            print(f"  {k:45s} {ms(v) if isinstance(v, tuple) else v}")
    big = 512 if args.quick else 2048
    results[f"pass_{big}"] = r2 = bench_pass(big, reps, peers=False)
    print(f"\n  The same at {big} MB (Penny shared only):")
    for k, v in r2.items():
        if k != "mb":
            print(f"  {k:45s} {ms(v)}")
    print(f"  pass cost, 200 MB vs {big} MB: {r['penny shared: pass'][0] * 1e3:.3f} ms vs "
          f"{r2['penny shared: pass'][0] * 1e3:.3f} ms")

    print(f"\n## b. Data-parallel kernels on shared arrays, {args.workers} workers vs NumPy in one process (s)")
    n = 2048 if args.quick else 4096
    results["matmul"] = m = bench_matmul(n, 2 if args.quick else 3, args.workers)
    print(f"  matmul n={n} ({m['bytes'] / MB:.0f} MiB): numpy {ms(m['numpy 1 thread'])} ms, "
          f"penny {ms(m[f'penny {args.workers} workers'])} ms, speedup {m['speedup']:.2f}x")
    n, steps = (3000, 10) if args.quick else (6000, 20)
    results["heat"] = h = bench_heat(n, steps, 2 if args.quick else 3, args.workers)
    print(f"  heat {n}x{n} x {steps} steps ({h['bytes'] / MB:.0f} MiB): numpy {ms(h['numpy 1 thread'])} ms, "
          f"penny {ms(h[f'penny {args.workers} workers'])} ms, speedup {h['speedup']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
