/*
 * forkjoin.c: the fork-join fast paths: the Handle and ForkCore types and
 * penny.spawn / penny.sync (M_spawn, M_sync).  Part of the unity build
 * (core.c), not compiled on its own.
 *
 * `penny.spawn` and `penny.sync` are these two C functions.  Inside a task
 * on a worker, a spawn makes a private Handle (no record, no atomic but one
 * relaxed load of the sleeper count) and a sync of the newest private handle
 * calls its function right here: the unstolen spawn + sync costs two C calls
 * and the call itself.  Everything else (publishing to the shared deque,
 * waiting, suspending; spawn outside tasks) is Python code in fibers.py,
 * reached through the callbacks that `bind_fork` registers.
 */

enum { H_PRIVATE = 0, H_PUBLISHED = 1, H_DONE = 2 };

typedef struct {
    PyObject_HEAD
    int state, failed, observed;
    unsigned int fid;
    unsigned long long parent, ref;
    PyObject *fn, *args, *kwargs, *value;
} HandleObject;

static int
Handle_traverse(HandleObject *h, visitproc visit, void *arg)
{
    Py_VISIT(h->fn);
    Py_VISIT(h->args);
    Py_VISIT(h->kwargs);
    Py_VISIT(h->value);
    return 0;
}

static int
Handle_clear(HandleObject *h)
{
    Py_CLEAR(h->fn);
    Py_CLEAR(h->args);
    Py_CLEAR(h->kwargs);
    Py_CLEAR(h->value);
    return 0;
}

static void
Handle_dealloc(HandleObject *h)
{
    PyObject_GC_UnTrack(h);
    Handle_clear(h);
    Py_TYPE(h)->tp_free((PyObject *)h);
}

static PyTypeObject HandleType;

static HandleObject *
handle_new(unsigned int fid, PyObject *fn, PyObject *args, PyObject *kwargs, unsigned long long parent)
{
    HandleObject *h = PyObject_GC_New(HandleObject, &HandleType);
    if (!h)
        return NULL;
    h->state = H_PRIVATE;
    h->failed = h->observed = 0;
    h->fid = fid;
    h->parent = parent;
    h->ref = 0;
    h->fn = Py_NewRef(fn);
    h->args = Py_NewRef(args);
    h->kwargs = Py_XNewRef(kwargs);
    h->value = NULL;
    PyObject_GC_Track(h);
    return h;
}

static PyObject *
Handle_tp_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    unsigned int fid;
    PyObject *fn, *a, *k;
    unsigned long long parent;
    if (!PyArg_ParseTuple(args, "IOOOK:Handle", &fid, &fn, &a, &k, &parent))
        return NULL;
    return (PyObject *)handle_new(fid, fn, a, k == Py_None ? NULL : k, parent);
}

static PyObject *
Handle_result(HandleObject *h, PyObject *unused);

static PyObject *
Handle_done(HandleObject *h, PyObject *unused)
{
    return PyBool_FromLong(h->state == H_DONE);
}

static PyObject *
Handle_repr(HandleObject *h)
{
    static const char *names[] = {"private", "published", "done"};
    /* PyUnicode_FromFormat has no %#llx: format the hex digits ourselves. */
    char ref[32];
    PyOS_snprintf(ref, sizeof ref, "%#llx", h->ref);
    return PyUnicode_FromFormat("<penny.Handle %s ref=%s>", names[h->state % 3], ref);
}

/* Read-only from Python: run_private and M_sync trust these fields (a
 * private handle's fn and args are called; a done one's value is raised or
 * returned), so only the C code below and the transitions _publish and
 * _settle may change them, each from the one state it is allowed from. */
