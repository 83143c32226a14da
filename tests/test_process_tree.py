"""The process tree: the fork server, forks of the main program and of tasks,
descriptors, and what is left when the main process dies (issue 12, items 7-12)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests import helpers as h
from tests import proc_tasks as pt

pytestmark = pytest.mark.usefixtures("no_leaked_processes")


def _wait(cond, timeout, what):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"{what} within {timeout} s")
        time.sleep(0.05)


# ---------------------------------------------------------------------------
# item 7: the fork server's death is not the workers' death
# ---------------------------------------------------------------------------
def test_killing_the_fork_server_recovers_nothing_and_runs_nothing_twice(make_sched, tmp_path):
    s = make_sched(2)
    log = tmp_path / "runs.log"
    release = tmp_path / "release"
    fut = s.submit(pt.log_and_block, str(log), str(tmp_path / "started"), str(release), 42)
    pid = int(h.wait_for_file(str(tmp_path / "started"), 60))
    workers = h.worker_pids(s)
    server = h.ppid_of(workers[0])
    assert server not in (None, os.getpid(), 1), server
    assert all(h.ppid_of(w) == server for w in workers)
    os.kill(server, signal.SIGKILL)
    h.wait_gone([server], 10)
    time.sleep(3)  # the supervisor would have "recovered" by now
    assert s._supervisor.crashes == 0, "the supervisor took the fork server's death for its workers'"
    assert all(h.pid_alive(w) for w in workers)
    assert h.worker_pids(s) == workers, "replacements were started next to live workers"
    release.write_text("")
    assert fut.result(60) == 42
    assert log.read_text().split() == [str(pid)], "the task ran more than once"
    assert list(s.map(h.square, range(200), timeout=120)) == [x * x for x in range(200)]
    # A worker that really dies is still replaced (by a new launcher).
    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    _wait(lambda: s._supervisor.crashes == 1 and victim not in h.worker_pids(s)
          and len(h.worker_pids(s)) == 2, 60, "the dead worker was not replaced")
    assert sorted(s.run(h.add, i, 1) for i in range(10)) == list(range(1, 11))
    assert list(s.map(h.square, range(50), timeout=120)) == [x * x for x in range(50)]


# ---------------------------------------------------------------------------
# item 8: os.fork() of the main program
# ---------------------------------------------------------------------------
FORK_MAIN = h.SCRIPT_PRELUDE + r"""
import penny, time
from penny import _core
from penny.shm.layout import H_SHUTDOWN
s = penny.Scheduler(2)
assert s.run(helpers.add, 1, 2) == 3
mode = sys.argv[1]
pid = os.fork()
if pid == 0:
    if mode == "submit":
        try:
            fut = s.submit(helpers.add, 2, 3)
            try:
                print("@@" + json.dumps({"tag": "child", "result": fut.result(10)}), flush=True)
            except Exception as e:
                print("@@" + json.dumps({"tag": "child", "hang": type(e).__name__}), flush=True)
        except penny.SchedulerClosedError as e:
            print("@@" + json.dumps({"tag": "child", "error": str(e)}), flush=True)
        try:
            penny.spawn(helpers.add, 1, 1)
            print("@@" + json.dumps({"tag": "spawn", "ok": True}), flush=True)
        except penny.PennyError as e:
            print("@@" + json.dumps({"tag": "spawn", "error": str(e)}), flush=True)
    sys.exit(0)  # a normal exit: atexit runs in the child
_, status = os.waitpid(pid, 0)
time.sleep(2)
report("parent", child=os.waitstatus_to_exitcode(status), crashes=s._supervisor.crashes,
       flag=s._s.load32(H_SHUTDOWN, _core.ACQUIRE), results=[s.run(helpers.add, i, i) for i in range(20)],
       mapped=list(s.map(helpers.square, range(100), timeout=60)))
