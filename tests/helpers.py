"""Task functions and process-inspection utilities for the scheduler tests.

Workers import task functions by module and qualified name, so every task
used by the tests lives here at module level (``tests.helpers.<name>``).
The utilities at the end (pids, /proc, /dev/shm, scripts run in a
subprocess) run in the test process only.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------
# task functions (run in worker processes)
# ---------------------------------------------------------------------------


def add(a, b):
    return a + b


def square(x):
    return x * x


def ident(x):
    return x


def type_name(x):
    """What arrived in the worker, as seen there."""
    return type(x).__name__


def count_args(*args, **kwargs):
    return len(args) + len(kwargs)


def kwfn(a, b=10, *, c=100, **rest):
    return (a, b, c, sorted(rest.items()))


def getpid():
    return os.getpid()


def fail_to_load():
    raise RuntimeError("penny test: this object cannot be rebuilt in another process")


class UnloadableCallable:
    """A callable that pickles but cannot be unpickled (its rebuild raises)."""

    def __call__(self, x):
        return x

    def __reduce__(self):
        return fail_to_load, ()


def nbytes(data):
    return len(data)


def make_bytes(n, fill=7):
    return bytes([fill]) * n


def dict_summary(d):
    return {"keys": sorted(d), "total": sum(v for v in d.values() if isinstance(v, int))}


def make_dict(n):
    return {f"k{i}": [i, str(i), {"nested": (i, i * 2.5)}] for i in range(n)}


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: float


class Color(enum.IntEnum):
    RED = 1
    GREEN = 2


class Name(str):
    """A str subclass (must not be flattened to str)."""


class Huge:
    """A sized iterable of `n` ints that refuses to yield more than `budget`
    of them (so a test fails cleanly instead of materialising it)."""

    def __init__(self, n, budget):
        self.n = n
        self.budget = budget
        self.pulled = 0

    def __len__(self):
        return self.n

    def __iter__(self):
        for i in range(self.n):
            self.pulled += 1
            if self.pulled > self.budget:
                raise RuntimeError(f"Huge: more than {self.budget} of {self.n} items were pulled at once")
            yield i


def move(p, dx):
    return Point(p.x + dx, p.y * 2)


def sleep_return(seconds, value=None):
    time.sleep(seconds)
    return value


def spin(seconds):
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def block(started_path, release_path, timeout=60.0, value=None):
    """Announce 'running' by creating `started_path` (with our pid), then wait
    until `release_path` exists.  Returns (pid, value)."""
    tmp = f"{started_path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, started_path)
    end = time.monotonic() + timeout
    while not os.path.exists(release_path):
        if time.monotonic() > end:
            raise TimeoutError(f"block: {release_path} never appeared")
        time.sleep(0.005)
    return os.getpid(), value


def exit_now(code):
    os._exit(code)


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


# ---- exceptions ----


class CustomError(Exception):
    def __init__(self, msg, code):
        super().__init__(msg, code)
        self.msg = msg
        self.code = code


class UnpicklableError(Exception):
    """Pickling fails: it carries a lock."""

    def __init__(self, msg):
        super().__init__(msg)
        self.lock = threading.Lock()


class BadInitError(Exception):
    """Pickles, but cannot be rebuilt: __init__ needs two arguments, args has one."""

    def __init__(self, a, b):
        super().__init__(a)
        self.b = b


def boom(msg="boom"):
    raise ValueError(msg)


def raise_key(k):
    return {}[k]


def raise_custom(msg, code):
    raise CustomError(msg, code)


def raise_chained():
    try:
        raise KeyError("inner-cause")
    except KeyError as e:
        raise RuntimeError("outer-effect") from e


def raise_unpicklable(msg):
    raise UnpicklableError(msg)


def raise_bad_init(msg):
    raise BadInitError(msg, "second")


def raise_system_exit(code):
    sys.exit(code)


def fail_if(x, bad):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x * 10


def return_lock():
    return threading.Lock()


def _fail_rebuild():
    raise RuntimeError("this object cannot be rebuilt in the caller")


class Unloadable:
    """Pickles fine in the worker; unpickling raises in the caller."""

    def __reduce__(self):
        return (_fail_rebuild, ())


def return_unloadable():
    return Unloadable()


# ---------------------------------------------------------------------------
# utilities for the test process
# ---------------------------------------------------------------------------


def proc_state(pid):
    """The /proc state letter of `pid`, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data.rsplit(")", 1)[1].split()[0]