static PyMemberDef Handle_members[] = {
    {"state", T_INT, offsetof(HandleObject, state), READONLY, "0 private, 1 published, 2 done"},
    {"failed", T_INT, offsetof(HandleObject, failed), READONLY, "the child raised (value is the exception)"},
    {"observed", T_INT, offsetof(HandleObject, observed), READONLY, "its outcome was synced"},
    {"fid", T_UINT, offsetof(HandleObject, fid), READONLY, "function id"},
    {"parent", T_ULONGLONG, offsetof(HandleObject, parent), READONLY, "ref of the spawning task"},
    {"ref", T_ULONGLONG, offsetof(HandleObject, ref), READONLY, "record ref once published"},
    {"fn", T_OBJECT, offsetof(HandleObject, fn), READONLY, NULL},
    {"args", T_OBJECT, offsetof(HandleObject, args), READONLY, NULL},
    {"kwargs", T_OBJECT, offsetof(HandleObject, kwargs), READONLY, NULL},
    {"value", T_OBJECT, offsetof(HandleObject, value), READONLY, "result or exception once done"},
    {NULL},
};

/* _publish(ref): private -> published (fibers: the child got a record). */
static PyObject *
Handle_publish(HandleObject *h, PyObject *arg)
{
    unsigned long long ref = PyLong_AsUnsignedLongLong(arg);
    if (ref == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (h->state != H_PRIVATE)
        return PyErr_Format(PyExc_RuntimeError, "penny: only a private handle can be published");
    h->state = H_PUBLISHED;
    h->ref = ref;
    Py_CLEAR(h->fn);
    Py_CLEAR(h->args);
    Py_CLEAR(h->kwargs);
    Py_RETURN_NONE;
}

/* _settle(value, failed): published -> done with its outcome (fibers.take). */
static PyObject *
Handle_settle(HandleObject *h, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2)
        return PyErr_Format(PyExc_TypeError, "_settle(value, failed) takes 2 arguments");
    int failed = PyObject_IsTrue(args[1]);
    if (failed < 0)
        return NULL;
    if (h->state != H_PUBLISHED)
        return PyErr_Format(PyExc_RuntimeError, "penny: only a published handle can be settled");
    if (failed && !PyExceptionInstance_Check(args[0]))
        return PyErr_Format(PyExc_TypeError, "penny: a failed handle's value must be an exception");
    Py_XSETREF(h->value, Py_NewRef(args[0]));
    h->failed = failed;
    h->state = H_DONE;
    Py_RETURN_NONE;
}

/* _observe(flag): whether its outcome was synced (reported at the end of the
 * task if a failure was not). */
static PyObject *
Handle_observe(HandleObject *h, PyObject *arg)
{
    int v = PyObject_IsTrue(arg);
    if (v < 0)
        return NULL;
    h->observed = v;
    Py_RETURN_NONE;
}

static PyMethodDef Handle_methods[] = {
    {"result", (PyCFunction)Handle_result, METH_NOARGS, "The child's result (penny.sync(handle))."},
    {"done", (PyCFunction)Handle_done, METH_NOARGS, "Whether the child's outcome is in the handle."},
    {"_publish", (PyCFunction)Handle_publish, METH_O, "_publish(ref): private -> published (runtime only)"},
    {"_settle", (PyCFunction)(void (*)(void))Handle_settle, METH_FASTCALL,
     "_settle(value, failed): published -> done (runtime only)"},
    {"_observe", (PyCFunction)Handle_observe, METH_O, "_observe(flag) (runtime only)"},
    {NULL},
};

static PyTypeObject HandleType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "penny.Handle",
    .tp_basicsize = sizeof(HandleObject),
    .tp_dealloc = (destructor)Handle_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A child spawned by the running task: penny.sync(handle) or handle.result().",
    .tp_traverse = (traverseproc)Handle_traverse,
    .tp_clear = (inquiry)Handle_clear,
    .tp_members = Handle_members,
    .tp_methods = Handle_methods,
    .tp_new = Handle_tp_new,
    .tp_repr = (reprfunc)Handle_repr,
};

/* The worker's fork-join state; fibers.ForkJoin subclasses it. */
typedef struct {
    PyObject_HEAD
    PyObject *dict;                 /* instance dict for the Python subclass */
    unsigned long long task;        /* ref of the running task, 0 outside tasks */
    int depth, max_depth;           /* inline nesting on the current fiber */
    unsigned long long spawns;
    Py_ssize_t head;                /* private[head:] are live, oldest first */
    PyObject *private;              /* list of Handles */
    PyObject *fids;                 /* function -> id */
    Shared *shared;                 /* for the sleeper hint */
    Py_ssize_t sleepers_off, deque_off;
} ForkCore;

