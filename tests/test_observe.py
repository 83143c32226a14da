"""Seeing what the scheduler does: stats, traces, progress bars, pictures, the CLI, logging."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
import time
import types

import pytest

import penny
from penny import _core
from penny.frontend import progress
from penny.trace import export, recorder, rings
from penny.shm.layout import H_TRACE, STAT_NAMES, T_HEAD, Layout
from penny.shm.region import Region
from tests import helpers
from tests import observe_tasks as ot

HAS_MPL = importlib.util.find_spec("matplotlib") is not None
HAS_TQDM = importlib.util.find_spec("tqdm") is not None
ROOT = helpers.ROOT


def _wait(cond, timeout=30.0, every=0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(every)
    return cond()


def _task_events(tr):
    return [e for e in tr["traceEvents"] if e.get("ph") == "X" and e.get("cat") == "task"]


def _check_chrome(tr):
    """The parts of the Chrome trace event format that Perfetto and chrome://tracing rely on."""
    assert isinstance(tr, dict) and isinstance(tr["traceEvents"], list)
    for e in tr["traceEvents"]:
        assert e["ph"] in ("X", "B", "E", "i", "M"), e
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int), e
        assert isinstance(e["name"], str), e
        if e["ph"] != "M":
            assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0, e
        if e["ph"] == "X":
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0, e
        if e["ph"] == "i":
            assert e["s"] in ("t", "p", "g"), e


# ---------------------------------------------------------------------------
# traces
# ---------------------------------------------------------------------------


def test_trace_file_is_chrome_json_with_every_worker(make_sched, tmp_path):
    s = make_sched(2)
    path = tmp_path / "run.json"
    with s.trace(path) as rec:
        futs = [s.submit(ot.nap, 0.02, i) for i in range(40)]
        assert [f.result(60) for f in futs] == list(range(40))
    assert rec.dropped == 0
    with open(path) as f:
        tr = json.load(f)
    _check_chrome(tr)
    tasks = [e for e in _task_events(tr) if e["name"] == "tests.observe_tasks.nap"]
    assert len(tasks) == 40
    assert {e["tid"] for e in tasks} == {0, 1}, "both workers ran tasks: both must appear"
    names = {e["tid"]: e["args"]["name"] for e in tr["traceEvents"] if e.get("name") == "thread_name"}
    assert set(names) == {0, 1} and all(n.startswith("worker ") for n in names.values())
    for e in tasks:
        assert e["dur"] >= 15_000  # microseconds: each task slept 20 ms
    assert tr["otherData"]["clock"] == "CLOCK_MONOTONIC"
    assert tr["otherData"]["workers"] == 2


def test_trace_records_steals_spawns_and_idle(make_sched, tmp_path):
    s = make_sched(2)
    s.run(ot.nap, 0.0)
    with s.trace() as rec:
        for _ in range(10):  # an idle worker steals a published child; retry if the OS disagreed
            assert len(s.run(ot.sleepy_children, 4, 0.03)) == 4
            if s.stats()["totals"]["steals"]:
                break
        time.sleep(0.3)  # idle and parked spans
    assert s.stats()["totals"]["steals"] > 0
    tr = rec.chrome()
    _check_chrome(tr)
    cats = {(e["ph"], e.get("cat")) for e in tr["traceEvents"]}
    assert ("i", "steal") in cats and ("i", "spawn") in cats
    assert ("X", "idle") in cats
    assert any(e["name"] == "parked" for e in tr["traceEvents"] if e.get("cat") == "idle")
    names = {e["name"] for e in _task_events(tr)}
    assert {"tests.observe_tasks.sleepy_children", "tests.observe_tasks.whoami"} <= names
    rec.save(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text())["traceEvents"]


def test_scheduler_trace_true_writes_at_shutdown(make_sched, tmp_path):
    path = tmp_path / "whole.json"
    s = make_sched(2, trace=str(path))
    assert [f.result(60) for f in [s.submit(ot.square, i) for i in range(50)]] == [i * i for i in range(50)]
    early = tmp_path / "early.json"
    s.save_trace(early)
    assert _task_events(json.loads(early.read_text()))
    s.shutdown()
    tr = json.loads(path.read_text())
    _check_chrome(tr)
    assert len([e for e in _task_events(tr) if e["name"] == "tests.observe_tasks.square"]) == 50


