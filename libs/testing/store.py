"""Reading the event store and the stream back in tests."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import nats.errors
from nats.js import api as js_api

from libs.bus.client import Bus
from libs.contract.subjects import STREAM
from libs.store.urls import asyncpg_url


@dataclass(frozen=True)
class Timeline:
    count: int
    first: int
    last: int
    distinct_ids: int

    @property
    def gapless(self) -> bool:
        return self.count == 0 or (self.first == 1 and self.last == self.count)


async def timeline(database_url: str) -> Timeline:
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        r = await conn.fetchrow(
            "SELECT count(*) AS n, coalesce(min(seq), 0) AS lo, coalesce(max(seq), 0) AS hi, "
            "count(DISTINCT id) AS ids FROM events"
        )
    finally:
        await conn.close()
    return Timeline(r["n"], r["lo"], r["hi"], r["ids"])


async def recorded_count(database_url: str) -> int:
    return (await timeline(database_url)).count


async def rows(database_url: str, sql_tail: str = "ORDER BY seq") -> list[asyncpg.Record]:
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        # Test helper: callers pass literal SQL tails, never outside input.
        return list(await conn.fetch(f"SELECT * FROM events {sql_tail}"))  # noqa: S608
    finally:
        await conn.close()


async def stream_order(bus: Bus, stream: str = STREAM) -> list[tuple[int, str]]:
    """(stream sequence, Nats-Msg-Id) of every message, read with an ordered consumer."""
    info = await bus.js.stream_info(stream)
    last = info.state.last_seq
    out: list[tuple[int, str]] = []
    if last == 0:
        return out
    sub = await bus.js.subscribe(
        ">", stream=stream, ordered_consumer=True, deliver_policy=js_api.DeliverPolicy.ALL
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=5)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            seq = msg.metadata.sequence.stream
            out.append((seq, (msg.headers or {}).get("Nats-Msg-Id", "")))
            if seq >= last:
                break
    finally:
        await sub.unsubscribe()
    return out
