"""The event-recorder against real NATS and Postgres, as a real process."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import asyncpg
import orjson

from libs.bus.client import Bus, Outgoing
from libs.contract.codec import decode, encode
from libs.contract.envelope import WallClock
from libs.contract.events import SignalGenerated, SignalPayload
from libs.contract.subjects import STREAM
from libs.store import queries
from libs.store.urls import asyncpg_url
from libs.testing.producer import make_trades
from libs.testing.store import recorded_count, rows, stream_order, timeline
from libs.testing.streams import delete_stream
from libs.testing.wait import eventually
from tests.integration.recorded_chains import order_chain, recorder

CLOCK = WallClock()


async def test_records_every_event_in_stream_order(
    tmp_path: Path, bus: Bus, database_url: str, nats_url: str
) -> None:
    events = list(make_trades(3000, "t"))
    await bus.publish_many(events)
    rec = recorder(tmp_path, nats_url, database_url).start()
    try:
        await eventually(
            lambda: _count_is(database_url, 3000), timeout=30, message=rec.log_text()[-2000:]
        )
        tl = await timeline(database_url)
        assert tl.gapless
        assert tl.count == 3000
        assert tl.distinct_ids == 3000
        order = await stream_order(bus)
        recorded = [(r["seq"], str(r["id"])) for r in await rows(database_url)]
        assert recorded == order
        first = (await rows(database_url, "WHERE seq = 1"))[0]
        assert first["type"] == "TradePrinted"
        assert first["symbol"] == "AAPL"
        assert orjson.loads(first["payload"])["price"] == str(events[0].payload.price)
        assert "tradebus_recorder_events_recorded_total 3000.0" in rec.metrics()
        assert rec.health() == {
            "ok": True,
            "service": "recorder",
            "role": "writer",
            "last_seq": 3000,
        }
    finally:
        assert rec.terminate() == 0, rec.log_text()[-2000:]


async def test_messages_gone_from_the_stream_before_recording_are_recorded_missing(
    tmp_path: Path, bus: Bus, database_url: str, nats_url: str
) -> None:
    """More messages than the recorder reads as holes in one batch (10,000)
    left the stream before it recorded them (purged while it was down): each
    position is recorded as MessageMissing, and what follows as itself.
    Leaving the hole "for the next batch" left it for ever: every batch began
    past it, so the recorder, healthy, never recorded anything again."""
    gone, kept = 10_040, 10
    await bus.publish_many(list(make_trades(gone + kept, "purged")))
    await bus.js.purge_stream(STREAM, seq=gone + 1)
    rec = recorder(tmp_path, nats_url, database_url).start()
    try:
        await eventually(
            lambda: _count_is(database_url, gone + kept),
            timeout=60,
            message=lambda: rec.log_text()[-2000:],
        )
        tl = await timeline(database_url)
        assert tl.gapless
        assert tl.count == tl.distinct_ids == gone + kept
        types = await rows(database_url, "WHERE type <> 'MessageMissing' ORDER BY seq")
        assert [r["seq"] for r in types] == list(range(gone + 1, gone + kept + 1))
        assert {r["type"] for r in types} == {"TradePrinted"}
    finally:
        assert rec.terminate() == 0, rec.log_text()[-2000:]


async def _count_is(database_url: str, n: int) -> bool:
    return await recorded_count(database_url) >= n


async def test_bad_input_is_dead_lettered_recorded_and_does_not_stop_the_recorder(
    tmp_path: Path, bus: Bus, database_url: str, nats_url: str
) -> None:
    good = list(make_trades(5, "g"))
    valid = orjson.loads(encode(good[0]))
    wrong_type = {**valid, "id": str(uuid.uuid4()), "payload": {**valid["payload"], "size": "x"}}
    missing = {k: v for k, v in valid.items() if k != "correlation_id"}
    missing["id"] = str(uuid.uuid4())
    oversized = {**valid, "id": str(uuid.uuid4()), "source": "x" * 100, "pad": "y" * 300_000}
    bad = [
        (b'{"id": "not json', "malformed_json"),
        (orjson.dumps(wrong_type), "invalid_event"),
        (orjson.dumps(missing), "invalid_event"),
        (orjson.dumps(oversized), "oversized"),
    ]
    rec = recorder(tmp_path, nats_url, database_url).start()
    try:
        await bus.publish(good[0])
        for i, (data, _) in enumerate(bad):
            await bus.publish_raw(Outgoing("md.trade.AAPL", data, f"bad-{i}"))
        await bus.publish_many(good[1:])
        # 5 good + 4 bad positions + 4 dead letters published by the recorder.
        await eventually(lambda: _count_is(database_url, 13), timeout=30)
        assert rec.alive
        tl = await timeline(database_url)
        assert tl.gapless
        recorded = await rows(database_url)
        undecodable = [r for r in recorded if r["type"] == "Undecodable"]
        assert [orjson.loads(r["payload"])["reason"] for r in undecodable] == [
            reason for _, reason in bad
        ]
        assert [bytes(r["raw"]) for r in undecodable] == [data for data, _ in bad]
        letters = [r for r in recorded if r["type"] == "MessageDeadLettered"]
        assert len(letters) == 4
        for letter, (data, _reason) in zip(letters, bad, strict=True):
            p = orjson.loads(letter["payload"])
            assert p["original_subject"] == "md.trade.AAPL"
            assert p["raw_size"] == len(data)
            carried = base64.b64decode(p["raw_b64"])
            if p["truncated"]:  # the bus copy is capped; the row above has it all
                assert len(data) > len(carried)
                assert data.startswith(carried)
            else:
                assert carried == data
            assert letter["subject"] == "deadletter.recorder"
        assert [orjson.loads(r["payload"])["truncated"] for r in letters] == [
            False,
            False,
            False,
            True,
        ]
        # Nothing loops: one more event lands at exactly the next position.
        marker = next(iter(make_trades(1, "marker")))
        await bus.publish(marker)
        await eventually(lambda: _count_is(database_url, 14), timeout=30)
        last = (await rows(database_url, "ORDER BY seq DESC LIMIT 1"))[0]
        assert (last["seq"], last["id"]) == (14, marker.id)
        assert sum(1 for r in recorded if r["type"] == "TradePrinted") == 5
        assert 'tradebus_dead_letters_total{reason="oversized",service="recorder"} 1.0' in (
            rec.metrics()
        )
    finally:
        rec.terminate()


async def test_same_event_published_twice_is_recorded_once(
    tmp_path: Path, bus: Bus, database_url: str, nats_url: str
) -> None:
    chain = order_chain()
    for e in chain:
        await bus.publish(e)  # type: ignore[arg-type]
    for e in chain:
        await bus.publish(e)  # type: ignore[arg-type]  # deduplicated by Nats-Msg-Id
    # Outside the dedup window the same id gets a new stream position: it is
    # kept as a marked duplicate so the sequence stays gapless.
    raw = encode(chain[0])  # type: ignore[arg-type]
    await bus.publish_raw(Outgoing("strategy.signal.sma", raw, "other-msg-id"))
    rec = recorder(tmp_path, nats_url, database_url).start()
    try:
        await eventually(lambda: _count_is(database_url, 6), timeout=30)
        recorded = await rows(database_url)
        assert [r["type"] for r in recorded] == [
            "SignalGenerated",
            "OrderIntentCreated",
            "SubmitOrder",
            "OrderAccepted",
            "FillReceived",
            "DuplicateSuppressed",
        ]
        assert recorded[-1]["causation_id"] == chain[0].id  # type: ignore[attr-defined]
        assert (await timeline(database_url)).gapless
    finally:
        rec.terminate()


async def _refused_after_a_reset(
    tmp_path: Path, bus: Bus, database_url: str, nats_url: str, *, after: int
) -> str:
    """Record 5 trades, wipe the NATS data (stream made again) while the store
    is kept, publish ``after`` trades, start a recorder: it must refuse,
    record nothing and stay up. Returns the problem its /health reports."""
    await bus.publish_many(list(make_trades(5, "before")))
    rec = recorder(tmp_path, nats_url, database_url).start()
    try:
        await eventually(lambda: _count_is(database_url, 5), timeout=30)
    finally:
        assert rec.terminate() == 0
    await delete_stream(bus.js, "TRADEBUS")
    await bus.ensure_stream()
    await bus.publish_many(list(make_trades(after, "after")))
    rec = recorder(tmp_path, nats_url, database_url, name="r2").start()
    try:
        health = await eventually(
            lambda: (h := rec.health()) is not None and not h["ok"] and h, timeout=30
        )
        assert (await timeline(database_url)).count == 5
        assert rec.alive
    finally:
        rec.terminate()
    problem: str = health["problem"]
    return problem


async def test_a_reset_stream_is_refused_not_silently_skipped(
    tmp_path: Path, bus: Bus, database_url: str, nats_url: str
) -> None:
    problem = await _refused_after_a_reset(tmp_path, bus, database_url, nats_url, after=2)
    assert "stream was reset" in problem
    assert "holds up to 5" in problem


async def test_a_reset_stream_that_outgrew_the_store_is_refused_too(
    tmp_path: Path, bus: Bus, database_url: str, nats_url: str
) -> None:
    """The new stream already holds more than the store: its message at the
    store's last sequence is another event, so it is still refused (reading
    on would skip the new stream's first five)."""
    problem = await _refused_after_a_reset(tmp_path, bus, database_url, nats_url, after=8)
    assert "holds at sequence 5 a message" in problem, problem
    assert "the stream was reset; not recording" in problem


