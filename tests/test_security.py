"""Authenticated, encrypted NATS: each kind of credential against a real nats-server configured for it,
the failures that must stop start-up (exit 2, one clear message), and no secret ever printed.

Certificates, NKeys and JWTs are made by the test (tests/credentials.py).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest
from conftest import KRT_RUNNER, ROOT, NodeFactory, greeter_pb2, node_env, request_envelope, unpack
from credentials import Pki, make_decentralized, make_pki, new_nkey

from krt_runner.envelope import decode
from krt_runner.local_krt.embedded import EmbeddedNats, free_port

HANDLERS = ROOT / "tests" / "handlers"
PASSWORD = "pw-Zq8vX2tLr9"
TOKEN = "tok-Hn3Wc7pKd5"
INFLUX_TOKEN = "influx-Vb6Jm1Sx4"
# A node that must stop at once would stop within a second or two; a retry loop would not stop at all.
FATAL_EXIT_WITHIN = 15.0


@dataclass
class Secured:
    """A nats-server configured for one kind of credential, and what a node and a client need for it."""

    server: EmbeddedNats
    env: dict[str, str]  # KRT_* variables a node needs
    client: dict[str, Any]  # nats.connect() options for the test's requester
    secrets: list[str] = field(default_factory=list)
    url: str = ""  # KRT_NATS_SERVER when it carries credentials


ServerFactory = Callable[[str], EmbeddedNats]


@pytest.fixture
def configured_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start nats-server with a config file; stopped at the end of the test."""
    started: list[EmbeddedNats] = []

    def start(config: str) -> EmbeddedNats:
        path = tmp_path / f"server-{len(started)}.conf"
        path.write_text(config)
        server = EmbeddedNats(extra_args=["-c", str(path)])
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.close()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def tls_block(pki: Pki, *, verify: bool) -> str:
    client_side = f'  ca_file: "{pki.ca}"\n  verify: true\n' if verify else ""
    return f'tls {{\n  cert_file: "{pki.server_cert}"\n  key_file: "{pki.server_key}"\n{client_side}}}\n'


