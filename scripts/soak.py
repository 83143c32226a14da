#!/usr/bin/env python3
"""Exactly-once soak: a random nested workload while worker processes are SIGKILLed.

    python3 scripts/soak.py --minutes N [--workers W] [--kill-interval S] [--seed X]
    python3 scripts/soak.py --quick          # about 20 s, for CI
    python3 scripts/soak.py --minutes 10 --kill-points repaired   # also die at named points

With ``--kill-points`` every worker process (replacements included) also
arms one named kill point (docs/crash-model.md, penny/_killpoints.py) chosen
at random from the list, and dies at a random pass of it (1..--kill-pass);
each such death is logged by the dying process (PENNY_KILL_LOG) with its
time, and counts as a kill for the checks below, like the killer thread's.
``repaired`` names the points the crash model says are repaired; ``all``
every worker point (the gaps included: expect violations).

For N minutes the main process keeps a window of top-level tasks in flight:
random task trees (each node spins a little, then spawns its children with
``penny.spawn`` and syncs them, one handle at a time or with ``penny.sync()``,
down to a random depth) and flat tasks (a single node).  Meanwhile a killer
thread SIGKILLs a random live worker every S seconds (jittered).  It finds
worker pids by reading ``Scheduler._supervisor.procs`` (read only: it never
polls or joins the Process objects, which would reap them).

Every node has a unique id.  Its first action is to append one 8-byte record
``(id, pid)`` to a shared log file opened with O_APPEND: one ``write`` of 8
bytes, so a record is either all there or not there, whatever kills the
process.  At the end the log gives, for every id, how many times that node
started and in which processes.

Checks (any violation: exit status 1):

* every top-level future resolves before the deadline (``lost`` must be 0);
* a future that succeeded returns the right value (node count and id sum of
  its tree) and every node of its tree ran at least once;
* a future that failed raised `WorkerCrashedError`, and its tree was
  *touched* by a kill: one of its nodes ran in a worker that the killer
  killed before the future resolved (or, when no node of it recorded a run
  there, a kill happened while the future was pending); any other exception
  is a violation;
* no node ran more often than allowed: ``runs(root) <= 1 + retries`` and
  ``runs(child) <= (1 + retries) * runs(parent)`` (a retried parent spawns its
  children again, so their effects repeat with it);
* every node of a successful tree that no kill touched ran exactly once;
* once every future resolved, every task record is FREE again (none leaked)
  and no ring slot is left claimed (none wedged);
* after shutdown no worker process (any pid ever seen, replacements
  included) and no shared-memory descriptor or /dev/shm entry is left.

The last line printed is a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import json
import os
import re
import random
import signal
import struct
import sys
import tempfile
import threading
import time

try:
    import penny
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
    import penny

RECORD = struct.Struct("<II")  # (node id, pid)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def claimed_ring_slots(sched) -> dict:
    """tests/helpers.py's: {ring: claimed slots} (a claim a dead worker left
    and the supervisor did not finish wedges its ring)."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from tests.helpers import claimed_ring_slots as scan

    return scan(sched)

# ---------------------------------------------------------------------------
# the workload (runs in workers: module-level functions, importable by name)
# ---------------------------------------------------------------------------

_log_fds: dict = {}


def record_run(node_id: int, log_path: str) -> None:
    """Append (id, pid) to the log: one 8-byte O_APPEND write, all or nothing."""
    fd = _log_fds.get(log_path)
    if fd is None:
        fd = _log_fds[log_path] = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, RECORD.pack(node_id, os.getpid()))


def spin(micros: int) -> None:
    end = time.perf_counter() + micros * 1e-6
    while time.perf_counter() < end:
        pass


def node_task(node, log_path):
    """node = (id, spin_us, sync_all, children).  Returns (nodes, id sum) of the subtree."""
    node_id, spin_us, sync_all, children = node
    record_run(node_id, log_path)
    spin(spin_us)
    handles = [penny.spawn(node_task, child, log_path) for child in children]
    count, total = 1, node_id
    if sync_all:
        penny.sync()  # every child at once; their results are then read from the handles
    for h in handles:
        c, t = penny.sync(h)
        count += c
        total += t
    return count, total


