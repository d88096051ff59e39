"""KRE v1 modules on today's protobuf: ``MessageToDict``/``MessageToJson`` accept ``including_default_value_fields``.

KRE v1 handlers were written against protobuf 3 and 4, whose ``json_format``
took ``including_default_value_fields=True`` to include the fields that hold
their default value (``0``, ``false``, ``""``, empty lists and maps).
protobuf 5.26 removed that keyword; its successor is
``always_print_fields_with_no_presence``, with the same meaning for every
proto3 field (it leaves out proto2 ``optional`` fields that were never set,
as protobuf 5.26+ does). :func:`install` wraps both functions on the
``json_format`` module so that the old keyword is read as the new one. A
handler module imports the wrapped functions when it is loaded after it: the
node installs it before it imports the user's module (``KRT_PROTOBUF_COMPAT``,
on by default).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

from google.protobuf import json_format

OLD_KEYWORD = "including_default_value_fields"
NEW_KEYWORD = "always_print_fields_with_no_presence"
_WRAPPED = ("MessageToDict", "MessageToJson")
# Set on our wrappers: installing twice wraps nothing twice, and uninstalling finds what to restore.
_MARK = "__krt_protobuf_compat__"


def install() -> None:
    """Make ``json_format.MessageToDict`` and ``MessageToJson`` accept the old keyword; installing again is a no-op."""
    for name in _WRAPPED:
        function = getattr(json_format, name)
        if not hasattr(function, _MARK):
            setattr(json_format, name, _accepting_old_keyword(function))


def uninstall() -> None:
    """Put protobuf's own functions back on ``json_format``."""
    for name in _WRAPPED:
        setattr(json_format, name, _original(getattr(json_format, name)))


def installed() -> bool:
    """Whether ``json_format`` holds the wrapped functions now."""
    return all(hasattr(getattr(json_format, name), _MARK) for name in _WRAPPED)


def apply(*, enabled: bool) -> None:
    """:func:`install` when ``enabled``, else :func:`uninstall`: ``json_format`` is then as the setting says."""
    if enabled:
        install()
    else:
        uninstall()


def rebind_modules_under(folder: Path) -> None:
    """Point names bound to protobuf's own functions (``from ... import MessageToDict``) at the installed ones, in
    every loaded module whose file lies under ``folder``: for a script that imported them before it called us."""
    root = folder.resolve()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().is_relative_to(root):
            rebind(vars(module))


def rebind(namespace: MutableMapping[str, Any]) -> None:
    """In ``namespace``, replace protobuf's own ``MessageToDict``/``MessageToJson`` by what ``json_format`` holds."""
    current = {id(_original(getattr(json_format, name))): getattr(json_format, name) for name in _WRAPPED}
    for key, value in list(namespace.items()):
        if callable(value) and id(value) in current:
            namespace[key] = current[id(value)]


def _accepting_old_keyword(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def accepting_old_keyword(*args: Any, **kwargs: Any) -> Any:
        if OLD_KEYWORD in kwargs:
            if NEW_KEYWORD in kwargs:
                raise TypeError(f"{function.__name__}() got both {OLD_KEYWORD} and {NEW_KEYWORD}: pass one")
            kwargs[NEW_KEYWORD] = kwargs.pop(OLD_KEYWORD)
        return function(*args, **kwargs)

    setattr(accepting_old_keyword, _MARK, True)
    return accepting_old_keyword


def _original(function: Callable[..., Any]) -> Callable[..., Any]:
    wrapped: Callable[..., Any] = getattr(function, "__wrapped__", function)
    return wrapped if hasattr(function, _MARK) else function

