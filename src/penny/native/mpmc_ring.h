/*
 * mpmc_ring.h: a bounded MPMC ring after Vyukov's, on raw memory (a `char *`
 * to its header, see Q_* in layout.h, and its mask), whose every half-done
 * step names its taker, so a process killed in the middle of one can be
 * repaired (docs/crash-model.md, "Rings").  No Python.h: the extension
 * (ops.c, tasks.c) and the TSan harness (tests/c/deque_tsan.c) compile this
 * same code.
 *
 * Any thread of any process may push and pop.  Items are positive 63-bit
 * ints; 0 in a slot is a tombstone (a push a supervisor cancelled), which
 * pops skip; mq_pop returns R_EMPTY when there is nothing.  Each slot is
 * {seq, value}.  For position `pos` (slot pos & mask), seq goes through
 *
 *     pos  --producer claims-->  CLAIM(pos, taker)  --publishes-->  pos + 1
 *          --consumer claims-->  CLAIM|CONS(pos, taker)  --releases-->  pos + cap
 *
 * and pos + cap is the next lap's "free".  A claim is a CAS on the slot's
 * word (not, as in Vyukov's ring, on the shared position): the claimant
 * then moves the position on (a CAS anyone who sees the claim may do for
 * it: "helping"), writes or reads the value, and stores the next seq.  A
 * claimant that dies leaves its id in the slot; `mq_repair` (the supervisor,
 * once the taker is known dead) finishes its step: a producer's slot is
 * published with the value the supervisor gives (a tombstone, or the value
 * the dead producer noted before claiming), a consumer's slot is released
 * and its value handed back.  Vyukov's ring, where the claim is the CAS on
 * the position, leaves no trace of who claimed what: a producer dead after
 * it wedged the ring for good, a consumer dead after it one lap later.  The
 * cost is the second CAS per push and per pop (on the slot's line, which
 * the step writes anyway).
 *
 * Memory ordering: a claim is an acq_rel CAS on the slot's seq.  Acquire
 * (with the acquire load before it): a producer sees the previous lap's
 * consumer done with the value; a consumer sees the producer's value.
 * Release: whoever sees the claim also sees the claimant's earlier reads of
 * the position (read-read coherence then makes its own reload of the
 * position no older), which the corruption checks below rely on.  The
 * position CASes are relaxed: positions are only guesses, validated by the
 * slots.  Publishing and releasing are release stores of seq, paired with
 * the acquire loads of seq on the other side.  Every path that stores a
 * slot's next seq has tried the position's CAS first, so a slot published
 * for `pos` implies a position past `pos` to anyone who saw it.
 */
#ifndef PENNY_MPMC_RING_H
#define PENNY_MPMC_RING_H

#include <stdint.h>
#include <string.h>

#include "atomics.h"
#include "layout.h"

/* A claim in a slot's seq: bit 63 set, bit 62 for a consumer, the taker in
 * bits 48-61, the low 48 bits of the position (2**48 pushes before two laps
 * could be confused).  Positions themselves stay below 2**63. */
#define MQ_CLAIM (1ull << 63)
#define MQ_CONS (1ull << 62)
#define MQ_TAKER_SHIFT 48
#define MQ_TAKER_MASK 0x3fffull
#define MQ_POS_MASK ((1ull << 48) - 1)
/* The taker of a process that is never repaired (the main process, threads). */
#define MQ_TAKER_NONE MQ_TAKER_MASK

#define MQ_CLAIM_WORD(pos, taker, cons) \
    (MQ_CLAIM | ((cons) ? MQ_CONS : 0) | (((uint64_t)(taker) & MQ_TAKER_MASK) << MQ_TAKER_SHIFT) | ((pos) & MQ_POS_MASK))

/* Result of the checked calls on a ring whose words are impossible. */
#define MQ_CORRUPT (-2)

/* A kill point inside a ring step (killpoint.c): the extension defines
 * MQ_KILL_POINT to fire point `kp` (0: none); the harness has none. */
#ifndef MQ_KILL_POINT
#define MQ_KILL_POINT(kp) ((void)(kp))
#endif

/* Where the claim in `seq` is, relative to `pos`: the signed 48-bit
 * difference of the claim's position and `pos`. */
static inline int64_t
mq_claim_delta(uint64_t seq, uint64_t pos)
{
    return (int64_t)((((seq & MQ_POS_MASK) - pos) & MQ_POS_MASK) << 16) >> 16;
}

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

/* Move position `at` on from *pos (whose slot we saw claimed or done for
 * *pos); *pos becomes the position to try next.  Strong CAS: a spurious
 * failure would leave *pos unchanged and look like corruption. */
static inline void
mq_help(a64 *at, uint64_t *pos)
{
    uint64_t want = *pos;
    if (atomic_compare_exchange_strong_explicit(at, &want, *pos + 1, memory_order_relaxed, memory_order_relaxed))
        *pos += 1;
    else
        *pos = want;
}

