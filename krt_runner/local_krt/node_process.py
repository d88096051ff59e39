"""One node process that ``up`` or ``local()`` started: its output shown under its label, its state from the node.

The node itself says when it is ready: ``up`` gives each process a
``KRT_HEALTH_FILE`` of its own, and the node creates that file once it is
connected, its ``init`` is done and it is subscribed. A node that exits 0
without having been told to stop, while an idle timeout is set, stopped on
that timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections import deque
from pathlib import Path
from typing import TextIO

# Log lines kept per node, shown again when it dies.
LAST_LINES = 20
# Longest log line read from a node: a traceback inside one JSON line can be long.
LINE_LIMIT = 1024 * 1024
# Stands for a traceback among the last lines: it was printed once, as it came.
TRACEBACK_ABOVE = "(traceback above)"
# How the lines of a plain-text traceback begin, after its first.
_TRACEBACK_BODY = (" ", "The above exception", "During handling")
# Seconds between two looks at a starting node's health file.
_READY_POLL = 0.02
# Seconds between two looks at whether a node has exited, while its output is open; and how long its output is
# still read after it exited, when a process it started holds it open.
_EXIT_POLL = 0.1
_LAST_OUTPUT = 1.0
# C0 and C1 control characters (tab aside) and DEL, as Python writes them in a string's repr.
_ESCAPED_CONTROLS = {code: repr(chr(code))[1:-1] for code in [*range(0x20), 0x7F, *range(0x80, 0xA0)] if code != 0x09}
# Shown by the label in front of each line already.
_HIDDEN_KEYS = ("event", "level", "timestamp", "node", "workflow", "version", "version_id", "logger", "exception")


def render(line: str) -> tuple[str, str]:
    """A node's JSON log line as ``time level event key=value ...`` and the traceback it carries (``""``: none);
    other lines as they are."""
    if not line.startswith("{"):
        return line, ""
    try:
        record = json.loads(line)
    except ValueError:
        return line, ""
    if not isinstance(record, dict):
        return line, ""
    event = str(record.get("event", ""))
    extras = "".join(f" {key}={value}" for key, value in record.items() if key not in _HIDDEN_KEYS)
    text = f"{str(record.get('timestamp', ''))[11:23]} {record.get('level', ''):<7} {event}{extras}"
    return text, str(record.get("exception") or "")


def how_it_ended(returncode: int | None) -> str:
    """``exited with code 3``, or ``was killed by SIGKILL (out of memory?)`` for a signal (a negative code)."""
    if returncode is None or returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"was killed by {name}" + (" (out of memory?)" if -returncode == signal.SIGKILL else "")


class Quiet:
    """A text stream whose writes go nowhere once its reader has gone (``krt-runner up ... | head -1``): what ``up``
    runs goes on serving, as a node whose log pipe closed does."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._gone = False

    @property
    def encoding(self) -> str | None:
        return getattr(self._stream, "encoding", None)

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                return self._stream.write(text)
            except UnicodeEncodeError:  # a character the terminal cannot show: escaped, not the stream gone
                encoding = self.encoding or "ascii"
                return self._stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
            except (OSError, ValueError):
                self._gone_now()
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except (OSError, ValueError):
                self._gone_now()

    def _gone_now(self) -> None:
        self._gone = True
        with contextlib.suppress(OSError, ValueError, AttributeError):  # the interpreter's own flush at exit too
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())


class Printer:
    """Writes lines under an aligned label: ``greet    | ...``."""

    def __init__(self, stream: TextIO, labels: list[str]) -> None:
        self._stream = stream
        self._width = max(len(label) for label in [*labels, "up"])

    def line(self, label: str, text: str) -> None:
        """One line under ``label``; control characters in it shown as escapes (a request's text, a tracking id,
        could otherwise move the cursor, clear the screen or start a line that looks like up's own)."""
        print(f"{label:<{self._width}} | {text.translate(_ESCAPED_CONTROLS)}", file=self._stream, flush=True)


