"""Other places to run a Penny program than Penny's own worker processes.

``penny.Scheduler(backend="local")`` (the default) is Penny's runtime:
worker processes, shared-memory deques, futexes.  ``backend="threads"``
returns a `penny.backends.threads.ThreadScheduler`, the same runtime on
threads of the calling process, arguments passed by reference.  ``backend="ray"`` returns
a `penny.backends.ray.RayScheduler`, the same API on a Ray cluster (the
optional extra: ``pip install 'penny-runtime[ray]'``).  Task functions do not know
which backend runs them.  docs/backends.md says when to use which.

A backend's module is imported only when that backend is asked for, so Penny
imports without any of them installed.
"""

BACKENDS = ("local", "threads", "ray")
