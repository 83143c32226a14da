"""Errors: raised in the caller at submit time, or carried back from a worker.

After each one the scheduler keeps working.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import subprocess
import sys
import threading
import time
import types

import pytest

import penny
from penny import (
    NotImportableError,
    PennyError,
    Scheduler,
    SchedulerClosedError,
    TaskError,
    UnknownFunctionError,
    WorkerCrashedError,
)
from penny.errors import RemoteTraceback
from tests import helpers as h

pytestmark = pytest.mark.usefixtures("no_leaked_processes")


def still_works(s):
    assert s.run(h.add, 20, 22) == 42
    assert list(s.map(h.square, range(20), chunksize=3)) == [i * i for i in range(20)]


def test_error_hierarchy():
    for cls in (NotImportableError, SchedulerClosedError, TaskError, UnknownFunctionError, WorkerCrashedError):
        assert issubclass(cls, PennyError)
    assert issubclass(UnknownFunctionError, LookupError)
    assert issubclass(NotImportableError, TypeError)
    assert issubclass(SchedulerClosedError, RuntimeError)
    assert penny.PennyError is PennyError
    for cls in (penny.ArgumentPicklingError, penny.ArgumentUnpicklingError, penny.ResultPicklingError):
        assert issubclass(cls, PennyError) and issubclass(cls, TypeError)


def test_the_pickling_errors_a_user_meets_are_penny_errors(sched):
    """Caught as PennyError (the README: every error Penny raises is one)."""
    with pytest.raises(penny.PennyError) as info:
        sched.submit(h.ident, threading.Lock())
    assert isinstance(info.value, penny.ArgumentPicklingError)
    with pytest.raises(penny.PennyError) as info:
        sched.submit(h.return_generator).result(60)
    assert isinstance(info.value, penny.ResultPicklingError)


# ---------------------------------------------------------------------------
# submit-time errors
# ---------------------------------------------------------------------------


def test_unknown_function_id(make_sched):
    s = make_sched(2, functions={1: h.add, 2: h.square})
    with pytest.raises(UnknownFunctionError) as info:
        s.new_task(99, [1, 2])
    msg = str(info.value)
    assert "99" in msg and "[1, 2]" in msg and "functions=" in msg
    with pytest.raises(UnknownFunctionError):
        s.new_task("1", [1, 2])
    assert s.new_task(1, [40, 2]).result() == 42
    still_works(s)


def test_unknown_function_id_without_a_table(sched):
    with pytest.raises(UnknownFunctionError):
        sched.new_task(1, [40, 2])
    still_works(sched)


@pytest.mark.parametrize("bad", [-1, 2**31, 1.0, True, "1"])
def test_bad_static_function_ids(bad):
    with pytest.raises(ValueError):
        Scheduler(2, functions={bad: h.add})


def test_static_table_must_hold_callables():
    with pytest.raises(TypeError):
        Scheduler(2, functions={1: 42})


def _nested_factory():
    def inner(x):
        return x

    return inner


def _closure_factory(k):
    def add_k(x):
        return x + k

    return add_k


class _Callable:
    def __call__(self, x):
        return x


ANY_CALLABLE = {
    "lambda": lambda x: x + 1,
    "nested": _nested_factory(),
    "closure": _closure_factory(1),
    "partial": functools.partial(h.add, 1),
    "callable-instance": _Callable(),
    "bound-method": h.Point(1, 2).__repr__,
}


@pytest.mark.parametrize("name", sorted(ANY_CALLABLE))
def test_any_picklable_callable_runs(sched, name):
    """What ProcessPoolExecutor takes (partials, bound methods, callable
    objects) and what it refuses (lambdas, closures, nested functions) all run."""
    fn = ANY_CALLABLE[name]
    arg = 1
    want = fn(arg) if name != "bound-method" else fn()
    if name == "bound-method":
        assert sched.submit(fn).result(60) == want
        assert sched.run(fn) == want
        return
    assert sched.submit(fn, arg).result(60) == want
    assert sched.run(fn, arg) == want
    assert list(sched.map(fn, [arg, arg])) == [want, want]
    still_works(sched)


def test_a_callable_that_cannot_be_pickled_is_refused_at_submit(sched):
    lock = threading.Lock()

    def uses_lock(x):
        with lock:
            return x

    with pytest.raises(TypeError) as info:  # ArgumentPicklingError (a TypeError): in the caller
        sched.submit(uses_lock, 1)
    assert "pickle" in str(info.value)
    still_works(sched)


def test_not_callable(sched):
    with pytest.raises(TypeError):
        sched.submit(42)
    still_works(sched)


@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_static_table_with_lambda(make_sched, method):
    """The static table travels to every worker, by value where it must."""
    s = make_sched(2, functions={7: lambda x: x * 2, 8: functools.partial(h.add, 1)}, start_method=method)
    assert s.new_task(7, [21]).result(60) == 42
    assert s.new_task(8, [41]).result(60) == 42


def test_module_only_in_the_callers_memory(make_sched):
    """A function of a module that exists only in this process's sys.modules
    (no spec: made at run time): it travels by value, so it runs under
    forkserver too."""
    mod = types.ModuleType("penny_test_dynamic_mod")
    exec("def inc(x):\n    return x + 1\n", mod.__dict__)  # noqa: S102
    sys.modules[mod.__name__] = mod
    try:
        fork = make_sched(2, start_method="fork")
        assert fork.run(mod.inc, 1) == 2
        fs = make_sched(2, start_method="forkserver")
        assert fs.run(mod.inc, 1) == 2
        still_works(fs)
    finally:
        del sys.modules[mod.__name__]


def test_interactive_main_function_under_forkserver_and_fork():
    code = h.SCRIPT_PRELUDE + """
