"""CPython's own concurrent.futures tests, run against `penny.Executor`.

    python scripts/cpython_futures_tests.py [-v] [--methods fork,forkserver,spawn] [-k PATTERN]

The suites are the interpreter's own `test.test_concurrent_futures` when it
has them; otherwise the ones of the interpreter's minor version, fetched once
from Debian's ``libpython3.X-testsuite`` package (``apt-get download`` and
``dpkg -x``, nothing installed) into a cache directory
(``$PENNY_CPYTHON_TESTS_CACHE``, default ``~/.cache/penny/cpython-tests``)
and imported under the name ``cpython_futures`` (the cache is put on
PYTHONPATH by scripts/cpython-futures-tests.sh, so worker processes under
spawn and forkserver import the tasks the suites submit by the same name).

Every process-pool test class of the suites (``ProcessPool{Fork,Forkserver,
Spawn}...Test``: executor, wait, as_completed, initializer, shutdown,
deadlock) is subclassed with ``executor_type = penny.Executor``; the thread
pool and Future classes are not run (they do not test an executor of
processes).  EXCLUDED below lists, with a reason per entry, the tests that
are not run.  Exit status 0 only if every test that runs passes.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

_CRASH = ('a worker killed (os._exit or a segfault) while it runs, unpickles or pickles is a crash that Penny recovers from (the task is retried, then fails with WorkerCrashedError; the executor goes on), where ProcessPoolExecutor breaks (BrokenProcessPool): tests/test_crash_matrix.py')

#: Tests not run, by test method name (matched in every class and start method
#: where it occurs) or ``Class.method``.  Each entry says why.
EXCLUDED = {
    # ---- on-demand spawning: ProcessPoolExecutor starts workers as tasks come,
    # Penny starts all max_workers at construction (so a count differs) --------
    "test_idle_process_reuse_one":
        "counts ProcessPoolExecutor._processes to check its on-demand spawning (3.9+): "
        "Penny starts all max_workers workers at construction",
    "test_idle_process_reuse_multiple":
        "counts _processes to check on-demand spawning: Penny starts all workers at construction",
    "test_processes_terminate":
        "counts _processes after submitting a local (unpicklable) function, expecting "
        "on-demand spawning: Penny starts all workers at construction",
    "test_saturation":
        "passes a multiprocessing Semaphore as a task argument, which can only cross to a "
        "process at its start (Penny's workers are long-lived: the submit fails with "
        "'Semaphore objects should only be shared between processes through inheritance'), "
        "then counts _processes",
    # ---- a worker's death: ProcessPoolExecutor breaks, Penny recovers ----------
    "test_killed_child":
        "kills one child and expects the whole pool broken (BrokenProcessPool); Penny "
        "recovers from a worker's death by design (the task is retried or fails with "
        "WorkerCrashedError, a replacement starts): tests/test_crash_matrix.py",
    # The deadlock suite: ProcessPoolExecutor must break (BrokenProcessPool) and not
    # hang when a worker dies or pickling fails on the way; its three tests of an
    # exception or exit inside the task itself run (and pass).
    "ExecutorDeadlockTest.test_crash_at_task_unpickle": _CRASH,
    "ExecutorDeadlockTest.test_crash_during_func_exec_on_worker": _CRASH,
    "ExecutorDeadlockTest.test_crash_during_result_pickle_on_worker": _CRASH,
    "ExecutorDeadlockTest.test_exit_at_task_unpickle": _CRASH,
    "ExecutorDeadlockTest.test_exit_during_result_unpickle_in_result_handler": _CRASH,
    "ExecutorDeadlockTest.test_shutdown_deadlock": _CRASH,
    "ExecutorDeadlockTest.test_crash_big_data": _CRASH,
    "ExecutorDeadlockTest.test_error_at_task_pickle":
        "expects the PicklingError of an argument from future.result(); Penny pickles "
        "arguments in the caller, so submit raises it (tests/test_bad_input.py)",
    "ExecutorDeadlockTest.test_error_at_task_unpickle":
        "expects BrokenProcessPool when an argument fails to unpickle in the worker; "
        "Penny checks that arguments unpickle before sending them, so the caller gets "
        "the UnpicklingError (tests/test_bad_input.py)",
    "ExecutorDeadlockTest.test_error_during_result_pickle_on_worker":
        "expects the PicklingError itself from future.result(); Penny raises "
        "penny.wire.marshal.ResultPicklingError naming the result's type, with the "
        "PicklingError as its cause (tests/test_bad_input.py)",
    "ExecutorDeadlockTest.test_error_during_result_unpickle_in_result_handler":
        "expects BrokenProcessPool when a result fails to unpickle in the main process; "
        "Penny fails that one future with the UnpicklingError (wrapped in TaskError) and "
        "goes on (tests/test_bad_input.py)",
    "ExecutorDeadlockTest.test_shutdown_deadlock_pickle":
        "reads ProcessPoolExecutor._executor_manager_thread",
    "ExecutorDeadlockTest.test_gh105829_should_not_deadlock_if_wakeup_pipe_full":
        "(3.12+) patches ProcessPoolExecutor's _ThreadWakeup pipe of its manager thread",
    # ---- cancellation: Penny cancels more ---------------------------------------
    "test_cancel_futures":
        "asserts that some of 50 queued tasks could NOT be cancelled by "
        "shutdown(cancel_futures=True) (ProcessPoolExecutor moves max_workers+1 of them "
        "to its call queue, where they are RUNNING); Penny can cancel every task no "
        "worker has claimed, which under load can be all 50. tests/test_executor.py "
        "tests that shutdown(cancel_futures=True) cancels the queued ones and runs the rest",
    # ---- threads started at construction --------------------------------------
    "test_python_finalization_error":
        "(3.12+) makes the second thread start fail, expecting ProcessPoolExecutor's "
        "lazily started threads (manager, then queue feeder at the first submit) so that "
        "map raises BrokenProcessPool; Penny starts its threads (supervisor, collector) "
        "in the constructor, so the constructor raises that RuntimeError instead, with "
        "nothing left running",
    # ---- private types --------------------------------------------------------
    "test_traceback":
        "asserts that the cause's exact type is the private "
        "concurrent.futures.process._RemoteTraceback; Penny attaches "
        "penny.errors.RemoteTraceback (same .tb, same str), and tests/test_errors.py "
        "checks that the worker's traceback is in it and in the printed traceback",
    # ---- scripts that import the executor type by its name --------------------
    "test_interpreter_shutdown":
        "runs a script 'from concurrent.futures import <executor_type.__name__>': it "
        "imports concurrent.futures.Executor (the abstract class), not penny.Executor",
    "test_hang_gh83386":
        "runs a script that imports the executor type from concurrent.futures by name",
    "test_submit_after_interpreter_shutdown":
        "runs a script that imports the executor type from concurrent.futures by name",
    "test_cancel_futures_wait_false":
        "runs a script that imports the executor type from concurrent.futures by name",
}


def _excluded(test) -> str | None:
    """The reason `test` is not run: a key is a method name, or ``Class.method``
    where Class is part of the test's class name (Penny<method><Class>)."""
    cls = type(test).__name__
    method = test.id().rsplit(".", 1)[-1]
    for key, reason in EXCLUDED.items():
        kcls, _, kmethod = key.rpartition(".")
        if kmethod == method and (not kcls or kcls in cls):
            return reason
    return None


