"""The kill-point matrix: SIGKILL a worker (or the main process) right after
each named protocol step of docs/crash-model.md, under fork, forkserver and
spawn, and check what the crash model promises:

* every root task either returns its right value or raises
  `WorkerCrashedError` (when it was started and cannot be retried); no wrong
  value, no other error, no hang;
* exactly once: a task whose future returned ran to its end once, except the
  one task the kill interrupted, which may have run twice (it was retried
  after running; retries=1); no task is ever run on arguments it was not
  given (an unknown id in the effects file);
* afterwards the pool is whole again, the scheduler runs a task, every task
  record is FREE (none leaked), the sleeper count matches the parked workers,
  and no process is left behind.

Each case runs in a fresh Python process (tests/kill_tasks.py) so the kill
switch in its environment reaches the workers under every start method.  The
kill fires once (PENNY_KILL_ONCE): the test checks it did fire, so a point the
workload never passes fails instead of passing silently.

Main-process points (inject, collect) kill the driver itself: the documented
outcome is that its futures are gone with it, and that its workers exit and
its shared memory is unlinked (nothing left behind).
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import pytest

from penny import _killpoints
from tests import helpers as h
from tests import kill_tasks as kt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("fork", "forkserver", "spawn")
MAIN_POINTS = ("inject.after_commit", "collect.after_pop")
#: A worker's queue_push (its spill of a full deque, its retirement) is rare
#: in this workload: tests/test_ring_repair.py kills a process at it.
RING_POINTS = ("queue_push.claimed",)
WORKER_POINTS = tuple(p for p in _killpoints.ALL_POINTS if p not in MAIN_POINTS + RING_POINTS)

#: point -> which pass to kill at (a later pass for points every task passes,
#: so the kill lands in the middle of the work, not at the very start).
NTH = collections.defaultdict(lambda: 1, {
    "claim.after_cas": 2, "finish.after_result": 5, "settle.after_status": 5, "route.after_push": 3,
    "run_task.after_claim": 5, "run_task.after_run": 5, "spawn.after_commit": 3, "spawn.after_count": 3, "spawn.after_push": 3,
    "take_batch.after_pop": 1, "take_batch.after_mark": 1, "take_batch.after_push": 1,
    "take_injected.after_take": 1,
    "route.push_claimed": 3, "take_batch.pop_claimed": 2,
    "park.announce": 2, "park.after_wait": 2,
})


#: Which worker dies (default: the first to pass the point N times).  Worker
#: 1 at claim: a record's owner from its previous life is most often 0 (a
#: fresh table), so only a death of worker 1 shows a claim that stored its
#: owner after the CAS.
ROLE = {"claim.after_cas": "worker1"}


def _run(method, role, point, tmp_path):
    outdir = str(tmp_path)
    env = dict(os.environ)
    env["PENNY_KILL_AT"] = f"{role}:{point}:{NTH[point]}"
    env["PENNY_KILL_ONCE"] = os.path.join(outdir, "fired")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if point in GAPS:  # expected to hang or leak: 10 s shows it (a passing case takes ~1-2 s)
        env["PENNY_TEST_HANG_AFTER"] = "10"
    before = set(os.listdir("/dev/shm"))
    p = subprocess.run(
        [sys.executable, "-c", f"from tests.kill_tasks import main; main({method!r}, {outdir!r})"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=360,
    )
    return p, outdir, before


def _effects(outdir):
    c = collections.Counter()
    try:
        with open(os.path.join(outdir, "effects")) as f:
            for line in f:
                kind, tid = line.split()
                c[(kind, int(tid))] += 1
    except FileNotFoundError:
        pass
    return c


def _penny_shm_new(before):
    return [n for n in set(os.listdir("/dev/shm")) - before if "penny" in n]


#: Kill points at windows docs/crash-model.md lists as gaps (none left):
#: each case is expected to fail, strictly, so a case that
#: starts passing (a fix, or a workload that stopped reaching the point)
#: fails the suite until this list is updated.
GAPS: dict = {}


def _worker_cases():
    for point in WORKER_POINTS:
        for method in METHODS:
            marks = [pytest.mark.xfail(strict=True, reason=GAPS[point])] if point in GAPS else []
            yield pytest.param(point, method, marks=marks, id=f"{point}-{method}")


@pytest.mark.timeout(420)
@pytest.mark.parametrize("point,method", list(_worker_cases()))
def test_worker_killed_at(point, method, tmp_path):
    p, outdir, before = _run(method, ROLE.get(point, "worker"), point, tmp_path)
    detail = f"rc={p.returncode}\nstdout:{p.stdout[-2000:]}\nstderr:{p.stderr[-4000:]}"
    assert p.returncode == 0, detail
    assert os.path.exists(os.path.join(outdir, "fired")), f"the workload never passed {point}\n{detail}"
    with open(os.path.join(outdir, "result.json")) as f:
        out = json.load(f)
    res = out["results"]
    eff = _effects(outdir)
    assert not out["hung"], f"futures never resolved: {[(k, t) for k, r in res.items() for t, o in r.items() if o[0] == 'hang']}"
    # Right value or the documented error, for every task.
    for tid, (kind, v) in res["root"].items():
        assert kind in ("ok", "crashed"), (tid, kind, v)
        if kind == "ok":
            assert v == kt.root_value(int(tid)), f"root {tid} returned {v}, not {kt.root_value(int(tid))}"
    for tid, (kind, v) in res["big"].items():
        assert kind in ("ok", "crashed") and (kind != "ok" or v == "right"), (tid, kind, v)
    for tid, (kind, v) in res["tree"].items():
        assert kind in ("ok", "crashed"), (tid, kind, v)
        if kind == "ok":
            assert v == 2 ** kt.TREE_DEPTH, (tid, v)
    # Exactly once: no run on arguments nobody gave; a completed root ran
    # once, but for at most one task (the one the kill interrupted).
    roots = {int(t) for t in res["root"]} | {9999}
    stray = [k for k in eff if k[0] == "root" and k[1] not in roots]
    assert not stray, f"tasks ran on arguments they were never given: {stray}"
    twice = [t for t in roots if eff[("root", t)] > 1]
    assert len(twice) <= 1, f"root tasks run more than once: {twice}"
    for tid, (kind, _) in res["root"].items():
        assert eff[("root", int(tid))] >= (1 if kind == "ok" else 0)
    assert out["crashes"] >= 1
    # Afterwards: whole, usable, nothing leaked, nothing left.
    assert out["pool_whole"], "the supervisor did not replace the dead worker"
    assert out["usable"] == ["ok", kt.root_value(9999)]
    assert out["not_free"] == [], f"task records leaked (ref, status): {out['not_free'][:10]}"
    assert out["claimed_slots"] == {}, f"ring slots left claimed (a wedged ring): {out['claimed_slots']}"
    assert out["allocatable"] == out["capacity"], f"records off the free list: {out['capacity'] - out['allocatable']}"
    # The sleeper count is exact, except after a death between its two
    # announcement steps: one high (documented, harmless), never low.
    excess = 1 if point == "park.announce" else 0
    assert out["sleepers"][0] == excess, f"sleeper count - parked workers: {out['sleepers']}, expected {excess}"
    assert out["left_processes"] == []
    assert _penny_shm_new(before) == []


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("point", MAIN_POINTS)
def test_main_killed_at(point, method, tmp_path):
    p, outdir, before = _run(method, "main", point, tmp_path)
    assert p.returncode == -9, f"the main process was not killed at {point}: rc={p.returncode}\n{p.stderr[-3000:]}"
    assert os.path.exists(os.path.join(outdir, "fired"))
    # Its workers notice and exit; nothing is left in /dev/shm.
    import time

    end = time.monotonic() + 30
    while time.monotonic() < end and (_penny_shm_new(before) or _orphans(outdir)):
        time.sleep(0.1)
    assert _orphans(outdir) == [], "workers outlived their killed main process"
    assert _penny_shm_new(before) == []


def _orphans(outdir):
    """Live processes whose environment names this case's kill switch."""
    me = os.path.join(outdir, "fired").encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if me in f.read() and h.pid_alive(int(pid)):
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_unknown_point_is_an_error(monkeypatch):
    monkeypatch.setenv("PENNY_KILL_AT", "worker:no.such.point:1")
    with pytest.raises(ValueError, match="no kill point named"):
        _killpoints.arm("worker", 0)