/* Our position is older than the slot says (a later lap is there): reload
 * it.  Returns 0, or MQ_CORRUPT if it did not move: whoever made the slot
 * later moved the position past ours first, and we saw that slot (release
 * claim or store, our acquire), so the reload must see a later position;
 * if it does not, the words were scribbled on, and we stop instead of
 * spinning forever. */
static inline int
mq_reload(a64 *at, uint64_t *pos)
{
    uint64_t again = atomic_load_explicit(at, memory_order_relaxed);
    if (again == *pos)
        return MQ_CORRUPT;
    *pos = again;
    return 0;
}

/* Push `x` as `taker`, after storing it at `note` (if not NULL: a
 * supervisor reads it there after our death, to publish a slot we claimed
 * and did not fill).  Returns 1 if pushed, 0 if full (the slot for our
 * position still holds, or is being emptied of, the item of the lap
 * before), MQ_CORRUPT if the ring's words are impossible. */
static inline int
mq_push_as(char *b, uint64_t mask, uint64_t x, uint32_t taker, a64 *note, int kp)
{
    a64 *enq = (a64 *)(b + Q_ENQ);
    a64 *slots = (a64 *)(b + Q_SLOTS);
    if (note) {
        /* Relaxed: read only by a supervisor after our death; program order
         * (the claim comes later) is all it needs, and the signal fence
         * keeps the compiler from sinking the store below the claim. */
        atomic_store_explicit(note, x, memory_order_relaxed);
        atomic_signal_fence(memory_order_seq_cst);
    }
    /* Relaxed: the position is only a guess, validated by the slot's seq. */
    uint64_t pos = atomic_load_explicit(enq, memory_order_relaxed);
    for (;;) {
        a64 *slot = &slots[2 * (pos & mask)];
        /* Acquire: pairs with the release of seq by the lap before's
         * consumer (its read of the value is done) or by a claimant. */
        uint64_t seq = atomic_load_explicit(slot, memory_order_acquire);
        int64_t dif = (seq & MQ_CLAIM) ? mq_claim_delta(seq, pos) : (int64_t)(seq - pos);
        if (dif == 0 && !(seq & MQ_CLAIM)) {
            uint64_t want = pos;
            if (atomic_compare_exchange_weak_explicit(slot, &want, MQ_CLAIM_WORD(pos, taker, 0),
                                                      memory_order_acq_rel, memory_order_relaxed)) {
                MQ_KILL_POINT(kp);
                uint64_t at = pos;
                mq_help(enq, &at);
                atomic_store_explicit(slot + 1, x, memory_order_relaxed);
                /* Release: publishes the value to the consumer's acquire. */
                atomic_store_explicit(slot, pos + 1, memory_order_release);
                return 1;
            }
        } else if (dif < 0) {
            return 0;  /* the lap before's item (or its claim) is still there: full */
        } else if ((seq & MQ_CLAIM) ? dif == 0 : (dif == 1 || dif == (int64_t)mask + 1)) {
            mq_help(enq, &pos);  /* our position is taken (claimed, published or consumed) */
        } else if (mq_reload(enq, &pos) < 0) {
            return MQ_CORRUPT;
        }
    }
}

/* Returns 1 if pushed, 0 if full or corrupt (the fast paths of tasks.c then
 * raise "queue full (broken invariant)").  A push no supervisor repairs. */
static inline int
mq_push(char *b, uint64_t mask, uint64_t x)
{
    return mq_push_as(b, mask, x, MQ_TAKER_NONE, NULL, 0) == 1;
}

/* The first step of a pop as `taker`: claim the oldest item.  If a slot
 * was claimed, *at is its position and the value is returned (the slot
 * stays claimed: the caller records the value where a supervisor will look,
 * then calls mq_pop_end(*at)); the value is the caller's to check.  Else *at
 * is MQ_NONE and R_EMPTY or MQ_CORRUPT is returned.  Tombstones are released
 * and skipped. */
