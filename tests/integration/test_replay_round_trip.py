"""A replay of the store (``libs.replay``, ``tradebus recorder replay`` and
``marketdata replay``) against real NATS and Postgres: what goes out, under
which subjects, in what order and how fast."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from decimal import Decimal
from pathlib import Path

import nats.errors
import pytest

from libs.bus.client import MSG_ID_HEADER, Bus
from libs.contract.codec import decode
from libs.contract.envelope import Event, WallClock
from libs.contract.events import (
    MarkPayload,
    MarkUpdated,
)
from libs.contract.subjects import subject_for
from libs.replay import ORIGINAL_SEQ_HEADER, ReplayError, ReplayRequest, replay
from libs.testing.producer import make_trades
from libs.testing.store import recorded_count
from tests.integration.recorded_chains import cli, record
from tests.integration.recording import record_events


async def test_replay_round_trip_same_events_in_order_under_prefix(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    events = list(make_trades(400, "rp"))
    await record(tmp_path, bus, nats_url, database_url, events)
    got: list[tuple[str, bytes, dict[str, str]]] = []
    sub = await bus.nc.subscribe("replay.>")
    live = await bus.nc.subscribe("md.>")  # live subjects must stay quiet
    result = await replay(
        database_url, bus, ReplayRequest(subject="md.trade.*", from_seq=101, to_seq=300)
    )
    assert (result.published, result.first_seq, result.last_seq) == (200, 101, 300)
    while len(got) < 200:
        msg = await sub.next_msg(timeout=5)
        got.append((msg.subject, msg.data, dict(msg.headers or {})))
    assert [decode(data) for _, data, _ in got] == events[100:300]
    assert [s for s, _, _ in got] == [
        f"replay.md.trade.{e.payload.symbol}" for e in events[100:300]
    ]
    assert [int(h[ORIGINAL_SEQ_HEADER]) for _, _, h in got] == list(range(101, 301))
    with pytest.raises(nats.errors.TimeoutError):
        await live.next_msg(timeout=0.2)
    # The replayed copies were not recorded: the stream does not capture replay.>.
    assert (await bus.js.stream_info("TRADEBUS")).state.messages == 400


async def test_a_replay_repeated_into_a_stream_is_stored_once(bus: Bus, database_url: str) -> None:
    """Replayed messages carry the event's id as Nats-Msg-Id, as the live
    publishers do: a stream an operator makes over replay.> stores a range
    replayed twice once. They carried no id, and it stored both copies."""
    trades: list[Event] = list(make_trades(20, "twice"))
    await record_events(database_url, trades)
    await bus.js.add_stream(name="REPLAYS", subjects=["replay.>"], duplicate_window=120)
    sub = await bus.nc.subscribe("replay.>")
    for _ in range(2):
        result = await replay(database_url, bus, ReplayRequest(from_seq=3, to_seq=12))
        assert result.published == 10
    # Acked once the stream has taken what this connection published before it.
    await bus.js.publish("replay.end", b"", headers={MSG_ID_HEADER: "end"})
    info = await bus.js.stream_info("REPLAYS")
    assert (info.state.messages, info.state.last_seq) == (11, 11)
    got = [await sub.next_msg(timeout=5) for _ in range(10)]
    assert [(m.headers or {}).get(MSG_ID_HEADER) for m in got] == [str(t.id) for t in trades[2:12]]
    await sub.unsubscribe()  # the second copies are left unread


async def test_replay_stops_at_the_store_s_end_as_it_started(bus: Bus, database_url: str) -> None:
    """With no --to-seq a replay ends at the last sequence the store held when
    it started: what the recorder adds meanwhile (a live feed) is left out,
    so a replay paced slower than the feed still ends, and its progress never
    passes its total."""
    trades: list[Event] = list(make_trades(30, "tail"))
    await record_events(database_url, trades[:20])
    seen: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        if not seen:  # counted, nothing read yet: the feed goes on meanwhile
            thread = threading.Thread(
                target=lambda: asyncio.run(record_events(database_url, trades[20:]))
            )
            thread.start()
            thread.join()
        seen.append((done, total))

    got: list[Event] = []
    sub = await bus.nc.subscribe("replay.>")
    result = await replay(database_url, bus, ReplayRequest(), progress=progress)
    assert await recorded_count(database_url) == 30
    assert (result.published, result.first_seq, result.last_seq) == (20, 1, 20)
    assert seen[0] == (0, 20)
    assert seen[-1] == (20, 20)
    while len(got) < 20:
        got.append(decode((await sub.next_msg(timeout=5)).data))
    assert got == trades[:20]
    with pytest.raises(nats.errors.TimeoutError):
        await sub.next_msg(timeout=0.2)


async def test_a_paced_replay_shows_its_progress_as_it_goes(bus: Bus, database_url: str) -> None:
    """A replay paced at 20/s shows how far it is at least every half second:
    its progress came every 500 events, so at --rate 10/s the bar stood at 0
    for the first 50 seconds (and a replay of fewer than 500 showed nothing
    until its end)."""
    await record_events(database_url, list(make_trades(30, "pace")))
    seen: list[int] = []
    started = time.monotonic()
    result = await replay(
        database_url,
        bus,
        ReplayRequest(rate_per_s=20),
        progress=lambda done, total: seen.append(done),
    )
    took = time.monotonic() - started
    assert result.published == 30
    assert took >= 29 / 20  # paced: 29 intervals
    assert seen[0] == 0
    assert seen[-1] == 30
    between = [done for done in seen if 0 < done < 30]
    assert between, seen  # took over PROGRESS_EVERY_S: shown on the way
    assert between == sorted(between)


async def test_replay_subject_filter_and_refusals(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    events = list(make_trades(80, "rf"))
    await record(tmp_path, bus, nats_url, database_url, events)
    dry = await replay(database_url, None, ReplayRequest(subject="md.trade.MSFT", dry_run=True))
    assert dry.published == sum(1 for e in events if e.payload.symbol == "MSFT")
    for bad in (
        ReplayRequest(into="md"),
        ReplayRequest(into=""),
        ReplayRequest(from_seq=5, to_seq=2),
    ):
        with pytest.raises(ReplayError):
            await replay(database_url, bus, bad)
    proc = await asyncio.to_thread(
        cli,
        "recorder",
        "replay",
        "--into",
        "orders",
        database_url=database_url,
        nats_url=nats_url,
    )
    assert proc.returncode == 2
    assert "recorded domain" in proc.stderr
    proc = await asyncio.to_thread(
        cli,
        "recorder",
        "replay",
        "--subject",
        "md.>",
        "--rate",
        "2000/s",
        "--to-seq",
        "40",
        database_url=database_url,
        nats_url=nats_url,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["published"], summary["first_seq"], summary["last_seq"]) == (40, 1, 40)


async def test_marketdata_replays_option_marks_by_their_subject(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str
) -> None:
    """Recorded MarkUpdated events (md.mark.<option>, a ':' in the token) are
    replayed by `tradebus marketdata replay --subject 'md.mark.>'`, whole and
    in order, and nothing else is."""
    option = "O:SPY241220P00720000"
    marks = [
        MarkUpdated.create(
            MarkPayload(
                symbol=option,
                price=Decimal(2) + Decimal(k) / 100,
                bid_price=Decimal("1.95") + Decimal(k) / 100,
                ask_price=Decimal("2.05") + Decimal(k) / 100,
                feed="polygon",
            ),
            source="marketdata/test",
            clock=WallClock(),
        )
        for k in range(5)
    ]
    trades = list(make_trades(10, "mk"))
    await record(tmp_path, bus, nats_url, database_url, [*trades[:5], *marks, *trades[5:]])
    sub = await bus.nc.subscribe("replay.md.mark.>")
    await bus.nc.flush()  # subscribed at the server before the replay publishes
    proc = await asyncio.to_thread(
        cli,
        "marketdata",
        "replay",
        "--subject",
        "md.mark.>",
        database_url=database_url,
        nats_url=nats_url,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["published"], summary["first_seq"], summary["last_seq"]) == (5, 6, 10)
    got = [await sub.next_msg(timeout=5) for _ in marks]
    assert [decode(m.data) for m in got] == marks
    assert {m.subject for m in got} == {f"replay.{subject_for(marks[0])}"}
    assert subject_for(marks[0]) == f"md.mark.{option}"
