"""``replay --include-undecodable`` of a message on a subject too long for the
store's subject index: its row's ``subject`` is cut to
:data:`~libs.store.layout.SUBJECT_MAX_BYTES` (``stored_subject``), the whole
subject kept in its payload (``subject``), and the replay publishes it under
the whole one, as it was sent."""

from __future__ import annotations

import contextlib

import asyncpg
import nats.errors
import pytest

from libs.bus.client import Bus
from libs.contract.codec import DEFAULT_MAX_BYTES, encode
from libs.replay import ORIGINAL_SEQ_HEADER, ORIGINAL_SUBJECT_HEADER, ReplayRequest, replay
from libs.store import queries
from libs.store.layout import SUBJECT_MAX_BYTES
from libs.store.urls import asyncpg_url
from libs.store.writer import EventWriter
from libs.testing.producer import make_trades
from libs.testing.store import rows
from services.recorder.domain.rows import StreamMessage, to_row, unstorable_row

#: Cut at the store's limit, right after a dot: the row keeps
#: "md.trade.yyy…y." (no valid subject: its last token is empty), and the
#: token "tail" is not in it at all.
LONG = "md.trade." + "y" * (SUBJECT_MAX_BYTES - len("md.trade.") - 1) + ".tail"


async def test_an_undecodable_row_on_a_cut_subject_is_replayed_under_the_whole_subject(
    bus: Bus, database_url: str
) -> None:
    trade, other = make_trades(2, "long")
    sent = {1: encode(trade), 2: b"{not json", 3: encode(other)}
    msgs = {seq: StreamMessage(seq, LONG, data) for seq, data in sent.items()}
    recorded = [
        unstorable_row(msgs[1], "index row size exceeds btree version 4 maximum"),
        to_row(msgs[2], max_bytes=DEFAULT_MAX_BYTES).row,
        to_row(StreamMessage(3, "md.trade.AAPL", sent[3]), max_bytes=DEFAULT_MAX_BYTES).row,
    ]
    async with await EventWriter.open(database_url) as writer:
        await writer.write(recorded, sent=sent.get)
    stored = await rows(database_url)
    assert [r["subject"] for r in stored[:2]] == [LONG[:SUBJECT_MAX_BYTES]] * 2
    assert stored[0]["subject"].endswith(".")

    sub = await bus.nc.subscribe("replay.>")
    result = await replay(database_url, bus, ReplayRequest(include_undecodable=True))
    assert (result.published, result.skipped) == (3, 0)
    got = []
    with contextlib.suppress(nats.errors.TimeoutError):
        while True:  # all that came: the replay was judged, so it is here or nowhere
            got.append(await sub.next_msg(timeout=2))
    assert [(m.subject, (m.headers or {})[ORIGINAL_SUBJECT_HEADER]) for m in got] == [
        (f"replay.{LONG}", LONG),
        (f"replay.{LONG}", LONG),
        ("replay.md.trade.AAPL", "md.trade.AAPL"),
    ]
    assert [int((m.headers or {})[ORIGINAL_SEQ_HEADER]) for m in got] == [1, 2, 3]
    assert [m.data for m in got[:2]] == [sent[1], sent[2]], "the bytes as sent"


#: Cut inside its third token: the row keeps "md.trade.zzz…z", one token
#: short of the whole subject and matching md.trade.*, which it does not.
CUT_IN_A_TOKEN = "md.trade." + "z" * SUBJECT_MAX_BYTES + ".tail"


@pytest.mark.parametrize(
    ("pattern", "selected"),
    [
        ("md.trade.*", [3]),
        ("md.trade.*.tail", [1, 2]),
        ("*.*.*.tail", [1, 2]),
        ("md.>", [1, 2, 3]),
        (CUT_IN_A_TOKEN, [2]),  # a literal start longer than the row keeps
        (CUT_IN_A_TOKEN[:SUBJECT_MAX_BYTES], []),
    ],
)
async def test_a_subject_pattern_selects_a_row_on_a_cut_subject_by_its_whole_subject(
    database_url: str, pattern: str, selected: list[int]
) -> None:
    """A pattern is matched against the subject the message was sent on, as
    NATS would match it, not against the row's cut one: md.trade.*.tail
    selected no such row, md.trade.* one whose cut had lost its last token."""
    sent = {1: b"{not json", 2: b"{nor this", 3: encode(next(iter(make_trades(1, "cut"))))}
    subjects = {1: LONG, 2: CUT_IN_A_TOKEN, 3: "md.trade.AAPL"}
    recorded = [
        to_row(StreamMessage(seq, subjects[seq], data), max_bytes=DEFAULT_MAX_BYTES).row
        for seq, data in sent.items()
    ]
    async with await EventWriter.open(database_url) as writer:
        await writer.write(recorded, sent=sent.get)
    request = ReplayRequest(subject=pattern, dry_run=True, include_undecodable=True)
    result = await replay(database_url, None, request)
    assert (result.published, result.first_seq, result.last_seq) == (
        len(selected),
        selected[0] if selected else None,
        selected[-1] if selected else None,
    )
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        listed = await queries.list_events(conn, subject=pattern)
    finally:
        await conn.close()
    assert [r.seq for r in listed] == selected
