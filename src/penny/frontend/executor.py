"""`penny.Executor`: the `concurrent.futures.Executor` spelling of a Scheduler."""

from __future__ import annotations

from .scheduler import Scheduler


class Executor(Scheduler):
    """A `concurrent.futures.Executor` drop-in: ``Executor(max_workers=4)``."""

    def __init__(self, max_workers: int | None = None, *, start_method: str | None = None, **kwargs):
        super().__init__(max_workers, start_method=start_method, **kwargs)
