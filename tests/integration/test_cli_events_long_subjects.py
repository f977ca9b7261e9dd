"""``tradebus events`` and ``tradebus audit`` of a row the recorder made for a
message on a subject too long for the store (Undecodable): the row keeps its
subject cut to :data:`~libs.store.layout.SUBJECT_MAX_BYTES`
(``stored_subject``) and the whole one in its payload. The listings showed
the cut one, which is no subject anything was sent on (here: cut right
after a dot, its last token gone)."""

from __future__ import annotations

import asyncio
import json
import re

from libs.contract.codec import DEFAULT_MAX_BYTES, encode
from libs.store.layout import SUBJECT_MAX_BYTES
from libs.store.writer import EventWriter
from libs.testing.producer import make_trades
from libs.testing.store import rows
from services.recorder.domain.rows import StreamMessage, to_row
from tests.integration.recorded_chains import cli

LONG = "md.trade." + "y" * (SUBJECT_MAX_BYTES - len("md.trade.") - 1) + ".tail"
CUT = LONG[:SUBJECT_MAX_BYTES]
#: What the listings say beside a subject they shorten.
NOTE = f"({len(LONG):,} bytes, shortened here; --json has it whole)"
#: Its start and end around an ellipsis, and the note.
SHORTENED = re.compile(r"md\.trade\.y{10,}…y{10,}\.tail " + re.escape(NOTE))


async def _store_with_a_cut_subject(database_url: str) -> str:
    """A bad message on LONG (seq 1) and a trade on a short subject (seq 2);
    the bad one's row id."""
    sent = {1: b"{not json", 2: encode(next(iter(make_trades(1, "short"))))}
    subjects = {1: LONG, 2: "md.trade.AAPL"}
    recorded = [
        to_row(StreamMessage(seq, subjects[seq], data), max_bytes=DEFAULT_MAX_BYTES).row
        for seq, data in sent.items()
    ]
    async with await EventWriter.open(database_url) as writer:
        await writer.write(recorded, sent=sent.get)
    stored = await rows(database_url)
    assert [r["subject"] for r in stored] == [CUT, "md.trade.AAPL"]
    assert CUT.endswith("."), "cut right after a dot: no valid subject"
    return str(stored[0]["id"])


async def test_events_json_gives_the_whole_subject_of_a_row_on_a_cut_one(
    database_url: str,
) -> None:
    await _store_with_a_cut_subject(database_url)
    proc = await asyncio.to_thread(cli, "events", "--json", database_url=database_url)
    assert proc.returncode == 0, proc.stderr
    listed = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(x["seq"], x["subject"]) for x in listed] == [(1, LONG), (2, "md.trade.AAPL")]


async def test_the_events_table_shows_a_long_subject_shortened_and_says_so(
    database_url: str,
) -> None:
    await _store_with_a_cut_subject(database_url)
    proc = await asyncio.to_thread(cli, "events", database_url=database_url)
    assert proc.returncode == 0, proc.stderr
    assert CUT not in proc.stdout, "the store's cut is no subject anything was sent on"
    (line,) = [x for x in proc.stdout.splitlines() if "Undecodable" in x]
    assert SHORTENED.search(line), line
    (short,) = [x for x in proc.stdout.splitlines() if "TradePrinted" in x]
    assert " md.trade.AAPL " in short


async def test_audit_shows_the_whole_subject_of_a_row_on_a_cut_one(database_url: str) -> None:
    row_id = await _store_with_a_cut_subject(database_url)
    proc = await asyncio.to_thread(cli, "audit", row_id, "--json", database_url=database_url)
    assert proc.returncode == 0, proc.stderr
    (walked,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert walked["subject"] == LONG
    proc = await asyncio.to_thread(cli, "audit", row_id, database_url=database_url)
    assert proc.returncode == 0, proc.stderr
    assert CUT not in proc.stdout
    assert SHORTENED.search(proc.stdout), proc.stdout
