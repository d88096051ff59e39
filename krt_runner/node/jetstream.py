"""JetStream for a node in at-least-once mode: its stream and its durable consumer.

With broker.py and nats_connection.py, the only node modules that import nats-py.

At start (:func:`open_input`, right after connecting, before ``init``): JetStream must answer; the stream that
already captures the input subject is used, or one is made (named by :mod:`krt_runner.jetstream_names`: file
storage, work-queue retention, a duplicate window that outlasts every redelivery); then the node's one durable
pull consumer, shared by all its replicas, is made or brought to this node's settings (explicit acks, ack wait,
max deliver, deliver all, filtered on the input subject). Never a consumer per request or per replica: a
work-queue stream refuses overlapping consumers (JetStream errors 10099 and 10100).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from krt_runner.errors import JetStreamError, describe
from krt_runner.jetstream_names import consumer_name, stream_name

# nats-server's own default duplicate window: a floor for the one computed from the ack wait.
_MIN_DUPLICATE_WINDOW = 120.0
_STREAM_NAME_IN_USE = 10058  # JetStream's "stream name already in use with a different configuration"
_REPLICAS_NOT_CLUSTERED = 10074  # "replicas > 1 not supported in non-clustered mode"
_NO_JETSTREAM = (
    "the NATS server has no JetStream, which at-least-once delivery needs: start nats-server with -js (or a "
    "jetstream block in its configuration, and JetStream enabled for this connection's account), or deliver at most "
    "once ({setting})"
)
_LOOKUP_TIMEOUT = 1.0  # seconds an at-most-once node waits for JetStream's word on its input subject
# How each user of require_jetstream chooses the delivery mode.
NODE_SETTING = "KRT_DELIVERY=at-most-once"
# A JetStream API request left unanswered (nats-py's 5 s: a busy or starting server) is asked again, this many times
# in all, a second apart, before the node gives up.
_API_ATTEMPTS = 6
_API_RETRY_PAUSE = 1.0
_T = TypeVar("_T")


@dataclass(frozen=True)
class JetStreamInput:
    """Where a node pulls its messages from."""

    stream: str
    consumer: str
    stream_created: bool  # False: a stream that was there already captures the input subject
    # On a stream that keeps handled requests: where a consumer made here starts (0: a work queue, its first message)
    resume_at: int = 0


def consumer_max_deliver(max_deliver: int) -> int:
    """The consumer's own limit: one delivery more than ``KRT_JETSTREAM_MAX_DELIVER``, the one that only answers
    the error (see :mod:`~krt_runner.node.js_pipeline`)."""
    return max_deliver + 1


def duplicate_window(*, ack_wait: float, max_deliver: int) -> float:
    """Seconds a ``Nats-Msg-Id`` is remembered: longer than every redelivery of the message that caused it."""
    return max(_MIN_DUPLICATE_WINDOW, ack_wait * (consumer_max_deliver(max_deliver) + 1))


async def open_input(
    client: Client, *, subject: str, ack_wait: float, max_deliver: int, replicas: int = 1, resume_at: int = 0
) -> JetStreamInput:
    """Make sure a stream captures ``subject`` (one made here keeps ``replicas`` copies) and the node's durable
    consumer reads it; :class:`JetStreamError` with the reason and the fix when JetStream cannot. ``resume_at``: the
    stream sequence a consumer made again starts at, on a stream that keeps handled requests (0: the next message)."""
    js = await require_jetstream(client, attempts=_API_ATTEMPTS)
    window = duplicate_window(ack_wait=ack_wait, max_deliver=max_deliver)
    stream, created = await _stream_for(js, subject, window, replicas)
    lookup = client.jetstream(timeout=_LOOKUP_TIMEOUT)  # what it may do without: a second, not six
    span = None if created else await _span_unless_work_queue(lookup, stream)
    start = None
    if span is not None:
        first, following = span
        if not resume_at:  # its first start: the next message
            resume_at = following
        elif resume_at > following:  # the stream was made again, its sequences anew: none of its messages was taken
            resume_at = first
        start = await _existing_start(lookup, stream, consumer_name(subject), resume_at)
    await _make_consumer(js, stream, subject, ack_wait=ack_wait, max_deliver=max_deliver, start=start)
    return JetStreamInput(stream=stream, consumer=consumer_name(subject), stream_created=created, resume_at=resume_at)


async def _span_unless_work_queue(js: JetStreamContext, stream: str) -> tuple[int, int] | None:
    """The sequences of ``stream``'s first message and of its next one; ``None`` for a work queue, and when
    JetStream does not say (a user allowed only the requests a node made before it looked: its consumer then starts
    at the first message, as it always did)."""
    try:
        info = await js.stream_info(stream)
    except (APIError, NatsError, asyncio.TimeoutError):
        return None
    if info.config.retention == api.RetentionPolicy.WORK_QUEUE:
        return None
    return max(info.state.first_seq, 1), info.state.last_seq + 1


async def require_jetstream(client: Client, *, setting: str = NODE_SETTING, attempts: int = 1) -> JetStreamContext:
    """This connection's JetStream, once it has answered (asked ``attempts`` times while it does not: a node's
    start-up waits for a busy server, a requester does not); :class:`JetStreamError` saying how to get one, or to
    choose at-most-once with ``setting`` (``KRT_DELIVERY=at-most-once`` for a node)."""
    js = client.jetstream()
    no_jetstream = _NO_JETSTREAM.format(setting=setting)
    try:
        await answered(js.account_info, attempts=attempts)
    except ServiceUnavailableError:
        raise JetStreamError(no_jetstream) from None
    except APIError as exc:
        raise JetStreamError(f"JetStream refused this account: {_api_text(exc)}; {no_jetstream}") from None
    except asyncio.TimeoutError as exc:
        raise JetStreamError(_api_text(exc, attempts=attempts)) from None
    except NatsError as exc:
        raise JetStreamError(f"JetStream did not answer ({describe(exc)}); {no_jetstream}") from None
    return js


async def consumer_missing(client: Client, stream: str, consumer: str) -> bool:
    """Whether JetStream answers that ``consumer`` (or its stream) does not exist; ``False`` when it does, or when
    JetStream gives no answer (not ready yet)."""
    try:
        await client.jetstream(timeout=_LOOKUP_TIMEOUT).consumer_info(stream, consumer)
    except NotFoundError:
        return True
    except (APIError, NatsError, asyncio.TimeoutError):
        return False
    return False


async def stream_capturing(client: Client, subject: str) -> tuple[str, bool]:
    """The stream that captures ``subject`` and whether it is a work-queue one (an at-least-once workflow's), or
    ``("", False)``: none, or no JetStream, or no answer within a second. An at-most-once node warns of it: a
    request to it gets the stream's acknowledgement as its answer, first."""
    name = await stream_of(client, subject)
    if not name:
        return "", False
    try:
        info = await client.jetstream(timeout=_LOOKUP_TIMEOUT).stream_info(name)
    except (APIError, NatsError, asyncio.TimeoutError):
        return "", False
    return name, info.config.retention == api.RetentionPolicy.WORK_QUEUE


async def none_captures(client: Client, subject: str) -> bool:
    """Whether JetStream answers, within a second, that no stream captures ``subject``; ``False`` for any other
    answer (a stream, JetStream unavailable for now as while a cluster elects its leader) or none."""
    try:
        await client.jetstream(timeout=_LOOKUP_TIMEOUT).find_stream_name_by_subject(subject)
    except NotFoundError:
        return True
    except (APIError, NatsError, asyncio.TimeoutError):
        return False
    return False


async def stream_of(client: Client, subject: str, *, timeout: float = _LOOKUP_TIMEOUT) -> str | None:
    """The name of the stream that captures ``subject``; ``""`` when none does (or the server has no JetStream);
    ``None`` when JetStream gave no answer in time."""
    if not client._server_info.get("jetstream"):  # nats-py keeps the server's INFO there; no request then
        return ""
    try:
        return str(await client.jetstream(timeout=timeout).find_stream_name_by_subject(subject))
    except APIError:  # none found, or JetStream off for this account: no stream of it captures the subject
        return ""
    except (NatsError, asyncio.TimeoutError):
        return None


async def consumer_pulling(client: Client, stream: str, subject: str) -> bool:
    """Whether a node takes the requests of ``subject`` from ``stream``: its nodes' durable consumer has pull requests
    waiting, or messages handed out and not yet acknowledged (a busy node). ``False`` when there is no such consumer,
    or no answer within a second."""
    try:
        info = await client.jetstream(timeout=_LOOKUP_TIMEOUT).consumer_info(stream, consumer_name(subject))
    except (APIError, NatsError, asyncio.TimeoutError):
        return False
    return bool(info.num_waiting or info.num_ack_pending)


async def requests_stored(client: Client, subject: str) -> int:
    """Requests stored for the nodes of ``subject`` and not yet acknowledged (waiting, or being handled): its
    consumer's count, or, with the consumer deleted (a node makes it again), what its work-queue stream holds. 0
    when there is no such stream, or no answer within a second."""
    stream = await stream_of(client, subject)
    if not stream:
        return 0
    js = client.jetstream(timeout=_LOOKUP_TIMEOUT)
    try:
        try:
            info = await js.consumer_info(stream, consumer_name(subject))
        except NotFoundError:
            held = await js.stream_info(stream)
            return held.state.messages if held.config.retention == api.RetentionPolicy.WORK_QUEUE else 0
    except (APIError, NatsError, asyncio.TimeoutError):
        return 0
    return (info.num_pending or 0) + (info.num_ack_pending or 0)


async def _stream_for(js: JetStreamContext, subject: str, window: float, replicas: int) -> tuple[str, bool]:
    try:
        return await answered(lambda: js.find_stream_name_by_subject(subject)), False
    except NotFoundError:
        pass
    except (APIError, NatsError, asyncio.TimeoutError) as exc:
        raise JetStreamError(f"cannot look up the JetStream stream for the input subject {subject!r}: "
                             f"{_api_text(exc)}") from None
    name = stream_name(subject)
    config = api.StreamConfig(
        name=name, subjects=[subject], retention=api.RetentionPolicy.WORK_QUEUE, storage=api.StorageType.FILE,
        duplicate_window=window, num_replicas=replicas,
        # Full (a limit an operator added), it refuses new requests in words instead of dropping stored ones unanswered.
        discard=api.DiscardPolicy.NEW,
    )  # fmt: skip
    try:
        await answered(lambda: js.add_stream(config))
    except (APIError, NatsError, asyncio.TimeoutError) as exc:
        raise JetStreamError(f"cannot create JetStream stream {name!r} for the input subject {subject!r}: "
                             f"{_api_text(exc)}{_stream_fix(exc, name, subject)}") from None
    return name, True


def _stream_fix(exc: BaseException, name: str, subject: str) -> str:
    if isinstance(exc, asyncio.TimeoutError):  # _api_text says what to do
        return ""
    if isinstance(exc, APIError) and exc.err_code == _STREAM_NAME_IN_USE:
        return (f"; a stream named {name!r} exists and captures other subjects: delete or rename it, or add "
                f"{subject!r} to its subjects")
    if isinstance(exc, APIError) and exc.err_code == _REPLICAS_NOT_CLUSTERED:
        return "; a single NATS server keeps one copy of a stream: set KRT_JETSTREAM_REPLICAS=1, or use a NATS cluster"
    return "; create a stream that captures it (work-queue retention), or let this node's account create streams"


async def _make_consumer(
    js: JetStreamContext, stream: str, subject: str, *, ack_wait: float, max_deliver: int,
    start: dict[str, Any] | None,
) -> None:
    """Create the durable consumer, or bring an existing one to these settings (the last replica started wins).

    On a work-queue stream (``start`` None) a new consumer starts at the stream's first message: what it holds is
    what no node has handled. On a stream of another retention (limits, interest: an archive's, say) that holds
    requests handled long ago, a new consumer starts at the next message, or, made again after it was deleted while
    the node ran, after the last message the node took (those stored since wait there); an existing one keeps where
    it starts (``start``, from :func:`_existing_start`).
    """
    name = consumer_name(subject)
    start = start or {"deliver_policy": api.DeliverPolicy.ALL}
    config = api.ConsumerConfig(
        name=name, durable_name=name, ack_policy=api.AckPolicy.EXPLICIT, ack_wait=ack_wait,
        max_deliver=consumer_max_deliver(max_deliver), filter_subject=subject, **start,
    )  # fmt: skip
    try:
        await answered(lambda: js.add_consumer(stream, config))
    except (APIError, NatsError, asyncio.TimeoutError) as exc:
        fix = "" if isinstance(exc, asyncio.TimeoutError) else (
            "; a consumer of that name with settings JetStream will not change (not a pull consumer, another ack "
            "or deliver policy), or another consumer of the subject on a work-queue stream, is in the way: delete it "
            f"(nats consumer rm {stream} <name>)")
        raise JetStreamError(f"cannot create or update the durable consumer {name!r} on stream {stream!r} for "
                             f"{subject!r}: {_api_text(exc)}{fix}") from None


async def _existing_start(js: JetStreamContext, stream: str, name: str, resume_at: int) -> dict[str, Any]:
    """Where the consumer ``name`` starts if it exists (JetStream does not change that), at ``resume_at`` if it does
    not; at the first when JetStream does not say, as it always did."""
    try:
        info = await js.consumer_info(stream, name)
    except NotFoundError:
        return {"deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": resume_at}
    except (APIError, NatsError, asyncio.TimeoutError):
        return {"deliver_policy": api.DeliverPolicy.ALL}
    existing = info.config
    return {"deliver_policy": existing.deliver_policy or api.DeliverPolicy.ALL,
            "opt_start_seq": existing.opt_start_seq, "opt_start_time": existing.opt_start_time}


async def answered(request: Callable[[], Awaitable[_T]], *, attempts: int = _API_ATTEMPTS) -> _T:
    """``request()``, a JetStream API request, asked again while it times out (a busy server answers late), up to
    ``attempts`` times in all; the last timeout is raised."""
    for _ in range(attempts - 1):
        try:
            return await request()
        except asyncio.TimeoutError:
            await asyncio.sleep(_API_RETRY_PAUSE)
    return await request()


def _api_text(exc: BaseException, *, attempts: int = _API_ATTEMPTS) -> str:
    if isinstance(exc, APIError) and exc.description:
        return f"{exc.description} (JetStream error {exc.err_code})"
    if isinstance(exc, asyncio.TimeoutError):  # a refusal by permissions gets no answer either
        if attempts == 1:  # a requester: it logs no NATS errors
            return ("JetStream did not answer: a busy or unreachable server, or a user not allowed to publish to "
                    "$JS.API")
        return (f"JetStream did not answer, {attempts} times in a row: a busy or unreachable server, or a user not "
                "allowed to publish that request to $JS.API (see the NATS error lines before this one, and the "
                "user's permissions)")
    return describe(exc)
