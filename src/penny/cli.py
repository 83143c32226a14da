"""The ``penny`` command (also ``python -m penny``).

    penny demo [--workers N] [--limit N] [--start-method M]
        the quick start, then a CPU-bound job (counting primes in ranges,
        tasks of ~10 ms) timed serially and on a Scheduler, with the speedup
    penny bench [--quick] [--json PATH] [--only a,b,...]
        the repository's benchmark suites: benchmarks/core.py (throughput,
        map, wake latency, record round trip, startup), then
        benchmarks/forkjoin.py (fib, nqueens, UTS, spawn/sync, Ray, Dask)
    penny info
        version, Python, default start method, CPUs, native core, optional packages

The task functions of the demo live at module level here, so that worker
processes can import them by name (``penny.cli:count_primes``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

# ---- task functions for the demo (module level: workers import them by name) ----------


def add(a, b):
    return a + b


def square(x):
    return x * x


def fib_serial(n: int) -> int:
    return n if n < 2 else fib_serial(n - 1) + fib_serial(n - 2)


def fib(n: int, cutoff: int) -> int:
    """Nested fork-join: each level spawns one child that an idle worker may steal."""
    import penny

    if n <= cutoff:
        return fib_serial(n)
    x = penny.spawn(fib, n - 1, cutoff)
    y = fib(n - 2, cutoff)
    return penny.sync(x) + y


def count_primes(lo: int, hi: int) -> int:
    """Primes in [lo, hi) by trial division: deliberately plain, CPU-bound Python."""
    n = 0
    for k in range(max(lo, 2), hi):
        if k < 4:
            n += 1
            continue
        if not k & 1:
            continue
        d = 3
        while d * d <= k:
            if k % d == 0:
                break
            d += 2
        else:
            n += 1
    return n


# ---- demo ---------------------------------------------------------------------------
def cmd_demo(args) -> int:
    import penny

    workers = args.workers or os.cpu_count() or 1
    limit, step = args.limit, args.step
    ranges = [(lo, min(lo + step, limit)) for lo in range(0, limit, step)]

    print(f"Penny {penny.__version__}: quick start")
    t0 = time.perf_counter()
    with penny.Scheduler(workers, functions={1: add}, start_method=args.start_method) as s:
        first = s.new_task(1, [40, 2]).result()
        t_up = time.perf_counter() - t0
        print(f"  Scheduler({workers}, functions={{1: add}}) [{s.start_method}]: "
              f"first result after {t_up * 1000:.0f} ms")
        print(f"  s.new_task(1, [40, 2]).result()      -> {first}")
        f = s.submit(add, 1, 2)
        print(f"  s.submit(add, 1, 2).result()         -> {f.result()}")
        print(f"  list(s.map(square, range(10)))       -> {list(s.map(square, range(10)))}")
        if first != 42 or f.result() != 3:
            print("penny demo: wrong result from the quick start", file=sys.stderr)
            return 1

        print(f"\nCPU-bound job: count primes below {limit:,} in {len(ranges)} ranges of {step:,}")
        t0 = time.perf_counter()
        serial = [count_primes(lo, hi) for lo, hi in ranges]
        t_serial = time.perf_counter() - t0
        print(f"  serial, in this process:      {t_serial:7.3f} s  ({t_serial / len(ranges) * 1000:.1f} ms per task)"
              f"  -> {sum(serial):,} primes")

        time.sleep(0.05)  # workers publish their counters when they go idle
        before = s.stats()
        t0 = time.perf_counter()
        futures = [s.submit(count_primes, lo, hi) for lo, hi in ranges]
        parallel = [fut.result() for fut in futures]
        t_par = time.perf_counter() - t0
        print(f"  Scheduler({workers}), one task each: {t_par:7.3f} s"
              f"  -> {sum(parallel):,} primes")
        if parallel != serial:
            print("penny demo: the parallel results differ from the serial ones", file=sys.stderr)
            return 1
        time.sleep(0.05)  # workers publish their counters when they go idle
        after = s.stats()
        per = [a["tasks"] - b["tasks"] for a, b in zip(after["workers"], before["workers"])]
        steals = after["totals"]["steals"] - before["totals"]["steals"]
        print(f"  speedup: {t_serial / t_par:.2f}x on {workers} workers "
              f"({os.cpu_count()} CPUs; tasks run per worker: {per}; steals during the job: {steals})")

        n, cutoff = 30, 12
        print(f"\nNested fork-join: fib({n}) spawning down to n <= {cutoff}")
        t0 = time.perf_counter()
        want = fib_serial(n)
        t_serial = time.perf_counter() - t0
        before = s.stats()["totals"]
        t0 = time.perf_counter()
        got = s.run(fib, n, cutoff)
        t_par = time.perf_counter() - t0
        time.sleep(0.05)  # workers publish their counters when they go idle
        after = s.stats()["totals"]
        if got != want:
            print(f"penny demo: fib({n}) gave {got}, expected {want}", file=sys.stderr)
            return 1
        print(f"  serial: {t_serial:.3f} s; Scheduler({workers}): {t_par:.3f} s -> fib({n}) = {got:,}; "
              f"speedup {t_serial / t_par:.2f}x")
        print(f"  spawns {after['spawns'] - before['spawns']:,}, of which published for thieves "
              f"{after['published'] - before['published']:,}; steals {after['steals'] - before['steals']}; "
              f"suspended syncs {after['suspends'] - before['suspends']}")
    return 0


# ---- bench --------------------------------------------------------------------------
def find_benchmarks() -> Path | None:
    """The repository's benchmarks/ directory: $PENNY_BENCHMARKS, next to src/ of this
    checkout (editable or in-place installs), or ./benchmarks."""
    candidates = []
    env = os.environ.get("PENNY_BENCHMARKS")
    if env:
        candidates.append(Path(env))
    here = Path(__file__).resolve().parent  # .../src/penny
    candidates.append(here.parent.parent / "benchmarks")
    candidates.append(Path.cwd() / "benchmarks")
    for c in candidates:
        if (c / "core.py").is_file() and (c / "tasks.py").is_file():
            return c.resolve()
    return None


def load_bench_module(bench_dir: Path):
    """Import benchmarks/core.py (under a private name: 'core' is too common)."""
    name = "penny_benchmarks_core"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, bench_dir / "core.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def cmd_bench(args) -> int:
    bench_dir = find_benchmarks()
    if bench_dir is None:
        print("penny bench: the benchmarks/ directory was not found (Penny seems installed without its "
              "repository). Run it from a checkout (python benchmarks/core.py, or penny bench from the "
              "repository root), or set PENNY_BENCHMARKS=/path/to/benchmarks.", file=sys.stderr)
        return 2
    core = load_bench_module(bench_dir)
    argv = []
    if args.quick:
        argv.append("--quick")
    if args.json:
        argv += ["--json", args.json]
    if args.only:
        argv += ["--only", args.only]
    rc = core.main(argv)
    if rc or args.only:
        return rc
    # Then the nested fork-join suite (fib, nqueens, UTS, spawn/sync, Ray and Dask).
    import subprocess

    cmd = [sys.executable, str(bench_dir / "forkjoin.py")] + (["--quick"] if args.quick else [])
    if args.json:
        base, ext = os.path.splitext(args.json)
        cmd += ["--json", f"{base}-forkjoin{ext or '.json'}"]
    print()
    return subprocess.call(cmd)


# ---- info ---------------------------------------------------------------------------
def _optional(name: str) -> str:
    if importlib.util.find_spec(name) is None:
        return "not installed"
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - present but without metadata
        return "present"


def cmd_info(args) -> int:
    import multiprocessing

    try:
        import penny

        version, where = penny.__version__, os.path.dirname(penny.__file__)
    except Exception as e:  # noqa: BLE001 - e.g. the native core failed to load
        version, where = f"cannot import penny: {type(e).__name__}: {e}", "-"
    try:
        from penny import scheduler

        default_method = scheduler._default_start_method()
    except Exception:  # noqa: BLE001
        methods = multiprocessing.get_all_start_methods()
        default_method = "forkserver" if "forkserver" in methods else "spawn"
    try:
        from penny import _core

        core = f"loaded ({_core.__file__})"
    except Exception as e:  # noqa: BLE001
        core = f"NOT loaded: {type(e).__name__}: {e}"
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    rows = [
        ("penny", f"{version} ({where})"),
        ("python", f"{platform.python_version()} ({platform.python_implementation()}) {sys.executable}"),
        ("platform", platform.platform()),
        ("default start method", f"{default_method} (available: {', '.join(multiprocessing.get_all_start_methods())})"),
        ("cpu count", f"{os.cpu_count()}" + (f" ({affinity} usable by this process)" if affinity else "")),
        ("native core penny._core", core),
    ]
    rows += [(name, _optional(name)) for name in ("numpy", "greenlet", "ray", "dask")]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    return 0


# ---- entry point --------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="penny", description="Penny: a work-stealing parallel runtime for Python.")
    sub = ap.add_subparsers(dest="command", metavar="{demo,bench,info}")

    demo = sub.add_parser("demo", help="quick start and a timed CPU-bound parallel job")
    demo.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    demo.add_argument("--limit", type=int, default=500_000, help="count primes below this (default 500,000)")
    demo.add_argument("--step", type=int, default=5_000, help="numbers per task (default 5,000: ~10 ms)")
    demo.add_argument("--start-method", choices=("forkserver", "spawn", "fork"), default=None)
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="run the benchmark suite (benchmarks/core.py)")
    bench.add_argument("--quick", action="store_true", help="fewer repetitions (well under 2 minutes)")
    bench.add_argument("--json", metavar="PATH", help="also write the results to PATH")
    bench.add_argument("--only", metavar="KEYS", help="comma-separated subset of a,b,c,d,e,f")
    bench.set_defaults(func=cmd_bench)

    info = sub.add_parser("info", help="versions, CPUs, start method, native core, optional packages")
    info.set_defaults(func=cmd_info)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    if args.command == "demo":
        if args.workers is not None and args.workers < 1:
            ap.error("--workers must be at least 1")
        if args.limit < 2 or args.step < 1:
            ap.error("--limit must be at least 2 and --step at least 1")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
