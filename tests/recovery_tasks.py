"""Task functions for test_recovery.py (importable by every worker)."""

import os
import time

import penny


def note_pid(path: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)


def slow_child(seconds: float, value: int, path: str | None = None) -> int:
    if path:
        note_pid(path)
    time.sleep(seconds)
    return value


def quick(x: int) -> int:
    return x


def parent_suspends(path: str, child_seconds: float) -> int:
    """Spawn a slow child that the other worker steals, then sync it: this task
    suspends in sync on its worker, whose pid it leaves in `path`."""
    a = penny.spawn(slow_child, child_seconds, 40)
    b = penny.spawn(quick, 2)   # the second spawn publishes `a` for the idle worker
    y = penny.sync(b)
    time.sleep(0.2)             # let the other worker steal `a`
    note_pid(path)
    return penny.sync(a) + y


def grandparent(path: str, child_seconds: float) -> str:
    """The parent of a task that suspends (and dies with its worker): sees the
    crash at its own sync."""
    h = penny.spawn(parent_suspends, path, child_seconds)
    time.sleep(0.3)  # an idle worker steals the child: it suspends over there
    try:
        return f"result {penny.sync(h)}"
    except penny.WorkerCrashedError as e:
        return f"crashed: {e}"


def parent_of_killed_child(path: str, child_seconds: float) -> str:
    """Spawn a slow child on the other worker (which is killed while running it)."""
    a = penny.spawn(slow_child, child_seconds, 40, path)
    b = penny.spawn(quick, 2)
    y = penny.sync(b)
    time.sleep(0.3)  # let the other worker steal `a`
    try:
        return f"result {penny.sync(a) + y}"
    except penny.WorkerCrashedError as e:
        return f"crashed: {e}"
