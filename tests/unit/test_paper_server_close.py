"""Requests a moment after the close, before the broker's periodic expiry.

The paper broker expires day orders on a tick (every second, ``main.py``)
and before every price; a request that came in between answered from books
that still held the orders the close had ended.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from services.paper_broker.adapters.server import PaperBrokerServer
from services.paper_broker.domain.book import BookConfig, PaperBook
from services.paper_broker.domain.fill_model import MarketUpdate
from tests.unit.paper_ws import CREDS, SetClock, login, new_york_ns, recv, request, send

CLOSE = "2026-12-15 16:00"
#: A moment after the close, before the next expiry tick.
AFTER_CLOSE_NS = new_york_ns(CLOSE) + 300_000_000
LIMIT_BUY = {"symbol": "AAPL", "qty": "3", "side": "buy", "type": "limit", "limit_price": "9"}


@pytest.fixture
async def broker() -> AsyncIterator[tuple[PaperBrokerServer, SetClock]]:
    clock = SetClock(new_york_ns("2026-12-15 10:00"))
    counter = itertools.count(1)
    config = BookConfig(day_orders_expire_at=dt.time(16, 0))
    paper = PaperBook(config, clock=clock, ids=lambda: f"id-{next(counter)}")
    async with PaperBrokerServer(paper, CREDS) as server:
        server.market(MarketUpdate.trade("AAPL", Decimal(10), new_york_ns("2026-12-15 10:00")))
        yield server, clock


async def updates_then_response(ws: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The trade updates queued before the next response, and that response."""
    updates: list[dict[str, Any]] = []
    while (message := await recv(ws))["stream"] != "response":
        updates.append(message["data"])
    return updates, message["data"]


async def test_a_day_order_canceled_after_the_close_had_expired(
    broker: tuple[PaperBrokerServer, SetClock],
) -> None:
    """A cancel a moment after the close is refused as for any order already
    ended (422, "it is expired"), and the ``expired`` update comes first:
    until this the order was answered 204 and ``canceled``."""
    server, clock = broker
    ws = await login(server.port)
    try:
        await send(ws, "listen", {"streams": ["trade_updates"]})
        await recv(ws)
        await send(
            ws, "request", {"id": "r", "method": "POST", "path": "/v2/orders", "body": LIMIT_BUY}
        )
        _, placed = await updates_then_response(ws)
        order_id = placed["body"]["id"]
        clock.ns = AFTER_CLOSE_NS
        await send(ws, "request", {"id": "c", "method": "DELETE", "path": f"/v2/orders/{order_id}"})
        updates, answer = await updates_then_response(ws)
    finally:
        await ws.close()
    assert [(u["event"], u["order"]["id"]) for u in updates] == [("expired", order_id)]
    assert updates[0]["order"]["expired_at"] == "2026-12-15T21:00:00.300000Z"
    assert answer["status"] == 422
    assert answer["body"]["message"] == "order is not cancelable (it is expired)"
    order = server.book.order("acct", order_id)
    assert order is not None
    assert order.status == "expired"


async def test_a_cancel_all_after_the_close_finds_the_day_orders_expired(
    broker: tuple[PaperBrokerServer, SetClock],
) -> None:
    server, clock = broker
    ws = await login(server.port)
    try:
        placed = await request(ws, "POST", "/v2/orders", LIMIT_BUY)
        clock.ns = AFTER_CLOSE_NS
        answer = await request(ws, "DELETE", "/v2/orders")
    finally:
        await ws.close()
    assert (answer["status"], answer["body"]) == (207, [])
    order = server.book.order("acct", placed["body"]["id"])
    assert order is not None
    assert order.status == "expired"


async def test_a_close_all_after_the_close_is_not_blocked_by_an_expired_sell(
    broker: tuple[PaperBrokerServer, SetClock],
) -> None:
    """A day limit sell the close ended no longer holds the position's
    shares: the close-all closes it (until this, 403 "insufficient qty")."""
    server, clock = broker
    ws = await login(server.port)
    try:
        bought = await request(
            ws, "POST", "/v2/orders", {"symbol": "AAPL", "qty": "3", "side": "buy"}
        )
        assert bought["body"]["status"] == "filled"
        sell = {**LIMIT_BUY, "side": "sell", "limit_price": "99"}
        assert (await request(ws, "POST", "/v2/orders", sell))["body"]["status"] == "new"
        clock.ns = AFTER_CLOSE_NS
        answer = await request(ws, "DELETE", "/v2/positions")
    finally:
        await ws.close()
    assert answer["status"] == 207
    [entry] = answer["body"]
    assert (entry["symbol"], entry["status"], entry["body"]["side"]) == ("AAPL", 200, "sell")
