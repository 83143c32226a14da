"""Tasks for tests/test_process_tree.py (imported by name in the workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def log_and_block(log_path, started_path, release_path, value, timeout=60.0):
    """Append our pid to `log_path` (one line per run), announce the start,
    wait for `release_path`; returns `value`."""
    with open(log_path, "a") as f:
        f.write(f"{os.getpid()}\n")
    tmp = f"{started_path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, started_path)
    end = time.monotonic() + timeout
    while not os.path.exists(release_path):
        if time.monotonic() > end:
            raise TimeoutError("never released")
        time.sleep(0.01)
    return value


LIST_FDS = r"""
import os, sys
out = []
for name in os.listdir('/proc/self/fd'):
    try:
        out.append(os.readlink('/proc/self/fd/' + name))
    except OSError:
        pass
print('\n'.join(out))
"""


def fds_of_a_program_i_start():
    """What a program started with close_fds=False holds (the region must not be there)."""
    r = subprocess.run([sys.executable, "-c", LIST_FDS], close_fds=False, capture_output=True, text=True,
                       timeout=60, check=True)
    mine = []
    for name in os.listdir("/proc/self/fd"):
        try:
            mine.append(os.readlink(f"/proc/self/fd/{name}"))
        except OSError:
            pass
    return r.stdout.splitlines(), mine


def os_system_fds(out_path):
    """The same through os.system (a shell in between)."""
    script = out_path + ".py"
    with open(script, "w") as f:
        f.write(LIST_FDS)
    code = os.system(f"{sys.executable} {script} > {out_path}")
    with open(out_path) as f:
        return code, f.read().splitlines()


def fork_and_return(value):
    """os.fork() in a task; the child returns from the task like the parent.
    The parent waits (at most 20 s) for the child to exit and returns
    (value, child pid, child's exit code or 'still running')."""
    pid = os.fork()
    if pid == 0:
        return ("child", value)
    end = time.monotonic() + 20
    while time.monotonic() < end:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            return value, pid, os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return value, pid, "still running"


def fork_and_raise(value):
    pid = os.fork()
    if pid == 0:
        raise ValueError("raised in the forked child")
    _, status = os.waitpid(pid, 0)
    return value, pid, os.waitstatus_to_exitcode(status)


def close_my_fds_then(value, seconds):
    """Close every descriptor of this worker that is not stdio nor the
    region, put readable pipes on the freed numbers, then sleep and return."""
    keep = {0, 1, 2}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if "memfd:penny" in os.readlink(f"/proc/self/fd/{fd}"):
                keep.add(fd)
        except OSError:
            pass
    closed = 0
    for fd in range(3, 1024):
        if fd not in keep:
            try:
                os.close(fd)
                closed += 1
            except OSError:
                pass
    pipes = []
    for _ in range(16):
        r, w = os.pipe()
        os.write(w, b"x")  # readable: a select on a reused number fires
        pipes.append((r, w))
    time.sleep(seconds)
    return value, closed


def hold_the_gil(started_path):
    """Announce the start, then hold the GIL in C for minutes."""
    with open(started_path, "w") as f:
        f.write(str(os.getpid()))
    return sum(range(10**12))
