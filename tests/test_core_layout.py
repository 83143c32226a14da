"""The constants the C core compiles in (src/penny/native/layout.h) against layout.py.

The core exports them as ``_core.LAYOUT``; ``layout.py`` refuses to import
when any differs from its own constant of that name.  ``set_tasks`` takes
only the per-region geometry, by keyword.
"""

from __future__ import annotations

import importlib.util
import mmap

import pytest

from penny import _core
from penny.shm import layout

# Every constant layout.h shares with layout.py (record fields, header words,
# statuses, flags, the take_batch area): the set the import check covers.
SHARED_NAMES = {
    "RECORD_SIZE", "R_STATE", "R_FN", "R_FLAGS", "R_LINK", "R_PARENT", "R_BLOB", "R_BLOB_LEN", "R_ATTEMPTS",
    "R_JOIN", "R_OWNER", "R_SPAWNED", "R_INLINE", "INLINE_SIZE",
    "H_SLEEPERS", "H_COLLECTOR", "H_COLLECTOR_SLEEPERS", "H_TASK_FREE",
    "S_FREE", "S_QUEUED", "S_RUNNING", "S_DONE",
    "F_ARGS_BLOB", "F_RESULT_BLOB", "F_ARGS_CONSUMED",
    "TAKE_BATCH_MAX", "BATCH_COUNT", "BATCH_BOTTOM", "BATCH_REFS", "BATCH_AREA_SIZE", "JOIN_GIVEN",
    "HELD_REF", "HELD_PARENT", "HELD_SPAWNED", "HELD_BOTTOM", "HELD_SIZE",
}


def test_core_exports_exactly_the_shared_constants():
    assert set(_core.LAYOUT) == SHARED_NAMES
    assert all(type(v) is int for v in _core.LAYOUT.values())


@pytest.mark.parametrize("name", sorted(SHARED_NAMES))
def test_each_core_constant_equals_layout_py(name):
    assert _core.LAYOUT[name] == getattr(layout, name)


@pytest.mark.parametrize("name", sorted(SHARED_NAMES))
def test_the_check_names_any_mismatch(name):
    layout._check_core_layout(dict(_core.LAYOUT))  # as built: passes
    bad = dict(_core.LAYOUT)
    bad[name] += 8
    with pytest.raises(ImportError, match=rf"\b{name} = {bad[name]}\b"):
        layout._check_core_layout(bad)


def test_the_check_refuses_a_constant_layout_py_lacks():
    with pytest.raises(ImportError, match="R_NOT_THERE = 1 .*no such constant"):
        layout._check_core_layout({**_core.LAYOUT, "R_NOT_THERE": 1})


def test_importing_layout_runs_the_check(monkeypatch):
    """A fresh copy of penny.shm.layout, executed with a wrong _core.LAYOUT, fails to import."""
    monkeypatch.setitem(_core.LAYOUT, "R_JOIN", layout.R_JOIN + 4)
    spec = importlib.util.find_spec("penny.shm.layout")
    fresh = importlib.util.module_from_spec(spec)  # not put in sys.modules
    with pytest.raises(ImportError, match="R_JOIN"):
        spec.loader.exec_module(fresh)


# ---- set_tasks: the per-region geometry only, by keyword ----

GEOMETRY = ("tasks", "task_capacity", "injector", "completions", "inbox0", "state0", "slice_size", "workers")


@pytest.fixture
def region():
    lay = layout.Layout(workers=2, deque_capacity=8, task_capacity=8, function_slots=4, arena_size=1 << 16)
    m = mmap.mmap(-1, lay.size)
    s = _core.Shared(m)
    yield lay, s
    s.release()
    m.close()


def geometry(lay):
    return dict(tasks=lay.tasks, task_capacity=lay.task_capacity, injector=lay.injector,
                completions=lay.completions, inbox0=lay.inbox(0), state0=lay.state(0),
                slice_size=lay.slice_size, workers=lay.workers)


def test_bind_passes_the_geometry(region):
    lay, s = region
    layout.bind(s, lay)
    s.set_tasks(**geometry(lay))
    assert set(geometry(lay)) == set(GEOMETRY)


def test_set_tasks_takes_keywords_only(region):
    lay, s = region
    with pytest.raises(TypeError):
        s.set_tasks(*geometry(lay).values())


@pytest.mark.parametrize("missing", GEOMETRY)
def test_set_tasks_names_a_missing_keyword(region, missing):
    lay, s = region
    g = geometry(lay)
    del g[missing]
    with pytest.raises(TypeError, match=f"'{missing}'"):
        s.set_tasks(**g)


def test_set_tasks_checks_the_geometry(region):
    lay, s = region
    with pytest.raises(IndexError):
        s.set_tasks(**{**geometry(lay), "task_capacity": lay.task_capacity * 1024})
    with pytest.raises(ValueError, match="bad task geometry"):
        s.set_tasks(**{**geometry(lay), "slice_size": lay.slice_size + 8})
    with pytest.raises(RuntimeError, match="set_tasks"):
        s.free_task(1)  # nothing was accepted
