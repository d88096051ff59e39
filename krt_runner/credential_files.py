"""What the NATS TLS, NKey and ``.creds`` files hold, read with the other settings: a file of the wrong kind is one
settings problem (exit 2), not a traceback when the connection is made."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import nkeys  # type: ignore[import-untyped]  # nats-py's own dependency for NKeys

from krt_runner.errors import describe


def credential_file_problems(values: Mapping[str, Any]) -> list[str]:
    """Problems with the files of ``KRT_NATS_TLS_CA``, ``KRT_NATS_TLS_CERT`` with ``KRT_NATS_TLS_KEY``,
    ``KRT_NATS_NKEY_SEED`` and ``KRT_NATS_CREDS`` (given and readable: their own settings checked that)."""
    ca, cert, key = values.get("nats_tls_ca"), values.get("nats_tls_cert"), values.get("nats_tls_key")
    seed, creds = values.get("nats_nkey_seed"), values.get("nats_creds")
    checks: list[tuple[str, Callable[[], object], str]] = []
    if ca:
        checks.append((f"KRT_NATS_TLS_CA {ca}", lambda: ssl.create_default_context(cafile=str(ca)),
                       "PEM certificates (the authority that signed the server's)"))
    if cert and key:
        checks.append((f"KRT_NATS_TLS_CERT {cert} with KRT_NATS_TLS_KEY {key}",
                       lambda: ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(str(cert), str(key)),
                       "a PEM certificate and its private key"))
    if seed:
        checks.append((f"KRT_NATS_NKEY_SEED {seed}", lambda: _read_seed(Path(seed)), "an NKey seed (SU...)"))
    if creds:
        checks.append((f"KRT_NATS_CREDS {creds}", lambda: _read_creds(Path(creds)),
                       "a user JWT and its NKey seed, as `nsc generate creds` writes them"))
    problems = [_problem(setting, read, what) for setting, read, what in checks]
    return [problem for problem in problems if problem]


def _problem(setting: str, read: Callable[[], object], what: str) -> str:
    try:
        read()
    except Exception as exc:  # ssl, nkeys and OS errors alike: the file cannot serve
        return f"{setting} does not hold {what}: {describe(exc)}"
    return ""


def _read_seed(path: Path) -> None:
    nkeys.from_seed(bytearray(path.read_bytes().strip()))  # as nats-py reads it


def _read_creds(path: Path) -> None:
    lines = [line.strip() for line in path.read_bytes().splitlines()]
    blocks = {}
    for header in (b"BEGIN NATS USER JWT", b"BEGIN USER NKEY SEED"):
        at = next((index for index, line in enumerate(lines) if header in line), None)
        if at is None or at + 1 >= len(lines) or not lines[at + 1]:
            raise ValueError(f"no {header.decode().removeprefix('BEGIN ')} block")
        blocks[header] = lines[at + 1]
    nkeys.from_seed(bytearray(blocks[b"BEGIN USER NKEY SEED"]))
