"""A message the recorder refuses to store as an event (the contract's
``invalid_event``, or ``unstorable``: it decodes but the store refuses its
row), checked from the store: recorded as Undecodable with its bytes,
dead-lettered, and recording goes on."""

from __future__ import annotations

import base64

import orjson

from libs.bus.client import Bus, Outgoing
from libs.testing.procs import ServiceProcess
from libs.testing.producer import make_trades
from libs.testing.store import recorded_count, rows, timeline
from libs.testing.wait import eventually


async def count_is(database_url: str, n: int) -> bool:
    return await recorded_count(database_url) >= n


def diagnose(rec: ServiceProcess) -> str:
    return f"health={rec.health()}\n{rec.log_text()[-3000:]}"


async def assert_refused_row_recorded_and_recording_goes_on(
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
        lambda: count_is(database_url, before + 3), timeout=30, message=lambda: diagnose(rec)
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
    await eventually(rec.healthy, timeout=10, message=lambda: diagnose(rec))
