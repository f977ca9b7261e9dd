"""The event-recorder against real NATS and Postgres: an event id seen again.

Past JetStream's duplicate window (here: published under another
``Nats-Msg-Id``) an event id already recorded gets a new stream position.
The same event sent again (a retry, a producer re-making it under its
derived id) is recorded as ``DuplicateSuppressed``, a pointer to the first.
Another event under that id (a producer bug) is not the first one: it is
kept whole as ``Undecodable``, reason ``id_reused``, and dead-lettered.
"""

from __future__ import annotations

import base64
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from libs.bus.client import Bus, Outgoing
from libs.contract.codec import encode
from libs.contract.events import TradePrinted
from libs.contract.subjects import subject_for
from libs.testing.procs import ServiceProcess
from libs.testing.producer import make_trades
from libs.testing.store import recorded_count, rows, timeline
from libs.testing.wait import eventually
from tests.integration.test_recorder import recorder


async def _count_is(database_url: str, n: int) -> bool:
    return await recorded_count(database_url) >= n


def _diagnose(rec: ServiceProcess) -> str:
    return f"health={rec.health()}\n{rec.log_text()[-3000:]}"


def _other_trade(trade: TradePrinted) -> TradePrinted:
    """Another trade under ``trade``'s id: another price."""
    payload = trade.payload.model_copy(update={"price": trade.payload.price + Decimal(1)})
    return trade.model_copy(update={"payload": payload})


def _reversed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reversed(value[k]) for k in reversed(value)}
    return value


def _resent(trade: TradePrinted, msg_id: str) -> Outgoing:
    """``trade`` sent again past the duplicate window, as another producer
    instance would make it again later: other bytes (keys in another order,
    indented), another ``ts_init`` and ``source``, the same event."""
    again = trade.model_copy(update={"ts_init": trade.ts_init + 10**12, "source": "md/other"})
    data = orjson.dumps(_reversed(orjson.loads(encode(again))), option=orjson.OPT_INDENT_2)
    assert data != encode(trade)
    return Outgoing(subject_for(trade), data, msg_id)


def _metric(rec: ServiceProcess, reason: str) -> float:
    for line in rec.metrics().splitlines():
        if line.startswith("tradebus_dead_letters_total{") and f'reason="{reason}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_an_id_reused_for_another_event_is_kept_whole_and_dead_lettered(
    tmp_path: Path, bus: Bus, database_url: str, nats_url: str
) -> None:
    """A trade is recorded; later another trade comes under its id. It was
    recorded as ``DuplicateSuppressed``, a pointer to the first: its own
    price was lost, and nobody was told."""
    rec = recorder(tmp_path, nats_url, database_url).start()
    try:
        first = next(iter(make_trades(1, "first")))
        await bus.publish(first)
        await eventually(lambda: _count_is(database_url, 1), timeout=30)
        other = _other_trade(first)
        bad = Outgoing(subject_for(other), encode(other), "another-msg-id")
        ack = await bus.publish_raw(bad)
        marker = next(iter(make_trades(1, "after-reuse")))
        await bus.publish(marker)
        # The first trade, the reuse, its dead letter and the marker.
        await eventually(
            lambda: _count_is(database_url, 4), timeout=30, message=lambda: _diagnose(rec)
        )
        assert (await timeline(database_url)).gapless
        by_seq = {r["seq"]: r for r in await rows(database_url)}
        assert by_seq[1]["type"] == "TradePrinted"
        assert by_seq[1]["id"] == first.id
        reused = by_seq[ack.seq]
        assert reused["type"] == "Undecodable", reused
        assert bytes(reused["raw"]) == bad.data
        detail = orjson.loads(reused["payload"])
        assert detail["reason"] == "id_reused"
        assert str(first.id) in detail["error"]
        assert "seq 1" in detail["error"]
        assert "payload" in detail["error"]
        (letter,) = [r for r in by_seq.values() if r["type"] == "MessageDeadLettered"]
        p = orjson.loads(letter["payload"])
        assert (p["stream_seq"], p["original_subject"]) == (ack.seq, bad.subject)
        assert p["error"].startswith("id_reused: ")
        assert base64.b64decode(p["raw_b64"]) == bad.data
        assert [r["type"] for r in by_seq.values() if r["id"] == marker.id] == ["TradePrinted"]
        assert _metric(rec, "id_reused") == 1
        assert "reuses the id" in rec.log_text()
        await eventually(rec.healthy, timeout=10, message=lambda: _diagnose(rec))
    finally:
        assert rec.terminate() == 0, rec.log_text()[-2000:]


