/*
 * ThreadSanitizer stress of Penny's lock-free structures, on the very code the
 * extension is built from: the pure C headers of src/penny/native/ (included
 * below, not copied; no Python.h):
 *
 *   1. the Chase-Lev deque of chase_lev.h (cl_push / cl_pop by one owner
 *      thread, cl_steal by several thieves), with the owner spilling to a
 *      Vyukov ring when its deque is full, as the worker loop does;
 *   2. the bounded MPMC ring of mpmc_ring.h (mq_push / mq_pop), several
 *      producers and consumers; and (2b) the same with one producer and one
 *      consumer that die in the middle of a step (pthread_exit at the ring's
 *      kill points, with the slot claimed), repaired by mq_repair while the
 *      others go on, as a supervisor repairs a dead worker;
 *   3. the tagged Treiber stack of tagged_stack.h (tagged_pop / tagged_push),
 *      the free list of task records and arena blocks: threads pop a node,
 *      write its data, push it back.
 *
 * Each structure is made by its header's own init (cl_init, mq_init), as the
 * extension's Shared.deque_init / queue_init make it.
 *
 * Each item is taken exactly once (checked with a counter per item), and its
 * payload, written with a plain store before the item is published, is read
 * with a plain load by whoever takes it: if the structure's orderings did not
 * make the publication happen-before the take, TSan reports a data race on
 * the payload.  Any TSan report fails the run (scripts/tsan.sh sets
 * halt_on_error=1 exitcode=66); a lost or duplicated item exits with 1.
 *
 * Fences.  TSan does not model atomic_thread_fence: a release fence followed
 * by a relaxed store (cl_push publishes `bottom` that way, the Le et al.
 * pattern) creates no happens-before edge for it, so every steal would be
 * reported as a race on the payload although C11 guarantees the edge.  Below,
 * before the headers are included, atomic_thread_fence still emits the real
 * fence and also marks the thread, and the next relaxed atomic store of that
 * thread is performed as a release store: exactly the C11 edge for the store
 * that follows the fence (slightly stronger for the writes between the fence
 * and the store, of which the headers have none).  Acquire fences are not
 * used by the structures tested here.
 *
 * Build (scripts/tsan.sh does it; no Python headers or library needed):
 *   gcc -fsanitize=thread -O1 -g -std=gnu11 tests/c/deque_tsan.c -lpthread
 */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

/* ---- fence emulation for TSan (see the comment above) -------------------
 * Only under -fsanitize=thread: the plain -O2 stress build (scripts/stress.sh)
 * compiles the headers' atomics exactly as the extension does, so a fence
 * missing from them is missing from the binary (scripts/mutation.sh). */
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PENNY_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define PENNY_TSAN 1
#endif

#ifdef PENNY_TSAN
static _Thread_local int tsan_fence_pending;

static inline void
tsan_fence(memory_order mo)
{
    __atomic_thread_fence(mo);
    if (mo == memory_order_release || mo == memory_order_acq_rel || mo == memory_order_seq_cst)
        tsan_fence_pending = 1;
}

#undef atomic_thread_fence
#define atomic_thread_fence(MO) tsan_fence(MO)

#undef atomic_store_explicit
#define atomic_store_explicit(PTR, VAL, MO)                                              \
    __extension__({                                                                      \
        __auto_type tsan_p_ = (PTR);                                                     \
        __typeof__((void)0, *tsan_p_) tsan_v_ = (VAL);                                   \
        if (tsan_fence_pending && (MO) == memory_order_relaxed) {                        \
            tsan_fence_pending = 0;                                                      \
            __atomic_store(tsan_p_, &tsan_v_, __ATOMIC_RELEASE);                         \
        } else {                                                                         \
            __atomic_store(tsan_p_, &tsan_v_, (MO));                                     \
        }                                                                                \
    })
#endif /* PENNY_TSAN */

/* The ring's kill points (mpmc_ring.h): a thread "dies" there, mid-step,
 * when it has set die_at to that point (section 2b). */
#define KP_PUSH_CLAIMED 1
#define KP_POP_CLAIMED 2
static _Thread_local int die_at;
#define MQ_KILL_POINT(kp)                        \
    do {                                         \
        if ((kp) != 0 && die_at == (kp))         \
            pthread_exit(NULL);                  \
    } while (0)

