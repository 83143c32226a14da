"""Task functions and helper classes for the crash and bad-input matrices.

Workers import tasks by module and qualified name, so everything a worker
must find lives here at module level (``tests.crash_tasks.<name>``).

The crash matrix (tests/test_crash_matrix.py) makes a worker fail in one of
three ways (`crash`):

* ``"segv"``  : a segmentation fault (``ctypes.string_at(0)``), so the worker
  dies of SIGSEGV;
* ``"exit"``  : ``os._exit(EXIT_CODE)``, no cleanup;
* ``"raise"`` : a plain Python exception (`CrashMatrixError`);

at one of three moments (the *phase*):

* ``"unpickle"``: while the worker unpickles the task's arguments (an
  argument whose ``__reduce__`` names `_crash_on_load`, called by
  ``pickle.loads`` in the worker);
* ``"run"``     : while the task function runs;
* ``"pickle"``  : while the worker pickles the task's return value (a result
  whose ``__reduce__`` crashes).

Every attempt appends one byte to a counter file (``O_APPEND``, one
``write``), before it crashes, so a test can tell how many times the task was
started, whatever killed the process.
"""

from __future__ import annotations

import os
import sys

EXIT_CODE = 3
CRASHES = ("segv", "exit", "raise")
PHASES = ("unpickle", "run", "pickle")


class CrashMatrixError(RuntimeError):
    """The exception of the ``"raise"`` crash kind (importable, so it pickles)."""


def note_run(path) -> None:
    """Append one byte to `path`: one attempt, recorded even if we die next."""
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)


def runs(path) -> int:
    """How many attempts `note_run` recorded in `path`."""
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def crash_now(crash: str, where: str):
    """Fail in the requested way."""
    if crash == "segv":
        import ctypes
        import resource

        import faulthandler

        try:  # no core file in the test's working directory
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        except (ValueError, OSError):
            pass
        # An intended crash: no "Fatal Python error" dump in the test output.
        faulthandler.disable()
        sys.stderr.flush()
        ctypes.string_at(0)  # SIGSEGV
        raise AssertionError("unreachable: string_at(0) returned")
    if crash == "exit":
        os._exit(EXIT_CODE)
    if crash == "raise":
        raise CrashMatrixError(f"crash-matrix failure {where}")
    raise ValueError(f"unknown crash kind {crash!r}")


# ---- phase "unpickle": an argument that fails when the worker rebuilds it ----


def _crash_on_load(crash, counter):
    """Called by pickle.loads in the worker, to rebuild a CrashOnLoad."""
    note_run(counter)
    crash_now(crash, "while unpickling the arguments")


class CrashOnLoad:
    """Pickles fine in the caller; unpickling it in the worker crashes."""

    def __init__(self, crash, counter):
        self.crash = crash
        self.counter = counter

    def __reduce__(self):
        return (_crash_on_load, (self.crash, self.counter))


def takes_arg(arg):
    """The task of the "unpickle" phase: never reached when the argument crashes."""
    return "unreachable: the argument was rebuilt"


# ---- phase "run" ----


def crash_while_running(crash, counter):
    note_run(counter)
    crash_now(crash, "while running")


# ---- phase "pickle": a result that fails when the worker pickles it ----


def _rebuild_result(value):
    return value


class CrashOnDump:
    """Pickling it (in the worker, to send it back) crashes."""

    def __init__(self, crash):
        self.crash = crash

    def __reduce__(self):
        crash_now(self.crash, "while pickling the result")
        return (_rebuild_result, (None,))


def return_crash_on_dump(crash, counter):
    note_run(counter)
    return CrashOnDump(crash)


# ---- plain tasks ----


def add(a, b):
    return a + b


def ident(x):
    return x


def nbytes(data):
    return len(data)


def make_bytes(n, fill=7):
    return bytes([fill]) * n


def getpid():
    return os.getpid()


# ---- bad input (tests/test_bad_input.py) ----


class PickleRaises:
    """Pickling raises in the caller (at submit)."""

    def __reduce__(self):
        raise ValueError("PickleRaises refuses to be pickled")


def _raise_on_load():
    raise ValueError("UnpickleRaises cannot be rebuilt in the worker")


class UnpickleRaises:
    """Pickles in the caller; unpickling raises in the worker."""

    def __reduce__(self):
        return (_raise_on_load, ())


def _refuse_on_load():
    raise ValueError("refused")


class RefuseOnLoad:
    """Unpickling raises in the worker, with a message that names nothing."""

    def __reduce__(self):
        return (_refuse_on_load, ())


def return_lambda():
    return lambda x: x


def return_generator():
    return (i for i in range(3))


def raise_system_exit(code):
    sys.exit(code)


def raise_keyboard_interrupt():
    raise KeyboardInterrupt("raised by a task")


def recurse_forever(n=0):
    return recurse_forever(n + 1) + 1


def raise_recursion_error():
    """Recursion past the limit, caught and re-raised as is."""
    return recurse_forever()


def sleep_then(seconds, value):
    import time

    time.sleep(seconds)
    return value


def submit_from_task(x, timeout=30.0):
    """Calls the scheduler API from inside a task."""
    from penny._context import current_scheduler

    return current_scheduler().submit(add, x, 1).result(timeout)


def spawn_inside_task(x):
    """penny.spawn inside a task is the supported way: a child handle."""
    import penny

    h = penny.spawn(add, x, 1)
    return penny.sync(h)


def use_scheduler_arg(s):
    return s.run(add, 1, 2)


def double(x):
    return 2 * x


# ---- nested: a child that crashes on another worker ----


def spawn_stolen_crashing_child(crash, counter, steal_timeout=20.0):
    """Spawn a child that crashes, wait until another worker has started it
    (stolen: the child records its start in `counter` first), then sync it.

    The short sleep first lets the other worker go idle, so the spawn
    publishes the child (lazy publication needs an idle worker)."""
    import time

    import penny

    time.sleep(0.3)
    h = penny.spawn(crash_while_running, crash, counter)
    end = time.monotonic() + steal_timeout
    while runs(counter) == 0 and time.monotonic() < end:
        time.sleep(0.01)
    return penny.sync(h)


def scheduler_in_task():
    """Creates a Scheduler inside a task (a worker is a daemon process)."""
    import penny

    with penny.Scheduler(1) as s:
        return s.run(add, 1, 2)


def square(x):
    return x * x


def failing_iterable(n, exc_type=ValueError):
    """Yields 0 .. n-1, then raises."""
    for i in range(n):
        yield i
    raise exc_type(f"the input iterable failed after {n} items")


# ---- a dead parent whose child outlives two deaths of the parent's worker slot ----


def slow_child(directory, seconds):
    with open(os.path.join(directory, "child-start"), "w") as f:
        f.write(str(os.getpid()))
    import time

    time.sleep(seconds)
    with open(os.path.join(directory, "child-end"), "w") as f:
        f.write(str(os.getpid()))
    return 1


def parent_of_slow_child(directory, child_seconds, parent_seconds):
    """Spawn a slow child, wait until another worker stole it, then run on
    (not in sync) for `parent_seconds`: the test kills our worker meanwhile."""
    import time

    import penny

    with open(os.path.join(directory, "parent"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(0.3)  # the other worker goes idle: the spawn publishes the child
    h = penny.spawn(slow_child, directory, child_seconds)
    end = time.monotonic() + 20
    while not os.path.exists(os.path.join(directory, "child-start")) and time.monotonic() < end:
        time.sleep(0.01)
    time.sleep(parent_seconds)
    return penny.sync(h)