s.shutdown()
report("done")
"""


@pytest.mark.parametrize("mode", ["exit", "submit"])
def test_a_fork_of_the_main_program_leaves_its_scheduler_alone(mode):
    r = subprocess.run(
        [sys.executable, "-c", FORK_MAIN, mode], capture_output=True, text=True, timeout=180,
        env=h.subprocess_env(), cwd=h.ROOT, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = h.reports(r.stdout)
    par = rep["parent"]
    assert par["child"] == 0
    assert par["crashes"] == 0 and par["flag"] == 0, par
    assert par["results"] == [2 * i for i in range(20)]
    assert par["mapped"] == [x * x for x in range(100)]
    assert "done" in rep
    if mode == "submit":
        err = rep["child"].get("error", "")
        assert "fork" in err and str(os.getpid()) not in err and "belongs to process" in err, rep["child"]
        assert "error" in rep["spawn"], rep["spawn"]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


# ---------------------------------------------------------------------------
# item 9: shutdown from a done-callback
# ---------------------------------------------------------------------------
CALLBACK_SHUTDOWN = h.SCRIPT_PRELUDE + r"""
import penny
s = penny.Scheduler(2)
slow = s.submit(helpers.sleep_return, 1.0, "slow")
fast = s.submit(helpers.sleep_return, 0.1, "fast")
fast.add_done_callback(lambda f: s.shutdown())
report("slow", value=slow.result(60))
s._torn_down.wait(60)
report("closed", closed=s._closed, torn_down=s._torn_down.is_set())
"""


CANCEL_CALLBACK_SHUTDOWN = h.SCRIPT_PRELUDE + r"""
import penny
s = penny.Scheduler(1)
running = s.submit(helpers.sleep_return, 1.0, "slow")
queued = s.submit(helpers.sleep_return, 0.0, "queued")
queued.add_done_callback(lambda f: s.shutdown())  # runs in our shutdown, which cancels it
s.shutdown(cancel_futures=True)
report("closed", closed=s._closed, torn_down=s._torn_down.is_set(), cancelled=queued.cancelled())
"""


@pytest.mark.parametrize("script", ["completed", "cancelled"])
def test_shutdown_from_a_done_callback_does_not_deadlock(script):
    t0 = time.monotonic()
    r = h.run_script(CALLBACK_SHUTDOWN if script == "completed" else CANCEL_CALLBACK_SHUTDOWN, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = h.reports(r.stdout)
    if script == "completed":
        assert rep["slow"]["value"] == "slow"  # a pending task still finished
    else:
        assert rep["closed"]["cancelled"] is True
    assert rep["closed"]["closed"] is True and rep["closed"]["torn_down"] is True, rep
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert time.monotonic() - t0 < 110


# ---------------------------------------------------------------------------
# item 10: the region is close-on-exec in every worker
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_programs_a_task_starts_do_not_hold_the_region(make_sched, method, tmp_path):
    s = make_sched(1, start_method=method)
    theirs, mine = s.run(pt.fds_of_a_program_i_start)
    assert any("memfd:penny" in x for x in mine), mine  # the worker has it ...
    assert not any("memfd:penny" in x for x in theirs), theirs  # ... the program it starts does not
    code, via_shell = s.run(pt.os_system_fds, str(tmp_path / "fds.txt"))
    assert code == 0 and via_shell
    assert not any("memfd:penny" in x for x in via_shell), via_shell


# ---------------------------------------------------------------------------
# item 11: the main process dies; nothing of Penny's stays
# ---------------------------------------------------------------------------
ORPHAN = h.SCRIPT_PRELUDE + r"""
import penny, time
from tests import proc_tasks as pt
s = penny.Scheduler(2, start_method=os.environ.get("PENNY_TEST_METHOD") or None)
s.run(helpers.add, 1, 1)
if sys.argv[1] == "gil":
    s.submit(pt.hold_the_gil, sys.argv[2])
elif sys.argv[1] == "closefds":
    s.submit(pt.close_my_fds_then, 1, 600)
if sys.argv[1] == "killlauncher":
    old = s._supervisor._launcher.pid
    os.kill(old, 9)
    end = time.time() + 60
    while s._supervisor._launcher.pid in (None, old) and time.time() < end:
        time.sleep(0.05)
    time.sleep(1)
    report("launchers", old=old, new=s._supervisor._launcher.pid)
# Every worker attached (its pid in its slice): it has armed what kills it
# with us (docs/protocols.md); one still starting up has not.
from penny.shm.layout import W_PID
end = time.time() + 60
while not all(s._s.load32(s._layout.slice(w) + W_PID, 0) for w in range(2)) and time.time() < end:
    time.sleep(0.01)
