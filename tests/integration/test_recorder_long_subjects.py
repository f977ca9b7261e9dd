"""Messages on subjects too long for the store's subject index, against real
NATS and Postgres.

The ``events.subject`` btree index takes at most 2704 bytes a row; NATS
takes subjects up to its control line (4 KiB). A row on a longer subject
failed with SQLSTATE 54000 (program_limit_exceeded), which the recorder did
not take as a row refused, so its batch failed on every retry."""

from __future__ import annotations

import secrets
from pathlib import Path

import orjson

from libs.bus.client import Bus, Outgoing
from libs.contract.codec import encode
from libs.store.layout import SUBJECT_MAX_BYTES
from libs.testing.producer import make_trades
from libs.testing.store import recorded_count, rows, timeline
from libs.testing.wait import eventually
from tests.integration.recorded_chains import recorder
from tests.integration.refused_rows import (
    assert_refused_row_recorded_and_recording_goes_on,
    diagnose,
)


def _long_token() -> str:
    # Random, so that PostgreSQL cannot compress the index entry under the limit.
    return secrets.token_urlsafe(2250)  # 3000 characters


async def _count_is(database_url: str, n: int) -> bool:
    return await recorded_count(database_url) >= n


async def test_an_event_on_a_subject_too_long_to_index_is_refused_and_recording_goes_on(
    tmp_path: Path, bus: Bus, database_url: str, nats_url: str
) -> None:
    rec = recorder(tmp_path, nats_url, database_url).start()
    try:
        await bus.publish_many(list(make_trades(2, "before")))
        await eventually(lambda: _count_is(database_url, 2), timeout=30)
        trade = next(iter(make_trades(1, "long-subject")))
        subject = f"md.trade.{_long_token()}"
        bad = Outgoing(subject, encode(trade), str(trade.id))
        await assert_refused_row_recorded_and_recording_goes_on(
            bus, database_url, rec, bad, before=2, reason="unstorable"
        )
        (refused,) = await rows(database_url, "WHERE type = 'Undecodable'")
        payload = orjson.loads(refused["payload"])
        assert "index row size" in payload["error"], payload
        assert payload["subject"] == subject, "the whole subject is kept"
        assert refused["subject"] == subject[:SUBJECT_MAX_BYTES]
    finally:
        assert rec.terminate() == 0, rec.log_text()[-2000:]


async def test_a_bad_message_on_a_long_subject_is_recorded_and_the_recorder_starts_after_it(
    tmp_path: Path, bus: Bus, database_url: str, nats_url: str
) -> None:
    """The store's last row has the subject cut: a restarted recorder still
    finds its place in the stream (libs/continuity compares the subject as
    the row keeps it)."""
    subject = f"deadletter.{_long_token()}"  # not dead-lettered again: the last row
    rec = recorder(tmp_path, nats_url, database_url).start()
    try:
        await bus.publish_many(list(make_trades(2, "before")))
        ack = await bus.publish_raw(Outgoing(subject, b'{"not": "an event"', "bad-long"))
        await eventually(
            lambda: _count_is(database_url, 3), timeout=30, message=lambda: diagnose(rec)
        )
        assert rec.alive
    finally:
        assert rec.terminate() == 0, rec.log_text()[-2000:]
    last = (await rows(database_url, "ORDER BY seq DESC LIMIT 1"))[0]
    assert (last["seq"], last["type"]) == (ack.seq, "Undecodable")
    assert last["subject"] == subject[:SUBJECT_MAX_BYTES]
    assert orjson.loads(last["payload"])["subject"] == subject
    rec = recorder(tmp_path, nats_url, database_url, name="r2").start()
    try:
        after = next(iter(make_trades(1, "after-restart")))
        await bus.publish(after)
        await eventually(
            lambda: _count_is(database_url, 4), timeout=30, message=lambda: diagnose(rec)
        )
        await eventually(rec.healthy, timeout=10, message=lambda: diagnose(rec))
        assert (await timeline(database_url)).gapless
        assert [r["id"] for r in await rows(database_url, "WHERE seq = 4")] == [after.id]
    finally:
        assert rec.terminate() == 0, rec.log_text()[-2000:]
