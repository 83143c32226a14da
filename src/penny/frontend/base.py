"""What every backend's scheduler shares: the `Frontend` base class (being the
current scheduler, the context manager, refusing to be pickled), the chunked,
ordered `map`, and the table of backends that `Scheduler(backend=...)` picks from.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import time

from .. import _context, config
from ..runtime.worker import PARTIAL
from .progress import make_bar

#: name -> factory(*args, **kwargs) of the schedulers `Scheduler(backend=name)`
#: returns, and (name, "executor") -> that of `Executor(backend=name)` where
#: the backend has its own.  "local" is Scheduler itself; the others are
#: registered by the package (penny/__init__.py), so that this layer never
#: imports a backend.
_backends: dict = {}


def register_backend(name: str, factory, executor=None) -> None:
    """Make `Scheduler(..., backend=name)` return ``factory(*args, **kwargs)``
    (and `Executor(..., backend=name)` ``executor(*args, **kwargs)``, if given)."""
    _backends[name] = factory
    if executor is not None:
        _backends[(name, "executor")] = executor


def make_backend(name: str, *args, kind: str = "scheduler", **kwargs):
    factory = _backends.get(name)
    if kind != "scheduler":
        factory = _backends.get((name, kind), factory)
    if factory is None:
        known = ", ".join(repr(n) for n in ["local", *sorted(n for n in _backends if isinstance(n, str))])
        raise ValueError(f"penny: unknown backend {name!r}; use one of {known}")
    return factory(*args, **kwargs)


def chunked_map(fn, iterables, chunksize, workers: int, window: int, submit_chunk, timeout, progress,
                buffersize=None):
    """`map` for every backend: chunks of the zipped `iterables` (one iterable:
    the items themselves) go to `submit_chunk(chunk) -> future of a list`, a
    `window` of chunks (`buffersize`, when given, as in Python 3.14) ahead of
    the consumer; results come back in order.  The `timeout` runs from this
    call, as in concurrent.futures.  An exception of `fn` is raised after the
    results of every item before it, whatever the chunking (a chunk that fails
    part way sends the results before the failing item with the exception:
    `partial_results`), and an exception of the input after the results of the
    items before it.  The first window is submitted now; the rest as results
    are read."""
    if chunksize is not None and (not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1):
        raise ValueError(f"penny: chunksize must be a positive int, got {chunksize!r} (chunksize must be >= 1.)")
    if buffersize is not None:
        if not isinstance(buffersize, int) or isinstance(buffersize, bool):
            raise TypeError("buffersize must be an integer or None")
        if buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        window = buffersize
    deadline = None if timeout is None else time.monotonic() + timeout
    sizes = _chunk_sizes(iterables, chunksize, workers)
    source = iter(iterables[0]) if len(iterables) == 1 else zip(*iterables)
    pending: collections.deque = collections.deque()
    failure: list = []

    def submit_next() -> bool:
        chunk: list = []
        try:
            chunk.extend(itertools.islice(source, next(sizes)))
        except Exception as e:  # noqa: BLE001 - raised at its place in the results
            failure.append(e)
        if chunk:
            pending.append(submit_chunk(chunk))
        return bool(chunk) and not failure

    for _ in range(window):
        if not submit_next():
            break
    bar = None
    if progress:
        try:
            total = min(len(it) for it in iterables)
        except TypeError:
            total = None
        bar = (progress, total, f"map({getattr(fn, '__qualname__', 'fn')})")
    return _map_results(pending, submit_next, deadline, bar, failure)


def partial_results(exc: BaseException) -> list:
    """The results a failed map chunk computed before `exc`, taken off it (the
    worker put them on it: runtime/worker.py keep_partial)."""
    done = exc.__dict__.pop(PARTIAL, None) if hasattr(exc, "__dict__") else None
    return done if isinstance(done, list) else []


def _map_results(pending, submit_next, deadline, bar, failure):
    more = True
    if bar is not None:  # made at the first next(): a map never iterated draws nothing
        bar = make_bar(*bar)
    done = False
    try:
        while pending:
            fut = pending.popleft()
            if more:
                more = submit_next()
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                items = fut.result(left)
            except cf.TimeoutError:
                raise
            except BaseException as e:
                items = partial_results(e)
                if bar is not None:
                    bar.update(len(items))
                yield from items
                raise
            fut = None  # the future holds the list too
            if bar is not None:
                bar.update(len(items))
            # Popped as yielded: no result stays referenced here once the
            # consumer has it (as concurrent.futures' result iterator).
            items.reverse()
            while items:
                yield items.pop()
        if failure:
            raise failure[0]
        done = True
    finally:
        for fut in pending:
            fut.cancel()
        if bar is not None:
            bar.close(complete=done)


def _chunk_sizes(iterables, chunksize, workers: int):
    if chunksize is not None:
        return itertools.repeat(chunksize)
    try:
        n = min(len(it) for it in iterables)
    except TypeError:
        return itertools.chain((16, 32, 64, 128, 256, 512), itertools.repeat(1024))
    # About 8 chunks per worker, at most MAP_MAX_CHUNK items each: the window
    # of chunks in flight then never holds much of a huge input.
    return itertools.repeat(max(1, min(config.MAP_MAX_CHUNK, -(-n // (8 * workers)))))


class Frontend(cf.Executor):
    """What every backend's scheduler shares: being the current scheduler, the
    context manager, and refusing to be pickled."""

    def _make_current(self) -> None:
        _context.set_current(self)

    def __enter__(self):
        self._make_current()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.shutdown(wait=True)
        elif issubclass(exc_type, Exception):
            self.shutdown(wait=True, cancel_futures=True)
        else:  # KeyboardInterrupt, SystemExit: do not wait for running tasks
            self._abort()
        return False

    def __reduce__(self):
        raise TypeError(
            "penny: a Scheduler cannot be sent to a task or another process; "
            "inside a task, use penny.spawn/penny.sync (or return data to the caller)"
        )
