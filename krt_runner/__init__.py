"""krt-runner: run a Python ``init``/``handler`` module as a KRT v1 workflow node on NATS."""

from .context import HandlerContext
from .errors import KrtRunnerError

__all__ = ["HandlerContext", "KrtRunnerError"]
__version__ = "0.1.0"
