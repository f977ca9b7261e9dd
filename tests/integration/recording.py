"""Stream and store set-ups for fault tests.

- :func:`record_stream` puts what the stream holds into the store, as the
  recorder would, without running one: for services that must start on a
  store that is not empty (their start-up compares the store's last row with
  the stream).
- :func:`record_events` appends events to the store as the recorder would
  write them (after its last row), for tests of what services read back.
- :func:`sql` runs one query on a test's store.
- :func:`wipe_nats` restarts a test's own nats-server with its data gone.
"""

from __future__ import annotations

import shutil

import asyncpg
import nats.errors

from libs.bus.client import Bus
from libs.contract.codec import DEFAULT_MAX_BYTES, encode
from libs.contract.envelope import Event
from libs.contract.subjects import STREAM
from libs.local.servers import NatsServer
from libs.store.layout import COPY_COLUMNS
from libs.store.urls import asyncpg_url
from libs.store.writer import EventWriter
from libs.testing.wait import eventually
from services.recorder.domain.rows import StreamMessage, to_row


async def record_stream(bus: Bus, database_url: str) -> int:
    """Write every message of the stream into the store; returns the count.

    ``bus`` must be allowed a direct get on the stream (the admin, or the
    recorder's NATS user)."""
    info = await bus.js.stream_info(STREAM)
    rows = []
    sent: dict[int, bytes] = {}
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        raw = await bus.js.get_msg(STREAM, seq=seq, direct=True)
        msg = StreamMessage(seq, raw.subject or "", raw.data or b"", dict(raw.headers or {}))
        rows.append(to_row(msg, max_bytes=DEFAULT_MAX_BYTES).row)
        sent[seq] = msg.data
    async with await EventWriter.open(database_url) as writer:
        return await writer.write(rows, sent=sent.get)


async def record_events(database_url: str, events: list[Event]) -> None:
    """Append ``events`` to the store, in order, after its last row."""
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        start = int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM events"))
        records = [
            tuple(to_row(StreamMessage(start + i + 1, "s", encode(e)), max_bytes=1 << 20).row)
            for i, e in enumerate(events)
        ]
        await conn.copy_records_to_table("events", records=records, columns=COPY_COLUMNS)
    finally:
        await conn.close()


async def sql(database_url: str, query: str) -> object:
    """The first value ``query`` returns (None for a statement)."""
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def wipe_nats(server: NatsServer, bus: Bus) -> None:
    """Kill ``server``, delete its JetStream data and start it again; returns
    once ``bus`` (reconnected) has made the stream anew."""
    server.stop(kill=True)
    shutil.rmtree(server.store_dir / "jetstream")
    server.start()

    async def stream_made() -> bool:
        try:
            await bus.ensure_stream()
        except nats.errors.Error:
            return False  # the restarted server's JetStream is not up yet
        return True

    await eventually(stream_made, timeout=30)
