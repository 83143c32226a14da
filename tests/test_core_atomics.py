"""penny._core.Shared: generic atomics, fences, futexes and the inline codec.

Buffers are anonymous shared mappings (``mmap.mmap(-1, n)``): page aligned,
writable, and shared with children forked after they are made.
"""

from __future__ import annotations

import math
import mmap
import multiprocessing
import struct
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from penny import _core
from penny.shm.layout import INLINE_SIZE
from tests.procs import join_all as procs_join_all

SIZE = 4096
ORDERS = {
    "RELAXED": _core.RELAXED,
    "CONSUME": _core.CONSUME,
    "ACQUIRE": _core.ACQUIRE,
    "RELEASE": _core.RELEASE,
    "ACQ_REL": _core.ACQ_REL,
    "SEQ_CST": _core.SEQ_CST,
}
LOAD_OK = ("RELAXED", "CONSUME", "ACQUIRE", "SEQ_CST")
LOAD_BAD = ("RELEASE", "ACQ_REL")
STORE_OK = ("RELAXED", "RELEASE", "SEQ_CST")
STORE_BAD = ("CONSUME", "ACQUIRE", "ACQ_REL")
UNKNOWN_ORDERS = (-1, 6, 7, 1 << 20)
WIDTHS = (32, 64)

FORK = multiprocessing.get_context("fork")


@pytest.fixture
def mem():
    m = mmap.mmap(-1, SIZE)
    s = _core.Shared(m)
    try:
        yield s
    finally:
        s.release()
        m.close()


def ops(s, width):
    """The generic atomics of one width, by name."""
    return {name: getattr(s, f"{name}{width}") for name in ("load", "store", "cas", "fetch_add", "exchange")}


def mask(width):
    return (1 << width) - 1


def join_all(procs, timeout=30.0):
    """Join every process (their exit codes are checked by each test)."""
    procs_join_all(procs, timeout, check_exit=False)


# ---- constants --------------------------------------------------------------


def test_order_constants_are_c11_memory_order_values():
    assert [ORDERS[n] for n in ("RELAXED", "CONSUME", "ACQUIRE", "RELEASE", "ACQ_REL", "SEQ_CST")] == list(range(6))


def test_futex_result_constants_are_distinct():
    assert {_core.FUTEX_WOKEN, _core.FUTEX_CHANGED, _core.FUTEX_TIMEOUT} == {0, 1, 2}


# ---- buffers ------------------------------------------------------------------


def test_bytes_is_rejected_because_it_is_not_writable():
    with pytest.raises(BufferError):
        _core.Shared(b"\0" * 4096)


def test_unaligned_buffer_is_rejected():
    m = mmap.mmap(-1, SIZE)
    try:
        view = memoryview(m)
        with pytest.raises(ValueError, match="64-byte aligned"):
            _core.Shared(view[8:])
        with pytest.raises(ValueError, match="64-byte aligned"):
            _core.Shared(view[32:])
        s = _core.Shared(view[64:])  # a 64-byte aligned slice is fine
        assert s.nbytes == SIZE - 64
        s.store64(0, 7)
        assert struct.unpack_from("=Q", m, 64)[0] == 7
        s.release()
        view.release()
    finally:
        m.close()


def test_non_buffer_is_rejected():
    with pytest.raises(TypeError):
        _core.Shared(42)


def test_shared_sees_the_bytes_of_its_buffer(mem):
    mem.store32(8, 0xDEADBEEF)
    assert mem.read_bytes(8, 4) == (0xDEADBEEF).to_bytes(4, sys.byteorder)
    mem.write_bytes(16, (0x0102030405060708).to_bytes(8, sys.byteorder))
    assert mem.load64(16) == 0x0102030405060708


def test_nbytes_is_the_buffer_length(mem):
    assert mem.nbytes == SIZE


def test_buffer_stays_exported_until_release():
    m = mmap.mmap(-1, SIZE)
    s = _core.Shared(m)
    with pytest.raises(BufferError):
        m.close()  # Shared still holds the buffer
    s.release()
    s.release()  # idempotent
    assert s.nbytes == 0
    m.close()  # now it can go


