/*
 * penny._core: the small native core of Penny.
 *
 * Everything here works on a `Shared` object, which holds one Py_buffer on a
 * writable buffer (the scheduler's shared region, or any bytearray/mmap in
 * tests) and addresses it by byte offset.  Python never performs a
 * read-modify-write on a shared word itself: every such operation is one of
 * the functions below.
 *
 * Contents
 *   1. generic atomics: load/store/cas/fetch_add/exchange on 32/64-bit words,
 *      with an explicit C11 memory order chosen by the caller, and fences;
 *   2. futex wait/wake (shared, not FUTEX_PRIVATE: the words are shared
 *      between processes); the GIL is released while waiting;
 *   3. the Chase-Lev work-stealing deque (Le, Pop, Cohen, Zappa Nardelli,
 *      PPoPP 2013), fixed capacity: owner push/pop at the bottom, thieves
 *      steal from the top with a CAS;
 *   4. the bounded MPMC ring of Vyukov (a sequence number per slot);
 *   5. a Treiber stack with a tagged head (ABA-safe), used as the free list
 *      of task records and of arena blocks;
 *   6. the sleeper protocol's "wake one" (see docs/protocols.md);
 *   7. the inline codec for small task arguments and results.
 *
 * Every structure is self-describing (its capacity lives in shared memory
 * next to it), so the functions need only the structure's offset.  Where the
 * structures live is decided by penny/layout.py alone.
 *
 * All shared words are accessed through C11 atomic_*_explicit calls on
 * naturally aligned 32/64-bit words; offsets are checked for bounds and
 * alignment on every call (a few ns; a wrong offset must not scribble).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <time.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef _Atomic uint32_t a32;
typedef _Atomic uint64_t a64;
typedef _Atomic int64_t ai64;

/* Python-visible order numbers; the same values as C11's memory_order. */
enum { ORD_RELAXED = 0, ORD_CONSUME, ORD_ACQUIRE, ORD_RELEASE, ORD_ACQ_REL, ORD_SEQ_CST };

/* Results of a steal or pop that found nothing: refs are > 0. */
#define R_EMPTY 0
#define R_RETRY (-1)

/* Sleeper states of a parking word (docs/protocols.md). */
enum { ST_AWAKE = 0, ST_SLEEPY = 1, ST_SLEEPING = 2, ST_NOTIFIED = 3 };

/* ---- deque header (offsets inside one deque, all 64-byte separated) ---- */
#define DQ_TOP 0        /* int64, written by thieves (CAS) and the owner (CAS) */
#define DQ_BOTTOM 64    /* int64, written by the owner only */
#define DQ_MASK 128     /* uint64, capacity - 1, written once at init */
#define DQ_RING 192     /* uint64 ring[capacity] */

/* ---- MPMC ring header ---- */
#define Q_ENQ 0         /* uint64 enqueue position */
#define Q_DEQ 64        /* uint64 dequeue position */
#define Q_MASK 128      /* uint64 capacity - 1 */
#define Q_SLOTS 192     /* {uint64 seq; uint64 value}[capacity] */

/* Where the task machinery lives, told once by penny/layout.py (set_tasks). */
typedef struct {
    int ready;
    Py_ssize_t tasks, capacity, record, free_head;   /* task table and its free list */
    Py_ssize_t r_state, r_fn, r_flags, r_link, r_inline, inline_size;
    Py_ssize_t r_parent, r_join, r_owner, r_attempts; /* fork-join and retry fields */
    Py_ssize_t injector, completions;                /* MPMC rings */
    Py_ssize_t inbox0, slice_stride;                 /* worker 0's inbox ring; slice size */
    Py_ssize_t sleepers, states, state_stride, nstates;      /* workers' parking words */
    Py_ssize_t coll_sleepers, coll_state;            /* the collector's parking word */
    uint32_t s_queued, s_running, s_done, s_free, f_args_blob, f_consumed, f_result_blob;
} TaskGeometry;

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    char *base;
    Py_ssize_t len;
    int has_view;        /* operations allowed (cleared by release()) */
    int keep_view;       /* released, but leases still point into the view */
    Py_ssize_t leases;   /* live Lease objects on this buffer (GIL-protected) */
    TaskGeometry g;
} Shared;

/* ------------------------------------------------------------------ */
/* helpers                                                             */

static int
get_order(PyObject *o, memory_order *out)
{
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    switch (v) {
    case ORD_RELAXED: *out = memory_order_relaxed; return 0;
    case ORD_CONSUME: *out = memory_order_consume; return 0;
    case ORD_ACQUIRE: *out = memory_order_acquire; return 0;
    case ORD_RELEASE: *out = memory_order_release; return 0;
    case ORD_ACQ_REL: *out = memory_order_acq_rel; return 0;
    case ORD_SEQ_CST: *out = memory_order_seq_cst; return 0;
    }
    PyErr_Format(PyExc_ValueError, "unknown memory order %ld", v);
    return -1;
}

static inline int
check_live(Shared *s)
{
    if (!s->has_view) {
        PyErr_SetString(PyExc_ValueError, "Shared object was released");
        return -1;
    }
    return 0;
}

/* Address of a `size`-byte word at `off`, checked for bounds and alignment. */
static void *
addr(Shared *s, PyObject *offobj, Py_ssize_t size)
{
    if (check_live(s) < 0)
        return NULL;
    Py_ssize_t off = PyLong_AsSsize_t(offobj);
    if (off == -1 && PyErr_Occurred())
        return NULL;
    if (off < 0 || off > s->len - size) {
        PyErr_Format(PyExc_IndexError, "offset %zd out of range for a %zd-byte buffer", off, s->len);
        return NULL;
    }
    if (off % size) {
        PyErr_Format(PyExc_ValueError, "offset %zd is not %zd-byte aligned", off, size);
        return NULL;
    }
    return s->base + off;
}

/* Address of a region [off, off+size) of raw bytes, checked for bounds. */
static char *
span(Shared *s, Py_ssize_t off, Py_ssize_t size)
{
    if (check_live(s) < 0)
        return NULL;
    if (off < 0 || size < 0 || off > s->len - size) {
        PyErr_Format(PyExc_IndexError, "span [%zd, %zd) out of range for a %zd-byte buffer",
                     off, off + size, s->len);
        return NULL;
    }
    return s->base + off;
}

#define NARGS(n, name)                                                       \
    if (nargs < (n)) {                                                       \
        PyErr_Format(PyExc_TypeError, name "() takes at least %d arguments", (n)); \
        return NULL;                                                         \
    }

static int
order_arg(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t i, memory_order *o)
{
    if (nargs <= i) {
        *o = memory_order_seq_cst;
        return 0;
    }
    return get_order(args[i], o);
}

static int
as_u64(PyObject *o, uint64_t *out)
{
    /* Accept ints in [-2**63, 2**64): negative values are two's complement,
     * as in C; anything else raises OverflowError (never silently wraps). */
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "expected an int, got %.100s", Py_TYPE(o)->tp_name);
        return -1;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow == 0) {
        if (v == -1 && PyErr_Occurred())
            return -1;
        *out = (uint64_t)v;
        return 0;
    }
    if (overflow < 0) {
        PyErr_SetString(PyExc_OverflowError, "int below -2**63");
        return -1;
    }
    unsigned long long u = PyLong_AsUnsignedLongLong(o);
    if (u == (unsigned long long)-1 && PyErr_Occurred())
        return -1;  /* OverflowError: >= 2**64 */
    *out = (uint64_t)u;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Shared object                                                       */