/* The worker's fork state.  A worker process has one, bound by its main
 * thread (`bind`): `the_fork`, a plain global, read by the hot paths.
 * Under the threads backend every worker thread binds its own
 * (`bind_thread`): `thread_fork`, thread-local, and `per_thread` is set for
 * the rest of the process's life, after which the hot paths read the
 * thread-local one (any other thread, e.g. the caller's, has none, so
 * spawn/sync there take the fallbacks).  Greenlet fibers of one worker share
 * their thread's.  Why not thread-local always: on the processes backend's
 * hot path the global is one RIP-relative load, the TLS word two dependent
 * loads (measured: about 8 ns of a 130 ns spawn + sync); `per_thread` is a
 * load of a word that never changes, so the branch is always predicted.
 * `bind` sets both, so a worker forked from a process that had set
 * `per_thread` still finds its state.  Initial-exec TLS: no __tls_get_addr
 * call (one pointer of the static TLS surplus).  `the_fork` and
 * `per_thread` are relaxed atomics: other threads may store them while a
 * thread reads them without a GIL (a relaxed load is a plain load on
 * x86-64 and arm64, so the hot path is as before); each thread reads only
 * the ForkCore it bound itself, so no ordering is needed beyond that. */
static ForkCore *_Atomic the_fork = NULL;
static _Thread_local ForkCore *thread_fork __attribute__((tls_model("initial-exec"))) = NULL;
static atomic_int per_thread = 0;

static inline ForkCore *
current_fork(void)
{
    return atomic_load_explicit(&per_thread, memory_order_relaxed)
               ? thread_fork
               : atomic_load_explicit(&the_fork, memory_order_relaxed);
}

/* Clear the_fork if it is `f` (a ForkCore that goes away). */
static inline void
forget_fork(ForkCore *f)
{
    ForkCore *expected = f;
    atomic_compare_exchange_strong_explicit(&the_fork, &expected, NULL, memory_order_relaxed,
                                            memory_order_relaxed);
}

/* fibers._spawn_slow(fn, args, kwargs) and fibers._sync_slow(handle_or_None),
 * set by set_fallbacks (frontend/api.py at import; the fuzz driver again and
 * again).  Stored with release, loaded with acquire: a thread that sees the
 * pointer sees the object.  Without a GIL a replaced fallback may still be
 * running on another thread, so its reference is never dropped (a few bytes
 * per replacement; Penny sets them once). */
static PyObject *_Atomic spawn_fallback = NULL;
static PyObject *_Atomic sync_fallback = NULL;

static inline PyObject *
fallback(PyObject *_Atomic *which)
{
    return atomic_load_explicit(which, memory_order_acquire);
}

static int
ForkCore_traverse(ForkCore *f, visitproc visit, void *arg)
{
    Py_VISIT(f->dict);
    Py_VISIT(f->private);
    Py_VISIT(f->fids);
    Py_VISIT(f->shared);
    return 0;
}

static int
ForkCore_clear(ForkCore *f)
{
    Py_CLEAR(f->dict);
    Py_CLEAR(f->private);
    Py_CLEAR(f->fids);
    Py_CLEAR(f->shared);
    return 0;
}

