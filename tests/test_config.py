"""Settings from KRT_* variables and flags: defaults, overrides, every problem at once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from krt_runner.config import OPTIONS, Settings, load_settings, redact_url
from krt_runner.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
KRE_V1_ENV = {
    "KRT_NATS_SERVER": "kre-nats:4222",
    "KRT_NATS_INPUT": "v1-greet-in",
    "KRT_NATS_OUTPUT": "v1-greet-out",
    "KRT_BASE_PATH": str(ROOT / "examples" / "greeter"),
    "KRT_HANDLER_PATH": "src/greet.py",
    "KRT_NODE_NAME": "greet",
    "KRT_WORKFLOW_NAME": "greeting",
    "KRT_VERSION": "greeter-v1",
    "KRT_VERSION_ID": "id-1",
    "KRT_INFLUX_URI": "http://influxdb:8086",
}


def test_kre_v1_variables_alone_make_complete_settings():
    settings = load_settings(KRE_V1_ENV)

    assert settings.nats_servers == ("nats://kre-nats:4222",)
    assert settings.input_subject == "v1-greet-in" and settings.output_subject == "v1-greet-out"
    assert settings.base_path == ROOT / "examples" / "greeter"
    assert (settings.node_name, settings.workflow_name, settings.version) == ("greet", "greeting", "greeter-v1")
    assert settings.influx_uri == "http://influxdb:8086"
    assert not settings.is_last_node


def test_the_influx_bucket_is_kre_v1s_runtime_database_unless_set():
    assert load_settings(KRE_V1_ENV).influx_bucket == "kre"
    assert load_settings({**KRE_V1_ENV, "KRT_RUNTIME_ID": "runtime1"}).influx_bucket == "runtime1"
    assert load_settings({**KRE_V1_ENV, "KRT_RUNTIME_ID": "runtime1", "KRT_INFLUX_BUCKET": "b"}).influx_bucket == "b"
    assert load_settings({**KRE_V1_ENV, "KRT_RUNTIME_ID": "r"}, overrides={"influx_bucket": "f"}).influx_bucket == "f"


def test_an_empty_output_makes_the_last_node():
    assert load_settings({**KRE_V1_ENV, "KRT_NATS_OUTPUT": ""}).is_last_node


def test_a_flag_overrides_its_variable():
    settings = load_settings(KRE_V1_ENV, overrides={"input_subject": "other", "concurrency": "4"})

    assert settings.input_subject == "other" and settings.concurrency == 4


def test_comma_separated_servers_are_all_kept():
    settings = load_settings({**KRE_V1_ENV, "KRT_NATS_SERVER": "nats://a:4222, b:4223"})

    assert settings.nats_servers == ("nats://a:4222", "nats://b:4223")


def test_every_problem_is_reported_at_once():
    env = {"KRT_NATS_SERVER": "http://x", "KRT_CONCURRENCY": "zero", "KRT_LOG_FORMAT": "xml"}

    with pytest.raises(ConfigError) as caught:
        load_settings(env)

    text = str(caught.value)
    for name in ("KRT_NATS_SERVER", "KRT_NATS_INPUT", "KRT_HANDLER_PATH", "KRT_CONCURRENCY", "KRT_LOG_FORMAT"):
        assert name in text
    assert len(caught.value.problems) == 5


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KRT_CONCURRENCY", "0"),
        ("KRT_HANDLER_TIMEOUT", "-1"),
        ("KRT_BASE_PATH", "/no/such/dir"),
        ("KRT_NATS_OUTPUT", "has space"),
        ("KRT_NATS_OUTPUT", "x..y"),
        ("KRT_NATS_OUTPUT", "x."),
        ("KRT_NATS_OUTPUT", ".x"),
        ("KRT_NATS_OUTPUT", "x.*"),
        ("KRT_NATS_INPUT", "a..b"),
        ("KRT_NATS_INPUT", "a.>.b"),
        ("KRT_NATS_INPUT", "a."),
        ("KRT_NATS_MONGO_WRITER", "m..w"),
        ("KRT_NATS_SERVER", "nats://host:notaport"),
        ("KRT_MEASUREMENTS_ENABLED", "maybe"),
    ],
)
def test_an_invalid_value_names_its_variable(variable, value):
    with pytest.raises(ConfigError, match=variable):
        load_settings({**KRE_V1_ENV, variable: value})


@pytest.mark.parametrize("value", ["a", "a.b", "a.*", "a.>", "*.b.>", "$JS.API.x"])
def test_an_input_subject_may_have_wildcards_where_nats_allows_them(value):
    assert load_settings({**KRE_V1_ENV, "KRT_NATS_INPUT": value}).input_subject == value


def test_a_handler_timeout_of_zero_means_no_limit():
    assert load_settings({**KRE_V1_ENV, "KRT_HANDLER_TIMEOUT": "0"}).handler_timeout is None


def test_secrets_stay_out_of_repr_and_describe():
    env = {**KRE_V1_ENV, "KRT_NATS_SERVER": "nats://alice:s3cret@host:4222", "KRT_NATS_TOKEN": "tok-123",
           "KRT_INFLUX_TOKEN": "influx-tok"}
    settings = load_settings(env)

    shown = repr(settings) + str(settings.describe())

    for secret in ("s3cret", "tok-123", "influx-tok"):
        assert secret not in shown.replace(repr(settings.nats_servers), "")
    assert "s3cret" not in str(settings.describe()) and "alice:***@host" in str(settings.describe())


def test_an_invalid_secret_is_not_echoed():
    with pytest.raises(ConfigError) as caught:
        load_settings({**KRE_V1_ENV, "KRT_NATS_SERVER": "ftp://bob:hunter2@host"})

    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("token", ["FIRSTPART-of-a-long-token\nSECONDPART==", "FIRSTPART\rSECONDPART",
                                   "FIRSTPART\x00SECONDPART", "FIRSTPART€SECONDPART"])
def test_an_influx_token_no_http_header_could_carry_stops_start_up_unshown(token):
    with pytest.raises(ConfigError, match=re.escape("KRT_INFLUX_TOKEN (--influx-token)=*** is invalid")) as caught:
        load_settings({**KRE_V1_ENV, "KRT_INFLUX_TOKEN": token})

    assert "PART" not in str(caught.value)


@pytest.mark.parametrize("password", ["Zq%E2%82%ACZq", "Zq%0AZq"])  # "Zq€Zq", a line break: sent as the token
def test_influx_credentials_in_the_uri_no_http_header_could_carry_stop_start_up_unshown(password):
    with pytest.raises(ConfigError, match=re.escape("KRT_INFLUX_URI (--influx)=")) as caught:
        load_settings({**KRE_V1_ENV, "KRT_INFLUX_URI": f"http://admin:{password}@influxdb:8086"})

    assert "is invalid: its user:password has a" in str(caught.value) and "Zq" not in str(caught.value)


def test_influx_credentials_in_the_uri_and_in_the_token_at_once_stop_start_up():
    env = {**KRE_V1_ENV, "KRT_INFLUX_URI": "http://admin:s3cret@influxdb:8086", "KRT_INFLUX_TOKEN": "admin:other"}

    with pytest.raises(ConfigError, match="KRT_INFLUX_URI carries user:password and KRT_INFLUX_TOKEN is set too"):
        load_settings(env)
    assert load_settings({**env, "KRT_INFLUX_TOKEN": ""}).describe()["influx_uri"] == "http://admin:***@influxdb:8086"


def test_the_settings_line_leaves_out_the_bucket_that_defaulted_to_kre():
    assert "influx_bucket" not in load_settings(KRE_V1_ENV).describe(changed_only=True)
    assert load_settings({**KRE_V1_ENV, "KRT_RUNTIME_ID": "r1"}).describe(changed_only=True)["influx_bucket"] == "r1"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://u:p@h:1", "nats://u:***@h:1"),
        ("nats://token@h:1", "nats://***@h:1"),
        ("nats://h:1", "nats://h:1"),
    ],
)
def test_redact_url_hides_passwords_and_tokens(url, shown):
    assert redact_url(url) == shown


def test_every_setting_is_documented_in_the_settings_page():
    page = (ROOT / "docs" / "settings.md").read_text()

    missing = [o.env for o in OPTIONS if not re.search(rf"`{o.env}`", page)]

    assert OPTIONS and not missing, f"docs/settings.md lacks {missing}"


def test_settings_fields_and_options_match():
    fields = set(Settings.__dataclass_fields__)

    assert {o.field for o in OPTIONS} == fields


def test_run_with_missing_settings_exits_2_listing_every_problem(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "krt_runner", "run"],
        env={"PATH": "/usr/bin:/bin", "KRT_CONCURRENCY": "-3"},
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
    )

    assert result.returncode == 2
    for name in ("KRT_NATS_SERVER", "KRT_NATS_INPUT", "KRT_HANDLER_PATH", "KRT_CONCURRENCY"):
        assert name in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("KRT_CONCURRENCY", "10001", "at most 10000"),
        ("KRT_BATCH_MAX_SIZE", "99999999999999999999999", "at most 10000"),
        ("KRT_DRAIN_TIMEOUT", "1e10", "at most 31536000 (a year)"),
        ("KRT_INFLUX_FLUSH_INTERVAL", "1e10", "at most 31536000 (a year)"),
        ("KRT_INFLUX_FLUSH_INTERVAL", "0.000001", "from 0.01 to 31536000 (a year)"),  # an idle writer spun a core
        ("KRT_INFLUX_TIMEOUT", "1e300", "at most 31536000 (a year)"),
        ("KRT_IDLE_TIMEOUT", "1e12", "at most 31536000 (a year)"),
        ("KRT_NATS_INPUT", "x" * 1025, "over the 1024 a node subscribes to"),
        ("KRT_INFLUX_URI", "http://influx:8086/?u=admin&p=SECRET", "has a query or fragment"),
    ],
)
def test_values_a_node_could_not_use_are_refused_at_start_up(variable, value, said):
    with pytest.raises(ConfigError) as refused:
        load_settings({**KRE_V1_ENV, variable: value})

    assert variable in str(refused.value) and said in str(refused.value)
    assert "SECRET" not in str(refused.value)


def test_a_batch_node_holding_too_many_requests_at_once_is_refused():
    with pytest.raises(ConfigError, match=r"KRT_BATCH_MAX_SIZE x \(KRT_CONCURRENCY \+ 1\) = 1000 x 101"):
        load_settings({**KRE_V1_ENV, "KRT_BATCH_MAX_SIZE": "1000", "KRT_CONCURRENCY": "100"})


def test_a_health_file_that_is_a_folder_or_in_no_folder_is_refused(tmp_path):
    for value, said in ((str(tmp_path), "is a directory"), (str(tmp_path / "no" / "health"), "existing directory")):
        with pytest.raises(ConfigError, match="KRT_HEALTH_FILE") as refused:
            load_settings({**KRE_V1_ENV, "KRT_HEALTH_FILE": value})
        assert said in str(refused.value)


def test_a_comma_in_a_password_stays_in_it_and_out_of_every_message():
    password_url = "nats://alice:Pa55,w0rd@127.0.0.1:4222"
    settings = load_settings({**KRE_V1_ENV, "KRT_NATS_SERVER": f"{password_url},NATS://other:4222"})

    assert settings.nats_servers == (password_url, "nats://other:4222")  # the scheme in the case nats-py knows
    assert settings.describe()["nats_servers"] == "nats://alice:***@127.0.0.1:4222,nats://other:4222"
    with pytest.raises(ConfigError) as refused:
        load_settings({**KRE_V1_ENV, "KRT_NATS_SERVER": "nats://alice:Pa55,w0rd@127.0.0.1:notaport"})
    assert "Pa55" not in str(refused.value) and "w0rd" not in str(refused.value)


def test_a_handler_file_that_is_not_there_is_listed_with_the_other_problems():
    with pytest.raises(ConfigError) as refused:
        load_settings({**KRE_V1_ENV, "KRT_HANDLER_PATH": "src/missing.py", "KRT_CONCURRENCY": "0"}, handler_file=True)

    assert "KRT_CONCURRENCY" in str(refused.value)
    assert "KRT_HANDLER_PATH (--handler) 'src/missing.py': no file at" in str(refused.value)


def test_server_lists_keep_every_comma_of_a_password_and_split_between_servers():
    from krt_runner.setting_values import split_servers
    from krt_runner.url_parts import url_login

    assert split_servers("nats://u:Zq9x,Wk2y,Lm7z@h:4222,nats://b:4222") == ["nats://u:Zq9x,Wk2y,Lm7z@h:4222",
                                                                           "nats://b:4222"]
    assert split_servers("h1:4222,user:pw@h2:4222") == ["h1:4222", "user:pw@h2:4222"]
    assert split_servers("nats://h1:4222,nats://user:pw@h2:4222") == ["nats://h1:4222", "nats://user:pw@h2:4222"]
    # A piece with a scheme and no @ could be the start of a password or token holding a comma: read as two
    # servers, that start would be shown in clear. After a URL, an @ piece with no scheme is the rest of it.
    for secret in ("nats://alice:1234,abc@h:4222", "nats://s3cr3t,tok@h:4222", "nats://u:,abc@h:4222",
                   "tls://u:99,pw@h:4222"):
        assert split_servers(secret) == [secret]
        shown = load_settings({**KRE_V1_ENV, "KRT_NATS_SERVER": secret}).describe()["nats_servers"]
        assert "1234" not in shown and "s3cr3t" not in shown and "99" not in shown and "abc" not in shown, shown
    assert url_login("nats://us%3Aer:p%40ss%3A1@host:4222") == ("nats://host:4222", "us:er", "p@ss:1")
    assert url_login("nats://t%2Fok@host:4222") == ("nats://host:4222", "t/ok", None)
    settings = load_settings({**KRE_V1_ENV, "KRT_NATS_SERVER": "nats://u:Zq9x,Wk2y,Lm7z@h:4222"})
    assert settings.describe()["nats_servers"] == "nats://u:***@h:4222"


@pytest.mark.parametrize("url", ["nats://u:p@ss/x@h:4222", "nats://u:pa/ss@h:4222", "nats://u:pa#ss@h:4222"])
def test_a_password_with_a_raw_reserved_character_is_refused_unshown(url):
    with pytest.raises(ConfigError) as refused:
        load_settings({**KRE_V1_ENV, "KRT_NATS_SERVER": url})

    assert "percent-encode / # ? @ in a user or password" in str(refused.value)
    assert "ss" not in str(refused.value).replace("password", "").replace("KRT_NATS_PASSWORD", "")


def test_a_websocket_server_needs_aiohttp():
    import importlib.util

    if importlib.util.find_spec("aiohttp") is None:
        with pytest.raises(ConfigError, match="a websocket server needs aiohttp"):
            load_settings({**KRE_V1_ENV, "KRT_NATS_SERVER": "ws://nats:8080"})
    else:
        assert load_settings({**KRE_V1_ENV, "KRT_NATS_SERVER": "ws://nats:8080"}).nats_servers == ("ws://nats:8080",)


async def test_the_python_client_reads_servers_as_a_node_does_and_refuses_what_is_no_nats_url():
    from krt_runner.client import Client
    from krt_runner.errors import ClientConnectError
    from krt_runner.requester_connection import _server_urls

    assert _server_urls("NATS://a:4222,b:4222") == ["nats://a:4222", "nats://b:4222"]
    assert _server_urls(["nats://s3cr3t,tok@a:4222", "b:4222"]) == ["nats://s3cr3t,tok@a:4222", "nats://b:4222"]
    with pytest.raises(ClientConnectError, match="is not a NATS URL"):
        await Client.connect("http://a:4222")


def test_tls_nkey_and_creds_files_of_the_wrong_kind_are_settings_problems_listed_together(tmp_path):
    wrong = tmp_path / "hostname.txt"
    wrong.write_text("not a certificate, a key, a seed or a JWT\n")
    files = {name: str(wrong) for name in ("KRT_NATS_TLS_CA", "KRT_NATS_TLS_CERT", "KRT_NATS_TLS_KEY",
                                           "KRT_NATS_NKEY_SEED", "KRT_NATS_CREDS")}
    with pytest.raises(ConfigError) as refused:
        load_settings({**KRE_V1_ENV, **files})

    problems = str(refused.value)
    for start in (f"KRT_NATS_TLS_CA {wrong} does not hold PEM certificates",
                  f"KRT_NATS_TLS_CERT {wrong} with KRT_NATS_TLS_KEY {wrong} does not hold a PEM certificate and its "
                  "private key", f"KRT_NATS_NKEY_SEED {wrong} does not hold an NKey seed",
                  f"KRT_NATS_CREDS {wrong} does not hold a user JWT and its NKey seed"):
        assert start in problems


def test_a_node_given_a_certificate_file_of_the_wrong_kind_exits_2_with_one_message_and_no_traceback(tmp_path):
    wrong = tmp_path / "ca.pem"
    wrong.write_text("garbage\n")
    env = {**{key: value for key, value in os.environ.items() if not key.startswith("KRT_")}, **KRE_V1_ENV,
           "KRT_NATS_TLS_CA": str(wrong)}

    done = subprocess.run([sys.executable, "-m", "krt_runner", "run"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)

    assert done.returncode == 2
    assert "Traceback" not in done.stderr and f"KRT_NATS_TLS_CA {wrong} does not hold PEM certificates" in done.stderr


@pytest.mark.parametrize(("name", "raw"), [("KRT_CONCURRENCY", "1_0"), ("KRT_CONCURRENCY", "\u0663"),
                                           ("KRT_DRAIN_TIMEOUT", "1_0"), ("KRT_HANDLER_TIMEOUT", "1e-400"),
                                           ("KRT_IDLE_TIMEOUT", "1e-400"), ("KRT_NATS_RECONNECT_WAIT", "\u0663")])
def test_numbers_are_read_as_written_digits_and_a_tiny_timeout_is_not_taken_for_off(name, raw):
    with pytest.raises(ConfigError) as refused:
        load_settings({**KRE_V1_ENV, name: raw})

    assert name in str(refused.value)
    assert load_settings({**KRE_V1_ENV, "KRT_HANDLER_TIMEOUT": "0", "KRT_DRAIN_TIMEOUT": " 2.5 "}).drain_timeout == 2.5


def test_creds_nats_py_would_misread_and_an_encrypted_key_are_settings_problems_too(tmp_path):
    from credentials import make_decentralized, make_pki
    from cryptography.hazmat.primitives import serialization

    (tmp_path / "operator").mkdir()
    creds = make_decentralized(tmp_path / "operator").creds
    crlf = tmp_path / "crlf.creds"  # nats-py keeps the \r of the seed's line, and its signature fails at connect
    crlf.write_bytes(creds.read_bytes().replace(b"\n", b"\r\n"))
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    key = serialization.load_pem_private_key(pki.client_key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.pem"  # there is no terminal to ask for its pass phrase in a container
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"pass phrase")))

    assert load_settings({**KRE_V1_ENV, "KRT_NATS_CREDS": str(creds)}).nats_creds == creds  # as nsc writes it
    spaced = tmp_path / "spaced.creds"  # the JWT's line with a space at its end: the server refuses the JWT
    text = creds.read_text()
    jwt = text.split("-----BEGIN NATS USER JWT-----\n")[1].split("\n")[0]
    spaced.write_text(text.replace(jwt + "\n", jwt + " \n", 1))
    with pytest.raises(ConfigError) as refused:
        load_settings({**KRE_V1_ENV, "KRT_NATS_CREDS": str(crlf), "KRT_NATS_TLS_CERT": str(pki.client_cert),
                       "KRT_NATS_TLS_KEY": str(encrypted)})
    with pytest.raises(ConfigError) as refused_jwt:
        load_settings({**KRE_V1_ENV, "KRT_NATS_CREDS": str(spaced)})

    assert "the line after BEGIN NATS USER JWT ends in a space or a \\r" in str(refused.value)
    assert f"KRT_NATS_TLS_KEY {encrypted}: the key is encrypted, and a node has no terminal to ask for its pass " \
           "phrase" in str(refused.value)
    assert "the line after BEGIN NATS USER JWT ends in a space or a \\r" in str(refused_jwt.value)