/* The code under test (pure C; atomics.h and layout.h come with them). */
#include "../../src/penny/native/chase_lev.h"
#include "../../src/penny/native/mpmc_ring.h"
#include "../../src/penny/native/tagged_stack.h"

/* ---- helpers -------------------------------------------------------------- */
static int failures;
static int quiet; /* stress mode: one line per run, not per round */

#define CHECK(cond, ...)                                   \
    do {                                                   \
        if (!(cond)) {                                     \
            fprintf(stderr, "deque_tsan: FAIL: " __VA_ARGS__); \
            fprintf(stderr, "\n");                         \
            failures++;                                    \
        }                                                  \
    } while (0)

static void *
xalloc(size_t n)
{
    void *p = aligned_alloc(64, (n + 63) / 64 * 64);
    if (!p) {
        perror("aligned_alloc");
        exit(2);
    }
    memset(p, 0, (n + 63) / 64 * 64);
    return p;
}

static uint64_t
xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* With the init functions of the headers, as Shared.deque_init / queue_init. */
static char *
new_deque(uint64_t cap)
{
    char *b = xalloc(DQ_RING + 8 * cap);
    cl_init(b, cap);
    return b;
}

static char *
new_queue(uint64_t cap)
{
    char *b = xalloc(Q_SLOTS + 16 * cap);
    mq_init(b, cap);
    return b;
}

/* Items are 1..n; payload[x] is written (plainly) before x is published. */
static uint64_t *payload;
static _Atomic uint32_t *taken;

static inline uint64_t
expected_payload(uint64_t x)
{
    return x * 0x9E3779B97F4A7C15ull + 1;
}

static inline void
produce(uint64_t x)
{
    payload[x] = expected_payload(x); /* plain store: must happen-before the take */
}

static inline void
consume(uint64_t x, uint64_t n, const char *who)
{
    if (x < 1 || x > n) {
        fprintf(stderr, "deque_tsan: FAIL: %s took item %llu, out of range\n", who, (unsigned long long)x);
        failures++;
        return;
    }
    uint64_t v = payload[x]; /* plain load: TSan checks the happens-before */
    if (v != expected_payload(x)) {
        fprintf(stderr, "deque_tsan: FAIL: %s read a wrong payload for item %llu\n", who, (unsigned long long)x);
        failures++;
    }
    atomic_fetch_add_explicit(&taken[x], 1, memory_order_relaxed);
}

static void
check_once(uint64_t n, const char *what)
{
    uint64_t lost = 0, dup = 0;
    for (uint64_t x = 1; x <= n; x++) {
        uint32_t t = atomic_load_explicit(&taken[x], memory_order_relaxed);
        if (t == 0)
            lost++;
        else if (t > 1)
            dup++;
    }
    CHECK(lost == 0 && dup == 0, "%s: %llu items lost, %llu taken more than once (of %llu)", what,
          (unsigned long long)lost, (unsigned long long)dup, (unsigned long long)n);
}

static void
reset_items(uint64_t n)
{
    free(payload);
    free((void *)taken);
    payload = xalloc(8 * (n + 1));
    taken = xalloc(4 * (n + 1));
}

/* ---- 1. Chase-Lev deque: one owner, several thieves, spill ring ----------- */
typedef struct {
    char *dq, *spill;
    uint64_t dmask, qmask, n;
    _Atomic int done;
    _Atomic uint64_t steals, retries, spilled, popped;
} DequeTest;