import penny
def double(x):
    return 2 * x
with penny.Scheduler(2) as s:
    report("forkserver", value=s.run(double, 21))
    report("after", value=s.run(helpers.add, 1, 2))
with penny.Scheduler(2, start_method="fork") as s:
    report("fork", value=s.run(double, 21))
"""
    r = h.run_script(code, timeout=120)
    assert r.returncode == 0, r.stderr
    rep = h.reports(r.stdout)
    assert rep["forkserver"]["value"] == 42
    assert rep["after"]["value"] == 3
    assert rep["fork"]["value"] == 42


@pytest.mark.parametrize(
    "arg",
    [threading.Lock(), (x for x in range(3)), [1, threading.Lock()]],
    ids=["lock", "generator", "nested-lock"],
)
def test_unpicklable_argument_raises_at_submit(sched, arg):
    with pytest.raises(TypeError) as info:
        sched.submit(h.ident, arg)
    assert "pickle" in str(info.value)
    with pytest.raises(TypeError):
        sched.submit(h.kwfn, 1, c=arg)  # as a keyword argument
    still_works(sched)
    assert sched.stats()["pending"] == 0


def test_unpicklable_argument_in_new_task(make_sched):
    s = make_sched(2, functions={1: h.ident})
    with pytest.raises(TypeError):
        s.new_task(1, [threading.Lock()])
    assert s.new_task(1, [5]).result(60) == 5


def test_unpicklable_argument_raises_at_submit_even_with_a_backlog(make_sched, gate):
    """With every task record in use, submissions wait in a backlog; an
    unpicklable argument must still raise in the caller at submit time."""
    s = make_sched(2, task_capacity=16)
    blockers = [s.submit(h.block, *gate.args(i)) for i in range(2)]
    gate.wait_started(0)
    gate.wait_started(1)
    queued = [s.submit(h.square, i) for i in range(40)]  # more than the table holds
    try:
        with pytest.raises(TypeError):
            s.submit(h.ident, threading.Lock())
    finally:
        gate.release()
    assert [f.result(60) for f in queued] == [i * i for i in range(40)]
    assert all(f.result(60) for f in blockers)
    still_works(s)


def test_too_many_distinct_functions(make_sched):
    s = make_sched(2, function_slots=2)
    assert s.run(h.add, 1, 2) == 3
    assert s.run(h.square, 3) == 9
    with pytest.raises(NotImportableError, match="function_slots"):
        s.submit(h.ident, 1)
    assert s.run(h.add, 1, 2) == 3  # registered ones still run
    assert s.run(h.square, 4) == 16


def test_argument_too_big_for_the_arena(make_sched):
    s = make_sched(2, arena_size=1 << 20, arena_max=1 << 20)
    with pytest.raises(MemoryError, match="arena_max") as e:
        s.submit(h.nbytes, b"x" * (2 << 20))
    assert "bytes" in str(e.value)
    assert s.run(h.nbytes, b"x" * 1000) == 1000
    still_works(s)


def test_result_too_big_for_the_arena(make_sched):
    s = make_sched(2, arena_size=1 << 20, arena_max=1 << 20)
    with pytest.raises(MemoryError):
        s.run(h.make_bytes, 2 << 20)
    still_works(s)


def test_the_arena_grows_past_its_small_part(make_sched):
    # The same sizes with the default reservation: large blocks take extents.
    s = make_sched(2, arena_size=1 << 20)
    assert s.run(h.nbytes, b"x" * (2 << 20)) == 2 << 20
    assert len(s.run(h.make_bytes, 2 << 20)) == 2 << 20
    still_works(s)


def test_scheduler_closed(make_sched):
    s = make_sched(2, functions={1: h.add})
    fut = s.submit(h.add, 1, 2)
    assert list(s.map(h.square, range(3))) == [0, 1, 4]
    s.shutdown()
    assert fut.result() == 3
    for call in (
        lambda: s.submit(h.add, 1, 2),
        lambda: s.run(h.add, 1, 2),
        lambda: s.new_task(1, [1, 2]),
        lambda: list(s.map(h.square, range(3))),
    ):
        with pytest.raises(SchedulerClosedError) as info:
            call()
        assert "shut down" in str(info.value)
    with pytest.raises(RuntimeError):  # cf.Executor code catches RuntimeError
        s.submit(h.add, 1, 2)
    s.shutdown()  # again: no-op


def test_scheduler_closed_for_a_function_never_submitted_before(make_sched):
    """The closed check comes before the function is registered: a function
    the scheduler has not seen yet gets SchedulerClosedError too."""
    s = make_sched(2)
    s.shutdown()
    with pytest.raises(SchedulerClosedError):
        s.submit(h.square, 3)
    with pytest.raises(SchedulerClosedError):
        s.run(h.getpid)
    with pytest.raises(SchedulerClosedError):
        list(s.map(h.nbytes, [b"x"]))


def test_new_scheduler_after_a_closed_one():
    with Scheduler(2) as a:
        a.run(h.add, 1, 1)
    with pytest.raises(SchedulerClosedError):
        a.run(h.add, 1, 1)
    with Scheduler(2) as b:
        still_works(b)


# ---------------------------------------------------------------------------
# errors raised by tasks
# ---------------------------------------------------------------------------


def test_exception_type_message_and_remote_traceback(sched_any):
    s = sched_any
    with pytest.raises(ValueError, match="^kaboom$") as info:
        s.run(h.boom, "kaboom")
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    tb = str(cause)
    assert "Traceback (most recent call last)" in tb
    assert "helpers.py" in tb and "in boom" in tb and 'raise ValueError(msg)' in tb
    assert "ValueError: kaboom" in tb
    still_works(s)


def test_exception_via_future_exception(sched):
    f = sched.submit(h.raise_key, "missing")
    exc = f.exception(timeout=60)
    assert type(exc) is KeyError and exc.args == ("missing",)
    assert isinstance(exc.__cause__, RemoteTraceback)
    with pytest.raises(KeyError):
        f.result()


def test_custom_exception_keeps_its_attributes(sched):
    with pytest.raises(h.CustomError) as info:
        sched.run(h.raise_custom, "custom failure", 17)
    assert info.value.code == 17 and info.value.msg == "custom failure"
    assert "raise_custom" in str(info.value.__cause__)


def test_chained_exception_traceback_shows_both(sched):
    with pytest.raises(RuntimeError, match="outer-effect") as info:
        sched.run(h.raise_chained)
    tb = str(info.value.__cause__)
    assert "inner-cause" in tb and "outer-effect" in tb
    assert "direct cause" in tb


def test_exception_from_builtin_call(sched):
    with pytest.raises(ZeroDivisionError):
        sched.run(divmod, 1, 0)
    with pytest.raises(TypeError):
        sched.run(h.add, 1, "x")
    still_works(sched)


def test_system_exit_in_a_task_does_not_kill_the_worker(sched):
    pids = h.worker_pids(sched)
    with pytest.raises(SystemExit) as info:
        sched.run(h.raise_system_exit, 3)
    assert info.value.code == 3
    still_works(sched)
    assert h.worker_pids(sched) == pids
    assert all(h.pid_alive(p) for p in pids)
    assert sched._supervisor.crashes == 0


def test_unpicklable_exception_becomes_task_error(sched):
    with pytest.raises(TaskError) as info:
        sched.run(h.raise_unpicklable, "cannot travel")
    err = info.value
    assert "UnpicklableError" in err.remote_type
    assert "cannot travel" in str(err)
    assert "raise_unpicklable" in err.remote_traceback
    assert isinstance(err.__cause__, RemoteTraceback)
    still_works(sched)


def test_exception_that_cannot_be_rebuilt_becomes_task_error(sched):
    with pytest.raises(TaskError) as info:
        sched.run(h.raise_bad_init, "half-built")
    assert "BadInitError" in info.value.remote_type
    assert "half-built" in str(info.value)
    assert "raise_bad_init" in info.value.remote_traceback
    still_works(sched)


def test_task_error_pickles():
    import pickle

    e = TaskError("m", "mod.T", "tb text")
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.args[0], e2.remote_type, e2.remote_traceback) == ("m", "mod.T", "tb text")


def test_unpicklable_result(sched):
    with pytest.raises(TypeError) as info:
        sched.run(h.return_lock)
    assert "pickle" in str(info.value) and "return" in str(info.value) and "lock" in str(info.value)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    still_works(sched)


def test_result_that_cannot_be_unpickled_in_the_caller(sched):
    with pytest.raises(TaskError) as info:
        sched.run(h.return_unloadable)
    assert "cannot be rebuilt" in str(info.value)
    still_works(sched)


def test_result_timeout(sched, gate):
    f = sched.submit(h.block, *gate.args(0, value="late"))
    gate.wait_started(0)
    with pytest.raises(cf.TimeoutError):
        f.result(timeout=0.05)
    # cf.TimeoutError is the builtin TimeoutError from 3.11 on.
    with pytest.raises(TimeoutError if sys.version_info >= (3, 11) else cf.TimeoutError):
        f.result(timeout=0)
    with pytest.raises(cf.TimeoutError):
        f.exception(timeout=0.01)
    assert not f.done() and not f.cancelled()
    still_works(sched)  # the other worker keeps going
    gate.release()
    assert f.result(60)[1] == "late"


def test_map_timeout(sched, gate):
    it = sched.map(h.block, *zip(gate.args(0)), timeout=0.2)
    with pytest.raises(cf.TimeoutError):
        next(it)
    gate.release()
    still_works(sched)


def test_map_reraises_the_first_failure_in_order(sched):
    it = sched.map(h.fail_if, range(100), [37] * 100, chunksize=5)
    got = []
    with pytest.raises(ValueError, match="bad item 37"):
        for x in it:
            got.append(x)  # noqa: PERF402 - keep what came before the failure
    assert got == [i * 10 for i in range(37)]  # every item before the failing one (docs/executor.md)
    still_works(sched)


def test_cancelled_future_result(sched, gate):
    blockers = [sched.submit(h.block, *gate.args(i)) for i in range(2)]
    gate.wait_started(0)
    gate.wait_started(1)
    f = sched.submit(h.add, 1, 2)
    assert f.cancel()
    with pytest.raises(cf.CancelledError):
        f.result()
    with pytest.raises(cf.CancelledError):
        f.exception()
    gate.release()
    for b in blockers:
        b.result(60)
    still_works(sched)


def test_worker_exit_during_task_gives_worker_crashed_error(make_sched):
    s = make_sched(2, retries=0)
    with pytest.raises(WorkerCrashedError) as info:
        s.run(h.exit_now, 7)
    assert "exited with code 7" in str(info.value)
    assert "retries" in str(info.value)
    still_works(s)
    assert s._supervisor.crashes == 1


def test_worker_exit_is_retried_then_reported(make_sched):
    s = make_sched(2)  # retries=1: started twice, then reported
    with pytest.raises(WorkerCrashedError, match="2 time"):
        s.run(h.exit_now, 3)
    assert s._supervisor.crashes == 2
    still_works(s)
    # the pool is whole again (the replacement may start just after the error is reported)
    end = time.monotonic() + 60
    while len([p for p in h.worker_pids(s) if h.pid_alive(p)]) != 2 and time.monotonic() < end:
        time.sleep(0.05)
    assert len([p for p in h.worker_pids(s) if h.pid_alive(p)]) == 2


def test_many_crashes_do_not_break_the_scheduler(make_sched):
    s = make_sched(2, retries=0)
    futs = [s.submit(h.exit_now, 1) for _ in range(5)]
    for f in futs:
        with pytest.raises(WorkerCrashedError):
            f.result(120)
    still_works(s)
    assert s.stats()["pending"] == 0


BROKEN_SCRIPT = h.SCRIPT_PRELUDE + """
import time
import penny
# the workers cannot unpickle their static table: each dies before it attaches
s = penny.Scheduler(2, functions={1: helpers.UnloadableCallable()}, start_method="forkserver")
f = s.submit(helpers.add, 1, 2)
try:
    f.result(timeout=60)
