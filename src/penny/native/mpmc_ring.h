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

/* Result of mq_push_checked / mq_pop_checked on a ring whose words are
 * impossible (see below). */
#define MQ_CORRUPT (-2)

/* Returns 1 if pushed, 0 if full, MQ_CORRUPT if the ring's words are
 * impossible.  A slot whose seq is ahead of the position we read means
 * another producer claimed that position; its CAS on enq came before its
 * release store of seq, which our acquire load saw, so our reload of enq
 * must see a later position.  If it does not, the words were scribbled on:
 * we stop instead of spinning forever. */
static inline int
mq_push_checked(char *b, uint64_t mask, uint64_t x)
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
            /* Relaxed: coherence after the acquire of seq (above) is enough. */
            uint64_t again = atomic_load_explicit(enq, memory_order_relaxed);
            if (again == pos)
                return MQ_CORRUPT;
            pos = again;
        }
    }
}

/* Returns 1 if pushed, 0 if full or corrupt (the fast paths of tasks.c then
 * raise "queue full (broken invariant)"). */
static inline int
mq_push(char *b, uint64_t mask, uint64_t x)
{
    return mq_push_checked(b, mask, x) == 1;
}

/* Returns the value, R_EMPTY, or MQ_CORRUPT if the ring's words are
 * impossible (the consumer's side of mq_push_checked's argument: a seq ahead
 * of pos + 1 means a consumer advanced deq first).  The value itself is the
 * caller's to check. */
static inline int64_t
mq_pop_checked(char *b, uint64_t mask)
{
    a64 *deq = (a64 *)(b + Q_DEQ);
    a64 *slots = (a64 *)(b + Q_SLOTS);
    /* Relaxed: a guess, validated by the slot's seq. */
    uint64_t pos = atomic_load_explicit(deq, memory_order_relaxed);
    for (;;) {
        a64 *slot = &slots[2 * (pos & mask)];
        /* Acquire: pairs with the producer's release of seq (value visible). */
        uint64_t seq = atomic_load_explicit(slot, memory_order_acquire);
        int64_t dif = (int64_t)(seq - (pos + 1));
        if (dif == 0) {
            /* Relaxed CAS: it only claims the position (the acquire on seq
             * above made the value visible). */
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
            /* Relaxed: coherence after the acquire of seq is enough. */
            uint64_t again = atomic_load_explicit(deq, memory_order_relaxed);
            if (again == pos)
                return MQ_CORRUPT;
            pos = again;
        }
    }
}

/* Returns the value, or R_EMPTY (also for a corrupt ring: it never spins). */
static inline int64_t
mq_pop(char *b, uint64_t mask)
{
    int64_t x = mq_pop_checked(b, mask);
    return x == MQ_CORRUPT ? R_EMPTY : x;
}

#endif /* PENNY_MPMC_RING_H */
