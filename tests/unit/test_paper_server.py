"""The paper broker's WebSocket server, in this process, over a real socket.

Authentication, listeners and slow clients, and the REST requests it answers
as Alpaca's do. The journal a restart replays: test_paper_journal_replay;
what the wire module writes and reads: test_paper_wire.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import socket
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from services.paper_broker.adapters import wire
from services.paper_broker.adapters.server import PaperBrokerServer, _Cork
from services.paper_broker.domain.book import BookConfig, OrderSpec, PaperBook
from services.paper_broker.domain.fill_model import MarketUpdate
from tests.unit.paper_ws import CREDS, SetClock, book, login, new_york_ns, recv, request, send


@pytest.fixture
async def server() -> AsyncIterator[PaperBrokerServer]:
    async with PaperBrokerServer(book(), CREDS, auth_timeout_s=0.5) as s:
        yield s


async def test_a_wrong_secret_is_refused_and_disconnected(server: PaperBrokerServer) -> None:
    async with connect(f"ws://127.0.0.1:{server.port}/stream") as ws:
        await send(ws, "authenticate", {"key_id": "key", "secret_key": "guess"})
        assert (await recv(ws))["data"]["status"] == "unauthorized"
        with pytest.raises(ConnectionClosed) as e:
            await ws.recv()
        assert e.value.rcvd is not None
        assert e.value.rcvd.code == 1008


async def test_nothing_works_before_authentication(server: PaperBrokerServer) -> None:
    async with connect(f"ws://127.0.0.1:{server.port}/stream") as ws:
        await ws.send("not json")
        assert (await recv(ws))["data"]["message"] == "invalid JSON"
        answer = await request(ws, "GET", "/v2/positions")
        assert answer["status"] == 401
        await send(ws, "listen", {"streams": ["trade_updates"]})
        assert (await recv(ws))["data"] == {"status": "unauthorized", "action": "listen"}


async def test_a_silent_client_is_disconnected(server: PaperBrokerServer) -> None:
    async with connect(f"ws://127.0.0.1:{server.port}/stream") as ws:
        with pytest.raises(ConnectionClosed) as e:
            await ws.recv()
        assert e.value.rcvd is not None
        assert e.value.rcvd.reason == "authentication timeout"


async def test_a_client_that_talks_but_never_authenticates_is_disconnected(
    server: PaperBrokerServer,
) -> None:
    # paper.yaml's auth_timeout_s: "a client must authenticate by then". A
    # first message that is not a login (a listen, a request) must not buy
    # an unauthenticated socket for ever.
    async with connect(f"ws://127.0.0.1:{server.port}/stream") as ws:
        await send(ws, "listen", {"streams": ["trade_updates"]})
        assert (await recv(ws))["data"] == {"status": "unauthorized", "action": "listen"}
        assert (await request(ws, "GET", "/v2/positions"))["status"] == 401
        with pytest.raises(ConnectionClosed) as e:
            async with asyncio.timeout(5):  # the server's auth_timeout_s is 0.5
                await ws.recv()
        assert e.value.rcvd is not None
        assert (e.value.rcvd.code, e.value.rcvd.reason) == (1008, "authentication timeout")


async def test_updates_go_to_listeners_of_the_account_before_the_response(
    server: PaperBrokerServer,
) -> None:
    server.market(MarketUpdate.trade("AAPL", Decimal(10)))
    listener, other = await login(server.port), await login(server.port)
    try:
        await send(listener, "listen", {"streams": ["trade_updates", "nonsense"]})
        assert (await recv(listener))["data"] == {"streams": ["trade_updates"]}
        body = {"symbol": "AAPL", "qty": 3, "side": "buy", "client_order_id": "c1"}
        await send(
            listener, "request", {"id": "r1", "method": "POST", "path": "/v2/orders", "body": body}
        )
        got = [await recv(listener) for _ in range(3)]
        assert [(m["stream"], m["data"].get("event")) for m in got] == [
            ("trade_updates", "new"),
            ("trade_updates", "fill"),
            ("response", None),
        ]
        assert got[1]["data"]["price"] == "10"
        assert got[1]["data"]["order"]["filled_qty"] == "3"
        assert got[2]["data"]["status"] == 200
        # The answer shows the order as it stands after its fill (the same
        # JSON the last update carried, as a fresh read of the order gives).
        order = server.book.by_client_order_id("acct", "c1")
        assert order is not None
        assert got[2]["data"]["body"] == got[1]["data"]["order"] == wire.order_json(order)
        assert got[2]["data"]["body"]["status"] == "filled"
        # The non-listening socket got nothing; it can still ask.
        assert (await request(other, "GET", "/v2/positions"))["body"][0]["qty"] == "3"
        missing = await request(other, "GET", "/v2/orders/nope")
        assert (missing["status"], missing["body"]["code"]) == (404, 40410000)
        bad = await request(other, "POST", "/v2/orders", {"symbol": "AAPL", "qty": 1.5e400})
        assert bad["status"] == 422
        assert (await request(other, "GET", "/v2/nothing"))["status"] == 404
    finally:
        await listener.close()
        await other.close()


async def test_a_client_that_does_not_keep_up_is_disconnected() -> None:
    async with PaperBrokerServer(book(), CREDS, max_queue=3) as s:
        listener, trader = await login(s.port), await login(s.port)
        try:
            await send(listener, "listen", {"streams": ["trade_updates"]})
            assert (await recv(listener))["stream"] == "listening"
            for i in range(5):
                body = {
                    "symbol": "X",
                    "qty": "1",
                    "side": "buy",
                    "type": "limit",
                    "limit_price": "10",
                }
                answer = await request(
                    trader, "POST", "/v2/orders", {**body, "client_order_id": f"c{i}"}
                )
                assert answer["status"] == 200
                assert (await recv(listener))["data"]["event"] == "new"
            # One trade fills all five at once: more than the listener's queue holds.
            s.market(MarketUpdate.trade("X", Decimal(9)))
            with pytest.raises(ConnectionClosed) as e:
                await drain(listener)
            assert e.value.rcvd is not None
            assert (e.value.rcvd.code, e.value.rcvd.reason) == (1013, "slow consumer")
            # The others are not affected.
            assert len((await request(trader, "GET", "/v2/orders?status=closed"))["body"]) == 5
        finally:
            await listener.close()
            await trader.close()


async def drain(ws: ClientConnection) -> None:
    while True:
        await recv(ws)


@pytest.mark.skipif(not hasattr(socket, "TCP_CORK"), reason="TCP_CORK is Linux only")
async def test_frames_that_leave_together_are_corked(server: PaperBrokerServer) -> None:
    # A submit's updates and answer are queued at once; the writer sends them
    # under TCP_CORK so they leave in one segment (one wake-up of the client).
    ws = await login(server.port)
    try:
        session = next(iter(server._sessions))
        sock = session.ws.transport.get_extra_info("socket")
        with _Cork(session.ws):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) == 0
        server.market(MarketUpdate.trade("AAPL", Decimal(10)))
        await send(ws, "listen", {"streams": ["trade_updates"]})
        assert (await recv(ws))["data"] == {"streams": ["trade_updates"]}
        for n in range(3):
            body = {"symbol": "AAPL", "qty": 1, "side": "buy", "client_order_id": f"k{n}"}
            await send(
                ws, "request", {"id": f"r{n}", "method": "POST", "path": "/v2/orders", "body": body}
            )
        got = [await recv(ws) for _ in range(9)]
        assert [(m["stream"], m["data"].get("event"), m["data"].get("id")) for m in got] == [
            x
            for n in range(3)
            for x in (
                ("trade_updates", "new", None),
                ("trade_updates", "fill", None),
                ("response", None, f"r{n}"),
            )
        ]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) == 0
    finally:
        await ws.close()


async def test_a_repeated_client_order_id_gets_alpaca_s_422(server: PaperBrokerServer) -> None:
    """Alpaca: 422 ``{"code": 40010001, "message": "client_order_id must be
    unique"}``; no order placed, no update sent. (It used to answer 200 and
    the existing order, which no real venue does.)"""
    server.market(MarketUpdate.trade("AAPL", Decimal(10)))
    ws = await login(server.port)
    try:
        await send(ws, "listen", {"streams": ["trade_updates"]})
        assert (await recv(ws))["stream"] == "listening"
        body = {"symbol": "AAPL", "qty": "1", "side": "buy", "client_order_id": "dup"}
        assert (await request(ws, "POST", "/v2/orders", body))["status"] == 200
        await send(
            ws, "request", {"id": "r2", "method": "POST", "path": "/v2/orders", "body": body}
        )
        got = await recv(ws)
        assert got["stream"] == "response", got  # no trade update came first
        assert (got["data"]["status"], got["data"]["body"]) == (
            422,
            {"code": 40010001, "message": "client_order_id must be unique"},
        )
        assert len(server.book.orders("acct", "all")) == 1
    finally:
        await ws.close()


async def test_close_all_answers_per_position_and_takes_cancel_orders(
    server: PaperBrokerServer,
) -> None:
    """``DELETE /v2/positions`` is a 207 with an entry per position: a 403
    for one whose shares an open order holds, unless ``cancel_orders=true``."""
    server.market(MarketUpdate.trade("AAPL", Decimal(10)))
    server.market(MarketUpdate.trade("MSFT", Decimal(20)))
    ws = await login(server.port)
    try:
        for body in (
            {"symbol": "AAPL", "qty": "5", "side": "buy"},
            {"symbol": "MSFT", "qty": "2", "side": "buy"},
            {"symbol": "AAPL", "qty": "5", "side": "sell", "type": "limit", "limit_price": "99"},
        ):
            assert (await request(ws, "POST", "/v2/orders", body))["status"] == 200
        answer = await request(ws, "DELETE", "/v2/positions")
        assert answer["status"] == 207
        by_symbol = {e["symbol"]: e for e in answer["body"]}
        assert (by_symbol["MSFT"]["status"], by_symbol["MSFT"]["body"]["side"]) == (200, "sell")
        assert (by_symbol["AAPL"]["status"], by_symbol["AAPL"]["body"]) == (
            403,
            {
                "code": 40310000,
                "message": "insufficient qty available for order (requested: 5, available: 0)",
            },
        )
        answer = await request(ws, "DELETE", "/v2/positions?cancel_orders=true")
        assert [(e["symbol"], e["status"]) for e in answer["body"]] == [("AAPL", 200)]
        assert (await request(ws, "GET", "/v2/positions"))["body"] == []
        assert (await request(ws, "GET", "/v2/orders?status=open"))["body"] == []
    finally:
        await ws.close()


async def test_a_cancel_all_reports_a_locked_opg_order_with_500() -> None:
    """Alpaca's ``DELETE /v2/orders``: 207 and an entry per order, status
    500 for one it could not cancel. An opg order from 09:28 until the open
    stays working; the other is canceled. Until this both were canceled."""

    class SetClock:
        ns = (
            int(dt.datetime(2026, 12, 8, 8, 0, tzinfo=ZoneInfo("America/New_York")).timestamp())
            * 10**9
        )

        def now_ns(self) -> int:
            return self.ns

    clock = SetClock()
    counter = itertools.count(1)
    b = PaperBook(BookConfig(), clock=clock, ids=lambda: f"id-{next(counter)}")
    moo, _ = b.submit("acct", OrderSpec("AAPL", "buy", Decimal(1), time_in_force="opg"))
    day, _ = b.submit("acct", OrderSpec("AAPL", "buy", Decimal(1), "limit", limit_price=Decimal(9)))
    clock.ns += (89 * 60) * 1_000_000_000  # 09:29 New York
    async with PaperBrokerServer(b, CREDS) as server:
        ws = await login(server.port)
        try:
            answer = await request(ws, "DELETE", "/v2/orders")
            assert answer["status"] == 207
            kept, canceled = answer["body"]
            assert kept == {
                "id": moo.id,
                "status": 500,
                "body": {
                    "code": 42210000,
                    "message": "order is not cancelable (time_in_force opg, from 09:28 New "
                    "York: the opening auction at 09:30 has it)",
                },
            }
            assert (canceled["id"], canceled["status"]) == (day.id, 200)
            assert canceled["body"]["status"] == "canceled"
            still = (await request(ws, "GET", "/v2/orders?status=open"))["body"]
            assert [o["id"] for o in still] == [moo.id]
        finally:
            await ws.close()


async def test_a_position_s_qty_available_leaves_out_what_open_orders_hold(
    server: PaperBrokerServer,
) -> None:
    """As at Alpaca, ``qty_available`` is the position less what its open
    closing orders hold (the same count ``DELETE /v2/positions`` refuses on);
    orders that add to the position hold none of it."""
    server.market(MarketUpdate.trade("AAPL", Decimal(10)))
    server.market(MarketUpdate.trade("MSFT", Decimal(20)))
    ws = await login(server.port)
    try:
        for body in (
            {"symbol": "AAPL", "qty": "10", "side": "buy"},
            {"symbol": "AAPL", "qty": "4", "side": "sell", "type": "limit", "limit_price": "99"},
            {"symbol": "AAPL", "qty": "2", "side": "buy", "type": "limit", "limit_price": "1"},
            {"symbol": "MSFT", "qty": "3", "side": "sell"},
            {"symbol": "MSFT", "qty": "1", "side": "buy", "type": "limit", "limit_price": "1"},
        ):
            assert (await request(ws, "POST", "/v2/orders", body))["status"] == 200
        answer = await request(ws, "GET", "/v2/positions")
        assert [(p["symbol"], p["qty"], p["qty_available"]) for p in answer["body"]] == [
            ("AAPL", "10", "6"),
            ("MSFT", "-3", "-2"),
        ]
        assert (await request(ws, "DELETE", "/v2/orders"))["status"] == 207
        answer = await request(ws, "GET", "/v2/positions")
        assert [(p["qty"], p["qty_available"]) for p in answer["body"]] == [
            ("10", "10"),
            ("-3", "-3"),
        ]
    finally:
        await ws.close()


async def test_a_position_s_current_price_is_the_newest_print_not_a_late_older_one(
    server: PaperBrokerServer,
) -> None:
    """``GET /v2/positions`` values a position at its symbol's newest print
    by the market's time: a trade Polygon reported late, stamped before it,
    is not the current price."""
    server.market(MarketUpdate.trade("AAPL", Decimal(10), ts_ns=30))
    ws = await login(server.port)
    try:
        body = {"symbol": "AAPL", "qty": "2", "side": "buy"}
        assert (await request(ws, "POST", "/v2/orders", body))["status"] == 200
        server.market(MarketUpdate.trade("AAPL", Decimal(12), ts_ns=50))
        server.market(MarketUpdate.trade("AAPL", Decimal(7), ts_ns=40))  # reported late
        [position] = (await request(ws, "GET", "/v2/positions"))["body"]
        assert (position["current_price"], position["unrealized_pl"]) == ("12", "4")
    finally:
        await ws.close()


async def test_fill_activities_come_in_pages_as_alpaca_s(server: PaperBrokerServer) -> None:
    """``GET /v2/account/activities/FILL``: newest first unless ``direction=asc``,
    ``page_size`` (at most 100), ``page_token`` = the last id of the page
    before, ``after`` / ``until``; no filter by order (Alpaca has none)."""
    server.market(MarketUpdate.trade("AAPL", Decimal(10)))
    ws = await login(server.port)
    try:
        for n in range(5):
            body = {"symbol": "AAPL", "qty": "1", "side": "buy", "client_order_id": f"a{n}"}
            assert (await request(ws, "POST", "/v2/orders", body))["status"] == 200
        fills = server.book.fills("acct")
        ids = [f.id for f in fills]
        path = "/v2/account/activities/FILL"
        newest = await request(ws, "GET", path)
        assert [a["id"] for a in newest["body"]] == ids[::-1]
        first = await request(ws, "GET", f"{path}?direction=asc&page_size=2")
        assert [a["id"] for a in first["body"]] == ids[:2]
        token = first["body"][-1]["id"]
        second = await request(ws, "GET", f"{path}?direction=asc&page_size=2&page_token={token}")
        assert [a["id"] for a in second["body"]] == ids[2:4]
        mine = await request(ws, "GET", f"{path}?order_id={fills[0].order_id}")
        assert len(mine["body"]) == 5  # not a filter: ignored, as Alpaca would
        after = wire.iso(fills[2].ts_ns)
        cut = wire.parse_iso(after)
        assert cut is not None
        later = await request(ws, "GET", f"{path}?direction=asc&after={after}")
        assert [a["id"] for a in later["body"]] == [f.id for f in fills if f.ts_ns > cut]
        assert len(later["body"]) < 5
        for bad in ("page_size=101", "direction=up", "after=yesterday", "page_token=nope"):
            assert (await request(ws, "GET", f"{path}?{bad}"))["status"] == 422, bad
    finally:
        await ws.close()


async def test_the_throttle_hook_answers_429_as_alpaca_s_rate_limit(
    server: PaperBrokerServer,
) -> None:
    ws = await login(server.port)
    try:
        server.throttle(2, retry_after_s=1.5)
        for _ in range(2):
            answer = await request(ws, "GET", "/v2/account")
            assert (answer["status"], answer["body"]["code"]) == (429, 42910000)
            assert answer["headers"] == {"Retry-After": "1.5"}
        answer = await request(ws, "GET", "/v2/account")
        assert answer["status"] == 200
        assert "headers" not in answer
        assert len(server.throttled_at) == 2
    finally:
        await ws.close()


async def test_the_order_list_is_limited_and_ordered_as_alpaca_s(
    server: PaperBrokerServer,
) -> None:
    """``GET /v2/orders``: newest first unless ``direction=asc``, 50 orders
    unless ``limit`` says more (500 at most), ``after`` / ``until`` on the
    submission time. It used to answer every order, oldest first."""
    ws = await login(server.port)
    try:
        for n in range(60):
            body = {
                "symbol": "AAPL",
                "qty": "1",
                "side": "buy",
                "type": "limit",
                "limit_price": "1",
                "client_order_id": f"o{n:02d}",
            }
            assert (await request(ws, "POST", "/v2/orders", body))["status"] == 200
        cids = [f"o{n:02d}" for n in range(60)]

        async def listed(query: str) -> list[str]:
            answer = await request(ws, "GET", f"/v2/orders?{query}")
            assert answer["status"] == 200, answer
            return [o["client_order_id"] for o in answer["body"]]

        assert await listed("status=open") == cids[::-1][:50]
        assert await listed("status=open&limit=500") == cids[::-1]
        assert await listed("status=all&limit=10&direction=asc") == cids[:10]
        tenth = server.book.by_client_order_id("acct", "o09")
        assert tenth is not None
        after = wire.iso(tenth.created_at_ns)
        assert (await listed(f"direction=asc&limit=500&after={after}"))[0] in ("o09", "o10")
        for bad in ("limit=501", "limit=0", "direction=sideways", "until=never"):
            assert (await request(ws, "GET", f"/v2/orders?{bad}"))["status"] == 422, bad
    finally:
        await ws.close()


async def test_a_client_s_made_up_methods_do_not_each_make_a_request_series(
    server: PaperBrokerServer,
) -> None:
    """``tradebus_paper_requests_total{method}`` took the method as the client
    wrote it: any client, logged in or not, made a new series (for ever, in
    the broker and in Prometheus) with each method it made up. Methods the
    paper broker does not serve are counted as ``other``."""
    from prometheus_client import REGISTRY

    def methods() -> set[str]:
        return {
            sample.labels["method"]
            for family in REGISTRY.collect()
            if family.name == "tradebus_paper_requests"
            for sample in family.samples
        }

    made_up = {f"M{uuid.uuid4().hex}" for _ in range(5)}
    async with connect(f"ws://127.0.0.1:{server.port}/stream") as ws:  # not logged in
        for method in made_up:
            assert (await request(ws, method, "/v2/positions"))["status"] == 401
    ws = await login(server.port)
    try:
        for method in made_up:
            assert (await request(ws, method, "/v2/positions"))["status"] == 404
        assert (await request(ws, "get", "/v2/positions"))["status"] == 200
    finally:
        await ws.close()
    seen = methods()
    assert not {m.upper() for m in made_up} & seen
    assert {"GET", "other"} <= seen


@pytest.mark.parametrize("before_midnight_ns", [1, 1_000])
async def test_a_fill_a_moment_before_midnight_new_york_is_of_that_day(
    before_midnight_ns: int,
) -> None:
    """``GET /v2/account/activities?date=`` keeps a fill by its New York
    day: one a nanosecond (or a microsecond) before midnight is of the day
    before it, not the next (seconds as a float rounded it up to midnight)."""
    clock = SetClock(new_york_ns("2026-12-16 00:00") - before_midnight_ns)
    counter = itertools.count(1)
    paper = PaperBook(BookConfig(), clock=clock, ids=lambda: f"id-{next(counter)}")
    async with PaperBrokerServer(paper, CREDS) as server:
        server.market(MarketUpdate.trade("AAPL", Decimal(10)))
        ws = await login(server.port)
        try:
            body = {"symbol": "AAPL", "qty": "1", "side": "buy"}
            assert (await request(ws, "POST", "/v2/orders", body))["status"] == 200
            path = "/v2/account/activities/FILL?date="
            that_day = (await request(ws, "GET", path + "2026-12-15"))["body"]
            next_day = (await request(ws, "GET", path + "2026-12-16"))["body"]
        finally:
            await ws.close()
    assert [a["transaction_time"][:10] for a in that_day] == ["2026-12-16"]  # 05:00 UTC less a bit
    assert next_day == []