def _signal(reason: str) -> SignalGenerated:
    payload = SignalPayload(strategy="s1", symbol="AAPL", name="x", direction="long", reason=reason)
    return SignalGenerated.create(payload, source="strategy-runner", clock=CLOCK)


async def test_text_postgres_cannot_hold_is_stored_altered_and_kept_raw(
    tmp_path: Path, bus: Bus, database_url: str, nats_url: str
) -> None:
    """U+0000 is valid JSON and a valid free-text character, but PostgreSQL's
    text and jsonb refuse it: one such message used to fail its batch on every
    retry, so nothing after it was ever recorded (and health said healthy)."""
    signal = _signal("broker said: \x00!")
    valid = orjson.loads(encode(next(iter(make_trades(1, "n")))))
    nul_type = orjson.dumps({**valid, "id": str(uuid.uuid4()), "type": "\x00"})
    rec = recorder(tmp_path, nats_url, database_url).start()
    try:
        await bus.publish(signal)
        await bus.publish_raw(Outgoing("md.trade.AAPL", nul_type, "nul-type"))
        marker = next(iter(make_trades(1, "after")))
        await bus.publish(marker)
        # The signal, the bad message, its dead letter (quoting the NUL) and
        # the marker.
        await eventually(
            lambda: _count_is(database_url, 4), timeout=30, message=rec.log_text()[-2000:]
        )
        assert rec.alive
        assert (await timeline(database_url)).gapless
        by_seq = {r["seq"]: r for r in await rows(database_url)}
        stored = by_seq[1]
        assert (stored["type"], stored["id"]) == ("SignalGenerated", signal.id)
        assert orjson.loads(stored["payload"])["reason"] == "broker said: \ufffd!"
        assert bytes(stored["raw"]) == encode(signal)  # nothing lost
        bad = by_seq[2]
        assert bad["type"] == "Undecodable"
        assert bytes(bad["raw"]) == nul_type
        assert "\x00" not in orjson.loads(bad["payload"])["error"]
        (letter,) = [r for r in by_seq.values() if r["type"] == "MessageDeadLettered"]
        assert "\ufffd" in orjson.loads(letter["payload"])["error"]
        assert letter["raw"] is not None  # the dead letter itself quoted the NUL
        # Recording went on past them (the dead letter may land before it).
        assert [r["type"] for r in by_seq.values() if r["id"] == marker.id] == ["TradePrinted"]
        # Replay sends what was sent: the kept bytes, U+0000 and all (it sent
        # the stored payload, U+FFFD in place of U+0000).
        conn = await asyncpg.connect(asyncpg_url(database_url))
        try:
            [again] = [r async for r in queries.iter_range(conn, from_seq=1, to_seq=1)]
        finally:
            await conn.close()
        assert again.wire_bytes() == encode(signal)
        assert decode(again.wire_bytes()) == signal
    finally:
        rec.terminate()