static void *
owner_main(void *arg)
{
    DequeTest *t = arg;
    uint64_t rng = 0x1234567ull;
    uint64_t next = 1;
    while (next <= t->n) {
        uint64_t r = xorshift(&rng) % 100;
        if (r < 65) { /* push a burst */
            uint64_t burst = 1 + xorshift(&rng) % 8;
            for (uint64_t i = 0; i < burst && next <= t->n; i++, next++) {
                produce(next);
                if (!cl_push(t->dq, t->dmask, next)) {
                    /* full: spill to the global ring, as Worker.push does */
                    while (!mq_push(t->spill, t->qmask, next))
                        sched_yield();
                    atomic_fetch_add(&t->spilled, 1);
                }
            }
        } else if (r < 95) {
            int64_t x = cl_pop(t->dq, t->dmask);
            if (x > 0) {
                consume((uint64_t)x, t->n, "owner pop");
                atomic_fetch_add(&t->popped, 1);
            }
        } else {
            int64_t x = mq_pop(t->spill, t->qmask);
            if (x > 0)
                consume((uint64_t)x, t->n, "owner ring pop");
        }
    }
    /* drain what is left (thieves race us for it) */
    for (;;) {
        int64_t x = cl_pop(t->dq, t->dmask);
        if (x > 0) {
            consume((uint64_t)x, t->n, "owner pop");
            continue;
        }
        x = mq_pop(t->spill, t->qmask);
        if (x > 0) {
            consume((uint64_t)x, t->n, "owner ring pop");
            continue;
        }
        break;
    }
    atomic_store_explicit(&t->done, 1, memory_order_release);
    return NULL;
}

static void *
thief_main(void *arg)
{
    DequeTest *t = arg;
    for (;;) {
        int done = atomic_load_explicit(&t->done, memory_order_acquire);
        int64_t x = cl_steal(t->dq, t->dmask);
        if (x > 0) {
            consume((uint64_t)x, t->n, "thief steal");
            atomic_fetch_add(&t->steals, 1);
            continue;
        }
        if (x == R_RETRY) {
            atomic_fetch_add(&t->retries, 1);
            continue;
        }
        x = mq_pop(t->spill, t->qmask);
        if (x > 0) {
            consume((uint64_t)x, t->n, "thief ring pop");
            continue;
        }
        if (done)
            break; /* the owner drained, and both are empty after it */
        sched_yield();
    }
    return NULL;
}

static void
deque_round(uint64_t cap, uint64_t n, int thieves)
{
    DequeTest t;
    memset(&t, 0, sizeof t);
    t.dq = new_deque(cap);
    t.dmask = cap - 1;
    t.spill = new_queue(256);
    t.qmask = 255;
    t.n = n;
    reset_items(n);
    pthread_t th[16];
    for (int i = 0; i < thieves; i++)
        pthread_create(&th[i], NULL, thief_main, &t);
    pthread_t ow;
    pthread_create(&ow, NULL, owner_main, &t);
    pthread_join(ow, NULL);
    for (int i = 0; i < thieves; i++)
        pthread_join(th[i], NULL);
    char what[96];
    snprintf(what, sizeof what, "deque cap %llu, %d thieves", (unsigned long long)cap, thieves);
    check_once(n, what);
    int64_t top = atomic_load((ai64 *)(t.dq + DQ_TOP)), bottom = atomic_load((ai64 *)(t.dq + DQ_BOTTOM));
    CHECK(top == bottom, "%s: deque not empty at the end (top %lld, bottom %lld)", what, (long long)top,
          (long long)bottom);
    if (!quiet)
        printf("deque_tsan: %-28s %7llu items: %llu stolen (%llu lost races), %llu popped, %llu spilled\n", what,
           (unsigned long long)n, (unsigned long long)t.steals, (unsigned long long)t.retries,
           (unsigned long long)t.popped, (unsigned long long)t.spilled);
    free(t.dq);
    free(t.spill);
}

/* ---- 2. Vyukov MPMC ring ---------------------------------------------------- */
typedef struct {
    char *q;
    uint64_t mask, n;
    int producers;
    _Atomic uint64_t next;      /* next item to produce */
    _Atomic uint64_t consumed;
    _Atomic uint64_t full;
} QueueTest;

static void *
producer_main(void *arg)
{
    QueueTest *t = arg;
    for (;;) {
        uint64_t x = atomic_fetch_add(&t->next, 1);
        if (x > t->n)
            break;
        produce(x);
        while (!mq_push(t->q, t->mask, x)) {
            atomic_fetch_add(&t->full, 1);
            sched_yield();
        }
    }
    return NULL;
}

static void *
consumer_main(void *arg)
{
    QueueTest *t = arg;
    while (atomic_load(&t->consumed) < t->n) {
        int64_t x = mq_pop(t->q, t->mask);
        if (x > 0) {
            consume((uint64_t)x, t->n, "ring consumer");
            atomic_fetch_add(&t->consumed, 1);
        } else {
            sched_yield();
        }
    }
    return NULL;
}

