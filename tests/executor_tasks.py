"""Task functions for tests/test_executor.py (importable by name in workers)."""

from __future__ import annotations

import logging
import os
import time

STATE = "uninitialized"


def init(value):
    global STATE
    STATE = value


def get_state():
    return STATE, os.getpid()


def init_fail(log_queue=None):
    if log_queue is not None:
        from logging.handlers import QueueHandler

        logger = logging.getLogger("concurrent.futures")
        logger.addHandler(QueueHandler(log_queue))
        logger.setLevel("CRITICAL")
        logger.propagate = False
    raise ValueError("error in initializer")


def getpid():
    return os.getpid()


def sleep(t):
    time.sleep(t)
    return t


def fail_at(x, bad=37):
    if x == bad:
        raise KeyError(x)
    return x * 2


def make_scheduler():
    import penny

    try:
        penny.Scheduler(1)
    except Exception as e:  # noqa: BLE001 - what the caller sees, by type and text
        return type(e).__name__, isinstance(e, penny.PennyError), str(e)
    return "no error", False, ""


class Box:
    """A weak-referenceable value that pickles."""

    def __init__(self, n):
        self.n = n

    def get(self):
        return self.n


def unbox(box):
    return box.n


def new_box(n):
    return Box(n)
