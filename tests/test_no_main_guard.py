"""No main guard needed (issue 13, item 2): under the default start method the
workers never run the user's ``__main__`` again, however the program is
started: ``python script.py``, ``python -c``, ``python - < script.py`` and
``python -i`` fed by stdin.  (IPython and Jupyter come with functions of
``__main__`` shipped by value: not tested here.)"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests import helpers as h

pytestmark = pytest.mark.usefixtures("no_leaked_processes")

# No `if __name__ == "__main__":`, and every line stands alone (python -i
# reads it as a REPL session).  The marker file counts how often the
# script's top level runs: once, in the main process.
SCRIPT = """\
import os, sys, operator
sys.path.insert(0, {root!r})
open({marker!r}, "a").write(str(os.getpid()) + chr(10))
import penny
from penny.workloads import fib
from tests import helpers
s = penny.Scheduler(2{extra})
pids = [p.pid for p in s._supervisor.procs]
print("RESULT", s.submit(fib, 20).result(120), s.run(operator.add, 2, 3), sum(s.map(helpers.square, range(100))))
print("PIDS", *pids)
s.shutdown()
print("END")
"""


def _check(r, marker, t0):
    out, err = r.stdout, r.stderr
    assert r.returncode == 0, err[-3000:]
    assert "RESULT 6765 5 328350" in out, (out, err[-3000:])
    assert "END" in out
    assert "Traceback" not in err and "Error" not in err, err[-3000:]
    runs = open(marker).read().split()
    assert len(runs) == 1, f"the script's top level ran {len(runs)} times (workers re-ran __main__)"
    assert time.monotonic() - t0 < 100
    pids = [int(x) for x in out.split("PIDS", 1)[1].split("\n", 1)[0].split()]
    left = h.wait_gone(pids, 10)
    assert not left, f"workers {left} outlived the program"


def _run(argv, stdin=None, tmp_path=None):
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120,
                          env=h.subprocess_env(), cwd=str(tmp_path), check=False)


def _script(tmp_path, extra=""):
    marker = str(tmp_path / "runs")
    return SCRIPT.format(root=h.ROOT, marker=marker, extra=extra), marker


@pytest.mark.parametrize("how", ["file", "-c", "stdin", "-i"])
def test_the_quick_start_without_a_main_guard(tmp_path, how):
    code, marker = _script(tmp_path)
    t0 = time.monotonic()
    if how == "file":
        path = tmp_path / "quick.py"
        path.write_text(code)
        r = _run([sys.executable, str(path)], tmp_path=tmp_path)
    elif how == "-c":
        r = _run([sys.executable, "-c", code], tmp_path=tmp_path)
    elif how == "stdin":
        r = _run([sys.executable, "-"], stdin=code, tmp_path=tmp_path)
    else:
        r = _run([sys.executable, "-i"], stdin=code, tmp_path=tmp_path)
    _check(r, marker, t0)


def test_fork_start_method_without_a_main_guard(tmp_path):
    code, marker = _script(tmp_path, ', start_method="fork"')
    path = tmp_path / "quick_fork.py"
    path.write_text(code)
    t0 = time.monotonic()
    _check(_run([sys.executable, str(path)], tmp_path=tmp_path), marker, t0)


MAIN_FUNCTION = """\
import sys
sys.path.insert(0, {root!r})
import penny

def double(x):
    return 2 * x

def tree(n):  # its children name it __mp_main__.tree: other workers must find it too
    if n == 0:
        return 1
    a = penny.spawn(tree, n - 1)
    b = tree(n - 1)
    return penny.sync(a) + b

if __name__ == "__main__":
    with penny.Scheduler(2) as s:
        print("TREE", s.run(tree, 11))  # one root: a worker that steals a child never ran the script
        print("RESULT", s.submit(double, 21).result(120))
"""


def test_a_function_of_a_guarded_script_still_runs_under_the_default(tmp_path):
    """A function defined in a (guarded) script is imported from it on demand,
    as before: only then is the script imported in the worker."""
    path = tmp_path / "guarded.py"
    path.write_text(MAIN_FUNCTION.format(root=h.ROOT))
    r = _run([sys.executable, str(path)], tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "RESULT 42" in r.stdout
    assert "TREE 2048" in r.stdout, (r.stdout, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
