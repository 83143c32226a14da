"""Fuzz driver for one `_core` entry point (run by tests/test_fuzz_core.py in a
subprocess, so a segfault fails that test instead of killing pytest).

    python -m tests.fuzz_core_driver ENTRY SECONDS SEED

Each example makes a real region (a Layout's size, its rings, deques and free
list initialised and bound with set_tasks, as Region.create does), scribbles
random words over it where the core looks (structure headers, ring slots,
task records, the free-list head, the sleeper words; values chosen to be
nasty: 0, -1, huge masks, refs of every shape), then calls ENTRY with
arguments drawn from the same nasty pools.  Any Python exception from the
call is fine (that is the point: a clear error); a signal is not, and
neither is SystemError (a C function that failed without saying why).
Hypothesis draws the examples; SEED fixes them for CI; the driver keeps
drawing fresh batches until SECONDS have passed.
"""

from __future__ import annotations

import mmap
import sys
import time

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from penny import _core
from penny.shm import layout as L
from penny.shm.layout import Layout

LAY = Layout(workers=2, deque_capacity=4, task_capacity=8, function_slots=4, arena_size=1 << 16)
TASK_FREE = L.H_TASK_FREE


def _structures():
    offs = {0, L.H_SLEEPERS, L.H_COLLECTOR, L.H_COLLECTOR_SLEEPERS, TASK_FREE, LAY.injector, LAY.completions,
            LAY.tasks, LAY.size - 8, LAY.size - 64}
    for w in range(LAY.workers):
        offs |= {LAY.deque(w), LAY.inbox(w), LAY.state(w)}
    return sorted(offs)


STRUCTS = _structures()

# Where a scribble lands: a structure header word, a slot, a record field.
_hot = []
for base in STRUCTS:
    _hot += [base + d for d in (0, 64, 128, 192, 200, 208, 216) if 0 <= base + d <= LAY.size - 8]
for i in range(LAY.task_capacity):
    rec = LAY.tasks + i * L.RECORD_SIZE
    _hot += [rec + f for f in (L.R_STATE, L.R_FN, L.R_LINK, L.R_PARENT, L.R_ATTEMPTS, L.R_INLINE,
                               L.R_INLINE + 8, L.R_INLINE + 56)]
HOT = sorted({o - o % 8 for o in _hot})

U64 = 2**64


def _refs():
    out = []
    for gen in (0, 1, 0x7FFF_FFFF, 0xFFFF_FFFF):
        for idx in (0, 1, LAY.task_capacity, LAY.task_capacity + 1, 0xFFFF_FFFF, 2**31):
            out.append((gen << 32 | idx) % U64)
    return out


NASTY = sorted({0, 1, 2, 3, 7, 8, 255, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**60 - 1, 2**61 - 1, 2**62,
                2**63 - 1, 2**63, U64 - 1, U64 - 2, (3 << 32) | 1, (1 << 32) | 5, (2 << 32) | 8} | set(_refs()))

