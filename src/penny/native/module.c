/*
 * module.c: the Python face of the core: the Shared type (its method table
 * and getters), the module's functions, constants and initialisation.  Part
 * of the unity build (core.c), not compiled on its own.
 */

static PyMethodDef Shared_methods[] = {
    {"release", (PyCFunction)Shared_release, METH_NOARGS, "Release the buffer (idempotent)."},
    {"settle", (PyCFunction)(void (*)(void))S_settle, METH_FASTCALL, "settle(ref, status, current_off)"},
    {"take_batch", (PyCFunction)(void (*)(void))S_take_batch, METH_FASTCALL, "take_batch(queue, max, deque, current_off, batch_off) -> (first, count)"},
    {"token_give", (PyCFunction)(void (*)(void))S_token_give, METH_FASTCALL, "token_give(rec_off) -> True if every published child finished"},
    {"token_take", (PyCFunction)(void (*)(void))S_token_take, METH_FASTCALL, "token_take(rec_off)"},
    {"load32", (PyCFunction)(void (*)(void))S_load32, METH_FASTCALL, "load32(off, order=SEQ_CST)"},
    {"load64", (PyCFunction)(void (*)(void))S_load64, METH_FASTCALL, "load64(off, order=SEQ_CST)"},
    {"store32", (PyCFunction)(void (*)(void))S_store32, METH_FASTCALL, "store32(off, v, order=SEQ_CST)"},
    {"store64", (PyCFunction)(void (*)(void))S_store64, METH_FASTCALL, "store64(off, v, order=SEQ_CST)"},
    {"cas32", (PyCFunction)(void (*)(void))S_cas32, METH_FASTCALL, "cas32(off, expected, desired, order=SEQ_CST) -> (ok, observed)"},
    {"cas64", (PyCFunction)(void (*)(void))S_cas64, METH_FASTCALL, "cas64(off, expected, desired, order=SEQ_CST) -> (ok, observed)"},
    {"fetch_add32", (PyCFunction)(void (*)(void))S_fetch_add32, METH_FASTCALL, "fetch_add32(off, delta, order=SEQ_CST) -> old"},
    {"fetch_add64", (PyCFunction)(void (*)(void))S_fetch_add64, METH_FASTCALL, "fetch_add64(off, delta, order=SEQ_CST) -> old"},
    {"exchange32", (PyCFunction)(void (*)(void))S_exchange32, METH_FASTCALL, "exchange32(off, v, order=SEQ_CST) -> old"},
    {"exchange64", (PyCFunction)(void (*)(void))S_exchange64, METH_FASTCALL, "exchange64(off, v, order=SEQ_CST) -> old"},
    {"futex_wait", (PyCFunction)(void (*)(void))S_futex_wait, METH_FASTCALL, "futex_wait(off, expected, timeout=None) -> 0 woken, 1 changed, 2 timeout"},
    {"futex_wake", (PyCFunction)(void (*)(void))S_futex_wake, METH_FASTCALL, "futex_wake(off, n=all) -> woken"},
    {"deque_init", (PyCFunction)(void (*)(void))S_deque_init, METH_FASTCALL, "deque_init(off, capacity)"},
    {"deque_push", (PyCFunction)(void (*)(void))S_deque_push, METH_FASTCALL, "deque_push(off, ref) -> bool (owner)"},
    {"deque_pop", (PyCFunction)(void (*)(void))S_deque_pop, METH_FASTCALL, "deque_pop(off, current_off=None) -> ref or EMPTY (owner)"},
    {"deque_steal", (PyCFunction)(void (*)(void))S_deque_steal, METH_FASTCALL, "deque_steal(off, current_off=None) -> ref, EMPTY or RETRY"},
    {"deque_len", (PyCFunction)(void (*)(void))S_deque_len, METH_FASTCALL, "deque_len(off) -> approximate length"},
    {"queue_init", (PyCFunction)(void (*)(void))S_queue_init, METH_FASTCALL, "queue_init(off, capacity)"},
    {"queue_push", (PyCFunction)(void (*)(void))S_queue_push, METH_FASTCALL, "queue_push(off, v) -> bool"},
    {"queue_pop", (PyCFunction)(void (*)(void))S_queue_pop, METH_FASTCALL, "queue_pop(off) -> v or EMPTY"},
    {"queue_pop_many", (PyCFunction)(void (*)(void))S_queue_pop_many, METH_FASTCALL, "queue_pop_many(off, max) -> list"},
    {"queue_len", (PyCFunction)(void (*)(void))S_queue_len, METH_FASTCALL, "queue_len(off) -> approximate length"},
    {"queue_repair", (PyCFunction)(void (*)(void))S_queue_repair, METH_FASTCALL,
     "queue_repair(off, worker, fill) -> values a dead worker had claimed to pop"},
    {"set_taker", (PyCFunction)(void (*)(void))S_set_taker, METH_FASTCALL,
     "set_taker(worker, note_off): this process's id in the rings' claims"},
    {"stack_push", (PyCFunction)(void (*)(void))S_stack_push, METH_FASTCALL, "stack_push(head, base, stride, link, count, index)"},
    {"stack_pop", (PyCFunction)(void (*)(void))S_stack_pop, METH_FASTCALL, "stack_pop(head, base, stride, link, count) -> index or -1"},
    {"notify", (PyCFunction)(void (*)(void))S_notify, METH_FASTCALL, "notify(sleepers, states, stride, count, start) -> woken index or -1"},
    {"pack_inline", (PyCFunction)(void (*)(void))S_pack_inline, METH_FASTCALL, "pack_inline(off, cap, seq) -> nbytes or -1"},
    {"unpack_inline", (PyCFunction)(void (*)(void))S_unpack_inline, METH_FASTCALL, "unpack_inline(off, cap) -> tuple"},
    {"set_tasks", (PyCFunction)(void (*)(void))S_set_tasks, METH_VARARGS | METH_KEYWORDS,
     "set_tasks(*, tasks, task_capacity, injector, completions, inbox0, state0, slice_size, workers): "
     "where the task table, rings and worker slices are (layout.bind)"},
    {"inject", (PyCFunction)(void (*)(void))S_inject, METH_FASTCALL, "inject(fid, args, future, futures) -> ref, 0 (table full) or -1 (not inlinable)"},
    {"claim", (PyCFunction)(void (*)(void))S_claim, METH_FASTCALL, "claim(ref, current_off, wid) -> (fid, flags, args|None) or None"},
    {"finish", (PyCFunction)(void (*)(void))S_finish, METH_FASTCALL, "finish(ref, value, current_off) -> bool"},
    {"publish", (PyCFunction)(void (*)(void))S_publish, METH_FASTCALL, "publish(ref, parent): route a finished task"},
    {"enqueue", (PyCFunction)(void (*)(void))S_enqueue, METH_FASTCALL, "enqueue(ref, fid, flags, future, futures) -> ref: inject for a record Python filled"},
    {"alloc_child", (PyCFunction)(void (*)(void))S_alloc_child, METH_FASTCALL, "alloc_child(held_off) -> ref or 0: a record for a child Python fills, marked held"},
    {"enqueue_child", (PyCFunction)(void (*)(void))S_enqueue_child, METH_FASTCALL, "enqueue_child(ref, fid, flags, parent, deque_off, held_off) -> ref, 0 if the deque is full: spawn for a record Python filled"},
    {"spawn", (PyCFunction)(void (*)(void))S_spawn, METH_FASTCALL, "spawn(fid, args, parent, deque_off, held_off) -> ref, 0 or -1"},
    {"bump", (PyCFunction)(void (*)(void))S_bump, METH_FASTCALL, "bump(off, size, limit) -> old or -1"},
    {"free_task", (PyCFunction)(void (*)(void))S_free_task, METH_FASTCALL, "free_task(ref): recycle a record"},
    {"pop_child", (PyCFunction)(void (*)(void))S_pop_child, METH_FASTCALL, "pop_child(deque_off, parent, current_off=None) -> ref or 0"},
    {"collect", (PyCFunction)(void (*)(void))S_collect, METH_FASTCALL, "collect(max, futures) -> (fast, slow)"},
    {"write_bytes", (PyCFunction)(void (*)(void))S_write_bytes, METH_FASTCALL, "write_bytes(off, data)"},
    {"read_bytes", (PyCFunction)(void (*)(void))S_read_bytes, METH_FASTCALL, "read_bytes(off, n) -> bytes"},
    {NULL},
};