def test_tracing_off_writes_nothing(make_sched):
    s = make_sched(2)
    assert [f.result(60) for f in [s.submit(ot.square, i) for i in range(200)]] == [i * i for i in range(200)]
    lay = s._layout
    assert s._s.load32(H_TRACE, _core.RELAXED) == 0
    assert all(s._s.load64(lay.trace(w) + T_HEAD, _core.RELAXED) == 0 for w in range(lay.workers))
    with pytest.raises(ValueError, match="trace=True"):
        s.save_trace("never.json")


def test_trace_needs_rings(make_sched):
    s = make_sched(1, trace_buffer=0)
    assert s._layout.trace_ring_size == 0
    with pytest.raises(penny.PennyError, match="trace_buffer"):
        with s.trace():
            pass
    with pytest.raises(ValueError):
        penny.Scheduler(1, trace=True, trace_buffer=0)
    with pytest.raises(ValueError):
        Layout(workers=1, deque_capacity=2, task_capacity=2, function_slots=1, arena_size=1 << 16,
               trace_events=3)


def test_ring_reader_survives_wrap_and_overwrite():
    """Single process: the writer laps the ring between two drains; the reader
    returns exactly the intact records and counts the rest as dropped."""
    lay = Layout(workers=1, deque_capacity=2, task_capacity=2, function_slots=1, arena_size=1 << 16,
                 trace_events=8)
    region = Region.create(lay)
    try:
        fake = types.SimpleNamespace(_s=region.shared, _layout=lay, _recorders=set(), _method="fork",
                                     _functions=types.SimpleNamespace(_by_id={}))
        rec = recorder.Recorder(fake)
        rec.begin()
        assert region.shared.load32(H_TRACE, _core.RELAXED) == 1
        w = rings.TraceWriter(region.shared, lay, 0)
        for i in range(5):
            w.emit(rings.STEAL, 0, i)
        rec._poll()
        for i in range(5, 25):
            w.emit(rings.STEAL, 0, i)
        rec._poll()
        rec.stop()
        assert region.shared.load32(H_TRACE, _core.RELAXED) == 0
        got = [r[3] for r in rec.records()[0]]
        # index 17's slot is the one the writer would fill next (index 25): not trusted
        assert got == list(range(5)) + list(range(18, 25))
        assert rec.dropped == 25 - len(got)
        times = [r[0] for r in rec.records()[0]]
        assert times == sorted(times)
        tr = rec.chrome()
        assert len([e for e in tr["traceEvents"] if e.get("cat") == "steal"]) == len(got)
    finally:
        region.close()