static int
Shared_init(Shared *self, PyObject *args, PyObject *kw)
{
    PyObject *obj;
    if (!PyArg_ParseTuple(args, "O:Shared", &obj))
        return -1;
    if (self->has_view) {
        PyBuffer_Release(&self->view);
        self->has_view = 0;
    }
    if (PyObject_GetBuffer(obj, &self->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (((uintptr_t)self->view.buf) % 64) {
        PyBuffer_Release(&self->view);
        PyErr_SetString(PyExc_ValueError, "buffer must be 64-byte aligned (use mmap)");
        return -1;
    }
    self->base = self->view.buf;
    self->len = self->view.len;
    self->has_view = 1;
    return 0;
}

static void
Shared_dealloc(Shared *self)
{
    /* Leases hold a reference, so none is left here. */
    if (self->has_view || self->keep_view)
        PyBuffer_Release(&self->view);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* release() -> True if the buffer was let go now, False if leases (shared
 * arrays still referenced somewhere in this process) keep it until the last
 * of them is collected.  Either way no operation is accepted afterwards. */
static PyObject *
Shared_release(Shared *self, PyObject *unused)
{
    if (self->has_view) {
        self->has_view = 0;
        self->base = NULL;
        self->len = 0;
        if (self->leases > 0) {
            self->keep_view = 1;
            Py_RETURN_FALSE;
        }
        PyBuffer_Release(&self->view);
    }
    if (self->keep_view)
        Py_RETURN_FALSE;
    Py_RETURN_TRUE;
}

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
 * The failure order is derived from the success order (C11 forbids a
 * failure order stronger than success, and release/acq_rel on a load). */
static memory_order
failure_order(memory_order o)
{
    if (o == memory_order_acq_rel)
        return memory_order_acquire;
    if (o == memory_order_release)
        return memory_order_relaxed;
    return o;
}

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

/* ---- 2. futex ----------------------------------------------------------- */

static long
futex(a32 *uaddr, int op, uint32_t val, const struct timespec *ts)
{
    /* Not FUTEX_PRIVATE_FLAG: waiters and wakers are different processes. */
    return syscall(SYS_futex, (uint32_t *)uaddr, op, val, ts, NULL, 0);
}

static int
futex_wake_n(a32 *p, int n)
{
    long r = futex(p, FUTEX_WAKE, (uint32_t)n, NULL);
    return r < 0 ? 0 : (int)r;
}

/* futex_wait(off, expected, timeout=None) -> 0 woken (or spurious),
 * 1 the word was not `expected`, 2 timed out.  Returns early on a signal
 * after running Python's signal handlers (so Ctrl-C raises). */
enum { FW_WOKEN = 0, FW_CHANGED = 1, FW_TIMEOUT = 2 };

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
        if (t < 0)
            t = 0;
        ts.tv_sec = (time_t)t;
        ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
        tsp = &ts;
    }
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
    return PyLong_FromLong(futex_wake_n(p, (int)n));
}

/* ---- 3. Chase-Lev deque ----------------------------------------------- */

static PyObject *
S_deque_init(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(2, "deque_init");
    Py_ssize_t off = PyLong_AsSsize_t(args[0]);
    Py_ssize_t cap = PyLong_AsSsize_t(args[1]);
    if (PyErr_Occurred())
        return NULL;
    if (cap < 2 || (cap & (cap - 1)))
        return PyErr_Format(PyExc_ValueError, "deque capacity must be a power of two >= 2");
    if (off % 64)
        return PyErr_Format(PyExc_ValueError, "deque offset must be 64-byte aligned");
    char *b = span(s, off, DQ_RING + 8 * cap);
    if (!b)
        return NULL;
    memset(b, 0, DQ_RING + 8 * cap);
    atomic_store_explicit((a64 *)(b + DQ_MASK), (uint64_t)(cap - 1), memory_order_relaxed);
    atomic_store_explicit((ai64 *)(b + DQ_TOP), 0, memory_order_relaxed);
    /* Release: a process that reads the deque after acquiring the region's
     * "ready" flag sees the initialised header. */
    atomic_store_explicit((ai64 *)(b + DQ_BOTTOM), 0, memory_order_release);
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
    /* Relaxed: the mask is written once before the region is published. */
    *mask = atomic_load_explicit((a64 *)(b + DQ_MASK), memory_order_relaxed);
    if (!span(s, off, DQ_RING + 8 * (Py_ssize_t)(*mask + 1)))
        return NULL;
    return b;
}

/* Owner only.  Returns 1 if pushed, 0 if the ring is full (caller spills). */
static inline int
cl_push(char *b, uint64_t mask, uint64_t x)
{
    ai64 *top = (ai64 *)(b + DQ_TOP), *bottom = (ai64 *)(b + DQ_BOTTOM);
    a64 *ring = (a64 *)(b + DQ_RING);
    /* Relaxed: only the owner writes bottom. */
    int64_t bt = atomic_load_explicit(bottom, memory_order_relaxed);
    /* Acquire: pairs with the thieves' CAS on top, so the slot they emptied
     * is really free before we overwrite it. */
    int64_t t = atomic_load_explicit(top, memory_order_acquire);
    if (bt - t > (int64_t)mask)
        return 0;
    /* Relaxed element store, published by the release fence below. */
    atomic_store_explicit(&ring[bt & mask], x, memory_order_relaxed);
    /* Release fence: the element is visible before the new bottom. */
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(bottom, bt + 1, memory_order_relaxed);
    return 1;
}

/* Owner only.  Returns the ref, or R_EMPTY. */
static inline int64_t
cl_pop(char *b, uint64_t mask)
{
    ai64 *top = (ai64 *)(b + DQ_TOP), *bottom = (ai64 *)(b + DQ_BOTTOM);
    a64 *ring = (a64 *)(b + DQ_RING);
    int64_t bt = atomic_load_explicit(bottom, memory_order_relaxed) - 1;
    atomic_store_explicit(bottom, bt, memory_order_relaxed);
    /* SeqCst fence: orders our store to bottom before the load of top,
     * against the thieves' fence between their loads of top and bottom
     * (the store-load ordering Chase-Lev depends on). */
    atomic_thread_fence(memory_order_seq_cst);
    int64_t t = atomic_load_explicit(top, memory_order_relaxed);
    int64_t x = R_EMPTY;
    if (t <= bt) {
        x = (int64_t)atomic_load_explicit(&ring[bt & mask], memory_order_relaxed);
        if (t == bt) {
            /* Last element: race the thieves for it.  SeqCst on success,
             * relaxed on failure (we then just restore bottom). */
            if (!atomic_compare_exchange_strong_explicit(top, &t, t + 1, memory_order_seq_cst,
                                                         memory_order_relaxed))
                x = R_EMPTY;
            atomic_store_explicit(bottom, bt + 1, memory_order_relaxed);
        }
    } else {
        atomic_store_explicit(bottom, bt + 1, memory_order_relaxed);
    }
    return x;
}

/* Any process.  Returns the ref, R_EMPTY, or R_RETRY (lost a race). */
static inline int64_t
cl_steal(char *b, uint64_t mask)
{
    ai64 *top = (ai64 *)(b + DQ_TOP), *bottom = (ai64 *)(b + DQ_BOTTOM);
    a64 *ring = (a64 *)(b + DQ_RING);
    /* Acquire: pairs with the CAS of other thieves / the owner on top. */
    int64_t t = atomic_load_explicit(top, memory_order_acquire);
    /* SeqCst fence: pairs with the owner's fence in pop. */
    atomic_thread_fence(memory_order_seq_cst);
    /* Acquire: pairs with the owner's release fence in push, so the element
     * at ring[t] is visible. */
    int64_t bt = atomic_load_explicit(bottom, memory_order_acquire);
    if (t >= bt)
        return R_EMPTY;
    int64_t x = (int64_t)atomic_load_explicit(&ring[t & mask], memory_order_relaxed);
    /* SeqCst: claims the element; failure means another thief or the owner
     * took it first. */
    if (!atomic_compare_exchange_strong_explicit(top, &t, t + 1, memory_order_seq_cst,
                                                 memory_order_relaxed))
        return R_RETRY;
    return x;
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

/* ---- 4. Vyukov bounded MPMC ring ----------------------------------------- */

static PyObject *
S_queue_init(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(2, "queue_init");
    Py_ssize_t off = PyLong_AsSsize_t(args[0]);
    Py_ssize_t cap = PyLong_AsSsize_t(args[1]);
    if (PyErr_Occurred())
        return NULL;
    if (cap < 2 || (cap & (cap - 1)))
        return PyErr_Format(PyExc_ValueError, "queue capacity must be a power of two >= 2");
    if (off % 64)
        return PyErr_Format(PyExc_ValueError, "queue offset must be 64-byte aligned");
    char *b = span(s, off, Q_SLOTS + 16 * cap);
    if (!b)
        return NULL;
    memset(b, 0, Q_SLOTS);
    a64 *slots = (a64 *)(b + Q_SLOTS);
    for (Py_ssize_t i = 0; i < cap; i++) {
        /* Relaxed: published together with the header below. */
        atomic_store_explicit(&slots[2 * i], (uint64_t)i, memory_order_relaxed);
        atomic_store_explicit(&slots[2 * i + 1], 0, memory_order_relaxed);
    }
    atomic_store_explicit((a64 *)(b + Q_MASK), (uint64_t)(cap - 1), memory_order_relaxed);
    atomic_store_explicit((a64 *)(b + Q_DEQ), 0, memory_order_relaxed);
    atomic_store_explicit((a64 *)(b + Q_ENQ), 0, memory_order_release);
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
    *mask = atomic_load_explicit((a64 *)(b + Q_MASK), memory_order_relaxed);
    if (!span(s, off, Q_SLOTS + 16 * (Py_ssize_t)(*mask + 1)))
        return NULL;
    return b;
}

/* Returns 1 if pushed, 0 if full. */
static inline int
mq_push(char *b, uint64_t mask, uint64_t x)
{
    a64 *enq = (a64 *)(b + Q_ENQ);
    a64 *slots = (a64 *)(b + Q_SLOTS);
    /* Relaxed: the position is only a guess, validated by the slot's seq. */
    uint64_t pos = atomic_load_explicit(enq, memory_order_relaxed);
    for (;;) {
        a64 *slot = &slots[2 * (pos & mask)];
        /* Acquire: pairs with the consumer's release of seq, so the slot's
         * previous value has been read before we overwrite it. */
        uint64_t seq = atomic_load_explicit(slot, memory_order_acquire);
        int64_t dif = (int64_t)(seq - pos);
        if (dif == 0) {
            /* Relaxed CAS: it only claims the position; the data is
             * published by the release store of seq below. */
            if (atomic_compare_exchange_weak_explicit(enq, &pos, pos + 1, memory_order_relaxed,
                                                      memory_order_relaxed)) {
                atomic_store_explicit(slot + 1, x, memory_order_relaxed);
                /* Release: publishes the value to the consumer's acquire. */
                atomic_store_explicit(slot, pos + 1, memory_order_release);
                return 1;
            }
        } else if (dif < 0) {
            return 0;
        } else {
            pos = atomic_load_explicit(enq, memory_order_relaxed);
        }
    }
}

/* Returns the value, or R_EMPTY. */
static inline int64_t
mq_pop(char *b, uint64_t mask)
{
    a64 *deq = (a64 *)(b + Q_DEQ);
    a64 *slots = (a64 *)(b + Q_SLOTS);
    uint64_t pos = atomic_load_explicit(deq, memory_order_relaxed);
    for (;;) {
        a64 *slot = &slots[2 * (pos & mask)];
        /* Acquire: pairs with the producer's release of seq (value visible). */
        uint64_t seq = atomic_load_explicit(slot, memory_order_acquire);
        int64_t dif = (int64_t)(seq - (pos + 1));
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(deq, &pos, pos + 1, memory_order_relaxed,
                                                      memory_order_relaxed)) {
                uint64_t x = atomic_load_explicit(slot + 1, memory_order_relaxed);
                /* Release: the slot is free for the producer one lap later. */
                atomic_store_explicit(slot, pos + mask + 1, memory_order_release);
                return (int64_t)x;
            }
        } else if (dif < 0) {
            return R_EMPTY;
        } else {
            pos = atomic_load_explicit(deq, memory_order_relaxed);
        }
    }
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
    return PyBool_FromLong(mq_push(b, mask, x));
}

