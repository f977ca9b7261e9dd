"""The event-recorder against real NATS and Postgres: an event id seen again.

Past JetStream's duplicate window (here: published under another
``Nats-Msg-Id``) an event id already recorded gets a new stream position.
Either way it is recorded as ``DuplicateSuppressed``, a pointer to the
first, never dead-lettered: a producer making an event again under its
derived id after a restart may make it a little differently (another
``ts_event``, a reason text). A copy that says something else keeps its
bytes in the pointer's ``raw`` and names what differs; it is logged and
counted (``tradebus_recorder_id_reuses_total``).
"""

from __future__ import annotations

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
from tests.integration.recorded_chains import recorder


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


def _reuses(rec: ServiceProcess) -> dict[str, float]:
    """``tradebus_recorder_id_reuses_total`` by its ``differs`` label."""
    out: dict[str, float] = {}
    for line in rec.metrics().splitlines():
        if line.startswith("tradebus_recorder_id_reuses_total{"):
            label, value = line.rsplit(" ", 1)
            out[label.split('differs="', 1)[1].split('"', 1)[0]] = float(value)
    return out


async def _no_dead_letters(database_url: str) -> None:
    assert not [r for r in await rows(database_url) if r["type"] == "MessageDeadLettered"]


async def test_a_copy_that_differs_is_a_pointer_keeping_its_bytes_not_a_dead_letter(
    tmp_path: Path, bus: Bus, database_url: str, nats_url: str
) -> None:
    """A trade is recorded; later it comes again under its id, saying
    another price. Its pointer keeps its bytes and says what differs, the
    position is no dead letter, and the reuse is logged and counted. (The
    pointer kept neither before: the copy's price was lost.)"""
    rec = recorder(tmp_path, nats_url, database_url).start()
    try:
        first = next(iter(make_trades(1, "first")))
        await bus.publish(first)
        await eventually(lambda: _count_is(database_url, 1), timeout=30)
        other = _other_trade(first)
        copy = Outgoing(subject_for(other), encode(other), "another-msg-id")
        ack = await bus.publish_raw(copy)
        marker = next(iter(make_trades(1, "after-reuse")))
        await bus.publish(marker)
        await eventually(
            lambda: _count_is(database_url, 3), timeout=30, message=lambda: _diagnose(rec)
        )
        assert (await timeline(database_url)).gapless
        recorded = await rows(database_url)
        assert [(r["seq"], r["type"]) for r in recorded] == [
            (1, "TradePrinted"),
            (ack.seq, "DuplicateSuppressed"),
            (ack.seq + 1, "TradePrinted"),
        ]
        pointer = recorded[1]
        assert pointer["causation_id"] == first.id
        assert bytes(pointer["raw"]) == copy.data
        assert orjson.loads(pointer["payload"]) == {
            "duplicate_of": str(first.id),
            "first_seq": 1,
            "differs": ["payload"],
        }
        # Counted and logged once the batch is committed (the rows are read).
        await eventually(lambda: _reuses(rec) == {"payload": 1}, timeout=10)
        assert f"event {first.id} at seq {ack.seq} reuses the id of seq 1" in rec.log_text()
        await eventually(rec.healthy, timeout=10, message=lambda: _diagnose(rec))
        await _no_dead_letters(database_url)
    finally:
        assert rec.terminate() == 0, rec.log_text()[-2000:]


async def test_copies_in_one_batch_are_compared_with_the_first_of_their_id(
    tmp_path: Path, bus: Bus, database_url: str, nats_url: str
) -> None:
    """All waiting before the recorder starts, so they come in one batch:
    the first of an id in the batch is what a later one is compared with."""
    trades = list(make_trades(50, "batch"))
    for t in trades:
        await bus.publish(t)
    same = await bus.publish_raw(_resent(trades[10], "resend-10"))
    other = _other_trade(trades[20])
    differing = Outgoing(subject_for(other), encode(other), "reuse-20")
    reused = await bus.publish_raw(differing)
    # And an id first seen in this batch, sent again in it at another time.
    fresh = next(iter(make_trades(1, "fresh")))
    await bus.publish(fresh)
    later = fresh.model_copy(update={"ts_event": fresh.ts_event + 1})
    differing_fresh = Outgoing(subject_for(later), encode(later), "reuse-fresh")
    reused_fresh = await bus.publish_raw(differing_fresh)
    rec = recorder(tmp_path, nats_url, database_url).start()
    try:
        await eventually(
            lambda: _count_is(database_url, 54), timeout=30, message=lambda: _diagnose(rec)
        )
        assert (await timeline(database_url)).gapless
        by_seq = {r["seq"]: r for r in await rows(database_url)}
        assert len(by_seq) == 54
        assert by_seq[same.seq]["type"] == "DuplicateSuppressed"
        assert by_seq[same.seq]["causation_id"] == trades[10].id
        assert by_seq[same.seq]["raw"] is None
        assert "differs" not in orjson.loads(by_seq[same.seq]["payload"])
        for ack, out, first_id, differs in (
            (reused, differing, trades[20].id, ["payload"]),
            (reused_fresh, differing_fresh, fresh.id, ["ts_event"]),
        ):
            row = by_seq[ack.seq]
            assert row["type"] == "DuplicateSuppressed", row
            assert row["causation_id"] == first_id
            assert bytes(row["raw"]) == out.data
            assert orjson.loads(row["payload"])["differs"] == differs
        await eventually(lambda: _reuses(rec) == {"payload": 1, "ts_event": 1}, timeout=10)
        await eventually(rec.healthy, timeout=10, message=lambda: _diagnose(rec))
        await _no_dead_letters(database_url)
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
        assert recorded[1]["raw"] is None
        assert "differs" not in orjson.loads(recorded[1]["payload"])
        assert _reuses(rec) == {}
        await eventually(rec.healthy, timeout=10, message=lambda: _diagnose(rec))
        await _no_dead_letters(database_url)
    finally:
        assert rec.terminate() == 0, rec.log_text()[-2000:]