# ---------------------------------------------------------------------------
# the main process
# ---------------------------------------------------------------------------


class Trees:
    """Random trees with unique node ids; parent links kept for the checks."""

    def __init__(self, rng: random.Random, max_depth: int, max_nodes: int):
        self.rng = rng
        self.max_depth = max_depth
        self.max_nodes = max_nodes
        self.next_id = 1
        self.parent: dict[int, int] = {}  # id -> parent id (0 for a root)
        self.members: dict[int, list[int]] = {}  # root id -> ids of its tree

    def make(self, flat: bool):
        budget = [1 if flat else self.rng.randint(1, self.max_nodes)]
        root = self._node(0, 0, budget, flat)
        ids = []
        stack = [root]
        while stack:
            n = stack.pop()
            ids.append(n[0])
            stack.extend(n[3])
        self.members[root[0]] = ids
        count, total = len(ids), sum(ids)
        return root, (count, total)

    def _node(self, parent_id: int, depth: int, budget: list, flat: bool):
        rng = self.rng
        node_id = self.next_id
        self.next_id += 1
        self.parent[node_id] = parent_id
        budget[0] -= 1
        children = []
        if not flat and depth < self.max_depth:
            fan = rng.choice((0, 1, 2, 2, 3, 3, 4)) if depth < 2 else rng.choice((0, 0, 1, 2, 3))
            for _ in range(fan):
                if budget[0] <= 0:
                    break
                children.append(self._node(node_id, depth + 1, budget, flat))
        spin_us = rng.choice((0, 50, 200, 500, 1000, 2000))
        return (node_id, spin_us, rng.random() < 0.3, tuple(children))


class Killer(threading.Thread):
    """SIGKILLs a random live worker every `interval` seconds (jittered); with
    `fork_server`, every third kill goes to the worker launcher instead."""

    def __init__(self, sched, interval: float, rng: random.Random, fork_server: bool = False):
        super().__init__(name="soak-killer", daemon=True)
        self.sched = sched
        self.interval = interval
        self.rng = rng
        self.stop_event = threading.Event()
        self.killed: list[tuple[float, int]] = []  # (monotonic time, pid) of workers
        self.launchers_killed: list[tuple[float, int]] = []
        self.fork_server = fork_server
        self.seen: set[int] = set()

    def observe(self) -> list:
        procs = [p for p in list(self.sched._supervisor.procs) if p is not None]
        for p in procs:
            if p.pid:
                self.seen.add(p.pid)
        return procs

    def run(self) -> None:
        while not self.stop_event.wait(self.interval * self.rng.uniform(0.5, 1.5)):
            if self.fork_server and self.rng.random() < 1 / 3:
                self.kill_launcher()
                continue
            procs = self.observe()
            if not procs:
                continue
            p = self.rng.choice(procs)
            # Still the same Process object after the pidfd is open: the
            # pidfd names that worker, not a reuse of its pid.
            t = sigkill_if(p.pid, lambda p=p: any(q is p for q in self.sched._supervisor.procs))
            if t is not None:
                self.killed.append((t, p.pid))

    def kill_launcher(self) -> None:
        """SIGKILL the worker launcher: its workers live on, none of their
        tasks may fail or run twice for it (docs/crash-model.md, the process
        tree), and the next worker start gets a new launcher."""
        pid = launcher_pid(self.sched)
        if pid is None:
            return
        # Restarted meanwhile: the pidfd may name another process.
        t = sigkill_if(pid, lambda: launcher_pid(self.sched) == pid)
        if t is not None:
            self.launchers_killed.append((t, pid))


def sigkill_if(pid: int, still_ours):
    """SIGKILL `pid` through a pidfd if `still_ours()` holds once the pidfd is
    open (so the signal cannot reach a process that reused the pid); the
    monotonic time of the kill, or None."""
    try:
        fd = os.pidfd_open(pid)
    except (OSError, TypeError):
        return None  # already gone
    try:
        if not still_ours():
            return None
        t = time.monotonic()
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        return t
    except ProcessLookupError:
        return None
    finally:
        os.close(fd)


