/*
 * mpmc_ring.h: the bounded MPMC ring of Vyukov, on raw memory (a `char *` to
 * its header, see Q_* in layout.h, and its mask).  No Python.h: the
 * extension (ops.c, tasks.c) and the TSan harness (tests/c/deque_tsan.c)
 * compile this same code.
 *
 * Any thread of any process may push and pop.  Each slot is {seq, value}:
 * the sequence number tells producers and consumers whose turn the slot is,
 * so a push and a pop each cost one CAS on the shared position.  Items are
 * positive 63-bit ints; mq_pop returns R_EMPTY when there is none.
 *
 * Memory ordering: the CAS on a position only claims it (relaxed); the
 * value is published by the release store of the slot's seq, which the
 * other side's acquire load of seq pairs with (a producer's value to the
 * consumer; a consumer's "slot free" to the producer one lap later).  The
 * positions themselves are only guesses, validated by the slots' seq.
 */
#ifndef PENNY_MPMC_RING_H
#define PENNY_MPMC_RING_H

#include <stdint.h>
#include <string.h>

#include "atomics.h"
#include "layout.h"

/* Make an empty ring of `cap` slots (a power of two >= 2) at `b` (64-byte
 * aligned, Q_SLOTS + 16 * cap bytes), before any other thread uses it. */
static inline void
mq_init(char *b, uint64_t cap)
{
    memset(b, 0, Q_SLOTS);
    a64 *slots = (a64 *)(b + Q_SLOTS);
    for (uint64_t i = 0; i < cap; i++) {
        /* Relaxed: published together with the header below. */
        atomic_store_explicit(&slots[2 * i], i, memory_order_relaxed);
        atomic_store_explicit(&slots[2 * i + 1], 0, memory_order_relaxed);
    }
    atomic_store_explicit((a64 *)(b + Q_MASK), cap - 1, memory_order_relaxed);
    atomic_store_explicit((a64 *)(b + Q_DEQ), 0, memory_order_relaxed);
    atomic_store_explicit((a64 *)(b + Q_ENQ), 0, memory_order_release);
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

#endif /* PENNY_MPMC_RING_H */