static PyObject *
S_queue_pop(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(1, "queue_pop");
    uint64_t mask;
    char *b = queue_at(s, args[0], &mask);
    if (!b)
        return NULL;
    return PyLong_FromLongLong(mq_pop(b, mask));
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
        int64_t x = mq_pop(b, mask);
        if (x == R_EMPTY)
            break;
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

/* take_batch(queue, max, deque, current_off) -> (first ref or EMPTY, count).
 * A worker's batch from the global queue, in one call: pop up to `max` refs
 * (at most 64), mark the first as taken (see mark_taken) and push the others
 * on the worker's own deque, newest first so the oldest is popped next
 * (spilling back to the queue if the deque is full).  No ref is ever held
 * only by a Python frame. */
static PyObject *
S_take_batch(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(4, "take_batch");
    uint64_t qmask, dmask;
    char *q = queue_at(s, args[0], &qmask);
    char *dq = q ? deque_at(s, args[2], &dmask) : NULL;
    Py_ssize_t max = PyLong_AsSsize_t(args[1]);
    if (!q || !dq || (max == -1 && PyErr_Occurred()))
        return NULL;
    int64_t refs[64];
    if (max > 64)
        max = 64;
    Py_ssize_t n = 0;
    while (n < max) {
        int64_t x = mq_pop(q, qmask);
        if (x == R_EMPTY)
            break;
        refs[n++] = x;
    }
    if (n == 0)
        return Py_BuildValue("(Ln)", (long long)R_EMPTY, (Py_ssize_t)0);
    if (mark_taken(s, args, nargs, 3, refs[0]) < 0)
        return NULL;  /* a bad offset: a bug in the caller, caught in tests */
    for (Py_ssize_t i = n - 1; i >= 1; i--)
        if (!cl_push(dq, dmask, (uint64_t)refs[i]) && !mq_push(q, qmask, (uint64_t)refs[i]))
            return PyErr_Format(PyExc_RuntimeError, "global queue full (broken invariant)");
    return Py_BuildValue("(Ln)", (long long)refs[0], n);
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

/* ---- 5. Treiber stack with tagged head ----------------------------------
 * head (64-bit) = tag << 32 | (index + 1); 0 = empty.  Nodes are
 * `stride`-byte records from `base`; each has a 64-bit link at `link`.
 * The tag changes on every successful pop and push, so a head that was
 * popped and pushed back between our load and our CAS (ABA) fails the CAS.
 * A stale link read from a node that another process just popped is
 * harmless: the CAS then fails and we retry. */

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
    a64 *link = (a64 *)(st.base + idx * st.stride + st.link);
    /* Relaxed: validated by the CAS. */
    uint64_t h = atomic_load_explicit(st.head, memory_order_relaxed);
    for (;;) {
        /* Relaxed link store, published by the release CAS. */
        atomic_store_explicit(link, h & 0xffffffffu, memory_order_relaxed);
        uint64_t nh = ((((h >> 32) + 1) & 0xffffffffu) << 32) | (uint64_t)(idx + 1);
        /* Release: the node's contents (and everything the pusher wrote to
         * the record before freeing it) happen-before the next pop. */
        if (atomic_compare_exchange_weak_explicit(st.head, &h, nh, memory_order_release,
                                                  memory_order_relaxed))
            Py_RETURN_NONE;
    }
}

/* stack_pop(head, base, stride, link, count) -> index or -1 when empty */
static PyObject *
S_stack_pop(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(5, "stack_pop");
    Stack st;
    if (stack_args(s, args, &st) < 0)
        return NULL;
    /* Acquire: pairs with the release CAS of the push that put it there. */
    uint64_t h = atomic_load_explicit(st.head, memory_order_acquire);
    for (;;) {
        uint64_t top = h & 0xffffffffu;
        if (top == 0)
            return PyLong_FromLong(-1);
        if (top > (uint64_t)st.count)
            return PyErr_Format(PyExc_RuntimeError, "corrupt free list head %llu", (unsigned long long)h);
        a64 *link = (a64 *)(st.base + (top - 1) * st.stride + st.link);
        uint64_t next = atomic_load_explicit(link, memory_order_relaxed) & 0xffffffffu;
        uint64_t nh = ((((h >> 32) + 1) & 0xffffffffu) << 32) | next;
        /* Acquire on success: we own the node and see its last owner's
         * writes.  Acquire on failure too: the reloaded head's link is
         * read next and must be the one its pusher published. */
        if (atomic_compare_exchange_weak_explicit(st.head, &h, nh, memory_order_acquire,
                                                  memory_order_acquire))
            return PyLong_FromSsize_t((Py_ssize_t)top - 1);
    }
}

/* ---- 6. waking a sleeper -------------------------------------------------
 * notify_word: move one parking word from SLEEPY or SLEEPING to NOTIFIED,
 * waking its futex if it was SLEEPING.  A failed CAS reloads the word, and we
 * retry while it still reads SLEEPY or SLEEPING: the sleeper may have moved
 * SLEEPY -> SLEEPING between our load and our CAS, and giving up then would
 * lose the wake-up.  Returns 1 if we notified it. */
static int
notify_word(a32 *st)
{
    /* Acquire: pairs with the sleeper's SeqCst store of SLEEPY. */
    uint32_t v = atomic_load_explicit(st, memory_order_acquire);
    while (v == ST_SLEEPING || v == ST_SLEEPY) {
        /* AcqRel: our publication happens-before the sleeper's wake-up. */
        if (atomic_compare_exchange_weak_explicit(st, &v, ST_NOTIFIED, memory_order_acq_rel,
                                                  memory_order_acquire)) {
            if (v == ST_SLEEPING)
                futex_wake_n(st, 1);
            return 1;
        }
    }
    return 0;
}

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
    if (count <= 0 || stride % 4 || !span(s, states, stride * (count - 1) + 4) || states % 4)
        return PyErr_Format(PyExc_ValueError, "bad sleeper table geometry");
    /* SeqCst fence: orders the publication of the work (before this call)
     * before the load of the sleeper count, against the sleeper's SeqCst
     * increment before it re-checks for work.  Either it sees our work or
     * we see it counted (docs/protocols.md, "no lost wake-up"). */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(sleepers, memory_order_relaxed) == 0)
        return PyLong_FromLong(-1);
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t w = (start + i) % count;
        if (w < 0)
            w += count;
        if (notify_word((a32 *)(s->base + states + w * stride)))
            return PyLong_FromSsize_t(w);
    }
    return PyLong_FromLong(-1);
}

