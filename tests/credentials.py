"""Test credentials made on the spot: a CA with server and client certificates, NKeys and a .creds file.

Nothing here is a fixture; tests call these to write files into their ``tmp_path``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import nkeys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Unlimited account/user limits (nats-io/jwt's NoLimit); omitted limits would read as 0 = nothing allowed.
_NO_LIMITS = {"subs": -1, "data": -1, "payload": -1}
_ACCOUNT_LIMITS = {**_NO_LIMITS, "imports": -1, "exports": -1, "wildcards": True, "conn": -1, "leaf": -1}


# -- TLS -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """File paths of one test PKI: a CA, a server certificate for 127.0.0.1 and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _builder(subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def make_ca(directory: Path, name: str = "krt-test-ca") -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA; returns its certificate file, key and certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(name, _name(name), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}.pem"
    _write_cert(cert, path)
    return path, key, cert


def _leaf(
    directory: Path, name: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, *, server: bool
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = _builder(name, ca_cert.subject, key.public_key()).add_extension(
        x509.ExtendedKeyUsage([usage]), critical=False
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    _write_cert(cert, cert_path)
    _write_key(key, key_path)
    return cert_path, key_path


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate valid for 127.0.0.1 and a client certificate, all signed by the CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key, ca_cert = make_ca(directory)
    server_cert, server_key = _leaf(directory, "server", ca_key, ca_cert, server=True)
    client_cert, client_key = _leaf(directory, "client", ca_key, ca_cert, server=False)
    return Pki(ca=ca, server_cert=server_cert, server_key=server_key, client_cert=client_cert, client_key=client_key)


# -- NKeys and JWTs ---------------------------------------------------------------------------------


def new_nkey(prefix: int) -> nkeys.KeyPair:
    """A fresh NKey pair of the given kind (``nkeys.PREFIX_BYTE_USER``, ``..._ACCOUNT``, ``..._OPERATOR``)."""
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def encode_jwt(claims: dict[str, object], signer: nkeys.KeyPair) -> str:
    """A NATS JWT (``alg: ed25519-nkey``) carrying ``claims``, signed by ``signer``."""
    claims = {"iat": int(time.time()), "iss": signer.public_key.decode(), **claims}
    claims["jti"] = base64.b32encode(hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()).decode()
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = _b64(signer.sign(f"{header}.{body}".encode()))
    return f"{header}.{body}.{signature}"


@dataclass(frozen=True)
class Decentralized:
    """An operator/account/user chain: a server config snippet and the user's .creds file."""

    server_config: str
    creds: Path
    user_seed: str


def make_decentralized(directory: Path) -> Decentralized:
    """Operator, account and user keys and JWTs, with a memory resolver preloaded with the account."""
    operator = new_nkey(nkeys.PREFIX_BYTE_OPERATOR)
    account = new_nkey(nkeys.PREFIX_BYTE_ACCOUNT)
    user = new_nkey(nkeys.PREFIX_BYTE_USER)
    operator_jwt = encode_jwt(
        {"sub": operator.public_key.decode(), "name": "krt-op", "nats": {"type": "operator", "version": 2}}, operator
    )
    account_jwt = encode_jwt(
        {"sub": account.public_key.decode(), "name": "krt-acc",
         "nats": {"type": "account", "version": 2, "limits": _ACCOUNT_LIMITS}},
        operator,
    )
    user_jwt = encode_jwt(
        {"sub": user.public_key.decode(), "name": "krt-user",
         "nats": {"type": "user", "version": 2, "pub": {}, "sub": {}, **_NO_LIMITS}},
        account,
    )
    (directory / "operator.jwt").write_text(operator_jwt)
    creds = directory / "user.creds"
    creds.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user.seed.decode()}\n"
        "------END USER NKEY SEED------\n"
    )
    creds.chmod(0o600)
    config = (
        f"operator: {directory / 'operator.jwt'}\n"
        "resolver: MEMORY\n"
        f"resolver_preload: {{\n  {account.public_key.decode()}: {account_jwt}\n}}\n"
    )
    return Decentralized(server_config=config, creds=creds, user_seed=user.seed.decode())