static void
ForkCore_dealloc(ForkCore *f)
{
    PyObject_GC_UnTrack(f);
    forget_fork(f);
    if (thread_fork == f)
        thread_fork = NULL;
    ForkCore_clear(f);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

/* ForkCore(shared, sleepers_off, deque_off, max_depth) */
static int
ForkCore_init(ForkCore *f, PyObject *args, PyObject *kw)
{
    PyObject *sh;
    Py_ssize_t sleepers_off, deque_off;
    int max_depth;
    if (!PyArg_ParseTuple(args, "O!nni:ForkCore", &SharedType, &sh, &sleepers_off, &deque_off, &max_depth))
        return -1;
    /* M_spawn reads these words without further checks: check them here,
     * once (a Shared's buffer never changes after its __init__). */
    if (!span((Shared *)sh, sleepers_off, 4) || !span((Shared *)sh, deque_off, DQ_RING))
        return -1;
    if (sleepers_off % 4 || deque_off % 64) {
        PyErr_SetString(PyExc_ValueError, "ForkCore: misaligned sleeper count or deque offset");
        return -1;
    }
    f->sleepers_off = sleepers_off;
    f->deque_off = deque_off;
    f->max_depth = max_depth;
    Py_XSETREF(f->shared, (Shared *)Py_NewRef(sh));
    Py_XSETREF(f->private, PyList_New(0));
    Py_XSETREF(f->fids, PyDict_New());
    if (!f->private || !f->fids)
        return -1;
    f->task = 0;
    f->depth = 0;
    f->spawns = 0;
    f->head = 0;
    return 0;
}

/* Index of the newest live private handle, or -1. */
static inline Py_ssize_t
newest(ForkCore *f)
{
    Py_ssize_t n = PyList_GET_SIZE(f->private);
    return n > f->head ? n - 1 : -1;
}

static int
drop_newest(ForkCore *f)
{
    Py_ssize_t n = PyList_GET_SIZE(f->private);
    if (PyList_SetSlice(f->private, n - 1, n, NULL) < 0)
        return -1;
    if (n - 1 <= f->head) {  /* empty: start over so the list does not grow */
        f->head = 0;
        return PyList_SetSlice(f->private, 0, PyList_GET_SIZE(f->private), NULL);
    }
    return 0;
}

/* take_oldest() -> the oldest live private handle (removed), or None. */
static PyObject *
ForkCore_take_oldest(ForkCore *f, PyObject *unused)
{
    Py_ssize_t n = PyList_GET_SIZE(f->private);
    if (f->head >= n)
        Py_RETURN_NONE;
    PyObject *h = Py_NewRef(PyList_GET_ITEM(f->private, f->head));
    Py_INCREF(Py_None);
    PyList_SetItem(f->private, f->head, Py_None);  /* steals the None ref */
    f->head++;
    if (f->head == n) {
        f->head = 0;
        if (PyList_SetSlice(f->private, 0, n, NULL) < 0) {
            Py_DECREF(h);
            return NULL;
        }
    } else if (f->head > 1024 && f->head * 2 > n) {
        if (PyList_SetSlice(f->private, 0, f->head, NULL) < 0) {
            Py_DECREF(h);
            return NULL;
        }
        f->head = 0;
    }
    return h;
}

/* untake(h): put back a handle take_oldest returned (publication failed). */
static PyObject *
ForkCore_untake(ForkCore *f, PyObject *h)
{
    if (f->head > 0) {
        f->head--;
        Py_INCREF(h);
        PyList_SetItem(f->private, f->head, h);
    } else if (PyList_Insert(f->private, 0, h) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* pop_newest(parent) -> the newest live private handle if it was spawned by
 * task `parent` (removed), else None. */
static PyObject *
ForkCore_pop_newest(ForkCore *f, PyObject *arg)
{
    unsigned long long parent = PyLong_AsUnsignedLongLong(arg);
    if (parent == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t i = newest(f);
    if (i < 0)
        Py_RETURN_NONE;
    HandleObject *h = (HandleObject *)PyList_GET_ITEM(f->private, i);
    if (h->parent != parent)
        Py_RETURN_NONE;
    Py_INCREF(h);
    if (drop_newest(f) < 0) {
        Py_DECREF(h);
        return NULL;
    }
    return (PyObject *)h;
}

/* remove(h) -> bool: take `h` out of the live private handles wherever it is. */
static PyObject *
ForkCore_remove(ForkCore *f, PyObject *h)
{
    Py_ssize_t n = PyList_GET_SIZE(f->private);
    if (f->head < n && PyList_GET_ITEM(f->private, f->head) == h) {
        /* The oldest: a parent syncing its children in spawn order. O(1). */
        PyObject *r = ForkCore_take_oldest(f, NULL);
        if (!r)
            return NULL;
        Py_DECREF(r);
        Py_RETURN_TRUE;
    }
    for (Py_ssize_t i = n - 1; i >= f->head; i--) {
        if (PyList_GET_ITEM(f->private, i) == h) {
            if (i == n - 1) {
                if (drop_newest(f) < 0)
                    return NULL;
            } else if (PyList_SetSlice(f->private, i, i + 1, NULL) < 0) {
                return NULL;
            }
            Py_RETURN_TRUE;
        }
    }
    Py_RETURN_FALSE;
}

/* swap_private(list) -> the old list: park a suspended fiber's private
 * handles and give the next fiber its own (fibers.suspend/resume). */
static PyObject *
ForkCore_swap_private(ForkCore *f, PyObject *lst)
{
    if (!PyList_CheckExact(lst))
        return PyErr_Format(PyExc_TypeError, "swap_private needs a list");
    PyObject *old = f->private;
    if (f->head) {
        PyObject *live = PyList_GetSlice(old, f->head, PyList_GET_SIZE(old));
        if (!live)
            return NULL;
        Py_DECREF(old);
        old = live;
    }
    f->private = Py_NewRef(lst);
    f->head = 0;
    return old;
}

static PyObject *
ForkCore_live(ForkCore *f, PyObject *unused)
{
    return PyLong_FromSsize_t(PyList_GET_SIZE(f->private) - f->head);
}

static PyObject *ForkCore_run_handle(ForkCore *f, PyObject *h);

static PyObject *
ForkCore_bind(ForkCore *f, PyObject *unused)
{
    atomic_store_explicit(&the_fork, f, memory_order_relaxed);  /* borrowed: the worker keeps its ForkJoin alive */
    thread_fork = f;
    Py_RETURN_NONE;
}

static PyObject *
ForkCore_bind_thread(ForkCore *f, PyObject *unused)
{
    thread_fork = f;  /* borrowed, as in bind */
    atomic_store_explicit(&per_thread, 1, memory_order_relaxed);
    Py_RETURN_NONE;
}

static PyObject *
ForkCore_unbind(ForkCore *f, PyObject *unused)
{
    if (thread_fork == f)
        thread_fork = NULL;  /* a worker thread that ends: this thread has no fork state any more */
    forget_fork(f);
    Py_RETURN_NONE;
}


static PyMemberDef ForkCore_members[] = {
    {"task", T_ULONGLONG, offsetof(ForkCore, task), 0, "ref of the running task (0: none)"},
    {"depth", T_INT, offsetof(ForkCore, depth), 0, "inline nesting on this fiber"},
    {"max_depth", T_INT, offsetof(ForkCore, max_depth), 0, NULL},
    {"spawns", T_ULONGLONG, offsetof(ForkCore, spawns), 0, NULL},
    {"fids", T_OBJECT, offsetof(ForkCore, fids), READONLY, "function -> id cache"},
    {"__dictoffset__", T_PYSSIZET, offsetof(ForkCore, dict), READONLY},
    {NULL},
};

static PyMethodDef ForkCore_methods[] = {
    {"take_oldest", (PyCFunction)ForkCore_take_oldest, METH_NOARGS, "oldest private handle or None"},
    {"untake", (PyCFunction)ForkCore_untake, METH_O, "put back what take_oldest returned"},
    {"pop_newest", (PyCFunction)ForkCore_pop_newest, METH_O, "pop_newest(parent) -> handle or None"},
    {"remove", (PyCFunction)ForkCore_remove, METH_O, "remove(h) -> bool"},
    {"swap_private", (PyCFunction)ForkCore_swap_private, METH_O, "swap_private(list) -> old live list"},
    {"live", (PyCFunction)ForkCore_live, METH_NOARGS, "number of live private handles"},
    {"bind", (PyCFunction)ForkCore_bind, METH_NOARGS, "make this the process's fork state for penny.spawn/sync"},
    {"bind_thread", (PyCFunction)ForkCore_bind_thread, METH_NOARGS,
     "make this the calling thread's fork state (threads backend: one per worker thread)"},
    {"unbind", (PyCFunction)ForkCore_unbind, METH_NOARGS, "undo bind or bind_thread"},
    {"run_handle", (PyCFunction)ForkCore_run_handle, METH_O, "run a private handle removed from the list"},
    {NULL},
};

static PyTypeObject ForkCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "penny._core.ForkCore",
    .tp_basicsize = sizeof(ForkCore),
    .tp_dictoffset = offsetof(ForkCore, dict),
    .tp_dealloc = (destructor)ForkCore_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A worker's fork-join state: the running task, the private handles, the fast spawn/sync.",
    .tp_traverse = (traverseproc)ForkCore_traverse,
    .tp_clear = (inquiry)ForkCore_clear,
    .tp_members = ForkCore_members,
    .tp_methods = ForkCore_methods,
    .tp_init = (initproc)ForkCore_init,
    .tp_new = PyType_GenericNew,
};

/* penny.spawn(fn, *args, **kwargs) */
static PyObject *
M_spawn(PyObject *mod, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs < 1)
        return PyErr_Format(PyExc_TypeError, "spawn() needs a function to run");
    PyObject *fn = args[0];
    PyObject *pargs = PyTuple_New(nargs - 1);
    if (!pargs)
        return NULL;
    for (Py_ssize_t i = 1; i < nargs; i++)
        PyTuple_SET_ITEM(pargs, i - 1, Py_NewRef(args[i]));
    PyObject *kwargs = NULL;
    if (kwnames && PyTuple_GET_SIZE(kwnames)) {
        kwargs = PyDict_New();
        if (!kwargs) {
            Py_DECREF(pargs);
            return NULL;
        }
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++)
            if (PyDict_SetItem(kwargs, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0) {
                Py_DECREF(pargs);
                Py_DECREF(kwargs);
                return NULL;
            }
    }
    ForkCore *f = current_fork();
    PyObject *res = NULL;
    if (!f || !f->task) {
        PyObject *slow = fallback(&spawn_fallback);
        if (!slow)
            PyErr_SetString(PyExc_RuntimeError, "penny.fibers is not initialised");
        else
            res = PyObject_CallFunctionObjArgs(slow, fn, pargs, kwargs ? kwargs : Py_None, NULL);
        goto done;
    }
    PyObject *fidobj = PyDict_GetItemWithError(f->fids, fn);
    unsigned long fid;
    if (!fidobj) {
        if (PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_TypeError))
                goto done;
            PyErr_Clear();  /* an unhashable callable: register() decides every time */
        }
        /* First spawn of this function here: the Python side registers it. */
        fidobj = PyObject_CallMethod((PyObject *)f, "register", "O", fn);
        if (!fidobj)
            goto done;
        fid = PyLong_AsUnsignedLong(fidobj);
        Py_DECREF(fidobj);
    } else {
        fid = PyLong_AsUnsignedLong(fidobj);
    }
    if (fid == (unsigned long)-1 && PyErr_Occurred())
        goto done;
    HandleObject *h = handle_new((unsigned int)fid, fn, pargs, kwargs, f->task);
    if (!h)
        goto done;
    if (PyList_Append(f->private, (PyObject *)h) < 0) {
        Py_DECREF(h);
        goto done;
    }
    f->spawns++;
    res = (PyObject *)h;
    /* Relaxed: a hint that a worker is idle; if so and nothing of ours is
     * stealable, publish our oldest private child (Python: it needs a
     * record and maybe the arena).  The wake inside publication is exact. */
    Shared *s = f->shared;
    if (s->has_view && atomic_load_explicit((a32 *)(s->base + f->sleepers_off), memory_order_relaxed)) {
        char *dq = s->base + f->deque_off;
        int64_t t = atomic_load_explicit((ai64 *)(dq + DQ_TOP), memory_order_relaxed);
        int64_t b = atomic_load_explicit((ai64 *)(dq + DQ_BOTTOM), memory_order_relaxed);
        if (b <= t) {
            PyObject *r = PyObject_CallMethod((PyObject *)f, "publish_oldest", NULL);
            if (!r)
                Py_CLEAR(res);
            Py_XDECREF(r);
        }
    }
done:
    Py_DECREF(pargs);
    Py_XDECREF(kwargs);
    return res;
}

