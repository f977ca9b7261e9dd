"""Put what the stream holds into the store, as the recorder would, without
running one: for tests whose services must start on a store that is not
empty (their start-up compares the store's last row with the stream)."""

from __future__ import annotations

from libs.bus.client import Bus
from libs.contract.codec import DEFAULT_MAX_BYTES
from libs.contract.subjects import STREAM
from libs.store.writer import EventWriter
from services.recorder.domain.rows import StreamMessage, to_row


async def record_stream(bus: Bus, database_url: str) -> int:
    """Write every message of the stream into the store; returns the count.

    ``bus`` must be allowed a direct get on the stream (the admin, or the
    recorder's NATS user)."""
    info = await bus.js.stream_info(STREAM)
    rows = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        raw = await bus.js.get_msg(STREAM, seq=seq, direct=True)
        msg = StreamMessage(seq, raw.subject or "", raw.data or b"", dict(raw.headers or {}))
        rows.append(to_row(msg, max_bytes=DEFAULT_MAX_BYTES).row)
    async with await EventWriter.open(database_url) as writer:
        return await writer.write(rows)
