"""krt-runner: run a Python ``init``/``handler`` module as a KRT v1 workflow node on NATS."""

from .context import HandlerContext
from .errors import KrtRunnerError
from .processor import Processor
from .serve import serve

__all__ = ["HandlerContext", "KrtRunnerError", "Processor", "serve"]
__version__ = "0.1.0"