ALL_CALLS = [
    ("load32", (0,)),
    ("load64", (0,)),
    ("store32", (0, 1)),
    ("store64", (0, 1)),
    ("cas32", (0, 0, 1)),
    ("cas64", (0, 0, 1)),
    ("fetch_add32", (0, 1)),
    ("fetch_add64", (0, 1)),
    ("exchange32", (0, 1)),
    ("exchange64", (0, 1)),
    ("futex_wait", (0, 1, 0.0)),
    ("futex_wake", (0,)),
    ("read_bytes", (0, 8)),
    ("write_bytes", (0, b"x")),
    ("pack_inline", (0, 64, (1,))),
    ("unpack_inline", (0, 64)),
    ("deque_init", (0, 4)),
    ("deque_len", (0,)),
    ("queue_init", (0, 4)),
    ("queue_len", (0,)),
    ("stack_pop", (0, 64, 64, 8, 4)),
]


@pytest.mark.parametrize("name,args", ALL_CALLS, ids=[c[0] for c in ALL_CALLS])
def test_every_operation_refuses_a_released_object(name, args):
    m = mmap.mmap(-1, SIZE)
    s = _core.Shared(m)
    s.release()
    try:
        with pytest.raises(ValueError, match="released"):
            getattr(s, name)(*args)
    finally:
        m.close()


# ---- load / store ---------------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("store_order", STORE_OK)
@pytest.mark.parametrize("load_order", LOAD_OK)
def test_store_then_load_with_every_valid_order(mem, width, store_order, load_order):
    a = ops(mem, width)
    v = 0x1234_5678_9ABC_DEF0 & mask(width)
    a["store"](64, v, ORDERS[store_order])
    assert a["load"](64, ORDERS[load_order]) == v


@pytest.mark.parametrize("width", WIDTHS)
def test_default_order_is_accepted(mem, width):
    a = ops(mem, width)
    a["store"](8, 5)
    assert a["load"](8) == 5
    assert a["cas"](8, 5, 6) == (True, 5)
    assert a["fetch_add"](8, 1) == 6
    assert a["exchange"](8, 9) == 7
    assert a["load"](8) == 9


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("order", LOAD_BAD)
def test_load_rejects_release_orders(mem, width, order):
    with pytest.raises(ValueError):
        ops(mem, width)["load"](0, ORDERS[order])


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("order", STORE_BAD)
def test_store_rejects_acquire_orders(mem, width, order):
    a = ops(mem, width)
    a["store"](0, 3)
    with pytest.raises(ValueError):
        a["store"](0, 4, ORDERS[order])
    assert a["load"](0) == 3  # nothing was written


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("order", UNKNOWN_ORDERS)
def test_unknown_order_raises_value_error_everywhere(mem, width, order):
    a = ops(mem, width)
    a["store"](0, 3)
    with pytest.raises(ValueError, match="memory order"):
        a["load"](0, order)
    with pytest.raises(ValueError, match="memory order"):
        a["store"](0, 1, order)
    with pytest.raises(ValueError, match="memory order"):
        a["cas"](0, 3, 1, order)
    with pytest.raises(ValueError, match="memory order"):
        a["fetch_add"](0, 1, order)
    with pytest.raises(ValueError, match="memory order"):
        a["exchange"](0, 1, order)
    assert a["load"](0) == 3  # nothing was modified


def test_order_must_be_an_int(mem):
    with pytest.raises(TypeError):
        mem.load32(0, "seq_cst")
    with pytest.raises(TypeError):
        mem.store64(0, 1, 1.0)


@pytest.mark.parametrize("width", WIDTHS)
def test_values_are_unsigned_and_negative_values_wrap(mem, width):
    a = ops(mem, width)
    a["store"](0, -1)
    assert a["load"](0) == mask(width)
    a["store"](0, mask(width))
    assert a["load"](0) == mask(width)
    a["store"](0, -(1 << (width - 1)))
    assert a["load"](0) == 1 << (width - 1)


def test_32_bit_ops_touch_only_their_word(mem):
    mem.store64(0, mask(64))
    mem.store32(0, 0)
    assert mem.load32(4) == mask(32)
    assert mem.load64(0) == mask(32) << 32
    mem.exchange32(4, 1)
    mem.fetch_add32(0, 2)
    mem.cas32(0, 2, 3)
    assert mem.load64(0) == (1 << 32) | 3
    assert mem.load64(8) == 0


