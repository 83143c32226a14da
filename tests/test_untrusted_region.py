"""The shared region is untrusted input (issue 12, items 13-15).

Any process mapping the region can write any word of it, so every ref,
index, count, capacity and offset the native core reads from it is checked
against the geometry compiled in (layout.h) or told to ``set_tasks``; an
impossible word raises ``penny.CorruptRegionError`` (a ``PennyError``), never
a segfault, a hang or a silent loss.  Each case that used to crash the
process runs in a subprocess, so a signal fails the test instead of killing
pytest.
"""

from __future__ import annotations

import mmap
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import penny
from penny import _core
from penny.errors import CorruptRegionError, PennyError, SchedulerClosedError
from penny.shm import layout as L
from penny.shm import parking
from penny.shm.arena import Arena
from penny.shm.layout import Layout
from penny.shm.region import Region
from tests import helpers as h

PRELUDE = """
import mmap, sys
from penny import _core
from penny.errors import CorruptRegionError
"""


def run_isolated(code: str, timeout: float = 120.0) -> str:
    """Run `code` in a fresh interpreter; fail (not crash) on a signal or a hang."""
    try:
        p = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the subprocess hung for {timeout} s: {e.stdout!r} {e.stderr!r}")
    assert p.returncode == 0, f"subprocess died with {p.returncode} (negative: a signal)\n{p.stdout}\n{p.stderr}"
    return p.stdout


def expect_corrupt(code: str) -> None:
    """`code` must raise CorruptRegionError (and nothing worse)."""
    out = run_isolated(f"""
try:
{textwrap.indent(textwrap.dedent(code), '    ')}
except CorruptRegionError as e:
    print("CORRUPT", e)
else:
    print("NO ERROR")
""")
    assert out.startswith("CORRUPT"), out


def test_corrupt_region_error_is_a_penny_error_exported_by_the_core():
    assert issubclass(CorruptRegionError, PennyError)
    assert penny.CorruptRegionError is CorruptRegionError
    assert _core.CorruptRegionError is CorruptRegionError


# ---- masks read from a deque or ring header ------------------------------------------


def test_a_deque_mask_whose_byte_size_overflows_raises_instead_of_scribbling():
    # 8 * (mask + 1) == 2**64 wrapped to 0 in the old bounds check: it passed,
    # and the push wrote at ring[bt & mask] anywhere in the address space.
    expect_corrupt("""
m = mmap.mmap(-1, 4096); s = _core.Shared(m)
s.deque_init(0, 4)
s.store64(128, (1 << 61) - 1)           # DQ_MASK
s.store64(64, 1 << 40)                  # DQ_BOTTOM: far away
s.deque_push(0, 7)
""")


def test_a_ring_mask_whose_byte_size_overflows_raises_instead_of_scribbling():
    expect_corrupt("""
m = mmap.mmap(-1, 4096); s = _core.Shared(m)
s.queue_init(0, 4)
s.store64(128, (1 << 60) - 1)           # Q_MASK: 16 * (mask + 1) == 2**64
s.store64(0, 1 << 40)                   # Q_ENQ: far away
s.queue_push(0, 7)
""")


@pytest.mark.parametrize("mask", [0, 6, 2**64 - 1])
def test_a_mask_that_is_not_a_power_of_two_minus_one_is_corrupt(mask):
    m = mmap.mmap(-1, 4096)
    s = _core.Shared(m)
    try:
        s.deque_init(0, 4)
        s.queue_init(1024, 4)
        s.store64(128, mask)
        s.store64(1024 + 128, mask)
        with pytest.raises(CorruptRegionError):
            s.deque_push(0, 1)
        with pytest.raises(CorruptRegionError):
            s.queue_pop(1024)
    finally:
        s.release()
        m.close()


