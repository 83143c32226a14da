/*
 * codec.c: the inline codec for small task arguments and results
 * (Shared.pack_inline / unpack_inline; tasks.c packs and unpacks records'
 * inline areas with it).  Plain (non-atomic) memory: a record's contents are
 * published by a later release operation.  Part of the unity build (core.c),
 * not compiled on its own.
 *
 * A tuple of small values encoded in a record's inline area:
 *   u8 count, then per item: u8 tag, payload.
 * Tags: None, True, False, int64 (8 bytes), float64 (8), str (u16 len +
 * UTF-8), bytes (u16 len + data).  Anything else, or anything that does not
 * fit, makes pack_inline return -1 and the caller pickles instead. */
/* IC_ (inline codec), not T_: structmember.h takes those names. */
enum { IC_NONE = 1, IC_TRUE, IC_FALSE, IC_INT, IC_FLOAT, IC_STR, IC_BYTES };

static Py_ssize_t
pack_one(PyObject *o, char *p, char *end)
{
    PyTypeObject *t = Py_TYPE(o);
    if (o == Py_None) {
        if (p + 1 > end) return -1;
        *p = IC_NONE;
        return 1;
    }
    if (t == &PyBool_Type) {
        if (p + 1 > end) return -1;
        *p = o == Py_True ? IC_TRUE : IC_FALSE;
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
        *p = IC_INT;
        memcpy(p + 1, &v, 8);
        return 9;
    }
    if (t == &PyFloat_Type) {
        double v = PyFloat_AS_DOUBLE(o);
        if (p + 9 > end) return -1;
        *p = IC_FLOAT;
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
        *p = IC_STR;
        memcpy(p + 1, &n16, 2);
        memcpy(p + 3, u, n);
        return 3 + n;
    }
    if (t == &PyBytes_Type) {
        Py_ssize_t n = PyBytes_GET_SIZE(o);
        if (n > 0xffff || p + 3 + n > end) return -1;
        uint16_t n16 = (uint16_t)n;
        *p = IC_BYTES;
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
    if (cap < 1)
        return PyErr_Format(PyExc_ValueError, "unpack_inline needs at least the count byte");
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
        case IC_NONE: o = Py_NewRef(Py_None); break;
        case IC_TRUE: o = Py_NewRef(Py_True); break;
        case IC_FALSE: o = Py_NewRef(Py_False); break;
        case IC_INT: {
            long long v;
            if (p + 8 > end) goto corrupt;
            memcpy(&v, p, 8);
            p += 8;
            o = PyLong_FromLongLong(v);
            break;
        }
        case IC_FLOAT: {
            double v;
            if (p + 8 > end) goto corrupt;
            memcpy(&v, p, 8);
            p += 8;
            o = PyFloat_FromDouble(v);
            break;
        }
        case IC_STR:
        case IC_BYTES: {
            uint16_t len;
            if (p + 2 > end) goto corrupt;
            memcpy(&len, p, 2);
            p += 2;
            if (p + len > end) goto corrupt;
            o = tag == IC_STR ? PyUnicode_DecodeUTF8(p, len, "strict") : PyBytes_FromStringAndSize(p, len);
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
    return corrupt("penny: corrupt inline record at offset %zd", off);
}