def test_32_bit_halves_of_a_64_bit_word_follow_byte_order(mem):
    mem.store64(0, 0x1111_2222_3333_4444)
    lo, hi = (0, 4) if sys.byteorder == "little" else (4, 0)
    assert mem.load32(lo) == 0x3333_4444
    assert mem.load32(hi) == 0x1111_2222


def test_value_must_be_an_int(mem):
    with pytest.raises(TypeError):
        mem.store64(0, 1.5)
    with pytest.raises(TypeError):
        mem.fetch_add32(0, "1")


# Regression (found by this test, fixed in the C core's as_u64, native/shared.c): values outside
# [-2**63, 2**64) once wrapped modulo 2**64 (store64(off, 2**64 + 5) stored 5,
# deque_push pushed ref 5); they must raise OverflowError instead.
@pytest.mark.parametrize("value", [(1 << 64) + 5, -(1 << 63) - 1])
def test_64_bit_values_outside_the_documented_range_are_refused(mem, value):
    mem.store64(0, 42)
    with pytest.raises(OverflowError):
        mem.store64(0, value)
    assert mem.load64(0) == 42


# ---- offsets ----------------------------------------------------------------------


def _op_calls(s, width):
    a = ops(s, width)
    return [
        lambda off: a["load"](off),
        lambda off: a["store"](off, 1),
        lambda off: a["cas"](off, 0, 1),
        lambda off: a["fetch_add"](off, 1),
        lambda off: a["exchange"](off, 1),
    ]


@pytest.mark.parametrize("width", WIDTHS)
def test_offsets_at_both_ends_are_accepted(mem, width):
    a = ops(mem, width)
    last = SIZE - width // 8
    a["store"](last, 77)
    assert a["load"](last) == 77
    a["store"](0, 78)
    assert a["load"](0) == 78


@pytest.mark.parametrize("width", WIDTHS)
def test_out_of_range_offsets_raise_index_error(mem, width):
    n = width // 8
    for call in _op_calls(mem, width):
        for off in (-n, -1, SIZE, SIZE - n + 1 if n == 4 else SIZE - 4, SIZE + 64, 1 << 40):
            with pytest.raises(IndexError):
                call(off)
    assert mem.read_bytes(0, SIZE) == bytes(SIZE)  # nothing scribbled


@pytest.mark.parametrize("width", WIDTHS)
def test_misaligned_offsets_raise_value_error(mem, width):
    n = width // 8
    for call in _op_calls(mem, width):
        for off in range(1, n):
            with pytest.raises(ValueError, match="aligned"):
                call(off)
            with pytest.raises(ValueError, match="aligned"):
                call(64 + off)
    assert mem.read_bytes(0, SIZE) == bytes(SIZE)


def test_futex_offsets_are_checked(mem):
    with pytest.raises(IndexError):
        mem.futex_wait(SIZE, 0, 0.0)
    with pytest.raises(ValueError):
        mem.futex_wait(2, 0, 0.0)
    with pytest.raises(IndexError):
        mem.futex_wake(-4)
    with pytest.raises(ValueError):
        mem.futex_wake(6)


def test_raw_byte_spans_are_checked(mem):
    with pytest.raises(IndexError):
        mem.read_bytes(SIZE - 4, 8)
    with pytest.raises(IndexError):
        mem.read_bytes(-1, 1)
    with pytest.raises(IndexError):
        mem.read_bytes(0, -1)
    with pytest.raises(IndexError):
        mem.write_bytes(SIZE - 2, b"abc")
    assert mem.read_bytes(SIZE, 0) == b""
    mem.write_bytes(SIZE - 3, b"abc")
    assert mem.read_bytes(SIZE - 3, 3) == b"abc"


def test_too_few_arguments_raise_type_error(mem):
    for name in ("load32", "load64", "futex_wake"):
        with pytest.raises(TypeError):
            getattr(mem, name)()
    for name in ("store32", "store64", "fetch_add32", "fetch_add64", "exchange32", "exchange64", "futex_wait"):
        with pytest.raises(TypeError):
            getattr(mem, name)(0)
    for name in ("cas32", "cas64"):
        with pytest.raises(TypeError):
            getattr(mem, name)(0, 0)


