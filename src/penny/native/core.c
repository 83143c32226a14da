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
