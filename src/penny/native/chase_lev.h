/*
 * chase_lev.h: the Chase-Lev work-stealing deque, fixed capacity, on raw
 * memory (a `char *` to its header, see DQ_* in layout.h, and its mask).
 * No Python.h: the extension (ops.c, tasks.c) and the TSan harness
 * (tests/c/deque_tsan.c) compile this same code.
 *
 * One owner pushes and pops at the bottom; any process steals from the top
 * with a CAS.  Items are task refs, positive 63-bit ints; a pop or steal
 * returns R_EMPTY (nothing there) or, for a steal, R_RETRY (lost a race with
 * another thief or the owner: there may be more).  The ring is bounded:
 * cl_push returns 0 when it is full and the caller spills to an MPMC ring.
 *
 * Memory ordering follows Le, Pop, Cohen and Zappa Nardelli, "Correct and
 * Efficient Work-Stealing for Weak Memory Models" (PPoPP 2013):
 *   - push publishes the element with a release fence before a relaxed
 *     store of bottom; a thief's acquire load of bottom pairs with it;
 *   - pop stores bottom, then a SeqCst fence, then loads top; a steal loads
 *     top, then a SeqCst fence, then loads bottom: the store-load ordering
 *     on which the last-element race between owner and thieves depends;
 *   - the owner and the thieves claim elements by a SeqCst CAS on top; the
 *     owner's acquire load of top in push pairs with the thieves' CAS, so a
 *     slot is really free before it is overwritten.
 * Each access carries its own comment below.
 */
#ifndef PENNY_CHASE_LEV_H
#define PENNY_CHASE_LEV_H

#include <stdint.h>
#include <string.h>

#include "atomics.h"
#include "layout.h"

/* Make an empty deque of `cap` slots (a power of two >= 2) at `b` (64-byte
 * aligned, DQ_RING + 8 * cap bytes), before any other thread uses it. */
static inline void
cl_init(char *b, uint64_t cap)
{
    memset(b, 0, DQ_RING + 8 * cap);
    atomic_store_explicit((a64 *)(b + DQ_MASK), cap - 1, memory_order_relaxed);
    atomic_store_explicit((ai64 *)(b + DQ_TOP), 0, memory_order_relaxed);
    /* Release: a process that reads the deque after acquiring the region's
     * "ready" flag sees the initialised header. */
    atomic_store_explicit((ai64 *)(b + DQ_BOTTOM), 0, memory_order_release);
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

/* Owner only.  The ref cl_pop would return now, without taking it, or
 * R_EMPTY.  Only the owner writes bottom and the slots below it, so the slot
 * read keeps this value until the owner's next push or pop; a thief may
 * still take it meanwhile (cl_pop then returns R_EMPTY).  Relaxed bottom
 * (ours); acquire top, as in push: a stale top can only show an element a
 * thief already took, which cl_pop then refuses. */
static inline int64_t
cl_peek(char *b, uint64_t mask)
{
    ai64 *top = (ai64 *)(b + DQ_TOP), *bottom = (ai64 *)(b + DQ_BOTTOM);
    a64 *ring = (a64 *)(b + DQ_RING);
    int64_t bt = atomic_load_explicit(bottom, memory_order_relaxed);
    int64_t t = atomic_load_explicit(top, memory_order_acquire);
    if (t >= bt)
        return R_EMPTY;
    return (int64_t)atomic_load_explicit(&ring[(bt - 1) & mask], memory_order_relaxed);
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

#endif /* PENNY_CHASE_LEV_H */
