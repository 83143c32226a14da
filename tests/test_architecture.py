"""The shape of the package: layers that import only downward, no import
cycle, no oversized native file, and a public API pinned name by name.

The import scan reads every ``import`` statement of every module under
src/penny with `ast` (function-local ones too, since a lazy import is still a
dependency), resolves relative imports, and checks each edge against the
layer order that docs/architecture.md draws.
"""

from __future__ import annotations

import ast
import pathlib

import penny

SRC = pathlib.Path(__file__).resolve().parent.parent / "src" / "penny"

#: Lowest first.  A module may import modules of its own layer or a lower one.
LAYERS = [
    ("ground", ("penny._core", "penny.errors", "penny.config", "penny._version", "penny._context",
                "penny._proc", "penny._killpoints")),
    ("shm", ("penny.shm",)),
    ("wire", ("penny.wire",)),
    ("trace", ("penny.trace",)),
    ("runtime", ("penny.runtime",)),
    ("frontend", ("penny.frontend",)),
    ("backends", ("penny.backends",)),
    ("top", ("penny", "penny.cli", "penny.__main__", "penny.workloads", "penny.joblib")),
]


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank is not None, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return rank


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports_of(path: pathlib.Path, modules) -> set[str]:
    """The penny modules that `path` imports anywhere in its body."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "penny" or alias.name.startswith("penny."):
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not (target == "penny" or target.startswith("penny.")):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                # `from pkg import mod` imports the module pkg.mod.
                found.add(sub if sub in modules or sub == "penny._core" else target)
    found.discard(me)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    graph = {m: imports_of(p, modules) for m, p in modules.items()}
    for m, deps in graph.items():
        for d in deps:
            assert d in modules or d == "penny._core", f"{m} imports {d}, which does not exist"
    return graph


def test_every_module_has_a_layer():
    for m in all_modules():
        layer_of(m)


def test_imports_only_go_downward():
    upward = []
    for m, deps in import_graph().items():
        for d in deps:
            if layer_of(d) > layer_of(m):
                upward.append(f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})")
    assert not upward, "imports that go up a layer:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    graph = import_graph()
    # Tarjan's strongly connected components: any component of 2+ modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_scan_sees_local_and_relative_imports(tmp_path):
    """The scanner itself: a function-local relative import is an edge."""
    modules = all_modules()
    edges = imports_of(SRC / "runtime" / "worker.py", modules)
    assert "penny.runtime.forkjoin" in edges and "penny.shm.layout" in edges
    assert "penny._context" in edges  # `from .. import _context, _core, config`


def test_no_native_file_over_1000_lines():
    files = sorted(SRC.rglob("*.[ch]"))
    assert files, "no native sources found"
    long = {str(f.relative_to(SRC)): n for f in files if (n := len(f.read_text().splitlines())) > 1000}
    assert not long, f"native files over 1,000 lines: {long}"


# ---- the public API ------------------------------------------------------------------

PUBLIC = {
    "ArgumentPicklingError",
    "ArgumentUnpicklingError",
    "BrokenExecutorError",
    "CorruptRegionError",
    "Executor",
    "Handle",
    "NotImportableError",
    "PennyError",
    "ResultPicklingError",
    "Scheduler",
    "SchedulerClosedError",
    "TaskError",
    "TaskInterrupted",
    "UnknownFunctionError",
    "WorkerCrashedError",
    "__version__",
    "join",
    "parallel_for",
    "share",
    "shared_array",
    "shared_buffer",
    "spawn",
    "sync",
}

#: Subpackages and modules that become attributes of `penny` once imported.
SUBMODULES = {"backends", "cli", "config", "errors", "frontend", "joblib", "runtime", "shm", "trace", "wire",
              "workloads"}


def test_all_is_exactly_the_public_api():
    assert set(penny.__all__) == PUBLIC
    assert len(penny.__all__) == len(set(penny.__all__))


def test_every_exported_name_exists():
    for name in penny.__all__:
        assert hasattr(penny, name), name


def test_no_other_public_name():
    import types

    public = {n for n in dir(penny) if not n.startswith("_")}
    modules = {n for n in public if isinstance(getattr(penny, n), types.ModuleType)}
    assert modules <= SUBMODULES, f"unexpected submodules: {modules - SUBMODULES}"
    extra = public - modules - PUBLIC
    assert not extra, f"public names not in __all__: {sorted(extra)}"


def test_every_penny_error_is_exported_or_backend_specific():
    """The errors a user can catch by name from `penny` (all PennyError subclasses)."""
    from penny import errors

    for name in dir(errors):
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, penny.PennyError):
            assert name in PUBLIC, f"penny.errors.{name} is not exported"


# ---- the distribution ------------------------------------------------------------------

def test_the_distribution_is_penny_runtime_and_its_version_is_penny_version():
    """"penny" on PyPI is another project: Penny installs as penny-runtime,
    with the version of penny._version (one place)."""
    from importlib import metadata

    assert metadata.version("penny-runtime") == penny.__version__
    assert metadata.metadata("penny-runtime")["License-Expression"] == "MIT"


def test_every_install_hint_names_penny_runtime():
    """No message or doc tells a user to `pip install 'penny[...]'` (that
    would fetch the other project)."""
    import re

    root = SRC.parent.parent
    hits = []
    for path in [*SRC.rglob("*.py"), *(root / "docs").glob("*.md"), root / "README.md",
                 *(root / "benchmarks").glob("*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"pip install [\"']?penny[\[\"' ]", line):
                hits.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert not hits, hits