def test_a_ring_whose_slots_disagree_with_its_positions_raises_instead_of_spinning():
    # A slot seq ahead of the position made push and pop reload the same
    # position forever (the main process hung in collect or inject).
    expect_corrupt("""
m = mmap.mmap(-1, 4096); s = _core.Shared(m)
s.queue_init(0, 4)
s.store64(192, 10**6)                   # slot 0's seq: far ahead of enq == deq == 0
s.queue_push(0, 7)
""")
    expect_corrupt("""
m = mmap.mmap(-1, 4096); s = _core.Shared(m)
s.queue_init(0, 4)
s.store64(192, 10**6)
s.queue_pop(0)
""")


def test_a_nonpositive_item_popped_from_a_ring_is_corrupt():
    m = mmap.mmap(-1, 4096)
    s = _core.Shared(m)
    try:
        s.queue_init(0, 4)
        assert s.queue_push(0, 5)
        s.store64(192 + 8, 2**64 - 5)   # slot 0's value: -5
        with pytest.raises(CorruptRegionError):
            s.queue_pop(0)
    finally:
        s.release()
        m.close()


# ---- set_tasks: the geometry the fast paths use --------------------------------------

LAY = Layout(workers=2, deque_capacity=8, task_capacity=8, function_slots=4, arena_size=1 << 16)


def geometry(lay, **kw):
    g = dict(tasks=lay.tasks, task_capacity=lay.task_capacity, injector=lay.injector,
             completions=lay.completions, inbox0=lay.inbox(0), state0=lay.state(0),
             slice_size=lay.slice_size, workers=lay.workers)
    g.update(kw)
    return g


@pytest.fixture
def raw_region():
    m = mmap.mmap(-1, LAY.size)
    s = _core.Shared(m)
    for w in range(LAY.workers):
        s.queue_init(LAY.inbox(w), LAY.task_capacity)
    s.queue_init(LAY.injector, LAY.task_capacity)
    s.queue_init(LAY.completions, LAY.task_capacity)
    yield s
    s.release()
    m.close()


