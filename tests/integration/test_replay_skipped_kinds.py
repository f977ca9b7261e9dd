"""What a replay leaves out, said by kind: undecodable messages (unless
``--include-undecodable``), DuplicateSuppressed pointers (the event each
repeats is replayed) and MessageMissing positions (no message to replay).
``skipped`` stays their total. It was that total alone, and an operator
could not tell a store with bad messages in it from one with duplicates."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

from libs.contract.codec import DEFAULT_MAX_BYTES, encode
from libs.replay import ReplayRequest, replay
from libs.store.writer import EventWriter
from libs.testing.producer import make_trades
from libs.testing.store import rows
from services.recorder.domain.rows import StreamMessage, missing_row, to_row
from tests.integration.recorded_chains import cli


async def _store_with_every_kind(database_url: str) -> None:
    """Two events, one copy of the first (with other bytes: a pointer), two
    undecodable messages and one missing position."""
    trade, later = make_trades(2, "kinds")
    price = trade.payload.price + Decimal(1)
    copy = trade.model_copy(update={"payload": trade.payload.model_copy(update={"price": price})})
    sent = {1: encode(trade), 2: encode(copy), 3: b"{not json", 5: b"nor this", 6: encode(later)}
    recorded = [
        to_row(StreamMessage(seq, "md.trade.AAPL", data), max_bytes=DEFAULT_MAX_BYTES).row
        for seq, data in sent.items()
    ]
    recorded.insert(3, missing_row(4, 0))
    async with await EventWriter.open(database_url) as writer:
        await writer.write(recorded, sent=sent.get)
    assert [r["type"] for r in await rows(database_url)] == [
        "TradePrinted",
        "DuplicateSuppressed",
        "Undecodable",
        "MessageMissing",
        "Undecodable",
        "TradePrinted",
    ]


async def test_a_replay_counts_what_it_skipped_by_kind(database_url: str) -> None:
    await _store_with_every_kind(database_url)
    result = await replay(database_url, None, ReplayRequest(dry_run=True))
    assert (result.published, result.skipped) == (2, 4)
    assert (result.skipped_undecodable, result.skipped_duplicate, result.skipped_missing) == (
        2,
        1,
        1,
    )
    result = await replay(database_url, None, ReplayRequest(dry_run=True, include_undecodable=True))
    assert (result.published, result.skipped) == (4, 2)
    assert (result.skipped_undecodable, result.skipped_duplicate, result.skipped_missing) == (
        0,
        1,
        1,
    )


async def test_the_replay_command_says_what_it_skipped_by_kind(database_url: str) -> None:
    await _store_with_every_kind(database_url)
    proc = await asyncio.to_thread(
        cli, "recorder", "replay", "--dry-run", database_url=database_url
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {k: v for k, v in summary.items() if k.startswith("skipped")} == {
        "skipped": 4,
        "skipped_undecodable": 2,
        "skipped_duplicate": 1,
        "skipped_missing": 1,
        "skipped_too_long": 0,
    }
    assert (
        "skipped 4 rows: 2 undecodable (--include-undecodable republishes their bytes), "
        "1 duplicate pointer (the event it repeats is replayed), "
        "1 missing position (gone from the stream before recording)"
    ) in proc.stderr, proc.stderr
