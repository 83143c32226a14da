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
