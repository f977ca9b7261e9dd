"""Set-ups for replays whose servers stall under them: :class:`Stall`, a
test's own nats-server stopped for real (SIGSTOP) and let go on (SIGCONT),
and :func:`line_with`, reading a replay subprocess's stderr up to a line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from libs.local.servers import NatsServer


async def line_with(stream: asyncio.StreamReader, text: str, seen: list[str]) -> None:
    """Read lines of ``stream`` into ``seen`` up to one holding ``text``."""
    while True:
        line = (await stream.readline()).decode()
        if not line:
            raise AssertionError(f"{text!r} never said: {''.join(seen)}")
        seen.append(line)
        if text in line:
            return


class Stall:
    """Stops a test's running nats-server (:meth:`stop`: it keeps its
    connections but answers nothing) and lets it go on (:meth:`resume`).
    As a context manager it goes on, at the latest, on the way out: a
    connection closed to a stopped server waits for it, and so would the
    server's own stop."""

    def __init__(self, server: NatsServer) -> None:
        assert server.proc is not None, "the server must be running"
        self._pid = server.proc.pid
        self.stalled = False

    def stop(self) -> None:
        os.kill(self._pid, signal.SIGSTOP)
        self.stalled = True

    def resume(self) -> None:
        if self.stalled:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGCONT)
            self.stalled = False

    def __enter__(self) -> Stall:
        return self

    def __exit__(self, *exc: object) -> None:
        self.resume()