@pytest.mark.parametrize("ring", ["injector", "completions", "inbox1"])
def test_set_tasks_refuses_a_ring_whose_mask_is_not_the_task_capacity(raw_region, ring):
    s = raw_region
    off = {"injector": LAY.injector, "completions": LAY.completions, "inbox1": LAY.inbox(1)}[ring]
    s.queue_init(off, LAY.task_capacity // 2)  # the fast paths would use mask 7, the header says 3
    with pytest.raises(CorruptRegionError, match="mask 3"):
        s.set_tasks(**geometry(LAY))
    with pytest.raises(RuntimeError, match="set_tasks"):
        s.free_task(1)  # nothing was accepted


def test_set_tasks_accepts_the_layout_it_was_made_for(raw_region):
    raw_region.set_tasks(**geometry(LAY))
    raw_region.free_task(1)


@pytest.mark.parametrize("kw", [
    dict(task_capacity=1 << 60),        # capacity * 128 and 16 * capacity wrap to 0
    dict(task_capacity=6),              # not a power of two: the fast paths mask with capacity - 1
    dict(task_capacity=1 << 31),        # refs hold a 32-bit index
    dict(slice_size=1 << 62),           # (workers - 1) * slice_size wraps
    dict(workers=0),
    dict(injector=LAY.injector + 8),    # a ring must be 64-byte aligned
])
def test_set_tasks_refuses_a_geometry_whose_products_overflow_or_that_cannot_be(raw_region, kw):
    with pytest.raises(ValueError):
        raw_region.set_tasks(**geometry(LAY, **kw))


def test_an_accepted_huge_capacity_used_to_let_free_task_write_anywhere():
    # What the old check let through: capacity 2**60 passed every span (the
    # products wrapped to 0), and free_task then stored at tasks + idx * 128.
    out = run_isolated(f"""
m = mmap.mmap(-1, {LAY.size}); s = _core.Shared(m)
try:
    s.set_tasks(tasks={LAY.tasks}, task_capacity=1 << 60, injector={LAY.injector},
                completions={LAY.completions}, inbox0={LAY.inbox(0)}, state0={LAY.state(0)},
                slice_size={LAY.slice_size}, workers={LAY.workers})
except ValueError:
    print("REFUSED")
else:
    s.free_task((1 << 32) - 1)
    print("ACCEPTED")
""")
    assert out.strip() == "REFUSED"


# ---- generic operations' geometry products --------------------------------------------


def test_stack_geometry_whose_product_overflows_is_refused():
    out = run_isolated("""
m = mmap.mmap(-1, 4096); s = _core.Shared(m)
s.store64(0, 8)                         # head: node 8 of 8
try:
    s.stack_pop(0, 64, 1 << 61, 0, 8)   # stride * count == 2**64 wrapped to 0
except ValueError as e:
    print("REFUSED", e)
""")
    assert out.startswith("REFUSED"), out


def test_notify_geometry_whose_product_overflows_is_refused():
    out = run_isolated("""
m = mmap.mmap(-1, 4096); s = _core.Shared(m)
s.store32(0, 1)                         # one sleeper announced
try:
    s.notify(0, 64, 1 << 62, 5, 3)      # stride * (count - 1) wraps to 0
except ValueError as e:
    print("REFUSED", e)
""")
    assert out.startswith("REFUSED"), out


def test_a_corrupt_free_list_head_raises_corrupt_region_error():
    m = mmap.mmap(-1, 4096)
    s = _core.Shared(m)
    try:
        s.store64(0, 9)  # names node 9 of 8
        with pytest.raises(CorruptRegionError, match="free list head"):
            s.stack_pop(0, 64, 64, 0, 8)
    finally:
        s.release()
        m.close()


@pytest.mark.parametrize("timeout", [float("inf"), 1e300])
def test_futex_wait_with_an_infinite_timeout_waits_until_woken(timeout):
    # (time_t)inf is undefined; on x86 it made a negative tv_sec: EINVAL, OSError.
    m = mmap.mmap(-1, 4096)
    s = _core.Shared(m)
    got = []
    t = threading.Thread(target=lambda: got.append(s.futex_wait(0, 0, timeout)))
    t.start()
    try:
        deadline = time.monotonic() + 60
        while t.is_alive() and time.monotonic() < deadline:
            s.store32(0, 1)
            s.futex_wake(0)
            t.join(0.05)
    finally:
        t.join(60)
    assert got and got[0] in (_core.FUTEX_WOKEN, _core.FUTEX_CHANGED), got
    s.release()
    m.close()


def test_futex_wait_with_a_nan_timeout_is_a_value_error():
    m = mmap.mmap(-1, 4096)
    s = _core.Shared(m)
    with pytest.raises(ValueError, match="NaN"):
        s.futex_wait(0, 0, float("nan"))
    s.release()
    m.close()


def test_unpack_inline_of_zero_bytes_does_not_read_past_the_buffer():
    m = mmap.mmap(-1, 4096)
    s = _core.Shared(m)
    with pytest.raises(ValueError):
        s.unpack_inline(4096, 0)
    s.release()
    m.close()


def test_a_corrupt_inline_record_is_a_corrupt_region_error():
    m = mmap.mmap(-1, 4096)
    s = _core.Shared(m)
    s.write_bytes(0, bytes([1, 0xEE]))  # one item, unknown tag
    with pytest.raises(CorruptRegionError, match="inline"):
        s.unpack_inline(0, 64)
    s.release()
    m.close()


# ---- ForkCore --------------------------------------------------------------------------


@pytest.mark.parametrize("sleepers,deque", [(1 << 40, 0), (0, 1 << 40), (-4, 0), (2, 0), (0, 32)])
def test_fork_core_checks_its_offsets(sleepers, deque):
    m = mmap.mmap(-1, 4096)
    s = _core.Shared(m)
    with pytest.raises((IndexError, ValueError)):
        _core.ForkCore(s, sleepers, deque, 10)
    s.release()
    m.close()


def test_a_fork_core_with_a_wild_offset_used_to_crash_spawn():
    out = run_isolated("""
m = mmap.mmap(-1, 4096); s = _core.Shared(m)
try:
    f = _core.ForkCore(s, 1 << 40, 0, 10)
except IndexError:
    print("REFUSED")
else:
    f.task = 1; f.bind()
    f.register = lambda fn: 1
    _core.spawn(print)
    print("ACCEPTED")
""")
    assert out.strip() == "REFUSED"


# ---- Handle (item 14) ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["state", "failed", "observed", "fid", "parent", "ref", "fn", "args", "kwargs",
                                  "value"])
