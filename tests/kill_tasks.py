"""Tasks and the driver of the kill-point matrix (tests/test_kill_points.py).

``python -m tests.kill_tasks METHOD OUTDIR`` runs one scheduler (2 workers,
start method METHOD, retries=1) through every kind of work the crash model
covers, in a fresh process, so that PENNY_KILL_AT and PENNY_KILL_ONCE (set
by the test) reach every worker under fork, forkserver and spawn alike:

* roots:  `effect` tasks with inline arguments (inject, take_batch, claim,
  finish, collect);
* big:    `effect_big` tasks whose argument and result are pickled in the
  arena's large area (finish_slow, arena lock/link);
* tree:   nested spawn/sync (`tree`: spawn, pop_child, suspend, resume);
* idle:   a pause so every worker parks, then more roots (park/unpark).

Every task's side effect is one line ``KIND TID`` appended (O_APPEND, one
write) to OUTDIR/effects *before* it returns, so the number of runs of each
task is counted from the outside.  The driver writes OUTDIR/result.json:
each future's outcome, whether the pool got whole again, whether the
scheduler still runs a task, which records were not FREE once everything
settled, and the sleeper count against the parked workers.
"""

from __future__ import annotations

import json
import os
import sys
import time

N_ROOTS = 24
N_BIG = 3
N_TREES = 4
TREE_DEPTH = 5
EXTRA_TREES = 12
LEAF_SLEEP = 0.003  # leaves take a while: children are stolen and parents suspend in sync
BIG = 300 << 10  # > config.LARGE_BLOCK: the large area


def _note(kind: str, tid: int) -> None:
    path = os.path.join(os.environ["PENNY_KP_DIR"], "effects")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, f"{kind} {tid}\n".encode())
    finally:
        os.close(fd)


def effect(tid, a=0, b=0, c=0):
    """Counts a run of root task `tid`; its value depends on every argument
    (a retry on corrupted arguments returns a different one)."""
    _note("root", tid)
    return tid * 1000 + a * 100 + b * 10 + c


def root_value(tid):
    return tid * 1000 + 123


def effect_big(tid, data):
    _note("big", tid)
    return data[:16] + bytes([tid]) * BIG


def big_value(tid):
    data = bytes([tid + 7]) * BIG
    return data[:16] + bytes([tid]) * BIG


def tree(tid, depth, path=0, pad=None):
    """A binary tree of spawned children; each leaf counts a run; returns the
    number of leaves (2 ** depth).  With `pad` (bytes too big for the inline
    area) every child's arguments are pickled (spawn_slow)."""
    import penny

    if depth == 0:
        _note("leaf", tid * 10000 + path)
        time.sleep(LEAF_SLEEP)
        return 1
    x = penny.spawn(tree, tid, depth - 1, 2 * path, pad)
    y = penny.spawn(tree, tid, depth - 1, 2 * path + 1, pad)
    return penny.sync(x) + penny.sync(y)


HANG_AFTER = float(os.environ.get("PENNY_TEST_HANG_AFTER", "40"))  # s for all of a case's futures: then "hang"
_deadline = [0.0]


def _outcome(fut, timeout=None):
    from concurrent.futures import TimeoutError as FutureTimeout

    from penny import WorkerCrashedError

    try:
        return ["ok", fut.result(max(0.1, _deadline[0] - time.monotonic()))]
    except FutureTimeout:
        return ["hang", "not resolved within the case's deadline"]
    except WorkerCrashedError as e:
        return ["crashed", str(e)]
    except BaseException as e:  # noqa: BLE001 - reported, the test judges
        return ["error", f"{type(e).__name__}: {e}"]


def _live(sched):
    from tests import helpers as h

    return [pid for pid in h.worker_pids(sched) if h.pid_alive(pid)]


def _not_free(sched):
    from penny.shm.layout import S_FREE

    t = sched._tasks
    return [(ref, st) for ref, st in (t.ref_at(i) for i in range(t.capacity)) if st != S_FREE]


