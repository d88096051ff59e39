"""One hierarchy for every error krt-runner raises on purpose, the exit codes, and how an exception is described."""

from __future__ import annotations

# Exit codes of every command: 0 done, 1 failed (no usable answer, a node died, init raised), 2 bad usage or input.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def describe(exc: BaseException) -> str:
    """``Name: text`` of an exception, or ``Name`` alone when it has no text: for one-line logs and error answers."""
    try:
        text = str(exc).strip()
    except BaseException:  # its own __str__ failed (a wrapped HTTP error parsing a body that is no JSON)
        text = "<exception str() failed>"  # as Python shows it
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class KrtRunnerError(Exception):
    """Base class of every error krt-runner raises on purpose."""


class ConfigError(KrtRunnerError):
    """One or more settings are missing or invalid; ``problems`` lists each of them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"invalid settings ({len(self.problems)} problem(s)):\n{lines}")


class NotAModuleError(KrtRunnerError):
    """A user's file cannot be loaded as a Python module."""


class HandlerLoadError(KrtRunnerError):
    """The handler module could not be found, imported or lacks ``handler``."""


class EnvelopeError(KrtRunnerError):
    """Bytes received are not a valid (possibly gzip-compressed) KreNatsMessage.

    ``heading``: for an envelope that inflates past the cap, its leading fields (``tracking_id``, ``tracking``,
    ``reply``, which serializers write before the payload) as bytes, so that its requester still gets the error
    answer; else empty."""

    heading = b""


class PayloadTooLargeError(KrtRunnerError):
    """An answer is over the server's max payload even after compression."""


class HandlerTimeoutError(KrtRunnerError):
    """The handler did not finish within ``KRT_HANDLER_TIMEOUT``."""


class DrainTimeoutError(KrtRunnerError):
    """The node stopped before this message was answered: ``KRT_DRAIN_TIMEOUT`` ran out."""


class InvalidResultError(KrtRunnerError):
    """The handler returned something that is not a protobuf message."""


class ReplyError(KrtRunnerError):
    """``ctx.reply`` was called twice, or with no requester to answer."""


class NothingStoredError(KeyError, AttributeError):
    """``ctx.get`` of a key nothing was stored under: a ``KeyError``, and an ``AttributeError`` as KRE v1's was
    (its ``get`` was ``getattr``), so that KRE v1 code catching either goes on working."""


class BrokerConnectError(KrtRunnerError):
    """The first connection to NATS failed for a reason retrying cannot fix."""


class JetStreamError(BrokerConnectError):
    """At-least-once delivery cannot start: the server has no JetStream, or the node's stream or consumer cannot be
    made; the text says which and what to change."""


class DeliveryLimitError(KrtRunnerError):
    """A message came for the last time (``KRT_JETSTREAM_MAX_DELIVER`` deliveries and none answered)."""


class AnswerRefusedError(KrtRunnerError):
    """The next node's stream refused a middle node's answer for good (full, too large): the request is answered
    with this error instead of being delivered again."""


class HandlerError(KrtRunnerError):
    """The user's handler raised; the message names the exception."""

    # True for all but one of the errors of a batch whose function raised: its traceback is logged once
    traceback_logged_with_another = False


class BatchResultError(KrtRunnerError):
    """A batch function returned something other than one result per request: the message names both counts."""


class InitError(KrtRunnerError):
    """The user's ``init`` raised; the node does not start."""


class KrtFileError(KrtRunnerError):
    """A ``krt.yml`` is missing or invalid; ``problems`` lists each as ``field: what is wrong``."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = list(problems)
        lines = "\n".join(f"  - {path}: {problem}" for problem in self.problems)
        super().__init__(f"{path} is invalid ({len(self.problems)} problem(s)):\n{lines}")


class CallError(KrtRunnerError):
    """A request to a workflow got no usable answer (``krt_runner.client``)."""


class ErrorAnswer(CallError):
    """The workflow answered with an error; ``error`` is its text, ``tracking_id`` the request's id."""

    def __init__(self, error: str, *, tracking_id: str) -> None:
        self.error = error
        self.tracking_id = tracking_id
        super().__init__(error)


class CallTimeout(CallError):
    """No answer arrived within the timeout."""


class NoResponders(CallError):
    """No node listens on the subject (the workflow is not running, or the subject is wrong)."""


class UnexpectedAnswer(CallError):
    """The answer's payload is not the expected response type."""


class ClientConnectError(CallError):
    """The client could not reach NATS."""


class InvalidRequestError(KrtRunnerError):
    """The request was rejected before processing: a payload of the wrong type, or ``validate`` raised."""


class DatabaseError(KrtRunnerError):
    """``ctx.db.find`` cannot read: no database is set, its driver is not installed, or it cannot be reached."""


class MeasurementError(KrtRunnerError, ValueError):
    """A point that InfluxDB would reject: raised in the caller, never in the writer."""


class WriteError(KrtRunnerError):
    """A batch of points was not written. ``retry=False``: the destination refused it for good; ``retry_after``:
    the seconds the server asked the writer to wait before trying again."""

    def __init__(self, text: str, *, retry: bool, retry_after: float | None = None) -> None:
        super().__init__(text)
        self.retry = retry
        self.retry_after = retry_after


class ProtoError(KrtRunnerError):
    """Message types could not be loaded or chosen, or JSON does not fit them."""


class UpError(KrtRunnerError):
    """``up`` cannot run this KRT as asked; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("cannot start:\n" + "\n".join(f"  - {problem}" for problem in problems))


class BuildProblems(KrtRunnerError):
    """The KRT cannot be packed; ``problems`` lists every reason, as ``check`` words them."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) in {source}")


class NotConnected(CallError):
    """The NATS connection is down (reconnecting, draining or closed): nothing can be sent now."""


class EntrypointError(KrtRunnerError):
    """The KRT's proto cannot be served as its entrypoint; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("cannot serve the entrypoint:\n" + "\n".join(f"  - {problem}" for problem in problems))


class ListenError(KrtRunnerError):
    """A server could not listen on its address (the port is in use, or the host is not this machine's)."""
