/*
 * tasks.c: the task protocol's fast paths on a Shared object: set_tasks
 * (where the task machinery is), inject, claim, finish, settle, publish,
 * spawn, pop_child, collect, free_task, take_batch, token_give/token_take.
 * Part of the unity build (core.c), not compiled on its own.
 *
 * The common case of a task's life in three calls, one per role, so that
 * Python pays one C call where it would pay ten.  Anything uncommon (pickled
 * arguments or results, exceptions, cancellation) returns to Python, which
 * handles it with the generic operations (ops.c).  Orderings are the same as
 * the Python slow paths document (tasks.py): the status word is stored with
 * release after the record's contents; readers load it with acquire.
 */

/* set_tasks(*, tasks, task_capacity, injector, completions, inbox0, state0,
 *           slice_size, workers): the per-region geometry, keywords only
 * (layout.bind).  The task table at `tasks` has `task_capacity` records of
 * RECORD_SIZE bytes; `injector` and `completions` are MPMC rings of as many
 * slots; worker w's inbox ring and parking word are at inbox0 and state0
 * plus w * slice_size.  Everything fixed (record fields, header words,
 * statuses, flags) is compiled in from layout.h. */
static PyObject *
S_set_tasks(Shared *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"tasks", "task_capacity", "injector", "completions", "inbox0",
                             "state0", "slice_size", "workers", NULL};
    TaskGeometry g;
    memset(&g, 0, sizeof g);
    Py_ssize_t *fields[] = {&g.tasks, &g.capacity, &g.injector, &g.completions, &g.inbox0,
                            &g.states, &g.slice_size, &g.nstates};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        *fields[i] = PY_SSIZE_T_MIN;  /* not given */
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|$nnnnnnnn:set_tasks", kwlist, &g.tasks, &g.capacity,
                                     &g.injector, &g.completions, &g.inbox0, &g.states, &g.slice_size,
                                     &g.nstates))
        return NULL;
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (*fields[i] == PY_SSIZE_T_MIN)
            return PyErr_Format(PyExc_TypeError, "set_tasks() missing keyword argument '%s'", kwlist[i]);
    /* Every product below is formed only after its factors are known to be
     * small enough not to overflow (signed overflow would be UB and could
     * skip the span checks). */
    if (g.capacity < 2 || (g.capacity & (g.capacity - 1)) || g.capacity >= ((Py_ssize_t)1 << 31) ||
        g.nstates < 1 || g.nstates > 0xffff || g.slice_size < 0 || g.slice_size % 64 ||
        (g.nstates > 1 && g.slice_size == 0) || g.slice_size > PY_SSIZE_T_MAX / 0x10000 ||
        g.tasks % 64 || g.injector % 64 || g.completions % 64 || g.inbox0 % 64 || g.states % 4 ||
        g.inbox0 < 0 || g.states < 0) {
        PyErr_SetString(PyExc_ValueError, "bad task geometry");
        return NULL;
    }
    /* capacity < 2**31 and slice_size * 0xffff fit in Py_ssize_t (64-bit). */
    Py_ssize_t ring_bytes = Q_SLOTS + 16 * g.capacity, last = (g.nstates - 1) * g.slice_size;
    if (!span(s, g.tasks, g.capacity * RECORD_SIZE) || !span(s, H_TASK_FREE, 8) ||
        !span(s, g.states, last + 4) || !span(s, H_COLLECTOR, 4) ||
        !span(s, H_SLEEPERS, 4) || !span(s, H_COLLECTOR_SLEEPERS, 4) ||
        !span(s, g.injector, ring_bytes) || !span(s, g.completions, ring_bytes) ||
        !span(s, g.inbox0, last + ring_bytes))
        return NULL;
    /* The fast paths address the rings with mask capacity - 1 (not the mask
     * in the ring's header, which the generic queue_* operations use): the
     * two must agree, or a ring has two geometries.  Relaxed: written once at
     * init (region.py), before the region is shared.  0: not initialised yet
     * (the creating process binds before it initialises the rings). */
    uint64_t want = (uint64_t)g.capacity - 1;
    for (Py_ssize_t i = -2; i < g.nstates; i++) {
        Py_ssize_t ring = i == -2 ? g.injector : i == -1 ? g.completions : g.inbox0 + i * g.slice_size;
        uint64_t mask = atomic_load_explicit((a64 *)(s->base + ring + Q_MASK), memory_order_relaxed);
        if (mask != 0 && mask != want)
            return corrupt("penny: corrupt ring at offset %zd: mask %llu, but the task capacity is %zd",
                           ring, (unsigned long long)mask, g.capacity);
    }
    g.ready = 1;
    s->g = g;
    Py_RETURN_NONE;
}

static inline int
need_tasks(Shared *s)
{
    if (check_live(s) < 0)
        return -1;
    if (!s->g.ready) {
        PyErr_SetString(PyExc_RuntimeError, "set_tasks() was not called");
        return -1;
    }
    return 0;
}

/* Wake one sleeper of the table at `states` (notify_one, futex.h). */
static inline void
wake_one(Shared *s, Py_ssize_t sleepers_off, Py_ssize_t states, Py_ssize_t stride, Py_ssize_t count,
         Py_ssize_t start)
{
    notify_one(s->base, sleepers_off, states, stride, count, start);
}

#define GEN_MASK 0x7fffffffu

enum { TR_FULL = -1, TR_NOT_INLINE = -2 };

/* Take a free record and pack the tuple or list `seq` into its inline area.
 * Returns the record's index; TR_FULL when no record is free; TR_NOT_INLINE
 * when `seq` does not fit inline (the record went back to the free list). */
