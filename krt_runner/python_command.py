"""The command lines of the Python processes the runner starts itself (``up``'s nodes and entrypoint, ``check``'s
imports)."""

from __future__ import annotations

import sys

# ``python -m`` puts the current folder first on sys.path: an ``inspect.py`` or ``uvloop.py`` where ``up`` or ``check``
# was started would shadow the module of that name. ``-c`` puts "" there (nothing under PYTHONSAFEPATH, where the first
# entry is the user's PYTHONPATH): dropped before anything is imported, then the module runs as -m runs it (``python
# -P`` would do the same, from Python 3.11 only).
_RUN_MODULE = ("import sys; sys.path[:1] == [''] and sys.path.pop(0); import runpy; "
               "runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")


def python_module(module: str, *args: str) -> list[str]:
    """``python -m module args...``, without the current folder on ``sys.path``: as ``krt-runner run`` imports."""
    return [sys.executable, "-c", _RUN_MODULE.format(module=module), *args]