report("pids", workers=[p.pid for p in s._supervisor.procs], me=os.getpid())
time.sleep(600)
"""


def _orphan(mode, extra=(), prepare=None, method=None):
    env = h.subprocess_env()
    env["PENNY_TEST_METHOD"] = method or ""
    proc = subprocess.Popen([sys.executable, "-c", ORPHAN, mode, *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=h.ROOT)
    tree = set()
    try:
        line = ""
        while not line.startswith('@@{"workers"'):
            line = proc.stdout.readline()
            assert line, proc.stderr.read()[-3000:]
        rep = h.reports(line)["pids"]
        if prepare is not None:
            prepare(rep["workers"])
        tree = h.descendants(proc.pid)
        if mode != "killlauncher":
            assert set(rep["workers"]) <= tree
        tree |= set(rep["workers"])  # orphans of a killed launcher are not our descendants
        assert all(h.pid_alive(w) for w in rep["workers"])
        proc.kill()
        proc.wait()
        left = h.wait_gone(tree, timeout=15)
        assert not left, f"processes {left} outlived the SIGKILLed main process by 15 s: " + str(
            [open(f"/proc/{p}/cmdline", "rb").read()[:120] for p in left if h.pid_alive(p)])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        h.kill_all(tree | h.descendants(proc.pid))
        for p in tree:
            try:
                os.kill(p, signal.SIGCONT)
            except OSError:
                pass


@pytest.mark.parametrize("method", [None, "fork", "spawn"])
def test_a_stopped_worker_and_every_helper_die_with_the_main_process(method):
    def stop(workers):
        os.kill(workers[0], signal.SIGSTOP)
        _wait(lambda: h.proc_state(workers[0]) == "T", 10, "the worker did not stop")

    _orphan("idle", prepare=stop, method=method)


def test_workers_outliving_a_killed_launcher_still_die_with_the_main_process():
    """The launcher is restarted when it dies, and the new one adopts the
    workers of the old: a stopped one still dies with the main process."""
    def stop(workers):
        os.kill(workers[1], signal.SIGSTOP)
        _wait(lambda: h.proc_state(workers[1]) == "T", 10, "the worker did not stop")

    _orphan("killlauncher", prepare=stop)


def test_a_task_holding_the_gil_does_not_delay_its_workers_exit(tmp_path):
    started = tmp_path / "started"
    _orphan("gil", [str(started)], prepare=lambda w: h.wait_for_file(str(started), 60) and time.sleep(0.5))


def test_a_task_that_closes_descriptors_does_not_break_the_parent_watch(make_sched):
    s = make_sched(1)
    pid = h.worker_pids(s)[0]
    value, closed = s.run(pt.close_my_fds_then, 7, 2.0)
    assert value == 7
    assert s._supervisor.crashes == 0 and h.worker_pids(s) == [pid]
    assert s.run(h.add, 2, 2) == 4


def test_a_worker_whose_task_closed_descriptors_still_dies_with_the_main_process():
    _orphan("closefds", prepare=lambda w: time.sleep(3))


# ---------------------------------------------------------------------------
# item 12: os.fork() inside a task
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["forkserver", "fork", "spawn"])
def test_a_fork_inside_a_task_does_not_run_a_second_worker(make_sched, method):
    s = make_sched(1, start_method=method)
    worker = h.worker_pids(s)[0]
    value, child, code = s.run(pt.fork_and_return, 5)
    assert value == 5 and child != worker
    assert code == 0, f"the forked child did not leave when the task returned in it ({code})"
    assert not h.pid_alive(child)
    value, child, code = s.run(pt.fork_and_raise, 6)
    assert value == 6 and code == 1
    assert [s.run(h.add, i, 0) for i in range(30)] == list(range(30))
    assert s._supervisor.crashes == 0 and h.worker_pids(s) == [worker]


def test_without_pidfds_the_default_falls_back_to_multiprocessing_forkserver(make_sched, monkeypatch):
    from penny.runtime import launcher

    monkeypatch.setattr(launcher, "_supported", False)
    s = make_sched(2)
    assert s._supervisor._launcher is None
    assert [s.run(h.add, i, 1) for i in range(5)] == [1, 2, 3, 4, 5]
    assert s._supervisor.crashes == 0