/* Run a private handle here (it was removed from the private list). */
static PyObject *
run_private(ForkCore *f, HandleObject *h)
{
    PyObject *fn = h->fn, *args = h->args, *kwargs = h->kwargs;
    h->fn = h->args = h->kwargs = NULL;
    h->state = H_DONE;
    h->observed = 1;
    f->depth++;
    PyObject *res = PyObject_Call(fn, args, kwargs);
    f->depth--;
    Py_DECREF(fn);
    Py_DECREF(args);
    Py_XDECREF(kwargs);
    if (res) {
        h->value = Py_NewRef(res);
        return res;
    }
    /* Keep the exception in the handle and let it propagate. */
    PyObject *type, *val, *tb;
    PyErr_Fetch(&type, &val, &tb);
    PyErr_NormalizeException(&type, &val, &tb);
    if (tb && val)
        PyException_SetTraceback(val, tb);
    h->failed = 1;
    h->value = Py_XNewRef(val);
    PyErr_Restore(type, val, tb);
    return NULL;
}

/* penny.sync(handle=None) */
static PyObject *
M_sync(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *arg = nargs > 0 ? args[0] : Py_None;
    ForkCore *f = current_fork();
    if (f && Py_IS_TYPE(arg, &HandleType)) {
        HandleObject *h = (HandleObject *)arg;
        Py_ssize_t i;
        if (h->state == H_PRIVATE && h->parent == f->task && f->depth < f->max_depth &&
            (i = newest(f)) >= 0 && PyList_GET_ITEM(f->private, i) == arg) {
            Py_INCREF(h);
            if (drop_newest(f) < 0) {
                Py_DECREF(h);
                return NULL;
            }
            PyObject *res = run_private(f, h);
            Py_DECREF(h);
            return res;
        }
        if (h->state == H_DONE) {
            h->observed = 1;
            if (h->failed) {
                PyErr_SetObject((PyObject *)Py_TYPE(h->value), h->value);
                return NULL;
            }
            return Py_NewRef(h->value);
        }
    }
    PyObject *slow = fallback(&sync_fallback);
    if (!slow)
        return PyErr_Format(PyExc_RuntimeError, "penny.fibers is not initialised");
    return PyObject_CallOneArg(slow, arg);
}

