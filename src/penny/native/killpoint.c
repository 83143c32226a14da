/*
 * killpoint.c: named kill points (docs/crash-model.md).  Part of the unity
 * build (core.c), included before the parts that use KILL_POINT.
 *
 * KILL_POINT(KP_x) makes this process SIGKILL itself at the n-th pass of the
 * point named "x", once armed with _core.arm_kill_point(name, n, once_path)
 * (penny/_killpoints.py arms it from PENNY_KILL_AT at worker start, or in
 * the main process).  Unarmed, a point costs one load of a static int and one
 * predictable branch: `kp_armed` is 0 and only this process writes it.  A
 * `once_path` makes the kill happen at most once across every process that
 * armed the same path (the first to create the file, O_EXCL, dies), so that
 * a replacement worker with the same environment does not die again.
 *
 * The names are the crash model's step names; _core.KILL_POINTS lists them.
 */
#include <fcntl.h>
#include <signal.h>

#define PENNY_KILL_POINTS(X)                                                              \
    X(CLAIM_AFTER_CAS, "claim.after_cas")           /* RUNNING stored, owner/current not yet */ \
    X(FINISH_AFTER_RESULT, "finish.after_result")   /* inline result written, status not yet */ \
    X(SETTLE_AFTER_STATUS, "settle.after_status")   /* DONE/FAILED stored, not routed yet */   \
    X(ROUTE_AFTER_PUSH, "route.after_push")         /* completion pushed, collector not woken */ \
    X(SPAWN_AFTER_COMMIT, "spawn.after_commit")     /* child QUEUED, not counted nor pushed */  \
    X(SPAWN_AFTER_COUNT, "spawn.after_count")       /* parent's spawned += 1, child not pushed */ \
    X(SPAWN_AFTER_PUSH, "spawn.after_push")         /* child pushed on our deque */             \
    X(TAKE_BATCH_AFTER_POP, "take_batch.after_pop") /* refs popped, in the batch area only */ \
    X(TAKE_BATCH_AFTER_MARK, "take_batch.after_mark") /* first in current, rest in the area  */ \
    X(TAKE_BATCH_AFTER_PUSH, "take_batch.after_push") /* pushed, still in the area too */ \
    X(POP_CHILD_AFTER_TAKE, "pop_child.after_take") /* our child popped, in current */           \
    X(INJECT_AFTER_COMMIT, "inject.after_commit")   /* QUEUED stored, not pushed (main) */      \
    X(COLLECT_AFTER_POP, "collect.after_pop")       /* popped a completion (main) */            \
    X(TOKEN_GIVE_AFTER_GIVE, "token_give.after_give") /* token traded for JOIN_GIVEN */ \
    X(ROUTE_PUSH_CLAIMED, "route.push_claimed")     /* completion ring slot claimed, not published */ \
    X(POST_PUSH_CLAIMED, "post.push_claimed")       /* inbox slot claimed for a parent's post, not published */ \
    X(TAKE_BATCH_POP_CLAIMED, "take_batch.pop_claimed") /* global queue slot claimed, ref not recorded */ \
    X(TAKE_BATCH_AFTER_RECORD, "take_batch.after_record") /* ref recorded in the batch area, slot not released */ \
    X(INBOX_POP_CLAIMED, "inbox.pop_claimed")       /* queue_pop (a worker's inbox): claimed, not released */ \
    X(QUEUE_PUSH_CLAIMED, "queue_push.claimed")     /* queue_push (a worker's spill, retire): claimed, not published */

enum {
    KP_NONE = 0,
#define KP_ENUM(id, name) KP_##id,
    PENNY_KILL_POINTS(KP_ENUM)
#undef KP_ENUM
    KP_COUNT
};

static const char *const kp_names[KP_COUNT] = {
    NULL,
#define KP_NAME(id, name) name,
    PENNY_KILL_POINTS(KP_NAME)
#undef KP_NAME
};

/* Written by this process only (arm_kill_point, in the module's critical
 * section: the GIL on a GIL build), read by its own threads; no shared
 * memory involved.  kp_armed is loaded relaxed at every point (a plain load)
 * and stored with release after the paths and kp_which, which kp_fire reads
 * after an acquire load; kp_left counts down atomically, so with several
 * threads passing points the n-th pass is still the one that fires. */
