/*
 * lease.c: Lease, one process's hold on a block of the region (a buffer
 * exporter over part of a Shared buffer), and buffer_info.  Part of the unity
 * build (core.c), not compiled on its own.
 *
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
    char *p;
    /* The check and the count in one critical section: release() on another
     * thread either sees this lease or makes the span check fail. */
    Py_BEGIN_CRITICAL_SECTION(s);
    p = span(s, off, n);
    if (p)
        s->leases++;
    Py_END_CRITICAL_SECTION();
    if (!p)
        return -1;
    self->s = (Shared *)Py_NewRef(so);
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
        int drop = 0;
        Py_BEGIN_CRITICAL_SECTION(s);
        if (--s->leases == 0 && s->keep_view) {
            s->keep_view = 0;
            drop = 1;
        }
        Py_END_CRITICAL_SECTION();
        if (drop)  /* the last holder: no other thread touches the view now */
            PyBuffer_Release(&s->view);
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

