"""The package's layout holds: no import cycles, each layer imports only those below it, nats only in the broker
(and its JetStream set-up) and the client (and its JetStream requests)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "krt_runner"
# What each subpackage may not import: the node runtime never needs the local tools, and so on.
FORBIDDEN = {
    "krt_runner.node": ("krt_runner.local_krt", "krt_runner.krt", "krt_runner.testing"),
    "krt_runner.measurements": ("krt_runner.node", "krt_runner.local_krt", "krt_runner.krt"),
    "krt_runner.krt": ("krt_runner.local_krt", "krt_runner.measurements", "krt_runner.entrypoint"),
    "krt_runner.entrypoint": ("krt_runner.local_krt", "krt_runner.testing", "krt_runner.measurements"),
    "krt_runner.mongo": ("krt_runner.node", "krt_runner.local_krt", "krt_runner.krt", "krt_runner.testing"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py") if "_pb2" not in path.name}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Modules of the package and outside it that ``path`` imports, at any depth (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & known
            found |= submodules or {node.module}
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, set(known)) & set(known) for name, path in known.items()}


def cycle_from(graph: dict[str, set[str]], start: str) -> list[str]:
    stack, seen = [(start, [start])], set()
    while stack:
        name, path = stack.pop()
        for imported in graph[name] - {"krt_runner"}:  # the package itself is loaded before any module of it
            if imported == start:
                return [*path, start]
            if imported not in seen:
                seen.add(imported)
                stack.append((imported, [*path, imported]))
    return []


def test_no_module_of_the_package_imports_itself_through_others():
    graph = import_graph()

    cycles = [cycle for name in graph if (cycle := cycle_from(graph, name))]

    assert len(graph) > 30 and not cycles, cycles


def test_each_layer_imports_only_what_is_below_it():
    graph = import_graph()

    wrong = [(name, imported) for name, imported_all in graph.items() for imported in imported_all
             for layer, forbidden in FORBIDDEN.items() if name.startswith(layer) and imported.startswith(forbidden)]

    assert not wrong, wrong


def test_only_the_entrypoint_imports_grpc():
    known = modules()

    importers = {name for name, path in known.items()
                 if any(imported.split(".")[0].startswith("grpc") for imported in imports_of(path, set(known)))}

    assert importers and all(name.startswith("krt_runner.entrypoint.") for name in importers), importers


def test_only_the_broker_its_connection_and_requests_jetstream_and_the_client_import_nats():
    known = modules()

    importers = sorted(name for name, path in known.items()
                       if any(imported.split(".")[0] == "nats" for imported in imports_of(path, set(known))))

    assert importers == ["krt_runner.client", "krt_runner.jetstream_requests", "krt_runner.node.broker",
                         "krt_runner.node.direct_parser", "krt_runner.node.discovery", "krt_runner.node.jetstream",
                         "krt_runner.node.nats_connection",
                         "krt_runner.node.request_mux", "krt_runner.requester_connection"]


def test_no_module_is_longer_than_a_sitting():
    lengths = {name: len(path.read_text().splitlines()) for name, path in modules().items()}

    assert lengths and not {name: n for name, n in lengths.items() if n > 320}