def dump_records(sched, lost_nodes: set, log_path: str) -> None:
    """Diagnostics for lost futures: every task record that is not free (internal layout)."""
    try:
        from penny.shm import layout as L

        s, tasks = sched._s, sched._tasks
        runs, pids, _ = read_log(log_path)
        print(f"DIAG: records not free (lost nodes ran: "
              f"{ {n: sorted(pids[n]) for n in sorted(lost_nodes) if n in pids} }):", flush=True)
        for i in range(sched._layout.task_capacity):
            rec = tasks.base + i * L.RECORD_SIZE
            word = s.load64(rec + L.R_STATE, 2)
            if word >> 32 == L.S_FREE:
                continue
            print(f"DIAG:   record {i} ref {L.make_ref(i, word & 0x7FFFFFFF):#x} "
                  f"{L.STATUS_NAMES.get(word >> 32, word >> 32)} owner {s.load32(rec + L.R_OWNER, 0)} "
                  f"join {s.load32(rec + L.R_JOIN, 0)} flags {s.load32(rec + L.R_FLAGS, 0):#x} "
                  f"attempts {s.load32(rec + L.R_ATTEMPTS, 0)} parent {s.load64(rec + L.R_PARENT, 0):#x}", flush=True)
        print(f"DIAG: worker pids now {[p.pid for p in sched._supervisor.procs if p is not None]}", flush=True)
    except Exception as e:  # noqa: BLE001 - diagnostics only
        print(f"DIAG: could not dump the records: {e!r}", flush=True)


#: Worker kill points whose windows the crash model says are repaired: every
#: worker point but settle.after_status (repaired for root tasks only: a
#: child killed there never counts itself finished on its parent, a window
#: docs/crash-model.md lists as left).
REPAIRED_POINTS = (
    "claim.after_cas", "finish.after_result", "route.after_push",
    "spawn.after_commit", "spawn.after_count", "spawn.after_push",
    "take_batch.after_pop", "take_batch.after_mark", "take_batch.after_push", "take_injected.after_take",
    "pop_child.after_take", "token_give.after_give",
    "run_task.after_claim", "run_task.after_run", "spawn_slow.after_alloc", "spawn_slow.after_encode",
    "finish_slow.after_consumed", "finish_slow.after_result", "park.announce", "park.after_wait",
    "suspend.after_give", "resume.after_take", "arena.after_lock", "arena.in_link",
    "route.push_claimed", "post.push_claimed", "queue_push.claimed",
    "take_batch.pop_claimed", "take_batch.after_record", "inbox.pop_claimed",
)


def launcher_pid(sched):
    """The pid of the worker launcher (the fork server of Penny's default
    start method), or None (another start method, or between restarts)."""
    launcher = getattr(sched._supervisor, "_launcher", None)
    return None if launcher is None else launcher.pid


