"""Progress bars for `Scheduler.map(..., progress=...)` and
`penny.parallel_for(..., progress=...)`, drawn by the main process.

`progress` may be:

* ``True``: a bar from tqdm if it is installed, else from rich, else a plain
  text line on stderr (``PENNY_PROGRESS=tqdm|rich|text`` forces one);
* a string: the same, with that description;
* an object with ``update(n)`` (a ``tqdm`` instance, or your own): Penny
  calls ``update`` with the items done and leaves closing it to you.

Workers never touch a bar.  `map` updates it as each chunk's results come
back to the consumer (so it shows what was consumed, at no cost to the
workers); `parallel_for` gives the task tree one shared counter word
(layout.H_PROGRESS, one of PROGRESS_SLOTS) that each leaf bumps with one
relaxed fetch-add after ``body(lo, hi)``, and the waiting main thread reads it
every config.PROGRESS_POLL seconds.  On success the bar is completed to its
total; on an exception it is closed where it stood.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import sys
import threading
import time

from .. import _core, config
from ..runtime.forkjoin import _pfor, _pfor_counted
from ..shm.layout import H_PROGRESS, PROGRESS_SLOTS


def backend_name() -> str:
    """The bar `progress=True` uses here: "tqdm", "rich" or "text"."""
    forced = os.environ.get("PENNY_PROGRESS", "").strip().lower()
    if forced in ("tqdm", "rich", "text"):
        return forced
    import importlib.util

    for name in ("tqdm", "rich"):
        if importlib.util.find_spec(name) is not None:
            return name
    return "text"


def make_bar(progress, total: int | None, desc: str, unit: str = "it"):
    """A bar for `progress` (see the module docstring), or None when it is falsy."""
    if not progress:
        return None
    if not isinstance(progress, (str, bool)) and hasattr(progress, "update"):
        return _External(progress, total)
    if isinstance(progress, str):
        desc = progress
    elif progress is not True:
        raise TypeError(f"penny: progress must be True, a description string or an object with "
                        f"update(n), got {type(progress).__name__}")
    name = backend_name()
    if name == "tqdm":
        try:
            return _Tqdm(total, desc, unit)
        except ImportError:
            pass
    if name in ("tqdm", "rich"):
        try:
            return _Rich(total, desc, unit)
        except ImportError:
            pass
    return _Text(total, desc, unit)


class _Bar:
    """update(n) as items complete; close(complete) at the end (once)."""

    def __init__(self, total):
        self.total = total
        self.n = 0
        self.closed = False

    def update(self, n: int) -> None:
        if n > 0:
            self.n += n
            self._update(n)

    def close(self, complete: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if complete and self.total is not None and self.n < self.total:
            self.update(self.total - self.n)
        self._close(complete)

    def _update(self, n):  # pragma: no cover - overridden
        pass

    def _close(self, complete):  # pragma: no cover - overridden
        pass


class _Tqdm(_Bar):
    def __init__(self, total, desc, unit):
        from tqdm import tqdm

        super().__init__(total)
        self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr,
                        dynamic_ncols=True, mininterval=0.1, smoothing=0.1)

    def _update(self, n):
        self.bar.update(n)

    def _close(self, complete):
        if complete and self.total is None:
            self.bar.total = self.n  # an input of unknown length: its end is the total
            self.bar.refresh()
        self.bar.close()


class _Rich(_Bar):
    def __init__(self, total, desc, unit):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task):
                speed = task.finished_speed or task.speed
                return Text("?" if speed is None else f"{speed:,.0f} {unit}/s")

        super().__init__(total)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 Rate(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=False)
        self.progress.start()
        self.task = self.progress.add_task(desc, total=total)

    def _update(self, n):
        self.progress.advance(self.task, n)

    def _close(self, complete):
        if complete and self.total is None:
            self.progress.update(self.task, total=self.n)
        self.progress.refresh()
        self.progress.stop()


class _Text(_Bar):
    """``desc: n/total (pct) rate it/s, ETA`` on stderr: redrawn in place on a
    terminal (at most 5 times a second), one line per second otherwise."""

    def __init__(self, total, desc, unit, file=None):
        super().__init__(total)
        self.desc, self.unit = desc, unit
        self.file = file or sys.stderr
        self.tty = bool(getattr(self.file, "isatty", lambda: False)())
        self.every = 0.2 if self.tty else 1.0
        self.t0 = self.last = time.monotonic()
        self._draw(force=True)

    def _line(self) -> str:
        dt = max(1e-9, time.monotonic() - self.t0)
        rate = self.n / dt
        if self.total:
            pct = 100.0 * self.n / self.total
            left = (self.total - self.n) / rate if rate > 0 else None
            eta = "?" if left is None else _hms(left)
            return (f"{self.desc}: {self.n:,}/{self.total:,} ({pct:5.1f}%) "
                    f"{rate:,.0f} {self.unit}/s, elapsed {_hms(dt)}, ETA {eta}")
        return f"{self.desc}: {self.n:,} {self.unit} {rate:,.0f} {self.unit}/s, elapsed {_hms(dt)}"

    def _draw(self, force=False, end=""):
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        line = self._line()
        try:
            if self.tty:
                self.file.write("\r" + line + "\x1b[K" + end)
            else:
                self.file.write(line + "\n")
            self.file.flush()
        except (OSError, ValueError):  # stderr closed: no bar, no failure
            pass

    def _update(self, n):
        self._draw()

    def _close(self, complete):
        if complete and self.total is None:
            self.total = self.n
        self._draw(force=True, end="\n")


class _External(_Bar):
    """A caller's tqdm-like object: we only call update (and refresh)."""

    def __init__(self, obj, total):
        super().__init__(total)
        self.obj = obj
        if total is not None and getattr(obj, "total", 0) is None:
            try:
                obj.total = total
            except AttributeError:
                pass

    def _update(self, n):
        self.obj.update(n)

    def _close(self, complete):
        refresh = getattr(self.obj, "refresh", None)
        if callable(refresh):
            refresh()


