"""Tuning knobs, one place, each with the reason for its default.

Tests shrink some of these (a tiny deque to reach the wrap-around and spill
paths); nothing else in the package hard-codes a size or a spin count.
"""

#: Slots in each worker's Chase-Lev ring.  A full deque spills to the global
#: queue, so this bounds nothing but the spill rate; 1024 refs are 8 KiB.
DEQUE_CAPACITY = 1024

#: Task records in the shared table (128 bytes each: 8 MiB).  Submissions
#: beyond this wait in a main-process backlog until records are recycled, so
#: it caps tasks *in flight*, not tasks submitted.  The global queue and the
#: completion queue have as many slots, so neither can ever be full.
TASK_CAPACITY = 1 << 16

#: Bytes of the small-block arena (pickled arguments and results that do not
#: fit inline, blocks up to LARGE_BLOCK).  The region is a sparse memfd:
#: untouched pages cost nothing.  When it is full, requests go to the large area.
ARENA_SIZE = 64 << 20

#: Blocks larger than this (header included) are page extents in the large
#: area: shared arrays and big pickles.  Smaller ones use power-of-two classes.
LARGE_BLOCK = 256 << 10


#: Bytes of freed large extents kept committed for reuse (at most a quarter of
#: arena_max): a block that comes and goes (a big argument or result per
#: task) then costs one copy, not a commit and a release of fresh memory each
#: time.  Beyond this, freed extents hand their memory back to the system.
ARENA_KEEP_COMMITTED = 1 << 30


def default_arena_max() -> int:
    """Address space reserved for large blocks: the machine's physical memory.
    Reserving costs no memory (the region is a sparse memfd); each extent is
    committed when it is allocated and returned to the system when freed."""
    import os

    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        total = 16 << 30
    return max(1 << 26, total) // 4096 * 4096

#: Entries of the shared directory of functions registered by name.
FUNCTION_SLOTS = 4096

#: Polls of the queues before a worker announces itself as a sleeper.  On a
#: 2-core VM a wake-up costs ~20 us and an unbounded spin steals the core the
#: work is waiting for, so the spin is short and yields the CPU.
SPIN_ROUNDS = 64

#: How long a parked worker sleeps before it re-checks that its parent
#: process is alive (seconds).  Workers exit within about this long after
#: the main process is killed.
PARK_TIMEOUT = 0.25

#: At most this many refs are moved from the global queue into a worker's own
#: deque in one go (where other workers can steal them).  Batching keeps the
#: global queue's head line from bouncing on every task.
INJECTOR_BATCH = 32

#: Counters are copied from a worker's locals into shared memory every this
#: many tasks (and whenever the worker goes idle, and before it parks).
STATS_FLUSH_EVERY = 256

#: Seconds a shutdown waits for a worker to exit before terminating it.
JOIN_TIMEOUT = 5.0

#: Tasks and private children run inline (on the syncing task's stack) at
#: most this deep; past it a sync suspends and a fresh fiber runs the child.
#: Each level costs about five Python frames, so 50 stays far below the
#: default recursion limit of 1000 while leaving room for user recursion.
MAX_INLINE_DEPTH = 50

#: Largest chunk `Scheduler.map` picks by itself (items).  Big enough that a
#: chunk's fixed cost (~20 us) is noise next to its items, small enough that
#: the chunks in flight never hold much of a huge input.
MAP_MAX_CHUNK = 8192

#: Records in each worker's trace ring (32 bytes each: 1 MiB per worker).
#: Always reserved, so ``with s.trace():`` works on any scheduler; the region
#: is a sparse memfd, so the pages cost nothing until tracing writes them.
#: A recorder drains the rings every TRACE_POLL seconds; at ~3 events per
#: empty task and ~150k tasks/s per worker that is about 70 ms of headroom.
TRACE_EVENTS = 1 << 15

#: Seconds between two drains of the trace rings by a recorder's thread in
#: the main process (it copies raw bytes; parsing waits for the export).
TRACE_POLL = 0.02

#: Seconds between two updates of a parallel_for progress bar (the main
#: thread reads one shared counter each time; workers never wait for it).
PROGRESS_POLL = 0.1

#: Scheduler.interrupt reaches a worker as this real-time signal (an offset
#: from SIGRTMIN; glibc keeps the first ones for itself, and nothing else in
#: a worker uses real-time signals).  The handler raises TaskInterrupted only
#: inside task code (runtime/interrupt.py).
INTERRUPT_SIGNAL_OFFSET = 6

#: When the signal finds the worker in Penny's own code (between tasks, inside
#: spawn/sync), the worker asks again after this long (seconds), doubling up
#: to INTERRUPT_RETRY_MAX: a task leaves Penny's code within microseconds,
#: and a retry costs a signal and a few loads.
INTERRUPT_RETRY = 0.0005
INTERRUPT_RETRY_MAX = 0.02
