"""A replay that cannot finish (interrupted, NATS unreachable or lost, the
store lost, a message refused): it ends in one line saying how far it got
and where to resume."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nats.errors
import pytest

from libs.bus.client import Bus
from libs.contract.subjects import subject_for
from libs.local.servers import NatsServer, PostgresServer
from libs.replay import ORIGINAL_SEQ_HEADER, ReplayRefused, ReplayRequest, replay
from libs.store.migrate import upgrade_async
from libs.testing.producer import make_trades
from tests.integration.recorded_chains import SECRET, order_chain, record
from tests.integration.recording import record_events


async def test_an_interrupted_replay_says_how_far_it_got(
    bus: Bus, nats_url: str, database_url: str
) -> None:
    """Ctrl-C stops a paced replay with the JSON line of its counts (exit
    130, no traceback): every event up to its last_seq was published and
    none after it, so --from-seq last_seq + 1 resumes it. It ended with
    "Aborted!" alone, and the operator could not tell where to resume."""
    await record_events(database_url, list(make_trades(200, "int")))
    sub = await bus.nc.subscribe("replay.>")
    await bus.nc.flush()  # subscribed at the server before the replay publishes
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")}
    proc = subprocess.Popen(  # noqa: ASYNC220 - signalled while it runs
        [sys.executable, "-m", "services.cli", "recorder", "replay", "--rate", "20/s"],
        env={**env, "DATABASE_URL": database_url, "NATS_URL": nats_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    got = [await sub.next_msg(timeout=30) for _ in range(3)]
    proc.send_signal(signal.SIGINT)
    stdout, stderr = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["first_seq"] == 1
    assert 3 <= summary["last_seq"] < 200
    assert summary["published"] == summary["last_seq"]
    assert f"--from-seq {summary['last_seq'] + 1} resumes" in stderr
    with contextlib.suppress(nats.errors.TimeoutError):
        while True:
            got.append(await sub.next_msg(timeout=0.5))
    assert [int((m.headers or {})[ORIGINAL_SEQ_HEADER]) for m in got] == list(
        range(1, summary["last_seq"] + 1)
    )


async def test_replay_gives_up_clearly_when_nats_is_unreachable(database_url: str) -> None:
    from libs.local.servers import free_port

    env_url = f"nats://replayer:{SECRET}@127.0.0.1:{free_port()}"  # nobody listens there
    proc = await asyncio.to_thread(
        lambda: subprocess.run(
            [sys.executable, "-m", "services.cli", "recorder", "replay"],
            env={
                **os.environ,
                "DATABASE_URL": database_url,
                "NATS_URL": env_url,
                "TRADEBUS_COMMAND_CONNECT_TIMEOUT_S": "1",
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    )
    assert proc.returncode == 1, proc.stderr
    assert "cannot connect to NATS at nats://replayer:***@127.0.0.1:" in proc.stderr
    assert "connection refused" in proc.stderr
    assert SECRET not in proc.stderr


async def test_a_store_lost_mid_replay_ends_in_one_line_saying_how_far_it_got(
    tmp_path: Path, bus: Bus, nats_url: str
) -> None:
    """PostgreSQL stops while a paced replay runs: the next page's read fails,
    and the replay ends with the JSON line of its counts and one error line
    naming the store and the --from-seq that resumes it (exit 1). asyncpg's
    error went through as a traceback, with no counts."""
    server = PostgresServer(tmp_path / "pg", fsync=False).start()
    try:
        url = server.url("tradebus")
        await upgrade_async(url)
        # More than one page (iter_range reads 2000 rows at a time), paced so
        # that the first page takes 10 s: the server is gone by the next (its
        # stop takes well under a second; a margin for a slow host).
        await record_events(url, list(make_trades(2100, "lost")))
        sub = await bus.nc.subscribe("replay.>")
        await bus.nc.flush()  # subscribed at the server before the replay publishes
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")}
        proc = subprocess.Popen(  # noqa: ASYNC220 - the store stops while it runs
            [sys.executable, "-m", "services.cli", "recorder", "replay", "--rate", "200/s"],
            env={**env, "DATABASE_URL": url, "NATS_URL": nats_url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        got = [await sub.next_msg(timeout=30)]
        await asyncio.to_thread(server.stop)
        stdout, stderr = await asyncio.to_thread(proc.communicate, timeout=60)
    finally:
        server.stop()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    last = summary["last_seq"]
    assert summary["first_seq"] == 1
    assert 1 <= last < 2100
    assert summary["published"] == last
    [error] = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert error.startswith("error: reading the event store at postgresql://postgres@127.0.0.1:")
    assert f"--from-seq {last + 1} resumes" in error
    with contextlib.suppress(nats.errors.TimeoutError):
        while True:
            got.append(await sub.next_msg(timeout=0.5))
    assert [int((m.headers or {})[ORIGINAL_SEQ_HEADER]) for m in got] == list(range(1, last + 1))


async def test_nats_lost_mid_replay_ends_in_one_line_saying_how_far_it_got(
    tmp_path: Path, database_url: str
) -> None:
    """NATS is killed while a paced replay runs: the replay ends with the JSON
    line of its counts and one error line naming NATS and the --from-seq that
    resumes it (exit 1), as when the store is lost. It ended in a bare error
    line with no counts (the flush in flight timed out), or, once the client
    had seen the server go, went on to the end counting every message it
    buffered for a server that was gone as published (exit 0)."""
    total = 600
    await record_events(database_url, list(make_trades(total, "natslost")))
    server = NatsServer(tmp_path / "nats").start()
    try:
        watcher = await Bus.connect(server.url, name="test-watcher")
        try:
            sub = await watcher.nc.subscribe("replay.>")
            await watcher.nc.flush()  # subscribed at the server before the replay publishes
            env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")}
            # 100/s: six seconds to go when the server is killed, a tenth of
            # a second in; the client sees its connection drop at once.
            proc = subprocess.Popen(  # noqa: ASYNC220 - NATS is killed while it runs
                [sys.executable, "-m", "services.cli", "recorder", "replay", "--rate", "100/s"],
                env={**env, "DATABASE_URL": database_url, "NATS_URL": server.url},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            got = [await sub.next_msg(timeout=30) for _ in range(10)]
            await asyncio.to_thread(server.stop, kill=True)
            stdout, stderr = await asyncio.to_thread(proc.communicate, timeout=60)
            # What the server delivered before it went.
            with contextlib.suppress(nats.errors.TimeoutError):
                while True:
                    got.append(await sub.next_msg(timeout=0.5))
        finally:
            await watcher.close()
    finally:
        server.stop()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    last = summary["last_seq"]
    # The first message is judged alone before any other goes out.
    assert 1 <= last < total
    assert summary["published"] == last
    assert summary["first_seq"] == 1
    # (the client's own "nats error:" log lines aside)
    [error] = [line for line in stderr.splitlines() if line.startswith("error")]
    assert error.startswith(f"error: NATS at {server.url} was lost mid-replay"), error
    assert f"--from-seq {last + 1} resumes" in error
    # Every event up to last_seq went out, in order and without a hole; those
    # after it that the server forwarded before it died are a prefix of the
    # rest (the error line says so), never more than was read.
    seqs = [int((m.headers or {})[ORIGINAL_SEQ_HEADER]) for m in got]
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) >= max(last, 10)


PARTIAL_PASSWORD = "pw"  # noqa: S105 - PARTIAL_NATS's, a test server's on loopback
PARTIAL_NATS = """
authorization {
  users = [
    {
      user: partial, password: pw,
      permissions: {
        publish: { allow: ["replay.md.>"] },
        subscribe: { allow: ["_INBOX_partial.>"] }
      }
    }
  ]
}
"""


async def test_a_refused_replay_s_last_seq_is_the_last_row_before_the_refusal(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    """A user who may publish replay.md.> only: a signal among trades is
    refused. last_seq is the last row before it, up to which every selected
    event went out; it was the last row read, which the window (up to 256
    messages judged together) carried past the refused one."""
    trades = list(make_trades(10, "part"))
    signal = order_chain()[0]
    await record(tmp_path, bus, nats_url, database_url, [*trades[:5], signal, *trades[5:]])
    config = tmp_path / "partial.conf"
    config.write_text(PARTIAL_NATS)
    server = NatsServer(tmp_path / "nats", config_file=config).start()
    try:
        async with await Bus.connect(
            server.url, name="test-partial", user="partial", password=PARTIAL_PASSWORD
        ) as partial:
            with pytest.raises(ReplayRefused) as info:
                await replay(database_url, partial, ReplayRequest())
            # Refused on its first message: nothing went out.
            with pytest.raises(ReplayRefused) as first:
                await replay(database_url, partial, ReplayRequest(from_seq=6))
    finally:
        server.stop()
    refused = info.value
    assert refused.seq == 6
    assert refused.subject == f"replay.{subject_for(signal)}"  # type: ignore[arg-type]
    assert (refused.result.first_seq, refused.result.last_seq) == (1, 5)
    assert refused.result.published >= 5
    assert first.value.seq == 6
    assert (first.value.result.published, first.value.result.first_seq) == (0, None)
    assert first.value.result.last_seq is None