static void
queue_round(uint64_t cap, uint64_t n, int producers, int consumers)
{
    QueueTest t;
    memset(&t, 0, sizeof t);
    t.q = new_queue(cap);
    t.mask = cap - 1;
    t.n = n;
    atomic_store(&t.next, 1);
    reset_items(n);
    pthread_t th[32];
    int k = 0;
    for (int i = 0; i < consumers; i++)
        pthread_create(&th[k++], NULL, consumer_main, &t);
    for (int i = 0; i < producers; i++)
        pthread_create(&th[k++], NULL, producer_main, &t);
    for (int i = 0; i < k; i++)
        pthread_join(th[i], NULL);
    char what[96];
    snprintf(what, sizeof what, "ring cap %llu, %dP/%dC", (unsigned long long)cap, producers, consumers);
    check_once(n, what);
    CHECK(mq_pop(t.q, t.mask) == R_EMPTY, "%s: ring not empty at the end", what);
    printf("deque_tsan: %-28s %7llu items: %llu pushes found it full\n", what, (unsigned long long)n,
           (unsigned long long)t.full);
    free(t.q);
}

/* ---- 2b. the ring with a producer and a consumer that die mid-step -------- */
#define DEAD_PRODUCER 1  /* the takers of the two that die */
#define DEAD_CONSUMER 2
static int deaths;  /* dying threads that did die mid-step, over the rounds */
typedef struct {
    QueueTest q;
    a64 note;              /* the dying producer's note (W_PUSH in a worker slice) */
    uint64_t die_after;    /* steps each dying thread finishes before it dies */
} RepairTest;

static void *
dying_producer_main(void *arg)
{
    RepairTest *t = arg;
    for (uint64_t i = 0;; i++) {
        uint64_t x = atomic_fetch_add(&t->q.next, 1);
        if (x > t->q.n)
            return (void *)1;  /* the round ended first: nothing left to die with */
        produce(x);
        if (i == t->die_after)
            die_at = KP_PUSH_CLAIMED;  /* this push claims its slot and dies */
        while (mq_push_as(t->q.q, t->q.mask, x, DEAD_PRODUCER, &t->note, KP_PUSH_CLAIMED) != 1)
            sched_yield();
    }
}

static void *
dying_consumer_main(void *arg)
{
    RepairTest *t = arg;
    for (uint64_t i = 0; atomic_load(&t->q.consumed) < t->q.n;) {
        if (i == t->die_after)
            die_at = KP_POP_CLAIMED;  /* the next pop claims its item and dies */
        int64_t x = mq_pop_as(t->q.q, t->q.mask, DEAD_CONSUMER, KP_POP_CLAIMED);
        if (x > 0) {
            consume((uint64_t)x, t->q.n, "ring consumer (to die)");
            atomic_fetch_add(&t->q.consumed, 1);
            i++;
        } else {
            sched_yield();
        }
    }
    return (void *)1;  /* the round ended first */
}

/* One round: live producers and consumers, one producer and one consumer
 * that die with a slot claimed; once each is gone (joined: dead), the main
 * thread repairs its claims while the others go on: the dead producer's
 * slot is published with its noted item, the dead consumer's released and
 * its item taken by us.  Every item must still be taken exactly once, and
 * the ring must go on (the live threads pass the dead slots' next laps). */
