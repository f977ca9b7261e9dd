"""Whether the stream still continues the event store (libs.continuity), on
real NATS: the store's last row against what the stream holds there."""

from __future__ import annotations

import uuid

import pytest

from libs.bus.client import Bus
from libs.bus.errors import StreamMismatch
from libs.continuity import refuse_a_reset_stream
from libs.contract.subjects import STREAM, subject_for
from libs.store.layout import DUPLICATE, MISSING, UNDECODABLE
from libs.store.queries import Tail
from libs.testing.producer import make_trades


async def test_the_stream_continues_the_store_only_with_the_same_message_there(
    bus: Bus,
) -> None:
    trades = list(make_trades(3, "continuity"))
    await bus.publish_many(trades)
    info = await bus.js.stream_info(STREAM)
    last = trades[-1]
    subject = subject_for(last)

    async def check(tail: Tail | None) -> None:
        await refuse_a_reset_stream(bus, info, tail, "testing")

    # The same event at the store's last sequence, or an empty store: fine.
    await check(Tail(3, last.id, subject, last.type))
    await check(None)
    # Rows whose id is derived compare by subject; a hole compares nothing.
    await check(Tail(3, uuid.uuid4(), subject, DUPLICATE))
    await check(Tail(3, uuid.uuid4(), subject, UNDECODABLE))
    await check(Tail(3, uuid.uuid4(), "elsewhere", MISSING))

    with pytest.raises(StreamMismatch, match="ends at sequence 3 but the event store already"):
        await check(Tail(4, uuid.uuid4(), subject, last.type))  # the stream is shorter
    with pytest.raises(StreamMismatch, match=r"not the TradePrinted .* recorded there"):
        await check(Tail(3, uuid.uuid4(), subject, last.type))  # another event there
    with pytest.raises(StreamMismatch, match="the stream was reset; not testing"):
        await check(Tail(3, last.id, "md.trade.OTHER", last.type))  # another subject
    with pytest.raises(StreamMismatch):
        await check(Tail(3, uuid.uuid4(), "md.trade.OTHER", UNDECODABLE))


async def test_a_trimmed_stream_still_continues_the_store(bus: Bus) -> None:
    """The recorder purges what the store holds (services/recorder/adapters/
    trim.py): the stream then starts after the store's last sequence, or
    holds nothing at all. That is no reset: the stream still ends at or after
    the store."""
    trades = list(make_trades(5, "trimmed"))
    await bus.publish_many(trades)

    def row(seq: int, *, same: bool = True) -> Tail:
        """The store's row at ``seq``: the event published there, or another."""
        event = trades[seq - 1]
        return Tail(seq, event.id if same else uuid.uuid4(), subject_for(event), event.type)

    async def check(tail: Tail) -> None:
        info = await bus.js.stream_info(STREAM)
        await refuse_a_reset_stream(bus, info, tail, "testing")

    # Trimmed below the store's last row, then past it, then everything.
    await bus.js.purge_stream(STREAM, seq=3)
    await check(row(3))
    await bus.js.purge_stream(STREAM, seq=5)
    await check(row(3))
    await check(row(4, same=False))  # gone: nothing to compare
    await bus.js.purge_stream(STREAM, seq=6)
    info = await bus.js.stream_info(STREAM)
    assert (info.state.first_seq, info.state.last_seq, info.state.messages) == (6, 5, 0)
    await check(row(5))
    await check(row(5, same=False))  # gone: nothing to compare
    # ... but a store ahead of the stream's end is still a reset.
    with pytest.raises(StreamMismatch, match="ends at sequence 5"):
        await check(Tail(6, uuid.uuid4(), "md.trade.AAPL", "TradePrinted"))