#define MQ_NONE UINT64_MAX
static inline int64_t
mq_pop_begin(char *b, uint64_t mask, uint32_t taker, int kp, uint64_t *at)
{
    a64 *deq = (a64 *)(b + Q_DEQ);
    a64 *slots = (a64 *)(b + Q_SLOTS);
    *at = MQ_NONE;
    /* Relaxed: a guess, validated by the slot's seq. */
    uint64_t pos = atomic_load_explicit(deq, memory_order_relaxed);
    for (;;) {
        a64 *slot = &slots[2 * (pos & mask)];
        /* Acquire: pairs with the producer's release of seq (value visible). */
        uint64_t seq = atomic_load_explicit(slot, memory_order_acquire);
        int64_t dif = (seq & MQ_CLAIM) ? mq_claim_delta(seq, pos) : (int64_t)(seq - (pos + 1));
        if (dif == 0 && !(seq & MQ_CLAIM)) {
            uint64_t want = pos + 1;
            if (atomic_compare_exchange_weak_explicit(slot, &want, MQ_CLAIM_WORD(pos, taker, 1),
                                                      memory_order_acq_rel, memory_order_relaxed)) {
                uint64_t p = pos;
                mq_help(deq, &p);
                uint64_t x = atomic_load_explicit(slot + 1, memory_order_relaxed);
                if (x == 0) {  /* a tombstone: release it, go on */
                    atomic_store_explicit(slot, pos + mask + 1, memory_order_release);
                    pos = p;
                    continue;
                }
                MQ_KILL_POINT(kp);
                *at = pos;
                return (int64_t)x;
            }
        } else if ((seq & MQ_CLAIM) && dif == 0) {
            if (!(seq & MQ_CONS))
                return R_EMPTY;  /* being pushed: not there yet */
            mq_help(deq, &pos);  /* taken by another consumer */
        } else if (dif < 0) {
            return R_EMPTY;  /* not pushed yet (or the lap before's claim) */
        } else if (!(seq & MQ_CLAIM) && dif == (int64_t)mask) {
            mq_help(deq, &pos);  /* consumed and released: our position is old */
        } else if (mq_reload(deq, &pos) < 0) {
            return MQ_CORRUPT;
        }
    }
}

/* The last step of a pop: release the slot of position `at` (the value is
 * read and recorded) for the producer one lap later. */
static inline void
mq_pop_end(char *b, uint64_t mask, uint64_t at)
{
    a64 *slot = (a64 *)(b + Q_SLOTS) + 2 * (at & mask);
    /* Release: the value has been read before the slot is free. */
    atomic_store_explicit(slot, at + mask + 1, memory_order_release);
}

/* A whole pop as `taker`: the value (the caller's to check), R_EMPTY, or
 * MQ_CORRUPT. */
static inline int64_t
mq_pop_as(char *b, uint64_t mask, uint32_t taker, int kp)
{
    uint64_t at;
    int64_t x = mq_pop_begin(b, mask, taker, kp, &at);
    if (at != MQ_NONE)
        mq_pop_end(b, mask, at);
    return x;
}

/* Returns the value, or R_EMPTY (also for a corrupt ring: it never spins).
 * A pop no supervisor repairs. */
static inline int64_t
mq_pop(char *b, uint64_t mask)
{
    int64_t x = mq_pop_as(b, mask, MQ_TAKER_NONE, 0);
    return x == MQ_CORRUPT ? R_EMPTY : x;
}

/* Finish the steps a dead `taker` left half done in this ring (only once
 * it is dead: its id must not be in use).  A slot it claimed as a producer
 * is published with `fill` (0: a tombstone); one it claimed as a consumer is
 * released and its value stored at out[] (at most `max`; the count is
 * returned; values beyond `max` are still released).  Positions it did not
 * move on are moved.  Each slot is looked at once: O(capacity). */
static inline int64_t
mq_repair(char *b, uint64_t mask, uint32_t taker, uint64_t fill, uint64_t *out, int64_t max)
{
    a64 *enq = (a64 *)(b + Q_ENQ), *deq = (a64 *)(b + Q_DEQ);
    a64 *slots = (a64 *)(b + Q_SLOTS);
    int64_t n = 0;
    for (uint64_t i = 0; i <= mask; i++) {
        a64 *slot = &slots[2 * i];
        /* Acquire: pairs with the claim (acq_rel), as a helper's load does. */
        uint64_t seq = atomic_load_explicit(slot, memory_order_acquire);
        if (!(seq & MQ_CLAIM) || ((seq >> MQ_TAKER_SHIFT) & MQ_TAKER_MASK) != (taker & MQ_TAKER_MASK))
            continue;
        int cons = (seq & MQ_CONS) != 0;
        a64 *at = cons ? deq : enq;
        uint64_t near = atomic_load_explicit(at, memory_order_relaxed);
        uint64_t pos = near + (uint64_t)mq_claim_delta(seq, near);  /* the full position */
        if ((pos & mask) != i)
            continue;  /* impossible for a claim made here: a scribbled word, left alone */
        uint64_t p = pos;
        mq_help(at, &p);
        if (cons) {
            uint64_t x = atomic_load_explicit(slot + 1, memory_order_relaxed);
            if (x > 0 && n < max)
                out[n++] = x;
            atomic_store_explicit(slot, pos + mask + 1, memory_order_release);
        } else {
            atomic_store_explicit(slot + 1, fill, memory_order_relaxed);
            atomic_store_explicit(slot, pos + 1, memory_order_release);
        }
    }
    return n;
}

#endif /* PENNY_MPMC_RING_H */
