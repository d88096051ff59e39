"""``ctx.db.save`` and ``ctx.prediction.save`` on the wire: a core NATS request to KRE's mongo-writer
(``KRT_NATS_MONGO_WRITER``) over the node's own connection. As in KRE v1, a document that was not saved is logged
(a warning naming the collection), never raised: the message is answered all the same."""

from __future__ import annotations

from typing import Any

from krt_runner.errors import CallTimeout, NoResponders, NotConnected
from krt_runner.mongo import wire
from krt_runner.node.broker import Broker


class NatsDocumentWriter:
    """Sends request bodies to the mongo-writer and reads its ``{"success": ...}`` answer."""

    def __init__(self, broker: Broker, subject: str) -> None:
        self._broker = broker
        self._subject = subject

    async def send(self, coll: str, body: bytes, *, timeout: float, logger: Any) -> None:
        subject = self._subject
        try:
            reply = await self._broker.request(subject, body, timeout=timeout)
        except NoResponders:
            logger.warning("document not saved: no mongo-writer listens on its subject", collection=coll,
                           subject=subject)
        except CallTimeout:
            logger.warning("document maybe not saved: the mongo-writer did not answer in time", collection=coll,
                           subject=subject, timeout=timeout)
        except NotConnected as exc:
            logger.warning("document not saved: NATS is not connected", collection=coll, subject=subject,
                           error=str(exc))
        else:
            if not wire.succeeded(reply):
                logger.warning("document not saved: the mongo-writer answered without success", collection=coll,
                               subject=subject, answer=reply[:200].decode(errors="replace"))