static PyObject *
Handle_result(HandleObject *h, PyObject *unused)
{
    PyObject *a = (PyObject *)h;
    return M_sync(NULL, &a, 1);
}

/* run_handle(h): run a private handle that the caller removed from the list. */
static PyObject *
ForkCore_run_handle(ForkCore *f, PyObject *h)
{
    if (!Py_IS_TYPE(h, &HandleType) || ((HandleObject *)h)->state != H_PRIVATE)
        return PyErr_Format(PyExc_TypeError, "run_handle needs a private Handle");
    return run_private(f, (HandleObject *)h);
}

static PyObject *
M_set_fallbacks(PyObject *mod, PyObject *args)
{
    PyObject *sp, *sy;
    if (!PyArg_ParseTuple(args, "OO:set_fallbacks", &sp, &sy))
        return NULL;
    PyObject *old_sp = atomic_exchange_explicit(&spawn_fallback, Py_NewRef(sp), memory_order_acq_rel);
    PyObject *old_sy = atomic_exchange_explicit(&sync_fallback, Py_NewRef(sy), memory_order_acq_rel);
#ifdef Py_GIL_DISABLED
    (void)old_sp;  /* kept alive: another thread may be calling it (above) */
    (void)old_sy;
#else
    Py_XDECREF(old_sp);  /* the GIL: no other thread is inside it but by its own reference */
    Py_XDECREF(old_sy);
#endif
    Py_RETURN_NONE;
}