def _hms(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


# ---- parallel_for with a bar ------------------------------------------------------------
_slots_lock = threading.Lock()


def _take_slot(sched):
    """Offset of a free progress counter of `sched`, or None if all are in use."""
    with _slots_lock:
        free = sched.__dict__.setdefault("_progress_free", [H_PROGRESS + 8 * i for i in range(PROGRESS_SLOTS)])
        return free.pop() if free else None


def _give_slot(sched, off) -> None:
    if off is not None:
        with _slots_lock:
            sched._progress_free.append(off)


def run_parallel_for(sched, start: int, stop: int, body, grain: int, progress) -> None:
    """parallel_for outside tasks, with a bar fed by a shared counter."""
    total = stop - start
    name = getattr(body, "__qualname__", getattr(body, "__name__", "body"))
    bar = make_bar(progress, total, f"parallel_for({name})")
    # A scheduler without a shared region (another backend) gets a bar that jumps at the end.
    slot = _take_slot(sched) if getattr(sched, "_s", None) is not None else None
    ok = False
    try:
        if slot is None:  # every counter busy (many concurrent bars): the bar jumps at the end
            fut = sched.submit(_pfor, body, start, stop, grain)
        else:
            sched._s.store64(slot, 0, _core.RELAXED)  # ours alone until the task starts
            fut = sched.submit(_pfor_counted, body, start, stop, grain, slot)
        shown = 0
        while True:
            try:
                fut.result(timeout=config.PROGRESS_POLL)
                break
            except cf.TimeoutError:
                pass
            s = sched._s
            if slot is not None and s is not None and bar is not None:
                done = min(total, s.load64(slot, _core.RELAXED))
                if done > shown:
                    bar.update(done - shown)
                    shown = done
        ok = True
        return None
    finally:
        if bar is not None:
            bar.close(complete=ok)
        _give_slot(sched, slot)
