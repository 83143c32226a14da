"""Process helpers that every layer may use."""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not reaped, counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


def oom_kills() -> int:
    """How many processes the kernel's OOM killer has killed: the system's
    count (/proc/vmstat) plus this cgroup's (cgroup v2 memory.events), or 0
    where neither can be read.  Only its changes mean anything."""
    total = 0
    for path, key in (("/proc/vmstat", "oom_kill"), ("/sys/fs/cgroup/memory.events", "oom_kill")):
        try:
            with open(path) as f:
                for line in f:
                    name, _, value = line.partition(" ")
                    if name == key:
                        total += int(value)
                        break
        except (OSError, ValueError):
            pass
    return total
