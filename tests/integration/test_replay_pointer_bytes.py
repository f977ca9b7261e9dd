"""``tradebus recorder replay --include-undecodable`` and DuplicateSuppressed
pointers that keep a copy's bytes (``libs/store/writer.py``): the pointer is
no undecodable message, and the event it repeats is replayed already."""

from __future__ import annotations

from decimal import Decimal

from libs.contract.codec import DEFAULT_MAX_BYTES, encode
from libs.replay import ReplayRequest, replay
from libs.store.writer import EventWriter
from libs.testing.producer import make_trades
from libs.testing.store import rows
from services.recorder.domain.rows import StreamMessage, to_row


async def test_a_pointer_keeping_a_copys_bytes_is_not_replayed_as_undecodable(
    database_url: str,
) -> None:
    trade = next(iter(make_trades(1, "replay")))
    price = trade.payload.price + Decimal(1)
    other = trade.model_copy(update={"payload": trade.payload.model_copy(update={"price": price})})
    sent = {1: encode(trade), 2: encode(other), 3: b"{not json"}
    recorded = [
        to_row(StreamMessage(seq, "md.trade.AAPL", data), max_bytes=DEFAULT_MAX_BYTES).row
        for seq, data in sent.items()
    ]
    async with await EventWriter.open(database_url) as writer:
        await writer.write(recorded, sent=sent.get)
    stored = await rows(database_url)
    assert [r["type"] for r in stored] == ["TradePrinted", "DuplicateSuppressed", "Undecodable"]
    assert bytes(stored[1]["raw"]) == sent[2]

    result = await replay(database_url, None, ReplayRequest(dry_run=True, include_undecodable=True))
    # The event and the undecodable message's bytes; not the copy's bytes
    # again (a second message under the event's id).
    assert (result.published, result.skipped) == (2, 1)