except penny.WorkerCrashedError as e:
    report("failed", error=str(e))
try:
    s.submit(helpers.add, 1, 2)
except penny.SchedulerClosedError as e:
    report("refused", error=str(e))
t0 = os.times()
time.sleep(1.0)
t1 = os.times()
report("idle", cpu=(t1.user + t1.system) - (t0.user + t0.system))
t = time.monotonic()
s.shutdown()
report("shutdown", seconds=time.monotonic() - t)
"""


def test_broken_scheduler_fails_futures_and_still_shuts_down():
    """Workers that keep dying before they attach mark the scheduler broken:
    pending futures fail, submissions are refused, the process does not spin,
    and shutdown() returns."""
    try:
        out = h.run_script(BROKEN_SCRIPT, timeout=15).stdout
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    rep = h.reports(out)
    assert "keep dying" in rep["failed"]["error"]
    assert "broken" in rep["refused"]["error"]
    problems = []
    if rep["idle"]["cpu"] > 0.3:
        problems.append(f"the broken scheduler burnt {rep['idle']['cpu']:.2f} s of CPU in 1 s of idleness")
    if "shutdown" not in rep:
        problems.append("shutdown() did not return (the script was killed after 15 s)")
    assert not problems, problems


CALLBACK_SCRIPT = h.SCRIPT_PRELUDE + """
import threading
import time
import penny
gate_dir = sys.argv[1]
tree = set()