def test_every_point_is_in_the_crash_model():
    with open(os.path.join(ROOT, "docs", "crash-model.md")) as f:
        text = f.read()
    missing = [p for p in _killpoints.ALL_POINTS if f"`{p}`" not in text]
    assert not missing, f"kill points not described in docs/crash-model.md: {missing}"


# ---- collect treats the completion ring's words as untrusted ----

_COLLECT_SCRIPT = r"""
import mmap
from penny import _core
from penny.shm import layout
lay = layout.Layout(workers=2, deque_capacity=8, task_capacity=8, function_slots=4, arena_size=1 << 16)
m = mmap.mmap(-1, lay.size)
s = _core.Shared(m)
layout.bind(s, lay)
s.queue_init(lay.completions, lay.task_capacity)
# Record 0 says DONE (generation 0) with an inline result count of 0.
s.store64(lay.tasks + layout.R_STATE, layout.S_DONE << 32, _core.RELEASE)
s.write_bytes(lay.tasks + layout.R_INLINE, bytes(layout.INLINE_SIZE))
for bad in (lay.task_capacity + 3, 1 << 32, 1):   # past the table, index -1, then the count-0 record
    assert s.queue_push(lay.completions, bad)
fast, slow = s.collect(16, {})
print(repr((fast, slow)))
"""


