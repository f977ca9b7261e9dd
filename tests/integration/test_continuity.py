"""Whether the stream still continues the event store (libs.continuity), on
real NATS: the store's last row against what the stream holds there."""

from __future__ import annotations

import uuid

import pytest

from libs.bus.client import Bus
from libs.bus.errors import StreamMismatch
from libs.continuity import refuse_a_reset_stream
from libs.contract.subjects import STREAM, subject_for
from libs.store.queries import Tail
from libs.store.schema import DUPLICATE, MISSING, UNDECODABLE
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
