/*
 * ops.c: the generic operations of a Shared object, as Python methods:
 *   1. atomics: load/store/cas/fetch_add/exchange on 32/64-bit words, with
 *      an explicit C11 memory order chosen by the caller, and fences;
 *   2. futex wait/wake (shared, not FUTEX_PRIVATE: the words are shared
 *      between processes); the GIL is released while waiting;
 *   3. the Chase-Lev deque (chase_lev.h): init, push, pop, steal, length;
 *   4. the Vyukov MPMC ring (mpmc_ring.h): init, push, pop, length;
 *   5. the tagged Treiber stack, the free list of arena blocks;
 *   6. the sleeper protocol's "wake one" (docs/protocols.md);
 *   raw byte copies, and the bounded bump allocator of the arena.
 * Each checks its offsets, then runs the lock-free code of the headers.
 * Part of the unity build (core.c), not compiled on its own.
 */

/* ---- 1. generic atomics --------------------------------------------- */

static PyObject *
S_load32(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(1, "load32");
    memory_order o;
    a32 *p = addr(s, args[0], 4);
    if (!p || order_arg(args, nargs, 1, &o) < 0)
        return NULL;
    if (o == memory_order_release || o == memory_order_acq_rel)
        return PyErr_Format(PyExc_ValueError, "invalid memory order for a load");
    return PyLong_FromUnsignedLong(atomic_load_explicit(p, o));
}

static PyObject *
S_load64(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(1, "load64");
    memory_order o;
    a64 *p = addr(s, args[0], 8);
    if (!p || order_arg(args, nargs, 1, &o) < 0)
        return NULL;
    if (o == memory_order_release || o == memory_order_acq_rel)
        return PyErr_Format(PyExc_ValueError, "invalid memory order for a load");
    return PyLong_FromUnsignedLongLong(atomic_load_explicit(p, o));
}

static PyObject *
S_store32(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(2, "store32");
    memory_order o;
    uint64_t v;
    a32 *p = addr(s, args[0], 4);
    if (!p || as_u64(args[1], &v) < 0 || order_arg(args, nargs, 2, &o) < 0)
        return NULL;
    if (o == memory_order_acquire || o == memory_order_consume || o == memory_order_acq_rel)
        return PyErr_Format(PyExc_ValueError, "invalid memory order for a store");
    atomic_store_explicit(p, (uint32_t)v, o);
    Py_RETURN_NONE;
}

static PyObject *
S_store64(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(2, "store64");
    memory_order o;
    uint64_t v;
    a64 *p = addr(s, args[0], 8);
    if (!p || as_u64(args[1], &v) < 0 || order_arg(args, nargs, 2, &o) < 0)
        return NULL;
    if (o == memory_order_acquire || o == memory_order_consume || o == memory_order_acq_rel)
        return PyErr_Format(PyExc_ValueError, "invalid memory order for a store");
    atomic_store_explicit(p, v, o);
    Py_RETURN_NONE;
}

/* cas32/cas64(off, expected, desired, order=SEQ_CST) -> (ok, observed).
 * The failure order is derived from the success order (failure_order,
 * atomics.h). */
static PyObject *
S_cas32(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(3, "cas32");
    memory_order o;
    uint64_t e, d;
    a32 *p = addr(s, args[0], 4);
    if (!p || as_u64(args[1], &e) < 0 || as_u64(args[2], &d) < 0 || order_arg(args, nargs, 3, &o) < 0)
        return NULL;
    uint32_t exp = (uint32_t)e;
    int ok = atomic_compare_exchange_strong_explicit(p, &exp, (uint32_t)d, o, failure_order(o));
    return Py_BuildValue("(Ok)", ok ? Py_True : Py_False, (unsigned long)exp);
}

static PyObject *
S_cas64(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(3, "cas64");
    memory_order o;
    uint64_t e, d;
    a64 *p = addr(s, args[0], 8);
    if (!p || as_u64(args[1], &e) < 0 || as_u64(args[2], &d) < 0 || order_arg(args, nargs, 3, &o) < 0)
        return NULL;
    int ok = atomic_compare_exchange_strong_explicit(p, &e, d, o, failure_order(o));
    return Py_BuildValue("(OK)", ok ? Py_True : Py_False, (unsigned long long)e);
}

