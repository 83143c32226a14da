"""Free-threaded CPython (3.13t, built with --disable-gil): importing Penny,
running a threads scheduler with nested spawn/sync and a processes scheduler
keep the GIL off (the C core declares Py_MOD_GIL_NOT_USED; every compiled
dependency must too, or CPython turns the GIL back on with a RuntimeWarning).

Each check runs in a fresh interpreter: whether this one's GIL is on depends
on what the other tests imported (Ray, scikit-learn ...), and PYTHON_GIL,
which would force the answer, is removed from its environment.  On a GIL
build there is no GIL to keep off: skipped, saying so.  scripts/
freethreaded-python.sh builds the interpreter; .ci/run runs the whole suite
on it."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

import pytest

from tests.helpers import ROOT

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

pytestmark = [
    pytest.mark.skipif(
        not FREE_THREADED,
        reason="a GIL build of CPython: there is no GIL to keep off (run on python3.13t: "
        "scripts/freethreaded-python.sh)",
    ),
    pytest.mark.timeout(240),
]


def _run(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    # -W error::RuntimeWarning: "The global interpreter lock (GIL) has been
    # enabled to load module ..." fails the import instead of passing quietly.
    p = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-W", "error::RuntimeWarning", "-c", code],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=200, check=False,
    )
    assert p.returncode == 0, f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p.stdout


def test_import_keeps_the_gil_off():
    out = _run(
        "import sys\n"
        "assert not sys._is_gil_enabled(), 'GIL on before import'\n"
        "import penny, penny._core, greenlet\n"
        "from penny.backends import threads\n"
        "assert not sys._is_gil_enabled(), 'import penny turned the GIL on'\n"
        "print('ok')\n"
    )
    assert out.strip() == "ok"


def test_threads_scheduler_keeps_the_gil_off_and_runs_tasks_in_parallel_threads():
    out = _run(
        "import sys, threading\n"
        "import penny\n"
        "from tests import thread_tasks as tt\n"
        "def gil_in_task():\n"
        "    return sys._is_gil_enabled(), threading.current_thread().name\n"
        "with penny.Scheduler(2, backend='threads') as s:\n"
        "    assert s.run(tt.fib, 20) == 6765\n"
        "    assert s.run(tt.tree, 6, 4, 1) == tt.tree_serial(6, 4, 1)\n"
        "    assert list(s.map(lambda i: i * i, range(200))) == [i * i for i in range(200)]\n"
        "    gil, name = s.submit(gil_in_task).result(timeout=60)\n"
        "    assert not gil and name.startswith('penny-worker-'), (gil, name)\n"
        "    arr = s.shared_array((1000,), 'float64', 1.0)\n"
        "    assert s.submit(lambda a: float(a.sum()), arr).result(timeout=60) == 1000.0\n"
        "    del arr\n"
        "assert not sys._is_gil_enabled(), 'the threads backend turned the GIL on'\n"
        "print('ok')\n"
    )
    assert out.strip() == "ok"


def test_processes_scheduler_keeps_the_gil_off_in_the_workers_too():
    out = _run(
        "import sys\n"
        "import penny\n"
        "if __name__ == '__main__':\n"
        "    with penny.Scheduler(2) as s:\n"
        "        assert s.submit(sys._is_gil_enabled).result(timeout=60) is False\n"
        "    assert not sys._is_gil_enabled(), 'the processes backend turned the GIL on'\n"
        "    print('ok')\n"
    )
    assert out.strip() == "ok"