POISON_TRIGGER = """
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.payload->>'reason' = 'poison' THEN
        RAISE EXCEPTION 'refusing this row' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""


async def test_a_batch_the_store_keeps_refusing_is_reported_by_health(
    tmp_path: Path, bus: Bus, database_url: str, nats_url: str
) -> None:
    """A fault that is no known outage and repeats on every retry stops the
    timeline: /health must say so (it used to stay green), and say it no more
    once a batch commits again. The store refuses the row by a trigger."""
    rec = recorder(tmp_path, nats_url, database_url).start()
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        await bus.publish_many(list(make_trades(3, "ok")))
        await eventually(lambda: _count_is(database_url, 3), timeout=30)
        assert rec.healthy()
        await conn.execute(POISON_TRIGGER)
        poison = _signal("poison")
        await bus.publish(poison)
        health = await eventually(
            lambda: (h := rec.health()) is not None and not h["ok"] and h, timeout=30
        )
        assert "recording after sequence 3 failed" in health["problem"], health
        assert "refusing this row" in health["problem"], health
        await conn.execute("DROP TRIGGER refuse_poison ON events")
        await eventually(lambda: _count_is(database_url, 4), timeout=30)
        await eventually(rec.healthy, timeout=30)
        assert (await timeline(database_url)).gapless
    finally:
        await conn.close()
        rec.terminate()


async def test_an_undecodable_message_read_into_a_hole_keeps_its_stream_time(bus: Bus) -> None:
    """A position the recorder reads directly (a hole in a fetched batch) had
    no time: an undecodable message there was recorded with ts_event and
    ts_init 0, at 1970 in the timeline and outside any time window asked
    of the store. It takes the time the stream stored it, as fetched ones do."""
    from services.recorder.adapters.stream import RecorderStream
    from services.recorder.domain.rows import to_row

    before = CLOCK.now_ns()
    ack = await bus.publish_raw(Outgoing("md.trade.AAPL", b'{"id": "not json', "hole-bad"))
    after = CLOCK.now_ns()
    msg = await RecorderStream(bus).read(ack.seq)
    assert msg is not None
    row = to_row(msg, max_bytes=256 * 1024).row
    assert row.type == "Undecodable"
    # The stream's clock is this machine's; its stamp is read to the microsecond.
    assert before - 1_000 <= row.ts_event <= after, (before, row.ts_event, after)
    assert row.ts_init == row.ts_event
