"""A NATS connection over a plain socket, for frames that client libraries refuse to send."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit


class RawClient:
    """A NATS connection over a plain socket, for frames that client libraries refuse to send."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
        self._read_until(b"\r\n")  # INFO
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n')

    def send(self, frame: bytes) -> None:
        """Send ``frame``, then wait until the server has read it (PING, PONG)."""
        self.sock.sendall(frame + b"PING\r\n")
        self._read_until(b"PONG\r\n")

    def _read_until(self, end: bytes) -> bytes:
        data = b""
        while end not in data:
            chunk = self.sock.recv(4096)
            assert chunk, f"server closed the connection: {data!r}"
            data += chunk
        return data

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