@pytest.mark.skipif(not HAS_MPL, reason="matplotlib is not installed")
def test_timeline_png(make_sched, tmp_path):
    s = make_sched(2)
    with s.trace() as rec:
        s.run(ot.sleepy_children, 4, 0.02)
        [f.result(60) for f in [s.submit(ot.nap, 0.01) for _ in range(10)]]
    png = tmp_path / "timeline.png"
    export.plot_timeline(rec.chrome(), png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


# ---------------------------------------------------------------------------
# stats
# ---------------------------------------------------------------------------


def _holds_still(read, seconds: float) -> bool:
    before = read()
    time.sleep(seconds)
    return read() == before


def test_stats_move_and_reset(make_sched):
    s = make_sched(2)
    st = s.stats()
    assert set(st["totals"]) == set(STAT_NAMES) and "interval_s" in st
    for name in ("tasks", "spawns", "steals_tried", "steals", "injected", "parks", "wakeups", "busy_ns",
                 "idle_ns"):
        assert name in STAT_NAMES
    n = 300
    assert [f.result(60) for f in [s.submit(ot.square, i) for i in range(n)]] == [i * i for i in range(n)]
    s.run(ot.sleepy_children, 4, 0.01)
    assert _wait(lambda: s.stats()["totals"]["tasks"] >= n + 1)
    assert _wait(lambda: s.stats()["totals"]["parks"] > 0)  # idle workers park and say so
    # Every worker has flushed the counts of that work (they flush when they
    # go idle): the count holds still for half a second before the reset, or
    # a late flush would land after it.
    assert _wait(lambda: _holds_still(lambda: s.stats()["totals"]["tasks"], 0.5))
    first = s.stats(reset=True)
    t = first["totals"]
    assert t["tasks"] >= n + 1 and t["injected"] >= n + 1 and t["spawns"] >= 4
    assert t["busy_ns"] > 0 and t["idle_ns"] > 0 and t["steals_tried"] > 0
    assert t["tasks"] == sum(r["tasks"] for r in first["workers"])
    after = s.stats()
    assert after["totals"]["tasks"] == 0 and after["totals"]["spawns"] == 0
    assert after["interval_s"] < first["interval_s"] + 60
    m = 57
    assert [f.result(60) for f in [s.submit(ot.square, i) for i in range(m)]] == [i * i for i in range(m)]
    assert _wait(lambda: s.stats()["totals"]["tasks"] >= m)
    time.sleep(0.2)
    assert s.stats()["totals"]["tasks"] == m  # exactly the tasks since the reset
    assert all(v >= 0 for v in s.stats()["totals"].values())


# ---------------------------------------------------------------------------
# progress bars
# ---------------------------------------------------------------------------


class FakeBar:
    def __init__(self):
        self.total = None
        self.n = 0
        self.updates = []
        self.refreshed = 0

    def update(self, n):
        self.n += n
        self.updates.append(n)

    def refresh(self):
        self.refreshed += 1


def test_map_progress_object_reaches_total(make_sched):
    s = make_sched(2)
    bar = FakeBar()
    assert list(s.map(ot.square, range(1000), progress=bar)) == [i * i for i in range(1000)]
    assert bar.n == 1000 and bar.total == 1000 and len(bar.updates) > 1
    # a map that is never iterated draws nothing
    s.map(ot.square, range(10), progress=FakeBar())


@pytest.mark.skipif(not HAS_TQDM, reason="tqdm is not installed")
def test_map_progress_tqdm(make_sched, capsys, monkeypatch):
    monkeypatch.delenv("PENNY_PROGRESS", raising=False)
    assert progress.backend_name() == "tqdm"
    s = make_sched(2)
    assert list(s.map(ot.square, range(500), progress="squaring")) == [i * i for i in range(500)]
    err = capsys.readouterr().err
    assert "squaring" in err and "500/500" in err and "100%" in err


def test_map_progress_text_fallback_unknown_length(make_sched, capsys, monkeypatch):
    monkeypatch.setenv("PENNY_PROGRESS", "text")
    s = make_sched(2)
    out = list(s.map(ot.square, (i for i in range(300)), progress=True))
    assert out == [i * i for i in range(300)]
    err = capsys.readouterr().err
    assert "map(square)" in err and "300/300 (100.0%)" in err.splitlines()[-1]


def test_parallel_for_progress(make_sched, capsys, monkeypatch):
    s = make_sched(2)
    with s:
        bar = FakeBar()
        penny.parallel_for(0, 200, ot.slow_body, grain=5, progress=bar)
        assert bar.n == 200 and bar.total == 200
        assert len(bar.updates) >= 2, "the bar moves while the loop runs"
        monkeypatch.setenv("PENNY_PROGRESS", "text")
        penny.parallel_for(0, 40, ot.slow_body, grain=4, progress="sweeping")
        err = capsys.readouterr().err
        assert "sweeping: 40/40 (100.0%)" in err and "ETA" in err
    assert s._progress_free and len(s._progress_free) == 7  # every counter slot given back


def test_progress_rejects_nonsense():
    with pytest.raises(TypeError):
        progress.make_bar(42, 10, "x")
    assert progress.make_bar(None, 10, "x") is None and progress.make_bar(False, 10, "x") is None


# ---------------------------------------------------------------------------
# logging
# ---------------------------------------------------------------------------


def test_library_adds_only_a_null_handler():
    handlers = logging.getLogger("penny").handlers
    assert handlers and all(isinstance(h, logging.NullHandler) for h in handlers)


def test_worker_crash_is_logged(make_sched, caplog):
    caplog.set_level(logging.DEBUG, logger="penny")
    s = make_sched(2, retries=0)
    assert s.submit(ot.square, 3).result(60) == 9
    with pytest.raises(penny.WorkerCrashedError):
        s.submit(ot.kill_self).result(60)

    def crash_records():
        return [r for r in caplog.records if r.name.startswith("penny") and r.levelno == logging.WARNING]

    assert _wait(lambda: any("replaced" in r.getMessage() for r in crash_records()))
    msgs = [r.getMessage() for r in crash_records()]
    assert any("SIGKILL" in m for m in msgs), msgs
    assert any("WorkerCrashedError" in m for m in msgs), msgs
    assert all(r.name == "penny.supervisor" for r in crash_records())
    assert any(r.levelno == logging.DEBUG and "started worker" in r.getMessage() for r in caplog.records)
    assert s.submit(ot.square, 4).result(60) == 16  # and the pool goes on


# ---------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------


def _penny(*args, timeout=300):
    env = helpers.subprocess_env()
    return subprocess.run([sys.executable, "-m", "penny", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT, check=False)


def test_cli_info():
    p = _penny("info", timeout=120)
    assert p.returncode == 0, p.stderr
    for word in ("penny", "default start method", "native core", "tqdm", "rich", "matplotlib", "joblib"):
        assert word in p.stdout


def test_cli_trace_summary_and_png(make_sched, tmp_path):
    s = make_sched(2)
    path = tmp_path / "x.json"
    with s.trace(path):
        [f.result(60) for f in [s.submit(ot.nap, 0.01, i) for i in range(20)]]
    png = tmp_path / "y.png"
    args = ["trace", str(path)] + (["--png", str(png)] if HAS_MPL else [])
    p = _penny(*args, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "worker 0" in p.stdout and "tests.observe_tasks.nap" in p.stdout
    if HAS_MPL:
        assert png.stat().st_size > 2000
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert _penny("trace", str(bad), timeout=120).returncode == 2


def test_cli_bench_quick_subset(tmp_path):
    out_json, out_md, out_png = tmp_path / "b.json", tmp_path / "b.md", tmp_path / "b.png"
    args = ["bench", "--quick", "--only", "b,e", "--compare", "processpool",
            "--json", str(out_json), "--markdown", str(out_md)]
    if HAS_MPL:
        args += ["--plot", str(out_png)]
    p = _penny(*args, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "Penny vs peers" in p.stdout and "not compared (--compare): pool, joblib, ray, dask" in p.stdout
    data = json.loads(out_json.read_text())
    assert data["ran"] == ["b", "e"]
    assert [r["peer_group"] for r in data["summary"]] == ["processpool"]
    assert data["summary"][0]["ratio"] > 0
    md = out_md.read_text()
    assert "| benchmark | peer | Penny | peer | Penny advantage |" in md and "ProcessPoolExecutor" in md
    if HAS_MPL:
        assert out_png.read_bytes()[:4] == b"\x89PNG"


def test_cli_bench_rejects_unknown_peer():
    p = _penny("bench", "--compare", "mpi", timeout=120)
    assert p.returncode != 0 and "unknown peer" in (p.stdout + p.stderr)


def test_cli_demo_small_with_trace(tmp_path):
    path = tmp_path / "demo.json"
    p = _penny("demo", "--workers", "2", "--limit", "20000", "--step", "2000", "--trace", str(path), timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "Nested fork-join" in p.stdout and "Shared-array kernel" in p.stdout
    tr = json.loads(path.read_text())
    names = {e["name"] for e in _task_events(tr)}
    assert "penny.cli.count_primes" in names and "penny.workloads.fib" in names
