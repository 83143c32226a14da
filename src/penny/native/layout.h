/*
 * layout.h: the fixed byte layouts and values the native core compiles in.
 * No Python.h.  Where each structure lives in the region (the per-region
 * geometry: the task table, the rings, the worker slices) is decided by
 * penny/layout.py alone and told to the core at run time (Shared.set_tasks);
 * what is inside one structure is fixed here.
 *
 * The constants of the second part are penny/layout.py's too, under the same
 * names: the module exports them as _core.LAYOUT (PENNY_LAYOUT_CONSTANTS
 * below) and layout.py refuses to import if any of them differs from its
 * own.  Change both together.
 */
#ifndef PENNY_LAYOUT_H
#define PENNY_LAYOUT_H

/* ---- deque header (offsets inside one deque, all 64-byte separated) ---- */
#define DQ_TOP 0        /* int64, written by thieves (CAS) and the owner (CAS) */
#define DQ_BOTTOM 64    /* int64, written by the owner only */
#define DQ_MASK 128     /* uint64, capacity - 1, written once at init */
#define DQ_RING 192     /* uint64 ring[capacity] */

/* ---- MPMC ring header ---- */
#define Q_ENQ 0         /* uint64 enqueue position */
#define Q_DEQ 64        /* uint64 dequeue position */
#define Q_MASK 128      /* uint64 capacity - 1 */
#define Q_SLOTS 192     /* {uint64 seq; uint64 value}[capacity] */

/* ---- task record fields (byte offsets from the record; layout.py R_*) ---- */
#define RECORD_SIZE 128
#define R_STATE 0       /* u64: status << 32 | generation (one word: CAS checks both) */
#define R_FN 8          /* u32 function id */
#define R_FLAGS 12      /* u32 F_* bits */
#define R_LINK 16       /* u64 free-list link */
#define R_PARENT 24     /* u64 ref of the parent task (0 for a root task) */
#define R_BLOB 32       /* u64 arena offset of pickled args, then of the pickled result */
#define R_BLOB_LEN 40   /* u64 its length in bytes */
#define R_ATTEMPTS 48   /* u32 times the task was started (crash retries) */
#define R_JOIN 52       /* u32 children finished, + JOIN_GIVEN once the task gave its token up */
#define R_OWNER 56      /* u32 worker running the task (where its continuation lives) */
#define R_SPAWNED 60    /* u32 children published (written by the task's own worker only) */
#define R_INTERRUPT 64  /* u32 interrupt request word, read and written by Python only (layout.py) */
#define R_INLINE 72     /* inline arguments, then the inline result */
#define INLINE_SIZE (RECORD_SIZE - R_INLINE)

/* ---- region header words (byte offsets from 0; layout.py H_*) ---- */
#define H_SLEEPERS 128            /* u32: workers announced as sleepers */
#define H_COLLECTOR 192           /* u32: the collector's parking word */
#define H_COLLECTOR_SLEEPERS 196  /* u32: 1 while the collector is a sleeper */
#define H_TASK_FREE 320           /* u64: tagged head of the task-record free list */

/* ---- task status (the high half of R_STATE) ---- */
#define S_FREE 0u
#define S_QUEUED 1u
#define S_RUNNING 2u
#define S_DONE 3u

/* ---- record flags (R_FLAGS) ---- */
#define F_ARGS_BLOB 1u       /* arguments are pickled in the arena (else inline) */
#define F_RESULT_BLOB 2u     /* the result is pickled in the arena (else inline) */
#define F_ARGS_CONSUMED 4u   /* the worker released the arguments */

/* The join word's token bit: a task that suspends (or is doomed) sets it in
 * the same RMW that reads how many children have finished, so the word alone
 * says whether the token is gone (docs/protocols.md, "spawn, sync"). */
#define JOIN_GIVEN 0x80000000u

/* worker slice: the held words of a spawn in progress (tasks.c queue_child),
 * at an offset layout.py gives (W_HELD) */
#define HELD_REF 0      /* u64 the child's record, taken, perhaps not committed (0: none) */
#define HELD_PARENT 8   /* u64 its parent */
#define HELD_SPAWNED 16 /* u64 the parent's spawned count before this child */
#define HELD_BOTTOM 24  /* u64 our deque's bottom before the child's push */
#define HELD_SIZE 32

/* worker slice: take_batch's area (tasks.c), at an offset layout.py gives */
#define TAKE_BATCH_MAX 64       /* most refs one take_batch pops */
#define BATCH_COUNT 0           /* u64 refs recorded below (0: no batch in hand) */
#define BATCH_BOTTOM 8          /* u64 the deque's bottom before the batch's pushes */
#define BATCH_REFS 16           /* u64[TAKE_BATCH_MAX] the refs, oldest first */
#define BATCH_AREA_SIZE (BATCH_REFS + 8 * TAKE_BATCH_MAX)

/* Every constant above that layout.py has too: X(name) for each. */
#define PENNY_LAYOUT_CONSTANTS(X)                                                   \
    X(RECORD_SIZE) X(R_STATE) X(R_FN) X(R_FLAGS) X(R_LINK) X(R_PARENT) X(R_BLOB) X(R_BLOB_LEN) X(R_ATTEMPTS) \
    X(R_JOIN) X(R_OWNER) X(R_SPAWNED) X(R_INLINE) X(INLINE_SIZE)                                  \
    X(H_SLEEPERS) X(H_COLLECTOR) X(H_COLLECTOR_SLEEPERS) X(H_TASK_FREE)              \
    X(S_FREE) X(S_QUEUED) X(S_RUNNING) X(S_DONE)                                     \
    X(F_ARGS_BLOB) X(F_RESULT_BLOB) X(F_ARGS_CONSUMED) X(TAKE_BATCH_MAX)     \
    X(BATCH_COUNT) X(BATCH_BOTTOM) X(BATCH_REFS) X(BATCH_AREA_SIZE) X(JOIN_GIVEN) \
    X(HELD_REF) X(HELD_PARENT) X(HELD_SPAWNED) X(HELD_BOTTOM) X(HELD_SIZE)

/* What the atomic accesses to these words need (set_tasks checked it at run
 * time while the values were passed in). */
_Static_assert(RECORD_SIZE % 64 == 0, "records are whole cache lines");
_Static_assert(R_STATE % 8 == 0 && R_LINK % 8 == 0 && R_PARENT % 8 == 0, "u64 record fields are aligned");
_Static_assert(R_FN % 4 == 0 && R_FLAGS % 4 == 0 && R_JOIN % 4 == 0 && R_OWNER % 4 == 0 && R_SPAWNED % 4 == 0 && R_ATTEMPTS % 4 == 0,
               "u32 record fields are aligned");
_Static_assert(R_INLINE + INLINE_SIZE <= RECORD_SIZE && INLINE_SIZE >= 1, "the inline area is in the record");
_Static_assert(H_TASK_FREE % 8 == 0 && H_SLEEPERS % 4 == 0 && H_COLLECTOR % 4 == 0 && H_COLLECTOR_SLEEPERS % 4 == 0,
               "header words are aligned");

#endif /* PENNY_LAYOUT_H */
