"""What the NATS TLS, NKey and ``.creds`` files hold, read with the other settings: a file of the wrong kind is one
settings problem (exit 2), not a traceback when the connection is made."""

from __future__ import annotations

import io
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

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
                       lambda: ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(str(cert), str(key),
                                                                                      password=_no_pass_phrase),
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
    except _EncryptedKey as exc:
        return f"{setting}: {exc}"
    except Exception as exc:  # ssl, nkeys and OS errors alike: the file cannot serve
        return f"{setting} does not hold {what}: {describe(exc)}"
    return ""


class _EncryptedKey(Exception):
    def __str__(self) -> str:
        return ("the key is encrypted, and a node has no terminal to ask for its pass phrase: give it unencrypted "
                "(openssl pkey -in KEY -out PLAIN), in a Secret")


def _no_pass_phrase() -> str:
    """OpenSSL's pass-phrase callback: asked only for an encrypted key, which would otherwise prompt on a terminal."""
    raise _EncryptedKey


def _from_seed(seed: bytes) -> None:
    import nkeys  # type: ignore[import-untyped]  # nats-py's own, for NKeys; imported only for a node that uses them

    nkeys.from_seed(bytearray(seed))


def _read_seed(path: Path) -> None:
    _from_seed(path.read_bytes().strip())  # as nats-py reads it


def _read_creds(path: Path) -> None:
    """As nats-py reads a ``.creds`` file: the line after each header, less its last byte (the newline): a ``\\r``
    or a space left there, or a seed on the last line with no newline, fails its signature at connect."""
    lines = io.BytesIO(path.read_bytes())
    found = {}
    for line in iter(lines.readline, b""):
        for header in (b"BEGIN NATS USER JWT", b"BEGIN USER NKEY SEED"):
            if header in line and header not in found:
                found[header] = lines.readline()[:-1]
    for header in (b"BEGIN NATS USER JWT", b"BEGIN USER NKEY SEED"):
        if not found.get(header):
            raise ValueError(f"no {header.decode().removeprefix('BEGIN ')} block")
        if found[header] != found[header].strip():
            raise ValueError(f"the line after {header.decode()} ends in a space or a \\r: it must end with a line feed "
                             "alone")
    try:
        _from_seed(found[b"BEGIN USER NKEY SEED"])
    except Exception as exc:
        raise ValueError(f"{describe(exc)} (its line must end with a line feed alone: no space, no \\r)") from None
