"""penny.joblib against the real joblib and scikit-learn (CI installs both).

From the user's side: what ``Parallel`` returns (values, order, generators,
errors, n_jobs=-1), what it leaves running after an error, which scheduler it
uses, and what a nested ``Parallel`` inside a task does (stays on Penny,
spawns children, never starts a process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

joblib = pytest.importorskip("joblib")

import penny  # noqa: E402
import penny.joblib  # noqa: E402
from joblib import Parallel, delayed, parallel_config  # noqa: E402
from tests import joblib_tasks as jt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

penny.joblib.register()


@pytest.fixture(scope="module")
def sched():
    with penny.Scheduler(2) as s:
        yield s


def worker_pids(s):
    return {p.pid for p in s._supervisor.procs if p is not None}


def run_script(code: str, timeout=240):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "src")]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_import_does_not_import_joblib():
    out = run_script("import sys, json, penny.joblib; print(json.dumps('joblib' in sys.modules))")
    assert out is False


def test_register_names_the_backend():
    cls = penny.joblib.register()
    from joblib.parallel import BACKENDS

    assert BACKENDS["penny"] is cls
    assert cls is penny.joblib.PennyBackend


def test_results_in_order_on_the_workers(sched):
    with parallel_config(backend="penny", n_jobs=2):
        # Later items finish first: the order is still the items' order.
        out = Parallel()(delayed(jt.pid_square)(i, 0.002 * (20 - i)) for i in range(20))
    assert [v for _, v in out] == [i * i for i in range(20)]
    assert {p for p, _ in out} <= worker_pids(sched)


def test_many_small_items_batched(sched):
    with parallel_config(backend="penny", n_jobs=2):
        out = Parallel(batch_size="auto")(delayed(abs)(-i) for i in range(3000))
    assert out == list(range(3000))


def test_return_as_generator(sched):
    with parallel_config(backend="penny", n_jobs=2):
        gen = Parallel(return_as="generator")(delayed(jt.pid_square)(i) for i in range(30))
        assert not isinstance(gen, list)
        assert [v for _, v in gen] == [i * i for i in range(30)]
        unordered = Parallel(return_as="generator_unordered")(
            delayed(jt.pid_square)(i, 0.001 * (i % 3)) for i in range(30))
        assert sorted(v for _, v in unordered) == [i * i for i in range(30)]


def test_exception_comes_back_as_itself(sched):
    with parallel_config(backend="penny", n_jobs=2):
        with pytest.raises(ValueError, match="bad item 5"):
            Parallel()(delayed(jt.fail_at)(i, 5) for i in range(10))
        # The backend still works after an error.
        assert Parallel()(delayed(abs)(-i) for i in range(5)) == list(range(5))


def test_n_jobs_minus_one_is_every_worker():
    with penny.Scheduler(3) as s:
        with parallel_config(backend="penny", scheduler=s):
            assert joblib.effective_n_jobs(-1) == 3
            assert joblib.effective_n_jobs(-2) == 2
            assert joblib.effective_n_jobs(-5) == 1
            out = Parallel(n_jobs=-1)(delayed(jt.pid_square)(i) for i in range(12))
    assert [v for _, v in out] == [i * i for i in range(12)]
    with pytest.raises(ValueError):
        with parallel_config(backend="penny"):
            Parallel(n_jobs=0)(delayed(abs)(1) for _ in range(2))


def test_given_scheduler_is_used(sched):
    with penny.Scheduler(1) as other:
        with parallel_config(backend="penny", n_jobs=2, scheduler=sched):
            out = Parallel()(delayed(jt.pid_square)(i) for i in range(10))
        assert {p for p, _ in out} <= worker_pids(sched)
        assert not ({p for p, _ in out} & worker_pids(other))


def test_error_cancels_the_items_not_started(sched, tmp_path):
    # Item 0 fails at once; the 40 others take 0.1 s each on 2 workers (2 s in
    # all).  After the error, the queued ones are cancelled: they never run.
    with parallel_config(backend="penny", n_jobs=2):
        with pytest.raises(KeyError):
            Parallel(pre_dispatch="all", batch_size=1)(
                delayed(jt.mark_after)(i, str(tmp_path), 0.1) for i in range(41))
    time.sleep(4.0)  # longer than all of them would take
    ran = len(os.listdir(tmp_path))
    assert ran < 40, f"{ran} items ran after the error"
    # The scheduler is free again.
    assert sched.submit(abs, -3).result(timeout=60) == 3


def test_config_without_scheduler_starts_one_and_stops_it():
    out = run_script(
        "import json, gc, joblib, penny, penny.joblib\n"
        "from penny import _context\n"
        "from tests import joblib_tasks as jt\n"
        "penny.joblib.register()\n"
        "before = [s for s in _context.live if not s._closed]\n"
        "with joblib.parallel_config(backend='penny', n_jobs=3):\n"
        "    r = joblib.Parallel()(joblib.delayed(jt.pid_square)(i) for i in range(9))\n"
        "    s = _context.current_scheduler()\n"
        "    pids = [p.pid for p in s._supervisor.procs]\n"
        "    inside = (s.workers, s._closed, sorted({p for p, _ in r}) == sorted(set(pids) & {p for p, _ in r}))\n"
        "after = s._closed\n"
        "import os, time\n"
        "end = time.time() + 60\n"
        "while time.time() < end and any(os.path.exists(f'/proc/{p}') for p in pids):\n"
        "    time.sleep(0.05)\n"
        "alive = [p for p in pids if os.path.exists(f'/proc/{p}')]\n"
        "print(json.dumps([len(before), inside, after, alive, [v for _, v in r]]))\n")
    n_before, inside, after, alive, values = out
    assert n_before == 0
    assert inside == [3, False, True]
    assert after is True, "the scheduler the config started is still running after the block"
    assert alive == []
    assert values == [i * i for i in range(9)]


def test_parallel_with_backend_name_starts_one_and_stops_it():
    out = run_script(
        "import json, os, joblib, penny.joblib\n"
        "from penny import _context\n"
        "from tests import joblib_tasks as jt\n"
        "penny.joblib.register()\n"
        "r = joblib.Parallel(n_jobs=2, backend='penny')(joblib.delayed(jt.pid_square)(i) for i in range(6))\n"
        "running = [s for s in list(_context.live) if not s._closed]\n"
        "print(json.dumps([len(running), os.getpid() in {p for p, _ in r}, [v for _, v in r]]))\n")
    assert out == [0, False, [i * i for i in range(6)]]


# ---- nested Parallel inside tasks ---------------------------------------------


def descendants(pid):
    """Every process below `pid` (from /proc)."""
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def settled_spawns(s, expected, wait=10.0):
    """The spawns counted since the last stats reset, once they reach `expected`
    (a busy worker publishes its counters a little later) or after `wait` s."""
    end = time.monotonic() + wait
    while True:
        spawns = s.stats()["totals"]["spawns"]
        if spawns >= expected or time.monotonic() > end:
            return spawns
        time.sleep(0.02)


def test_three_levels_stay_on_penny_and_start_no_process():
    with penny.Scheduler(2) as s:
        with parallel_config(backend="penny", n_jobs=2, lazy=False):
            Parallel()(delayed(jt.nest)(1, 2) for _ in range(2))  # warm-up
            plain_threads = s.submit(jt.thread_count).result(timeout=60)
            baseline = descendants(os.getpid())
            seen, stop = set(), threading.Event()

            def watch():
                while not stop.is_set():
                    seen.update(descendants(os.getpid()))
                    time.sleep(0.005)

            t = threading.Thread(target=watch)
            t.start()
            s.stats(reset=True)
            try:
                # Level 1 runs in the main process, levels 2 and 3 in tasks.
                leaves = Parallel()(delayed(jt.nest)(2, 3) for _ in range(3))
            finally:
                stop.set()
                t.join()
            spawns = settled_spawns(s, 24)
            workers = worker_pids(s)
    leaves = [leaf for part in leaves for leaf in part]
    assert len(leaves) == 27
    # Every leaf ran in a Penny task under Penny's backend, below three levels of Parallel.
    # No thread was started in the workers either (as many as in a plain task).
    assert set(map(tuple, leaves)) == {("PennyBackend", 3, True, plain_threads)}
    assert seen <= baseline, f"new processes during the nested call: {seen - baseline}"
    assert len(workers) == 2 and workers <= baseline
    # The nested calls spawned their batches as children but the last one of each
    # call, which the task runs itself: 3 tasks x 2 + 9 x 2.
    assert 24 <= spawns < 36, spawns


@pytest.mark.parametrize("lazy", [False, True])
def test_nested_timeout_is_not_applied_in_tasks(lazy, sched):
    with parallel_config(backend="penny", n_jobs=2, lazy=lazy):
        assert Parallel()(delayed(jt.nested_with_timeout)(0.3) for _ in range(2)) == [[0, 1]] * 2


@pytest.mark.parametrize("lazy", [False, True])
def test_nested_fib_is_right(lazy, sched):
    with parallel_config(backend="penny", n_jobs=2, lazy=lazy):
        assert Parallel()(delayed(jt.pfib)(n) for n in (12, 14, 16)) == [jt.fib(n) for n in (12, 14, 16)]


def test_suspended_tasks_keep_their_own_joblib_config(sched):
    # joblib's active config is a threading.local, shared by a worker's fibers:
    # a task that suspends in a nested call and resumes must find its own, not
    # that of a task that ran meanwhile (whose backend object holds that
    # task's children: syncing them here fails with "a handle can only be
    # synced by the task that spawned it").  Lazy splitting runs the items of
    # an unsplit call under the current config, after earlier items may have
    # suspended: many rounds of the nested fib make the interleaving likely.
    with parallel_config(backend="penny", n_jobs=2):
        for _ in range(40):
            assert Parallel()(delayed(jt.pfib)(n) for n in (12, 14, 16, 15)) == [
                jt.fib(n) for n in (12, 14, 16, 15)]


@pytest.mark.parametrize("lazy", [False, True])
def test_nested_error_comes_back_as_itself(lazy, sched):
    with parallel_config(backend="penny", n_jobs=2, lazy=lazy):
        with pytest.raises(ValueError, match="bad item 3"):
            Parallel()(delayed(jt.nested_error)(3) for _ in range(2))
        assert Parallel()(delayed(jt.nested_error)(99) for _ in range(2)) == [list(range(8))] * 2


@pytest.mark.parametrize("lazy", [False, True])
def test_nested_generators(lazy, sched):
    with parallel_config(backend="penny", n_jobs=2, lazy=lazy):
        assert Parallel()(delayed(jt.nested_generator)(10) for _ in range(2)) == [[i * i for i in range(10)]] * 2
        # A nested generator dropped after one item: its other children are
        # synced, the task returns normally.
        assert Parallel()(delayed(jt.nested_generator_abandoned)(20) for _ in range(2)) == [0, 0]
        assert sched.submit(abs, -1).result(timeout=60) == 1


def test_nested_call_spawns_every_batch_but_the_last():
    # Cilk style: a nested call spawns its batches but the last one submitted
    # before retrieval, which the task runs itself; batches that joblib submits
    # later (from its callbacks, past pre_dispatch) are spawned too.  One worker:
    # nothing is stolen, the counts are exact.
    with penny.Scheduler(1) as s, parallel_config(backend="penny", n_jobs=2, lazy=False):
        for width in (1, 2, 3, 10):
            s.stats(reset=True)
            assert Parallel()(delayed(jt.nested_width)(width) for _ in range(1)) == [list(range(width))]
            assert settled_spawns(s, width - 1) == width - 1, width


@pytest.mark.parametrize("lazy", [False, True])
def test_nested_long_iterable_in_order_and_unordered(lazy, sched):
    with parallel_config(backend="penny", n_jobs=2, lazy=lazy):
        assert Parallel()(delayed(jt.nested_width)(50) for _ in range(2)) == [list(range(50))] * 2
        assert Parallel()(delayed(jt.nested_unordered)(30) for _ in range(2)) == [list(range(30))] * 2


def test_nested_error_stops_what_was_not_submitted(sched, tmp_path):
    # 8 one-item batches, pre_dispatch 4: batches 0-3 are submitted at once (3
    # is held back and runs first), each finished one submits the next.
    with parallel_config(backend="penny", n_jobs=2, lazy=False):
        # The held-back batch fails: the spawned ones (0-2) are still synced
        # (run), the later ones are never submitted.
        d = tmp_path / "held"
        d.mkdir()
        with pytest.raises(ValueError, match="bad item 3"):
            Parallel()(delayed(jt.nested_marks)(8, 3, str(d)) for _ in range(1))
        assert sorted(os.listdir(d)) == ["ran-0", "ran-1", "ran-2"]
        # A spawned batch fails: 3 ran first, 4 and 5 were submitted by the
        # callbacks of 3 and 0 before 1 failed; 6 and 7 never run.
        d = tmp_path / "spawned"
        d.mkdir()
        with pytest.raises(ValueError, match="bad item 1"):
            Parallel()(delayed(jt.nested_marks)(8, 1, str(d)) for _ in range(1))
        assert sorted(os.listdir(d)) == ["ran-0", "ran-2", "ran-3", "ran-4", "ran-5"]
        assert sched.submit(abs, -2).result(timeout=60) == 2


@pytest.mark.parametrize("lazy", [False, True])
def test_two_nested_generators_alive_at_once(lazy, sched):
    # Both use the one backend object of the batch's config.
    with parallel_config(backend="penny", n_jobs=2, lazy=lazy):
        assert Parallel()(delayed(jt.nested_twice_with_generators)(10) for _ in range(2)) == \
            [[list(range(10)), list(range(10))]] * 2


def test_lazy_nested_call_runs_sequentially_when_no_worker_is_idle():
    # One worker, busy with the task itself: nobody is ever idle.  With the
    # default lazy=True a nested call runs sequentially (joblib's n_jobs=1
    # path: no spawn), whether the task holds a private child or not;
    # lazy=False splits both.
    with penny.Scheduler(1) as s:
        for lazy, free, holding in ((True, 0, 0), (False, 9, 9)):
            with parallel_config(backend="penny", n_jobs=2, lazy=lazy):
                s.stats(reset=True)
                assert Parallel()(delayed(jt.nested_width)(10) for _ in range(1)) == [list(range(10))]
                assert settled_spawns(s, free) == free, lazy
                s.stats(reset=True)
                assert Parallel()(delayed(jt.nested_width_holding)(10) for _ in range(1)) == [list(range(10))]
                # + 1: the task's own child
                assert settled_spawns(s, holding + 1) == holding + 1, lazy


def test_lazy_unsplit_calls_keep_results_errors_and_generators():
    # The sequential path of a nested call (one worker, a private child held):
    # the same results, order, exception and generators as a split call.
    with penny.Scheduler(1) as s, parallel_config(backend="penny", n_jobs=2):
        s.stats(reset=True)
        assert Parallel()(delayed(jt.holding)(jt.nested_generator, 10) for _ in range(2)) == [
            [i * i for i in range(10)]] * 2
        assert Parallel()(delayed(jt.holding)(jt.nested_unordered, 12) for _ in range(1)) == [list(range(12))]
        assert Parallel()(delayed(jt.holding)(jt.nested_generator_abandoned, 20) for _ in range(1)) == [0]
        assert Parallel()(delayed(jt.holding)(jt.pfib, 14) for _ in range(1)) == [jt.fib(14)]
        with pytest.raises(ValueError, match="bad item 3"):
            Parallel()(delayed(jt.holding)(jt.nested_error, 3) for _ in range(1))
        # Only the held children were spawned: 2 + 1 + 1 + 1 + 1.
        assert settled_spawns(s, 6) == 6


def test_lazy_nested_call_is_split_for_an_idle_worker():
    # Two workers and one task (holding a private child of its own, which stays
    # private): the other worker is idle, so the nested call inside the task is
    # split (its first batch spawned) and the idle worker can take work.
    # Several tries: the idle count is a hint, read once per call.
    with penny.Scheduler(2) as s, parallel_config(backend="penny", n_jobs=2):
        assert Parallel()(delayed(abs)(-1) for _ in range(2)) == [1, 1]  # both workers started
        split = 0
        for _ in range(5):
            time.sleep(0.2)  # the other worker goes idle
            s.stats(reset=True)
            assert Parallel()(delayed(jt.nested_width_holding)(2) for _ in range(1)) == [[0, 1]]
            split += settled_spawns(s, 2, wait=2.0) - 1  # - 1: the task's own child
    assert split >= 1


def test_lazy_three_levels_stay_on_penny():
    # The default policy on the three-level program: every leaf under Penny's
    # backend in a task, one level deeper per call that was split.
    with penny.Scheduler(2), parallel_config(backend="penny", n_jobs=2):
        leaves = Parallel()(delayed(jt.nest)(2, 3) for _ in range(3))
    leaves = [leaf for part in leaves for leaf in part]
    assert len(leaves) == 27
    assert {tuple(leaf[:3]) for leaf in leaves} <= {("PennyBackend", lv, True) for lv in (1, 2, 3)}


def test_lazy_travels_to_the_nested_backend():
    cls = penny.joblib.register()
    import pickle

    for lazy in (True, False):
        b = cls(nesting_level=1, lazy=lazy)
        again = pickle.loads(pickle.dumps(b))
        assert (again.nesting_level, again.lazy) == (1, lazy)
        nested, _ = b.get_nested_backend()
        assert (nested.nesting_level, nested.lazy) == (2, lazy)
    # A fork-join state without a shared region to read the idle count from: split.
    import types

    assert penny.joblib._someone_idle(types.SimpleNamespace()) is True


# ---- scikit-learn ---------------------------------------------------------------


def test_cross_val_score_equals_serial(sched):
    sklearn = pytest.importorskip("sklearn")  # noqa: F841
    import numpy as np
    from sklearn.datasets import load_iris
    from sklearn.model_selection import cross_val_score
    from sklearn.tree import DecisionTreeClassifier

    X, y = load_iris(return_X_y=True)
    serial = cross_val_score(DecisionTreeClassifier(random_state=0), X, y, cv=5)
    with parallel_config(backend="penny"):
        par = cross_val_score(DecisionTreeClassifier(random_state=0), X, y, cv=5, n_jobs=2)
    np.testing.assert_array_equal(serial, par)


def test_grid_search_with_nested_forest_equals_serial(sched):
    pytest.importorskip("sklearn")
    import numpy as np
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import GridSearchCV

    X, y = load_iris(return_X_y=True)
    grid = {"max_depth": [1, 3, None], "n_estimators": [5, 10]}

    def search(n_jobs):
        # The forest's own n_jobs makes a nested Parallel inside each fit task.
        return GridSearchCV(RandomForestClassifier(random_state=0, n_jobs=n_jobs), grid, cv=3,
                            n_jobs=n_jobs).fit(X, y)

    serial = search(None)
    with parallel_config(backend="penny"):
        par = search(2)
    assert par.best_params_ == serial.best_params_
    np.testing.assert_array_equal(par.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(par.predict(X), serial.predict(X))