static atomic_int kp_armed = KP_NONE;
static atomic_long kp_left = 0;
static char kp_once[1024];
static char kp_log[1024];
static int kp_which = KP_NONE;

static void
kp_fire(void)
{
    if (atomic_load_explicit(&kp_armed, memory_order_acquire) == KP_NONE)
        return;  /* disarmed since the relaxed load at the point */
    if (atomic_fetch_sub_explicit(&kp_left, 1, memory_order_relaxed) - 1 > 0)
        return;
    atomic_store_explicit(&kp_armed, KP_NONE, memory_order_relaxed);
    if (kp_once[0]) {
        int fd = open(kp_once, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
        if (fd < 0)
            return; /* someone died here already */
        close(fd);
    }
    if (kp_log[0]) { /* "pid monotonic-seconds name\n", one O_APPEND write */
        int fd = open(kp_log, O_CREAT | O_APPEND | O_WRONLY | O_CLOEXEC, 0600);
        if (fd >= 0) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            char line[256];
            int n = snprintf(line, sizeof line, "%d %lld.%09ld %s\n", (int)getpid(), (long long)ts.tv_sec,
                             (long)ts.tv_nsec, kp_names[kp_which]);
            if (n > 0 && write(fd, line, (size_t)n) < 0) {
                /* nothing to do: the kill happens anyway */
            }
            close(fd);
        }
    }
    kill(getpid(), SIGKILL);
    for (;;)
        pause();
}

#define KILL_POINT(id)                                     \
    do {                                                   \
        if (__builtin_expect(atomic_load_explicit(&kp_armed, memory_order_relaxed) == KP_##id, 0)) \
            kp_fire();                                     \
    } while (0)

/* arm_kill_point(name, n, once_path=None, log_path=None) -> bool: arm the C
 * point `name` to fire at its n-th pass (n >= 1); False if no C point has
 * that name.  `log_path`: append "pid time name" there before dying.
 * arm_kill_point(None) disarms. */
static PyObject *
M_arm_kill_point(PyObject *self, PyObject *args)
{
    const char *name = NULL, *once = NULL, *logp = NULL;
    long n = 1;
    if (!PyArg_ParseTuple(args, "z|lzz:arm_kill_point", &name, &n, &once, &logp))
        return NULL;
    if (!name) {
        atomic_store_explicit(&kp_armed, KP_NONE, memory_order_relaxed);
        Py_RETURN_TRUE;
    }
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "arm_kill_point: n must be >= 1");
        return NULL;
    }
    if ((once && strlen(once) >= sizeof kp_once) || (logp && strlen(logp) >= sizeof kp_log)) {
        PyErr_SetString(PyExc_ValueError, "arm_kill_point: path too long");
        return NULL;
    }
    int found = 0;
    Py_BEGIN_CRITICAL_SECTION(self);
    for (int i = 1; i < KP_COUNT; i++) {
        if (strcmp(kp_names[i], name) == 0) {
            /* Disarmed while the paths change: a point passed from here on
             * does not fire on half-written paths (re-arming while another
             * thread is already firing is a test's own race). */
            atomic_store_explicit(&kp_armed, KP_NONE, memory_order_relaxed);
            kp_once[0] = 0;
            kp_log[0] = 0;
            if (once)
                strcpy(kp_once, once);
            if (logp)
                strcpy(kp_log, logp);
            atomic_store_explicit(&kp_left, n, memory_order_relaxed);
            kp_which = i;
            atomic_store_explicit(&kp_armed, i, memory_order_release);  /* pairs with kp_fire's acquire */
            found = 1;
            break;
        }
    }
    Py_END_CRITICAL_SECTION();
    return PyBool_FromLong(found);
}

static int
add_kill_points(PyObject *m)
{
    PyObject *t = PyTuple_New(KP_COUNT - 1);
    if (!t)
        return -1;
    for (int i = 1; i < KP_COUNT; i++) {
        PyObject *v = PyUnicode_FromString(kp_names[i]);
        if (!v) {
            Py_DECREF(t);
            return -1;
        }
        PyTuple_SET_ITEM(t, i - 1, v);
    }
    if (PyModule_AddObject(m, "KILL_POINTS", t) < 0) {
        Py_DECREF(t);
        return -1;
    }
    return 0;
}
