"""What the user holds: the Scheduler and Executor, their futures, the
fork-join API (spawn, sync, join, parallel_for), progress bars, and the base
that every backend's scheduler shares (base.py)."""