async def test_a_reuse_and_a_resend_in_one_batch_are_told_apart(
    tmp_path: Path, bus: Bus, database_url: str, nats_url: str
) -> None:
    """All waiting before the recorder starts, so they come in one batch:
    the first of an id in the batch is what a later one is compared with."""
    trades = list(make_trades(50, "batch"))
    for t in trades:
        await bus.publish(t)
    same = await bus.publish_raw(_resent(trades[10], "resend-10"))
    other = _other_trade(trades[20])
    bad = Outgoing(subject_for(other), encode(other), "reuse-20")
    reused = await bus.publish_raw(bad)
    # And an id first seen in this batch, reused in it.
    fresh = next(iter(make_trades(1, "fresh")))
    await bus.publish(fresh)
    fresh_other = _other_trade(fresh)
    bad_fresh = Outgoing(subject_for(fresh_other), encode(fresh_other), "reuse-fresh")
    reused_fresh = await bus.publish_raw(bad_fresh)
    rec = recorder(tmp_path, nats_url, database_url).start()
    try:
        # 54 positions and two dead letters.
        await eventually(
            lambda: _count_is(database_url, 56), timeout=30, message=lambda: _diagnose(rec)
        )
        assert (await timeline(database_url)).gapless
        by_seq = {r["seq"]: r for r in await rows(database_url)}
        assert by_seq[same.seq]["type"] == "DuplicateSuppressed"
        assert by_seq[same.seq]["causation_id"] == trades[10].id
        for ack, out in ((reused, bad), (reused_fresh, bad_fresh)):
            row = by_seq[ack.seq]
            assert row["type"] == "Undecodable", row
            assert orjson.loads(row["payload"])["reason"] == "id_reused"
            assert bytes(row["raw"]) == out.data
        letters = [
            orjson.loads(r["payload"])
            for r in by_seq.values()
            if r["type"] == "MessageDeadLettered"
        ]
        assert sorted(p["stream_seq"] for p in letters) == [reused.seq, reused_fresh.seq]
        assert _metric(rec, "id_reused") == 2
        await eventually(rec.healthy, timeout=10, message=lambda: _diagnose(rec))
    finally:
        assert rec.terminate() == 0, rec.log_text()[-2000:]


async def test_the_same_event_sent_again_is_still_one_event_and_no_dead_letter(
    tmp_path: Path, bus: Bus, database_url: str, nats_url: str
) -> None:
    """A publish retried within the duplicate window is one stream position;
    the same event sent again past it (other bytes, ``ts_init``, ``source``)
    is one more position, a ``DuplicateSuppressed`` pointer; neither is a
    second event, nor dead-lettered."""
    rec = recorder(tmp_path, nats_url, database_url).start()
    try:
        trade = next(iter(make_trades(1, "once")))
        first = await bus.publish(trade)
        retried = await bus.publish(trade)  # same Nats-Msg-Id: JetStream drops it
        assert retried.duplicate
        assert retried.seq == first.seq
        again = await bus.publish_raw(_resent(trade, "past-the-window"))
        marker = next(iter(make_trades(1, "after-resend")))
        await bus.publish(marker)
        await eventually(
            lambda: _count_is(database_url, 3), timeout=30, message=lambda: _diagnose(rec)
        )
        recorded = await rows(database_url)
        assert [(r["seq"], r["type"]) for r in recorded] == [
            (first.seq, "TradePrinted"),
            (again.seq, "DuplicateSuppressed"),
            (again.seq + 1, "TradePrinted"),
        ]
        assert [r["seq"] for r in recorded if r["id"] == trade.id] == [first.seq]
        assert recorded[1]["causation_id"] == trade.id
        assert orjson.loads(recorded[1]["payload"])["first_seq"] == first.seq
        assert _metric(rec, "id_reused") == 0
        await eventually(rec.healthy, timeout=10, message=lambda: _diagnose(rec))
        assert not [r for r in await rows(database_url) if r["type"] == "MessageDeadLettered"]
    finally:
        assert rec.terminate() == 0, rec.log_text()[-2000:]
