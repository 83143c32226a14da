"""How a callable reaches the workers: the function table.

A task record names a function id (shm/registry.py); this module decides,
once per registration, how the callable behind an id travels:

* **by name**: a function (or class, or builtin) that a worker can import by
  ``module:qualname`` from a module other than ``__main__``; the worker
  imports it (as ``ProcessPoolExecutor`` does);
* **by pickle**: anything else: functions of ``__main__`` (a script, ``-c``,
  a REPL, a notebook), lambdas, closures, nested functions, partials, bound
  methods, callable objects, classmethods, ``operator.itemgetter``... are
  pickled with cloudpickle (by value where they cannot be imported, by
  reference where they can) into an arena block; each worker loads the
  pickle once, when it first meets the id.  Workers never import the user's
  ``__main__``.

The meaning of an id is fixed, so what a worker runs must be what a fresh
pickle of the callable at submit time would give: a closure whose captured
value changed between two submits sees the new value.  The table therefore
keys registrations by the pickle's bytes, and it skips pickling only when the
outcome cannot have changed: the callable is the same object, and every
object its pickle could depend on (code, defaults, closure cells, referenced
globals, a partial's arguments) is the same object as before and immutable
(numbers, strings, bytes, tuples of those, modules, importable functions and
classes).  A callable that captures anything mutable is pickled again at
every submit (like ``ProcessPoolExecutor`` does), and its bytes find the
existing registration when they did not change.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import operator
import pickle
import sys
import threading
import types

from .. import _context
from ..errors import NotImportableError, UnknownFunctionError
from ..shm.registry import DYNAMIC_BASE, KIND_NAME, MAX_STATIC_ID, FunctionDirectory
from .marshal import ByValue, pickle_module_by_value

try:  # a dependency; imported lazily by tools that only read traces
    import cloudpickle
except ImportError:  # pragma: no cover - declared in pyproject.toml
    cloudpickle = None


# ---- names ------------------------------------------------------------------------------
def qualified_name(fn) -> str | None:
    """``module:qualname`` if a worker can import `fn` by name, else None."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    if module == "__main__" or module == "__mp_main__" or "<" in qualname:
        return None  # workers never import __main__; lambdas and locals have no importable name
    mod = sys.modules.get(module)
    if mod is None or getattr(mod, "__spec__", None) is None:
        return None  # a module made at run time (no spec): a worker could not import it
    self = getattr(fn, "__self__", None)
    if self is not None and not isinstance(self, types.ModuleType):
        return None  # a bound method (or a builtin bound to an object): pickled with its object
    name = f"{module}:{qualname}"
    try:
        found = resolve(name)
    except Exception:  # noqa: BLE001 - not importable under that name
        return None
    return name if found is fn else None


def resolve(name: str):
    """Import ``module:qualname`` (in a worker).  ``__main__`` is the main
    script, imported on demand (_context.main_module)."""
    module, _, qualname = name.partition(":")
    obj = _context.main_module() if module in ("__main__", "__mp_main__") else importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def main_script_name(fn) -> str | None:
    """``__main__:qualname`` for a module-level function of a main *script*
    (one with a file a worker can import, as multiprocessing does), else
    None.  The fallback for such a function that cannot be pickled by value
    (it names an unpicklable global): the worker imports the script then, so
    the script needs its ``if __name__ == "__main__":`` guard, as with
    multiprocessing."""
    if getattr(fn, "__module__", None) != "__main__":
        return None
    qualname = getattr(fn, "__qualname__", None)
    main = sys.modules.get("__main__")
    if not isinstance(qualname, str) or "<" in qualname or not getattr(main, "__file__", None):
        return None
    obj = main
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return f"__main__:{qualname}" if obj is fn else None


