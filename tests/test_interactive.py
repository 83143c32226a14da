"""No main guard needed, anywhere (issue 13, item 2): the same few lines run
as a script without ``if __name__ == "__main__":``, with ``python -c``, from
standard input, in ``python -i``, in IPython and in a real Jupyter kernel
executing a notebook.  Functions defined there (in ``__main__``) travel by
value; workers never import the user's main module.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests import helpers as h

TIMEOUT = 180

# The user's program: functions of __main__, a lambda, a closure, nested fork-join.
PROGRAM = textwrap.dedent("""
    import penny

    def fib(n):
        if n < 15:
            return n if n < 2 else fib(n - 1) + fib(n - 2)
        x = penny.spawn(fib, n - 1)
        return fib(n - 2) + penny.sync(x)

    offset = 10
    with penny.Scheduler(2) as s:
        print("RESULT", s.run(fib, 22), s.submit(lambda x: x + offset, 32).result(),
              list(s.map(lambda x: x * x, range(5))))
""")
EXPECTED = "RESULT 17711 42 [0, 1, 4, 9, 16]"


def check(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert EXPECTED in r.stdout, r.stdout[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


def run(args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=TIMEOUT,
                          env=h.subprocess_env(), check=False, **kw)


def test_a_script_without_a_main_guard(tmp_path):
    path = tmp_path / "script.py"
    path.write_text(PROGRAM)
    check(run([str(path)], cwd=tmp_path))


def test_python_c():
    check(run(["-c", PROGRAM]))


def test_python_reading_the_program_from_stdin(tmp_path):
    check(run(["-"], input=PROGRAM, cwd=tmp_path))


def test_python_i_fed_by_stdin(tmp_path):
    """An interactive session (``python -i``), the program typed line by line."""
    check(run(["-i"], input=PROGRAM + "\n", cwd=tmp_path))


def test_ipython(tmp_path):
    pytest.importorskip("IPython", reason="IPython comes with the test extras (ipykernel)")
    path = tmp_path / "prog.ipy"
    path.write_text(PROGRAM)
    check(run(["-m", "IPython", "--no-banner", "--quick", str(path)], cwd=tmp_path))


def test_a_jupyter_notebook_on_a_real_kernel(tmp_path):
    """A notebook whose cells define functions and use a Scheduler, executed
    by a real IPython kernel (nbclient + ipykernel, as Jupyter runs it)."""
    nbformat = pytest.importorskip("nbformat", reason="the test extras install nbformat")
    nbclient = pytest.importorskip("nbclient", reason="the test extras install nbclient")
    pytest.importorskip("ipykernel", reason="the test extras install ipykernel")
    cells = [
        "import penny\ns = penny.Scheduler(2)",
        "def fib(n):\n    if n < 15:\n        return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
        "    x = penny.spawn(fib, n - 1)\n    return fib(n - 2) + penny.sync(x)",
        "offset = 10\nprint('RESULT', s.run(fib, 22), s.submit(lambda x: x + offset, 32).result(), "
        "list(s.map(lambda x: x * x, range(5))))",
        "offset = 20\nprint('AGAIN', s.submit(lambda x: x + offset, 22).result())",
        "s.shutdown()",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    env = h.subprocess_env()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel is started with this environment (tests importable)
    try:
        client = nbclient.NotebookClient(nb, timeout=TIMEOUT, kernel_name="python3",
                                         resources={"metadata": {"path": str(tmp_path)}})
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stdout")
    assert EXPECTED in text, nb.cells
    assert "AGAIN 42" in text, nb.cells
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors


GUARDED_UNPICKLABLE = textwrap.dedent("""
    import struct, threading
    import penny

    S = struct.Struct("<Q")          # module globals that cannot be pickled:
    LOCK = threading.Lock()          # these functions cannot travel by value

    def pack(x):
        with LOCK:
            return S.unpack(S.pack(x))[0] + 1

    def apply(f, x):
        return f(x)

    if __name__ == "__main__":
        with penny.Scheduler(2) as s:
            print("RESULT", s.submit(pack, 41).result(), s.submit(apply, pack, 41).result(),
                  list(s.map(pack, range(3))))
""")


def test_a_guarded_script_whose_functions_name_unpicklable_globals(tmp_path):
    """Such a function cannot go by value; the worker imports the script
    instead (as multiprocessing does), which its main guard makes safe."""
    path = tmp_path / "guarded.py"
    path.write_text(GUARDED_UNPICKLABLE)
    r = run([str(path)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "RESULT 42 42 [1, 2, 3]" in r.stdout, r.stdout
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