def pid_alive(pid) -> bool:
    """True if `pid` is a running (not zombie) process.  PID 1 of a container
    may never reap orphans, so a zombie counts as gone."""
    st = proc_state(pid)
    return st is not None and st not in ("Z", "X")


def ppid_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(data.rsplit(")", 1)[1].split()[1])


def descendants(root) -> set[int]:
    """Live descendants of `root` (a /proc scan)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        pp = ppid_of(pid)
        if pp is not None and pid_alive(pid):
            children.setdefault(pp, []).append(pid)
    out: set[int] = set()
    todo = [root]
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def wait_gone(pids, timeout=10.0) -> list[int]:
    """Wait until none of `pids` is alive; returns those still alive."""
    end = time.monotonic() + timeout
    left = [p for p in pids if pid_alive(p)]
    while left and time.monotonic() < end:
        time.sleep(0.02)
        left = [p for p in left if pid_alive(p)]
    return left


def kill_all(pids) -> None:
    """Last-resort cleanup so a failing test leaves nothing behind."""
    for p in pids:
        if pid_alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def cpu_ticks(pid, tid=None) -> int:
    """utime + stime of a process (or one of its threads), in clock ticks."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    return int(fields[11]) + int(fields[12])


def shm_listing() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def worker_pids(sched) -> list[int]:
    return [p.pid for p in sched._supervisor.procs if p is not None]


#: A ring slot's seq word with this bit set is claimed: a push or pop that
#: has not finished (native/mpmc_ring.h, MQ_CLAIM).
RING_CLAIM = 1 << 63


def claimed_slots(s, off: int) -> list[int]:
    """The slots of the ring at `off` whose seq word holds a claim."""
    from penny import _core

    mask = s.load64(off + 128, _core.RELAXED)  # Q_MASK (layout.h)
    return [i for i in range(mask + 1) if s.load64(off + _core.QUEUE_HEADER + 16 * i, _core.RELAXED) & RING_CLAIM]


def claimed_ring_slots(sched) -> dict:
    """{ring: claimed slots} over every ring of a scheduler: a quiet scheduler
    has none (a claim left by a dead worker wedges its ring, at once or one
    lap later)."""
    s, lay = sched._s, sched._layout
    rings = {"injector": lay.injector, "completions": lay.completions,
             **{f"inbox{w}": lay.inbox(w) for w in range(lay.workers)}}
    return {name: c for name, off in rings.items() if (c := claimed_slots(s, off))}


def wait_for_file(path, timeout=30.0) -> str:
    """The contents of `path` once it exists and, if its writer writes
    something, once that is there (a task's open(..., "w") creates the file
    before its write lands: reading at once can see it empty)."""
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.005)
    settle = min(end, time.monotonic() + 5.0)  # a marker that stays empty is returned as ""
    while True:
        with open(path) as f:
            data = f.read()
        if data or time.monotonic() > settle:
            return data
        time.sleep(0.005)


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONWARNINGS", None)
    return env


def run_script(code: str, timeout=60.0, **kw) -> subprocess.CompletedProcess:
    """Run `code` with ``python -c`` (tests importable), capturing its output."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
        env=subprocess_env(), cwd=ROOT, check=False, **kw,
    )


#: A prelude for scripts: reports of the script's own process tree as JSON lines.
SCRIPT_PRELUDE = """
import json, os, sys
sys.path.insert(0, %r)
from tests import helpers
def report(tag, **kw):
    kw["tag"] = tag
    print("@@" + json.dumps(kw), flush=True)
""".replace("%r", repr(ROOT))


def reports(stdout: str) -> dict:
    """The JSON lines a script printed with report(), by tag."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("@@"):
            try:
                d = json.loads(line[2:])
            except ValueError:  # a line still being written
                continue
            out[d.pop("tag")] = d
    return out


def return_generator():
    return (i for i in range(3))
