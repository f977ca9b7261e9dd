"""Ctrl-C before a replay publishes anything (the store still being checked,
NATS still being connected to) ends it as Ctrl-C later does: the JSON line
of its counts, one line saying nothing was replayed and the --from-seq that
resumes, exit 130. It ended with exit 130 and nothing said (typer makes a
KeyboardInterrupt a bare exit 130): no counts, no line, where a Ctrl-C a
moment later gave both."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from libs.replay import ReplayInterrupted, ReplayRequest, replay
from libs.testing.producer import make_trades
from libs.testing.wait import eventually
from tests.integration.recording import record_events


@pytest.fixture
async def silent_port() -> AsyncIterator[tuple[int, list[asyncio.StreamWriter]]]:
    """A port that takes connections and never says a word on them (the
    connections, as they come, in the list)."""
    taken: list[asyncio.StreamWriter] = []
    stop = asyncio.Event()

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        taken.append(writer)
        await stop.wait()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], taken
    finally:
        stop.set()
        for writer in taken:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("stuck", ["store", "nats"])
async def test_ctrl_c_before_anything_is_replayed_says_so_with_exit_130(
    stuck: str,
    silent_port: tuple[int, list[asyncio.StreamWriter]],
    database_url: str,
    nats_url: str,
) -> None:
    await record_events(database_url, list(make_trades(3, "early")))
    port, taken = silent_port
    silent = {
        "store": {"DATABASE_URL": f"postgresql://tradebus@127.0.0.1:{port}/tradebus"},
        "nats": {"NATS_URL": f"nats://127.0.0.1:{port}"},
    }[stuck]
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")}
    proc = subprocess.Popen(  # noqa: ASYNC220 - signalled while it runs
        [sys.executable, "-m", "services.cli", "recorder", "replay", "--from-seq", "2"],
        env={
            **env,
            "DATABASE_URL": database_url,
            "NATS_URL": nats_url,
            "TRADEBUS_COMMAND_CONNECT_TIMEOUT_S": "120",
            **silent,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        await eventually(lambda: taken or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, "it waits for the silent server"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert "Aborted" not in stderr, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert (summary["published"], summary["first_seq"], summary["last_seq"]) == (0, None, None)
    assert "replay interrupted: nothing replayed; --from-seq 2 resumes" in stderr, stderr


async def test_a_replay_cancelled_while_it_reaches_the_store_raises_replay_interrupted(
    silent_port: tuple[int, list[asyncio.StreamWriter]],
) -> None:
    """libs.replay.replay says how far it got in place of a cancellation
    from its start: it let a CancelledError through while it connected to
    the store, which the CLI could only take for an interrupt outside it."""
    port, taken = silent_port
    task = asyncio.create_task(
        replay(f"postgresql://tradebus@127.0.0.1:{port}/tradebus", None, ReplayRequest())
    )
    await eventually(lambda: taken, timeout=30)
    task.cancel()
    with pytest.raises(ReplayInterrupted) as stopped:
        await task
    assert (stopped.value.result.published, stopped.value.result.last_seq) == (0, None)
