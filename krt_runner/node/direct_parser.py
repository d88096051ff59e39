"""nats-py's protocol parser, with the messages of direct subscriptions taken on a short path.

nats-py's parser matches regular expressions per message (slow on the long
reply subjects of JetStream deliveries), fills a dict, and awaits a coroutine
per message. Most of what a loaded node reads is ``MSG`` and ``HMSG`` frames
for its own direct subscriptions (``NodeClient.subscribe_direct``), one after
the other: those are cut out of the buffer here, by plain ``bytes`` methods,
and handed to their callback, a plain function: no coroutine per message.

Anything else is left to nats-py's parser, where it was: another operation
(``PING``, ``INFO``, ``-ERR``), a message for another subscription, a
control line this path does not read exactly as nats-py would, a buffer in the
middle of a frame nats-py has begun, or one so large that copying it would cost
more than it saves. A frame whose payload has not all arrived stays in the
buffer, untouched, until the next read.
"""

from __future__ import annotations

from typing import Any

from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

_MSG = b"MSG "
_HMSG = b"HMSG "
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
        direct, position, end = client.direct_callbacks, 0, len(view)
        while (args := _frame_args(view, position)) is not None:
            line_end, subject, sid, reply, header_size, size = args
            if (callback := direct.get(sid)) is None:
                break
            start = line_end + 2
            if start + size + 2 > end:
                return position, True
            position = start + size + 2
            headers = view[start : start + header_size] if header_size else None
            payload = view[start + header_size : start + size]
            waiting = client.hand_over(callback, sid, subject, reply, payload, headers)
            if waiting is not None:
                await waiting
        return position, False


def _frame_args(view: bytes, position: int) -> tuple[int, bytes, int, bytes, int, int] | None:
    """The ``MSG`` or ``HMSG`` frame at ``position``: the end of its control line, its subject, sid, reply subject
    (or ``b""``), header block size (0 for ``MSG``) and size in all; ``None`` for anything else, or a control line
    this path does not read exactly as nats-py's parser would."""
    if view.startswith(_MSG, position):
        skip, headers = len(_MSG), 0
    elif view.startswith(_HMSG, position):
        skip, headers = len(_HMSG), 1
    else:
        return None
    line_end = view.find(_CRLF, position)
    parts = view[position + skip : line_end].split() if line_end >= 0 else []
    if len(parts) - headers == 3:
        reply = b""
    elif len(parts) - headers == 4:
        reply = parts[2]
    else:
        return None
    sid, header_size, size = parts[1], parts[-1 - headers], parts[-1]
    if not (sid.isdigit() and header_size.isdigit() and size.isdigit()):
        return None
    header_bytes = int(header_size) if headers else 0
    if header_bytes > int(size):
        return None
    return line_end, parts[0], int(sid), reply, header_bytes, int(size)