/* ---- 7. inline codec -------------------------------------------------------
 * A tuple of small values encoded in a record's inline area:
 *   u8 count, then per item: u8 tag, payload.
 * Tags: None, True, False, int64 (8 bytes), float64 (8), str (u16 len +
 * UTF-8), bytes (u16 len + data).  Anything else, or anything that does not
 * fit, makes pack_inline return -1 and the caller pickles instead. */
enum { T_NONE = 1, T_TRUE, T_FALSE, T_INT, T_FLOAT, T_STR, T_BYTES };

static Py_ssize_t
pack_one(PyObject *o, char *p, char *end)
{
    PyTypeObject *t = Py_TYPE(o);
    if (o == Py_None) {
        if (p + 1 > end) return -1;
        *p = T_NONE;
        return 1;
    }
    if (t == &PyBool_Type) {
        if (p + 1 > end) return -1;
        *p = o == Py_True ? T_TRUE : T_FALSE;
        return 1;
    }
    if (t == &PyLong_Type) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (overflow || (v == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return -1;
        }
        if (p + 9 > end) return -1;
        *p = T_INT;
        memcpy(p + 1, &v, 8);
        return 9;
    }
    if (t == &PyFloat_Type) {
        double v = PyFloat_AS_DOUBLE(o);
        if (p + 9 > end) return -1;
        *p = T_FLOAT;
        memcpy(p + 1, &v, 8);
        return 9;
    }
    if (t == &PyUnicode_Type) {
        Py_ssize_t n;
        const char *u = PyUnicode_AsUTF8AndSize(o, &n);
        if (!u) {  /* lone surrogates: let pickle handle them */
            PyErr_Clear();
            return -1;
        }
        if (n > 0xffff || p + 3 + n > end) return -1;
        uint16_t n16 = (uint16_t)n;
        *p = T_STR;
        memcpy(p + 1, &n16, 2);
        memcpy(p + 3, u, n);
        return 3 + n;
    }
    if (t == &PyBytes_Type) {
        Py_ssize_t n = PyBytes_GET_SIZE(o);
        if (n > 0xffff || p + 3 + n > end) return -1;
        uint16_t n16 = (uint16_t)n;
        *p = T_BYTES;
        memcpy(p + 1, &n16, 2);
        memcpy(p + 3, PyBytes_AS_STRING(o), n);
        return 3 + n;
    }
    return -1;
}

/* pack_inline(off, capacity, seq) -> bytes written, or -1 (not inlinable).
 * `seq` is a tuple or list.  Writes nothing visible on failure beyond the
 * scratch area itself.  Plain (non-atomic) memory: the record is published
 * afterwards by a release operation (the queue push). */
static PyObject *
S_pack_inline(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(3, "pack_inline");
    Py_ssize_t off = PyLong_AsSsize_t(args[0]);
    Py_ssize_t cap = PyLong_AsSsize_t(args[1]);
    if (PyErr_Occurred())
        return NULL;
    char *p = span(s, off, cap);
    if (!p)
        return NULL;
    PyObject *seq = args[2];
    Py_ssize_t n;
    PyObject **items;
    if (PyTuple_CheckExact(seq)) {
        n = PyTuple_GET_SIZE(seq);
        items = &PyTuple_GET_ITEM(seq, 0);
    } else if (PyList_CheckExact(seq)) {
        n = PyList_GET_SIZE(seq);
        items = &PyList_GET_ITEM(seq, 0);
    } else {
        return PyLong_FromLong(-1);
    }
    if (n > 255 || cap < 1)
        return PyLong_FromLong(-1);
    char *end = p + cap, *q = p + 1;
    *p = (char)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t w = pack_one(items[i], q, end);
        if (w < 0)
            return PyLong_FromLong(-1);
        q += w;
    }
    return PyLong_FromSsize_t(q - p);
}

/* unpack_inline(off, capacity) -> tuple */
static PyObject *
S_unpack_inline(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(2, "unpack_inline");
    Py_ssize_t off = PyLong_AsSsize_t(args[0]);
    Py_ssize_t cap = PyLong_AsSsize_t(args[1]);
    if (PyErr_Occurred())
        return NULL;
    const char *p = span(s, off, cap);
    if (!p)
        return NULL;
    const char *end = p + cap;
    Py_ssize_t n = (unsigned char)*p++;
    PyObject *tup = PyTuple_New(n);
    if (!tup)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = NULL;
        if (p >= end)
            goto corrupt;
        char tag = *p++;
        switch (tag) {
        case T_NONE: o = Py_NewRef(Py_None); break;
        case T_TRUE: o = Py_NewRef(Py_True); break;
        case T_FALSE: o = Py_NewRef(Py_False); break;
        case T_INT: {
            long long v;
            if (p + 8 > end) goto corrupt;
            memcpy(&v, p, 8);
            p += 8;
            o = PyLong_FromLongLong(v);
            break;
        }
        case T_FLOAT: {
            double v;
            if (p + 8 > end) goto corrupt;
            memcpy(&v, p, 8);
            p += 8;
            o = PyFloat_FromDouble(v);
            break;
        }
        case T_STR:
        case T_BYTES: {
            uint16_t len;
            if (p + 2 > end) goto corrupt;
            memcpy(&len, p, 2);
            p += 2;
            if (p + len > end) goto corrupt;
            o = tag == T_STR ? PyUnicode_DecodeUTF8(p, len, "strict") : PyBytes_FromStringAndSize(p, len);
            p += len;
            break;
        }
        default:
            goto corrupt;
        }
        if (!o) {
            Py_DECREF(tup);
            return NULL;
        }
        PyTuple_SET_ITEM(tup, i, o);
    }
    return tup;
corrupt:
    Py_DECREF(tup);
    return PyErr_Format(PyExc_RuntimeError, "corrupt inline record at offset %zd", off);
}


/* ---- 8. task fast paths ----------------------------------------------------
 * The common case of a task's life in three calls, one per role, so that
 * Python pays one C call where it would pay ten.  Anything uncommon (pickled
 * arguments or results, exceptions, cancellation) returns to Python, which
 * handles it with the generic operations above.  Orderings are the same as
 * the Python slow paths document (tasks.py): the status word is stored with
 * release after the record's contents; readers load it with acquire.
 */

