"""What runs in and around the worker processes: the worker loop (worker.py),
nested fork-join on fibers (forkjoin.py), supervision of the workers
(supervisor.py) and the recovery of a dead worker's tasks (recovery.py)."""
