/*
 * tagged_stack.h: a Treiber stack with a tagged head (ABA-safe), on raw
 * memory: the free list of task records and of arena blocks.  No Python.h:
 * the extension (ops.c, tasks.c) and the TSan harness (tests/c/deque_tsan.c)
 * compile this same code.
 *
 * head (64-bit) = tag << 32 | (index + 1); 0 = empty.  Nodes are
 * `stride`-byte records from `base`; each has a 64-bit link at `link`.
 * The tag changes on every successful pop and push, so a head that was
 * popped and pushed back between our load and our CAS (ABA) fails the CAS.
 * A stale link read from a node that another process just popped is
 * harmless: the CAS then fails and we retry.
 *
 * Memory ordering: a push's release CAS publishes the node (and everything
 * its pusher wrote to it before freeing it); a pop acquires on the load of
 * the head and on both outcomes of its CAS, so the link it reads next is the
 * one the node's pusher published, and it sees the node's last owner's
 * writes.
 */
#ifndef PENNY_TAGGED_STACK_H
#define PENNY_TAGGED_STACK_H

#include <stddef.h>
#include <stdint.h>

#include "atomics.h"

/* Results of tagged_pop that are not an index. */
#define TS_EMPTY (-1)    /* the stack is empty */
#define TS_CORRUPT (-2)  /* the head names no node of the `count` */

/* Pop a node: its index, TS_EMPTY or TS_CORRUPT. */
static inline ptrdiff_t
tagged_pop(a64 *head, char *base, ptrdiff_t stride, ptrdiff_t link, ptrdiff_t count)
{
    /* Acquire: pairs with the release CAS of the push that put it there. */
    uint64_t h = atomic_load_explicit(head, memory_order_acquire);
    for (;;) {
        uint64_t top = h & 0xffffffffu;
        if (top == 0)
            return TS_EMPTY;
        if (top > (uint64_t)count)
            return TS_CORRUPT;
        a64 *l = (a64 *)(base + (top - 1) * stride + link);
        uint64_t next = atomic_load_explicit(l, memory_order_relaxed) & 0xffffffffu;
        uint64_t nh = ((((h >> 32) + 1) & 0xffffffffu) << 32) | next;
        /* Acquire on success: we own the node and see its last owner's
         * writes.  Acquire on failure too: the reloaded head's link is
         * read next and must be the one its pusher published. */
        if (atomic_compare_exchange_weak_explicit(head, &h, nh, memory_order_acquire, memory_order_acquire))
            return (ptrdiff_t)top - 1;
    }
}

/* Push node `idx` (the caller owns it; 0 <= idx < the stack's count). */
static inline void
tagged_push(a64 *head, char *base, ptrdiff_t stride, ptrdiff_t link, ptrdiff_t idx)
{
    a64 *l = (a64 *)(base + idx * stride + link);
    /* Relaxed: validated by the CAS. */
    uint64_t h = atomic_load_explicit(head, memory_order_relaxed);
    for (;;) {
        /* Relaxed link store, published by the release CAS. */
        atomic_store_explicit(l, h & 0xffffffffu, memory_order_relaxed);
        uint64_t nh = ((((h >> 32) + 1) & 0xffffffffu) << 32) | (uint64_t)(idx + 1);
        /* Release: the node's contents (and everything the pusher wrote to
         * the record before freeing it) happen-before the next pop. */
        if (atomic_compare_exchange_weak_explicit(head, &h, nh, memory_order_release, memory_order_relaxed))
            return;
    }
}

#endif /* PENNY_TAGGED_STACK_H */