def case(mode):
    d = os.path.join(gate_dir, mode)
    os.makedirs(d)
    release = os.path.join(d, "release")
    s = penny.Scheduler(2, task_capacity=16)  # a small table: most submissions wait in the backlog
    tree.update(helpers.worker_pids(s))
    blockers = [s.submit(helpers.block, os.path.join(d, f"s{i}"), release, 60.0) for i in range(2)]
    for i in range(2):
        helpers.wait_for_file(os.path.join(d, f"s{i}"))
    queued = [s.submit(helpers.square, i) for i in range(40)]
    if mode == "cancel-sibling":
        queued[30].add_done_callback(lambda f: queued[31].cancel())
    else:
        queued[30].add_done_callback(lambda f: s.submit(helpers.add, 1, 2))
    t = threading.Thread(target=queued[30].cancel, daemon=True)
    t.start()
    t.join(3)
    ok = not t.is_alive()
    open(release, "w").close()
    if ok:
        assert [f.result(60) for f in queued[:30]] == [i * i for i in range(30)]
        s.shutdown()
    else:
        stuck.append(s)
    report(mode, ok=ok)

stuck = []
case("cancel-sibling")
case("submit")
report("tree", pids=sorted(tree))
# A deadlocked scheduler would block the exit handlers: stop its workers
# (telling the supervisor not to replace them) and leave.
for s in stuck:
    with s._supervisor._lock:
        s._supervisor._stopping = True
    for p in s._supervisor.procs:
        p.kill()
    for p in s._supervisor.procs:
        p.join(10)
