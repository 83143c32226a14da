"""Task functions for tests/test_joblib.py, imported by name in the workers."""

from __future__ import annotations

import os
import time

import penny


def pid_square(x, delay=0.0):
    if delay:
        time.sleep(delay)
    return os.getpid(), x * x


def where():
    """(active joblib backend's class name, its nesting level, inside a Penny
    task?, threads of this process)"""
    import threading

    from joblib.parallel import get_active_backend

    backend, _ = get_active_backend()
    fork = penny._context.fork
    return (type(backend).__name__, backend.nesting_level, fork is not None and bool(fork.task),
            threading.active_count())


def thread_count():
    import threading

    return threading.active_count()


def nested_with_timeout(delay):
    """A nested Parallel with a timeout shorter than its items."""
    from joblib import Parallel, delayed

    return [r[1] for r in Parallel(n_jobs=2, timeout=0.01)(delayed(pid_square)(i, delay) for i in range(2))]


def fail_at(x, bad, delay=0.0):
    if delay:
        time.sleep(delay)
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def mark_after(x, directory, delay):
    """Fails for x == 0, else sleeps and leaves a marker: what ran after an error."""
    if x == 0:
        raise KeyError("first")
    time.sleep(delay)
    open(os.path.join(directory, f"ran-{x}"), "w").close()
    return x


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def pfib(n, cut=8):
    from joblib import Parallel, delayed

    if n <= cut:
        return fib(n)
    a, b = Parallel(n_jobs=2)(delayed(pfib)(m, cut) for m in (n - 1, n - 2))
    return a + b


def nest(levels, width):
    """`levels` nested Parallel calls of `width` items; the leaves say where they ran."""
    from joblib import Parallel, delayed

    if levels == 0:
        return [where()]
    parts = Parallel(n_jobs=2)(delayed(nest)(levels - 1, width) for _ in range(width))
    return [leaf for part in parts for leaf in part]


def nested_error(bad):
    from joblib import Parallel, delayed

    return Parallel(n_jobs=2)(delayed(fail_at)(i, bad) for i in range(8))


def nested_generator_abandoned(n):
    """Takes one result of a nested generator Parallel and drops the rest."""
    import gc

    from joblib import Parallel, delayed

    gen = Parallel(n_jobs=2, return_as="generator")(delayed(pid_square)(i) for i in range(n))
    first = next(gen)[1]
    del gen
    gc.collect()
    return first


def nested_generator(n):
    from joblib import Parallel, delayed

    return [r[1] for r in Parallel(n_jobs=2, return_as="generator")(delayed(pid_square)(i) for i in range(n))]


def nested_width(width):
    """One nested Parallel of `width` one-item batches."""
    from joblib import Parallel, delayed

    return Parallel(n_jobs=2, batch_size=1)(delayed(abs)(-i) for i in range(width))


def mark_or_fail(x, bad, directory):
    if x == bad:
        raise ValueError(f"bad item {x}")
    open(os.path.join(directory, f"ran-{x}"), "w").close()
    return x


def nested_marks(n, bad, directory):
    """A nested Parallel of `n` one-item batches where item `bad` fails; the others leave a marker."""
    from joblib import Parallel, delayed

    return Parallel(n_jobs=2, batch_size=1)(delayed(mark_or_fail)(i, bad, directory) for i in range(n))


def nested_unordered(n):
    from joblib import Parallel, delayed

    return sorted(Parallel(n_jobs=2, batch_size=1, return_as="generator_unordered")(
        delayed(abs)(-i) for i in range(n)))


def nested_twice_with_generators(n):
    """Two nested generator Parallel calls alive at once under the same backend, consumed in turn."""
    from joblib import Parallel, delayed

    a = Parallel(n_jobs=2, return_as="generator")(delayed(abs)(-i) for i in range(n))
    b = Parallel(n_jobs=2, return_as="generator")(delayed(abs)(i) for i in range(n))
    return [list(a), list(b)]


def nested_width_holding(width):
    """nested_width(width) while this task holds a private child of its own (its
    argument cannot be pickled, so it stays private even for an idle worker)."""
    import threading

    h = penny.spawn(bool, threading.Lock())
    out = nested_width(width)
    assert penny.sync(h) is True
    return out


def holding(fn, *args):
    """fn(*args) while this task holds a private child of its own (see nested_width_holding)."""
    import threading

    h = penny.spawn(bool, threading.Lock())
    try:
        return fn(*args)
    finally:
        assert penny.sync(h) is True
