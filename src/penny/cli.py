"""The ``penny`` command (also ``python -m penny``).

    penny demo [--workers N] [--limit N] [--start-method M] [--trace PATH]
        the quick start; a CPU-bound job (counting primes in ranges, tasks of
        ~10 ms), a nested fork-join fib and a NumPy kernel over shared arrays,
        each timed serially and on a Scheduler, with the speedup
    penny bench [--quick] [--only KEYS] [--compare PEERS] [--json PATH]
                [--markdown PATH] [--plot PATH]
        the repository's benchmarks (benchmarks/core.py, forkjoin.py,
        peers.py), each next to its peer in the same run, then one table of
        Penny-vs-peer ratios; peers: processpool, pool, joblib, ray, dask
    penny trace TRACE.json [--png PATH]
        summarise a Chrome trace written by Scheduler(trace=...) or
        ``with s.trace(path):``, and draw its per-worker timeline
    penny info
        version, Python, default start method, CPUs, native core, optional packages

The task functions of the demo live at module level here, so that worker
processes can import them by name (``penny.cli:count_primes``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

from .workloads import fib, fib_serial

# ---- task functions for the demo (module level: workers import them by name) ----------


def add(a, b):
    return a + b


def square(x):
    return x * x


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


def wave_kernel(x, out, lo: int, hi: int, terms: int) -> int:
    """out[lo:hi] = sum over k of sin(k x) / k: a NumPy kernel writing into a shared array."""
    import numpy as np

    xs = x[lo:hi]
    acc = np.zeros_like(xs)
    for k in range(1, terms + 1):
        acc += np.sin(k * xs) / k
    out[lo:hi] = acc
    return hi - lo


# ---- demo ---------------------------------------------------------------------------
def _demo_kernel(s, workers: int, n: int = 2_000_000, terms: int = 12, chunks: int = 16) -> int:
    """Part 4 of the demo: the same kernel serially and on the workers, over shared arrays."""
    print(f"\nShared-array kernel: out[i] = sum(sin(k x[i]) / k, k = 1..{terms}) over {n:,} float64s "
          f"in {chunks} tasks")
    if not hasattr(s, "shared_array"):
        print("  skipped: this version of Penny has no Scheduler.shared_array yet")
        return 0
    try:
        import numpy as np
    except ImportError:
        print("  skipped: the kernel needs NumPy (pip install numpy)")
        return 0
    x = s.shared_array((n,), "f8")
    x[:] = np.linspace(0.0, 100.0, n)
    out = s.shared_array((n,), "f8", fill=0.0)
    want = np.empty(n)
    t0 = time.perf_counter()
    wave_kernel(x, want, 0, n, terms)
    t_serial = time.perf_counter() - t0
    bounds = [(i * n // chunks, (i + 1) * n // chunks) for i in range(chunks)]
    s.submit(wave_kernel, x, out, 0, 1, 1).result()  # workers import NumPy before the clock starts
    t0 = time.perf_counter()
    done = sum(f.result() for f in [s.submit(wave_kernel, x, out, lo, hi, terms) for lo, hi in bounds])
    t_par = time.perf_counter() - t0
    if done != n or not np.allclose(out, want):
        print("penny demo: the shared-array kernel's results differ from the serial ones", file=sys.stderr)
        return 1
    print(f"  serial (NumPy, this process): {t_serial:.3f} s; Scheduler({workers}), arrays shared, "
          f"not copied: {t_par:.3f} s; speedup {_speedup(t_serial, t_par)}")
    return 0


def _load_note() -> str:
    """A note when other programs keep the CPUs busy (the speedups shown are
    then what is left for Penny, not what the cores can give)."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - no load average on this platform
        return ""
    cpus = os.cpu_count() or 1
    if load <= cpus:
        return ""
    return (f" (the machine is busy: load average {load:.1f} on {cpus} CPUs, so the workers share "
            "the cores with other programs; an idle machine gives more)")


def _speedup(t_serial: float, t_par: float) -> str:
    ratio = t_serial / t_par
    return f"{ratio:.2f}x" + (_load_note() if ratio < 1.0 else "")


