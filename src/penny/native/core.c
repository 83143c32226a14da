/*
 * penny._core: the small native core of Penny, built as one unity
 * translation unit from the parts below (everything `static`; setup.py
 * compiles this file only and lists the others as dependencies).
 *
 * Everything here works on a `Shared` object, which holds one Py_buffer on a
 * writable buffer (the scheduler's shared region, or any bytearray/mmap in
 * tests) and addresses it by byte offset.  Python never performs a
 * read-modify-write on a shared word itself: every such operation is one of
 * the functions of these parts.
 *
 * Every structure is self-describing (its capacity lives in shared memory
 * next to it), so the functions need only the structure's offset.  Where the
 * structures live is decided by penny/layout.py alone.
 *
 * All shared words are accessed through C11 atomic_*_explicit calls on
 * naturally aligned 32/64-bit words; offsets are checked for bounds and
 * alignment on every call (a few ns; a wrong offset must not scribble).
 *
 * Contents
 *   Pure C, no Python.h (the TSan harness tests/c/deque_tsan.c includes the
 *   lock-free ones as they are):
 *     atomics.h       shared-word types, memory orders, CAS failure orders
 *     futex.h         futex wait/wake; notify_word, the waker's half of the
 *                     sleeper protocol (docs/protocols.md)
 *     layout.h        the fixed layouts: deque and ring headers; the task
 *                     record fields, header words, statuses and flags
 *                     (exported as _core.LAYOUT, checked by layout.py)
 *     chase_lev.h     the Chase-Lev work-stealing deque (Le, Pop, Cohen,
 *                     Zappa Nardelli, PPoPP 2013): cl_push, cl_pop, cl_steal
 *     mpmc_ring.h     the bounded MPMC ring after Vyukov's, whose claims name
 *                     their taker (mq_push_as, mq_pop_begin/end, mq_repair)
 *     tagged_stack.h  the Treiber stack with a tagged head (ABA-safe), the
 *                     free list of task records and arena blocks
 *   CPython parts, in this order (killpoint.c before mpmc_ring.h, whose
 *   MQ_KILL_POINT hook it defines):
 *     killpoint.c     named kill points (KILL_POINT, arm_kill_point)
 *     shared.c        the Shared object, its argument helpers, its life
 *     ops.c           the generic operations as methods: atomics, fences,
 *                     futexes, deque, ring, stack, notify, bytes, bump
 *     codec.c         the inline codec for small arguments and results
 *     tasks.c         the task protocol's fast paths (set_tasks, inject,
 *                     claim, finish, settle, spawn, collect, take_batch,
 *                     token_give ...)
 *     forkjoin.c      Handle, ForkCore, penny.spawn / penny.sync
 *     lease.c         Lease: a buffer exporter over a block of the region
 *     module.c        the Shared type's method table, the module's
 *                     functions and constants, PyInit__core
 *
 * Threads without a GIL.  On a free-threaded CPython (3.13t, Py_GIL_DISABLED)
 * the module declares Py_MOD_GIL_NOT_USED (module.c), so importing it keeps
 * the GIL off, and several threads (the threads backend's workers, its
 * collector, the caller's threads) call into it at once.  The shared words of
 * the region were built for that from the start (C11 atomics across
 * processes, so across threads too); what else is shared, and what protects
 * it:
 *   Shared (shared.c)   base, len, has_view: written by __init__ (before the
 *                       object is shared) and by release(), which the owner
 *                       calls once no thread uses the object any more (the
 *                       threads backend closes its region after joining its
 *                       workers); leases and keep_view: the object's
 *                       critical section (Lease init/dealloc, release); g
 *                       (the task geometry): set once by set_tasks before the
 *                       workers start.
 *   Lease (lease.c)     immutable after __init__; its release callback is
 *                       Python (the arena's own locking).
 *   Handle, ForkCore    thread-confined: a ForkCore is one worker thread's
 *   (forkjoin.c)        (greenlet fibers never change threads), and a Handle
 *                       belongs to the task that spawned it, on that thread;
 *                       other threads reach them only through the Python
 *                       fallbacks.  the_fork, per_thread: relaxed atomics
 *                       (plain loads on x86-64, as fast as before);
 *                       thread_fork: thread-local.  spawn_fallback and
 *                       sync_fallback: acquire/release pointers; without a
 *                       GIL a replaced fallback is kept alive forever, since
 *                       another thread may be calling it.
 *   kill points         kp_armed and kp_left: atomics; arm_kill_point runs in
 *   (killpoint.c)       the module's critical section and publishes the
 *                       paths with the release store of kp_armed.
 *   CorruptRegion       written once by PyInit__core (the import lock).
 *   s_collect_dropped   a diagnostic count of dropped corrupt refs, written
 *   (tasks.c)           by collect, which one collector thread per scheduler
 *                       calls: two schedulers' collectors in one process may
 *                       lose an increment of it, nothing else.
 * Python-level state is the Python code's own: the threads backend's call
 * table is a dict (one insertion, lookup or pop is atomic under its
 * per-object lock on such a build: backends/threads/calls.py), and the
 * arena's large-block lists are under its lock word in the region
 * (shm/arena.py), a CAS that excludes threads as it excludes processes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <time.h>
#include <unistd.h>

/* Before 3.13 there are no critical sections: the GIL is the lock. */
#ifndef Py_BEGIN_CRITICAL_SECTION
#define Py_BEGIN_CRITICAL_SECTION(op) {
#define Py_END_CRITICAL_SECTION() }
#endif

#include "atomics.h"
#include "futex.h"
#include "layout.h"
#include "chase_lev.h"
#include "tagged_stack.h"

#include "killpoint.c"
/* The ring's kill points (mpmc_ring.h): `kp` is a KP_* id or 0. */
#define MQ_KILL_POINT(kp)                                            \
    do {                                                             \
        if (__builtin_expect((kp) != KP_NONE && kp_armed == (kp), 0)) \
            kp_fire();                                               \
    } while (0)
#include "mpmc_ring.h"

#include "shared.c"
#include "ops.c"
#include "codec.c"
#include "tasks.c"
#include "forkjoin.c"
#include "lease.c"
#include "module.c"