static Py_ssize_t
take_record(Shared *s, PyObject *seq)
{
    TaskGeometry *g = &s->g;
    Py_ssize_t n;
    PyObject **items;
    if (PyTuple_CheckExact(seq)) {
        n = PyTuple_GET_SIZE(seq);
        items = &PyTuple_GET_ITEM(seq, 0);
    } else if (PyList_CheckExact(seq)) {
        n = PyList_GET_SIZE(seq);
        items = &PyList_GET_ITEM(seq, 0);
    } else {
        return TR_NOT_INLINE;
    }
    if (n > 255)
        return TR_NOT_INLINE;
    a64 *head = (a64 *)(s->base + H_TASK_FREE);
    char *tbase = s->base + g->tasks;
    Py_ssize_t idx = tagged_pop(head, tbase, RECORD_SIZE, R_LINK, g->capacity);
    if (idx < 0)
        return TR_FULL;
    char *p = tbase + idx * RECORD_SIZE + R_INLINE, *end = p + INLINE_SIZE, *q = p + 1;
    *p = (char)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t w = pack_one(items[i], q, end);
        if (w < 0) {
            tagged_push(head, tbase, RECORD_SIZE, R_LINK, idx);
            return TR_NOT_INLINE;
        }
        q += w;
    }
    return idx;
}

/* The ref of the record at `idx` in its current life: its generation (the
 * state word's low half) and its index + 1.  Relaxed: for a record the
 * caller owns (taken from the free list with acquire). */
static inline uint64_t
record_ref(const char *tbase, Py_ssize_t idx)
{
    uint64_t gen = atomic_load_explicit((a64 *)(tbase + idx * RECORD_SIZE + R_STATE), memory_order_relaxed) & GEN_MASK;
    return (gen << 32) | (uint64_t)(idx + 1);
}

/* Fill the header of record `rec` (taken from the free list by this process)
 * and publish it as QUEUED.  The one place a record is made, for every path:
 * inject and enqueue (root tasks), spawn and enqueue_child (children).
 * Relaxed field stores, published by the release store of the state; every
 * field a reader uses is written: the record was some other task's. */
static uint64_t
commit_record(char *rec, Py_ssize_t idx, uint32_t fid, uint32_t flags, uint64_t parent)
{
    a64 *state = (a64 *)(rec + R_STATE);
    /* Relaxed: we own the record (popped with acquire). */
    uint64_t gen = atomic_load_explicit(state, memory_order_relaxed) & GEN_MASK;
    atomic_store_explicit((a32 *)(rec + R_FN), fid, memory_order_relaxed);
    atomic_store_explicit((a32 *)(rec + R_FLAGS), flags, memory_order_relaxed);
    atomic_store_explicit((a64 *)(rec + R_PARENT), parent, memory_order_relaxed);
    atomic_store_explicit((a32 *)(rec + R_ATTEMPTS), 0, memory_order_relaxed);
    atomic_store_explicit(state, ((uint64_t)S_QUEUED << 32) | gen, memory_order_release);
    return (gen << 32) | (uint64_t)(idx + 1);
}

/* A root task's last steps, shared by inject and enqueue: register `fut` in
 * `futures` under the ref (and as fut._ref) *before* the ref is visible to
 * any worker, commit the record, push the ref on the global queue (whose
 * release store of seq publishes the record to the popper), wake a sleeper.
 * Returns the ref as a new int, or NULL with the record untouched (still
 * ours: the caller gives it back). */
static PyObject *
queue_root(Shared *s, Py_ssize_t idx, uint32_t fid, uint32_t flags, PyObject *fut, PyObject *futures)
{
    TaskGeometry *g = &s->g;
    char *rec = s->base + g->tasks + idx * RECORD_SIZE;
    uint64_t gen = atomic_load_explicit((a64 *)(rec + R_STATE), memory_order_relaxed) & GEN_MASK;
    PyObject *key = PyLong_FromUnsignedLongLong((gen << 32) | (uint64_t)(idx + 1));
    if (!key || PyDict_SetItem(futures, key, fut) < 0 || PyObject_SetAttrString(fut, "_ref", key) < 0) {
        if (key && PyDict_Contains(futures, key) == 1)
            PyDict_DelItem(futures, key);
        Py_XDECREF(key);
        return NULL;
    }
    uint64_t ref = commit_record(rec, idx, fid, flags, 0);
    KILL_POINT(INJECT_AFTER_COMMIT);
    if (mq_push_as(s->base + g->injector, (uint64_t)(g->capacity - 1), ref, s->taker, push_note(s), KP_NONE) != 1) {
        Py_DECREF(key);
        return PyErr_Format(PyExc_RuntimeError, "global queue full (broken invariant)");
    }
    wake_one(s, H_SLEEPERS, g->states, g->slice_size, g->nstates, 0);
    return key;
}

/* inject(fid, args, future, futures) -> ref; 0 when no record is free; -1 when
 * the arguments are not inlinable (nothing was taken). */