def cmd_demo(args) -> int:
    import penny

    workers = args.workers or os.cpu_count() or 1
    limit, step = args.limit, args.step
    ranges = [(lo, min(lo + step, limit)) for lo in range(0, limit, step)]

    print(f"Penny {penny.__version__}: quick start")
    note = _load_note()
    if note:
        print(f"  note{note}")
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

        recorder = s.trace().start() if args.trace else None

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
        print(f"  speedup: {_speedup(t_serial, t_par)} on {workers} workers "
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
              f"speedup {_speedup(t_serial, t_par)}")
        print(f"  spawns {after['spawns'] - before['spawns']:,}, of which published for thieves "
              f"{after['published'] - before['published']:,}; steals {after['steals'] - before['steals']}; "
              f"suspended syncs {after['suspends'] - before['suspends']}")

        rc = _demo_kernel(s, workers)
        if rc:
            return rc
        if recorder is not None:
            recorder.stop()
            recorder.save(args.trace)
            print(f"\nTrace of the jobs above: {args.trace} ({recorder.dropped} events dropped); open it in "
                  f"https://ui.perfetto.dev or chrome://tracing, or draw it: penny trace {args.trace} "
                  f"--png timeline.png")
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


def load_bench_module(bench_dir: Path, stem: str = "core"):
    """Import benchmarks/<stem>.py under a private name ('core' is too common)."""
    name = f"penny_benchmarks_{stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, bench_dir / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


#: Benchmarks `penny bench` runs, in order, with the peer each one measures Penny against.
CORE_KEYS = ("a", "b", "c", "d", "e", "f")
BENCH_PEER = {"a": "processpool", "b": "processpool", "c": "pool", "d": "processpool", "e": None,
              "f": "processpool", "fj": None, "joblib": "joblib", "ray": "ray", "dask": "dask"}
BENCH_KEYS = tuple(BENCH_PEER)
PEER_NAMES = ("processpool", "pool", "joblib", "ray", "dask")
PEER_MODULE = {"processpool": "concurrent.futures", "pool": "multiprocessing", "joblib": "joblib",
               "ray": "ray", "dask": "distributed"}


def _split_keys(text: str | None, allowed, what: str):
    if not text:
        return None
    keys = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in keys if k not in allowed]
    if bad:
        raise SystemExit(f"penny bench: unknown {what} {', '.join(bad)}; choose from {','.join(allowed)}")
    return set(keys)


