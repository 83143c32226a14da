"""Every offset and size of a scheduler's shared region, in one place.

The region is one memfd mapping shared by the main process and its workers::

    +--------------------------------------------------------------+  0
    | header: magic, version, sizes, main pid, flags, sleeper      |
    |         counts, collector word, counters, free-list heads    |
    +--------------------------------------------------------------+  header_size
    | worker 0 slice: state word (futex), id, pid, current task,   |
    |                 stats line, Chase-Lev deque (top | bottom |  |
    |                 mask | ring[DEQUE_CAPACITY])                 |
    | worker 1 slice ...                                           |
    +--------------------------------------------------------------+  injector
    | global injection queue: MPMC ring[TASK_CAPACITY]             |
    +--------------------------------------------------------------+  completions
    | completion queue (workers -> main): MPMC ring[TASK_CAPACITY] |
    +--------------------------------------------------------------+  tasks
    | task table: TASK_CAPACITY records of RECORD_SIZE bytes       |
    +--------------------------------------------------------------+  functions
    | function directory: FUNCTION_SLOTS x name or pickle's block  |
    +--------------------------------------------------------------+  traces
    | trace rings, one per worker: head (own line) | records of    |
    | TRACE_RECORD bytes [trace_events] (trace.py; 0 = none)       |
    +--------------------------------------------------------------+  arena
    | data arena: power-of-two blocks (pickled args and results)   |
    +--------------------------------------------------------------+  large
    | large blocks: page extents (shared arrays, big pickles);     |
    | reserved address space, memory committed per extent         |
    +--------------------------------------------------------------+  size

Every hot word sits on its own 64-byte cache line.  The C core knows the
inner layout of its own structures (deque, ring, stack) and, compiled in from
src/penny/native/layout.h, the record fields, header words, statuses and
flags it uses (checked against the constants here at import); everything it
is told about where things are comes from here (`bind`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from .. import _core

MAGIC = 0x59_4E_4E_45_50_0A_0D_01  # b"\x01\r\n\nPENNY" little-endian-ish; fixed
VERSION = 6
LINE = 64

# ---- header fields (byte offsets from 0) ----
H_MAGIC = 0            # u64
H_VERSION = 8          # u32
H_WORKERS = 12         # u32
H_SIZE = 16            # u64 total region size
H_TASKS = 24           # u32 task capacity
H_DEQUE = 28           # u32 deque capacity
H_ARENA = 32           # u64 arena size
H_MAIN_PID = 40        # u32 pid of the process that owns the scheduler
H_FUNCTIONS = 44       # u32 function slots
H_LARGE = 48           # u64 bytes reserved for large blocks (address space, not memory)
H_SHUTDOWN = 1 * LINE  # u32: 1 once the scheduler is stopping
# The shutdown line holds other rarely written words (workers read them only
# when they flush their counters or go idle, never per task):
H_TRACE = 1 * LINE + 4  # u32: active trace recorders; workers trace while it is non-zero
H_PROGRESS = 1 * LINE + 8  # u64[PROGRESS_SLOTS]: items done, one counter per parallel_for(progress=)
PROGRESS_SLOTS = 7
H_SLEEPERS = 2 * LINE  # u32: workers announced as sleepers
H_COLLECTOR = 3 * LINE          # u32: the collector's parking word (its state)
H_COLLECTOR_SLEEPERS = 3 * LINE + 4  # u32: 1 while the collector is a sleeper
H_FN_COUNT = 4 * LINE  # u32: function directory entries allocated
H_IDLE = 4 * LINE + 32  # u32: workers looking for work (a hint for lazy publication)
H_SCRATCH = 4 * LINE + 40  # u64: written and never read (an unused `current` word for settle)
H_INTERRUPTS = 4 * LINE + 48  # u32: Scheduler.interrupt requests outstanding (runtime/interrupt.py)
H_TASK_FREE = 5 * LINE  # u64: tagged head of the task-record free list
H_ARENA_BUMP = 6 * LINE  # u64: bytes of the arena carved so far
H_ARENA_FREE = 7 * LINE  # u64[ARENA_CLASSES]: tagged heads of block free lists
ARENA_MIN_SHIFT = 6     # smallest block: 64 bytes
ARENA_CLASSES = 48      # classes 2**6 .. 2**53: room for any arena size
_ARENA_END = (H_ARENA_FREE + 8 * ARENA_CLASSES + LINE - 1) // LINE * LINE
# The large-block area (extents of whole pages, see arena.py): a lock, its
# state, and a lock-free stack of extents released while the lock was busy.
H_LARGE_LOCK = _ARENA_END       # u32: pid of the process holding the lock, 0 when free
H_LARGE_TOP = _ARENA_END + 8    # u64: bytes of the large area carved so far
H_LARGE_LAST = _ARENA_END + 16  # u64: size of the extent that ends at the top (0: none)
H_LARGE_FREE = _ARENA_END + 24  # u64: region offset of the first free extent (0: none)
H_LARGE_USED = _ARENA_END + 32  # u64: bytes in allocated extents
H_LARGE_CACHED = _ARENA_END + 40  # u64: bytes of free extents kept committed for reuse
H_LARGE_DEFERRED = _ARENA_END + LINE  # u64: tagged head of extents waiting to be freed
HEADER_SIZE = _ARENA_END + 2 * LINE

# ---- worker slice fields (byte offsets from the slice) ----
W_STATE = 0            # u32 parking word: AWAKE/SLEEPY/SLEEPING/NOTIFIED (futex)
W_ID = 4               # u32
W_PID = 8              # u32 pid of the process serving this slice
W_CURRENT = 16         # u64 ref of the task being run (0 when none)
W_HELD = 24            # the held words of a spawn in progress (HELD_*), read by a supervisor after a death
HELD_REF = 0           # u64 the child's record, taken, perhaps not committed (0: none)
HELD_PARENT = 8        # u64 its parent
HELD_SPAWNED = 16      # u64 the parent's spawned count before this child
HELD_BOTTOM = 24       # u64 our deque's bottom before the child's push
HELD_SIZE = 32
W_PUSH = W_HELD + HELD_SIZE  # u64 the value this worker is pushing on a ring, noted before its claim (mpmc_ring.h)
W_STATS = LINE         # u64 counters, one cache line written by the owner only
STAT_NAMES = (
    "tasks",           # tasks run to completion (or failure)
    "steals_tried",    # steal attempts on other workers' deques
    "steals",          # successful steals
    "injected",        # tasks taken from the global queue
    "parks",           # times the worker went to sleep
    "wakeups",         # times it was woken by a notification
    "busy_ns",         # nanoseconds spent running tasks
    "spilled",         # refs pushed to the global queue because the deque was full
    "spawns",          # children spawned by tasks on this worker
    "published",       # of those, children given a record (others ran as plain calls)
    "suspends",        # tasks suspended in sync (their fiber parked)
    "resumes",         # suspended tasks resumed
    "idle_ns",         # nanoseconds spent looking for work, spinning or parked
)
W_BATCH = W_STATS + (8 * len(STAT_NAMES) + LINE - 1) // LINE * LINE
# ^ take_batch's area: what a worker killed inside take_batch leaves for the
#   supervisor (native/tasks.c, docs/crash-model.md "take_batch")
TAKE_BATCH_MAX = 64    # most refs one take_batch pops
BATCH_COUNT = 0        # u64 refs recorded (0: no batch in hand)
BATCH_BOTTOM = 8       # u64 the deque's bottom before the batch's pushes
BATCH_REFS = 16        # u64[TAKE_BATCH_MAX] the refs popped, oldest first
BATCH_AREA_SIZE = BATCH_REFS + 8 * TAKE_BATCH_MAX
W_DEQUE = W_BATCH + (BATCH_AREA_SIZE + LINE - 1) // LINE * LINE
# ^ Chase-Lev deque (header + ring); the worker's inbox ring follows it

# ---- task record fields (byte offsets from the record) ----
RECORD_SIZE = 128
R_STATE = 0            # u64: status << 32 | generation (one word: CAS checks both)
R_FN = 8               # u32 function id
R_FLAGS = 12           # u32 F_* bits
R_LINK = 16            # u64 free-list link
R_PARENT = 24          # u64 ref of the parent task (0 for a root task)
R_BLOB = 32            # u64 arena offset of pickled args, then of the pickled result
R_BLOB_LEN = 40        # u64 its length in bytes
R_ATTEMPTS = 48        # u32 times the task was started (crash retries)
R_JOIN = 52            # u32 children finished, + JOIN_GIVEN once the task gave its token up
JOIN_GIVEN = 0x8000_0000  # the join word's token bit (suspended in sync, or doomed)
R_OWNER = 56           # u32 worker running the task (where its continuation lives)
R_SPAWNED = 60         # u32 children published (written by the task's own worker only)
R_INTERRUPT = 64       # u32 interrupt request for this life of the record (runtime/interrupt.py; Python only)
R_INLINE = 72          # inline arguments, then the inline result
INLINE_SIZE = RECORD_SIZE - R_INLINE

# task status (the high half of R_STATE)
S_FREE = 0
S_QUEUED = 1
S_RUNNING = 2
S_DONE = 3
S_FAILED = 4           # the result blob is a pickled exception
S_CANCELLED = 5
S_CRASHED = 6          # the worker died while running it
STATUS_NAMES = {S_FREE: "free", S_QUEUED: "queued", S_RUNNING: "running", S_DONE: "done",
                S_FAILED: "failed", S_CANCELLED: "cancelled", S_CRASHED: "crashed"}

# record flags
F_ARGS_BLOB = 1        # arguments are pickled in the arena (else inline)
F_RESULT_BLOB = 2      # the result is pickled in the arena (else inline)
F_ARGS_CONSUMED = 4    # the worker released the arguments: a crash now cannot be retried
F_DEAD = 16            # its worker died: the blob holds its WorkerCrashedError (supervisor.doom)

# ---- arena block header ----
# Every block, small or large, ends its header with the same 16 bytes just
# before its data: magic, size class and a reference count.
B_MAGIC = 0            # u32
B_CLASS = 4            # u32 size class (log2 of the block size), LARGE_CLASS for an extent
B_LINK = 8             # u64 free-list link while the block is free ...
B_REFS = 8             # u64 ... and its reference count while it is allocated
BLOCK_HEADER = 16
BLOCK_MAGIC = 0xB10C_0DE5
LARGE_CLASS = 0xFF

# ---- large extent header (64 bytes at the start of a page-aligned extent) ----
X_SIZE = 0             # u64 bytes of the extent, header included (a multiple of PAGE)
X_PREV = 8             # u64 size of the extent just below (0 for the first)
X_NEXT_FREE = 16       # u64 free list / deferred stack link
X_PREV_FREE = 24       # u64 free list back link
X_STATE = 32           # u32 X_ALLOCATED or X_FREE
X_COMMITTED = 36       # u32 1: its memory is committed (a free extent kept for reuse)
X_ALLOCATED = 1
X_FREE = 2
X_HEADER = 64          # the block header (B_*) occupies its last 16 bytes
PAGE = 4096

# ---- function directory entry ----
FN_ENTRY = 256         # bytes per entry
FN_LEN = 0             # u32 payload length; 0 until the entry is published (release)
FN_KIND = 4            # u32 registry.KIND_NAME or KIND_PICKLE
FN_NAME = 8            # payload: UTF-8 "module:qualname", or u64 arena offset + u64 length of a pickle
FN_NAME_MAX = FN_ENTRY - FN_NAME

# ---- trace ring (one per worker; written by its owner only, read by the main process) ----
T_HEAD = 0             # u64 events written so far (record i is at slot i % trace_events); release store
T_RECORDS = LINE       # the records, each TRACE_RECORD bytes (trace.py: RECORD)
TRACE_RECORD = 32      # u64 time (CLOCK_MONOTONIC ns), u32 kind, u32 a, u64 b, u64 c


def _check_core_layout(core_layout=None) -> None:
    """Refuse a C core built with other constants than these.

    The native core compiles in the record fields, header words, statuses and
    flags it uses (src/penny/native/layout.h) and exports them as
    `_core.LAYOUT`; every one must equal the constant of that name here.
    """
    if core_layout is None:
        core_layout = getattr(_core, "LAYOUT", None)
        if core_layout is None:
            raise ImportError("penny._core has no LAYOUT: it is older than penny.layout; rebuild it")
    ours = globals()
    for name, value in sorted(core_layout.items()):
        if ours.get(name) != value:
            mine = ours.get(name, "no such constant")
            raise ImportError(
                f"penny._core was built with {name} = {value} (src/penny/native/layout.h), "
                f"penny.layout has {mine}: change both together and rebuild")


_check_core_layout()


def _align(n: int, a: int = LINE) -> int:
    return (n + a - 1) // a * a


@dataclass(frozen=True)
class Layout:
    """Where everything lives, for a given set of sizes."""

    workers: int
    deque_capacity: int
    task_capacity: int
    function_slots: int
    arena_size: int
    large_size: int = 0
    trace_events: int = 0  # records per worker trace ring (a power of two), 0: no rings

    def __post_init__(self):
        for name in ("deque_capacity", "task_capacity"):
            v = getattr(self, name)
            if v < 2 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two >= 2, got {v}")
        if not 1 <= self.workers <= 4096:
            raise ValueError(f"workers must be between 1 and 4096, got {self.workers}")
        if self.task_capacity >= 1 << 31:
            raise ValueError("task_capacity must be below 2**31")
        if self.arena_size < 1 << 16 or self.arena_size % LINE:
            raise ValueError("arena_size must be a multiple of 64 and at least 64 KiB")
        if self.large_size < 0 or self.large_size % PAGE:
            raise ValueError("arena_max must be a multiple of 4096 bytes")
        if self.trace_events < 0 or self.trace_events & (self.trace_events - 1):
            raise ValueError(f"trace_events must be 0 or a power of two, got {self.trace_events}")

    # ---- derived sizes and offsets ----
    @cached_property
    def deque_size(self) -> int:
        return _core.DEQUE_HEADER + 8 * self.deque_capacity

    @cached_property
    def slice_size(self) -> int:
        return _align(W_DEQUE + self.deque_size) + self.queue_size

    @property
    def slices(self) -> int:
        return HEADER_SIZE

    def slice(self, w: int) -> int:
        return self.slices + w * self.slice_size

    def deque(self, w: int) -> int:
        return self.slice(w) + W_DEQUE

    def inbox(self, w: int) -> int:
        """Ring of refs of this worker's suspended tasks that may resume."""
        return self.slice(w) + _align(W_DEQUE + self.deque_size)

    def state(self, w: int) -> int:
        return self.slice(w) + W_STATE

    def stats(self, w: int) -> int:
        return self.slice(w) + W_STATS

    @cached_property
    def queue_size(self) -> int:
        return _align(_core.QUEUE_HEADER + 16 * self.task_capacity)

    @cached_property
    def injector(self) -> int:
        return self.slices + self.workers * self.slice_size

    @cached_property
    def completions(self) -> int:
        return self.injector + self.queue_size

    @cached_property
    def tasks(self) -> int:
        return self.completions + self.queue_size

    def record(self, index: int) -> int:
        return self.tasks + index * RECORD_SIZE

    @cached_property
    def functions(self) -> int:
        return self.tasks + self.task_capacity * RECORD_SIZE

    @cached_property
    def traces(self) -> int:
        """Start of the trace rings (page-aligned; nothing when trace_events is 0)."""
        return _align(self.functions + self.function_slots * FN_ENTRY, 4096)

    @cached_property
    def trace_ring_size(self) -> int:
        """Bytes of one worker's trace ring: its head line, then the records."""
        return T_RECORDS + self.trace_events * TRACE_RECORD if self.trace_events else 0

    def trace(self, w: int) -> int:
        """Worker `w`'s trace ring (its head word; records at + T_RECORDS)."""
        return self.traces + w * self.trace_ring_size

    @cached_property
    def arena(self) -> int:
        return _align(self.traces + self.workers * self.trace_ring_size, 4096)

    @cached_property
    def large(self) -> int:
        """Start of the large-block area (page-aligned)."""
        return _align(self.arena + self.arena_size, PAGE)

    @cached_property
    def size(self) -> int:
        return self.large + self.large_size

    def describe(self) -> dict:
        """Offsets and sizes, for docs, tests and `penny info`."""
        return {
            "header": (0, HEADER_SIZE),
            "worker_slices": (self.slices, self.workers * self.slice_size),
            "injector": (self.injector, self.queue_size),
            "completions": (self.completions, self.queue_size),
            "tasks": (self.tasks, self.task_capacity * RECORD_SIZE),
            "functions": (self.functions, self.function_slots * FN_ENTRY),
            "traces": (self.traces, self.workers * self.trace_ring_size),
            "arena": (self.arena, self.arena_size),
            "large": (self.large, self.large_size),
            "size": self.size,
        }


def make_ref(index: int, generation: int) -> int:
    """A task reference: generation in the high 32 bits, index + 1 below (never 0)."""
    return (generation << 32) | (index + 1)


def ref_index(ref: int) -> int:
    return (ref & 0xFFFF_FFFF) - 1


def ref_generation(ref: int) -> int:
    return ref >> 32


def bind(shared: "_core.Shared", layout: Layout) -> None:
    """Tell the C fast paths (inject/claim/finish/collect) where everything is."""
    # Only the per-region geometry: the fixed constants are compiled in
    # (checked against ours by _check_core_layout).
    shared.set_tasks(
        tasks=layout.tasks, task_capacity=layout.task_capacity,
        injector=layout.injector, completions=layout.completions,
        inbox0=layout.inbox(0), state0=layout.state(0),
        slice_size=layout.slice_size, workers=layout.workers,
    )