static void
repair_round(uint64_t cap, uint64_t n, int producers, int consumers, uint64_t die_after)
{
    RepairTest t;
    memset(&t, 0, sizeof t);
    t.q.q = new_queue(cap);
    t.q.mask = cap - 1;
    t.q.n = n;
    t.die_after = die_after;
    atomic_store(&t.q.next, 1);
    reset_items(n);
    pthread_t th[32], dp, dc;
    int k = 0;
    for (int i = 0; i < consumers; i++)
        pthread_create(&th[k++], NULL, consumer_main, &t.q);
    for (int i = 0; i < producers; i++)
        pthread_create(&th[k++], NULL, producer_main, &t.q);
    pthread_create(&dc, NULL, dying_consumer_main, &t);
    pthread_create(&dp, NULL, dying_producer_main, &t);
    /* Each is repaired as soon as it is gone (joined), as the supervisor
     * does for each death: either may block the other until then (a dead
     * consumer's slot makes the ring full one lap later, a dead producer's
     * holds back every item behind it). */
    int producer_gone = 0, consumer_gone = 0;
    int64_t m = 0;
    uint64_t held[4];
    while (!producer_gone || !consumer_gone) {
        void *ret;
        if (!producer_gone && pthread_tryjoin_np(dp, &ret) == 0) {
            producer_gone = 1;
            deaths += ret == NULL;  /* pthread_exit at the kill point */
            mq_repair(t.q.q, t.q.mask, DEAD_PRODUCER, atomic_load_explicit(&t.note, memory_order_relaxed), NULL, 0);
        }
        if (!consumer_gone && pthread_tryjoin_np(dc, &ret) == 0) {
            consumer_gone = 1;
            deaths += ret == NULL;
            m = mq_repair(t.q.q, t.q.mask, DEAD_CONSUMER, 0, held, 4);
            CHECK(m <= 1, "ring repair: the dead consumer held %lld items", (long long)m);
            for (int64_t i = 0; i < m; i++) {
                consume(held[i], n, "ring repair");
                atomic_fetch_add(&t.q.consumed, 1);
            }
        }
        sched_yield();
    }
    for (int i = 0; i < k; i++)
        pthread_join(th[i], NULL);
    char what[96];
    snprintf(what, sizeof what, "ring cap %llu, %dP/%dC + 2 dying", (unsigned long long)cap, producers, consumers);
    check_once(n, what);
    CHECK(mq_pop(t.q.q, t.q.mask) == R_EMPTY, "%s: ring not empty at the end", what);
    free(t.q.q);
}

static void
repair_rounds(uint64_t cap, uint64_t n, int rounds)
{
    deaths = 0;
    for (int r = 0; r < rounds && !failures; r++)
        repair_round(cap, n, 2, 2, (uint64_t)r % 7);
    CHECK(deaths > rounds, "ring repair: only %d of %d threads died mid-step", deaths, 2 * rounds);
    printf("deque_tsan: ring cap %-4llu 2P/2C + 2 dying %5d rounds, %d deaths mid-step: every item taken once\n",
           (unsigned long long)cap, rounds, deaths);
}

/* ---- 3. tagged Treiber stack ------------------------------------------------ */
#define NODE_STRIDE 64
#define NODE_LINK 16   /* as R_LINK in a task record */
#define NODE_DATA 32   /* plain (non-atomic) data owned by whoever popped the node */

typedef struct {
    a64 head;
    char *base;
    ptrdiff_t count;
    uint64_t rounds;
    _Atomic uint64_t empty;
} StackTest;

static void *
stack_main(void *arg)
{
    StackTest *t = arg;
    uint64_t me = (uint64_t)pthread_self();
    for (uint64_t i = 0; i < t->rounds; i++) {
        ptrdiff_t idx = tagged_pop(&t->head, t->base, NODE_STRIDE, NODE_LINK, t->count);
        if (idx == TS_CORRUPT) {
            fprintf(stderr, "deque_tsan: FAIL: stack head names no node\n");
            failures++;
            return NULL;
        }
        if (idx < 0) {
            atomic_fetch_add(&t->empty, 1);
            sched_yield();
            continue;
        }
        uint64_t *data = (uint64_t *)(t->base + idx * NODE_STRIDE + NODE_DATA);
        /* The previous owner's plain writes must be visible (pop acquires). */
        if (data[1] != data[0] * 3 + 1) {
            fprintf(stderr, "deque_tsan: FAIL: stack node %td has torn data\n", idx);
            failures++;
        }
        data[0] = me + i;
        data[1] = (me + i) * 3 + 1;
        tagged_push(&t->head, t->base, NODE_STRIDE, NODE_LINK, idx); /* release */
    }
    return NULL;
}