def read_kill_log(path: str) -> list:
    """(monotonic time, pid, point) of every death at a kill point."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    out.append((float(parts[1]), int(parts[0]), parts[2]))
    except FileNotFoundError:
        pass
    return out


def not_free_records(sched) -> list:
    from penny.shm import layout as L

    t = sched._tasks
    return [ref for ref, st in (t.ref_at(i) for i in range(t.capacity)) if st != L.S_FREE]


def read_log(path: str):
    with open(path, "rb") as f:
        data = f.read()
    runs: collections.Counter = collections.Counter()
    pids: dict[int, set] = collections.defaultdict(set)
    torn = len(data) % RECORD.size
    for node_id, pid in RECORD.iter_unpack(data[: len(data) - torn]):
        runs[node_id] += 1
        pids[node_id].add(pid)
    return runs, pids, torn


def memfd_fds() -> list[str]:
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if "penny" in target and "memfd" in target:
            out.append(target)
    return out


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=1.0, help="how long to submit work (default 1)")
    ap.add_argument("--quick", action="store_true", help="about 20 s in all (CI): --minutes 0.25")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--kill-interval", type=float, default=None,
                    help="seconds between kills, jittered x0.5..1.5 (default 2, or 1 with --quick); 0: no kills")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock, printed)")
    ap.add_argument("--retries", type=int, default=1, help="Scheduler(retries=) (default 1)")
    ap.add_argument("--start-method", default=None, help="fork, forkserver or spawn (default: Penny's)")
    ap.add_argument("--inflight", type=int, default=None,
                    help="top-level tasks in flight (default: phases of 3 s with 1, 2 and 4 x workers)")
    ap.add_argument("--max-depth", type=int, default=6)
    ap.add_argument("--max-nodes", type=int, default=60)
    ap.add_argument("--deadline", type=float, default=None,
                    help="seconds to wait for the last futures after the run (default 120, or 30 with --quick)")
    ap.add_argument("--kill-points", default=None,
                    help="also die at named kill points: 'repaired', 'all', or NAME|NAME|... (default: none)")
    ap.add_argument("--kill-pass", type=int, default=300,
                    help="with --kill-points: die at a random pass 1..N of the chosen point (default 300)")
    ap.add_argument("--kill-fork-server", action="store_true",
                    help="every third kill goes to the worker launcher (the default start method's "
                         "fork server) instead: nothing may fail or run twice for it")
    ap.add_argument("--verbose", "-v", action="store_true",
                    help="progress lines, and Penny's recovery log (warnings) on stderr")
    args = ap.parse_args(argv)
    if args.verbose:
        import logging

        logging.basicConfig(level=logging.WARNING, format="%(relativeCreated)8.0f %(name)s: %(message)s")
    if args.quick:
        args.minutes = 0.25
    if args.deadline is None:
        args.deadline = 30.0 if args.quick else 120.0
    if args.kill_interval is None:
        args.kill_interval = 1.0 if args.quick else 2.0
    seed = args.seed if args.seed is not None else int(time.time() * 1000) % 2**31
    rng = random.Random(seed)
    # Top-level tasks in flight: fixed with --inflight, else phases of a few
    # seconds alternate a saturated pool (children rarely stolen) with idle
    # workers (children published, stolen, parents suspended in sync).
    inflight_phases = [args.inflight] if args.inflight else [1, 2, 4 * args.workers]
    print(f"soak: seed={seed} minutes={args.minutes} workers={args.workers} kill_interval={args.kill_interval} "
          f"retries={args.retries} start_method={args.start_method or 'default'}", flush=True)

    tmp = tempfile.mkdtemp(prefix="penny-soak-")
    log_path = os.path.join(tmp, "runs.log")
    open(log_path, "wb").close()
    kill_log = os.path.join(tmp, "kills.log")
    if args.kill_points:
        from penny import _killpoints

        names = {"repaired": "|".join(REPAIRED_POINTS),
                 "all": "|".join(p for p in _killpoints.ALL_POINTS
                                 if p not in ("inject.after_commit", "collect.after_pop"))}.get(
            args.kill_points, args.kill_points)
        os.environ["PENNY_KILL_AT"] = f"worker:{names}:1-{args.kill_pass}"
        os.environ["PENNY_KILL_LOG"] = kill_log
        _killpoints.parse(os.environ["PENNY_KILL_AT"])  # a typo fails here, not in every worker
    if args.kill_fork_server and args.start_method not in (None, "forkserver"):
        ap.error("--kill-fork-server needs the default start method (forkserver)")
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()

    trees = Trees(rng, args.max_depth, args.max_nodes)
    futures: dict = {}  # root id -> (future, expected, t_submit)
    resolved_at: dict = {}  # root id -> monotonic time it resolved
    violations: list[str] = []
    sched = penny.Scheduler(args.workers, start_method=args.start_method, retries=args.retries, seed=seed)
    killer = Killer(sched, args.kill_interval, random.Random(seed + 1), fork_server=args.kill_fork_server)
    killer.observe()
    lost_ids: list[int] = []
    t_start = time.monotonic()

    def drive() -> None:
        """Keep `inflight` top-level tasks running until the time is up, then
        stop the killer and wait for the rest."""
        if args.kill_interval > 0:
            killer.start()
        end = t_start + args.minutes * 60
        pending: set = set()
        last_print = 0.0
        while time.monotonic() < end:
            phase = int((time.monotonic() - t_start) / 3.0) % len(inflight_phases)
            while len(pending) < inflight_phases[phase]:
                root, expected = trees.make(flat=rng.random() < 0.4)
                fut = sched.submit(node_task, root, log_path)
                rid = root[0]
                futures[rid] = (fut, expected, time.monotonic())
                fut.add_done_callback(lambda f, rid=rid: resolved_at.setdefault(rid, time.monotonic()))
                pending.add(fut)
            done, pending = cf.wait(pending, timeout=0.5, return_when=cf.FIRST_COMPLETED)
            killer.observe()  # every pid ever seen, also replacements of kill-point deaths
            if args.verbose and time.monotonic() - last_print >= 2.0:
                last_print = time.monotonic()
                print(f"  t={last_print - t_start:6.1f}s submitted={len(futures)} in flight={len(pending)} "
                      f"killed={len(killer.killed)}", flush=True)

    try:
        try:
            drive()
        except Exception as e:  # noqa: BLE001 - e.g. submit refused: reported with the rest
            violations.append(f"the driver failed: {type(e).__name__}: {e}")
        killer.stop_event.set()
        if killer.is_alive():
            killer.join()
        cf.wait([f for f, _, _ in futures.values()], timeout=args.deadline)
        lost_ids = [rid for rid, (f, _, _) in futures.items() if not f.done()]
        if lost_ids:
            dump_records(sched, {m for rid in lost_ids for m in trees.members[rid]}, log_path)
    finally:
        killer.stop_event.set()
        if killer.is_alive():
            killer.join()
        killer.observe()
        leaked, claimed = [], {}
        if any(not f.done() for f, _, _ in futures.values()):
            # A future that never resolves would make shutdown(wait=True) wait forever.
            sched._abort()
        else:
            end = time.monotonic() + 15  # the collector frees the last records
            while (leaked := not_free_records(sched)) and time.monotonic() < end:
                time.sleep(0.05)
            claimed = claimed_ring_slots(sched)
            sched.shutdown(wait=True)
    elapsed = time.monotonic() - t_start

    # ---- checks ----
    runs, pids, torn = read_log(log_path)
    point_kills = read_kill_log(kill_log)
    all_kills = killer.killed + [(t, pid) for t, pid, _ in point_kills]
    kill_time = {pid: t for t, pid in all_kills}
    kill_times = [t for t, _ in all_kills]
    crashes = sched._supervisor.crashes
    if crashes > len(all_kills):
        violations.append(f"the supervisor recovered {crashes} workers, but only {len(all_kills)} were killed "
                          f"(a launcher death taken for its workers'?)")
    if claimed:
        violations.append(f"ring slots left claimed once every future resolved: {claimed}")
    if leaked:
        violations.append(f"{len(leaked)} task records not FREE once every future resolved "
                          f"(first: {[hex(r) for r in leaked[:5]]})")
    limit = 1 + args.retries
    counts = collections.Counter()
    max_runs = max(runs.values(), default=0)
    over_limit = []
    for node_id, parent_id in trees.parent.items():
        n = runs.get(node_id, 0)
        allowed = limit if parent_id == 0 else limit * runs.get(parent_id, 0)
        if n > allowed:
            over_limit.append((node_id, n, allowed))
    for node_id, n, allowed in over_limit[:10]:
        violations.append(f"node {node_id} ran {n} times, more than allowed ({allowed})")
    unknown = set(runs) - set(trees.parent)
    if unknown:
        violations.append(f"{len(unknown)} unknown node ids in the log (first: {sorted(unknown)[:5]})")
    if torn:
        violations.append(f"the run log ends with a torn record of {torn} bytes")

    for rid in lost_ids:
        fut, expected, t0 = futures[rid]
        violations.append(f"lost: the future of tree {rid} ({expected[0]} nodes) never resolved")
    for rid, (fut, expected, t0) in futures.items():
        if rid in lost_ids or not fut.done():
            counts["lost"] += 1
            continue
        members = trees.members[rid]
        # Touched by a kill: a node of the tree ran in a worker that was
        # killed while the tree was still pending.
        t1 = resolved_at.get(rid, time.monotonic())
        on_killed = any(kill_time[p] <= t1 for m in members for p in pids.get(m, ()) if p in kill_time)
        exc = fut.exception()
        if exc is None:
            counts["succeeded"] += 1
            value = fut.result()
            if tuple(value) != expected:
                violations.append(f"tree {rid}: wrong result {value}, expected {expected}")
            never = [m for m in members if runs.get(m, 0) == 0]
            if never:
                violations.append(f"tree {rid} succeeded but {len(never)} of its nodes never ran (first: {never[:5]})")
            if not on_killed:
                extra = [m for m in members if runs.get(m, 0) != 1]
                if extra:
                    counts["succeeded_with_reruns_no_kill"] += 1
                    violations.append(
                        f"tree {rid} succeeded, no kill touched it, yet nodes ran "
                        f"{sorted(set(runs.get(m, 0) for m in extra))} times (first: {extra[:5]})")
            else:
                counts["succeeded_despite_kill"] += 1
        elif isinstance(exc, penny.WorkerCrashedError):
            counts["worker_crashed"] += 1
            if on_killed:
                counts["crashed_on_killed_pid"] += 1
            elif any(t0 <= t <= t1 for t in kill_times):
                counts["crashed_during_a_kill"] += 1
            else:
                violations.append(f"tree {rid}: WorkerCrashedError without any kill while it ran: {exc}")
        else:
            counts["other_error"] += 1
            violations.append(f"tree {rid}: unexpected {type(exc).__name__}: {str(exc)[:300]}")

    # ---- hygiene ----
    left = [p for p in killer.seen if pid_alive(p)]
    deadline = time.monotonic() + 10
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if pid_alive(p)]
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)  # only pids the supervisor listed as our workers
        except OSError:
            pass
    if left:
        violations.append(f"worker processes left after shutdown: {sorted(left)}")
    shm_after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    # On a shared machine other programs make entries too; joblib's name
    # theirs after their pid (joblib_memmapping_folder_<pid>_...): not ours
    # unless the pid is this process or one of its workers.
    ours = {os.getpid(), *killer.seen}
    new_shm = sorted(n for n in shm_after - shm_before
                     if not ((m := re.match(r"joblib_memmapping_folder_(\d+)_", n)) and int(m.group(1)) not in ours))
    if new_shm:
        violations.append(f"new /dev/shm entries after shutdown: {new_shm}")
    fds = memfd_fds()
    if fds:
        violations.append(f"shared-memory descriptors still open after shutdown: {fds}")
    try:
        os.unlink(log_path)
        if os.path.exists(kill_log):
            os.unlink(kill_log)
        os.rmdir(tmp)
    except OSError:
        pass

    summary = {
        "ok": not violations,
        "seed": seed,
        "seconds": round(elapsed, 1),
        "workers": args.workers,
        "start_method": sched.start_method,
        "retries": args.retries,
        "kill_interval": args.kill_interval,
        "workers_killed": len(killer.killed),
        "launchers_killed": len(killer.launchers_killed),
        "workers_recovered": crashes,
        "killed_at_points": len(point_kills),
        "points_hit": dict(collections.Counter(name for _, _, name in point_kills)),
        "leaked_records": len(leaked),
        "claimed_ring_slots": sum(map(len, claimed.values())),
        "worker_pids_seen": len(killer.seen),
        "top_level": len(futures),
        "succeeded": counts["succeeded"],
        "succeeded_despite_kill": counts["succeeded_despite_kill"],
        "worker_crashed": counts["worker_crashed"],
        "crashed_on_killed_pid": counts["crashed_on_killed_pid"],
        "crashed_during_a_kill": counts["crashed_during_a_kill"],
        "other_errors": counts["other_error"],
        "lost": counts["lost"],
        "nodes": len(trees.parent),
        "task_runs": sum(runs.values()),
        "max_runs_per_task": max_runs,
        "tasks_rerun": sum(1 for n in runs.values() if n > 1),
        "over_limit": len(over_limit),
        "leftover_processes": len(left),
        "violations": len(violations),
    }
    for v in violations[:20]:
        print("VIOLATION:", v, flush=True)
    if len(violations) > 20:
        print(f"... and {len(violations) - 20} more violations", flush=True)
    print(json.dumps(summary), flush=True)
    return 0 if not violations else 1


if __name__ == "__main__":
    sys.exit(main())