def client_tls(pki: Pki, *, with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if with_cert:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


def _user_password(start: ServerFactory, tmp_path: Path, pki: Pki) -> Secured:
    server = start(f'authorization {{ user: alice, password: "{PASSWORD}" }}\n')
    env = {"KRT_NATS_USER": "alice", "KRT_NATS_PASSWORD": PASSWORD}
    return Secured(server, env, {"user": "alice", "password": PASSWORD}, [PASSWORD])


def _password_in_url(start: ServerFactory, tmp_path: Path, pki: Pki) -> Secured:
    secured = _user_password(start, tmp_path, pki)
    secured.env = {}
    secured.url = f"nats://alice:{PASSWORD}@127.0.0.1:{secured.server.port}"
    return secured


RESERVED_PASSWORD = "pw/Zq#8?v@X,2"  # each character a URL reserves, and a comma (KRT_NATS_SERVER's separator)


def _reserved_password_in_url(start: ServerFactory, tmp_path: Path, pki: Pki) -> Secured:
    server = start(f'authorization {{ user: alice, password: "{RESERVED_PASSWORD}" }}\n')
    encoded = RESERVED_PASSWORD.replace("/", "%2F").replace("#", "%23").replace("?", "%3F").replace("@", "%40")
    url = f"nats://alice:{encoded}@127.0.0.1:{server.port}"
    return Secured(server, {}, {"user": "alice", "password": RESERVED_PASSWORD}, [RESERVED_PASSWORD, encoded,
                                                                                 "pw/Zq", "pw%2FZq"], url)


def _token(start: ServerFactory, tmp_path: Path, pki: Pki) -> Secured:
    server = start(f'authorization {{ token: "{TOKEN}" }}\n')
    return Secured(server, {"KRT_NATS_TOKEN": TOKEN}, {"token": TOKEN}, [TOKEN])


def _nkey(start: ServerFactory, tmp_path: Path, pki: Pki) -> Secured:
    user = new_nkey(nkeys.PREFIX_BYTE_USER)
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(user.seed)
    server = start(f"authorization {{ users = [ {{ nkey: {user.public_key.decode()} }} ] }}\n")
    return Secured(server, {"KRT_NATS_NKEY_SEED": str(seed_file)}, {"nkeys_seed": str(seed_file)}, [user.seed.decode()])


def _creds(start: ServerFactory, tmp_path: Path, pki: Pki) -> Secured:
    chain = make_decentralized(tmp_path)
    server = start(chain.server_config)
    jwt_signature = chain.creds.read_text().split("\n")[1].rsplit(".", 1)[1]
    env = {"KRT_NATS_CREDS": str(chain.creds)}
    return Secured(server, env, {"user_credentials": str(chain.creds)}, [chain.user_seed, jwt_signature])


def _tls_ca(start: ServerFactory, tmp_path: Path, pki: Pki) -> Secured:
    server = start(tls_block(pki, verify=False))
    return Secured(server, {"KRT_NATS_TLS_CA": str(pki.ca)}, {"tls": client_tls(pki, with_cert=False)})


def _mutual_tls(start: ServerFactory, tmp_path: Path, pki: Pki) -> Secured:
    server = start(tls_block(pki, verify=True))
    env = {
        "KRT_NATS_TLS_CA": str(pki.ca),
        "KRT_NATS_TLS_CERT": str(pki.client_cert),
        "KRT_NATS_TLS_KEY": str(pki.client_key),
    }
    key_body = pki.client_key.read_text().splitlines()[1]
    return Secured(server, env, {"tls": client_tls(pki, with_cert=True)}, [key_body])


SECURED = {
    "user-password": _user_password,
    "password-in-url": _password_in_url,
    "percent-encoded-password-in-url": _reserved_password_in_url,
    "token": _token,
    "nkey": _nkey,
    "creds": _creds,
    "tls-ca": _tls_ca,
    "mutual-tls": _mutual_tls,
}
KINDS = list(SECURED)


def secure(kind: str, start: ServerFactory, tmp_path: Path, pki: Pki) -> Secured:
    """The server, node settings and client options for one kind of credential."""
    return SECURED[kind](start, tmp_path, pki)


def secured_node_env(secured: Secured, **extra: str) -> dict[str, str]:
    env = node_env(secured.server, HANDLERS, "behaviours.py", input="secure-in", name="guarded", **extra)
    env.update(secured.env)
    if secured.url:
        env["KRT_NATS_SERVER"] = secured.url
    return env


async def ask(secured: Secured, name: str) -> Any:
    nc = await nats.connect(secured.server.url, **secured.client)
    try:
        data = request_envelope(greeter_pb2.Request(name=name)).SerializeToString()
        reply = await nc.request("secure-in", data, timeout=10)
        return decode(reply.data, max_decompressed=1024 * 1024)
    finally:
        await nc.close()


# -- each kind of credential works ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_node_connects_and_serves_with_each_kind_of_credential(
    kind: str, configured_server: ServerFactory, start_node: NodeFactory, tmp_path: Path, pki: Pki
) -> None:
    secured = secure(kind, configured_server, tmp_path, pki)
    start_node(**secured_node_env(secured))

    answer = await ask(secured, "friend")

    assert unpack(answer, greeter_pb2.Request).name == "friend>guarded"


async def test_the_servers_really_refuse_a_client_without_credentials(
    configured_server: ServerFactory, tmp_path: Path, pki: Pki
) -> None:
    """The control for the test above: each server is locked, so a node got in by its credentials."""
    for kind in KINDS:
        (tmp_path / kind).mkdir()
        secured = secure(kind, configured_server, tmp_path / kind, pki)
        with pytest.raises(Exception):  # noqa: B017 - auth and TLS failures come as several types
            await nats.connect(secured.server.url, allow_reconnect=False, connect_timeout=2, error_cb=_ignore)


async def _ignore(error: Exception) -> None:
    """Expected connect errors; the assertion is on the exception."""


# -- failures that retrying cannot fix stop start-up -------------------------------------------------


