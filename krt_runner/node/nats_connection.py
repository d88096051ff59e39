"""The nats-py client as a node uses it: TLS enforced, bad frames survived, messages taken from the parser and
answers queued without nats-py's per-message coroutines.

With :mod:`~krt_runner.node.broker`, the only place that imports nats-py on the node's side; what the settings
become for nats-py is :mod:`~krt_runner.node.nats_settings`'s.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from krt_runner.errors import PayloadTooLargeError
from krt_runner.jetstream_names import msg_id_header
from krt_runner.node.direct_parser import DirectParser
from krt_runner.node.nats_settings import NO_TLS

# A subscription's message as the parser hands it over: (sid, subject, reply, payload, header block), all bytes (no
# header block: None). True when taken; False sends it nats-py's own way (headers parsed, a Msg made, the
# subscription's callback). A plain function, called inside the read loop: no coroutine per message, and it may
# queue or publish, never wait (what must wait goes on in a task of the callback's own).
DirectCallback = Callable[[int, bytes, bytes, bytes, bytes | None], bool]


class NodeClient(Client):
    """nats-py's client, refusing a server that does not offer TLS when TLS is asked for (as nats.go does).

    nats-py upgrades to TLS only when the server's first INFO says so, and would
    otherwise send the credentials in clear to a server without TLS or to
    anyone who rewrites that INFO. The check runs before CONNECT is sent, on
    every connect and reconnect.
    """

    require_tls = False
    bad_frames = 0  # messages the server sent that could not be decoded: dropped
    on_bad_frame: Callable[[BaseException], None] | None = None

    def __init__(self) -> None:
        super().__init__()
        self._ps = DirectParser(self)
        self.direct_callbacks: dict[int, DirectCallback] = {}  # by direct subscription's sid
        self._write_timer: asyncio.TimerHandle | None = None

    async def subscribe_direct(
        self, subject: str, direct: DirectCallback, cb: Callable[[Msg], Awaitable[None]], **options: Any
    ) -> Subscription:
        """A subscription whose messages go to ``direct`` first, straight from the parser: no header block parsed,
        no ``Msg`` made, no hop through nats-py's queue and task (about 6 of the 48 µs of CPU a middle node in
        at-least-once mode took per message, and 1.7 of a core node's 17.5), and no regular expression or coroutine
        of nats-py's parser per message (:mod:`~krt_runner.node.direct_parser`). ``cb`` gets the messages ``direct``
        declines. ``direct`` is a plain function (see :data:`DirectCallback`); a coroutine function is refused with a
        ``TypeError``. ``options``: nats-py's ``subscribe``'s."""
        if inspect.iscoroutinefunction(direct):
            raise TypeError(f"{direct!r} is a coroutine function; a direct callback runs inside the read loop and "
                            "must not wait: use a plain function, and a task for what must wait")
        subscription = await self.subscribe(subject, cb=cb, **options)
        self.direct_callbacks[subscription._id] = direct
        return subscription

    def publish_now(self, subject: str, payload: bytes, *, reply: str = "", msg_id: str = "") -> Awaitable[None] | None:
        """nats-py's ``publish``, with a ``Nats-Msg-Id`` header when ``msg_id`` is given, queued for the flusher as
        nats-py queues it but at once, without its coroutines and per-call work (a headers dict encoded and checked
        key by key): ``None`` when queued. Otherwise an awaitable to await: nats-py's own ``publish`` (not connected,
        draining, a ``msg_id`` with a line break, its flusher gone) or, when the queued bytes pass nats-py's
        ``pending_size``, their write."""
        command = self._command(subject, payload, reply, msg_id)
        if command is None:
            return self.publish(subject, payload, reply=reply, headers={"Nats-Msg-Id": msg_id} if msg_id else None)
        waiting, queue = self._queue(command), self._flush_queue
        if waiting is None and queue is not None and queue.empty():  # wake the flusher, as nats-py's _flush_pending
            queue.put_nowait(asyncio.get_running_loop().create_future())
        return waiting

    async def publish_bytes(self, subject: str, payload: bytes, *, reply: str = "", msg_id: str = "") -> None:
        """:meth:`publish_now`, awaited."""
        waiting = self.publish_now(subject, payload, reply=reply, msg_id=msg_id)
        if waiting is not None:
            await waiting

    def publish_with_next_write(self, subject: str, payload: bytes, *, within: float) -> Awaitable[None] | None:
        """Queue a message with no reply subject to go out with the next write of this connection, and no later
        than ``within`` seconds: for what is not urgent, such as an ack, so that it costs no write of its own.
        ``None`` when queued; otherwise, as :meth:`publish_now`, what to await: nats-py's ``publish`` (not connected,
        or draining) or, past nats-py's ``pending_size``, the write of what is queued."""
        command = self._command(subject, payload, "", "")
        if command is None:
            return self.publish(subject, payload)
        if self._write_timer is None:
            self._write_timer = asyncio.get_running_loop().call_later(within, self._write_now)
        return self._queue(command)

    def _queue(self, command: bytes) -> Awaitable[None] | None:
        """Add ``command`` to nats-py's pending writes, as its ``_send_command`` does; past its ``pending_size``, the
        write of them all, to await."""
        self._pending.append(command)
        self._pending_data_size += len(command)
        if 0 < self._max_pending_size < self._pending_data_size:
            return self._flush_pending(force_flush=True)
        return None

    def _command(self, subject: str, payload: bytes, reply: str, msg_id: str) -> bytes | None:
        """The PUB (HPUB with a ``Nats-Msg-Id``) for :meth:`publish_now` and :meth:`publish_with_next_write`,
        counted in nats-py's stats; ``None`` when nats-py's own ``publish`` must decide (not connected, draining, a
        ``msg_id`` with a line break, or nats-py's flusher task gone)."""
        # (str's ``in``: bytes' tries the needle as an int first, and makes and drops a TypeError each time)
        if self._status != Client.CONNECTED or (msg_id and ("\r" in msg_id or "\n" in msg_id)):  # draining too
            return None
        flusher = self._flusher_task
        if flusher is None or flusher.done() or self._flush_queue is None:
            return None
        # over the server's max payload, headers included, the server would close the connection
        if len(payload) > self._max_payload:
            raise self._too_large(payload, b"")
        if msg_id:
            header = msg_id_header(msg_id)
            if len(payload) + len(header) > self._max_payload:
                raise self._too_large(payload, header)
        head = b"%b %b" % (subject.encode(), reply.encode()) if reply else subject.encode()
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += len(payload)
        if not msg_id:
            return b"PUB %b %d\r\n%b\r\n" % (head, len(payload), payload)
        return b"HPUB %b %d %d\r\n%b%b\r\n" % (head, len(header), len(header) + len(payload), header, payload)

    def _too_large(self, payload: bytes, header: bytes) -> PayloadTooLargeError:
        return PayloadTooLargeError(f"the message is {len(payload)} bytes with {len(header)} of headers, over the "
                                    f"server's max payload of {self._max_payload}")

    def _write_now(self) -> None:
        self._write_timer = None
        queue = self._flush_queue
        if self._pending_data_size and queue is not None and queue.empty() and self._status == Client.CONNECTED:
            queue.put_nowait(asyncio.get_running_loop().create_future())

    def _remove_sub(self, sid: int, max_msgs: int = 0) -> None:
        self.direct_callbacks.pop(sid, None)
        super()._remove_sub(sid, max_msgs)

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        if initial_connection and self.require_tls and not self._will_encrypt(info):
            raise NatsError(f"nats: {NO_TLS}, and this node's settings require TLS")
        await super()._process_info(info, initial_connection=initial_connection)

    def _will_encrypt(self, info: dict[str, Any]) -> bool:
        scheme = self._current_server.uri.scheme if self._current_server is not None else ""
        if scheme in ("ws", "wss"):  # websocket TLS is the transport's: wss is encrypted already, ws never
            return scheme == "wss"
        return bool(info.get("tls_required"))

    async def write_pending(self) -> None:
        """Hand every command still queued (a SUB) to the socket now. nats-py's ``flush()`` writes its PING
        straight to the socket, ahead of queued commands: its PONG can come before the server's answer to them."""
        await self._flush_pending(force_flush=True)

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        """A frame nats-py cannot decode (a reply subject or a header status that is not UTF-8) costs that one
        message, counted, instead of ending the read loop and leaving the connection deaf. A message of a
        :meth:`subscribe_direct` subscription goes to its direct callback first."""
        direct = self.direct_callbacks.get(sid)
        waiting = (self.deliver_declined(sid, subject, reply, data, headers) if direct is None
                   else self.hand_over(direct, sid, subject, reply, data, headers))
        if waiting is not None:
            await waiting

    def hand_over(  # noqa: PLR0917  (nats-py's own _process_msg's arguments: no tuple made per message)
        self, take: DirectCallback, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None,
    ) -> Awaitable[None] | None:
        """A direct subscription's message to its callback: ``None`` once done, else what to await (a message
        declined, going nats-py's way). A callback that raises costs that one message."""
        try:
            taken = take(sid, subject, reply, data, headers)
        except Exception as exc:
            self.count_bad_frame(exc)
            return None
        if not taken:
            return self.deliver_declined(sid, subject, reply, data, headers)
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        return None

    async def deliver_declined(self, sid: int, subject: bytes, reply: bytes, data: bytes,
                               headers: bytes | None = None) -> None:  # fmt: skip
        """nats-py's own way for a message: its headers parsed, a ``Msg`` made, its subscription's callback (or
        :meth:`count_bad_frame` for a message nats-py cannot decode)."""
        try:
            # nats-py's hint says bytes; its parser passes None for a message without headers
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]
        except Exception as exc:
            self.count_bad_frame(exc)

    def count_bad_frame(self, error: BaseException) -> None:
        """A message that could not be decoded: counted and reported, never the end of the read loop."""
        self.bad_frames += 1
        if self.on_bad_frame is not None:
            self.on_bad_frame(error)

    async def _read_loop(self) -> None:
        """nats-py's read loop, whose end on an error it does not handle becomes a reconnect, never a stall."""
        await super()._read_loop()
        if self._status == Client.CONNECTED:
            await self._process_op_err(NatsError("nats: the read loop ended on an unexpected error"))
