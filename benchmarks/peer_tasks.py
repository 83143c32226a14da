"""The fork-join workloads written for the peers' nested-task APIs.

Ray: a task submits a child with `.remote()` and waits with `ray.get`
inside the task (Ray releases the waiting task's CPU, so nesting does not
deadlock).  Dask: a task takes a `distributed.worker_client()` (which
secedes from the worker's thread pool while it waits) and submits a child.
Same shape as Penny's: spawn n-1, compute n-2 here, wait, add.
"""

from fj_tasks import fib_serial


def fib_ray(n, cutoff):
    import ray

    if n <= cutoff:
        return fib_serial(n)
    x = _fib_ray_remote().remote(n - 1, cutoff)
    y = fib_ray(n - 2, cutoff)
    return ray.get(x) + y


_REMOTE = None


def _fib_ray_remote():
    global _REMOTE
    if _REMOTE is None:
        import ray

        _REMOTE = ray.remote(fib_ray)
    return _REMOTE


def fib_dask(n, cutoff):
    if n <= cutoff:
        return fib_serial(n)
    from distributed import worker_client

    with worker_client() as client:
        x = client.submit(fib_dask, n - 1, cutoff, pure=False)
        y = fib_dask(n - 2, cutoff)
        return x.result() + y
