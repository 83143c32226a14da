"""Every Python code block of README.md and docs/*.md runs as pasted.

Each block is written to a file of its own and run with this interpreter as
a script (``python block.py``), so a snippet that fails for a user who pastes
it fails here.  A block whose first lines hold a directive comment is
treated as it says:

* ``# doc: needs MODULE`` (one or more, comma-separated): run it only where
  MODULE imports (an optional extra such as ``ray`` or ``matplotlib``; CI
  installs them);
* ``# doc: not run: REASON``: shown for reading only (it needs something a
  test cannot have, e.g. a remote cluster); the reason must be written.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

from tests import helpers as h

ROOT = pathlib.Path(h.ROOT)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^([ \t]*)```python[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)
DIRECTIVE = re.compile(r"^#\s*doc:\s*(needs|not run:)\s*(.*)$")


def blocks():
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            out.append(pytest.param(textwrap.dedent(m.group(2)), id=f"{path.relative_to(ROOT)}:{line}"))
    return out


def directives(code: str) -> tuple[list[str], str | None]:
    needs, not_run = [], None
    for line in code.splitlines()[:5]:
        m = DIRECTIVE.match(line.strip())
        if not m:
            continue
        if m.group(1) == "needs":
            needs += [x.strip() for x in m.group(2).split(",") if x.strip()]
        else:
            not_run = m.group(2).strip()
    return needs, not_run


def test_the_docs_have_python_blocks():
    assert len(blocks()) >= 8


@pytest.mark.parametrize("code", blocks())
def test_block_runs_as_pasted(code, tmp_path):
    needs, not_run = directives(code)
    if not_run is not None:
        assert len(not_run) > 10, "a block that is not run must say why"
        compile(code, "<doc block>", "exec")  # it is still valid Python
        return
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (an optional extra; CI installs it)")
    script = tmp_path / "block.py"
    script.write_text(code)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path, env=h.subprocess_env(), check=False)
    assert r.returncode == 0, f"exit {r.returncode}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