static PyGetSetDef Shared_getset[] = {
    {"nbytes", (getter)S_len, NULL, "size of the buffer in bytes (0 once released)", NULL},
    {"address", (getter)S_address, NULL, "address of byte 0 in this process (0 once released)", NULL},
    {"leases", (getter)S_leases, NULL, "live Lease objects on this buffer in this process", NULL},
    {NULL},
};

static PyTypeObject SharedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "penny._core.Shared",
    .tp_basicsize = sizeof(Shared),
    .tp_dealloc = (destructor)Shared_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Shared(buffer): atomics, futexes and lock-free structures on a writable, 64-byte aligned buffer.",
    .tp_methods = Shared_methods,
    .tp_getset = Shared_getset,
    .tp_init = (initproc)Shared_init,
    .tp_new = PyType_GenericNew,
};

static PyMethodDef module_methods[] = {
    {"fence", (PyCFunction)(void (*)(void))M_fence, METH_FASTCALL, "fence(order=SEQ_CST)"},
    {"spawn", (PyCFunction)(void (*)(void))M_spawn, METH_FASTCALL | METH_KEYWORDS,
     "spawn(fn, /, *args, **kwargs)\n--\n\n"
     "Start fn(*args, **kwargs) as a child of the running task and return a Handle for sync.\n"
     "Outside any task: Scheduler.submit on the current scheduler (returns a Future)."},
    {"sync", (PyCFunction)(void (*)(void))M_sync, METH_FASTCALL,
     "sync(handle=None, /)\n--\n\n"
     "The result of a spawned child (its exception re-raised here); with no argument,\n"
     "wait for every child spawned so far by the running task."},
    {"set_fallbacks", (PyCFunction)M_set_fallbacks, METH_VARARGS, "set_fallbacks(spawn_slow, sync_slow)"},
    {"arm_kill_point", (PyCFunction)M_arm_kill_point, METH_VARARGS,
     "arm_kill_point(name, n=1, once_path=None) -> bool: SIGKILL this process at the n-th pass of C point `name`"},
    {"buffer_info", (PyCFunction)M_buffer_info, METH_O, "buffer_info(obj) -> (address, nbytes, readonly, contiguous)"},
    {NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "penny._core",
    "Atomics, futexes, Chase-Lev deque, MPMC ring, Treiber stack and inline codec on shared buffers.",
    -1, module_methods,
};

/* _core.LAYOUT: name -> value of every constant layout.h shares with
 * penny/layout.py, which checks them against its own at import. */
static int
add_layout(PyObject *m)
{
    PyObject *d = PyDict_New();
    if (!d)
        return -1;
#define ADD_LAYOUT(name)                                                    \
    do {                                                                    \
        PyObject *v_ = PyLong_FromLong((long)(name));                       \
        if (!v_ || PyDict_SetItemString(d, #name, v_) < 0) {                \
            Py_XDECREF(v_);                                                 \
            Py_DECREF(d);                                                   \
            return -1;                                                      \
        }                                                                   \
        Py_DECREF(v_);                                                      \
    } while (0);
    PENNY_LAYOUT_CONSTANTS(ADD_LAYOUT)
#undef ADD_LAYOUT
    if (PyModule_AddObject(m, "LAYOUT", d) < 0) {
        Py_DECREF(d);
        return -1;
    }
    return 0;
}

/* Free-threaded builds: the core is safe to call from several threads at
 * once without the GIL (what protects each shared static: core.c), so it
 * says so, and importing it keeps the GIL off.  Single-phase init, hence
 * PyUnstable_Module_SetGIL rather than the Py_mod_gil slot. */
PyMODINIT_FUNC
PyInit__core(void)
{
    if (PyType_Ready(&SharedType) < 0 || PyType_Ready(&HandleType) < 0 || PyType_Ready(&ForkCoreType) < 0
        || PyType_Ready(&LeaseType) < 0)
        return NULL;
    if (!CorruptRegion) {
        /* penny.errors is ground like us and imports nothing of Penny's, so
         * this import cannot cycle back here. */
        PyObject *errors = PyImport_ImportModule("penny.errors");
        if (!errors)
            return NULL;
        CorruptRegion = PyObject_GetAttrString(errors, "CorruptRegionError");
        Py_DECREF(errors);
        if (!CorruptRegion)
            return NULL;
    }
    PyObject *m = PyModule_Create(&moduledef);
    if (!m)
        return NULL;
#ifdef Py_GIL_DISABLED
    if (PyUnstable_Module_SetGIL(m, Py_MOD_GIL_NOT_USED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#endif
    Py_INCREF(&SharedType);
    if (PyModule_AddObject(m, "Shared", (PyObject *)&SharedType) < 0)
        return NULL;
    Py_INCREF(&HandleType);
    if (PyModule_AddObject(m, "Handle", (PyObject *)&HandleType) < 0)
        return NULL;
    Py_INCREF(&LeaseType);
    if (PyModule_AddObject(m, "Lease", (PyObject *)&LeaseType) < 0)
        return NULL;
    Py_INCREF(&ForkCoreType);
    if (PyModule_AddObject(m, "ForkCore", (PyObject *)&ForkCoreType) < 0)
        return NULL;
    PyModule_AddIntConstant(m, "RELAXED", ORD_RELAXED);
    PyModule_AddIntConstant(m, "CONSUME", ORD_CONSUME);
    PyModule_AddIntConstant(m, "ACQUIRE", ORD_ACQUIRE);
    PyModule_AddIntConstant(m, "RELEASE", ORD_RELEASE);
    PyModule_AddIntConstant(m, "ACQ_REL", ORD_ACQ_REL);
    PyModule_AddIntConstant(m, "SEQ_CST", ORD_SEQ_CST);
    PyModule_AddIntConstant(m, "EMPTY", R_EMPTY);
    PyModule_AddIntConstant(m, "RETRY", R_RETRY);
    PyModule_AddIntConstant(m, "AWAKE", ST_AWAKE);
    PyModule_AddIntConstant(m, "SLEEPY", ST_SLEEPY);
    PyModule_AddIntConstant(m, "SLEEPING", ST_SLEEPING);
    PyModule_AddIntConstant(m, "NOTIFIED", ST_NOTIFIED);
    PyModule_AddIntConstant(m, "FUTEX_WOKEN", FW_WOKEN);
    PyModule_AddIntConstant(m, "FUTEX_CHANGED", FW_CHANGED);
    PyModule_AddIntConstant(m, "FUTEX_TIMEOUT", FW_TIMEOUT);
    PyModule_AddIntConstant(m, "DEQUE_HEADER", DQ_RING);
    PyModule_AddIntConstant(m, "DEQUE_TOP", DQ_TOP);
    PyModule_AddIntConstant(m, "DEQUE_BOTTOM", DQ_BOTTOM);
    PyModule_AddIntConstant(m, "QUEUE_HEADER", Q_SLOTS);
    if (PyModule_AddObjectRef(m, "CorruptRegionError", CorruptRegion) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (add_layout(m) < 0 || add_kill_points(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

