"""The event-recorder against real NATS and Postgres: cases found by a review.

Each test publishes, runs the recorder as a process and checks what the
store holds: every stream position once, gapless, in stream order.
"""

from __future__ import annotations

import base64
from pathlib import Path

import orjson

from libs.bus.client import Bus, Outgoing
from libs.contract.codec import encode
from libs.contract.subjects import subject_for
from libs.testing.procs import ServiceProcess
from libs.testing.producer import make_trades
from libs.testing.store import recorded_count, rows, timeline
from libs.testing.wait import eventually
from tests.integration.recorded_chains import order_chain, recorder


async def _count_is(database_url: str, n: int) -> bool:
    return await recorded_count(database_url) >= n


def _diagnose(rec: ServiceProcess) -> str:
    return f"health={rec.health()}\n{rec.log_text()[-3000:]}"


async def _assert_refused_row_recorded_and_recording_goes_on(
    bus: Bus, database_url: str, rec: ServiceProcess, bad: Outgoing, before: int, reason: str
) -> None:
    """``bad`` (published after ``before`` recorded positions) is refused, for
    ``reason`` (the contract's ``invalid_event``, or ``unstorable``: it decodes
    but the store refuses its row): it is recorded as Undecodable with its
    bytes and dead-lettered, and what follows is recorded as itself."""
    ack = await bus.publish_raw(bad)
    marker = next(iter(make_trades(1, "after-refused")))
    await bus.publish(marker)
    # The refused message, its dead letter and the marker.
    await eventually(
        lambda: _count_is(database_url, before + 3), timeout=30, message=lambda: _diagnose(rec)
    )
    assert rec.alive
    assert (await timeline(database_url)).gapless
    by_seq = {r["seq"]: r for r in await rows(database_url)}
    refused = by_seq[ack.seq]
    assert refused["type"] == "Undecodable"
    assert bytes(refused["raw"]) == bad.data
    assert orjson.loads(refused["payload"])["reason"] == reason
    (letter,) = [r for r in by_seq.values() if r["type"] == "MessageDeadLettered"]
    p = orjson.loads(letter["payload"])
    assert (p["stream_seq"], p["original_subject"]) == (ack.seq, bad.subject)
    assert base64.b64decode(p["raw_b64"]) == bad.data
    assert [r["type"] for r in by_seq.values() if r["id"] == marker.id] == ["TradePrinted"]
    await eventually(rec.healthy, timeout=10, message=lambda: _diagnose(rec))


async def test_an_event_whose_market_time_would_overflow_the_store_does_not_stop_it(
    tmp_path: Path, bus: Bus, database_url: str, nats_url: str
) -> None:
    """The store's market-time indexes (migrations 0013, 0014) compute
    ``ts_init + 5 s`` in bigint for trades, bars, marks and fills: a trade
    stamped in the last 5 s of the range was refused (bigint out of range) on
    every retry of its batch, and nothing after it was ever recorded. The
    contract now refuses any time past 2200 (``NANOS_MAX``), so the recorder
    refuses it at decode, as every service does."""
    rec = recorder(tmp_path, nats_url, database_url).start()
    try:
        await bus.publish_many(list(make_trades(2, "before")))
        await eventually(lambda: _count_is(database_url, 2), timeout=30)
        trade = next(iter(make_trades(1, "far-future")))
        late = trade.model_copy(update={"ts_init": 2**63 - 1})
        bad = Outgoing(subject_for(late), encode(late), str(late.id))
        await _assert_refused_row_recorded_and_recording_goes_on(
            bus, database_url, rec, bad, before=2, reason="invalid_event"
        )
    finally:
        assert rec.terminate() == 0, rec.log_text()[-2000:]


async def test_an_order_id_postgres_cannot_cast_does_not_stop_the_store(
    tmp_path: Path, bus: Bus, database_url: str, nats_url: str
) -> None:
    """The store keeps a payload as sent, and the order-path index (migration
    0002) casts ``payload->>'order_id'`` to uuid, which PostgreSQL refuses for
    the ``urn:uuid:`` form pydantic's UUID took: such a command was refused on
    every retry, and the store stopped. The contract now takes an id only in
    its canonical form, so the recorder refuses it at decode, as every
    service does."""
    rec = recorder(tmp_path, nats_url, database_url).start()
    try:
        signal, intent = order_chain()[:2]
        await bus.publish(signal)  # type: ignore[arg-type]
        await bus.publish(intent)  # type: ignore[arg-type]
        await eventually(lambda: _count_is(database_url, 2), timeout=30)
        cmd = order_chain()[2]
        sent = orjson.loads(encode(cmd))  # type: ignore[arg-type]
        sent["payload"]["order_id"] = "urn:uuid:" + sent["payload"]["order_id"]
        bad = Outgoing(subject_for(cmd), orjson.dumps(sent), sent["id"])  # type: ignore[arg-type]
        await _assert_refused_row_recorded_and_recording_goes_on(
            bus, database_url, rec, bad, before=2, reason="invalid_event"
        )
    finally:
        assert rec.terminate() == 0, rec.log_text()[-2000:]


async def test_rows_refused_inside_a_batch_leave_the_rest_recorded(
    tmp_path: Path, bus: Bus, database_url: str, nats_url: str
) -> None:
    """Two refused messages (times past the contract's bound) among 300
    trades, all waiting before the recorder starts (so they come in one
    batch): each is recorded as Undecodable, what is around it as itself, in
    stream order."""
    trades = list(make_trades(300, "batch"))
    outgoing = [Outgoing.of(t) for t in trades]
    for at in (100, 200):
        late = trades[at].model_copy(update={"ts_init": 2**63 - 1})
        outgoing[at] = Outgoing(subject_for(late), encode(late), str(late.id))
    for out in outgoing:
        await bus.publish_raw(out)
    rec = recorder(tmp_path, nats_url, database_url).start()
    try:
        # 300 positions and two dead letters.
        await eventually(
            lambda: _count_is(database_url, 302), timeout=30, message=lambda: _diagnose(rec)
        )
        assert (await timeline(database_url)).gapless
        recorded = await rows(database_url)
        assert [r["type"] for r in recorded[:300]] == [
            "Undecodable" if seq in (101, 201) else "TradePrinted" for seq in range(1, 301)
        ]
        assert [r["id"] for r in recorded[:300] if r["type"] == "TradePrinted"] == [
            t.id for i, t in enumerate(trades) if i not in (100, 200)
        ]
        assert [bytes(recorded[seq - 1]["raw"]) for seq in (101, 201)] == [
            outgoing[100].data,
            outgoing[200].data,
        ]
        assert {r["type"] for r in recorded[300:]} == {"MessageDeadLettered"}
        await eventually(rec.healthy, timeout=10, message=lambda: _diagnose(rec))
    finally:
        assert rec.terminate() == 0, rec.log_text()[-2000:]