static PyObject *
S_set_tasks(Shared *s, PyObject *args)
{
    TaskGeometry g;
    memset(&g, 0, sizeof g);
    if (!PyArg_ParseTuple(args, "nnnnnnnnnnnnnnnnnnnnnnnnIIIIIII:set_tasks", &g.tasks, &g.capacity, &g.record,
                          &g.free_head, &g.r_state, &g.r_fn, &g.r_flags, &g.r_link, &g.r_inline,
                          &g.inline_size, &g.r_parent, &g.r_join, &g.r_owner, &g.r_attempts, &g.inbox0, &g.slice_stride,
                          &g.injector, &g.completions, &g.sleepers, &g.states,
                          &g.state_stride, &g.nstates, &g.coll_sleepers, &g.coll_state, &g.s_queued,
                          &g.s_running, &g.s_done, &g.s_free, &g.f_args_blob, &g.f_consumed,
                          &g.f_result_blob))
        return NULL;
    if (!span(s, g.tasks, g.capacity * g.record) || !span(s, g.free_head, 8) ||
        !span(s, g.states, g.state_stride * (g.nstates - 1) + 4) || !span(s, g.coll_state, 4) ||
        !span(s, g.sleepers, 4) || !span(s, g.coll_sleepers, 4) ||
        !span(s, g.injector, Q_SLOTS + 16 * g.capacity) || !span(s, g.completions, Q_SLOTS + 16 * g.capacity) ||
        !span(s, g.inbox0 + (g.nstates - 1) * g.slice_stride, Q_SLOTS + 16 * g.capacity))
        return NULL;
    if (g.record % 64 || g.r_state % 8 || g.r_link % 8 || g.r_fn % 4 || g.r_flags % 4 ||
        g.r_parent % 8 || g.r_join % 4 || g.r_owner % 4 || g.r_attempts % 4 || g.inbox0 % 64 || g.slice_stride % 64 ||
        g.r_inline + g.inline_size > g.record || g.nstates < 1) {
        PyErr_SetString(PyExc_ValueError, "bad task geometry");
        return NULL;
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

/* Same wake-one as S_notify, from C. */
static void
wake_one(Shared *s, Py_ssize_t sleepers_off, Py_ssize_t states, Py_ssize_t stride, Py_ssize_t count,
         Py_ssize_t start)
{
    /* SeqCst fence: see S_notify. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit((a32 *)(s->base + sleepers_off), memory_order_relaxed) == 0)
        return;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t w = (start + i) % count;
        if (notify_word((a32 *)(s->base + states + w * stride)))
            return;
    }
}

static inline Py_ssize_t
tagged_pop(a64 *head, char *base, Py_ssize_t stride, Py_ssize_t link, Py_ssize_t count)
{
    /* As S_stack_pop: acquire on load and on both CAS outcomes. */
    uint64_t h = atomic_load_explicit(head, memory_order_acquire);
    for (;;) {
        uint64_t top = h & 0xffffffffu;
        if (top == 0 || top > (uint64_t)count)
            return -1;
        a64 *l = (a64 *)(base + (top - 1) * stride + link);
        uint64_t next = atomic_load_explicit(l, memory_order_relaxed) & 0xffffffffu;
        uint64_t nh = ((((h >> 32) + 1) & 0xffffffffu) << 32) | next;
        if (atomic_compare_exchange_weak_explicit(head, &h, nh, memory_order_acquire, memory_order_acquire))
            return (Py_ssize_t)top - 1;
    }
}

static inline void
tagged_push(a64 *head, char *base, Py_ssize_t stride, Py_ssize_t link, Py_ssize_t idx)
{
    /* As S_stack_push: release CAS publishes the node. */
    a64 *l = (a64 *)(base + idx * stride + link);
    uint64_t h = atomic_load_explicit(head, memory_order_relaxed);
    for (;;) {
        atomic_store_explicit(l, h & 0xffffffffu, memory_order_relaxed);
        uint64_t nh = ((((h >> 32) + 1) & 0xffffffffu) << 32) | (uint64_t)(idx + 1);
        if (atomic_compare_exchange_weak_explicit(head, &h, nh, memory_order_release, memory_order_relaxed))
            return;
    }
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
    a64 *head = (a64 *)(s->base + g->free_head);
    char *tbase = s->base + g->tasks;
    Py_ssize_t idx = tagged_pop(head, tbase, g->record, g->r_link, g->capacity);
    if (idx < 0)
        return TR_FULL;
    char *p = tbase + idx * g->record + g->r_inline, *end = p + g->inline_size, *q = p + 1;
    *p = (char)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t w = pack_one(items[i], q, end);
        if (w < 0) {
            tagged_push(head, tbase, g->record, g->r_link, idx);
            return TR_NOT_INLINE;
        }
        q += w;
    }
    return idx;
}

/* inject(fid, args, future, futures) -> ref; 0 when no record is free; -1 when
 * the arguments are not inlinable (nothing was taken).  On success the future
 * is in `futures` under the ref *before* the ref is visible to any worker. */
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
    a64 *head = (a64 *)(s->base + g->free_head);
    char *tbase = s->base + g->tasks;
    Py_ssize_t idx = take_record(s, args[1]);
    if (idx < 0)
        return PyLong_FromSsize_t(idx == TR_FULL ? 0 : -1);
    char *rec = tbase + idx * g->record;
    a64 *state = (a64 *)(rec + g->r_state);
    /* Relaxed: we own the record (popped with acquire). */
    uint64_t gen = atomic_load_explicit(state, memory_order_relaxed) & GEN_MASK;
    uint64_t ref = (gen << 32) | (uint64_t)(idx + 1);
    PyObject *key = PyLong_FromUnsignedLongLong(ref);
    if (!key || PyDict_SetItem(args[3], key, args[2]) < 0 ||
        PyObject_SetAttrString(args[2], "_ref", key) < 0) {
        Py_XDECREF(key);
        tagged_push(head, tbase, g->record, g->r_link, idx);
        return NULL;
    }
    /* Relaxed field stores, published by the release store of the state.
     * Every field a reader uses is written: the record was some other task's. */
    atomic_store_explicit((a32 *)(rec + g->r_fn), (uint32_t)fid, memory_order_relaxed);
    atomic_store_explicit((a32 *)(rec + g->r_flags), 0, memory_order_relaxed);
    atomic_store_explicit((a64 *)(rec + g->r_parent), 0, memory_order_relaxed);
    atomic_store_explicit((a32 *)(rec + g->r_attempts), 0, memory_order_relaxed);
    atomic_store_explicit(state, ((uint64_t)g->s_queued << 32) | gen, memory_order_release);
    /* The ring's release store of seq publishes the record to the popper. */
    if (!mq_push(s->base + g->injector, (uint64_t)(g->capacity - 1), ref)) {
        Py_DECREF(key);
        return PyErr_Format(PyExc_RuntimeError, "global queue full (broken invariant)");
    }
    wake_one(s, g->sleepers, g->states, g->state_stride, g->nstates, 0);
    return key;
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
    return s->base + g->tasks + idx * g->record;
}

static int route(Shared *s, uint64_t ref, uint64_t parent);

/* The last step of finishing a task whose outcome is written: read the parent
 * (relaxed: written by the spawner before the release that published us; read
 * before the status store, after which the record may be freed), store the
 * status (release: the outcome is visible to whoever acquires it), clear
 * the worker's current word, route the task. */