def test_handle_members_are_read_only(name):
    hd = _core.Handle(1, h.add, (1, 2), None, 0)
    with pytest.raises(AttributeError):
        setattr(hd, name, 12345)


def test_a_handle_whose_args_were_overwritten_used_to_crash_sync():
    out = run_isolated("""
hd = _core.Handle(1, print, (1,), None, 0)
try:
    hd.args = 12345
except AttributeError:
    print("READONLY")
else:
    class F(_core.ForkCore):
        pass
    f = F(_core.Shared(mmap.mmap(-1, 4096)), 0, 0, 10)
    hd2 = hd
    f.run_handle(hd2)
    print("RAN")
""")
    assert out.strip() == "READONLY"


def test_handle_repr_shows_the_ref_in_hex():
    hd = _core.Handle(1, h.add, (1, 2), None, 0)
    assert repr(hd) == "<penny.Handle private ref=0>"
    hd._publish(0x1234_0000_0005)
    assert repr(hd) == "<penny.Handle published ref=0x123400000005>"
    hd._settle(3, False)
    assert repr(hd) == "<penny.Handle done ref=0x123400000005>"
    assert hd.value == 3 and not hd.failed and hd.fn is None and hd.args is None


def test_handle_transitions_only_from_their_state():
    hd = _core.Handle(1, h.add, (1, 2), None, 0)
    with pytest.raises(RuntimeError, match="published"):
        hd._settle(1, False)
    hd._publish(5)
    with pytest.raises(RuntimeError, match="private"):
        hd._publish(6)
    with pytest.raises(TypeError, match="exception"):
        hd._settle(1, True)
    hd._settle(ValueError("x"), True)
    assert hd.failed and hd.state == 2 and hd.ref == 5


# ---- Shared.__init__ (item 14) -----------------------------------------------------------


def test_shared_init_twice_is_refused_and_leases_stay_valid():
    out = run_isolated("""
m = mmap.mmap(-1, 4096); m2 = mmap.mmap(-1, 4096)
s = _core.Shared(m)
lease = _core.Lease(s, 0, 64, False, None)
view = memoryview(lease)
try:
    s.__init__(m2)
except RuntimeError as e:
    print("REFUSED", e)
# The lease still holds m: it cannot be closed under the view.
try:
    m.close()
except BufferError:
    print("HELD")
view[0] = 42
print(m[0])
""")
    assert out.split("\n")[0].startswith("REFUSED"), out
    assert "HELD" in out and out.strip().endswith("42"), out


def test_shared_init_after_release_is_refused():
    m = mmap.mmap(-1, 4096)
    s = _core.Shared(m)
    s.release()
    with pytest.raises(RuntimeError, match="initialised"):
        s.__init__(m)
    m.close()


# ---- the arena's incref (item 13) --------------------------------------------------------


def test_incref_of_a_freed_block_is_refused_and_leaves_the_free_list_intact():
    r = Region.create(Layout(workers=1, deque_capacity=8, task_capacity=8, function_slots=4, arena_size=1 << 16))
    try:
        a = Arena(r.shared, r.layout, r.fd, r.map)
        x, y = a.alloc(32), a.alloc(32)
        a.release(x)
        a.release(y)  # y's count word is now the free-list link to x (nonzero)
        with pytest.raises(RuntimeError, match="freed"):
            a.incref(y)
        # The list still hands back y then x, and nothing else of the class.
        assert {a.alloc(32), a.alloc(32)} == {x, y}
        z = a.alloc(32)
        assert z not in (x, y)
    finally:
        r.close()