static PyObject *
S_fetch_add32(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(2, "fetch_add32");
    memory_order o;
    uint64_t v;
    a32 *p = addr(s, args[0], 4);
    if (!p || as_u64(args[1], &v) < 0 || order_arg(args, nargs, 2, &o) < 0)
        return NULL;
    return PyLong_FromUnsignedLong(atomic_fetch_add_explicit(p, (uint32_t)v, o));
}

static PyObject *
S_fetch_add64(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(2, "fetch_add64");
    memory_order o;
    uint64_t v;
    a64 *p = addr(s, args[0], 8);
    if (!p || as_u64(args[1], &v) < 0 || order_arg(args, nargs, 2, &o) < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(atomic_fetch_add_explicit(p, v, o));
}

static PyObject *
S_exchange32(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(2, "exchange32");
    memory_order o;
    uint64_t v;
    a32 *p = addr(s, args[0], 4);
    if (!p || as_u64(args[1], &v) < 0 || order_arg(args, nargs, 2, &o) < 0)
        return NULL;
    return PyLong_FromUnsignedLong(atomic_exchange_explicit(p, (uint32_t)v, o));
}

static PyObject *
S_exchange64(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(2, "exchange64");
    memory_order o;
    uint64_t v;
    a64 *p = addr(s, args[0], 8);
    if (!p || as_u64(args[1], &v) < 0 || order_arg(args, nargs, 2, &o) < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(atomic_exchange_explicit(p, v, o));
}

static PyObject *
M_fence(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    memory_order o;
    if (order_arg(args, nargs, 0, &o) < 0)
        return NULL;
    atomic_thread_fence(o);
    Py_RETURN_NONE;
}

/* ---- 2. futex (futex.h) ------------------------------------------------- */

/* futex_wait(off, expected, timeout=None) -> 0 woken (or spurious),
 * 1 the word was not `expected`, 2 timed out.  Returns early on a signal
 * after running Python's signal handlers (so Ctrl-C raises). */
static PyObject *
S_futex_wait(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(2, "futex_wait");
    uint64_t e;
    a32 *p = addr(s, args[0], 4);
    if (!p || as_u64(args[1], &e) < 0)
        return NULL;
    struct timespec ts, *tsp = NULL;
    if (nargs > 2 && args[2] != Py_None) {
        double t = PyFloat_AsDouble(args[2]);
        if (t == -1.0 && PyErr_Occurred())
            return NULL;
        /* (time_t) of NaN, inf or anything past time_t's range is UB:
         * NaN is an error, and a wait of a year or more is a wait forever. */
        if (t != t)
            return PyErr_Format(PyExc_ValueError, "futex_wait timeout is NaN");
        if (t < 0)
            t = 0;
        if (t >= 365.0 * 24 * 3600) {
            tsp = NULL;
            goto wait;
        }
        ts.tv_sec = (time_t)t;
        ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
        tsp = &ts;
    }
wait:;
    long r;
    int err;
    Py_BEGIN_ALLOW_THREADS
    r = futex(p, FUTEX_WAIT, (uint32_t)e, tsp);
    err = errno;
    Py_END_ALLOW_THREADS
    if (r == 0)
        return PyLong_FromLong(FW_WOKEN);
    if (err == EAGAIN)
        return PyLong_FromLong(FW_CHANGED);
    if (err == ETIMEDOUT)
        return PyLong_FromLong(FW_TIMEOUT);
    if (err == EINTR) {
        if (PyErr_CheckSignals() < 0)
            return NULL;
        return PyLong_FromLong(FW_WOKEN);  /* spurious: callers re-check */
    }
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
}

static PyObject *
S_futex_wake(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(1, "futex_wake");
    a32 *p = addr(s, args[0], 4);
    if (!p)
        return NULL;
    long n = INT32_MAX;
    if (nargs > 1 && (n = PyLong_AsLong(args[1])) == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0 || n > INT32_MAX)
        n = INT32_MAX;  /* "all" (a cast of anything wider to int is not portable) */
    return PyLong_FromLong(futex_wake_n(p, (int)n));
}

/* ---- 3. Chase-Lev deque (cl_push/cl_pop/cl_steal: chase_lev.h) --------- */

static PyObject *
S_deque_init(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(2, "deque_init");
    Py_ssize_t off = PyLong_AsSsize_t(args[0]);
    Py_ssize_t cap = PyLong_AsSsize_t(args[1]);
    if (PyErr_Occurred())
        return NULL;
    if (cap < 2 || (cap & (cap - 1)) || cap > (PY_SSIZE_T_MAX - DQ_RING) / 8)
        return PyErr_Format(PyExc_ValueError, "deque capacity must be a power of two >= 2");
    if (off % 64)
        return PyErr_Format(PyExc_ValueError, "deque offset must be 64-byte aligned");
    char *b = span(s, off, DQ_RING + 8 * cap);
    if (!b)
        return NULL;
    cl_init(b, (uint64_t)cap);
    Py_RETURN_NONE;
}

static char *
deque_at(Shared *s, PyObject *offobj, uint64_t *mask)
{
    if (check_live(s) < 0)
        return NULL;
    Py_ssize_t off = PyLong_AsSsize_t(offobj);
    if (off == -1 && PyErr_Occurred())
        return NULL;
    char *b = span(s, off, DQ_RING + 8);
    if (!b)
        return NULL;
    if (off % 64) {
        PyErr_Format(PyExc_ValueError, "deque offset must be 64-byte aligned");
        return NULL;
    }
    /* Relaxed: the mask is written once before the region is published.
     * Untrusted: checked against the bytes after the header (no product of
     * it is formed, so no overflow can skip the check). */
    *mask = atomic_load_explicit((a64 *)(b + DQ_MASK), memory_order_relaxed);
    if (checked_mask(*mask, s->len - off - DQ_RING, 8, "deque", off) < 0)
        return NULL;
    return b;
}

static PyObject *
S_deque_push(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(2, "deque_push");
    uint64_t mask, x;
    char *b = deque_at(s, args[0], &mask);
    if (!b || as_u64(args[1], &x) < 0)
        return NULL;
    if ((int64_t)x <= 0)
        return PyErr_Format(PyExc_ValueError, "deque items must be positive 63-bit ints");
    return PyBool_FromLong(cl_push(b, mask, x));
}

/* Optional last argument of the take operations (deque_pop, deque_steal,
 * pop_child, take_batch): the offset of the taking worker's `current` word.
 * A taken ref is stored there in the same call, before the call returns, so
 * a worker killed between taking a task and claiming it leaves the ref where
 * the supervisor looks (supervisor.py).  Relaxed: only a supervisor reads
 * it, after the worker is dead. */
static int
mark_taken(Shared *s, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t i, int64_t ref)
{
    if (nargs <= i || ref <= 0 || args[i] == Py_None)
        return 0;
    a64 *m = addr(s, args[i], 8);
    if (!m)
        return -1;
    atomic_store_explicit(m, (uint64_t)ref, memory_order_relaxed);
    return 0;
}

static PyObject *
S_deque_pop(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(1, "deque_pop");
    uint64_t mask;
    char *b = deque_at(s, args[0], &mask);
    if (!b)
        return NULL;
    int64_t r = cl_pop(b, mask);
    if (mark_taken(s, args, nargs, 1, r) < 0)
        return NULL;
    return PyLong_FromLongLong(r);
}

static PyObject *
S_deque_steal(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(1, "deque_steal");
    uint64_t mask;
    char *b = deque_at(s, args[0], &mask);
    if (!b)
        return NULL;
    int64_t r = cl_steal(b, mask);
    if (mark_taken(s, args, nargs, 1, r) < 0)
        return NULL;
    return PyLong_FromLongLong(r);
}

static PyObject *
S_deque_len(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(1, "deque_len");
    uint64_t mask;
    char *b = deque_at(s, args[0], &mask);
    if (!b)
        return NULL;
    /* Relaxed/acquire snapshot: only a hint (racy by nature). */
    int64_t t = atomic_load_explicit((ai64 *)(b + DQ_TOP), memory_order_acquire);
    int64_t bt = atomic_load_explicit((ai64 *)(b + DQ_BOTTOM), memory_order_acquire);
    return PyLong_FromLongLong(bt > t ? bt - t : 0);
}

/* ---- 4. the bounded MPMC ring (mq_push_as/mq_pop_as/mq_repair: mpmc_ring.h) */

static PyObject *
S_queue_init(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(2, "queue_init");
    Py_ssize_t off = PyLong_AsSsize_t(args[0]);
    Py_ssize_t cap = PyLong_AsSsize_t(args[1]);
    if (PyErr_Occurred())
        return NULL;
    if (cap < 2 || (cap & (cap - 1)) || cap > (PY_SSIZE_T_MAX - Q_SLOTS) / 16)
        return PyErr_Format(PyExc_ValueError, "queue capacity must be a power of two >= 2");
    if (off % 64)
        return PyErr_Format(PyExc_ValueError, "queue offset must be 64-byte aligned");
    char *b = span(s, off, Q_SLOTS + 16 * cap);
    if (!b)
        return NULL;
    mq_init(b, (uint64_t)cap);
    Py_RETURN_NONE;
}

static char *
queue_at(Shared *s, PyObject *offobj, uint64_t *mask)
{
    if (check_live(s) < 0)
        return NULL;
    Py_ssize_t off = PyLong_AsSsize_t(offobj);
    if (off == -1 && PyErr_Occurred())
        return NULL;
    char *b = span(s, off, Q_SLOTS + 16);
    if (!b)
        return NULL;
    if (off % 64) {
        PyErr_Format(PyExc_ValueError, "queue offset must be 64-byte aligned");
        return NULL;
    }
    /* Relaxed: written once at init.  Untrusted: checked as in deque_at. */
    *mask = atomic_load_explicit((a64 *)(b + Q_MASK), memory_order_relaxed);
    if (checked_mask(*mask, s->len - off - Q_SLOTS, 16, "queue", off) < 0)
        return NULL;
    return b;
}

static PyObject *
S_queue_push(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(2, "queue_push");
    uint64_t mask, x;
    char *b = queue_at(s, args[0], &mask);
    if (!b || as_u64(args[1], &x) < 0)
        return NULL;
    if ((int64_t)x <= 0)
        return PyErr_Format(PyExc_ValueError, "queue items must be positive 63-bit ints");
    int r = mq_push_as(b, mask, x, s->taker, push_note(s), KP_QUEUE_PUSH_CLAIMED);
    if (r == MQ_CORRUPT)
        return corrupt("penny: corrupt queue at offset %zd (its positions and slots disagree)",
                       (Py_ssize_t)(b - s->base));
    return PyBool_FromLong(r);
}

/* A worker id argument of set_taker / queue_repair: 0 <= id < MQ_TAKER_NONE.
 * Returns 0, or -1 with an exception. */
static int
taker_arg(PyObject *obj, const char *what, uint32_t *out)
{
    Py_ssize_t w = PyLong_AsSsize_t(obj);
    if (w == -1 && PyErr_Occurred())
        return -1;
    if (w < 0 || w >= (Py_ssize_t)MQ_TAKER_NONE) {
        PyErr_Format(PyExc_ValueError, "%s: worker id %zd outside 0..%d", what, w, (int)MQ_TAKER_NONE - 1);
        return -1;
    }
    *out = (uint32_t)w;
    return 0;
}

/* set_taker(worker, note_off): this process is worker `worker` in the rings'
 * claims from now on, and notes each value it pushes in the u64 at
 * `note_off` first (mpmc_ring.h; the supervisor reads both after a death:
 * queue_repair).  Once, by a worker process, before its first ring step. */
static PyObject *
S_set_taker(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(2, "set_taker");
    uint32_t w;
    if (taker_arg(args[0], "set_taker", &w) < 0)
        return NULL;
    a64 *note = addr(s, args[1], 8);
    if (!note)
        return NULL;
    s->taker = w;
    s->note_off = (char *)note - s->base;
    Py_RETURN_NONE;
}

/* queue_repair(off, worker, fill) -> list: finish the ring steps the dead
 * `worker` left half done (mq_repair): a slot it claimed to push is
 * published with `fill` (0: a tombstone, skipped by pops), one it claimed
 * to pop is released and its value returned.  Only for a worker known dead
 * whose id no process uses yet. */
static PyObject *
S_queue_repair(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(3, "queue_repair");
    uint64_t mask, fill;
    char *b = queue_at(s, args[0], &mask);
    uint32_t w;
    if (!b || as_u64(args[2], &fill) < 0 || taker_arg(args[1], "queue_repair", &w) < 0)
        return NULL;
    if ((int64_t)fill < 0)
        return PyErr_Format(PyExc_ValueError, "queue_repair: fill must be a 63-bit int (0: a tombstone)");
    /* A worker pops one slot at a time: more than a few claims of one
     * taker means scribbled words; the first 64 are returned. */
    uint64_t out[64];
    int64_t n = mq_repair(b, mask, w, fill, out, 64);
    PyObject *list = PyList_New(0);
    for (int64_t i = 0; list && i < n; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(out[i]);
        if (!v || PyList_Append(list, v) < 0)
            Py_CLEAR(list);
        Py_XDECREF(v);
    }
    return list;
}

/* A value popped from a ring: MQ_CORRUPT or a non-positive item (pushes
 * accept only positive ones) means the ring was scribbled on. */
static int
checked_item(Shared *s, char *b, int64_t x)
{
    if (x == MQ_CORRUPT || x < 0) {
        corrupt("penny: corrupt queue at offset %zd (popped %lld)", (Py_ssize_t)(b - s->base), (long long)x);
        return -1;
    }
    return 0;
}

static PyObject *
S_queue_pop(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(1, "queue_pop");
    uint64_t mask;
    char *b = queue_at(s, args[0], &mask);
    if (!b)
        return NULL;
    /* A worker pops only its inbox this way: the point is named for it. */
    int64_t x = mq_pop_as(b, mask, s->taker, KP_INBOX_POP_CLAIMED);
    if (checked_item(s, b, x) < 0)
        return NULL;
    return PyLong_FromLongLong(x);
}

/* queue_pop_many(off, max) -> list of values (possibly empty). */
static PyObject *
S_queue_pop_many(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(2, "queue_pop_many");
    uint64_t mask;
    char *b = queue_at(s, args[0], &mask);
    if (!b)
        return NULL;
    Py_ssize_t max = PyLong_AsSsize_t(args[1]);
    if (max == -1 && PyErr_Occurred())
        return NULL;
    PyObject *out = PyList_New(0);
    if (!out)
        return NULL;
    for (Py_ssize_t i = 0; i < max; i++) {
        int64_t x = mq_pop_as(b, mask, s->taker, KP_INBOX_POP_CLAIMED);
        if (x == R_EMPTY)
            break;
        if (checked_item(s, b, x) < 0) {
            Py_DECREF(out);
            return NULL;
        }
        PyObject *v = PyLong_FromLongLong(x);
        if (!v || PyList_Append(out, v) < 0) {
            /* The popped values would be lost: this only happens on
             * MemoryError, where the runtime cannot go on anyway. */
            Py_XDECREF(v);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(v);
    }
    return out;
}

static PyObject *
S_queue_len(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(1, "queue_len");
    uint64_t mask;
    char *b = queue_at(s, args[0], &mask);
    if (!b)
        return NULL;
    /* Acquire snapshot; a hint only. */
    uint64_t d = atomic_load_explicit((a64 *)(b + Q_DEQ), memory_order_acquire);
    uint64_t e = atomic_load_explicit((a64 *)(b + Q_ENQ), memory_order_acquire);
    return PyLong_FromLongLong(e > d ? (long long)(e - d) : 0);
}

/* ---- 5. Treiber stack with tagged head (tagged_pop/tagged_push: tagged_stack.h) */

typedef struct {
    a64 *head;
    char *base;
    Py_ssize_t stride, link, count;
} Stack;

static int
stack_args(Shared *s, PyObject *const *args, Stack *st)
{
    Py_ssize_t head = PyLong_AsSsize_t(args[0]);
    Py_ssize_t base = PyLong_AsSsize_t(args[1]);
    st->stride = PyLong_AsSsize_t(args[2]);
    st->link = PyLong_AsSsize_t(args[3]);
    st->count = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred())
        return -1;
    if (head % 8 || base % 8 || st->stride % 8 || st->link % 8 || st->stride <= 0 ||
        st->link < 0 || st->link + 8 > st->stride || st->count <= 0 || st->count >= UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "bad stack geometry");
        return -1;
    }
    if (st->count > PY_SSIZE_T_MAX / st->stride) {
        PyErr_SetString(PyExc_ValueError, "bad stack geometry (stride * count overflows)");
        return -1;
    }
    if (!(st->head = (a64 *)span(s, head, 8)))
        return -1;
    if (!(st->base = span(s, base, st->stride * st->count)))
        return -1;
    return 0;
}

/* stack_push(head, base, stride, link, count, index) */
static PyObject *
S_stack_push(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(6, "stack_push");
    Stack st;
    if (stack_args(s, args, &st) < 0)
        return NULL;
    Py_ssize_t idx = PyLong_AsSsize_t(args[5]);
    if (idx == -1 && PyErr_Occurred())
        return NULL;
    if (idx < 0 || idx >= st.count)
        return PyErr_Format(PyExc_IndexError, "stack index %zd out of range", idx);
    tagged_push(st.head, st.base, st.stride, st.link, idx);
    Py_RETURN_NONE;
}

/* stack_pop(head, base, stride, link, count) -> index or -1 when empty */
static PyObject *
S_stack_pop(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(5, "stack_pop");
    Stack st;
    if (stack_args(s, args, &st) < 0)
        return NULL;
    ptrdiff_t idx = tagged_pop(st.head, st.base, st.stride, st.link, st.count);
    if (idx == TS_CORRUPT)
        /* Relaxed: only for the message. */
        return corrupt("penny: corrupt free list head %llu (names no node of %zd)",
                       (unsigned long long)atomic_load_explicit(st.head, memory_order_relaxed), st.count);
    return PyLong_FromSsize_t(idx);  /* an index, or TS_EMPTY (-1) */
}

/* ---- 6. waking a sleeper (notify_word: futex.h) ------------------------- */

/* notify(sleepers_off, states_off, stride, count, start) -> index or -1.
 * Called by whoever published work, after publishing it. */
static PyObject *
S_notify(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(5, "notify");
    a32 *sleepers = addr(s, args[0], 4);
    if (!sleepers)
        return NULL;
    Py_ssize_t states = PyLong_AsSsize_t(args[1]);
    Py_ssize_t stride = PyLong_AsSsize_t(args[2]);
    Py_ssize_t count = PyLong_AsSsize_t(args[3]);
    Py_ssize_t start = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred())
        return NULL;
    if (count <= 0 || stride <= 0 || stride % 4 || states % 4 || count - 1 > (PY_SSIZE_T_MAX - 4) / stride)
        return PyErr_Format(PyExc_ValueError, "bad sleeper table geometry");
    if (!span(s, states, stride * (count - 1) + 4)) {
        PyErr_Clear();
        return PyErr_Format(PyExc_ValueError, "bad sleeper table geometry (outside the buffer)");
    }
    /* notify_one computes (start + i) % count: keep start in [0, count). */
    start %= count;
    if (start < 0)
        start += count;
    return PyLong_FromSsize_t(notify_one(s->base, (char *)sleepers - s->base, states, stride, count, start));
}