static void
stack_round(ptrdiff_t count, uint64_t rounds, int threads)
{
    StackTest t;
    memset(&t, 0, sizeof t);
    t.base = xalloc(NODE_STRIDE * count);
    t.count = count;
    t.rounds = rounds;
    for (ptrdiff_t i = 0; i < count; i++) {
        uint64_t *data = (uint64_t *)(t.base + i * NODE_STRIDE + NODE_DATA);
        data[0] = 0;
        data[1] = 1;
        tagged_push(&t.head, t.base, NODE_STRIDE, NODE_LINK, i);
    }
    pthread_t th[16];
    for (int i = 0; i < threads; i++)
        pthread_create(&th[i], NULL, stack_main, &t);
    for (int i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    /* every node is back exactly once */
    char *seen = xalloc((size_t)count);
    ptrdiff_t got = 0, idx;
    while ((idx = tagged_pop(&t.head, t.base, NODE_STRIDE, NODE_LINK, count)) >= 0) {
        CHECK(!seen[idx], "stack: node %td on the free list twice", idx);
        seen[idx] = 1;
        got++;
        CHECK(got <= count, "stack: more nodes than were pushed (a cycle)");
        if (got > count)
            break;
    }
    CHECK(got == count, "stack: %td of %td nodes came back", got, count);
    printf("deque_tsan: %-28s %7llu pops:  %llu found it empty\n", "stack", (unsigned long long)rounds * threads,
           (unsigned long long)t.empty);
    free(seen);
    free(t.base);
}

static void
on_alarm(int sig)
{
    static const char msg[] = "deque_tsan: FAIL: no progress within the time limit (a livelock or a lost item)\n";
    (void)sig;
    (void)!write(2, msg, sizeof msg - 1);
    _exit(3);
}

#include <time.h>

static double
now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The stress mode of the plain -O2 build (scripts/stress.sh, mutation.sh):
 * the deque with capacity 2 (every push and pop near the last-element race)
 * and 3 thieves, round after round for `seconds`, stopping at the first
 * round that loses or duplicates an item.  Store-load reordering (the
 * store-buffering shape in cl_pop and cl_steal, which the SeqCst fences
 * forbid) is real on x86 hardware and shows here; TSan cannot see it. */
static int
stress(double seconds, uint64_t items)
{
    double start = now();
    uint64_t rounds = 0;
    alarm((unsigned)(seconds + 120));
    while (now() - start < seconds) {
        deque_round(2, items, 3);
        rounds++;
        if (failures) {
            fprintf(stderr, "deque_stress: FAILED in round %llu after %.1f s (%llu items per round)\n",
                    (unsigned long long)rounds, now() - start, (unsigned long long)items);
            return 1;
        }
    }
    printf("deque_stress: %llu rounds of %llu items in %.1f s, every item taken exactly once\n",
           (unsigned long long)rounds, (unsigned long long)items, now() - start);
    return 0;
}

int
main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "stress") == 0) {
        signal(SIGALRM, on_alarm);
        quiet = 1;
        double seconds = argc > 2 ? strtod(argv[2], NULL) : 10.0;
        uint64_t items = argc > 3 ? strtoull(argv[3], NULL, 10) : 20000;
        return stress(seconds, items ? items : 20000);
    }
    uint64_t scale = argc > 1 ? strtoull(argv[1], NULL, 10) : 1;
    if (scale < 1)
        scale = 1;
    /* A structure that loses or duplicates items can leave a thread waiting
     * forever: fail instead of hanging (generous: a run takes seconds). */
    signal(SIGALRM, on_alarm);
    alarm((unsigned)(120 * scale));
    deque_round(2, 20000 * scale, 3);      /* tiny ring: constant full / last-item races */
    deque_round(64, 100000 * scale, 3);
    deque_round(1024, 100000 * scale, 2);
    queue_round(4, 20000 * scale, 2, 2);   /* tiny ring: constant full / empty */
    queue_round(256, 100000 * scale, 3, 3);
    repair_rounds(4, 2000, 100 * (int)scale);  /* tiny ring: the live pass the dead slots' next laps */
    repair_rounds(64, 5000, 50 * (int)scale);
    stack_round(2, 20000 * scale, 4);      /* fewer nodes than threads: ABA pressure, empty pops */
    stack_round(256, 20000 * scale, 3);
    free(payload);
    free((void *)taken);
    if (failures) {
        fprintf(stderr, "deque_tsan: %d check(s) failed\n", failures);
        return 1;
    }
    printf("deque_tsan: all checks passed\n");
    return 0;
}