# ---- read-modify-write -------------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("order", list(ORDERS))
def test_cas_success_and_failure_with_every_order(mem, width, order):
    a = ops(mem, width)
    o = ORDERS[order]
    a["store"](16, 10)
    assert a["cas"](16, 10, 11, o) == (True, 10)
    assert a["load"](16) == 11
    ok, seen = a["cas"](16, 10, 12, o)
    assert (ok, seen) == (False, 11)
    assert a["load"](16) == 11  # a failed CAS writes nothing


@pytest.mark.parametrize("width", WIDTHS)
def test_cas_compares_the_whole_word(mem, width):
    a = ops(mem, width)
    top = 1 << (width - 1)
    a["store"](0, top | 1)
    assert a["cas"](0, 1, 2) == (False, top | 1)
    assert a["cas"](0, -1, 2)[0] is False
    a["store"](0, mask(width))
    assert a["cas"](0, -1, 0) == (True, mask(width))  # -1 wraps to all ones


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("order", list(ORDERS))
def test_fetch_add_with_every_order(mem, width, order):
    a = ops(mem, width)
    o = ORDERS[order]
    a["store"](24, 100)
    assert a["fetch_add"](24, 5, o) == 100
    assert a["fetch_add"](24, 0, o) == 105
    assert a["fetch_add"](24, -1, o) == 105  # a negative delta wraps: a decrement
    assert a["load"](24) == 104


@pytest.mark.parametrize("width", WIDTHS)
def test_fetch_add_wraps_around(mem, width):
    a = ops(mem, width)
    a["store"](0, mask(width))
    assert a["fetch_add"](0, 1) == mask(width)
    assert a["load"](0) == 0
    assert a["fetch_add"](0, mask(width)) == 0  # adding all ones subtracts one
    assert a["load"](0) == mask(width)


def test_32_bit_minus_one_as_unsigned_decrements(mem):
    mem.store32(0, 3)
    assert mem.fetch_add32(0, 0xFFFF_FFFF) == 3  # parking.py relies on this
    assert mem.load32(0) == 2


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("order", list(ORDERS))
def test_exchange_with_every_order(mem, width, order):
    a = ops(mem, width)
    o = ORDERS[order]
    a["store"](32, 1)
    assert a["exchange"](32, 2, o) == 1
    assert a["exchange"](32, mask(width), o) == 2
    assert a["load"](32) == mask(width)


@pytest.mark.parametrize("order", list(ORDERS))
def test_fence_accepts_every_order(order):
    assert _core.fence(ORDERS[order]) is None


def test_fence_defaults_to_seq_cst_and_rejects_unknown_orders():
    assert _core.fence() is None
    for o in UNKNOWN_ORDERS:
        with pytest.raises(ValueError, match="memory order"):
            _core.fence(o)


def _hammer(s, off, width, n, use_cas):
    a = ops(s, width)
    for _ in range(n):
        if use_cas:
            while True:
                v = a["load"](off, _core.RELAXED)
                if a["cas"](off, v, v + 1, _core.ACQ_REL)[0]:
                    break
        else:
            a["fetch_add"](off, 1, _core.RELAXED)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("use_cas", [False, True], ids=["fetch_add", "cas_loop"])
def test_read_modify_write_is_atomic_across_processes(width, use_cas):
    m = mmap.mmap(-1, SIZE)
    s = _core.Shared(m)
    n, procs = 20_000, 3
    try:
        ps = [FORK.Process(target=_hammer, args=(s, 128, width, n, use_cas)) for _ in range(procs)]
        for p in ps:
            p.start()
        _hammer(s, 128, width, n, use_cas)
        join_all(ps)
        assert [p.exitcode for p in ps] == [0] * procs
        assert ops(s, width)["load"](128) == n * (procs + 1)
    finally:
        s.release()
        m.close()


# ---- futex ---------------------------------------------------------------------------


def test_futex_wait_returns_changed_when_the_word_differs(mem):
    mem.store32(0, 5)
    assert mem.futex_wait(0, 4) == _core.FUTEX_CHANGED  # no timeout: must not block
    assert mem.futex_wait(0, 4, 10.0) == _core.FUTEX_CHANGED


def test_futex_wait_compares_only_32_bits(mem):
    mem.store32(0, 5)
    assert mem.futex_wait(0, (1 << 32) | 5, 0.01) == _core.FUTEX_TIMEOUT