def run_until_exit(env: dict[str, str], cwd: Path, timeout: float = FATAL_EXIT_WITHIN) -> tuple[int, str, float]:
    started = time.monotonic()
    full = {key: value for key, value in os.environ.items() if not key.startswith("KRT_")}
    full.update({"KRT_LOG_FORMAT": "json", "KRT_MEASUREMENTS_ENABLED": "false", **env})
    try:
        done = subprocess.run([*KRT_RUNNER, "run"], env=full, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        output = _text(exc.stdout) + _text(exc.stderr)
        raise AssertionError(f"still running after {timeout}s: a retry loop hides the cause\n{output}") from None
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def _text(captured: bytes | str | None) -> str:
    """subprocess gives bytes on a timeout even with text=True."""
    return captured.decode(errors="replace") if isinstance(captured, bytes) else captured or ""


@dataclass(frozen=True)
class Refusal:
    id: str
    kind: str
    spoil: Callable[[dict[str, str], Path, Pki], None]  # makes the node's settings wrong
    says: str  # what the one error line must contain


def _other_pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "other-pki")


def _set(**values: str) -> Callable[[dict[str, str], Path, Pki], None]:
    def spoil(env: dict[str, str], tmp_path: Path, pki: Pki) -> None:
        env.update(values)

    return spoil


def _drop(*names: str) -> Callable[[dict[str, str], Path, Pki], None]:
    def spoil(env: dict[str, str], tmp_path: Path, pki: Pki) -> None:
        for name in names:
            env.pop(name, None)

    return spoil


def _foreign_nkey(env: dict[str, str], tmp_path: Path, pki: Pki) -> None:
    stranger = tmp_path / "stranger.nk"
    stranger.write_bytes(new_nkey(nkeys.PREFIX_BYTE_USER).seed)
    env["KRT_NATS_NKEY_SEED"] = str(stranger)


def _foreign_ca(env: dict[str, str], tmp_path: Path, pki: Pki) -> None:
    env["KRT_NATS_TLS_CA"] = str(_other_pki(tmp_path).ca)


def _foreign_client_cert(env: dict[str, str], tmp_path: Path, pki: Pki) -> None:
    other = _other_pki(tmp_path)
    env.update(KRT_NATS_TLS_CERT=str(other.client_cert), KRT_NATS_TLS_KEY=str(other.client_key))


AUTH_HINT = "refused the credentials"
TLS_HINT = "certificate"
REFUSALS = [
    Refusal("wrong-password", "user-password", _set(KRT_NATS_PASSWORD="not-the-password"), AUTH_HINT),
    Refusal("no-credentials", "user-password", _drop("KRT_NATS_USER", "KRT_NATS_PASSWORD"), AUTH_HINT),
    Refusal("wrong-token", "token", _set(KRT_NATS_TOKEN="not-the-token"), AUTH_HINT),
    Refusal("unknown-nkey", "nkey", _foreign_nkey, AUTH_HINT),
    Refusal("untrusted-server-certificate", "tls-ca", _drop("KRT_NATS_TLS_CA"), TLS_HINT),
    Refusal("server-certificate-of-another-ca", "tls-ca", _foreign_ca, TLS_HINT),
    Refusal("client-certificate-of-another-ca", "mutual-tls", _foreign_client_cert, TLS_HINT),
]


@pytest.mark.parametrize("refusal", REFUSALS, ids=[r.id for r in REFUSALS])
def test_credentials_the_server_refuses_stop_start_up_with_one_clear_message_and_exit_2(
    refusal: Refusal, configured_server: ServerFactory, tmp_path: Path, pki: Pki
) -> None:
    secured = secure(refusal.kind, configured_server, tmp_path, pki)
    env = secured_node_env(secured)
    refusal.spoil(env, tmp_path, pki)

    code, output, seconds = run_until_exit(env, tmp_path)

    errors = [line for line in output.splitlines() if '"level": "error"' in line]
    assert code == 2, output
    assert len(errors) == 1, output
    assert "cannot connect to NATS" in errors[0] and refusal.says in errors[0], errors[0]
    assert "node ready" not in output
    assert seconds < FATAL_EXIT_WITHIN


@pytest.mark.parametrize("asks_for_tls", ["ca-file", "tls-url"])
def test_tls_settings_against_a_server_without_tls_stop_start_up_instead_of_going_plaintext(
    nats_server: EmbeddedNats, tmp_path: Path, pki: Pki, asks_for_tls: str
) -> None:
    env = node_env(nats_server, HANDLERS, "behaviours.py", input="in", KRT_NATS_USER="u", KRT_NATS_PASSWORD=PASSWORD)
    if asks_for_tls == "ca-file":
        env["KRT_NATS_TLS_CA"] = str(pki.ca)
    else:
        env["KRT_NATS_SERVER"] = nats_server.url.replace("nats://", "tls://")

    code, output, _ = run_until_exit(env, tmp_path)

    assert code == 2, output
    assert "does not offer TLS" in output, output
    assert "node ready" not in output


