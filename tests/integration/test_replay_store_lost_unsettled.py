"""The event store is lost mid-replay while the server's verdict on the
messages sent last cannot come (NATS stalls too): the replay says how far
it is known to have got, and names the messages sent after that which the
server never judged, some of which may have gone out (they had, here). It
said "every selected event up to N replayed, none after it" of them.

Both servers stop for real: the test's PostgreSQL is shut down and its
nats-server stopped (SIGSTOP) as the replay reaches the last row of its
first page (rows are read 2,000 at a time), so that the next read fails."""

from __future__ import annotations

import contextlib
from pathlib import Path

import nats.errors
import pytest

import libs.replay
from libs.bus.client import Bus
from libs.cli import how_far
from libs.local.servers import NatsServer, PostgresServer
from libs.replay import (
    ORIGINAL_SEQ_HEADER,
    WINDOW,
    ReplayRequest,
    ReplaySoFar,
    ReplayStoreLost,
    replay,
)
from libs.store.migrate import upgrade_async
from libs.testing.producer import make_trades
from tests.integration.recording import record_events
from tests.integration.replay_stalls import Stall

PAGE = 2000  # libs.store.queries.iter_range's


async def test_a_store_lost_while_the_verdict_cannot_come_names_what_was_not_judged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Windows of WINDOW messages only, never cut short by time: the first
    # page ends inside one, whose verdict is what cannot come. A short wait
    # for it keeps the test quick.
    monkeypatch.setattr(libs.replay, "WINDOW_S", 3600.0)
    monkeypatch.setattr(libs.replay, "SETTLE_ON_STOP_S", 1.0)
    # The windows: the first message alone, then WINDOW at a time.
    last_judged = 1 + (PAGE - 1) // WINDOW * WINDOW
    store = PostgresServer(tmp_path / "pg", fsync=False).start()
    server = NatsServer(tmp_path / "nats").start()
    unjudged_at_loss: list[int] = []
    try:
        url = store.url("tradebus")
        await upgrade_async(url)
        await record_events(url, list(make_trades(PAGE + 100, "storelost")))
        async with (
            await Bus.connect(server.url, name="test-watcher") as watcher,
            await Bus.connect(server.url, name="test-replay") as replayer,
        ):
            sub = await watcher.nc.subscribe("replay.>")
            await watcher.nc.flush()  # subscribed at the server before the replay publishes
            so_far = ReplaySoFar()
            with Stall(server) as stall:

                def progress(done: int, total: int) -> None:
                    if done == PAGE:  # the page's last row went out; the next read fails
                        unjudged_at_loss.extend(seq for seq, _ in so_far.window)
                        stall.stop()
                        store.stop()

                with pytest.raises(ReplayStoreLost) as info:
                    await replay(url, replayer, ReplayRequest(), progress=progress, so_far=so_far)
            # The server goes on: what it took while stalled is delivered now.
            got = []
            with contextlib.suppress(nats.errors.TimeoutError):
                while True:
                    got.append(await sub.next_msg(timeout=0.5))
    finally:
        store.stop()
        server.stop()
    assert unjudged_at_loss == list(range(last_judged + 1, PAGE + 1))
    lost = info.value
    assert (lost.result.first_seq, lost.result.last_seq) == (1, last_judged)
    assert lost.result.published == last_judged
    assert lost.unjudged_to == PAGE
    said = how_far(lost, from_seq=1)
    assert said == (
        f"every selected event up to store sequence {last_judged} replayed (the server's "
        f"verdict on those sent after it, up to store sequence {PAGE}, never came: some of "
        f"them may have gone out); --from-seq {last_judged + 1} resumes"
    )
    # Every event up to last_seq went out, in order and without a hole; some
    # after it did too, never more than were sent.
    seqs = [int((m.headers or {})[ORIGINAL_SEQ_HEADER]) for m in got]
    assert seqs == list(range(1, len(seqs) + 1))
    assert last_judged < len(seqs) <= PAGE
