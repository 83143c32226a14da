"""The function table: what a task record may name.

A record carries a 32-bit function id, never code.  Ids below 2**31 are the
*static* table given to the Scheduler (``functions={1: add}``), copied to
every worker at start.  Ids from 2**31 up name functions registered *by
qualified name* when first submitted: the main process (or a worker) writes
``module:qualname`` into the shared directory, and a worker that meets the
id imports the module and looks the name up.  Workers therefore run only
functions they can import themselves, and a task can name only those.
"""

from __future__ import annotations

import importlib
import sys
import threading

from .. import _context, _core
from ..errors import NotImportableError, UnknownFunctionError
from .layout import FN_ENTRY, FN_LEN, FN_NAME, FN_NAME_MAX, H_FN_COUNT, Layout

DYNAMIC_BASE = 1 << 31
MAX_STATIC_ID = DYNAMIC_BASE - 1


def qualified_name(fn) -> str:
    """``module:qualname`` of an importable function, or NotImportableError saying why not."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    what = getattr(fn, "__name__", None) or repr(fn)
    if not callable(fn):
        raise TypeError(f"penny: {fn!r} is not callable")
    if getattr(fn, "__self__", None) is not None and not isinstance(fn.__self__, type(sys)):
        raise NotImportableError(
            f"penny: {what!r} is a bound method; a task names a function, not an object: pass a "
            "module-level function and the object (if it pickles) as an argument"
        )
    if module is None or qualname is None:
        raise NotImportableError(
            f"penny: {what!r} has no module and qualified name, so a worker process cannot import it "
            "(partials, callable instances and builtins bound to objects are not supported): "
            "pass a function defined with `def` at module level, and its arguments separately"
        )
    if "<lambda>" in qualname:
        raise NotImportableError(
            f"penny: {module}.{qualname} is a lambda, which a worker process cannot import: "
            "define it with `def` at the top level of a module"
        )
    if "<locals>" in qualname:
        raise NotImportableError(
            f"penny: {module}.{qualname} is defined inside another function (a closure or nested "
            "function), which a worker process cannot import: move it to the top level of a module "
            "and pass what it closes over as arguments"
        )
    return f"{module}:{qualname}"


def resolve(name: str):
    """Import ``module:qualname`` (in a worker)."""
    module, _, qualname = name.partition(":")
    if module in ("__main__", "__mp_main__"):  # a task of a worker that imported the script spawns it
        mod = _context.main_module()
    else:
        mod = importlib.import_module(module)
    obj = mod
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def check_importable(fn, start_method: str) -> str:
    """The name workers will import `fn` by; NotImportableError if they cannot."""
    name = qualified_name(fn)
    module, _, qualname = name.partition(":")
    try:
        found = resolve(name)
    except (ImportError, AttributeError, KeyError):
        found = None
    if found is not fn:
        raise NotImportableError(
            f"penny: {module}.{qualname} cannot be found again under that name (it was replaced, "
            "deleted or created dynamically): workers import functions by module and name"
        )
    if module == "__main__" and start_method != "fork":
        main = sys.modules.get("__main__")
        if not getattr(main, "__file__", None):
            raise NotImportableError(
                f"penny: {qualname} is defined in an interactive __main__ (a REPL, notebook or -c), "
                f"which '{start_method}' workers cannot import: move it to a module, or use "
                "Scheduler(start_method='fork')"
            )
    return name


def validate_static(functions, start_method: str) -> dict:
    """Check the static table given to a Scheduler; returns a plain dict copy."""
    if functions is None:
        return {}
    table = dict(functions)
    for fid, fn in table.items():
        if not isinstance(fid, int) or isinstance(fid, bool) or not 0 <= fid <= MAX_STATIC_ID:
            raise ValueError(f"penny: function ids must be ints in [0, {MAX_STATIC_ID}], got {fid!r}")
        if not callable(fn):
            raise TypeError(f"penny: functions[{fid}] = {fn!r} is not callable")
        if start_method != "fork":
            check_importable(fn, start_method)
    return table


class FunctionTable:
    """One process's view of the table: the static part plus the shared directory."""

    def __init__(self, shared: _core.Shared, layout: Layout, static: dict, start_method: str):
        self.s = shared
        self.base = layout.functions
        self.slots = layout.function_slots
        self.static = dict(static)
        self.start_method = start_method
        self._by_id = dict(self.static)                       # id -> function (resolved)
        self._static_ids = {id(f): i for i, f in self.static.items()}
        self._by_name: dict[str, int] = {}                    # "mod:qual" -> dynamic id
        self._lock = threading.Lock()

    # ---- the submitting side ----
    def id_for(self, fn) -> int:
        """The id a task calling `fn` carries: its static id, or a dynamic one
        registered now (NotImportableError if workers could not import it)."""
        fid = self._static_ids.get(id(fn))
        if fid is not None and self.static.get(fid) is fn:
            return fid
        name = qualified_name(fn)
        fid = self._by_name.get(name)
        if fid is not None and self._by_id.get(fid) is fn:
            return fid
        check_importable(fn, self.start_method)
        return self._register(name, fn)

    def _register(self, name: str, fn) -> int:
        data = name.encode()
        if len(data) > FN_NAME_MAX:
            raise NotImportableError(f"penny: the qualified name {name!r} is longer than {FN_NAME_MAX} bytes")
        with self._lock:
            fid = self._by_name.get(name)
            if fid is not None:
                self._by_id[fid] = fn
                return fid
            # Relaxed: the slot is ours alone; its name is published below.
            slot = self.s.fetch_add32(H_FN_COUNT, 1, _core.RELAXED)
            if slot >= self.slots:
                raise NotImportableError(
                    f"penny: more than {self.slots} distinct functions were submitted; "
                    "raise function_slots= or use a static function table"
                )
            entry = self.base + slot * FN_ENTRY
            self.s.write_bytes(entry + FN_NAME, data)
            # Release: the name bytes are visible to a worker that reads the length.
            self.s.store32(entry + FN_LEN, len(data), _core.RELEASE)
            fid = DYNAMIC_BASE + slot
            self._by_name[name] = fid
            self._by_id[fid] = fn
            return fid

    # ---- the running side ----
    def lookup(self, fid: int):
        fn = self._by_id.get(fid)
        if fn is not None:
            return fn
        if fid < DYNAMIC_BASE or fid - DYNAMIC_BASE >= self.slots:
            raise UnknownFunctionError(
                f"penny: no function with id {fid} in this scheduler's table "
                f"(static ids: {sorted(self.static)})"
            )
        entry = self.base + (fid - DYNAMIC_BASE) * FN_ENTRY
        # Acquire: pairs with the registering process's release of the length.
        n = self.s.load32(entry + FN_LEN, _core.ACQUIRE)
        if n == 0:
            raise UnknownFunctionError(f"penny: function id {fid} was never registered")
        name = self.s.read_bytes(entry + FN_NAME, n).decode()
        try:
            fn = resolve(name)
        except Exception as e:
            raise NotImportableError(
                f"penny: the worker could not import {name.replace(':', '.')}: {type(e).__name__}: {e}"
            ) from e
        self._by_id[fid] = fn
        self._by_name[name] = fid
        return fn
