"""NATS's own tooling can see the node: it answers the Services API discovery subjects (ADR-32).

``$SRV.PING``, ``$SRV.INFO`` and ``$SRV.STATS``, each also with ``.<name>`` and
``.<name>.<id>``, get the standard ``io.nats.micro.v1`` responses (nats-py's
own dataclasses write them), so ``nats micro ls|info|stats`` list the nodes of
a KRT with their subjects and live counters. The data path does not change:
the node's one endpoint is its input subject in its queue group, served as
always (at-least-once: no queue group, since the node reads that subject's
stream through a JetStream consumer, which the endpoint's metadata names);
the discovery subjects are plain subscriptions of their own, and the
stats are the counters the pipeline keeps anyway.

A node whose NATS user may not subscribe to ``$SRV.>`` serves without
discovery (the broker logs it once and goes on).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from nats.aio.msg import Msg
from nats.micro.service import (
    EndpointInfo,
    EndpointStats,
    ServiceInfo,
    ServicePing,
    ServiceStats,
    ServiceVerb,
    control_subject,
)

from krt_runner import __version__

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class EndpointCounters:
    """What the pipeline has counted so far."""

    requests: int
    errors: int
    last_error: str
    processing_ns: int


def service_name(*, version: str, workflow: str, node: str) -> str:
    """``<version>-<workflow>-<node>`` (the parts that are set), in the characters ADR-32 allows."""
    return _UNSAFE_NAME.sub("_", "-".join(part for part in (version, workflow, node) if part)) or "krt-node"


class Discovery:
    """The discovery responses of one node process (one service instance, its own ``id``)."""

    def __init__(
        self, *, name: str, metadata: dict[str, str], subject: str, queue_group: str,
        counters: Callable[[], EndpointCounters],
    ) -> None:  # fmt: skip
        self.name = name
        self.id = secrets.token_hex(11)
        self._metadata = metadata
        endpoint = _UNSAFE_NAME.sub("_", metadata.get("node", "")) or name  # the node's name, as ADR-32 allows
        self._endpoint = EndpointInfo(name=endpoint, subject=subject, queue_group=queue_group, metadata={})
        self._counters = counters
        self._started = datetime.now(timezone.utc).replace(tzinfo=None)  # nats-py writes it with a Z

    def pulled_from(self, *, stream: str, consumer: str) -> None:
        """At-least-once: the endpoint's subject is read through this stream and consumer, not subscribed to."""
        metadata = {"delivery": "at-least-once", "stream": stream, "consumer": consumer}
        self._endpoint = EndpointInfo(name=self._endpoint.name, subject=self._endpoint.subject, queue_group="",
                                      metadata=metadata)

    def subjects(self) -> list[str]:
        """The nine subjects this instance answers: each verb, for all, for its name, for its id."""
        return [
            control_subject(verb, name, instance)
            for verb in ServiceVerb
            for name, instance in ((None, None), (self.name, None), (self.name, self.id))
        ]

    async def answer(self, msg: Msg) -> None:
        """Respond to one discovery request (the verb is the subject's second token)."""
        if msg.reply:
            await msg.respond(self.response(msg.subject.split(".")[1]))

    def response(self, verb: str) -> bytes:
        """The JSON response for ``PING``, ``INFO`` or ``STATS``."""
        body: Any
        if verb == ServiceVerb.STATS:
            body = ServiceStats(id=self.id, name=self.name, version=__version__, started=self._started,
                                endpoints=[self._stats()], metadata=self._metadata)
        elif verb == ServiceVerb.INFO:
            body = ServiceInfo(id=self.id, name=self.name, version=__version__, description=self._description(),
                               endpoints=[self._endpoint], metadata=self._metadata)
        else:
            body = ServicePing(id=self.id, name=self.name, version=__version__, metadata=self._metadata)
        return json.dumps(body.to_dict()).encode()

    def _stats(self) -> EndpointStats:
        counted = self._counters()
        average = counted.processing_ns // counted.requests if counted.requests else 0
        return EndpointStats(
            name=self._endpoint.name, subject=self._endpoint.subject, queue_group=self._endpoint.queue_group,
            num_requests=counted.requests, num_errors=counted.errors, last_error=counted.last_error,
            processing_time=counted.processing_ns, average_processing_time=average,
        )  # fmt: skip

    def _description(self) -> str:
        node, workflow = self._metadata.get("node", ""), self._metadata.get("workflow", "")
        return f"krt-runner node {node!r} of workflow {workflow!r}" if workflow else f"krt-runner node {node!r}"
