/*
 * futex.h: futex wait/wake on a shared 32-bit word, and the waker's half of
 * the sleeper protocol (docs/protocols.md): notify_word.  No Python.h; needs
 * _GNU_SOURCE (or _DEFAULT_SOURCE) for syscall(), which Python.h defines.
 *
 * The futexes are shared, not FUTEX_PRIVATE: waiters and wakers are
 * different processes mapping the same region.  The waiting side (with the
 * GIL released and signals handled) is Shared.futex_wait in ops.c.
 *
 * Memory ordering of a wake-up (parking.py has the sleeper's side).  A
 * sleeper announces itself (SeqCst store of SLEEPY to its word, then SeqCst
 * increment of the sleeper count, then a SeqCst fence) and re-checks for work
 * before it sleeps;
 * a waker publishes work, then issues a SeqCst fence before it reads the
 * sleeper count (notify_one, below: Shared.notify and the C fast paths).  Either the
 * sleeper sees the work or the waker sees it counted ("no lost wake-up").
 * notify_word's AcqRel CAS makes the waker's publication happen-before the
 * sleeper's wake-up.
 */
#ifndef PENNY_FUTEX_H
#define PENNY_FUTEX_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "atomics.h"

/* Sleeper states of a parking word (docs/protocols.md). */
enum { ST_AWAKE = 0, ST_SLEEPY = 1, ST_SLEEPING = 2, ST_NOTIFIED = 3 };

/* futex_wait(off, expected, timeout=None) -> 0 woken (or spurious),
 * 1 the word was not `expected`, 2 timed out.  Returns early on a signal
 * after running Python's signal handlers (so Ctrl-C raises). */
enum { FW_WOKEN = 0, FW_CHANGED = 1, FW_TIMEOUT = 2 };

static inline long
futex(a32 *uaddr, int op, uint32_t val, const struct timespec *ts)
{
    /* Not FUTEX_PRIVATE_FLAG: waiters and wakers are different processes. */
    return syscall(SYS_futex, (uint32_t *)uaddr, op, val, ts, NULL, 0);
}

static inline int
futex_wake_n(a32 *p, int n)
{
    long r = futex(p, FUTEX_WAKE, (uint32_t)n, NULL);
    return r < 0 ? 0 : (int)r;
}

/* ---- waking a sleeper ------------------------------------------------------
 * notify_word: move one parking word from SLEEPY or SLEEPING to NOTIFIED,
 * waking its futex if it was SLEEPING.  A failed CAS reloads the word, and we
 * retry while it still reads SLEEPY or SLEEPING: the sleeper may have moved
 * SLEEPY -> SLEEPING between our load and our CAS, and giving up then would
 * lose the wake-up.  Returns 1 if we notified it. */
static inline int
notify_word(a32 *st)
{
    /* Acquire: pairs with the sleeper's SeqCst store of SLEEPY. */
    uint32_t v = atomic_load_explicit(st, memory_order_acquire);
    while (v == ST_SLEEPING || v == ST_SLEEPY) {
        /* AcqRel: our publication happens-before the sleeper's wake-up. */
        if (atomic_compare_exchange_weak_explicit(st, &v, ST_NOTIFIED, memory_order_acq_rel,
                                                  memory_order_acquire)) {
            if (v == ST_SLEEPING)
                futex_wake_n(st, 1);
            return 1;
        }
    }
    return 0;
}

/* notify_one: the waker's whole half of the protocol.  `base` + states is a
 * table of `count` parking words `stride` bytes apart, `base` + sleepers the
 * count of announced sleepers; call after publishing work.  Wakes the first
 * sleeper found from index `start` on; returns its index, or -1 if nobody
 * was asleep.  Used by Shared.notify (Python) and by every C fast path that
 * publishes work (tasks.c): one implementation. */
static inline ptrdiff_t
notify_one(char *base, ptrdiff_t sleepers, ptrdiff_t states, ptrdiff_t stride, ptrdiff_t count,
           ptrdiff_t start)
{
    /* SeqCst fence: orders the publication of the work (before this call)
     * before the load of the sleeper count, against the sleeper's SeqCst
     * fence between its increment and its re-check for work (fence-fence:
     * an SC RMW alone would not do, docs/protocols.md).  Either it sees our work or
     * we see it counted (docs/protocols.md, "no lost wake-up"). */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit((a32 *)(base + sleepers), memory_order_relaxed) == 0)
        return -1;
    for (ptrdiff_t i = 0; i < count; i++) {
        ptrdiff_t w = (start + i) % count;
        if (w < 0)
            w += count;
        if (notify_word((a32 *)(base + states + w * stride)))
            return w;
    }
    return -1;
}

#endif /* PENNY_FUTEX_H */
