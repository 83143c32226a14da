"""How values cross between processes: the codec of task arguments and results
(marshal.py: inline, pickled into the arena, exceptions with tracebacks) and
the descriptors of shared arrays and buffers (shared.py)."""