class NodeProcess:
    """A started ``krt-runner run`` process: its output re-printed under its label, its last lines kept."""

    def __init__(
        self, label: str, position: int, process: asyncio.subprocess.Process, printer: Printer, *,
        health_file: Path, idle_timeout_set: bool, subject: str = "",
    ) -> None:  # fmt: skip
        self.label = label
        self.position = position  # index in its workflow: the stop order
        self.subject = subject  # its input subject (none for the entrypoint)
        self.process = process
        self.ready = asyncio.Event()
        self.last_lines: deque[str] = deque(maxlen=LAST_LINES)
        self._printer = printer
        self._health_file = health_file
        self._idle_timeout_set = idle_timeout_set
        self._told_to_stop = False
        self._in_traceback = False  # in a plain-text traceback of its output
        self.exited = asyncio.get_running_loop().create_task(self._follow())

    async def wait_ready(self) -> None:
        """Until the node has created its health file (a node that dies first never gets there)."""
        while not self._health_file.exists():
            await asyncio.sleep(_READY_POLL)
        self.ready.set()

    def health_file_text(self) -> str:
        """What the process wrote into its health file (the entrypoint: its address); empty when gone."""
        try:
            return self._health_file.read_text().strip()
        except OSError:
            return ""

    @property
    def stopped_on_idle(self) -> bool:
        """It exited 0 by itself, with an idle timeout set: the KRT was idle, not broken."""
        return self._idle_timeout_set and not self._told_to_stop and self.process.returncode == 0

    async def stop(self, timeout: float) -> None:
        """SIGTERM, wait up to ``timeout`` seconds for the drain, then SIGKILL."""
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), timeout)
        except asyncio.TimeoutError:
            self._printer.line("up", f"{self.label} did not stop within {timeout:g}s: killing it")
            self.kill()
            await self.exited

    def kill(self) -> None:
        """SIGKILL to the node and every process it started."""
        if self.process.returncode is None:
            self._told_to_stop = True
            self._signal_group(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.process.returncode is None:
            self._told_to_stop = True
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    async def _follow(self) -> int:
        """Its output shown as it comes, until it has exited: its exit code. Once the node is gone, what is left of
        its process group (a model server it started with ``subprocess.Popen``) is ended, as a container's end would
        end it: such a process keeps the node's output open past its exit, and what comes on it more than
        :data:`_LAST_OUTPUT` seconds later is not shown."""
        output = asyncio.ensure_future(self._show_output())
        while self.process.returncode is None and not output.done():
            await asyncio.wait({output}, timeout=_EXIT_POLL)  # (Python 3.11's wait() waits for the output's end too)
        if output.done():
            output.result()
            code = await self.process.wait()
            self._signal_group(signal.SIGTERM)  # a process it started with output of its own
            return code
        self._signal_group(signal.SIGTERM)
        await asyncio.wait({output}, timeout=_LAST_OUTPUT)
        self._signal_group(signal.SIGKILL)
        await asyncio.wait({output}, timeout=_LAST_OUTPUT)
        output.cancel()
        exited = self.process.returncode
        assert exited is not None  # (it exited: the loop above ended on it)
        return exited

    async def _show_output(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over LINE_LIMIT; the reader has skipped it
                self._show(f"(a log line over {LINE_LIMIT} bytes was skipped)")
                continue
            if not raw:
                return
            self._show(*render(raw.decode(errors="replace").rstrip("\n")))

    def _signal_group(self, signum: int) -> None:
        """The node's process group (it leads a session of its own): what it started and left running."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def _show(self, text: str, traceback: str = "") -> None:
        """Print every line; keep the last ones without their tracebacks, which are shown once, here."""
        for part in text.splitlines() or [""]:
            self._keep(part)
            self._printer.line(self.label, part)
        for part in traceback.splitlines():
            self._printer.line(self.label, part)
        if traceback:
            self.last_lines.append(TRACEBACK_ABOVE)

    def _keep(self, line: str) -> None:
        """A plain-text traceback (a crash before logging was set up) is kept as its last line, the exception."""
        if line.startswith("Traceback (most recent call last):"):
            if not self._in_traceback:  # a chained one is part of the same
                self.last_lines.append(TRACEBACK_ABOVE)
            self._in_traceback = True
        elif self._in_traceback and (line.startswith(_TRACEBACK_BODY) or not line.strip()):
            return
        else:
            self._in_traceback = False
            self.last_lines.append(line)
