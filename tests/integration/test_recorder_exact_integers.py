"""A decimal field written as a JSON integer too big for 64 bits, through the
recorder into the store and back out of it, against real NATS and Postgres.

The contract decodes such an integer exactly, so the services act on its
digits; the recorder re-parsed the payload with orjson, which reads it as a
float, and the store kept 1.2345678901234568e22, which the read path then
gave back as a float the contract refuses."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import asyncpg

from libs.bus.client import Bus, Outgoing
from libs.contract.codec import decode, encode
from libs.contract.events import EVENT_ADAPTER, FillPayload, FillReceived
from libs.contract.subjects import subject_for
from libs.store import queries
from libs.store.urls import asyncpg_url
from libs.testing.store import recorded_count
from libs.testing.wait import eventually
from tests.integration.recorded_chains import order_chain, recorder

QUANTITY = 12345678901234567890123  # 23 digits, past 2**64


def _fill_with_an_integer_quantity() -> tuple[FillReceived, bytes]:
    fill = order_chain()[4]
    assert isinstance(fill, FillReceived)
    sent = json.loads(encode(fill))
    sent["payload"]["quantity"] = QUANTITY  # a JSON integer, not a decimal string
    sent["payload"]["cumulative_quantity"] = QUANTITY
    data = json.dumps(sent).encode()
    assert b'"quantity": 12345678901234567890123,' in data
    return fill, data


async def _count_is(database_url: str, n: int) -> bool:
    return await recorded_count(database_url) >= n


async def test_a_big_integer_quantity_is_stored_and_read_back_exactly(
    tmp_path: Path, bus: Bus, database_url: str, nats_url: str
) -> None:
    fill, data = _fill_with_an_integer_quantity()
    decoded = decode(data).payload
    assert isinstance(decoded, FillPayload)
    assert decoded.quantity == Decimal(QUANTITY), "what the services act on"
    rec = recorder(tmp_path, nats_url, database_url).start()
    try:
        await bus.publish_raw(Outgoing(subject_for(fill), data, str(fill.id)))
        await eventually(
            lambda: _count_is(database_url, 1), timeout=30, message=lambda: rec.log_text()[-2000:]
        )
        conn = await asyncpg.connect(asyncpg_url(database_url))
        try:
            stored = await conn.fetchrow(
                "SELECT type, payload->'quantity' AS q, payload->'cumulative_quantity' AS cq "
                "FROM events WHERE id = $1",
                fill.id,
            )
            got = await queries.get_event(conn, fill.id)
            ranged = [r async for r in queries.iter_range(conn, types=["FillReceived"])]
            row = await conn.fetchrow(f"{queries.SELECT} WHERE id = $1", fill.id)
        finally:
            await conn.close()
        assert stored is not None
        digits = str(QUANTITY)
        assert (stored["type"], stored["q"], stored["cq"]) == ("FillReceived", digits, digits)
        assert got is not None
        assert [r.id for r in ranged] == [fill.id]
        read_back = [
            EVENT_ADAPTER.validate_python(got.envelope()),  # the risk-gate's rebuild
            queries.stored_event(row),  # the runner's and the gateway's
            decode(got.wire_bytes()),  # replay
        ]
        for event in read_back:
            assert event is not None
            assert isinstance(event.payload, FillPayload)
            assert event.payload.quantity == Decimal(QUANTITY)
            assert event.payload.cumulative_quantity == Decimal(QUANTITY)
    finally:
        assert rec.terminate() == 0, rec.log_text()[-2000:]
