"""``krt-runner entrypoint``: the KRT's gRPC front door, as KRE v1's ``kre-entrypoint`` served it."""

from __future__ import annotations

import importlib.util

_GRPC_MODULES = ("grpc", "grpc_tools", "grpc_reflection", "grpc_health")
MISSING_EXTRA = "it needs the entrypoint extra: pip install 'krt-runner[entrypoint]' (in a clone: '.[entrypoint]')"


def grpc_installed() -> bool:
    """Whether the ``entrypoint`` extra's packages are there (checked without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in _GRPC_MODULES)
