#!/usr/bin/env python
"""Nested joblib.Parallel: Penny's backend vs loky (joblib's default) vs Dask (issue 14).

    python benchmarks/joblib_nested.py [--quick] [--n 27] [--cut 17] [--workers 2] [--json out.json]

The program: ``pfib(n)`` calls ``Parallel(n_jobs=2)`` on ``pfib(n-1), pfib(n-2)``
at every level down to ``n <= cut``, where a plain recursive ``fib`` runs.  The
same program runs under each backend (``joblib.parallel_config(backend=...)``):

* serial: plain ``fib(n)``, no joblib at all (T_serial);
* penny, 1 worker: the nested program on one worker, i.e. what joblib's
  ``Parallel`` and Penny's spawn/sync cost with no parallelism:
  ``T_serial / T_1`` is the ceiling of Penny's efficiency on this machine;
* penny: ``penny.joblib`` on a Scheduler of `--workers` workers, its default
  policy (``lazy=True``): a nested call inside a task is split (its batches
  spawned as children, the last one run by the task itself) when a worker is
  idle, else joblib runs it sequentially in the task;
* penny, lazy=False: every nested call is split, whether a worker is idle or
  not (and "penny, 1 w, lazy=False" the same on one worker);
* loky: joblib's default process backend, ``n_jobs=workers`` (nested calls
  fall back to threads, then serial);
* dask: ``distributed.Client(n_workers=workers, threads_per_worker=1,
  processes=True)`` (nested calls secede);
* joblib alone: the least a backend that splits every call can do, a minimal
  backend (joblib's own base classes, each batch run in the calling thread,
  no process, no task): what joblib's batching machinery costs around the
  work.  ``T_serial / T_joblib alone`` bounds the efficiency of any backend
  that splits every call (as penny with lazy=False does), even one with free
  parallelism.

Then the cost of one small nested call, ``Parallel(n_jobs=2)`` on two items,
is measured in a loop: inside a task on one Penny worker (lazy=False: split;
lazy=True, nobody idle: not split; the task holds a private child meanwhile,
as a task deep in a recursion does), and in the main process under the minimal backend (split) and with
``n_jobs=1`` (joblib's sequential path).  Also printed: each penny row's
counters over one more run (spawns: one per nested call split into two
batches; published, steals, suspends), and the CPU time (``process_time``)
of ``fib(n)`` and of the nested program run inside one task on one worker.

Each result is checked against the serial one; the time is the best of R runs
after a warm-up.  efficiency = T_serial / (workers x T).  Target: penny >= 0.80
on 2 workers for fib(27), cut 17.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
os.environ["PYTHONPATH"] = os.pathsep.join([BENCH_DIR] + [p for p in os.environ.get("PYTHONPATH", "").split(
    os.pathsep) if p])

perf = time.perf_counter


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def pfib(n, cut):
    from joblib import Parallel, delayed

    if n <= cut:
        return fib(n)
    a, b = Parallel(n_jobs=2)(delayed(pfib)(m, cut) for m in (n - 1, n - 2))
    return a + b


def _inline_backend():
    """A joblib backend that does nothing but run each batch at once in the calling
    thread (built on joblib's own base classes, as PennyBackend is)."""
    from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase

    class Later:
        __slots__ = ("error", "func", "value")

        def __init__(self, func):
            self.func, self.value, self.error = func, None, None

        def run(self):
            try:
                self.value = self.func()
            except Exception as e:  # noqa: BLE001 - handed back by result()
                self.error = e

        def result(self, timeout=None):
            if self.error is not None:
                raise self.error
            return self.value

    class InlineBackend(AutoBatchingMixin, ParallelBackendBase):
        # Batches run in joblib's retrieval, in order, as Penny's run inside a task
        # (running them inside submit would nest every call in the one before it,
        # a deeper Python stack than the program has).
        supports_retrieve_callback = True

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.pending = collections.deque()

        def effective_n_jobs(self, n_jobs):
            return max(1, n_jobs or 1)

        def submit(self, func, callback=None):
            out = Later(func)
            self.pending.append((out, callback))
            return out

        @contextlib.contextmanager
        def retrieval_context(self):
            while self.pending:
                out, callback = self.pending.popleft()
                out.run()
                if callback is not None:
                    callback(out)
                if out.error is not None:
                    break
            yield

        def abort_everything(self, ensure_ready=True):
            self.pending.clear()

        def retrieve_result_callback(self, out):
            return out.result()

        def get_nested_backend(self):
            return InlineBackend(nesting_level=(self.nesting_level or 0) + 1), None

    return InlineBackend


def per_call(calls, n_jobs=2, hold=False):
    """Seconds per small nested call: Parallel(n_jobs) on two items, `calls` times.
    `hold` (in a Penny task): while the task holds a private child (its argument
    cannot be pickled, so it stays private), as a task deep in a recursion does."""
    from joblib import Parallel, delayed

    if hold:
        import threading

        import penny

        h = penny.spawn(bool, threading.Lock())
    t0 = perf()
    for _ in range(calls):
        Parallel(n_jobs=n_jobs)(delayed(abs)(m) for m in (1, 2))
    took = (perf() - t0) / calls
    if hold:
        penny.sync(h)
    return took


def cpu_pfib(n, cut, rounds):
    """Best CPU time (this process's, time.process_time) of pfib(n) and of fib(n),
    run here: in a task on one worker, the ratio is the ceiling with the load
    of other processes on the machine mostly taken out."""
    cpu = time.process_time
    got = {}
    for name, f in (("fib", lambda: fib(n)), ("pfib", lambda: pfib(n, cut))):
        times = []
        for _ in range(rounds + 1):
            t0 = cpu()
            f()
            times.append(cpu() - t0)
        got[name] = min(times[1:])
    return got


def counted(s, run):
    """Scheduler `s`'s counters over one more run: the nested calls split (one
    spawn each for two batches), the children given a record, steals, suspends."""
    s.stats(reset=True)
    run()
    time.sleep(0.3)  # the workers publish their counters when they go idle
    t = s.stats()["totals"]
    return {k: t[k] for k in ("spawns", "published", "steals", "suspends")}


def best(run, rounds, expect):
    run()  # warm-up: imports, worker start, function registration
    times = []
    for _ in range(rounds):
        t0 = perf()
        got = run()
        times.append(perf() - t0)
        if got != expect:
            raise SystemExit(f"joblib_nested: wrong result {got!r}, expected {expect!r}")
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fib(25), 2 rounds")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--cut", type=int, default=17)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--skip", default="", help="comma-separated rows to skip: loky,dask,lazy (penny, lazy=False)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    n = a.n if a.n is not None else (25 if a.quick else 27)
    rounds = a.rounds or (2 if a.quick else 5)
    skip = set(filter(None, a.skip.split(",")))
    w = a.workers

    import joblib

    import joblib_nested as me  # this file by its module name: workers import it by name

    import penny
    import penny.joblib

    penny.joblib.register()
    expect = fib(n)
    rows = {}

    rows["serial"] = best(lambda: me.fib(n), rounds, expect)

    def under(backend, **kw):
        def run():
            with joblib.parallel_config(backend=backend, **kw):
                return me.pfib(n, a.cut)
        return run

    counts = {}
    with penny.Scheduler(1) as s:
        rows["penny, 1 worker"] = best(under("penny"), rounds, expect)
        counts["penny, 1 worker"] = counted(s, under("penny"))
        if "lazy" not in skip:
            rows["penny, 1 w, lazy=False"] = best(under("penny", lazy=False), rounds, expect)
        with joblib.parallel_config(backend="penny"):
            cpu1 = joblib.Parallel(n_jobs=2)(joblib.delayed(me.cpu_pfib)(n, a.cut, rounds) for _ in range(1))[0]
    with penny.Scheduler(w) as s:
        rows["penny"] = best(under("penny"), rounds, expect)
        counts["penny"] = counted(s, under("penny"))
        if "lazy" not in skip:
            rows["penny, lazy=False"] = best(under("penny", lazy=False), rounds, expect)
            counts["penny, lazy=False"] = counted(s, under("penny", lazy=False))
    if "loky" not in skip:
        rows["loky"] = best(under("loky", n_jobs=w), rounds, expect)
        # loky keeps its workers for later calls, past this process's exit: stop them now.
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)
    if "dask" not in skip:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            print("dask: distributed is not installed (pip install dask distributed); its row is left out")
            skip.add("dask")
    if "dask" not in skip:
        with LocalCluster(n_workers=w, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
                Client(cl):
            rows["dask"] = best(under("dask"), rounds, expect)

    inline = _inline_backend()(nesting_level=0)
    rows["joblib alone"] = best(under(inline), rounds, expect)
    # One small nested call: in a task on one Penny worker, and under the minimal backend.
    calls = 500 if a.quick else 2000
    call_penny = {}
    with penny.Scheduler(1):
        # "--skip lazy": a penny.joblib older than the lazy policy (it splits every call).
        for lazy in (False,) if "lazy" in skip else (False, True):
            kw = {} if "lazy" in skip else {"lazy": lazy}
            with joblib.parallel_config(backend="penny", n_jobs=2, **kw):
                call_penny[lazy] = min(joblib.Parallel()(joblib.delayed(me.per_call)(calls, hold=lazy)
                                                         for _ in range(rounds)))
    with joblib.parallel_config(backend=inline):
        call_alone = min(me.per_call(calls) for _ in range(rounds))
        call_seq = min(me.per_call(calls, n_jobs=1) for _ in range(rounds))

    ts = rows["serial"]
    calls_n = _calls(n, a.cut)
    print(f"nested fib({n}), Parallel(n_jobs=2) at every level down to n <= {a.cut} "
          f"({calls_n} Parallel calls), {w} workers, best of {rounds}; os.cpu_count()={os.cpu_count()}")
    print(f"{'backend':<23}{'time (ms)':>11}{'efficiency':>12}{'vs penny':>10}")
    out = {"n": n, "cut": a.cut, "workers": w, "rounds": rounds, "parallel_calls": calls_n, "rows": {}}
    for name, t in rows.items():
        workers = 1 if name in ("serial", "penny, 1 worker", "penny, 1 w, lazy=False", "joblib alone") else w
        eff = ts / (workers * t)
        ratio = t / rows["penny"]
        print(f"{name:<23}{t * 1e3:>11.1f}{eff:>12.2f}{ratio:>9.2f}x")
        out["rows"][name] = {"seconds": t, "efficiency": eff, "time_vs_penny": ratio}
    t1 = rows["penny, 1 worker"]
    print(f"cost per nested Parallel call on one worker (T_1 - T_serial) / calls: "
          f"{(t1 - ts) / calls_n * 1e6:.0f} us; Penny's efficiency ceiling here is T_serial / T_1 = {ts / t1:.2f}")
    print(f"joblib alone (minimal backend, 1 thread): {(rows['joblib alone'] - ts) / calls_n * 1e6:.0f} us per call; "
          f"the efficiency ceiling of a backend that splits every call is T_serial / T_joblib alone = "
          f"{ts / rows['joblib alone']:.2f}")
    print(f"one Parallel(n_jobs=2) on two items, best of {rounds} x {calls}: split in a Penny task "
          f"{call_penny[False] * 1e6:.0f} us, under the minimal backend {call_alone * 1e6:.0f} us "
          f"(Penny's share {(call_penny[False] - call_alone) * 1e6:.0f} us); not split (lazy, nobody idle) "
          f"{call_penny.get(True, float('nan')) * 1e6:.0f} us, joblib's n_jobs=1 path {call_seq * 1e6:.0f} us")
    print(f"CPU time in one task on one worker (time.process_time, best of {rounds}): fib({n}) "
          f"{cpu1['fib'] * 1e3:.1f} ms, the nested program {cpu1['pfib'] * 1e3:.1f} ms: "
          f"ceiling T_serial / T_1 = {cpu1['fib'] / cpu1['pfib']:.2f}")
    out["cpu_one_worker"] = cpu1
    for name, c in counts.items():
        print(f"{name}, one more run: {c['spawns']} spawns (one per nested call split), {c['published']} published, "
              f"{c['steals']} steals, {c['suspends']} suspends")
    out["counts"] = counts
    out["per_call"] = {"penny_split_s": call_penny[False], "penny_lazy_s": call_penny.get(True),
                       "joblib_alone_s": call_alone, "joblib_n_jobs_1_s": call_seq}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


def _calls(n, cut):
    return 0 if n <= cut else 1 + _calls(n - 1, cut) + _calls(n - 2, cut)


if __name__ == "__main__":
    main()
