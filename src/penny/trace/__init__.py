"""Tracing: per-worker event rings in the shared region (rings.py), the main
process's recorder that drains them (recorder.py), and the export to Chrome
trace JSON and a timeline plot (export.py).  docs/observability.md has the
user's view."""
