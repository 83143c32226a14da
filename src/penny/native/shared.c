/*
 * shared.c: the Shared object, which holds one Py_buffer on a writable,
 * 64-byte aligned buffer (the scheduler's shared region, or any
 * bytearray/mmap in tests) and addresses it by byte offset; the argument
 * helpers every method uses (offsets checked for bounds and alignment on
 * every call: a few ns, and a wrong offset must not scribble); and the
 * object's life (init, release, dealloc, getters).  Part of the unity build
 * (core.c), not compiled on its own.
 */

/* Where the task machinery lives in this region, told once by
 * penny/layout.py (set_tasks); the fixed layout is in layout.h. */
typedef struct {
    int ready;
    Py_ssize_t tasks, capacity;          /* task table (RECORD_SIZE records) */
    Py_ssize_t injector, completions;    /* MPMC rings */
    Py_ssize_t inbox0, states;           /* worker 0's inbox ring and parking word */
    Py_ssize_t slice_size, nstates;      /* worker w's: + w * slice_size; workers */
} TaskGeometry;

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    char *base;
    Py_ssize_t len;
    int has_view;        /* operations allowed (cleared by release()) */
    int keep_view;       /* released, but leases still point into the view */
    int inited;          /* __init__ ran once (it may not run again) */
    Py_ssize_t leases;   /* live Lease objects on this buffer; leases and keep_view
                          * change in the object's critical section (the GIL on a
                          * GIL build) */
    TaskGeometry g;
    /* Who this process is in the rings' claims (mpmc_ring.h): a worker's id
     * (set_taker), else MQ_TAKER_NONE (never repaired: the main process, or
     * threads, which do not die alone); and the offset of the word where a
     * worker notes each value before it pushes it (-1: none). */
    uint32_t taker;
    Py_ssize_t note_off;
} Shared;

/* The note word of this process's pushes, or NULL. */
static inline a64 *
push_note(Shared *s)
{
    return s->note_off >= 0 ? (a64 *)(s->base + s->note_off) : NULL;
}

/* Defined in module.c, with its method table; forkjoin.c and lease.c check
 * arguments against it. */
static PyTypeObject SharedType;

/* penny.errors.CorruptRegionError, looked up once by PyInit__core (errors.py
 * is ground like _core and imports nothing of Penny's). */
static PyObject *CorruptRegion = NULL;

/* Raise CorruptRegionError: a word read from the region is impossible (a
 * ref, index, count, capacity or offset outside the geometry compiled in or
 * told to set_tasks).  Every such word is untrusted input: it is checked
 * before it is used to address memory, and this is what a check raises. */
static PyObject *
corrupt(const char *fmt, ...)
{
    va_list vargs;
    va_start(vargs, fmt);
    PyErr_FormatV(CorruptRegion ? CorruptRegion : PyExc_RuntimeError, fmt, vargs);
    va_end(vargs);
    return NULL;
}

/* The capacity a ring or deque header at `b` claims: its mask + 1, checked
 * against the `room` bytes of slots after the header (`slot` bytes each) and
 * for being a power of two >= 2.  No arithmetic on the untrusted mask can
 * overflow: it is compared, never multiplied.  Returns 0, or -1 with
 * CorruptRegionError (the mask is written once at init: any other value is
 * another process scribbling). */
static int
checked_mask(uint64_t mask, Py_ssize_t room, Py_ssize_t slot, const char *what, Py_ssize_t off)
{
    /* mask + 1 slots of `slot` bytes fit iff mask < room / slot. */
    if (room < 0 || mask >= (uint64_t)(room / slot) || mask == 0 || (mask & (mask + 1))) {
        corrupt("penny: corrupt %s at offset %zd: mask %llu is not a power of two minus one "
                "that fits the region (%zd bytes after the header)",
                what, off, (unsigned long long)mask, room);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* helpers                                                             */

static int
get_order(PyObject *o, memory_order *out)
{
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (order_from_number(v, out) == 0)
        return 0;
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
    /* Once only: a second __init__ would release the buffer that live Leases
     * (memoryviews, numpy arrays) point into, and swap the region under the
     * task geometry set_tasks checked against it.  Not after release() either:
     * the geometry was checked against the old buffer. */
    if (self->inited) {
        PyErr_SetString(PyExc_RuntimeError, "penny: Shared.__init__ called on an initialised Shared");
        return -1;
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
    self->taker = MQ_TAKER_NONE;
    self->note_off = -1;
    self->inited = 1;
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
    int now;
    /* The critical section orders this against Lease init/dealloc on other
     * threads (a lease made between the check and the release would point
     * into a dropped view). */
    Py_BEGIN_CRITICAL_SECTION(self);
    if (self->has_view) {
        self->has_view = 0;
        self->base = NULL;
        self->len = 0;
        if (self->leases > 0)
            self->keep_view = 1;
        else
            PyBuffer_Release(&self->view);
    }
    now = !self->keep_view;
    Py_END_CRITICAL_SECTION();
    return PyBool_FromLong(now);
}

/* getters: nbytes, leases, address */

static PyObject *
S_len(Shared *s, void *closure)
{
    return PyLong_FromSsize_t(s->has_view ? s->len : 0);
}

static PyObject *
S_leases(Shared *s, void *closure)
{
    Py_ssize_t n;
    Py_BEGIN_CRITICAL_SECTION(s);
    n = s->leases;
    Py_END_CRITICAL_SECTION();
    return PyLong_FromSsize_t(n);
}

static PyObject *
S_address(Shared *s, void *closure)
{
    return PyLong_FromVoidPtr(s->has_view ? s->base : NULL);
}