static PyObject *
S_inject(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(4, "inject");
    if (need_tasks(s) < 0)
        return NULL;
    TaskGeometry *g = &s->g;
    unsigned long fid = PyLong_AsUnsignedLong(args[0]);
    if (fid == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t idx = take_record(s, args[1]);
    if (idx < 0)
        return PyLong_FromSsize_t(idx == TR_FULL ? 0 : -1);
    PyObject *ref = queue_root(s, idx, (uint32_t)fid, 0, args[2], args[3]);
    if (!ref)
        tagged_push((a64 *)(s->base + H_TASK_FREE), s->base + g->tasks, RECORD_SIZE, R_LINK, idx);
    return ref;
}

/* Index of the record of `ref` that this process took from the free list
 * (TaskTable.alloc) and has not published; -1 with ValueError if `ref`
 * names no record or the record is not free. */
static Py_ssize_t
own_record(Shared *s, uint64_t ref)
{
    TaskGeometry *g = &s->g;
    Py_ssize_t idx = (Py_ssize_t)(ref & 0xffffffffu) - 1;
    if (idx < 0 || idx >= g->capacity) {
        PyErr_Format(PyExc_ValueError, "bad task ref %llu", (unsigned long long)ref);
        return -1;
    }
    uint64_t word = atomic_load_explicit((a64 *)(s->base + g->tasks + idx * RECORD_SIZE + R_STATE),
                                         memory_order_relaxed);
    if (word >> 32 != S_FREE || (word & GEN_MASK) != ref >> 32) {
        PyErr_Format(PyExc_ValueError, "task ref %llu is not a record taken for a new task",
                     (unsigned long long)ref);
        return -1;
    }
    return idx;
}

/* enqueue(ref, fid, flags, future, futures) -> ref.  The general path of a
 * root task (Scheduler._inject): Python took the record and encoded the
 * arguments into it (wire/marshal.py); the rest is inject's. */
static PyObject *
S_enqueue(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(5, "enqueue");
    if (need_tasks(s) < 0)
        return NULL;
    uint64_t ref, fid, flags;
    if (as_u64(args[0], &ref) < 0 || as_u64(args[1], &fid) < 0 || as_u64(args[2], &flags) < 0)
        return NULL;
    Py_ssize_t idx = own_record(s, ref);
    if (idx < 0)
        return NULL;
    return queue_root(s, idx, (uint32_t)fid, (uint32_t)flags, args[3], args[4]);
}

/* The record a ref names (any generation); NULL with ValueError if out of range. */
static char *
task_record(Shared *s, uint64_t ref)
{
    TaskGeometry *g = &s->g;
    Py_ssize_t idx = (Py_ssize_t)(ref & 0xffffffffu) - 1;
    if (idx < 0 || idx >= g->capacity) {
        PyErr_Format(PyExc_ValueError, "bad task ref %llu", (unsigned long long)ref);
        return NULL;
    }
    return s->base + g->tasks + idx * RECORD_SIZE;
}

static int route(Shared *s, uint64_t ref, uint64_t parent);

/* The last step of finishing a task whose outcome is written: read the parent
 * (relaxed: written by the spawner before the release that published us; read
 * before the status store, after which the record may be freed), store the
 * status (release: the outcome is visible to whoever acquires it), route the
 * task, and only then clear the worker's current word: a supervisor that
 * finds a settled root task in `current` routes it again, and collect drops
 * the second completion of a ref (crash-model.md, "settle").  Relaxed
 * store of `cur`: read only by the supervisor after our death. */
static int
settle_record(Shared *s, char *rec, uint64_t ref, uint64_t status, a64 *cur)
{
    uint64_t parent = atomic_load_explicit((a64 *)(rec + R_PARENT), memory_order_relaxed);
    atomic_store_explicit((a64 *)(rec + R_STATE), (status << 32) | (ref >> 32), memory_order_release);
    KILL_POINT(SETTLE_AFTER_STATUS);
    int rc = route(s, ref, parent);
    atomic_signal_fence(memory_order_seq_cst); /* the route's stores before the clear, for a post-mortem reader */
    atomic_store_explicit(cur, 0, memory_order_relaxed);
    return rc;
}

/* claim(ref, current_off, wid) -> (fid, flags, args or None) or None.
 * Worker: CAS the record QUEUED -> RUNNING (AcqRel: we see the submitter's
 * writes), note it as current, and decode inline arguments.  None means the
 * task is not queued any more (cancelled); args None means they are pickled. */
static PyObject *
S_claim(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(3, "claim");
    if (need_tasks(s) < 0)
        return NULL;
    uint64_t ref, wid;
    a64 *cur = addr(s, args[1], 8);
    if (!cur || as_u64(args[0], &ref) < 0 || as_u64(args[2], &wid) < 0)
        return NULL;
    char *rec = task_record(s, ref);
    if (!rec)
        return NULL;
    uint64_t gen = ref >> 32;
    uint64_t exp = ((uint64_t)S_QUEUED << 32) | gen;
    /* Owner, join and current are stored BEFORE the CAS that makes the task
     * RUNNING, so that a RUNNING record always names the worker it runs on:
     * a supervisor finding us dead right after the CAS finds the task by its
     * owner (recovery.dead_tasks) and its counts of 0 (crash-model.md,
     * "claim").  Storing them on a QUEUED record is safe: we hold its only
     * ref (taken from a queue, marked in `cur`); nobody reads owner or join
     * of a QUEUED record, and a cancelled one (failed CAS below) is freed by
     * the collector without reading them.  Relaxed: published to children by
     * the CAS's release half (and their own spawn's release push); the
     * supervisor reads them after our death.  Both counts start at 0, the
     * token held (docs/protocols.md, "spawn, sync"). */
    atomic_store_explicit(cur, ref, memory_order_relaxed);
    atomic_store_explicit((a32 *)(rec + R_OWNER), (uint32_t)wid, memory_order_relaxed);
    atomic_store_explicit((a32 *)(rec + R_JOIN), 0, memory_order_relaxed);
    atomic_store_explicit((a32 *)(rec + R_SPAWNED), 0, memory_order_relaxed);
    if (!atomic_compare_exchange_strong_explicit((a64 *)(rec + R_STATE), &exp,
                                                 ((uint64_t)S_RUNNING << 32) | gen,
                                                 memory_order_acq_rel, memory_order_acquire))
        Py_RETURN_NONE;
    KILL_POINT(CLAIM_AFTER_CAS);
    uint32_t fid = atomic_load_explicit((a32 *)(rec + R_FN), memory_order_relaxed);
    uint32_t flags = atomic_load_explicit((a32 *)(rec + R_FLAGS), memory_order_relaxed);
    PyObject *a;
    if (flags & F_ARGS_BLOB) {
        a = Py_NewRef(Py_None);
    } else {
        PyObject *off = PyLong_FromSsize_t(rec + R_INLINE - s->base);
        PyObject *cap = PyLong_FromSsize_t(INLINE_SIZE);
        PyObject *argv[2] = {off, cap};
        a = (off && cap) ? S_unpack_inline(s, argv, 2) : NULL;
        Py_XDECREF(off);
        Py_XDECREF(cap);
        if (!a)
            return NULL;
    }
    PyObject *r = Py_BuildValue("(kkN)", (unsigned long)fid, (unsigned long)flags, a);
    return r;
}

/* Route a finished task (its status already stored, `parent` read before
 * that store, since the record may be freed by its reader right after).
 * A root task goes to the completion ring and wakes the collector.  A child
 * counts itself finished on the parent's join word: AcqRel, so the parent
 * that reads the count as settled sees our result; the child whose count
 * makes every published child finished after the parent gave its token up
 * (it is suspended, or doomed) posts the parent's ref to its owner's inbox
 * and wakes the owner. */
static int
route(Shared *s, uint64_t ref, uint64_t parent)
{
    TaskGeometry *g = &s->g;
    uint64_t mask = (uint64_t)(g->capacity - 1);
    if (parent == 0) {
        if (mq_push_as(s->base + g->completions, mask, ref, s->taker, push_note(s), KP_ROUTE_PUSH_CLAIMED) != 1) {
            PyErr_SetString(PyExc_RuntimeError, "completion queue full (broken invariant)");
            return -1;
        }
        KILL_POINT(ROUTE_AFTER_PUSH);
        wake_one(s, H_COLLECTOR_SLEEPERS, H_COLLECTOR, 4, 1, 0);
        return 0;
    }
    Py_ssize_t pidx = (Py_ssize_t)(parent & 0xffffffffu) - 1;
    if (pidx < 0 || pidx >= g->capacity) {
        PyErr_Format(PyExc_RuntimeError, "corrupt parent ref %llu", (unsigned long long)parent);
        return -1;
    }
    char *prec = s->base + g->tasks + pidx * RECORD_SIZE;
    uint32_t before = atomic_fetch_add_explicit((a32 *)(prec + R_JOIN), 1, memory_order_acq_rel);
    /* The last child of a parent that gave its token up.  Relaxed load of
     * the spawned count: with JOIN_GIVEN in `before`, our RMW read the
     * parent's give or a later RMW of its release sequence, so the parent's
     * stores before its give (the count, final while the token is gone)
     * happen-before this load. */
    if ((before & JOIN_GIVEN) &&
        (before & ~JOIN_GIVEN) + 1 == atomic_load_explicit((a32 *)(prec + R_SPAWNED), memory_order_relaxed)) {
        /* Relaxed: the owner was stored before the parent's token release,
         * which our acq_rel RMW synchronised with. */
        uint32_t owner = atomic_load_explicit((a32 *)(prec + R_OWNER), memory_order_relaxed);
        if ((Py_ssize_t)owner >= g->nstates) {
            PyErr_Format(PyExc_RuntimeError, "corrupt owner %u", owner);
            return -1;
        }
        if (mq_push_as(s->base + g->inbox0 + owner * g->slice_size, mask, parent, s->taker, push_note(s),
                       KP_POST_PUSH_CLAIMED) != 1) {
            PyErr_SetString(PyExc_RuntimeError, "inbox full (broken invariant)");
            return -1;
        }
        wake_one(s, H_SLEEPERS, g->states + owner * g->slice_size, g->slice_size, 1, 0);
    }
    return 0;
}

/* settle(ref, status, current_off): finish_slow's last step in one call:
 * read the parent, store the status (release: the outcome written before it
 * is visible to whoever acquires it), clear current, route the task.  One
 * call, so a worker killed here cannot leave a finished task unrouted except
 * in a window of a few instructions. */
static PyObject *
S_settle(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(3, "settle");
    if (need_tasks(s) < 0)
        return NULL;
    uint64_t ref, status;
    a64 *cur = addr(s, args[2], 8);
    if (!cur || as_u64(args[0], &ref) < 0 || as_u64(args[1], &status) < 0)
        return NULL;
    char *rec = task_record(s, ref);
    if (!rec)
        return NULL;
    if (settle_record(s, rec, ref, status, cur) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* publish(ref, parent): route a task whose status the caller stored. */
static PyObject *
S_publish(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(2, "publish");
    if (need_tasks(s) < 0)
        return NULL;
    uint64_t ref, parent;
    if (as_u64(args[0], &ref) < 0 || as_u64(args[1], &parent) < 0)
        return NULL;
    if (route(s, ref, parent) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* finish(ref, value, current_off) -> bool.  Worker: if `value` fits inline,
 * store it, mark the task DONE (release), clear current and route it (see
 * route).  False: nothing was done (the caller pickles).  Only for tasks
 * whose arguments were inline. */
static PyObject *
S_finish(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(3, "finish");
    if (need_tasks(s) < 0)
        return NULL;
    uint64_t ref;
    a64 *cur = addr(s, args[2], 8);
    if (!cur || as_u64(args[0], &ref) < 0)
        return NULL;
    char *rec = task_record(s, ref);
    if (!rec)
        return NULL;
    a32 *flags = (a32 *)(rec + R_FLAGS);
    uint32_t f = atomic_load_explicit(flags, memory_order_relaxed);
    if (f & F_ARGS_BLOB)
        Py_RETURN_FALSE;  /* its argument blob must be freed first: the Python path */
    /* The inline arguments are about to be overwritten (even if the value
     * then does not fit and finish_slow takes over): mark them consumed
     * first, so that a supervisor finding us dead from here on never retries
     * the task on what is left of them (crash-model.md, "finish").  Relaxed:
     * the flags word is ours while the task runs, and the supervisor reads it
     * only after our death; the signal fence keeps the compiler from sinking
     * this store below the writes of the inline area (program order is all a
     * post-mortem reader needs). */
    atomic_store_explicit(flags, (f | F_ARGS_CONSUMED) & ~F_RESULT_BLOB, memory_order_relaxed);
    atomic_signal_fence(memory_order_seq_cst);
    char *p = rec + R_INLINE;
    *p = 1;
    if (pack_one(args[1], p + 1, p + INLINE_SIZE) < 0)
        Py_RETURN_FALSE;
    KILL_POINT(FINISH_AFTER_RESULT);
    if (settle_record(s, rec, ref, S_DONE, cur) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

/* A worker's area of u64 words at `off` (`size` bytes, 8-byte aligned: the
 * held words, the batch area); NULL with an exception if it is not inside
 * the region. */
static a64 *
area_at(Shared *s, PyObject *off, Py_ssize_t size)
{
    a64 *area = addr(s, off, 8);
    if (area && !span(s, (char *)area - s->base, size))
        return NULL;
    return area;
}

#define held_at(s, off) area_at((s), (off), HELD_SIZE)

/* alloc_child(held_off) -> ref, or 0 when no record is free.  A worker's
 * record for a child whose arguments Python encodes (Worker.spawn_slow):
 * taken from the free list, its blob fields cleared (an offset left from the
 * record's last life must never be freed as this child's), and its ref stored
 * in the worker's held[HELD_REF] word, in this one call.  A supervisor that finds the
 * worker dead with `held` naming a record still FREE of that generation
 * (taken, never committed by enqueue_child, nor given back: both change the
 * state word) frees its blob and the record (supervisor.py; crash-model.md,
 * "spawn_slow"); any other state means the word is stale (queue_child
 * clears it once the child is pushed).  Relaxed: we own the record (popped with acquire); only a supervisor
 * reads `held`, after our death. */
static PyObject *
S_alloc_child(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(1, "alloc_child");
    if (need_tasks(s) < 0)
        return NULL;
    a64 *held = held_at(s, args[0]);
    if (!held)
        return NULL;
    TaskGeometry *g = &s->g;
    char *tbase = s->base + g->tasks;
    ptrdiff_t idx = tagged_pop((a64 *)(s->base + H_TASK_FREE), tbase, RECORD_SIZE, R_LINK, g->capacity);
    if (idx == TS_CORRUPT)
        return corrupt("penny: corrupt task free list head %llu (names no record of %zd)",
                       (unsigned long long)atomic_load_explicit((a64 *)(s->base + H_TASK_FREE),
                                                                memory_order_relaxed),
                       g->capacity);
    if (idx < 0)
        return PyLong_FromLong(0);
    char *rec = tbase + idx * RECORD_SIZE;
    atomic_store_explicit((a64 *)(rec + R_BLOB), 0, memory_order_relaxed);
    atomic_store_explicit((a64 *)(rec + R_BLOB_LEN), 0, memory_order_relaxed);
    uint64_t ref = record_ref(tbase, idx);
    atomic_store_explicit(&held[HELD_REF / 8], ref, memory_order_relaxed);
    return PyLong_FromUnsignedLongLong(ref);
}

/* Outcome of queue_child besides a ref: the deque had no room (the record is
 * still the caller's to give back; the child stays private). */
#define QC_NO_ROOM 0

/* A child's last steps, shared by spawn and enqueue_child: the record `idx`
 * was taken by this worker and its ref is in held[HELD_REF].  Note the
 * parent's spawned count and our deque's bottom in the held words, commit
 * the record, count it on the parent, push it on our own deque, clear
 * held[HELD_REF], wake one sleeper to steal it.  Every step but the push
 * writes only what this worker owns, so a supervisor that finds us dead with
 * held[HELD_REF] set knows from the record's state, the parent's count and
 * the deque's bottom which steps happened, and does the rest
 * (recovery.finish_spawn; crash-model.md, "spawn").  Returns the ref;
 * QC_NO_ROOM when our deque is full (nothing published). */
static uint64_t
queue_child(Shared *s, Py_ssize_t idx, uint32_t fid, uint32_t flags, Py_ssize_t pidx, uint64_t parent,
            char *dq, uint64_t dmask, a64 *held)
{
    TaskGeometry *g = &s->g;
    char *tbase = s->base + g->tasks, *prec = tbase + pidx * RECORD_SIZE;
    a32 *spawned = (a32 *)(prec + R_SPAWNED), *join = (a32 *)(prec + R_JOIN);
    /* Relaxed: the count is ours (the parent runs here). */
    uint32_t s0 = atomic_load_explicit(spawned, memory_order_relaxed);
    /* Every child published so far finished (acquire: pairs with their
     * acq_rel counts): no count of the join word is pending, so both start
     * again from 0, which keeps them far below JOIN_GIVEN however many
     * children a task publishes in its life.  Spawned first: a death between
     * the two stores leaves more finished than spawned, which every reader
     * takes as "none outstanding" (true), never a phantom child. */
    if (s0 && atomic_load_explicit(join, memory_order_acquire) == s0) {
        atomic_store_explicit(spawned, 0, memory_order_relaxed);
        atomic_store_explicit(join, 0, memory_order_relaxed);
        s0 = 0;
    }
    /* Room on our deque (acquire top, as in cl_push): only we push, so the
     * push below cannot fail, and a child is never spilled where the
     * supervisor would not know to look. */
    int64_t b0 = atomic_load_explicit((ai64 *)(dq + DQ_BOTTOM), memory_order_relaxed);
    if (b0 - atomic_load_explicit((ai64 *)(dq + DQ_TOP), memory_order_acquire) > (int64_t)dmask)
        return QC_NO_ROOM;
    atomic_store_explicit(&held[HELD_PARENT / 8], parent, memory_order_relaxed);
    atomic_store_explicit(&held[HELD_SPAWNED / 8], s0, memory_order_relaxed);
    atomic_store_explicit(&held[HELD_BOTTOM / 8], (uint64_t)b0, memory_order_relaxed);
    uint64_t ref = commit_record(tbase + idx * RECORD_SIZE, idx, fid, flags, parent);
    KILL_POINT(SPAWN_AFTER_COMMIT);
    /* Relaxed: read by a child only once the parent's token give (release)
     * ordered it, and by its own worker. */
    atomic_store_explicit(spawned, s0 + 1, memory_order_relaxed);
    KILL_POINT(SPAWN_AFTER_COUNT);
    cl_push(dq, dmask, ref);  /* the release that lets a thief run the child */
    KILL_POINT(SPAWN_AFTER_PUSH);
    atomic_store_explicit(&held[HELD_REF / 8], 0, memory_order_relaxed);
    wake_one(s, H_SLEEPERS, g->states, g->slice_size, g->nstates, 0);
    return ref;
}

/* The parent's index; -1 with ValueError if `parent` names no record. */
static Py_ssize_t
parent_index(Shared *s, uint64_t parent)
{
    Py_ssize_t pidx = (Py_ssize_t)(parent & 0xffffffffu) - 1;
    if (pidx < 0 || pidx >= s->g.capacity) {
        PyErr_Format(PyExc_ValueError, "bad parent ref %llu", (unsigned long long)parent);
        return -1;
    }
    return pidx;
}

/* spawn(fid, args, parent, deque_off, held_off) -> ref; 0 when no record is
 * free or our deque is full; -1 when the arguments are not inlinable
 * (nothing was taken).  Worker: a child record with inline arguments, marked
 * in held[HELD_REF] as soon as it is taken (queue_child does the rest). */
static PyObject *
S_spawn(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(5, "spawn");
    if (need_tasks(s) < 0)
        return NULL;
    uint64_t fid, parent, dmask;
    if (as_u64(args[0], &fid) < 0 || as_u64(args[2], &parent) < 0)
        return NULL;
    char *dq = deque_at(s, args[3], &dmask);
    a64 *held = dq ? held_at(s, args[4]) : NULL;
    if (!held)
        return NULL;
    Py_ssize_t pidx = parent_index(s, parent);
    if (pidx < 0)
        return NULL;
    Py_ssize_t idx = take_record(s, args[1]);
    if (idx < 0)
        return PyLong_FromSsize_t(idx == TR_FULL ? 0 : -1);
    char *tbase = s->base + s->g.tasks;
    uint64_t taken = record_ref(tbase, idx);
    atomic_store_explicit(&held[HELD_REF / 8], taken, memory_order_relaxed);
    uint64_t ref = queue_child(s, idx, (uint32_t)fid, 0, pidx, parent, dq, dmask, held);
    if (ref == QC_NO_ROOM) {
        /* Given back as free_task does, with the next generation, so the
         * held mark is stale at once (a supervisor frees only a record still
         * FREE of the marked generation, never one on the free list). */
        atomic_store_explicit((a64 *)(tbase + idx * RECORD_SIZE + R_STATE),
                              ((uint64_t)S_FREE << 32) | (((taken >> 32) + 1) & GEN_MASK), memory_order_relaxed);
        tagged_push((a64 *)(s->base + H_TASK_FREE), tbase, RECORD_SIZE, R_LINK, idx);
    }
    return PyLong_FromUnsignedLongLong(ref);
}

/* enqueue_child(ref, fid, flags, parent, deque_off, held_off) -> ref, or 0
 * when our deque is full (the record is still the caller's).  The general
 * path of a child (Worker.spawn_slow): Python took the record
 * (alloc_child, which marked it held) and encoded the arguments; the rest is
 * spawn's. */
static PyObject *
S_enqueue_child(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(6, "enqueue_child");
    if (need_tasks(s) < 0)
        return NULL;
    uint64_t ref, fid, flags, parent, dmask;
    if (as_u64(args[0], &ref) < 0 || as_u64(args[1], &fid) < 0 || as_u64(args[2], &flags) < 0 ||
        as_u64(args[3], &parent) < 0)
        return NULL;
    char *dq = deque_at(s, args[4], &dmask);
    a64 *held = dq ? held_at(s, args[5]) : NULL;
    if (!held)
        return NULL;
    Py_ssize_t pidx = parent_index(s, parent), idx = own_record(s, ref);
    if (pidx < 0 || idx < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(queue_child(s, idx, (uint32_t)fid, (uint32_t)flags, pidx, parent, dq, dmask, held));
}

/* pop_child(deque_off, parent, current_off=None) -> ref or 0.  Owner: pop
 * the bottom of its deque if it is a child of `parent` (marking it taken in
 * `current`, see mark_taken); otherwise leave it there and return 0.  The
 * bottom is looked at before it is taken (cl_peek), so a ref that is not
 * ours is never off the deque (was: popped and pushed back, and lost if we
 * died in between: issue 12 item 6). */
static PyObject *
S_pop_child(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(2, "pop_child");
    if (need_tasks(s) < 0)
        return NULL;
    TaskGeometry *g = &s->g;
    uint64_t dmask, parent;
    char *dq = deque_at(s, args[0], &dmask);
    if (!dq || as_u64(args[1], &parent) < 0)
        return NULL;
    int64_t ref = cl_peek(dq, dmask);
    if (ref <= 0)
        return PyLong_FromLong(0);
    Py_ssize_t idx = (Py_ssize_t)(ref & 0xffffffff) - 1;
    if (idx < 0 || idx >= g->capacity)
        return PyErr_Format(PyExc_RuntimeError, "corrupt ref %lld in deque", (long long)ref);
    /* Relaxed: the record was published to us by our own push. */
    uint64_t p = atomic_load_explicit((a64 *)(s->base + g->tasks + idx * RECORD_SIZE + R_PARENT),
                                      memory_order_relaxed);
    if (p != parent)
        return PyLong_FromLong(0);
    /* The same slot: `ref`, or R_EMPTY if a thief took it since the peek. */
    ref = cl_pop(dq, dmask);
    if (ref <= 0)
        return PyLong_FromLong(0);
    if (mark_taken(s, args, nargs, 2, ref) < 0)
        return NULL;
    KILL_POINT(POP_CHILD_AFTER_TAKE);
    return PyLong_FromLongLong(ref);
}

/* Refs popped by collect that named no record (corrupt ring words). */
static uint64_t s_collect_dropped = 0;

/* collect(max, futures) -> (fast, slow).  Collector: pop up to `max` finished
 * refs.  A DONE task with an inline result is decoded, its record freed and
 * (future, value) appended to `fast` (the future popped from `futures`; None
 * if absent).  Every other ref goes to `slow` untouched for Python. */
static PyObject *
S_collect(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(2, "collect");
    if (need_tasks(s) < 0)
        return NULL;
    TaskGeometry *g = &s->g;
    Py_ssize_t max = PyLong_AsSsize_t(args[0]);
    if (max == -1 && PyErr_Occurred())
        return NULL;
    PyObject *futures = args[1];
    PyObject *fast = PyList_New(0), *slow = PyList_New(0);
    if (!fast || !slow)
        goto fail;
    char *ring = s->base + g->completions;
    uint64_t mask = (uint64_t)(g->capacity - 1);
    a64 *head = (a64 *)(s->base + H_TASK_FREE);
    char *tbase = s->base + g->tasks;
    for (Py_ssize_t i = 0; i < max; i++) {
        int64_t ref = mq_pop(ring, mask);
        if (ref == R_EMPTY)
            break;
        KILL_POINT(COLLECT_AFTER_POP);
        /* The ring's words are untrusted: a ref that names no record is
         * dropped (counted in collect_dropped), never dereferenced. */
        Py_ssize_t idx = (Py_ssize_t)(ref & 0xffffffff) - 1;
        if (ref <= 0 || idx < 0 || idx >= g->capacity) {
            s_collect_dropped++;
            continue;
        }
        char *rec = tbase + idx * RECORD_SIZE;
        a64 *state = (a64 *)(rec + R_STATE);
        /* Acquire: pairs with the worker's release of the status. */
        uint64_t word = atomic_load_explicit(state, memory_order_acquire);
        uint32_t flags = atomic_load_explicit((a32 *)(rec + R_FLAGS), memory_order_relaxed);
        if ((word & GEN_MASK) != ((uint64_t)ref >> 32)) {
            /* Another generation: this ref was collected and its record
             * freed already (a supervisor routed a settled task a second
             * time, crash-model.md "settle").  Dropped: freeing it again
             * would free someone else's record. */
            s_collect_dropped++;
            continue;
        }
        PyObject *key = PyLong_FromLongLong(ref);
        if (!key)
            goto fail;
        if ((word >> 32) != S_DONE ||
            (flags & (F_RESULT_BLOB | F_ARGS_BLOB))) {
            int rc = PyList_Append(slow, key);
            Py_DECREF(key);
            if (rc < 0)
                goto fail;
            continue;
        }
        PyObject *off = PyLong_FromSsize_t(rec + R_INLINE - s->base);
        PyObject *cap = PyLong_FromSsize_t(INLINE_SIZE);
        PyObject *argv[2] = {off, cap};
        PyObject *tup = (off && cap) ? S_unpack_inline(s, argv, 2) : NULL;
        Py_XDECREF(off);
        Py_XDECREF(cap);
        if (tup && PyTuple_GET_SIZE(tup) != 1) {
            /* Not one value (a corrupt count byte, 0 say): Python's path
             * reports it on the future as an unreadable outcome and frees
             * the record. */
            Py_DECREF(tup);
            int rc = PyList_Append(slow, key);
            Py_DECREF(key);
            if (rc < 0)
                goto fail;
            continue;
        }
        /* Free the record: the next generation, then the release CAS of the
         * free list publishes it. */
        atomic_store_explicit(state, ((uint64_t)S_FREE << 32) | ((((uint64_t)ref >> 32) + 1) & GEN_MASK),
                              memory_order_relaxed);
        tagged_push(head, tbase, RECORD_SIZE, R_LINK, idx);
        if (!tup) {
            Py_DECREF(key);
            goto fail;
        }
        PyObject *fut = PyDict_GetItemWithError(futures, key);
        if (fut) {
            Py_INCREF(fut);
            if (PyDict_DelItem(futures, key) < 0) {
                Py_DECREF(fut);
                fut = NULL;
            }
        }
        Py_DECREF(key);
        if (!fut && PyErr_Occurred()) {
            Py_DECREF(tup);
            goto fail;
        }
        PyObject *pair = PyTuple_Pack(2, fut ? fut : Py_None, PyTuple_GET_ITEM(tup, 0));
        Py_XDECREF(fut);
        Py_DECREF(tup);
        if (!pair || PyList_Append(fast, pair) < 0) {
            Py_XDECREF(pair);
            goto fail;
        }
        Py_DECREF(pair);
    }
    return Py_BuildValue("(NN)", fast, slow);
fail:
    /* Only on MemoryError; refs popped in this call are lost with it. */
    Py_XDECREF(fast);
    Py_XDECREF(slow);
    return NULL;
}

/* free_task(ref): recycle a record whose outcome was read and whose blobs
 * were freed: the next generation, then the free list's release CAS. */
static PyObject *
S_free_task(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(1, "free_task");
    if (need_tasks(s) < 0)
        return NULL;
    TaskGeometry *g = &s->g;
    uint64_t ref;
    if (as_u64(args[0], &ref) < 0)
        return NULL;
    Py_ssize_t idx = (Py_ssize_t)(ref & 0xffffffffu) - 1;
    if (idx < 0 || idx >= g->capacity)
        return PyErr_Format(PyExc_ValueError, "bad task ref %llu", (unsigned long long)ref);
    char *tbase = s->base + g->tasks;
    a64 *state = (a64 *)(tbase + idx * RECORD_SIZE + R_STATE);
    /* Relaxed: the caller owns the record; this only catches a second free
     * (the record then has the next generation), which would put it on the
     * free list twice and hand it out twice. */
    if ((atomic_load_explicit(state, memory_order_relaxed) & GEN_MASK) != (ref >> 32))
        return PyErr_Format(PyExc_ValueError, "task ref %llu freed twice (its record is of another generation)",
                            (unsigned long long)ref);
    atomic_store_explicit(state, ((uint64_t)S_FREE << 32) | (((ref >> 32) + 1) & GEN_MASK), memory_order_relaxed);
    tagged_push((a64 *)(s->base + H_TASK_FREE), tbase, RECORD_SIZE, R_LINK, idx);
    Py_RETURN_NONE;
}

/* take_batch(queue, max, deque, current_off, batch_off) -> (first ref or
 * EMPTY, count).  A worker's batch from the global queue, in one call: pop up
 * to `max` refs (at most TAKE_BATCH_MAX, and no more than its deque has room
 * for), mark the first as taken (see mark_taken) and push the others on the
 * worker's own deque, newest first so the oldest is popped next.
 *
 * No ref is ever only in this C frame: the worker's batch area (`batch_off`,
 * BATCH_* in layout.h) records each ref as it is popped, the count after it,
 * and the deque's bottom before the first push, so a supervisor that finds
 * the worker dead anywhere in this call knows which refs are in `current`
 * (the first, once marked), which are on the deque (the last `bottom - b0`
 * pushed, newest first) and which only in the area: those it queues again
 * (supervisor.py; docs/crash-model.md, "take_batch").  Each ref is in exactly
 * one of those places, never two (a second copy would let two claimants
 * write one record).  Each pop claims its slot (mpmc_ring.h) and releases it
 * only after the ref is recorded: a ref claimed and not yet recorded is in
 * the claimed slot, which names us (queue_repair hands it back).  Relaxed
 * stores: only a supervisor reads the area, after this process is dead. */
static PyObject *
S_take_batch(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(5, "take_batch");
    uint64_t qmask, dmask;
    char *q = queue_at(s, args[0], &qmask);
    char *dq = q ? deque_at(s, args[2], &dmask) : NULL;
    char *area = dq ? (char *)area_at(s, args[4], BATCH_AREA_SIZE) : NULL;
    Py_ssize_t max = PyLong_AsSsize_t(args[1]);
    if (!q || !dq || !area || (max == -1 && PyErr_Occurred()))
        return NULL;
    a64 *count = (a64 *)(area + BATCH_COUNT), *b0 = (a64 *)(area + BATCH_BOTTOM);
    a64 *held = (a64 *)(area + BATCH_REFS);
    if (max > TAKE_BATCH_MAX)
        max = TAKE_BATCH_MAX;
    /* Room on our deque: only we push, thieves only make more (acquire top,
     * as in cl_push), so every push below succeeds and nothing spills. */
    int64_t bottom = atomic_load_explicit((ai64 *)(dq + DQ_BOTTOM), memory_order_relaxed);
    int64_t room = (int64_t)dmask + 1 - (bottom - atomic_load_explicit((ai64 *)(dq + DQ_TOP), memory_order_acquire));
    if (max > room + 1)
        max = room < 0 ? 1 : (Py_ssize_t)room + 1;
    atomic_store_explicit(b0, (uint64_t)bottom, memory_order_relaxed);
    int64_t refs[TAKE_BATCH_MAX];
    Py_ssize_t n = 0;
    while (n < max) {
        uint64_t at;
        int64_t x = mq_pop_begin(q, qmask, s->taker, KP_TAKE_BATCH_POP_CLAIMED, &at);
        if (at == MQ_NONE)
            break;  /* empty (or corrupt: as empty, the queue's own calls report it) */
        /* The ref is in its claimed slot until mq_pop_end: recorded here
         * first, so it is always in one of the two (the supervisor takes
         * a claimed slot's ref only if the area does not have it). */
        atomic_store_explicit(&held[n], (uint64_t)x, memory_order_relaxed);
        refs[n++] = x;
        atomic_store_explicit(count, (uint64_t)n, memory_order_relaxed);
        atomic_signal_fence(memory_order_seq_cst);  /* recorded before released (program order) */
        KILL_POINT(TAKE_BATCH_AFTER_RECORD);
        mq_pop_end(q, qmask, at);
    }
    if (n == 0)
        return Py_BuildValue("(Ln)", (long long)R_EMPTY, (Py_ssize_t)0);
    KILL_POINT(TAKE_BATCH_AFTER_POP);
    if (mark_taken(s, args, nargs, 3, refs[0]) < 0)
        return NULL;  /* a bad offset: a bug in the caller, caught in tests */
    KILL_POINT(TAKE_BATCH_AFTER_MARK);
    for (Py_ssize_t i = n - 1; i >= 1; i--) {
        if (!cl_push(dq, dmask, (uint64_t)refs[i]))
            return PyErr_Format(PyExc_RuntimeError, "deque full after its room was counted (broken invariant)");
        KILL_POINT(TAKE_BATCH_AFTER_PUSH);
    }
    atomic_store_explicit(count, 0, memory_order_relaxed);  /* every ref handed on */
    return Py_BuildValue("(Ln)", (long long)refs[0], n);
}

/* The join word and spawned count of the record at `rec_off`; 0 with an
 * exception if that is not a record of the task table. */
static int
counts_at(Shared *s, PyObject *rec_off, a32 **join, a32 **spawned)
{
    if (need_tasks(s) < 0)
        return 0;
    Py_ssize_t off = PyLong_AsSsize_t(rec_off);
    if (off == -1 && PyErr_Occurred())
        return 0;
    TaskGeometry *g = &s->g;
    if (off < g->tasks || off >= g->tasks + g->capacity * RECORD_SIZE || (off - g->tasks) % RECORD_SIZE) {
        PyErr_Format(PyExc_ValueError, "offset %zd is not a task record", off);
        return 0;
    }
    *join = (a32 *)(s->base + off + R_JOIN);
    *spawned = (a32 *)(s->base + off + R_SPAWNED);
    return 1;
}

/* token_give(rec_off) -> True if every published child has finished.  A
 * task about to suspend gives up its join token: JOIN_GIVEN is added to its
 * join word in the RMW that reads how many children finished, so a
 * supervisor that finds the worker dead reads from the word alone whether
 * the token is gone (was: a flag set before a separate decrement, and a
 * death between the two left a task that was never reaped: issue 12 item
 * 6).  Acq_rel: pairs with the children's counts (their results; our
 * spawned count, for the last one's test).  True: nobody will post us, the
 * caller takes the token back. */
static PyObject *
S_token_give(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(1, "token_give");
    a32 *join, *spawned;
    if (!counts_at(s, args[0], &join, &spawned))
        return NULL;
    uint32_t before = atomic_fetch_add_explicit(join, JOIN_GIVEN, memory_order_acq_rel);
    KILL_POINT(TOKEN_GIVE_AFTER_GIVE);
    /* Relaxed: our own count. */
    return PyBool_FromLong((before & ~JOIN_GIVEN) >= atomic_load_explicit(spawned, memory_order_relaxed));
}

/* token_take(rec_off): a resumed task (every child finished) takes its token
 * back; both counts start again from 0.  Relaxed: no child of ours is
 * outstanding, nobody else writes them now. */
static PyObject *
S_token_take(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(1, "token_take");
    a32 *join, *spawned;
    if (!counts_at(s, args[0], &join, &spawned))
        return NULL;
    atomic_store_explicit(spawned, 0, memory_order_relaxed);  /* first: see queue_child */
    atomic_store_explicit(join, 0, memory_order_relaxed);
    Py_RETURN_NONE;
}