sys.stdout.flush()
os._exit(0)
"""


def test_done_callbacks_may_cancel_or_submit(tmp_path):
    """A done-callback runs when a backlogged future is cancelled; it may
    cancel a sibling future or submit a follow-up task (common patterns)
    without deadlocking on the scheduler's internal lock."""
    r = h.run_script(CALLBACK_SCRIPT.replace("sys.argv[1]", repr(str(tmp_path))), timeout=60)
    rep = h.reports(r.stdout)
    pids = rep.get("tree", {}).get("pids", [])
    try:
        assert r.returncode == 0, r.stderr
        deadlocked = [m for m in ("cancel-sibling", "submit") if not rep[m]["ok"]]
        assert not deadlocked, f"cancel() deadlocked when its callback did: {deadlocked}"
    finally:
        assert not h.wait_gone(pids, timeout=10)


@pytest.mark.parametrize("oom_rose, says_oom", [(True, True), (False, False)], ids=["oom", "plain-kill"])
def test_a_worker_sigkilled_while_the_oom_count_rose_says_so(make_sched, tmp_path, monkeypatch, oom_rose, says_oom):
    """A SIGKILL of a worker whose death comes with a rise of the kernel's OOM
    kill count is reported as probably the OOM killer; a plain SIGKILL is not.
    (The count is the kernel's; here the supervisor reads a stand-in, since a
    test cannot make the kernel kill a process for memory safely.)"""
    import os
    import signal

    from penny.runtime import supervisor

    count = [5]
    monkeypatch.setattr(supervisor, "oom_kills", lambda: count[0])
    s = make_sched(2, retries=0)
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    fut = s.submit(h.block, started, release)
    pid = int(h.wait_for_file(started))
    if oom_rose:
        count[0] += 1
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashedError) as info:
        fut.result(120)
    assert ("OOM killer" in str(info.value)) is says_oom, str(info.value)
    assert "SIGKILL" in str(info.value)
    still_works(s)