static int
settle_record(Shared *s, char *rec, uint64_t ref, uint64_t status, a64 *cur)
{
    TaskGeometry *g = &s->g;
    uint64_t parent = atomic_load_explicit((a64 *)(rec + g->r_parent), memory_order_relaxed);
    atomic_store_explicit((a64 *)(rec + g->r_state), (status << 32) | (ref >> 32), memory_order_release);
    atomic_store_explicit(cur, 0, memory_order_relaxed);
    return route(s, ref, parent);
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
    TaskGeometry *g = &s->g;
    uint64_t ref, wid;
    a64 *cur = addr(s, args[1], 8);
    if (!cur || as_u64(args[0], &ref) < 0 || as_u64(args[2], &wid) < 0)
        return NULL;
    char *rec = task_record(s, ref);
    if (!rec)
        return NULL;
    uint64_t gen = ref >> 32;
    uint64_t exp = ((uint64_t)g->s_queued << 32) | gen;
    if (!atomic_compare_exchange_strong_explicit((a64 *)(rec + g->r_state), &exp,
                                                 ((uint64_t)g->s_running << 32) | gen,
                                                 memory_order_acq_rel, memory_order_acquire))
        Py_RETURN_NONE;
    /* Relaxed: read only by the supervisor after this process has died. */
    atomic_store_explicit(cur, ref, memory_order_relaxed);
    /* Relaxed: no child exists yet; children see these through the release
     * push of their own spawn.  join starts at 1: the running task's token
     * (see fibers.py, "suspend"). */
    atomic_store_explicit((a32 *)(rec + g->r_owner), (uint32_t)wid, memory_order_relaxed);
    atomic_store_explicit((a32 *)(rec + g->r_join), 1, memory_order_relaxed);
    uint32_t fid = atomic_load_explicit((a32 *)(rec + g->r_fn), memory_order_relaxed);
    uint32_t flags = atomic_load_explicit((a32 *)(rec + g->r_flags), memory_order_relaxed);
    PyObject *a;
    if (flags & g->f_args_blob) {
        a = Py_NewRef(Py_None);
    } else {
        PyObject *off = PyLong_FromSsize_t(rec + g->r_inline - s->base);
        PyObject *cap = PyLong_FromSsize_t(g->inline_size);
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
 * gives up its count on the parent: AcqRel, so the parent that reads the
 * count as settled sees our result; the child that takes the count to zero
 * (the parent has released its own token: it is suspended) posts the
 * parent's ref to its owner's inbox and wakes the owner. */
static int
route(Shared *s, uint64_t ref, uint64_t parent)
{
    TaskGeometry *g = &s->g;
    uint64_t mask = (uint64_t)(g->capacity - 1);
    if (parent == 0) {
        if (!mq_push(s->base + g->completions, mask, ref)) {
            PyErr_SetString(PyExc_RuntimeError, "completion queue full (broken invariant)");
            return -1;
        }
        wake_one(s, g->coll_sleepers, g->coll_state, 4, 1, 0);
        return 0;
    }
    Py_ssize_t pidx = (Py_ssize_t)(parent & 0xffffffffu) - 1;
    if (pidx < 0 || pidx >= g->capacity) {
        PyErr_Format(PyExc_RuntimeError, "corrupt parent ref %llu", (unsigned long long)parent);
        return -1;
    }
    char *prec = s->base + g->tasks + pidx * g->record;
    if (atomic_fetch_sub_explicit((a32 *)(prec + g->r_join), 1, memory_order_acq_rel) == 1) {
        /* Relaxed: the owner was stored before the parent's token release,
         * which our acq_rel RMW synchronised with. */
        uint32_t owner = atomic_load_explicit((a32 *)(prec + g->r_owner), memory_order_relaxed);
        if ((Py_ssize_t)owner >= g->nstates) {
            PyErr_Format(PyExc_RuntimeError, "corrupt owner %u", owner);
            return -1;
        }
        if (!mq_push(s->base + g->inbox0 + owner * g->slice_stride, mask, parent)) {
            PyErr_SetString(PyExc_RuntimeError, "inbox full (broken invariant)");
            return -1;
        }
        wake_one(s, g->sleepers, g->states + owner * g->state_stride, g->state_stride, 1, 0);
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
    TaskGeometry *g = &s->g;
    uint64_t ref;
    a64 *cur = addr(s, args[2], 8);
    if (!cur || as_u64(args[0], &ref) < 0)
        return NULL;
    char *rec = task_record(s, ref);
    if (!rec)
        return NULL;
    a32 *flags = (a32 *)(rec + g->r_flags);
    uint32_t f = atomic_load_explicit(flags, memory_order_relaxed);
    if (f & g->f_args_blob)
        Py_RETURN_FALSE;  /* its argument blob must be freed first: the Python path */
    char *p = rec + g->r_inline;
    *p = 1;
    if (pack_one(args[1], p + 1, p + g->inline_size) < 0)
        Py_RETURN_FALSE;
    atomic_store_explicit(flags, (f | g->f_consumed) & ~g->f_result_blob, memory_order_relaxed);
    if (settle_record(s, rec, ref, g->s_done, cur) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

/* spawn(fid, args, parent, deque_off) -> ref; 0 when no record is free; -1
 * when the arguments are not inlinable (nothing was taken).  Worker: a child
 * record with inline arguments, counted on the parent's join, pushed on the
 * worker's own deque (spilled to the global queue when full); one sleeper
 * is woken to steal it. */
static PyObject *
S_spawn(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(4, "spawn");
    if (need_tasks(s) < 0)
        return NULL;
    TaskGeometry *g = &s->g;
    uint64_t fid, parent, dmask;
    if (as_u64(args[0], &fid) < 0 || as_u64(args[2], &parent) < 0)
        return NULL;
    char *dq = deque_at(s, args[3], &dmask);
    if (!dq)
        return NULL;
    Py_ssize_t pidx = (Py_ssize_t)(parent & 0xffffffffu) - 1;
    if (pidx < 0 || pidx >= g->capacity)
        return PyErr_Format(PyExc_ValueError, "bad parent ref %llu", (unsigned long long)parent);
    char *tbase = s->base + g->tasks;
    Py_ssize_t idx = take_record(s, args[1]);
    if (idx < 0)
        return PyLong_FromSsize_t(idx == TR_FULL ? 0 : -1);
    char *rec = tbase + idx * g->record;
    a64 *state = (a64 *)(rec + g->r_state);
    uint64_t gen = atomic_load_explicit(state, memory_order_relaxed) & GEN_MASK;
    uint64_t ref = (gen << 32) | (uint64_t)(idx + 1);
    /* Relaxed: published by the release store of the state. */
    atomic_store_explicit((a32 *)(rec + g->r_fn), (uint32_t)fid, memory_order_relaxed);
    atomic_store_explicit((a32 *)(rec + g->r_flags), 0, memory_order_relaxed);
    atomic_store_explicit((a64 *)(rec + g->r_parent), parent, memory_order_relaxed);
    atomic_store_explicit((a32 *)(rec + g->r_attempts), 0, memory_order_relaxed);
    /* Relaxed RMW: the count is only read as settled through the acq_rel
     * decrements of the children, which this increment happens-before (it
     * precedes the release push that lets the child run). */
    atomic_fetch_add_explicit((a32 *)(tbase + pidx * g->record + g->r_join), 1, memory_order_relaxed);
    atomic_store_explicit(state, ((uint64_t)g->s_queued << 32) | gen, memory_order_release);
    if (!cl_push(dq, dmask, ref) && !mq_push(s->base + g->injector, (uint64_t)(g->capacity - 1), ref))
        return PyErr_Format(PyExc_RuntimeError, "global queue full (broken invariant)");
    wake_one(s, g->sleepers, g->states, g->state_stride, g->nstates, 0);
    return PyLong_FromUnsignedLongLong(ref);
}

/* pop_child(deque_off, parent) -> ref or 0.  Owner: pop the bottom of its
 * deque if it is a child of `parent`; otherwise push it back and return 0. */
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
    int64_t ref = cl_pop(dq, dmask);
    if (ref <= 0)
        return PyLong_FromLong(0);
    Py_ssize_t idx = (Py_ssize_t)(ref & 0xffffffff) - 1;
    if (idx < 0 || idx >= g->capacity)
        return PyErr_Format(PyExc_RuntimeError, "corrupt ref %lld in deque", (long long)ref);
    /* Relaxed: the record was published to us by our own push. */
    uint64_t p = atomic_load_explicit((a64 *)(s->base + g->tasks + idx * g->record + g->r_parent),
                                      memory_order_relaxed);
    if (p == parent) {
        if (mark_taken(s, args, nargs, 2, ref) < 0)
            return NULL;
        return PyLong_FromLongLong(ref);
    }
    /* Not ours to run here: put it back where it was (we are the owner and
     * just emptied that slot, so the push cannot fail). */
    cl_push(dq, dmask, (uint64_t)ref);
    return PyLong_FromLong(0);
}

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
    a64 *head = (a64 *)(s->base + g->free_head);
    char *tbase = s->base + g->tasks;
    for (Py_ssize_t i = 0; i < max; i++) {
        int64_t ref = mq_pop(ring, mask);
        if (ref == R_EMPTY)
            break;
        Py_ssize_t idx = (Py_ssize_t)(ref & 0xffffffff) - 1;
        char *rec = tbase + idx * g->record;
        a64 *state = (a64 *)(rec + g->r_state);
        /* Acquire: pairs with the worker's release of the status. */
        uint64_t word = atomic_load_explicit(state, memory_order_acquire);
        uint32_t flags = atomic_load_explicit((a32 *)(rec + g->r_flags), memory_order_relaxed);
        PyObject *key = PyLong_FromLongLong(ref);
        if (!key)
            goto fail;
        if ((word >> 32) != g->s_done || (word & GEN_MASK) != ((uint64_t)ref >> 32) ||
            (flags & (g->f_result_blob | g->f_args_blob))) {
            int rc = PyList_Append(slow, key);
            Py_DECREF(key);
            if (rc < 0)
                goto fail;
            continue;
        }
        PyObject *off = PyLong_FromSsize_t(rec + g->r_inline - s->base);
        PyObject *cap = PyLong_FromSsize_t(g->inline_size);
        PyObject *argv[2] = {off, cap};
        PyObject *tup = (off && cap) ? S_unpack_inline(s, argv, 2) : NULL;
        Py_XDECREF(off);
        Py_XDECREF(cap);
        /* Free the record: the next generation, then the release CAS of the
         * free list publishes it. */
        atomic_store_explicit(state, ((uint64_t)g->s_free << 32) | ((((uint64_t)ref >> 32) + 1) & GEN_MASK),
                              memory_order_relaxed);
        tagged_push(head, tbase, g->record, g->r_link, idx);
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
    atomic_store_explicit((a64 *)(tbase + idx * g->record + g->r_state),
                          ((uint64_t)g->s_free << 32) | (((ref >> 32) + 1) & GEN_MASK), memory_order_relaxed);
    tagged_push((a64 *)(s->base + g->free_head), tbase, g->record, g->r_link, idx);
    Py_RETURN_NONE;
}

/* ---- 9. fork-join fast paths ---------------------------------------------------
 * `penny.spawn` and `penny.sync` are these two C functions.  Inside a task
 * on a worker, a spawn makes a private Handle (no record, no atomic but one
 * relaxed load of the sleeper count) and a sync of the newest private handle
 * calls its function right here: the unstolen spawn + sync costs two C calls
 * and the call itself.  Everything else (publishing to the shared deque,
 * waiting, suspending; spawn outside tasks) is Python code in fibers.py,
 * reached through the callbacks that `bind_fork` registers.
 */
#include <structmember.h>

enum { H_PRIVATE = 0, H_PUBLISHED = 1, H_DONE = 2 };

static PyTypeObject SharedType;

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
    return PyUnicode_FromFormat("<penny.Handle %s ref=%#llx>", names[h->state % 3], h->ref);
}

static PyMemberDef Handle_members[] = {
    {"state", T_INT, offsetof(HandleObject, state), 0, "0 private, 1 published, 2 done"},
    {"failed", T_INT, offsetof(HandleObject, failed), 0, "the child raised (value is the exception)"},
    {"observed", T_INT, offsetof(HandleObject, observed), 0, "its outcome was synced"},
    {"fid", T_UINT, offsetof(HandleObject, fid), 0, "function id"},
    {"parent", T_ULONGLONG, offsetof(HandleObject, parent), 0, "ref of the spawning task"},
    {"ref", T_ULONGLONG, offsetof(HandleObject, ref), 0, "record ref once published"},
    {"fn", T_OBJECT, offsetof(HandleObject, fn), 0, NULL},
    {"args", T_OBJECT, offsetof(HandleObject, args), 0, NULL},
    {"kwargs", T_OBJECT, offsetof(HandleObject, kwargs), 0, NULL},
    {"value", T_OBJECT, offsetof(HandleObject, value), 0, "result or exception once done"},
    {NULL},
};

static PyMethodDef Handle_methods[] = {
    {"result", (PyCFunction)Handle_result, METH_NOARGS, "The child's result (penny.sync(handle))."},
    {"done", (PyCFunction)Handle_done, METH_NOARGS, "Whether the child's outcome is in the handle."},
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

static ForkCore *the_fork = NULL;       /* this process's, set by bind_fork */
static PyObject *spawn_fallback = NULL; /* fibers._spawn_slow(fn, args, kwargs) */
static PyObject *sync_fallback = NULL;  /* fibers._sync_slow(handle_or_None) */

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
    if (the_fork == f)
        the_fork = NULL;
    ForkCore_clear(f);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

/* ForkCore(shared, sleepers_off, deque_off, max_depth) */
static int
ForkCore_init(ForkCore *f, PyObject *args, PyObject *kw)
{
    PyObject *sh;
    if (!PyArg_ParseTuple(args, "O!nni:ForkCore", &SharedType, &sh, &f->sleepers_off, &f->deque_off,
                          &f->max_depth))
        return -1;
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
    the_fork = f;  /* borrowed: the worker keeps its ForkJoin alive */
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
    ForkCore *f = the_fork;
    PyObject *res = NULL;
    if (!f || !f->task) {
        if (!spawn_fallback)
            PyErr_SetString(PyExc_RuntimeError, "penny.fibers is not initialised");
        else
            res = PyObject_CallFunctionObjArgs(spawn_fallback, fn, pargs, kwargs ? kwargs : Py_None, NULL);
        goto done;
    }
    PyObject *fidobj = PyDict_GetItemWithError(f->fids, fn);
    unsigned long fid;
    if (!fidobj) {
        if (PyErr_Occurred())
            goto done;
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
    ForkCore *f = the_fork;
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
    if (!sync_fallback)
        return PyErr_Format(PyExc_RuntimeError, "penny.fibers is not initialised");
    return PyObject_CallOneArg(sync_fallback, arg);
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
    Py_XSETREF(spawn_fallback, Py_NewRef(sp));
    Py_XSETREF(sync_fallback, Py_NewRef(sy));
    Py_RETURN_NONE;
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

static PyObject *
S_len(Shared *s, void *closure)
{
    return PyLong_FromSsize_t(s->has_view ? s->len : 0);
}



/* token_give(flags_off, flag, join_off) -> the join count before.  A task
 * about to suspend: mark it suspended (flag in its record's flags) and give
 * up its join token, back to back, so a supervisor that finds the worker
 * dead sees both or (in a window of one instruction) neither.  The flags
 * word is written only by the task's owner; relaxed, ordered before the
 * acq_rel RMW (which pairs with the children's decrements). */
static PyObject *
S_token_give(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(3, "token_give");
    uint64_t flag;
    a32 *flags = addr(s, args[0], 4);
    a32 *join = addr(s, args[2], 4);
    if (!flags || !join || as_u64(args[1], &flag) < 0)
        return NULL;
    atomic_store_explicit(flags, atomic_load_explicit(flags, memory_order_relaxed) | (uint32_t)flag,
                          memory_order_relaxed);
    return PyLong_FromUnsignedLong(atomic_fetch_sub_explicit(join, 1, memory_order_acq_rel));
}

/* token_take(flags_off, flag, join_off): a resumed task (every child done, the
 * count is 0) takes its token back and clears the mark, back to back.
 * Relaxed: no child of ours is outstanding, nobody else writes them now. */
static PyObject *
S_token_take(Shared *s, PyObject *const *args, Py_ssize_t nargs)
{
    NARGS(3, "token_take");
    uint64_t flag;
    a32 *flags = addr(s, args[0], 4);
    a32 *join = addr(s, args[2], 4);
    if (!flags || !join || as_u64(args[1], &flag) < 0)
        return NULL;
    atomic_store_explicit(join, 1, memory_order_relaxed);
    atomic_store_explicit(flags, atomic_load_explicit(flags, memory_order_relaxed) & ~(uint32_t)flag,
                          memory_order_relaxed);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ */
/* Lease: one process's hold on a block of the region                  */
/*
 * A Lease exports [offset, offset + nbytes) of a Shared buffer through the
 * buffer protocol (NumPy arrays and memoryviews are built on it and keep it
 * alive) and, when it is collected, calls release(offset): the arena drops
 * the block's shared reference count and frees it at zero.  The buffer stays
 * mapped while any lease on it lives, even after Shared.release().
 */
typedef struct {
    PyObject_HEAD
    Shared *s;
    char *ptr;
    Py_ssize_t offset, nbytes;
    int readonly;
    pid_t pid;           /* the process that made it: a forked copy must not release */
    PyObject *release;   /* callable(offset) or None */
} Lease;

static PyTypeObject LeaseType;

static int
Lease_init(Lease *self, PyObject *args, PyObject *kw)
{
    PyObject *so, *release;
    Py_ssize_t off, n;
    int ro;
    if (!PyArg_ParseTuple(args, "O!nnpO:Lease", &SharedType, &so, &off, &n, &ro, &release))
        return -1;
    if (self->s) {
        PyErr_SetString(PyExc_RuntimeError, "Lease already initialised");
        return -1;
    }
    Shared *s = (Shared *)so;
    char *p = span(s, off, n);
    if (!p)
        return -1;
    self->s = (Shared *)Py_NewRef(so);
    s->leases++;
    self->ptr = p;
    self->offset = off;
    self->nbytes = n;
    self->readonly = ro;
    self->pid = getpid();
    self->release = Py_NewRef(release);
    return 0;
}

static void
Lease_dealloc(Lease *self)
{
    PyObject_GC_UnTrack(self);
    /* A child forked from the holder has a copy of this object but never took
     * a reference of its own: only the process that made the lease releases. */
    if (self->release && self->release != Py_None && self->pid == getpid()) {
        PyObject *et, *ev, *etb;
        PyErr_Fetch(&et, &ev, &etb);   /* dealloc may run while an exception is set */
        PyObject *r = PyObject_CallFunction(self->release, "n", self->offset);
        if (!r)
            PyErr_WriteUnraisable(self->release);
        Py_XDECREF(r);
        PyErr_Restore(et, ev, etb);
    }
    Py_CLEAR(self->release);
    Shared *s = self->s;
    if (s) {
        if (--s->leases == 0 && s->keep_view) {
            s->keep_view = 0;
            PyBuffer_Release(&s->view);
        }
        self->s = NULL;
        Py_DECREF(s);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Lease_traverse(Lease *self, visitproc visit, void *arg)
{
    Py_VISIT(self->release);
    return 0;
}

static int
Lease_getbuffer(Lease *self, Py_buffer *view, int flags)
{
    if (!self->s) {
        PyErr_SetString(PyExc_BufferError, "uninitialised Lease");
        view->obj = NULL;
        return -1;
    }
    return PyBuffer_FillInfo(view, (PyObject *)self, self->ptr, self->nbytes, self->readonly, flags);
}

static PyBufferProcs Lease_as_buffer = {(getbufferproc)Lease_getbuffer, NULL};

static PyObject *
Lease_get_offset(Lease *self, void *c) { return PyLong_FromSsize_t(self->offset); }
static PyObject *
Lease_get_nbytes(Lease *self, void *c) { return PyLong_FromSsize_t(self->nbytes); }
static PyObject *
Lease_get_readonly(Lease *self, void *c) { return PyBool_FromLong(self->readonly); }
static PyObject *
Lease_get_address(Lease *self, void *c) { return PyLong_FromVoidPtr(self->ptr); }

static PyGetSetDef Lease_getset[] = {
    {"offset", (getter)Lease_get_offset, NULL, "offset of the data in the region", NULL},
    {"nbytes", (getter)Lease_get_nbytes, NULL, "bytes exported", NULL},
    {"readonly", (getter)Lease_get_readonly, NULL, "whether the export is read-only", NULL},
    {"address", (getter)Lease_get_address, NULL, "address of the data in this process", NULL},
    {NULL},
};

static PyTypeObject LeaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "penny._core.Lease",
    .tp_basicsize = sizeof(Lease),
    .tp_dealloc = (destructor)Lease_dealloc,
    .tp_traverse = (traverseproc)Lease_traverse,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Lease(shared, offset, nbytes, readonly, release): a buffer over part of the region; "
              "calls release(offset) when collected.",
    .tp_as_buffer = &Lease_as_buffer,
    .tp_getset = Lease_getset,
    .tp_init = (initproc)Lease_init,
    .tp_new = PyType_GenericNew,
};

/* buffer_info(obj) -> (address, nbytes, readonly, contiguous): where a buffer's
 * first byte is in this process (to tell whether it lies in a region). */
static PyObject *
M_buffer_info(PyObject *mod, PyObject *obj)
{
    Py_buffer v;
    if (PyObject_GetBuffer(obj, &v, PyBUF_FULL_RO) < 0)
        return NULL;
    int contig = PyBuffer_IsContiguous(&v, 'A');
    PyObject *r = Py_BuildValue("(NnOO)", PyLong_FromVoidPtr(v.buf), v.len,
                                v.readonly ? Py_True : Py_False, contig ? Py_True : Py_False);
    PyBuffer_Release(&v);
    return r;
}

static PyObject *
S_leases(Shared *s, void *closure)
{
    return PyLong_FromSsize_t(s->leases);
}

static PyObject *
S_address(Shared *s, void *closure)
{
    return PyLong_FromVoidPtr(s->has_view ? s->base : NULL);
}

static PyMethodDef Shared_methods[] = {
    {"release", (PyCFunction)Shared_release, METH_NOARGS, "Release the buffer (idempotent)."},
    {"settle", (PyCFunction)(void (*)(void))S_settle, METH_FASTCALL, "settle(ref, status, current_off)"},
    {"take_batch", (PyCFunction)(void (*)(void))S_take_batch, METH_FASTCALL, "take_batch(queue, max, deque, current_off) -> (first, count)"},
    {"token_give", (PyCFunction)(void (*)(void))S_token_give, METH_FASTCALL, "token_give(flags_off, flag, join_off) -> join before"},
    {"token_take", (PyCFunction)(void (*)(void))S_token_take, METH_FASTCALL, "token_take(flags_off, flag, join_off)"},
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
    {"stack_push", (PyCFunction)(void (*)(void))S_stack_push, METH_FASTCALL, "stack_push(head, base, stride, link, count, index)"},
    {"stack_pop", (PyCFunction)(void (*)(void))S_stack_pop, METH_FASTCALL, "stack_pop(head, base, stride, link, count) -> index or -1"},
    {"notify", (PyCFunction)(void (*)(void))S_notify, METH_FASTCALL, "notify(sleepers, states, stride, count, start) -> woken index or -1"},
    {"pack_inline", (PyCFunction)(void (*)(void))S_pack_inline, METH_FASTCALL, "pack_inline(off, cap, seq) -> nbytes or -1"},
    {"unpack_inline", (PyCFunction)(void (*)(void))S_unpack_inline, METH_FASTCALL, "unpack_inline(off, cap) -> tuple"},
    {"set_tasks", (PyCFunction)S_set_tasks, METH_VARARGS, "set_tasks(...): where the task table, rings and parking words are (layout.py)"},
    {"inject", (PyCFunction)(void (*)(void))S_inject, METH_FASTCALL, "inject(fid, args, future, futures) -> ref, 0 (table full) or -1 (not inlinable)"},
    {"claim", (PyCFunction)(void (*)(void))S_claim, METH_FASTCALL, "claim(ref, current_off, wid) -> (fid, flags, args|None) or None"},
    {"finish", (PyCFunction)(void (*)(void))S_finish, METH_FASTCALL, "finish(ref, value, current_off) -> bool"},
    {"publish", (PyCFunction)(void (*)(void))S_publish, METH_FASTCALL, "publish(ref, parent): route a finished task"},
    {"spawn", (PyCFunction)(void (*)(void))S_spawn, METH_FASTCALL, "spawn(fid, args, parent, deque_off) -> ref, 0 or -1"},
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
    {"buffer_info", (PyCFunction)M_buffer_info, METH_O, "buffer_info(obj) -> (address, nbytes, readonly, contiguous)"},
    {NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "penny._core",
    "Atomics, futexes, Chase-Lev deque, MPMC ring, Treiber stack and inline codec on shared buffers.",
    -1, module_methods,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    if (PyType_Ready(&SharedType) < 0 || PyType_Ready(&HandleType) < 0 || PyType_Ready(&ForkCoreType) < 0
        || PyType_Ready(&LeaseType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m)
        return NULL;
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
    return m;
}