def test_collect_survives_bad_refs_and_a_zero_result_count():
    p = subprocess.run([sys.executable, "-c", _COLLECT_SCRIPT], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert p.returncode == 0, f"collect crashed: rc={p.returncode}\n{p.stderr[-2000:]}"
    # The refs naming no record are dropped; the count-0 record goes to
    # Python's path (which reports an unreadable outcome), not decoded.
    assert p.stdout.strip() == "([], [1])"


# ---- the arena's large-area lock, taken over from a holder killed in _link ----

_ARENA_SCRIPT = r"""
import os
from penny import _killpoints
from penny.shm.arena import Arena
from penny.shm.layout import Layout
from penny.shm.region import Region

r = Region.create(Layout(workers=1, deque_capacity=8, task_capacity=16, function_slots=4,
                         arena_size=1 << 16, large_size=64 << 20))
try:
    a = Arena(r.shared, r.layout, r.fd, r.map)
    BIG = 1 << 20
    x, m, y, z = (a.alloc(BIG) for _ in range(4))   # y is not next to x, nor the top
    a.free(x)                                        # x: the head of the free list
    pid = os.fork()
    if pid == 0:                                     # dies in _link(y), holding the lock
        os.environ["PENNY_KILL_AT"] = "worker:arena.in_link:1"
        _killpoints.arm("worker", 0)
        Arena(r.shared, r.layout, r.fd, r.map).free(y)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status), status
    b1 = a.alloc(BIG)
    b2 = a.alloc(BIG)
    a.put(b"1" * 10)  # the arena still works
    print("distinct" if b1 != b2 and len({b1, b2, m, z}) == 4 else f"twice: {b1} {b2} (m={m} z={z})")
finally:
    r.close()
"""


def test_arena_takeover_after_death_in_link_never_hands_an_extent_out_twice():
    p = subprocess.run([sys.executable, "-c", _ARENA_SCRIPT], cwd=ROOT, capture_output=True, text=True,
                       timeout=240, env={**os.environ, "PYTHONPATH": ROOT})
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == "distinct"


def test_every_gap_is_marked_in_the_crash_model():
    with open(os.path.join(ROOT, "docs", "crash-model.md")) as f:
        rows = {line.split("|")[1].strip().strip("`"): line for line in f if line.startswith("| `")}
    for point in GAPS:
        assert point in rows and "**Gap**" in rows[point], f"{point} is not marked as a gap in docs/crash-model.md"
    for point, row in rows.items():
        if "**Gap**" in row and point in WORKER_POINTS:
            assert point in GAPS, f"docs/crash-model.md calls {point} a gap, but the matrix expects it to pass"
