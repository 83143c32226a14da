"""Process helpers shared by the multi-process stress tests."""

import time


def join_all(procs, timeout=60.0, check_exit=True):
    """Join every process within `timeout` s in all; kill and fail on stragglers,
    and (with `check_exit`) on a non-zero exit code."""
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [p for p in procs if p.is_alive()]
        assert not hung, f"processes still running after {timeout} s: {hung}"
        if check_exit:
            assert [p.exitcode for p in procs] == [0] * len(procs)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
