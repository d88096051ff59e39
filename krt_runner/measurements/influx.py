"""InfluxDB as a destination for measurement batches, through influxdb-client.

Only the writer thread of :mod:`krt_runner.measurements.writer` calls it: one blocking
request per batch of ready line protocol (precision ns) through
influxdb-client's synchronous write API, which starts no threads of its own.
The client's own retries are off; the writer retries with backoff and keeps
memory bounded.

Works with the v2 write endpoint (``/api/v2/write``) of InfluxDB 2.x and 3.x,
InfluxDB 1.8+ (token ``user:password``, bucket ``database/retention-policy``)
and any server that speaks it (VictoriaMetrics, Telegraf's listener, ...).
The token is sent in the ``Authorization`` header only and never logged.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from urllib3.exceptions import HTTPError

from krt_runner.config import Settings
from krt_runner.errors import WriteError
from krt_runner.url_parts import redact_url, url_credentials


@contextlib.contextmanager
def _without(*modules: str) -> Iterator[None]:
    """Make ``modules`` unimportable for the duration, unless they are loaded already.

    influxdb-client imports numpy (megabytes of RSS) only so that its ``Point``
    class recognises numpy values; we hand it ready line protocol and never use
    ``Point``. Without numpy loaded, it takes its no-numpy path. Nothing else
    runs meanwhile: this happens at start-up, before ``init``.
    """
    blocked = [name for name in modules if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # None makes the import fail, as documented
    try:
        yield
    finally:
        for name in blocked:
            del sys.modules[name]


with _without("numpy", "pandas"):
    from influxdb_client.client.influxdb_client import InfluxDBClient
    from influxdb_client.client.write_api import SYNCHRONOUS
    from influxdb_client.rest import ApiException

# HTTP answers worth retrying: the server is busy, restarting or timed out.
# Any other 4xx means this batch will never be accepted as it is.
_RETRY_STATUSES = frozenset({408, 429})
_HINTS = {
    401: "check KRT_INFLUX_TOKEN, or the user:password in KRT_INFLUX_URI",
    403: "check that KRT_INFLUX_TOKEN may write to KRT_INFLUX_BUCKET",
    404: "check KRT_INFLUX_ORG and KRT_INFLUX_BUCKET",
    413: "lower KRT_INFLUX_BATCH_SIZE",
}
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Characters of a server's error body worth a log line.
_BODY_SHOWN = 300


class InfluxDestination:
    """Writes batches of line protocol to one bucket with influxdb-client's synchronous write API."""

    description = "InfluxDB"

    def __init__(self, *, url: str, token: str, org: str, bucket: str, timeout: float) -> None:
        url, credentials = url_credentials(url)  # 1.8's user:password may come in the URL: sent as its token
        token = token or credentials
        self._bucket = bucket
        self._org = org
        self._secrets = _secret_parts(token)
        self.details: dict[str, Any] = {"url": redact_url(url), "org": org, "bucket": bucket}
        # retries=False: the writer's backoff decides, and urllib3 logs nothing per attempt.
        # An empty token sends no Authorization header (KRE v1's InfluxDB 1.8 had no authentication).
        # In whole milliseconds, at least 1: influxdb-client reads 0 as no timeout at all.
        self._client = InfluxDBClient(url=url, token=token, org=org, timeout=max(1, round(timeout * 1000)),
                                      retries=False)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    @classmethod
    def from_settings(cls, settings: Settings) -> InfluxDestination:
        return cls(url=settings.influx_uri, token=settings.influx_token, org=settings.influx_org,
                   bucket=settings.influx_bucket, timeout=settings.influx_timeout)

    def write(self, lines: list[str]) -> None:
        """One request with the whole batch; raises :class:`WriteError` saying whether to retry."""
        try:
            # One string, encoded once; influxdb-client's default precision, ns, is what the lines carry.
            self._write_api.write(bucket=self._bucket, org=self._org, record="\n".join(lines))
        except ApiException as exc:  # status 0: no answer (TLS failed), which the server may give once back
            retry = not exc.status or exc.status >= 500 or exc.status in _RETRY_STATUSES
            raise WriteError(self._redact(_http_error(exc)), retry=retry, retry_after=_retry_after(exc)) from None
        except (HTTPError, OSError) as exc:  # refused, reset, timed out, DNS: the server may come back
            raise WriteError(self._redact(f"{type(exc).__name__}: {exc}"), retry=True) from None
        except UnicodeDecodeError:  # influxdb-client reads every answer's body as UTF-8 before its status
            raise WriteError("the store answered with a body that is not UTF-8 (a proxy's error page?), its status "
                             "unread", retry=True) from None
        except ValueError as exc:  # a header http.client will not send; its text would show the token
            raise WriteError(f"the request could not be made ({type(exc).__name__}): check KRT_INFLUX_TOKEN and "
                             "KRT_INFLUX_URI", retry=False) from None

    def close(self) -> None:
        """Close the write API and the client's connection pool (the sync API has no threads)."""
        self._write_api.close()  # type: ignore[no-untyped-call]  # influxdb-client leaves close() untyped
        self._client.close()  # type: ignore[no-untyped-call]

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _http_error(exc: ApiException) -> str:
    body = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else str(exc.body or "")
    text = f"HTTP {exc.status} {exc.reason or ''}".rstrip() if exc.status else f"no HTTP answer: {exc.reason}"
    if body.strip():
        text += f": {body.strip()[:_BODY_SHOWN]}"
    hint = _HINTS.get(exc.status or 0)
    if not exc.status and "CERTIFICATE_VERIFY_FAILED" in text:
        hint = "the store's certificate is not trusted: give its CA certificate in SSL_CERT_FILE"
    elif exc.status in _REDIRECTS:
        hint = "KRT_INFLUX_URI is redirected (not followed, the token stays with its server): give the new URL"
    return f"{text} ({hint})" if hint else text


def _retry_after(exc: ApiException) -> float | None:
    """The seconds a 429 or 503 asks the client to wait (``Retry-After``), when it gives them as a number."""
    if exc.status not in (429, 503):
        return None
    try:
        headers: Any = exc.headers or {}
        return max(0.0, float(headers.get("Retry-After", "")))
    except ValueError:  # absent, or an HTTP date: the writer's own backoff decides
        return None


def _secret_parts(token: str) -> tuple[str, ...]:
    """The token, and for 1.8's ``user:password`` the password alone, as they could appear in text."""
    parts = [token]
    if ":" in token:
        parts.append(token.split(":", 1)[1])
    return tuple(part for part in parts if len(part) >= 4)
