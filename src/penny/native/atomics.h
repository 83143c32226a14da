/*
 * atomics.h: the shared-word types and memory orders of Penny's native core.
 * Pure C11: no Python.h, so the lock-free headers that build on it
 * (chase_lev.h, mpmc_ring.h, tagged_stack.h) compile into the TSan harness
 * (tests/c/deque_tsan.c) exactly as into the extension.
 *
 * Memory ordering.  Every shared word is accessed through C11
 * atomic_*_explicit calls on naturally aligned 32/64-bit words, with the
 * order written at each access and the reason next to it ("pairs with ...").
 * The words live in a region mapped by several processes; C11 atomics on
 * lock-free 32/64-bit types are address-free, so the orderings hold across
 * processes as across threads.  The Python-visible operations (Shared.load32
 * ... in ops.c) take the order from the caller as one of the ORD_* numbers
 * below, the same values as C11's memory_order.
 */
#ifndef PENNY_ATOMICS_H
#define PENNY_ATOMICS_H

#include <stdatomic.h>
#include <stdint.h>

typedef _Atomic uint32_t a32;
typedef _Atomic uint64_t a64;
typedef _Atomic int64_t ai64;

/* Python-visible order numbers; the same values as C11's memory_order. */
enum { ORD_RELAXED = 0, ORD_CONSUME, ORD_ACQUIRE, ORD_RELEASE, ORD_ACQ_REL, ORD_SEQ_CST };

/* Results of a steal or pop that found nothing: refs are > 0. */
#define R_EMPTY 0
#define R_RETRY (-1)

/* The C11 order of an ORD_* number: 0, or -1 for a number that is none. */
static inline int
order_from_number(long v, memory_order *out)
{
    switch (v) {
    case ORD_RELAXED: *out = memory_order_relaxed; return 0;
    case ORD_CONSUME: *out = memory_order_consume; return 0;
    case ORD_ACQUIRE: *out = memory_order_acquire; return 0;
    case ORD_RELEASE: *out = memory_order_release; return 0;
    case ORD_ACQ_REL: *out = memory_order_acq_rel; return 0;
    case ORD_SEQ_CST: *out = memory_order_seq_cst; return 0;
    }
    return -1;
}

/* The failure order of a CAS (cas32/cas64), derived from the success order
 * (C11 forbids a failure order stronger than success, and release/acq_rel
 * on a load). */
static inline memory_order
failure_order(memory_order o)
{
    if (o == memory_order_acq_rel)
        return memory_order_acquire;
    if (o == memory_order_release)
        return memory_order_relaxed;
    return o;
}

#endif /* PENNY_ATOMICS_H */