def find_suite(cache: str):
    """The module or package of the running interpreter's concurrent.futures tests."""
    try:
        return importlib.import_module("test.test_concurrent_futures")
    except ImportError:
        pass
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    root = os.path.join(cache, ver)
    if not os.path.isdir(os.path.join(root, "cpython_futures")) and not os.path.isfile(
            os.path.join(root, "cpython_futures.py")):
        fetch(ver, root)
    if root not in sys.path:
        sys.path.insert(0, root)
    importlib.invalidate_caches()  # the folder may be new since start-up
    return importlib.import_module("cpython_futures")


def fetch(ver: str, root: str) -> None:
    pkg = f"libpython{ver}-testsuite"
    print(f"fetching {pkg} (Debian) into {root}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            subprocess.run(["apt-get", "download", pkg], cwd=tmp, check=True,
                           stdout=subprocess.DEVNULL)
        except (OSError, subprocess.CalledProcessError) as e:
            sys.exit(f"cannot fetch {pkg}: {e}; this interpreter has no test.test_concurrent_futures "
                     f"and apt has no {pkg} (try 'apt-get update')")
        deb = next(f for f in os.listdir(tmp) if f.endswith(".deb"))
        subprocess.run(["dpkg", "-x", deb, "x"], cwd=tmp, check=True)
        src = os.path.join(tmp, "x", "usr", "lib", f"python{ver}", "test")
        os.makedirs(root, exist_ok=True)
        if os.path.isdir(os.path.join(src, "test_concurrent_futures")):
            shutil.copytree(os.path.join(src, "test_concurrent_futures"), os.path.join(root, "cpython_futures"))
        else:
            shutil.copy(os.path.join(src, "test_concurrent_futures.py"), os.path.join(root, "cpython_futures.py"))


def suite_modules(pkg):
    if not hasattr(pkg, "__path__"):  # 3.8-3.11: one module
        return [pkg]
    names = ["test_executor", "test_as_completed", "test_wait", "test_init", "test_process_pool",
             "test_shutdown", "test_deadlock"]
    mods = []
    for n in names:
        try:
            mods.append(importlib.import_module(f"{pkg.__name__}.{n}"))
        except ImportError:
            pass
    return mods


