"""Set-ups for replays whose servers stall under them: :class:`Stall`, a
test's own nats-server stopped for real (SIGSTOP) and let go on (SIGCONT),
:func:`paced_replay`, the recorder's replay as a subprocess at 100/s, and
:func:`line_with`, reading a replay subprocess's stderr up to a line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

from libs.local.servers import NatsServer


async def paced_replay(database_url: str, nats_url: str) -> asyncio.subprocess.Process:
    """``tradebus recorder replay --rate 100/s`` of ``database_url``'s store
    into ``nats_url``, as a subprocess with its stdout and stderr piped (the
    environment's own ``DATABASE_URL`` and ``NATS_URL`` left out)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")}
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "services.cli", "recorder", "replay", "--rate", "100/s"),
        env={**env, "DATABASE_URL": database_url, "NATS_URL": nats_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    return proc


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