# ---- the sleeper's SeqCst fence (item 15) -------------------------------------------------


class _Recorder:
    """A stand-in Shared that records the sleeper's operations in order."""

    def __init__(self, log):
        self.log = log

    def store32(self, off, v, order):
        self.log.append(("store32", v, order))

    def fetch_add32(self, off, v, order):
        self.log.append(("fetch_add32", v, order))
        return 0

    def cas32(self, off, e, d, order):
        self.log.append(("cas32", e, d))
        return False, e

    def exchange32(self, off, v, order):
        self.log.append(("exchange32", v))
        return parking.SLEEPY


def test_the_sleeper_issues_a_seq_cst_fence_between_its_announcement_and_its_re_check(monkeypatch):
    # Not observable on x86 (a locked RMW is a full barrier); this is the
    # store-buffering shape docs/protocols.md explains, so check the fence is
    # issued where the proof needs it: after the announcement (1: counted,
    # 2: SLEEPY, in that order for the crash model), before the re-check (3).
    log = []
    monkeypatch.setattr(parking, "_fence", lambda order: log.append(("fence", order)), raising=False)
    p = parking.Parker(_Recorder(log), 0, 4)

    def has_work():
        log.append(("recheck",))
        return True

    p.park(has_work, 0.01)
    names = [e[0] for e in log]
    inc = names.index("fetch_add32")
    assert log[inc][1:] == (1, _core.SEQ_CST)
    assert names[inc + 1] == "store32" and log[inc + 1][1:] == (parking.SLEEPY, _core.SEQ_CST), log
    assert names[inc + 2] == "fence" and log[inc + 2][1] == _core.SEQ_CST, log
    assert names[inc + 3] == "recheck", log


# ---- the collector (item 13) --------------------------------------------------------------


def _poison_completion(sched) -> None:
    """Push a completion whose record claims DONE with an impossible inline result."""
    s, lay = sched._s, sched._layout
    idx = lay.task_capacity - 1  # the last record: free at this point
    rec = lay.tasks + idx * L.RECORD_SIZE
    gen = s.load64(rec + L.R_STATE) & 0x7FFF_FFFF
    s.store32(rec + L.R_FLAGS, 0)
    s.write_bytes(rec + L.R_INLINE, bytes([1, 0xEE]))  # one item, unknown tag
    s.store64(rec + L.R_STATE, (L.S_DONE << 32) | gen, _core.RELEASE)
    assert s.queue_push(lay.completions, (gen << 32) | (idx + 1))


def test_a_collect_error_breaks_the_scheduler_and_fails_every_pending_future():
    sched = penny.Scheduler(2, task_capacity=64)
    try:
        pending = [sched.submit(h.sleep_return, 3.0, i) for i in range(4)]
        _poison_completion(sched)
        for fut in pending:
            with pytest.raises(PennyError):
                fut.result(timeout=120)  # before: the collector died, and this hung
        with pytest.raises(SchedulerClosedError, match="broken"):
            sched.submit(h.add, 1, 2)
        assert isinstance(sched._broken, CorruptRegionError)
    finally:
        sched.shutdown(wait=False)


def test_the_broken_collector_fails_futures_registered_after_it_broke():
    sched = penny.Scheduler(1, task_capacity=64)
    try:
        _poison_completion(sched)
        deadline = time.monotonic() + 120
        while sched._broken is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sched._broken is not None
        # A submit that raced past _check_open before the scheduler broke.
        late = penny.frontend.futures.TaskFuture(sched)
        sched._futures[10**12] = late
        with pytest.raises(PennyError):
            late.result(timeout=60)
    finally:
        sched.shutdown(wait=False)