/* ---- raw bytes ------------------------------------------------------------ */

/* write_bytes(off, data) : plain copy; published by a later release op. */
static PyObject *
S_write_bytes(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(2, "write_bytes");
    Py_ssize_t off = PyLong_AsSsize_t(args[0]);
    if (off == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(args[1], &b, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    char *p = span(s, off, b.len);
    if (p)
        memcpy(p, b.buf, b.len);
    PyBuffer_Release(&b);
    if (!p)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
S_read_bytes(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(2, "read_bytes");
    Py_ssize_t off = PyLong_AsSsize_t(args[0]);
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if (PyErr_Occurred())
        return NULL;
    char *p = span(s, off, n);
    if (!p)
        return NULL;
    return PyBytes_FromStringAndSize(p, n);
}

/* ---- bump allocation ------------------------------------------------------ */

/* bump(off, size, limit) -> old value, or -1 if old + size > limit.
 * A fetch_add that refuses to go past `limit` (CAS loop), so a request that
 * does not fit leaves the rest usable.  Relaxed: it only hands out disjoint
 * ranges; their contents are published by later release operations. */
static PyObject *
S_bump(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(3, "bump");
    uint64_t size, limit;
    a64 *p = addr(s, args[0], 8);
    if (!p || as_u64(args[1], &size) < 0 || as_u64(args[2], &limit) < 0)
        return NULL;
    uint64_t old = atomic_load_explicit(p, memory_order_relaxed);
    do {
        if (old > limit || size > limit - old)
            return PyLong_FromLong(-1);
    } while (!atomic_compare_exchange_weak_explicit(p, &old, old + size, memory_order_relaxed,
                                                    memory_order_relaxed));
    return PyLong_FromUnsignedLongLong(old);
}

