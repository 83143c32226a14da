"""The Ray backend: penny.Scheduler(backend="ray")."""

from .scheduler import *  # noqa: F401,F403
from .scheduler import __all__  # noqa: F401