@pytest.mark.parametrize("timeout", [0.0, 0.02, 0.2, -1.0])
def test_futex_wait_times_out(mem, timeout):
    mem.store32(4, 9)
    t0 = time.monotonic()
    assert mem.futex_wait(4, 9, timeout) == _core.FUTEX_TIMEOUT
    assert time.monotonic() - t0 >= max(timeout, 0.0) * 0.9
    assert mem.load32(4) == 9


def test_futex_wait_rejects_a_non_number_timeout(mem):
    with pytest.raises(TypeError):
        mem.futex_wait(0, 0, "soon")


def test_futex_wake_without_waiters_wakes_nobody(mem):
    assert mem.futex_wake(0) == 0
    assert mem.futex_wake(0, 1) == 0


def _wake_until_woken(s, off, deadline_s=10.0):
    """futex_wake until a waiter is actually woken (it may not be waiting yet)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        n = s.futex_wake(off, 1)
        if n:
            return n
        time.sleep(0.001)
    return 0


def test_futex_wake_wakes_a_waiting_thread(mem):
    result = []
    t = threading.Thread(target=lambda: result.append(mem.futex_wait(0, 0, 20.0)))
    t.start()
    try:
        assert _wake_until_woken(mem, 0) == 1
    finally:
        t.join(20)
    assert not t.is_alive()
    assert result == [_core.FUTEX_WOKEN]


def _futex_child(s, off, out):
    s.store32(out, 100 + s.futex_wait(off, 0, 20.0))


def test_futex_wake_wakes_a_waiter_in_another_process(mem):
    p = FORK.Process(target=_futex_child, args=(mem, 0, 64))
    p.start()
    try:
        assert _wake_until_woken(mem, 0) == 1
        join_all([p])
    finally:
        if p.is_alive():
            p.kill()
            p.join(5)
    assert p.exitcode == 0
    assert mem.load32(64) == 100 + _core.FUTEX_WOKEN


def _futex_count_child(s, off, ready, done):
    s.fetch_add32(ready, 1)
    r = s.futex_wait(off, 0, 20.0)
    if r == _core.FUTEX_WOKEN:
        s.fetch_add32(done, 1)


def test_futex_wake_n_wakes_at_most_n_waiters(mem):
    procs = [FORK.Process(target=_futex_count_child, args=(mem, 0, 64, 128)) for _ in range(3)]
    for p in procs:
        p.start()
    try:
        deadline = time.monotonic() + 10
        woken = 0
        while woken < 3 and time.monotonic() < deadline:
            n = mem.futex_wake(0, 2)
            assert 0 <= n <= 2
            woken += n
            time.sleep(0.001)
        assert woken == 3
        join_all(procs)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    assert mem.load32(128) == 3


# ---- inline codec -------------------------------------------------------------------

INT64 = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=24)
ITEM = st.one_of(
    st.none(),
    st.booleans(),
    INT64,
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.binary(max_size=24),
)


def encoded_size(x) -> int:
    """Bytes one item takes in the inline format (tag + payload)."""
    if x is None or isinstance(x, bool):
        return 1
    if isinstance(x, (int, float)):
        return 9
    if isinstance(x, str):
        return 3 + len(x.encode("utf-8"))
    return 3 + len(x)


def same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return a == b


@settings(max_examples=200, deadline=None)
@given(items=st.lists(ITEM, max_size=12), as_list=st.booleans(), cap=st.sampled_from([INLINE_SIZE, 1, 9, 32, 256]))
def test_inline_round_trip_matches_the_format(items, as_list, cap):
    m = mmap.mmap(-1, 1024)
    s = _core.Shared(m)
    try:
        seq = list(items) if as_list else tuple(items)
        need = 1 + sum(encoded_size(x) for x in items)
        n = s.pack_inline(128, cap, seq)
        if need > cap:
            assert n == -1
            return
        assert n == need
        out = s.unpack_inline(128, cap)
        assert isinstance(out, tuple)
        assert len(out) == len(items)
        assert all(same(a, b) for a, b in zip(items, out, strict=True)), (items, out)
        assert s.read_bytes(128 + cap, 64) == bytes(64)  # nothing written past cap
    finally:
        s.release()
        m.close()


@pytest.mark.parametrize(
    "value",
    [0, 1, -1, (1 << 63) - 1, -(1 << 63), 0.0, -0.0, 1.5, math.inf, -math.inf, math.nan, None, True, False,
     "", "é", "日本語", "🐍x", b"", b"\0\xff"],
    ids=repr,
)
def test_inline_round_trip_of_edge_values(mem, value):
    assert mem.pack_inline(0, INLINE_SIZE, (value,)) == 1 + encoded_size(value)
    (out,) = mem.unpack_inline(0, INLINE_SIZE)
    assert same(out, value)


def test_inline_empty_sequence(mem):
    assert mem.pack_inline(0, INLINE_SIZE, ()) == 1
    assert mem.unpack_inline(0, INLINE_SIZE) == ()
    assert mem.pack_inline(0, 1, []) == 1
    assert mem.pack_inline(0, 0, ()) == -1  # not even room for the count


def test_inline_255_items_fit_but_256_do_not(mem):
    assert mem.pack_inline(0, 256, (None,) * 255) == 256
    assert mem.unpack_inline(0, 256) == (None,) * 255
    assert mem.pack_inline(0, 4096, (None,) * 256) == -1


class _Int(int):
    pass


class _Str(str):
    pass


@pytest.mark.parametrize(
    "seq",
    [
        (1 << 63,),
        (-(1 << 63) - 1,),
        (1 << 200,),
        ([1],),
        ((1,),),
        ({},),
        (object(),),
        (1j,),
        (bytearray(b"x"),),
        (_Int(3),),
        (_Str("x"),),
        ("x" * INLINE_SIZE,),
        (b"x" * (INLINE_SIZE - 3),),
        ("\ud800",),  # a lone surrogate has no UTF-8 form
        (None,) * INLINE_SIZE,
        (1,) * 8,
    ],
    ids=lambda seq: repr(seq)[:30],
)
def test_not_inlinable_returns_minus_one(mem, seq):
    assert mem.pack_inline(0, INLINE_SIZE, seq) == -1


def test_only_tuples_and_lists_are_inlined(mem):
    for seq in (range(3), iter([1]), {1}, "ab", b"ab", None):
        assert mem.pack_inline(0, INLINE_SIZE, seq) == -1


def test_inline_strings_longer_than_a_u16_are_refused(mem):
    assert mem.pack_inline(0, 4096, ("x" * 4000,)) == 4004
    big = mmap.mmap(-1, 1 << 17)
    s = _core.Shared(big)
    try:
        assert s.pack_inline(0, 1 << 17, ("x" * 0xFFFF,)) == 4 + 0xFFFF
        assert s.pack_inline(0, 1 << 17, ("x" * 0x10000,)) == -1
        assert s.pack_inline(0, 1 << 17, (b"x" * 0x10000,)) == -1
    finally:
        s.release()
        big.close()


def test_inline_exact_fit(mem):
    # 1 count + 3 header + 68 bytes = 72 = INLINE_SIZE
    assert mem.pack_inline(0, 72, (b"y" * 68,)) == 72
    assert mem.unpack_inline(0, 72) == (b"y" * 68,)
    assert mem.pack_inline(0, 72, (b"y" * 69,)) == -1


def test_unpack_detects_corrupt_records(mem):
    mem.write_bytes(0, bytes([1, 99]))  # unknown tag
    with pytest.raises(RuntimeError, match="corrupt"):
        mem.unpack_inline(0, 16)
    mem.pack_inline(0, 64, (12345,))
    with pytest.raises(RuntimeError, match="corrupt"):
        mem.unpack_inline(0, 5)  # the int's payload is cut off
    mem.write_bytes(0, bytes([3, 1]))  # three items announced, one present
    with pytest.raises(RuntimeError, match="corrupt"):
        mem.unpack_inline(0, 2)
    mem.pack_inline(0, 64, ("hello",))
    with pytest.raises(RuntimeError, match="corrupt"):
        mem.unpack_inline(0, 6)  # the string runs past the record


def test_unpack_rejects_invalid_utf8(mem):
    assert mem.pack_inline(0, 64, ("ab",)) == 6
    mem.write_bytes(4, b"\xff")
    with pytest.raises(UnicodeDecodeError):
        mem.unpack_inline(0, 64)


def test_inline_spans_are_checked(mem):
    with pytest.raises(IndexError):
        mem.pack_inline(SIZE - 8, 64, (1,))
    with pytest.raises(IndexError):
        mem.unpack_inline(SIZE - 8, 64)
    with pytest.raises(IndexError):
        mem.pack_inline(-1, 8, (1,))
