"""Named kill points: make this process SIGKILL itself at a named protocol step.

The crash model (docs/crash-model.md) names every step of every protocol
that changes shared state; a kill point with the same name sits right after
that step, in C (native/killpoint.c, ``KILL_POINT``) or here (`hit`).  The
kill-point tests (tests/test_kill_points.py) and ``scripts/soak.py`` kill a
worker or the main process at each of them and check that every task still
completes exactly once or fails with the documented error.

Switched on by the environment only::

    PENNY_KILL_AT=ROLE:NAME:N     e.g. worker:finish.after_result:3
    PENNY_KILL_ONCE=PATH          optional: only the first process to reach
                                  the point dies (it creates PATH, O_EXCL);
                                  a replacement worker with the same
                                  environment goes on
    PENNY_KILL_LOG=PATH           optional: the dying process appends
                                  "PID MONOTONIC-SECONDS NAME" there first

ROLE is ``worker`` (any worker process), ``worker<K>`` (worker K only) or
``main`` (the process that made the scheduler; its own steps are inject and
collect).  N >= 1: the N-th pass of the point in that process dies.

For soaks (scripts/soak.py) NAME may list several points, ``a|b|c``, and N
may be a range, ``LO-HI``: each process that arms picks one point and one N
at random, so every worker life (replacements included) dies somewhere else.

Cost when off: a C point is one load of a static int and a predicted branch;
a Python point is ``if _killpoints.ARMED:``, one module attribute load.  An
unknown NAME raises ValueError when the process arms (a typo must not make a
test pass by killing nothing).
"""

from __future__ import annotations

import os
import signal

from . import _core

__all__ = ["ARMED", "PY_POINTS", "C_POINTS", "ALL_POINTS", "arm", "hit", "parse"]

#: The Python points: where each sits is in docs/crash-model.md.
PY_POINTS = (
    "run_task.after_claim",        # claimed (RUNNING, current set); the function has not run
    "run_task.after_run",          # the function returned; nothing of the outcome is stored
    "finish_slow.after_consumed",  # F_ARGS_CONSUMED stored; the arguments not yet released
    "finish_slow.after_result",    # the pickled result or exception stored; status not yet
    "spawn_slow.after_alloc",      # a record taken from the free list for a child
    "spawn_slow.after_encode",     # the child's arguments pickled into the record
    "take_injected.after_take",    # take_batch returned (first ref marked as ours)
    "park.announce",               # the first half of the sleeper's announcement made
    "park.after_wait",             # woken from the futex; not yet AWAKE/uncounted
    "suspend.after_give",          # the token given up; not yet switched away
    "resume.after_take",           # the token taken back; the continuation not yet switched to
    "arena.after_lock",            # the large-area lock taken
    "arena.in_link",               # inside _link: the extent half linked
)
C_POINTS = tuple(_core.KILL_POINTS)
ALL_POINTS = C_POINTS + PY_POINTS

#: The armed Python point's name in this process, or None (the fast check).
ARMED: str | None = None
_left = 0
_once: str | None = None
_log: str | None = None


def parse(spec: str, rng=None) -> tuple[str, str, int]:
    """(role, name, n) of a PENNY_KILL_AT value (a list of names or a range
    of N resolved with `rng`, a random.Random); ValueError when malformed."""
    parts = spec.split(":")
    if len(parts) != 3:
        raise ValueError(f"PENNY_KILL_AT={spec!r}: expected ROLE:NAME:N")
    role, names, n = parts
    if role != "main" and not (role.startswith("worker") and (role == "worker" or role[6:].isdigit())):
        raise ValueError(f"PENNY_KILL_AT={spec!r}: ROLE is main, worker or worker<K>")
    for name in names.split("|"):
        if name not in ALL_POINTS:
            raise ValueError(f"PENNY_KILL_AT={spec!r}: no kill point named {name!r} (known: {', '.join(ALL_POINTS)})")
    lo, _, hi = n.partition("-")
    if not lo.isdigit() or int(lo) < 1 or (hi and (not hi.isdigit() or int(hi) < int(lo))):
        raise ValueError(f"PENNY_KILL_AT={spec!r}: N is an integer >= 1 or a range LO-HI")
    if rng is None:
        import random

        rng = random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "little"))
    name = rng.choice(names.split("|"))
    return role, name, rng.randint(int(lo), int(hi or lo))


def arm(role: str, wid: int | None = None) -> str | None:
    """Arm this process's point from the environment if ROLE names it (`role`
    is "main" or "worker", `wid` the worker's index).  The name armed, or None."""
    global ARMED, _left, _once, _log
    spec = os.environ.get("PENNY_KILL_AT")
    if not spec:
        return None
    want, name, n = parse(spec)
    if want != role and not (role == "worker" and want == f"worker{wid}"):
        return None
    once = os.environ.get("PENNY_KILL_ONCE") or None
    log = os.environ.get("PENNY_KILL_LOG") or None
    if name in C_POINTS:
        _core.arm_kill_point(name, n, once, log)
    else:
        ARMED, _left, _once, _log = name, n, once, log
    return name


def hit(name: str) -> None:
    """The Python point `name` is passed (call only when ARMED is true)."""
    global ARMED, _left
    if name != ARMED:
        return
    _left -= 1
    if _left > 0:
        return
    ARMED = None
    if _once is not None:
        try:
            os.close(os.open(_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return
    if _log is not None:
        import time

        fd = os.open(_log, os.O_CREAT | os.O_APPEND | os.O_WRONLY, 0o600)
        os.write(fd, f"{os.getpid()} {time.monotonic():.9f} {name}\n".encode())
        os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