#: Tests that left a penny.Executor running (never shut down): reported, then shut down.
LEFT_RUNNING: list = []


def _tear_down(self):
    """The suite's tearDown, then: an executor the test dropped without shutdown
    is shut down here.  ProcessPoolExecutor shuts down when it is collected;
    penny.Executor runs until shutdown() or interpreter exit (docs/executor.md),
    and its workers would keep multiprocessing's resource tracker, which the
    suite's module cleanup stops, waiting forever."""
    from penny import _context

    type(self).__mro__[1].tearDown(self)
    left = [s for s in list(_context.live) if not s._closed]
    if left:
        LEFT_RUNNING.append(self.id())
        for s in left:
            s.shutdown(wait=True)


def _penny_class(name: str, cls):
    """``Penny<name>``: the suite's class with penny.Executor, a global of this
    module so that what a test submits from it (a classmethod) pickles by
    name; worker processes rebuild it on import (`__getattr__`)."""
    import penny

    sub_name = "Penny" + name[len("ProcessPool"):]
    sub = globals().get(sub_name)
    if sub is None:
        sub = type(sub_name, (cls,), {"executor_type": penny.Executor, "tearDown": _tear_down,
                                      "__module__": __name__ if __name__ != "__main__" else MODULE,
                                      "__qualname__": sub_name})
        globals()[sub_name] = sub
    return sub


MODULE = "cpython_futures_tests"


def __getattr__(name: str):
    # In a worker: a Penny<...> class named by a pickle, rebuilt from the suites
    # (scripts/cpython-futures-tests.sh puts them and this folder on PYTHONPATH).
    if name.startswith("Penny"):
        for modname in ("test.test_concurrent_futures", "cpython_futures"):
            try:
                pkg = importlib.import_module(modname)
            except ImportError:
                continue
            for mod in suite_modules(pkg):
                for orig, cls in vars(mod).items():
                    if orig.startswith("ProcessPool") and "Penny" + orig[len("ProcessPool"):] == name:
                        return _penny_class(orig, cls)
    raise AttributeError(name)


_METHOD_PREFIX = {"fork": "ProcessPoolFork", "forkserver": "ProcessPoolForkserver", "spawn": "ProcessPoolSpawn"}


def penny_cases(modules, methods, pattern, exclude=True):
    import penny

    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    excluded = []
    for mod in modules:
        for name, cls in sorted(vars(mod).items()):
            if not (isinstance(cls, type) and issubclass(cls, unittest.TestCase)):
                continue
            method = None
            for m, prefix in _METHOD_PREFIX.items():
                if name.startswith(prefix) and not (m == "fork" and name.startswith("ProcessPoolForkserver")):
                    method = m
            if method is None or method not in methods:
                continue
            if getattr(cls, "executor_type", None) is None:
                continue
            sub = _penny_class(name, cls)
            for test in loader.loadTestsFromTestCase(sub):
                if pattern and not re.search(pattern, test.id()):
                    continue
                reason = _excluded(test) if exclude else None
                if reason is None:
                    suite.addTest(test)
                else:
                    excluded.append((test.id(), reason))
    return suite, excluded


def main(argv=None) -> int:
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1 <pid>: where it is stuck
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--methods", default="fork,forkserver,spawn")
    ap.add_argument("--no-exclude", action="store_true", help="run the excluded tests too")
    ap.add_argument("-k", dest="pattern", default=None, help="regex on test ids")
    ap.add_argument("--cache", default=os.environ.get("PENNY_CPYTHON_TESTS_CACHE",
                                                      os.path.expanduser("~/.cache/penny/cpython-tests")))
    args = ap.parse_args(argv)
    sys.modules[MODULE] = sys.modules[__name__]  # pickles name this module, not __main__
    pkg = find_suite(args.cache)
    print(f"suites: {getattr(pkg, '__file__', pkg)} (Python {sys.version.split()[0]})", flush=True)
    suite, excluded = penny_cases(suite_modules(pkg), args.methods.split(","), args.pattern,
                                  not args.no_exclude)
    for tid, reason in excluded:
        print(f"excluded {tid}: {reason}")
    print(f"running {suite.countTestCases()} tests, {len(excluded)} excluded", flush=True)
    result = unittest.TextTestRunner(verbosity=2 if args.verbose else 1).run(suite)
    bad = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    if result.skipped:
        for t, why in result.skipped:
            print(f"skipped by the suite itself: {t.id()}: {why}")
    for tid in LEFT_RUNNING:
        print(f"left an executor running (shut down by the runner): {tid}")
    print(f"penny.Executor vs CPython {sys.version.split()[0]} concurrent.futures tests: "
          f"{result.testsRun - bad - len(result.skipped)} passed, {bad} failed, "
          f"{len(result.skipped)} skipped by the suite, {len(excluded)} excluded")
    return 1 if bad or result.testsRun == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
