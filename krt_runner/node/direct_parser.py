"""nats-py's protocol parser, with the messages of direct subscriptions taken on a short path.

nats-py's parser matches a regular expression per message, fills a dict, and
awaits a coroutine per message. Most of what a loaded node reads is ``MSG``
frames for its own direct subscriptions (``NodeClient.subscribe_direct``), one
after the other: those are cut out of the buffer here, by plain ``bytes``
methods, and handed to their callback without a coroutine when the callback is
a plain function.

Anything else is left to nats-py's parser, where it was: another operation
(``PING``, ``INFO``, ``-ERR``, ``HMSG``), a message for another subscription, a
control line this path does not read exactly as nats-py would, a buffer in the
middle of a frame nats-py has begun, or one so large that copying it would cost
more than it saves. A frame whose payload has not all arrived stays in the
buffer, untouched, until the next read.
"""

from __future__ import annotations

from typing import Any

from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

_MSG = b"MSG "
_CRLF = b"\r\n"
# A bigger buffer goes nats-py's way: this path parses a copy of the whole buffer, to slice each part once.
_MOST_BYTES = 256 * 1024


class DirectParser(Parser):
    """nats-py's :class:`Parser` for a ``NodeClient``: see the module's docstring."""

    async def parse(self, data: bytes = b"") -> None:
        buffer = self.buf
        buffer.extend(data)
        if self.state == AWAITING_CONTROL_LINE and len(buffer) <= _MOST_BYTES:
            taken, waiting = await self._take_direct(bytes(buffer))
            if taken:
                del buffer[:taken]
            if waiting:  # the rest is the start of a direct frame
                return
        if buffer:
            await super().parse()

    async def _take_direct(self, view: bytes) -> tuple[int, bool]:
        """Hand over the direct frames at the start of ``view``: how many bytes they took, and whether what follows
        is an incomplete direct frame (``False``: it is nats-py's to parse, or nothing is left)."""
        client: Any = self.nc
        direct, stats, position, end = client.direct_callbacks, client.stats, 0, len(view)
        while view.startswith(_MSG, position):
            line_end = view.find(_CRLF, position)
            args = _msg_args(view[position + 4 : line_end]) if line_end >= 0 else None
            if args is None or (callback := direct.get(args[1])) is None:
                return position, False
            subject, sid, reply, size = args
            start = line_end + 2
            if start + size + 2 > end:
                return position, True
            position = start + size + 2
            payload = view[start : start + size]
            take, is_async = callback
            try:
                taken = take(sid, subject, reply, payload, None)
                if is_async:
                    taken = await taken
            except Exception as exc:
                client.count_bad_frame(exc)
                continue
            if taken:
                stats["in_msgs"] += 1
                stats["in_bytes"] += size
            else:
                await client.deliver_declined(sid, subject, reply, payload)
        return position, False


def _msg_args(line: bytes) -> tuple[bytes, int, bytes, int] | None:
    """A ``MSG`` control line's subject, sid, reply subject (or ``b""``) and payload size; ``None`` when it is not
    one this path reads exactly as nats-py's parser would."""
    parts = line.split()
    if len(parts) == 3:
        subject, sid, size = parts
        reply = b""
    elif len(parts) == 4:
        subject, sid, reply, size = parts
    else:
        return None
    if not (sid.isdigit() and size.isdigit()):
        return None
    return subject, int(sid), reply, int(size)