words = st.one_of(st.sampled_from(NASTY), st.integers(0, U64 - 1))
scribbles = st.lists(st.tuples(st.one_of(st.sampled_from(HOT), st.integers(0, LAY.size // 8 - 1).map(lambda i: 8 * i)),
                               words), max_size=12)
# A whole header at once (its positions and mask together: an overflowing
# mask only bites with a far position).
RINGS = [LAY.injector, LAY.completions] + [LAY.inbox(w) for w in range(LAY.workers)] + \
    [LAY.deque(w) for w in range(LAY.workers)]
masks = st.one_of(st.sampled_from([2**61 - 1, 2**60 - 1, 2**62 - 1, 2**63 - 1, U64 - 1, 0, 3, 7]), words)
headers = st.lists(st.tuples(st.sampled_from(RINGS), words, words, masks), max_size=2)
offsets = st.one_of(st.sampled_from(STRUCTS), st.sampled_from(HOT),
                    st.integers(-2**63, 2**63 - 1), st.integers(-8, LAY.size + 8))
ints = st.one_of(st.sampled_from(NASTY), st.integers(-2**63, U64 - 1), st.integers(-3, 300))
small_values = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                         st.text(max_size=40), st.binary(max_size=80))
seqs = st.one_of(st.tuples(), st.lists(small_values, max_size=6).map(tuple), st.lists(small_values, max_size=6),
                 small_values)
orders = st.one_of(st.integers(0, 5), st.integers(-2, 9))


def new_region():
    m = mmap.mmap(-1, LAY.size)
    s = _core.Shared(m)
    for w in range(LAY.workers):
        s.deque_init(LAY.deque(w), LAY.deque_capacity)
        s.queue_init(LAY.inbox(w), LAY.task_capacity)
    s.queue_init(LAY.injector, LAY.task_capacity)
    s.queue_init(LAY.completions, LAY.task_capacity)
    L.bind(s, LAY)
    # The free list with every record on it, as TaskTable makes it.
    for i in reversed(range(LAY.task_capacity)):
        s.stack_push(TASK_FREE, LAY.tasks, L.RECORD_SIZE, L.R_LINK, LAY.task_capacity, i)
    return m, s


def _prime(s, d):
    """Some real traffic first, so rings and records hold plausible values."""
    for _ in range(d.draw(st.integers(0, 4))):
        s.inject(1, (1, "x"), _Fut(), {})
    for _ in range(d.draw(st.integers(0, 3))):
        s.deque_push(LAY.deque(0), d.draw(st.integers(1, 2**40)))
    for _ in range(d.draw(st.integers(0, 3))):
        s.queue_push(LAY.completions, d.draw(st.sampled_from(_refs() + [1, 2, 3])) or 1)


class _Fut:
    _ref = None


def _queue(d):
    return d.draw(st.one_of(st.sampled_from([LAY.injector, LAY.completions, LAY.inbox(0), LAY.inbox(1)]), offsets))


def _deque(d):
    return d.draw(st.one_of(st.sampled_from([LAY.deque(0), LAY.deque(1)]), offsets))


def _cur(d):
    return d.draw(st.one_of(st.just(LAY.size - 64), offsets))


def _held(d):  # the held words of a spawn
    return d.draw(st.one_of(st.sampled_from([LAY.slice(0) + L.W_HELD, LAY.size - L.HELD_SIZE]), offsets))


def _record(d):  # a record's offset, for the token operations
    return d.draw(st.one_of(st.integers(0, LAY.task_capacity - 1).map(lambda i: LAY.tasks + i * L.RECORD_SIZE),
                            offsets))


def _batch(d):  # take_batch's area
    return d.draw(st.one_of(st.just(LAY.size - L.BATCH_AREA_SIZE), offsets))


# Each entry point: how to call it with drawn arguments.
CALLS = {
    "load32": lambda s, d: s.load32(d.draw(offsets), d.draw(orders)),
    "load64": lambda s, d: s.load64(d.draw(offsets), d.draw(orders)),
    "store32": lambda s, d: s.store32(d.draw(offsets), d.draw(ints), d.draw(orders)),
    "store64": lambda s, d: s.store64(d.draw(offsets), d.draw(ints), d.draw(orders)),
    "cas32": lambda s, d: s.cas32(d.draw(offsets), d.draw(ints), d.draw(ints), d.draw(orders)),
    "cas64": lambda s, d: s.cas64(d.draw(offsets), d.draw(ints), d.draw(ints), d.draw(orders)),
    "fetch_add32": lambda s, d: s.fetch_add32(d.draw(offsets), d.draw(ints), d.draw(orders)),
    "fetch_add64": lambda s, d: s.fetch_add64(d.draw(offsets), d.draw(ints), d.draw(orders)),
    "exchange32": lambda s, d: s.exchange32(d.draw(offsets), d.draw(ints), d.draw(orders)),
    "exchange64": lambda s, d: s.exchange64(d.draw(offsets), d.draw(ints), d.draw(orders)),
    "fence": lambda s, d: _core.fence(d.draw(orders)),
    "futex_wait": lambda s, d: s.futex_wait(d.draw(offsets), d.draw(ints),
                                            d.draw(st.one_of(st.floats(max_value=0.002), st.just(-1.0),
                                                             st.just(float("nan"))))),
    "futex_wake": lambda s, d: s.futex_wake(d.draw(offsets), d.draw(ints)),
    "deque_init": lambda s, d: s.deque_init(d.draw(offsets), d.draw(ints)),
    "deque_push": lambda s, d: s.deque_push(_deque(d), d.draw(ints)),
    "deque_pop": lambda s, d: s.deque_pop(_deque(d), _cur(d)),
    "deque_steal": lambda s, d: s.deque_steal(_deque(d), _cur(d)),
    "deque_len": lambda s, d: s.deque_len(_deque(d)),
    "queue_init": lambda s, d: s.queue_init(d.draw(offsets), d.draw(ints)),
    "queue_push": lambda s, d: s.queue_push(_queue(d), d.draw(ints)),
    "queue_pop": lambda s, d: s.queue_pop(_queue(d)),
    "queue_pop_many": lambda s, d: s.queue_pop_many(_queue(d), d.draw(ints)),
    "queue_len": lambda s, d: s.queue_len(_queue(d)),
    # A worker id the region's claims may name (0..3), or any int; a fill
    # that is a ref, a tombstone or anything.
    "queue_repair": lambda s, d: s.queue_repair(_queue(d), d.draw(st.one_of(st.integers(0, 3), ints)),
                                                d.draw(st.one_of(st.sampled_from(_refs() + [0]), ints))),
    "set_taker": lambda s, d: s.set_taker(d.draw(st.one_of(st.integers(0, 3), ints)),
                                          d.draw(st.one_of(st.just(LAY.slice(0) + L.W_PUSH), offsets))),
    "stack_push": lambda s, d: s.stack_push(d.draw(offsets), d.draw(offsets), d.draw(ints), d.draw(ints),
                                            d.draw(ints), d.draw(ints)),
    "stack_pop": lambda s, d: s.stack_pop(d.draw(st.one_of(st.just(TASK_FREE), offsets)),
                                          d.draw(st.one_of(st.just(LAY.tasks), offsets)),
                                          d.draw(st.one_of(st.just(L.RECORD_SIZE), ints)),
                                          d.draw(st.one_of(st.just(L.R_LINK), ints)),
                                          d.draw(st.one_of(st.just(LAY.task_capacity), ints))),
    "notify": lambda s, d: s.notify(d.draw(st.one_of(st.just(L.H_SLEEPERS), offsets)),
                                    d.draw(st.one_of(st.just(LAY.state(0)), offsets)),
                                    d.draw(st.one_of(st.just(LAY.slice_size), ints)), d.draw(ints), d.draw(ints)),
    "pack_inline": lambda s, d: s.pack_inline(d.draw(offsets), d.draw(ints), d.draw(seqs)),
    "unpack_inline": lambda s, d: s.unpack_inline(d.draw(st.one_of(st.sampled_from(HOT), offsets)), d.draw(ints)),
    "write_bytes": lambda s, d: s.write_bytes(d.draw(offsets), d.draw(st.binary(max_size=64))),
    "read_bytes": lambda s, d: s.read_bytes(d.draw(offsets), d.draw(ints)),
    "bump": lambda s, d: s.bump(d.draw(offsets), d.draw(ints), d.draw(ints)),
    "set_tasks": lambda s, d: s.set_tasks(
        tasks=d.draw(st.one_of(st.just(LAY.tasks), offsets)),
        task_capacity=d.draw(st.one_of(st.just(LAY.task_capacity), st.integers(-2**63, 2**63 - 1))),
        injector=d.draw(st.one_of(st.just(LAY.injector), offsets)),
        completions=d.draw(st.one_of(st.just(LAY.completions), offsets)),
        inbox0=d.draw(st.one_of(st.just(LAY.inbox(0)), offsets)),
        state0=d.draw(st.one_of(st.just(LAY.state(0)), offsets)),
        slice_size=d.draw(st.one_of(st.just(LAY.slice_size), st.integers(-2**63, 2**63 - 1))),
        workers=d.draw(st.one_of(st.just(LAY.workers), st.integers(-2**63, 2**63 - 1)))),
    "inject": lambda s, d: s.inject(d.draw(ints), d.draw(seqs), _Fut(), {}),
    "claim": lambda s, d: s.claim(d.draw(ints), _cur(d), d.draw(ints)),
    "finish": lambda s, d: s.finish(d.draw(ints), d.draw(small_values), _cur(d)),
    "settle": lambda s, d: s.settle(d.draw(ints), d.draw(ints), _cur(d)),
    "publish": lambda s, d: s.publish(d.draw(ints), d.draw(ints)),
    "enqueue": lambda s, d: s.enqueue(d.draw(ints), d.draw(ints), d.draw(ints), _Fut(), {}),
    "enqueue_child": lambda s, d: s.enqueue_child(d.draw(ints), d.draw(ints), d.draw(ints), d.draw(ints),
                                                  _deque(d), _held(d)),
    "spawn": lambda s, d: s.spawn(d.draw(ints), d.draw(seqs), d.draw(ints), _deque(d), _held(d)),
    "free_task": lambda s, d: s.free_task(d.draw(ints)),
    "pop_child": lambda s, d: s.pop_child(_deque(d), d.draw(ints), _cur(d)),
    "collect": lambda s, d: s.collect(d.draw(st.integers(-2, 64)), {}),
    "take_batch": lambda s, d: s.take_batch(_queue(d), d.draw(ints), _deque(d), _cur(d), _batch(d)),
    "alloc_child": lambda s, d: s.alloc_child(_held(d)),
    "token_give": lambda s, d: s.token_give(_record(d)),
    "token_take": lambda s, d: s.token_take(_record(d)),
    "release": lambda s, d: (s.release(), s.load32(0)),
    "Lease": lambda s, d: _lease(s, d),
    "ForkCore": lambda s, d: _forkcore(s, d),
    "Handle": lambda s, d: _handle(d),
    "sync": lambda s, d: _core.sync(d.draw(st.one_of(st.none(), st.integers(), st.just(_core.Handle(0, abs, (1,), None, 0))))),
    "set_fallbacks": lambda s, d: _fallbacks(d),
    "buffer_info": lambda s, d: _core.buffer_info(d.draw(st.one_of(st.binary(max_size=8), st.none(),
                                                                   st.just(bytearray(8))))),
}


def _lease(s, d):
    lease = _core.Lease(s, d.draw(offsets), d.draw(ints), d.draw(st.booleans()), None)
    v = memoryview(lease)
    if len(v) and not v.readonly:
        v[0] = 1
        v[-1] = 2
    s.release()
    del v
    del lease


def _forkcore(s, d):
    f = _core.ForkCore(s, d.draw(st.one_of(st.just(L.H_SLEEPERS), offsets)),
                       d.draw(st.one_of(st.just(LAY.deque(0)), offsets)), d.draw(st.integers(-1, 4)))
    f.task = d.draw(st.integers(0, U64 - 1))
    f.register = lambda fn: d.draw(st.integers(0, 2**32 - 1))
    f.publish_oldest = lambda: None
    f.bind()
    try:
        hs = [_core.spawn(abs, d.draw(st.integers())) for _ in range(d.draw(st.integers(0, 3)))]
        for h in reversed(hs):
            _core.sync(h)
        if hs:
            f.remove(hs[0])
        f.take_oldest()
        f.pop_newest(d.draw(st.integers(0, U64 - 1)))
        f.live()
    finally:
        del f  # unbinds


def _fallbacks(d):
    _core.set_fallbacks(lambda fn, a, k: ("spawned", fn, a, k), lambda h: ("synced", h))
    _core.spawn(abs, d.draw(st.integers()))
    _core.sync(d.draw(st.one_of(st.none(), st.integers())))


def _handle(d):
    h = _core.Handle(d.draw(st.integers(0, 2**32 - 1)), abs, (d.draw(st.integers()),), None,
                     d.draw(st.integers(0, U64 - 1)))
    repr(h)
    for step in d.draw(st.lists(st.sampled_from(["publish", "settle", "fail", "observe", "result"]), max_size=4)):
        try:
            if step == "publish":
                h._publish(d.draw(st.integers(0, U64 - 1)))
            elif step == "settle":
                h._settle(d.draw(small_values), False)
            elif step == "fail":
                h._settle(ValueError("x"), True)
            elif step == "observe":
                h._observe(d.draw(st.booleans()))
            else:
                _core.sync(h)
        except Exception:  # noqa: BLE001 - clear errors are the point
            pass
        repr(h)


def fuzz(entry: str, seconds: float, base_seed: int) -> int:
    call = CALLS[entry]
    examples = 0

    @settings(max_examples=40, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(st.data(), scribbles, headers)
    def one(d, writes, heads):
        nonlocal examples
        examples += 1
        m, s = new_region()
        try:
            try:
                _prime(s, d)
            except Exception:  # noqa: BLE001
                pass
            for off, v in writes:
                s.store64(off, v, _core.RELAXED)
            for base, a, b, mask in heads:
                s.store64(base, a, _core.RELAXED)        # top / enq
                s.store64(base + 64, b, _core.RELAXED)   # bottom / deq
                s.store64(base + 128, mask, _core.RELAXED)
            for _ in range(d.draw(st.integers(1, 3))):
                try:
                    call(s, d)
                except SystemError:
                    raise  # a C function that failed without an exception set: a bug
                except Exception:  # noqa: BLE001 - a clear Python error is what we want
                    pass
        finally:
            try:
                s.release()
            except Exception:  # noqa: BLE001
                pass

    end = time.monotonic() + seconds
    k = 0
    while time.monotonic() < end:
        seed(base_seed * 1000 + k)(one)()
        k += 1
    return examples


if __name__ == "__main__":
    entry, secs, sd = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    n = fuzz(entry, secs, sd)
    print(f"fuzz {entry}: {n} examples, no crash")