def test_an_unreachable_server_is_retried_until_it_appears(start_node: NodeFactory) -> None:
    port = free_port()
    server = EmbeddedNats(port=port)
    node = start_node(
        wait=False,
        **node_env(server, HANDLERS, "behaviours.py", input="in", KRT_NATS_RECONNECT_WAIT="0.2"),
    )
    try:
        time.sleep(3)
        assert node.process.poll() is None, f"gave up on an unreachable server:\n{node.output}"
        server.start()
        node.wait_for_line('"node ready"')
    finally:
        server.close()


# -- no secret is ever printed -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_no_secret_appears_in_anything_a_node_prints(
    kind: str, configured_server: ServerFactory, start_node: NodeFactory, tmp_path: Path, pki: Pki
) -> None:
    secured = secure(kind, configured_server, tmp_path, pki)
    influx = f"http://influx-user:{INFLUX_TOKEN}@127.0.0.1:{free_port()}"  # 1.8's user:password, sent as the token
    env = secured_node_env(
        secured, KRT_LOG_LEVEL="debug", KRT_MEASUREMENTS_ENABLED="true", KRT_INFLUX_URI=influx,
        KRT_INFLUX_FLUSH_INTERVAL="0.2", KRT_INFLUX_SHUTDOWN_TIMEOUT="0.5",
    )
    node = start_node(**env)

    await ask(secured, "fine")
    await ask(secured, "boom")  # an error with a traceback
    await asyncio.sleep(0.5)  # measurements fail to reach the unreachable InfluxDB: logged
    node.signal()
    assert await asyncio.to_thread(node.wait) == 0
    refused = _refused_start_output(secured, configured_server, tmp_path)
    invalid = _invalid_settings_output(secured, tmp_path)

    printed = "\n".join([node.output, refused, invalid])
    for secret in [*secured.secrets, INFLUX_TOKEN]:
        assert secret not in printed, f"{secret!r} was printed:\n{printed}"
    assert "***" in printed  # the settings line shows that secrets were set, hidden


def _refused_start_output(secured: Secured, start: ServerFactory, tmp_path: Path) -> str:
    """The same credentials at a server that wants others: the fatal message must not echo them either."""
    locked = start('authorization { user: zed, password: "other-password" }\n')
    env = secured_node_env(secured)
    env["KRT_NATS_SERVER"] = secured.url.replace(str(secured.server.port), str(locked.port)) or locked.url
    code, output, _ = run_until_exit(env, tmp_path)
    assert code == 2, output
    return output


def _invalid_settings_output(secured: Secured, tmp_path: Path) -> str:
    """Settings rejected before any connection (a bad port next to the credentials)."""
    env = secured_node_env(secured, KRT_CONCURRENCY="many")
    env["KRT_NATS_SERVER"] = (secured.url or secured.server.url).replace(f":{secured.server.port}", ":not-a-port")
    code, output, _ = run_until_exit(env, tmp_path)
    assert code == 2, output
    return output


def test_passwords_in_server_urls_are_hidden_in_every_line(
    configured_server: ServerFactory, tmp_path: Path, pki: Pki, start_node: NodeFactory
) -> None:
    secured = secure("password-in-url", configured_server, tmp_path, pki)
    other = f"nats://carol:{PASSWORD}x@127.0.0.1:{free_port()}"
    env = secured_node_env(secured, KRT_LOG_LEVEL="debug")
    env["KRT_NATS_SERVER"] = f"{secured.url},{other}"

    node = start_node(**env)
    node.signal()
    node.wait()

    assert PASSWORD not in node.output, node.output
    assert "alice:***@127.0.0.1" in node.output, node.output


async def test_the_python_client_logs_in_with_a_percent_encoded_password_in_its_url(
    configured_server: ServerFactory, tmp_path: Path, pki: Pki
) -> None:
    from krt_runner.client import Client

    secured = _reserved_password_in_url(configured_server, tmp_path, pki)

    client = await Client.connect(secured.url, connect_timeout=10)
    await client.close()