def _sleepers_excess(sched):
    """The sleeper count minus the workers whose parking word is not AWAKE,
    once every worker is parked (both unchanged over five samples), within
    10 s; [excess, (count, parked)] or [None, last sample]."""
    from penny import _core
    from penny.shm.layout import H_SLEEPERS

    s, lay = sched._s, sched._layout
    end = time.monotonic() + 10
    seen = None
    while time.monotonic() < end:
        samples = []
        for _ in range(5):
            n = s.load32(H_SLEEPERS, _core.SEQ_CST)
            parked = sum(s.load32(lay.state(w), _core.SEQ_CST) != _core.AWAKE for w in range(lay.workers))
            samples.append((n, parked))
            time.sleep(0.01)
        seen = samples[-1]
        if len(set(samples)) == 1 and seen[1] == lay.workers:
            n = seen[0] if seen[0] < 1 << 31 else seen[0] - (1 << 32)
            return [n - seen[1], seen]
        time.sleep(0.05)
    return [None, seen]


def main(method: str, outdir: str) -> None:
    import penny
    from tests import helpers as h

    os.environ["PENNY_KP_DIR"] = outdir
    timeout = None
    out: dict = {"method": method}
    sched = penny.Scheduler(2, start_method=method, retries=1)
    _deadline[0] = time.monotonic() + HANG_AFTER
    pids = set(h.worker_pids(sched))
    try:
        roots = {tid: sched.submit(effect, tid, 1, 2, 3) for tid in range(N_ROOTS)}
        bigs = {tid: sched.submit(effect_big, tid, bytes([tid + 7]) * BIG) for tid in range(N_BIG)}
        res = {
            "root": {t: _outcome(f, timeout) for t, f in roots.items()},
            "big": {t: _outcome(f, timeout) for t, f in bigs.items()},
            "tree": {},
        }
        # One tree at a time: the other worker is idle, so children are
        # published (spawn), stolen, popped back (pop_child), and parents
        # suspend in sync and resume.
        # A point only a stolen child reaches (suspend, token_give) depends on
        # timing: under load the thief may wake too late for all four trees,
        # so more trees run (up to EXTRA_TREES) until the point has fired.
        fired = os.environ.get("PENNY_KILL_ONCE")
        tid = 0
        while tid < N_TREES or (tid < N_TREES + EXTRA_TREES and fired and not os.path.exists(fired)):
            f = sched.submit(tree, tid, TREE_DEPTH, 0, b"p" * 200 if tid % 2 else None)
            res["tree"][tid] = _outcome(f, timeout)
            tid += 1
        time.sleep(1.0)  # every worker parks
        late = {tid: sched.submit(effect, tid, 1, 2, 3) for tid in range(N_ROOTS, N_ROOTS + 4)}
        res["root"].update({t: _outcome(f, timeout) for t, f in late.items()})
        # Values compared here (bytes do not go into JSON).
        for t, o in res["big"].items():
            if o[0] == "ok":
                o[1] = "right" if o[1] == big_value(t) else "WRONG"
        out["results"] = res
        out["hung"] = hung = any(o[0] == "hang" for r in res.values() for o in r.values())
        if hung:  # the test fails on it; the checks below would only wait longer
            return
        end = time.monotonic() + 60
        while len(_live(sched)) < sched.workers and time.monotonic() < end:
            time.sleep(0.05)
        out["pool_whole"] = len(_live(sched)) == sched.workers
        pids.update(h.worker_pids(sched))
        _deadline[0] = time.monotonic() + 30
        out["usable"] = _outcome(sched.submit(effect, 9999, 1, 2, 3))
        end = time.monotonic() + 15
        while _not_free(sched) and time.monotonic() < end:
            time.sleep(0.05)
        out["not_free"] = _not_free(sched)
        out["claimed_slots"] = h.claimed_ring_slots(sched)
        # Every record can be taken from the free list again (a record taken
        # and never committed looks FREE but is off the list: leaked too).
        t = sched._tasks
        taken = []
        while len(taken) <= t.capacity and (r := t.alloc()):
            taken.append(r)
        out["allocatable"], out["capacity"] = len(taken), t.capacity
        for r in taken:
            t.free(r)
        out["sleepers"] = _sleepers_excess(sched)
        out["crashes"] = sched._supervisor.crashes
        pids.update(h.worker_pids(sched))
    finally:
        hung = out.get("hung", True)
        sched.shutdown(wait=not hung, cancel_futures=hung)
        pids.update(h.worker_pids(sched))
        left = h.wait_gone(pids, timeout=20)
        h.kill_all(left)
        out["left_processes"] = left
        with open(os.path.join(outdir, "result.json"), "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