def cmd_bench(args) -> int:
    bench_dir = find_benchmarks()
    if bench_dir is None:
        print("penny bench: the benchmarks/ directory was not found (Penny seems installed without its "
              "repository). Run it from a checkout (python benchmarks/core.py, or penny bench from the "
              "repository root), or set PENNY_BENCHMARKS=/path/to/benchmarks.", file=sys.stderr)
        return 2
    only = _split_keys(args.only, BENCH_KEYS, "benchmark") or set(BENCH_KEYS)
    compare = _split_keys(args.compare, PEER_NAMES, "peer") or set(PEER_NAMES)
    skipped = {}
    for peer in sorted(compare):
        if importlib.util.find_spec(PEER_MODULE[peer]) is None:
            skipped[peer] = f"not installed (pip install {'dask[distributed]' if peer == 'dask' else peer})"
    run = [k for k in BENCH_KEYS if k in only and (BENCH_PEER[k] is None or
                                                    (BENCH_PEER[k] in compare and BENCH_PEER[k] not in skipped))]
    t_start = time.perf_counter()
    core = load_bench_module(bench_dir, "core")
    payload = {"meta": core._meta(), "quick": bool(args.quick), "ran": run, "skipped_peers": skipped,
               "core": None, "forkjoin": None, "peers": {}, "summary": []}
    payload["meta"]["command"] = "penny bench " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else [])
    summary = payload["summary"]

    core_keys = [k for k in CORE_KEYS if k in run]
    if core_keys:
        res = core.run_suite(quick=args.quick, only=set(core_keys))
        payload["core"] = res
        for key, r in res["results"].items():
            for row in r["rows"]:
                if row.get("peer") is not None and row.get("ratio"):
                    summary.append(_summary_row(key, r["title"], row, BENCH_PEER[key],
                                                f"{key}. {core.BENCHES[key][0]}: {row['metric'].strip()}"))
    if "fj" in run:
        print()
        fj = load_bench_module(bench_dir, "forkjoin")
        res = fj.run(args.quick, 2, None, out=print, peers=())
        payload["forkjoin"] = res
        for row in res["rows"]:
            summary.append({"bench": "fj", "title": "nested fork-join vs the same recursion in plain Python",
                            "metric": row["workload"], "label": f"fork-join {row['workload']}", "unit": "s",
                            "peer_group": "serial",
                            "peer_name": "serial Python, 1 process", "penny": row["penny_s"],
                            "peer": row["serial_s"], "ratio": row["speedup"], "higher_is_better": False})
    extra = [k for k in ("joblib", "ray", "dask") if k in run]
    if extra:
        peers = load_bench_module(bench_dir, "peers")
        for peer in extra:
            print(f"\n{peer}: running in its own process next to Penny ...", flush=True)
            res = payload["peers"][peer] = peers.run_isolated(peer, args.quick, 2)
            if "rows" not in res:
                print(f"  {peer}: {res.get('error') or res.get('skipped')}")
                if "skipped" in res:
                    skipped[peer] = res["skipped"]
                continue
            core.print_table(res["title"], res["rows"], res.get("notes", ()))
            for row in res["rows"]:
                if row.get("ratio"):
                    summary.append(_summary_row(peer, res["title"], row, peer, row["metric"]))
    payload["seconds"] = time.perf_counter() - t_start
    lines = _summary_lines(summary, core._fmt)
    print("\n== Penny vs peers, measured side by side in this run (Penny advantage: >1 means Penny is "
          "better) ==")
    for ln in lines:
        print("  " + ln)
    for peer, why in sorted(skipped.items()):
        print(f"  skipped {peer}: {why}")
    not_selected = [p for p in PEER_NAMES if p not in compare]
    if not_selected:
        print(f"  not compared (--compare): {', '.join(not_selected)}")
    print(f"penny bench: done in {payload['seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1, default=str)
        print(f"results: {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(_summary_markdown(payload, core._fmt))
        print(f"markdown: {args.markdown}")
    if args.plot:
        try:
            plot_bench(summary, args.plot, quick=bool(args.quick))
            print(f"plot: {args.plot}")
        except ImportError as e:
            print(f"penny bench: no plot ({e}); pip install matplotlib", file=sys.stderr)
            return 1
    return 0


def _summary_row(key, title, row, peer_group, label) -> dict:
    return {"bench": key, "title": title, "metric": row["metric"], "label": " ".join(label.split()),
            "unit": row["unit"], "peer_group": peer_group,
            "peer_name": row["peer_name"], "penny": row["penny"], "peer": row["peer"], "ratio": row["ratio"],
            "higher_is_better": row["higher_is_better"]}


def _summary_cells(summary, fmt):
    cells = []
    for r in summary:
        cells.append((r["label"], r["peer_name"], fmt(r["penny"], r["unit"]), fmt(r["peer"], r["unit"]),
                      f"{r['ratio']:.2f}x"))
    return cells


def _summary_lines(summary, fmt) -> list:
    if not summary:
        return ["(no peer comparison in this selection)"]
    head = ("benchmark", "peer", "Penny", "peer", "Penny advantage")
    cells = [head] + _summary_cells(summary, fmt)
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip() for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _summary_markdown(payload, fmt) -> str:
    meta = payload["meta"]
    out = [f"# Penny benchmarks ({'quick' if payload['quick'] else 'full'} run)", "",
           f"Penny {meta.get('penny')} ({meta.get('commit')}), Python {meta.get('python')}, "
           f"{meta.get('cpu_count')} CPUs, {meta.get('time')}; {payload['seconds']:.0f} s. "
           "Every ratio compares numbers measured side by side in this run; "
           "Penny advantage > 1 means Penny is better (faster, more throughput, lower latency).", "",
           "| benchmark | peer | Penny | peer | Penny advantage |", "|---|---|---|---|---|"]
    for c in _summary_cells(payload["summary"], fmt):
        out.append("| " + " | ".join(x.replace("|", "\\|") for x in c) + " |")
    if not payload["summary"]:
        out.append("| (no peer comparison in this selection) | | | | |")
    if payload["skipped_peers"]:
        out += ["", "Skipped: " + "; ".join(f"{p}: {w}" for p, w in sorted(payload["skipped_peers"].items()))]
    return "\n".join(out) + "\n"


def plot_bench(summary: list, path, quick: bool = False) -> str:
    """A horizontal bar per comparison: Penny's advantage (log scale, 1x marked)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in summary if r.get("ratio")]
    groups = ["processpool", "pool", "serial", "joblib", "ray", "dask"]
    colours = dict(zip(groups, ("#4c72b0", "#55a868", "#8172b2", "#c44e52", "#dd8452", "#937860")))
    fig = Figure(figsize=(10, max(2.5, 0.38 * len(rows) + 1.4)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    labels = []
    for i, r in enumerate(rows):
        ax.barh(i, r["ratio"], color=colours.get(r["peer_group"], "#777777"))
        ax.text(r["ratio"], i, f" {r['ratio']:.2f}x", va="center", fontsize=7)
        name = r["label"] if len(r["label"]) <= 56 else r["label"][:53] + "..."
        labels.append(f"{name}  [{r['peer_group']}]")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    if rows:
        ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("Penny's advantage over the peer (x, log scale; > 1: Penny better)")
    ax.set_title(f"penny bench{' --quick' if quick else ''}: each ratio measured side by side in one run")
    ax.grid(axis="x", alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    return os.fspath(path)


# ---- trace --------------------------------------------------------------------------
def cmd_trace(args) -> int:
    from .trace import export as tr

    try:
        data = tr.load(args.file)
    except (OSError, ValueError) as e:
        print(f"penny trace: cannot read {args.file}: {e}", file=sys.stderr)
        return 2
    summ = tr.summarize(data)
    meta = summ["meta"]
    dur = meta.get("duration_ns")
    print(f"{args.file}: {len(data['traceEvents']):,} events"
          + (f", {dur / 1e6:.1f} ms recorded" if dur else "")
          + (f", {meta['workers']} workers ({meta.get('start_method')})" if "workers" in meta else "")
          + (f", {meta['dropped_events']} events dropped" if meta.get("dropped_events") else ""))
    head = ("worker", "tasks", "busy ms", "idle ms", "parked ms", "steals", "spawns")
    cells = [head] + [(w["name"], f"{w['tasks']:,}", f"{w['busy_ms']:.1f}", f"{w['idle_ms']:.1f}",
                       f"{w['parked_ms']:.1f}", f"{w['steals']:,}", f"{w['spawns']:,}")
                      for w in summ["workers"].values()]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    for c in cells:
        print("  " + "  ".join(x.rjust(wd) if i else x.ljust(wd) for i, (x, wd) in enumerate(zip(c, widths))))
    funcs = sorted(summ["functions"].items(), key=lambda kv: -kv[1]["ms"])[:10]
    if funcs:
        print("  time by function (task segments, inline children included in their parents):")
        for name, f in funcs:
            print(f"    {f['ms']:10.1f} ms  {f['segments']:8,} segments  {name}")
    if args.png:
        try:
            tr.plot_timeline(data, args.png, title=args.title)
        except Exception as e:  # noqa: BLE001 - e.g. matplotlib missing
            print(f"penny trace: no picture: {e}", file=sys.stderr)
            return 1
        print(f"timeline: {args.png}")
    return 0


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
        from penny.frontend import scheduler

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
    rows += [(name, _optional(name)) for name in
             ("greenlet", "numpy", "tqdm", "rich", "matplotlib", "joblib", "ray", "dask", "distributed")]
    try:
        from penny import config
        from penny.frontend import progress

        rows.append(("progress bars", f"{progress.backend_name()} (progress=True; PENNY_PROGRESS=tqdm|rich|text)"))
        rows.append(("trace rings", f"{config.TRACE_EVENTS:,} events per worker (Scheduler(trace_buffer=N))"))
    except Exception as e:  # noqa: BLE001
        rows.append(("progress bars", f"unavailable: {e}"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    return 0


# ---- entry point --------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="penny", description="Penny: a work-stealing parallel runtime for Python.")
    sub = ap.add_subparsers(dest="command", metavar="{demo,bench,trace,info}")

    demo = sub.add_parser("demo", help="quick start, then timed parallel jobs (primes, nested fib, shared arrays)")
    demo.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    demo.add_argument("--limit", type=int, default=500_000, help="count primes below this (default 500,000)")
    demo.add_argument("--step", type=int, default=5_000, help="numbers per task (default 5,000: ~10 ms)")
    demo.add_argument("--start-method", choices=("forkserver", "spawn", "fork"), default=None)
    demo.add_argument("--trace", metavar="PATH", help="record the timed jobs as a Chrome trace in PATH")
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="run the benchmarks, each next to its peer, and a table of ratios")
    bench.add_argument("--quick", action="store_true", help="fewer repetitions and smaller peer runs (under 2 minutes)")
    bench.add_argument("--only", metavar="KEYS",
                       help="comma-separated subset of a,b,c,d,e,f (benchmarks/core.py), fj (forkjoin.py), "
                            "joblib,ray,dask (peers.py)")
    bench.add_argument("--compare", metavar="PEERS",
                       help="peers to compare with, comma-separated (default all installed): "
                            "processpool,pool,joblib,ray,dask")
    bench.add_argument("--json", metavar="PATH", help="write every result to PATH")
    bench.add_argument("--markdown", metavar="PATH", help="write the Penny-vs-peers table to PATH")
    bench.add_argument("--plot", metavar="PATH", help="draw the Penny-vs-peers ratios into PATH (needs matplotlib)")
    bench.set_defaults(func=cmd_bench)

    trace = sub.add_parser("trace", help="summarise a Chrome trace of a scheduler and draw its timeline")
    trace.add_argument("file", help="a trace written by Scheduler(trace=PATH) or `with s.trace(PATH):`")
    trace.add_argument("--png", metavar="PATH", help="draw the per-worker timeline into PATH (needs matplotlib)")
    trace.add_argument("--title", help="title of the picture")
    trace.set_defaults(func=cmd_trace)

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