def dumps(fn) -> bytes:
    """The pickle a worker loads `fn` from; NotImportableError if it has none."""
    if not callable(fn):
        raise TypeError(f"penny: {fn!r} is not callable")
    pickle_module_by_value(fn)
    try:
        return cloudpickle.dumps(fn, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        what = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        raise NotImportableError(
            f"penny: {what} cannot be sent to a worker process: pickling it failed "
            f"({type(e).__name__}: {e}); pass a function (a lambda, a closure and a partial are fine) "
            "whose captured values can be pickled"
        ) from e


# ---- when a pickle cannot have changed ---------------------------------------------------
_ATOMS = frozenset((type(None), bool, int, float, complex, str, bytes, range, type(Ellipsis),
                    type(NotImplemented)))
_MISSING = object()
_cell_contents = operator.attrgetter("cell_contents")


class Probe:
    """The places a fresh pickle of a callable could read something new from,
    and what each held when the pickle was made.

    Built by `probe(fn)` only when everything the pickle depends on is
    immutable (numbers, strings, bytes, tuples of those, modules, functions
    and classes that travel by name, code objects) or is itself probed (a
    function of ``__main__`` the callable calls, a partial's function): then
    `unchanged()` is true exactly while every probed place still holds the
    same object, and the pickle made at registration is what a fresh pickle
    would be.  Probed places: a function's code, defaults and keyword
    defaults (and that it has no attributes), its closure cells, the globals
    it names, a partial's function, arguments and keywords.  It runs at every
    submit of the callable, so `compile()` turns it into one function of
    plain attribute loads and identity tests (about 0.1 us for a function
    of ``__main__``).
    """

    __slots__ = ("fns", "partials", "empty", "cells", "dicts")

    def __init__(self):
        self.fns: list = []       # (function, code, defaults, kwdefaults)
        self.partials: list = []  # (partial, func, args, keywords)
        self.empty: list = []     # dicts that must stay empty (a partial's keywords, say)
        self.cells: list = []     # (cells, expected contents)
        self.dicts: list = []     # (dict, keys, expected values, expected length or -1)

    def unchanged(self) -> bool:
        for fn, code, defaults, kwdefaults in self.fns:
            if (fn.__code__ is not code or fn.__defaults__ is not defaults
                    or fn.__kwdefaults__ is not kwdefaults or fn.__dict__):
                return False
        for p, func, args, keywords in self.partials:
            if p.func is not func or p.args is not args or p.keywords is not keywords:
                return False
        for d in self.empty:
            if d:
                return False
        if self.cells or self.dicts:
            return self._unchanged_contents()
        return True

    def compile(self):
        """`unchanged` as one generated function of this probe's shape (made
        once per shape, then bound to this probe's objects)."""
        contents = bool(self.cells or self.dicts)
        make = _check_factory(len(self.fns), len(self.partials), len(self.empty), contents)
        if make is None:
            return self.unchanged
        args = [x for entry in self.fns for x in entry] + [x for entry in self.partials for x in entry]
        args += self.empty
        if contents:
            args.append(self._unchanged_contents)
        return make(*args)

    def _unchanged_contents(self) -> bool:
        is_ = operator.is_
        try:
            for cells, expected in self.cells:
                if not all(map(is_, map(_cell_contents, cells), expected)):
                    return False
        except ValueError:  # a cell was emptied
            return False
        for d, keys, expected, n in self.dicts:
            if (n >= 0 and len(d) != n) or not all(map(is_, map(d.get, keys, itertools.repeat(_MISSING)),
                                                    expected)):
                return False
        return True


_factories: dict = {}


def _check_factory(nfns: int, npartials: int, nempty: int, contents: bool):
    """A maker of `Probe.unchanged` for probes of one shape: ``make(*objects)``
    returns a function that tests them all in one expression."""
    key = (nfns, npartials, nempty, contents)
    make = _factories.get(key)
    if make is None:
        if len(_factories) >= 256 or nfns + npartials + nempty > 32:
            return None  # an unusual shape: the generic loop
        params, terms = [], []
        for i in range(nfns):
            params += [f"f{i}", f"c{i}", f"d{i}", f"k{i}"]
            terms.append(f"f{i}.__code__ is c{i} and f{i}.__defaults__ is d{i} "
                         f"and f{i}.__kwdefaults__ is k{i} and not f{i}.__dict__")
        for i in range(npartials):
            params += [f"p{i}", f"pf{i}", f"pa{i}", f"pk{i}"]
            terms.append(f"p{i}.func is pf{i} and p{i}.args is pa{i} and p{i}.keywords is pk{i}")
        for i in range(nempty):
            params.append(f"e{i}")
            terms.append(f"not e{i}")
        if contents:
            params.append("rest")
            terms.append("rest()")
        src = (f"def make({', '.join(params)}):\n"
               f"    def unchanged():\n"
               f"        return {' and '.join(terms) or 'True'}\n"
               f"    return unchanged\n")
        ns: dict = {}
        exec(compile(src, "<penny probe>", "exec"), ns)  # noqa: S102 - our own text, names only
        make = _factories[key] = ns["make"]
    return make


def probe(fn) -> Probe | None:
    """A Probe of `fn`, or None if its pickle depends on something mutable
    (a list, a dict, an object, a shared array...) or on something this
    check does not know: such a callable is pickled again at every call."""
    p = Probe()
    return p if _visit(fn, p, set(), 0) else None


def _visit(obj, p: Probe, seen: set, depth: int) -> bool:
    t = type(obj)
    if t in _ATOMS or t is types.ModuleType or t is types.CodeType:
        return True
    if depth > 8:
        return False
    if t is tuple or t is frozenset:
        return all(_visit(x, p, seen, depth + 1) for x in obj)
    if id(obj) in seen:
        return True
    seen.add(id(obj))
    if t is types.FunctionType:
        return qualified_name(obj) is not None or _visit_function(obj, p, seen, depth)
    if t is functools.partial:
        p.partials.append((obj, obj.func, obj.args, obj.keywords))
        return (_visit(obj.func, p, seen, depth + 1) and _visit(obj.args, p, seen, depth + 1)
                and _visit_dict(obj.keywords, p, seen, depth))
    if t is types.MethodType:  # a bound method: its object and function are fixed
        return _visit(obj.__self__, p, seen, depth + 1) and _visit(obj.__func__, p, seen, depth + 1)
    if t is types.BuiltinFunctionType:
        self = obj.__self__
        return (self is None or isinstance(self, types.ModuleType)
                or (isinstance(self, type) and qualified_name(self) is not None))
    if t in (types.MethodDescriptorType, types.WrapperDescriptorType, types.ClassMethodDescriptorType):
        return True
    if isinstance(obj, type):
        return qualified_name(obj) is not None  # a class of __main__ may change
    return False


def _visit_dict(d, p: Probe, seen: set, depth: int) -> bool:
    if not d:
        if d is not None:
            p.empty.append(d)
        return True
    keys = tuple(d)
    p.dicts.append((d, keys, tuple(d[k] for k in keys), len(keys)))
    return all(type(k) is str for k in keys) and all(_visit(d[k], p, seen, depth + 1) for k in keys)


def _visit_function(fn, p: Probe, seen: set, depth: int) -> bool:
    """A function pickled by value: its code, defaults, closure and globals."""
    if fn.__dict__:
        return False  # attributes set on the function (mutable)
    p.fns.append((fn, fn.__code__, fn.__defaults__, fn.__kwdefaults__))
    if not _visit(fn.__defaults__, p, seen, depth + 1) or not _visit_dict(fn.__kwdefaults__, p, seen, depth):
        return False
    cells = fn.__closure__ or ()
    try:
        contents = tuple(c.cell_contents for c in cells)
    except ValueError:  # an empty cell (a name assigned later)
        return False
    if cells:
        p.cells.append((cells, contents))
        if not all(_visit(v, p, seen, depth + 1) for v in contents):
            return False
    g = fn.__globals__
    names = _global_names(fn.__code__)
    if names:
        values = tuple(g.get(n, _MISSING) for n in names)
        p.dicts.append((g, names, values, -1))
        if not all(v is _MISSING or _visit(v, p, seen, depth + 1) for v in values):
            return False
    return True


_names_cache: dict = {}


def _global_names(code) -> tuple:
    """The names `code` (and the code nested in it) may read as globals."""
    names = _names_cache.get(code)
    if names is None:
        found = set(code.co_names)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                found.update(_global_names(const))
        names = _names_cache[code] = tuple(sorted(found))
    return names


# ---- the table ---------------------------------------------------------------------------
#: How many callables a table remembers by identity (each entry keeps its
#: callable alive): enough for any program's distinct functions, bounded for
#: one that makes a new lambda per submit.
CACHE_SIZE = 1024


class FunctionTable:
    """One process's view of the function table: the static part plus the
    shared directory, and how this process's callables map to ids.

    `route(fn, args, kwargs)` gives the (id, args, kwargs) of one call:

    * a callable that travels by name, or whose pickle cannot change (see
      `probe`), gets an id: once per callable, the second time the same
      pickle is seen (a program that makes a new lambda per submit does not
      fill the directory: the first call of a new pickle goes as below);
    * any other callable (one that captures something mutable: a list, a
      shared array, an object) travels with the call, as the first argument
      of the `call` trampoline, pickled with the arguments (wire/marshal.py:
      shared arrays as descriptors, so the worker writes the caller's memory).

    `stable_id(fn)` is the id of a callable of the first kind, or None.
    """

    def __init__(self, shared, layout, static: dict, start_method: str, arena=None):
        self.directory = FunctionDirectory(shared, layout)
        self.arena = arena
        self.static = dict(static)
        self.start_method = start_method
        self._by_id = dict(self.static)                       # id -> callable (loaded)
        self._static_ids = {id(f): i for i, f in self.static.items()}
        self._by_key: dict = {}        # "module:qualname" or pickle bytes -> dynamic id
        self._seen_once: dict = {}     # pickles submitted once, not yet registered (bounded)
        self._cache: dict = {}         # id(callable) -> (callable, unchanged check or None, id, by name)
        self._lock = threading.Lock()
        self._trampoline = None
        self._main_verdicts: dict = {}  # id(function of __main__) -> (function, pickles by value)

    # ---- the submitting side ----
    def cached(self, fn) -> int | None:
        """`fn`'s id if this process knows it and it cannot have changed."""
        hit = self._cache.get(id(fn))
        if hit is not None and hit[0] is fn and (hit[1] is None or hit[1]()):
            return hit[2]
        fid = self._static_ids.get(id(fn))
        if fid is not None and self.static.get(fid) is fn:
            return fid
        return None

    def stable_id(self, fn, first_call_registers: bool = True) -> int | None:
        """The id of `fn` if it travels by name or by a pickle that cannot
        change (registered now if new), else None.  NotImportableError if a
        stable callable cannot be pickled."""
        fid = self.cached(fn)
        if fid is not None:
            return fid
        if not callable(fn):
            raise TypeError(f"penny: {fn!r} is not callable")
        name = qualified_name(fn)
        if name is not None:
            fid = self._add(name, lambda: self.directory.add_name(name))
            self._remember(fn, None, fid, True)
            self._by_id.setdefault(fid, fn)
            return fid
        fp = probe(fn)
        if fp is None:
            return self._main_fallback(fn)
        fp = fp.compile()
        try:
            data = dumps(fn)
        except NotImportableError:
            fid = self._main_fallback(fn)
            if fid is None:
                raise
            return fid
        if self._by_key.get(data) is None and not first_call_registers:
            if data not in self._seen_once:
                seen = self._seen_once
                if len(seen) >= CACHE_SIZE:
                    seen.pop(next(iter(seen)))
                seen[data] = True
                return None
        self._seen_once.pop(data, None)
        fid = self._add(data, lambda: self._add_pickle(data))
        self._by_id.setdefault(fid, fn)
        self._remember(fn, fp, fid, False)
        return fid

    def _main_fallback(self, fn) -> int | None:
        """The by-name id of a function of the main script that cannot be
        pickled by value (see `main_script_name`), else None.  Checked once
        per function object: a trial pickle."""
        name = main_script_name(fn)
        if name is None:
            return None
        verdict = self._main_verdicts.get(id(fn))
        if verdict is None or verdict[0] is not fn:
            try:
                dumps(fn)
                picklable = True
            except NotImportableError:
                picklable = False
            verdict = self._main_verdicts[id(fn)] = (fn, picklable)
        if verdict[1]:
            return None  # it pickles: by value, with each call
        fid = self._add(name, lambda: self.directory.add_name(name))
        self._remember(fn, None, fid, True)
        self._by_id.setdefault(fid, fn)
        return fid

    def id_for(self, fn) -> int:
        """The id of `fn`, which must travel by name or by a stable pickle
        (the static table's and the runtime's own functions)."""
        fid = self.stable_id(fn)
        if fid is None:
            raise NotImportableError(f"penny: {fn!r} captures mutable state; pass it with each call")
        return fid

    def route(self, fn, args, kwargs):
        """(id, args, kwargs) for one call of `fn`."""
        fid = self.stable_id(fn, first_call_registers=False)
        if fid is not None:
            return fid, args, kwargs
        if not callable(fn):
            raise TypeError(f"penny: {fn!r} is not callable")
        if self._trampoline is None:
            self._trampoline = self.id_for(call)
        return self._trampoline, (ByValue(fn), *args), kwargs

    def by_name(self, fn) -> bool:
        """Whether `fn` travels by name (its id is valid as long as `fn` lives)."""
        hit = self._cache.get(id(fn))
        return hit is not None and hit[0] is fn and hit[3]

    def _remember(self, fn, fp, fid: int, by_name: bool) -> None:
        cache = self._cache
        if len(cache) >= CACHE_SIZE:
            cache.pop(next(iter(cache)))  # the oldest entry
        cache[id(fn)] = (fn, fp, fid, by_name)

    def _add(self, key, add) -> int:
        fid = self._by_key.get(key)
        if fid is None:
            with self._lock:
                fid = self._by_key.get(key)
                if fid is None:
                    fid = add()
                    self._by_key[key] = fid
        return fid

    def _add_pickle(self, data: bytes) -> int:
        if self.arena is None:  # pragma: no cover - every scheduler and worker has one
            raise NotImportableError("penny: this function table cannot hold pickled functions")
        off, n = self.arena.put(data)
        return self.directory.add_blob(off, n)

    # ---- the running side ----
    def lookup(self, fid: int):
        fn = self._by_id.get(fid)
        if fn is not None:
            return fn
        if fid < DYNAMIC_BASE:
            raise UnknownFunctionError(
                f"penny: no function with id {fid} in this scheduler's table "
                f"(static ids: {sorted(self.static)})"
            )
        kind, payload = self.directory.read(fid)
        try:
            if kind == KIND_NAME:
                what = payload.decode().replace(":", ".")
                fn = resolve(payload.decode())
            else:
                what = "a pickled function"
                fn = pickle.loads(self.arena.get(*payload))
        except Exception as e:
            raise NotImportableError(
                f"penny: the worker could not load {what}: {type(e).__name__}: {e}"
            ) from e
        self._by_id[fid] = fn
        return fn


def call(fn, *args, **kwargs):
    """The task behind a call whose callable travels with its arguments
    (FunctionTable.route, marshal.ByValue): `fn` arrives unpickled with them."""
    return fn(*args, **kwargs)


# ---- the static table -----------------------------------------------------------------------
class StaticTable(dict):
    """The static table ``{id: callable}`` as it travels to a worker: callables
    that a worker can import by name go as themselves (pickled by reference),
    the others as their cloudpickle."""

    def __reduce__(self):
        return _load_static, ([(fid, fn if qualified_name(fn) else dumps(fn)) for fid, fn in self.items()],)


def _load_static(items) -> StaticTable:
    return StaticTable((fid, pickle.loads(fn) if isinstance(fn, bytes) else fn) for fid, fn in items)


def validate_static(functions, start_method: str = "forkserver") -> StaticTable:
    """Check the static table given to a Scheduler; returns it ready to travel."""
    if functions is None:
        return StaticTable()
    table = StaticTable(functions)
    for fid, fn in table.items():
        if not isinstance(fid, int) or isinstance(fid, bool) or not 0 <= fid <= MAX_STATIC_ID:
            raise ValueError(f"penny: function ids must be ints in [0, {MAX_STATIC_ID}], got {fid!r}")
        if not callable(fn):
            raise TypeError(f"penny: functions[{fid}] = {fn!r} is not callable")
        if qualified_name(fn) is None:
            dumps(fn)  # NotImportableError now, not in a worker
    return table
