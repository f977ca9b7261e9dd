"""The event-recorder against real NATS and Postgres: cases found by a review.

Each test publishes, runs the recorder as a process and checks what the
store holds: every stream position once, gapless, in stream order.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from libs.bus.client import Bus, Outgoing
from libs.contract.codec import encode
from libs.contract.subjects import subject_for
from libs.testing.producer import make_trades
from libs.testing.store import rows, timeline
from libs.testing.wait import eventually
from tests.integration.recorded_chains import order_chain, recorder
from tests.integration.refused_rows import (
    assert_refused_row_recorded_and_recording_goes_on,
    count_is,
    diagnose,
)


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
        await eventually(lambda: count_is(database_url, 2), timeout=30)
        trade = next(iter(make_trades(1, "far-future")))
        late = trade.model_copy(update={"ts_init": 2**63 - 1})
        bad = Outgoing(subject_for(late), encode(late), str(late.id))
        await assert_refused_row_recorded_and_recording_goes_on(
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
        await eventually(lambda: count_is(database_url, 2), timeout=30)
        cmd = order_chain()[2]
        sent = orjson.loads(encode(cmd))  # type: ignore[arg-type]
        sent["payload"]["order_id"] = "urn:uuid:" + sent["payload"]["order_id"]
        bad = Outgoing(subject_for(cmd), orjson.dumps(sent), sent["id"])  # type: ignore[arg-type]
        await assert_refused_row_recorded_and_recording_goes_on(
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
            lambda: count_is(database_url, 302), timeout=30, message=lambda: diagnose(rec)
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
        await eventually(rec.healthy, timeout=10, message=lambda: diagnose(rec))
    finally:
        assert rec.terminate() == 0, rec.log_text()[-2000:]
