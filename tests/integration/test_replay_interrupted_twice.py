"""Ctrl-C stops a replay whose server stalls: it says it waits (up to
SETTLE_ON_STOP_S) for the server's verdict on the messages it sent last.
A second Ctrl-C meanwhile ends it at once, saying what is known: the JSON
line of its counts, and the line that says how far it got, marked not
settled, naming the messages never judged and the --from-seq that resumes;
exit 130. It ended bare with exit 130, nothing said: whoever stopped it did
not know where to resume. Without a second Ctrl-C the wait runs out and it
says the same; it said "none after it" of messages the server may have
taken (it had, here).

The server stalls for real: the test's own nats-server is stopped
(SIGSTOP) while the replay runs, and goes on (SIGCONT) once it has ended."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path

import nats.errors
import pytest

from libs.bus.client import Bus
from libs.local.servers import NatsServer
from libs.replay import ORIGINAL_SEQ_HEADER
from libs.testing.producer import make_trades
from tests.integration.recording import record_events
from tests.integration.replay_stalls import line_with, paced_replay


@pytest.mark.parametrize("again", [True, False])
async def test_a_ctrl_c_while_the_verdict_is_awaited_says_where_to_resume(
    again: bool, tmp_path: Path, database_url: str
) -> None:
    total = 600
    await record_events(database_url, list(make_trades(total, "twice")))
    server = NatsServer(tmp_path / "nats").start()
    assert server.proc is not None
    nats_pid = server.proc.pid
    stalled = False
    try:
        watcher = await Bus.connect(server.url, name="test-watcher")
        try:
            sub = await watcher.nc.subscribe("replay.>")
            await watcher.nc.flush()  # subscribed at the server before the replay publishes
            # 100/s: six seconds to go when the server stalls, a tenth of a
            # second in.
            proc = await paced_replay(database_url, server.url)
            assert proc.stderr is not None
            try:
                got = [await sub.next_msg(timeout=30) for _ in range(10)]
                os.kill(nats_pid, signal.SIGSTOP)
                stalled = True
                proc.send_signal(signal.SIGINT)
                seen: list[str] = []
                # The first Ctrl-C is taken: the replay waits for the verdict.
                await asyncio.wait_for(line_with(proc.stderr, "Ctrl-C again", seen), 30)
                if again:
                    proc.send_signal(signal.SIGINT)
                stdout, rest = await asyncio.wait_for(proc.communicate(), 60)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                if stalled:
                    os.kill(nats_pid, signal.SIGCONT)
            # What the server took before it stalled, delivered now.
            with contextlib.suppress(nats.errors.TimeoutError):
                while True:
                    got.append(await sub.next_msg(timeout=0.5))
        finally:
            await watcher.close()
    finally:
        if stalled:
            with contextlib.suppress(ProcessLookupError):
                os.kill(nats_pid, signal.SIGCONT)
        server.stop()
    stderr = "".join(seen) + rest.decode()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert "Aborted" not in stderr, stderr
    summary = json.loads(stdout.decode().strip().splitlines()[-1])
    last = summary["last_seq"]
    # The first message is judged alone before any other goes out.
    assert 1 <= last < total
    assert summary["published"] == last
    assert summary["first_seq"] == 1
    [said] = [line for line in stderr.splitlines() if line.startswith("replay interrupted")]
    assert f"every selected event up to store sequence {last} replayed" in said
    seqs = [int((m.headers or {})[ORIGINAL_SEQ_HEADER]) for m in got]
    assert seqs == list(range(1, len(seqs) + 1))
    if said.startswith("replay interrupted: "):
        # Settled after all: the server had answered the replay's last flush
        # before it was stopped (the answer waited, unread, in the socket),
        # and nothing went out after it. Then exactly those went out.
        assert "none after it" in said, said
        assert len(seqs) == last, (said, len(seqs))
        return
    assert said.startswith("replay interrupted (not settled): "), said
    assert "never came: some of them may have gone out" in said
    assert f"--from-seq {last + 1} resumes" in said
    unjudged_to = int(said.split("up to store sequence ")[2].split(",")[0])
    assert last < unjudged_to < total
    # Every event up to last_seq went out, in order and without a hole; any
    # after it are a prefix of those never judged, never more.
    assert last <= len(seqs) <= unjudged_to
