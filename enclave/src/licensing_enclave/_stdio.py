"""The link to the parent process: JSON lines on stdout, stdin whose EOF means it died.

stdout is a protocol channel, so the real stdout is taken over at start and fd 1 is
pointed at stderr: a stray ``print`` or a library writing to stdout can then only
reach the log, never corrupt a message the backend is parsing.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from collections.abc import Mapping
from typing import IO

#: Longer lines are cut (and so fail to parse); a certificate message is a few KiB.
MAX_LINE_BYTES = 256 * 1024
#: Lines nobody reads yet are dropped beyond this; after the handshake none are read.
_MAX_QUEUED_LINES = 8


class ProtocolOut:
    """Writes one JSON object per line to the parent and flushes it at once."""

    def __init__(self, stream: IO[str]):
        self._stream = stream

    @classmethod
    def take_stdout(cls) -> ProtocolOut:
        """Own the original stdout; from now on fd 1 (and ``sys.stdout``) go to stderr."""
        sys.stdout.flush()
        protocol_fd = os.dup(1)
        os.dup2(2, 1)
        return cls(os.fdopen(protocol_fd, "w", encoding="utf-8", closefd=True))

    def send(self, message: Mapping[str, object]) -> None:
        """Raises ``OSError`` (e.g. a broken pipe) if the parent is gone."""
        self._stream.write(json.dumps(message, separators=(",", ":")) + "\n")
        self._stream.flush()


class ParentStdin:
    """Reads stdin on a daemon thread: lines for the handshake, then only the EOF matters.

    A thread doing plain ``os.read`` works for pipes, files and terminals alike and
    holds no Python I/O lock, so it cannot block interpreter shutdown.
    """

    def __init__(self, fd: int = 0):
        self._fd = fd
        self._lines: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._closed = asyncio.Event()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._pump, args=(loop,), name="stdin", daemon=True).start()

    async def readline(self) -> bytes | None:
        """The next line without its newline, or ``None`` once stdin is closed."""
        return await self._lines.get()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def _pump(self, loop: asyncio.AbstractEventLoop) -> None:
        buffer = b""
        try:
            while True:
                try:
                    chunk = os.read(self._fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    loop.call_soon_threadsafe(self._on_eof)
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, _, buffer = buffer.partition(b"\n")
                    loop.call_soon_threadsafe(self._on_line, line)
                if len(buffer) > MAX_LINE_BYTES:
                    loop.call_soon_threadsafe(self._on_line, buffer[:MAX_LINE_BYTES])
                    buffer = b""
        except RuntimeError:
            return  # the event loop is closed: the process is exiting anyway

    def _on_line(self, line: bytes) -> None:
        if self._lines.qsize() < _MAX_QUEUED_LINES:
            self._lines.put_nowait(line)

    def _on_eof(self) -> None:
        self._closed.set()
        self._lines.put_nowait(None)
