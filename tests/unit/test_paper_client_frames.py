"""How the gateway's paper adapter reads the broker's frames: a good frame
is taken in, a bad one is counted and logged, and the next one is still read.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from libs.testing.wait import eventually
from services.broker_gateway import metrics
from services.broker_gateway.adapters.paper import client as client_module
from services.broker_gateway.adapters.paper import parse, schemas
from services.broker_gateway.adapters.paper.client import PaperBroker, retry_after
from services.broker_gateway.domain.model import CancelRefused, OrderUpdate
from services.broker_gateway.errors import AnswerUnread, BrokerUnavailable, RateLimited

ORDER = {
    "id": "b-1",
    "client_order_id": "c-1",
    "symbol": "AAPL",
    "side": "buy",
    "qty": "10",
    "filled_qty": "10",
    "filled_avg_price": "100.12",
    "type": "market",
    "time_in_force": "day",
    "status": "filled",
    "created_at": "2026-12-06T15:00:00.000001Z",
    "updated_at": "2026-12-06T15:00:00.000002Z",
    "asset_class": "us_equity",  # a field we do not read: ignored
}


def frame(stream: str, data: Any) -> bytes:
    return orjson.dumps({"stream": stream, "data": data})


def fill(**changes: Any) -> bytes:
    data = {
        "event": "fill",
        "order": ORDER,
        "timestamp": "2026-12-06T15:00:00.000002Z",
        "execution_id": "x-1",
        "price": "100.12",
        "qty": "10",
    }
    return frame("trade_updates", {**data, **changes})


def malformed(client: PaperBroker) -> float:
    return float(metrics.MALFORMED.labels(account=client.account)._value.get())


def next_update(client: PaperBroker) -> OrderUpdate:
    update = client._events.get_nowait()
    assert isinstance(update, OrderUpdate)
    return update


def answering(monkeypatch: pytest.MonkeyPatch, client: PaperBroker, status: int, body: Any) -> None:
    """Every call of ``client`` gets this answer (a broker on the other end)."""

    async def call(call: str, method: str, path: str, request: Any = None) -> schemas.Response:
        return schemas.Response(id="1", status=status, body=body)

    monkeypatch.setattr(client, "_call", call)


@pytest.fixture
def client() -> PaperBroker:
    return PaperBroker(
        account="frames", url="ws://127.0.0.1:9", key_id="k", secret_key=SecretStr("s")
    )


async def test_a_trade_update_becomes_an_order_update(client: PaperBroker) -> None:
    raw = fill(qty=10)  # a JSON number, as Alpaca sometimes sends
    before = malformed(client)
    await client._dispatch(raw)
    update = next_update(client)
    assert update.kind == "fill"
    assert update.fill is not None
    assert (update.fill.quantity, update.fill.price) == (Decimal(10), Decimal("100.12"))
    assert update.order.client_order_id == "c-1"
    assert malformed(client) == before


async def test_a_response_reaches_its_caller(client: PaperBroker) -> None:
    fut: asyncio.Future[schemas.Response] = asyncio.get_running_loop().create_future()
    client._pending["7"] = fut
    await client._dispatch(frame("response", {"id": "7", "status": 200, "body": ORDER}))
    response = fut.result()
    assert (response.status, response.body["client_order_id"]) == (200, "c-1")


async def test_a_bad_frame_is_counted_and_the_next_is_read(
    client: PaperBroker, caplog: pytest.LogCaptureFixture
) -> None:
    before = malformed(client)
    with caplog.at_level("WARNING"):
        await client._dispatch(fill(price="a lot"))  # does not fit either way
        await client._dispatch(b"not json")
        await client._dispatch(frame("error", {"code": 40010000, "message": "no"}))
        await client._dispatch(frame("listening", {"streams": ["trade_updates"]}))
    assert malformed(client) == before + 2
    assert client._events.empty()
    assert "sent a message we cannot read" in caplog.text
    assert "says: {'code': 40010000, 'message': 'no'}" in caplog.text
    await client._dispatch(fill())
    assert next_update(client).kind == "fill"


async def test_a_fill_activity_of_another_order_is_never_taken_for_this_one(
    client: PaperBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The activity list is the account's: an activity is one of this order's
    fills only if its ``order_id`` says so (the reviewer's case: an MSFT sell
    of another order read as a fill of our AAPL buy)."""
    ours = parse.order(schemas.Order.model_validate(ORDER))
    activity = {
        "id": "20261206150000000::x1",
        "order_id": "b-1",
        "symbol": "AAPL",
        "side": "buy",
        "qty": "10",
        "price": "100.12",
        "cum_qty": "10",
        "leaves_qty": "0",
    }
    other = {**activity, "id": "x0", "order_id": "OTHER", "symbol": "MSFT", "side": "sell"}
    answering(monkeypatch, client, 200, [other, activity, {**other, "id": "x2"}])
    fills = await client.order_fills(ours)
    assert fills is not None
    assert [(f.execution_id, f.symbol, f.side) for f in fills] == [
        ("20261206150000000::x1", "AAPL", "buy")
    ]
    assert (fills[0].client_order_id, fills[0].cumulative_quantity) == ("c-1", Decimal(10))
    assert ours.created_ns == 1_796_569_200_000_001_000


async def test_done_for_day_is_not_an_end(client: PaperBroker) -> None:
    """Alpaca: an order done for the day "will not receive further updates
    until the next trading day"; a GTC one works again then. It is open, and
    its ``done_for_day`` event ends nothing (it used to read as ``expired``)."""
    working = {**ORDER, "status": "done_for_day", "filled_qty": "0", "filled_avg_price": None}
    assert parse.order(schemas.Order.model_validate(working)).status == "accepted"
    partly = {**ORDER, "status": "done_for_day", "filled_qty": "4"}
    order = parse.order(schemas.Order.model_validate(partly))
    assert (order.status, order.is_open, order.leaves_quantity) == (
        "partially_filled",
        True,
        Decimal(6),
    )
    event = {"event": "done_for_day", "order": partly, "timestamp": ORDER["updated_at"]}
    assert parse.trade_update(schemas.TradeUpdate.model_validate(event)) is None
    await client._dispatch(frame("trade_updates", event))
    assert client._events.empty()


def test_a_429_is_rate_limited_with_its_retry_after(client: PaperBroker) -> None:
    body = {"code": 42910000, "message": "rate limit exceeded"}
    for headers, expected in (
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"RETRY-AFTER": "Sun, 06 Dec 2026 15:00:03 GMT"}, 3.0),  # an HTTP date
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ):
        response = schemas.Response(id="1", status=429, body=body, headers=headers)
        with pytest.raises(RateLimited) as e:
            client._check(response, "submit")
        assert "rate limit exceeded" in str(e.value)
        if "GMT" in str(headers):
            now = 1_796_569_200.0  # 2026-12-06T15:00:00Z
            assert retry_after(headers, now) == expected
        else:
            assert e.value.retry_after_s == expected
    # A broker error is not a rate limit: retried, but without a Retry-After.
    with pytest.raises(BrokerUnavailable) as unavailable:
        client._check(schemas.Response(id="1", status=503, body={}), "submit")
    assert not isinstance(unavailable.value, RateLimited)


async def test_close_all_tells_apart_refusals_that_name_no_symbol(
    client: PaperBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each refused close carries its place in the 207, so refusals without a
    symbol are not one refusal (they all read as symbol "?")."""
    forbidden = {"code": 40310000, "message": "insufficient qty available for order"}
    answering(
        monkeypatch,
        client,
        207,
        [
            {"status": 403, "body": forbidden},
            {"symbol": "AAPL", "status": 200, "body": {**ORDER, "status": "accepted"}},
            {"symbol": "MSFT", "status": 403, "body": forbidden},
            {"status": 500},
        ],
    )
    closed = await client.close_all()
    assert [o.symbol for o in closed.orders] == ["AAPL"]
    assert [(r.symbol, r.entry, r.code) for r in closed.refused] == [
        (None, 0, "40310000"),
        ("MSFT", 2, "40310000"),
        (None, 3, "500"),
    ]
    assert closed.refused[2].reason == "HTTP 500"


async def test_cancel_all_returns_the_canceled_orders_and_the_failed_entries(
    client: PaperBroker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    answering(
        monkeypatch,
        client,
        207,
        [
            {"id": "b-1", "status": 200, "body": {**ORDER, "status": "pending_cancel"}},
            {"id": "b-2", "status": 204},  # no order in it: nothing to return
            {"id": "b-3", "status": 422, "body": {"message": "order is filled"}},
        ],
    )
    with caplog.at_level("WARNING"):
        canceled = await client.cancel_all()
    assert [o.broker_order_id for o in canceled.orders] == ["b-1"]
    assert canceled.refused == (CancelRefused("b-3", "order is filled", "422", entry=2),)
    assert "'id': 'b-3'" in caplog.text
    assert "failed with 422" in caplog.text
    assert "b-2" not in caplog.text


async def test_a_call_canceled_as_its_answer_comes_is_canceled(client: PaperBroker) -> None:
    """The answer to a call comes in the moment its caller is canceled (the
    gateway stopping): the call raises CancelledError. Through
    asyncio.wait_for (Python 3.11) it returned the answer and the
    cancellation was lost: the command worker went on to publish, waited for
    ever on the outbox already stopped, and the gateway never stopped (a test
    hung so, about one run in 14)."""

    class Socket:
        async def send(self, data: str) -> None:
            pass

    client._ws = Socket()  # type: ignore[assignment]
    client._up.set()
    call = asyncio.create_task(client.get_order(broker_order_id="b-1"))
    await eventually(lambda: client._pending)  # asked
    [answer] = client._pending.values()
    answer.set_result(schemas.Response(id="1", status=200, body=ORDER))
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


async def test_a_call_not_answered_in_time_is_a_timeout_not_a_lost_connection() -> None:
    """The connection is up, the broker just does not answer: the call says
    so and counts a timeout. TimeoutError is an OSError, so it was caught as
    one and read "connection lost during get_order", counted "unavailable"
    (and the timeout count stayed at 0)."""
    client = PaperBroker(
        account="silent",
        url="ws://127.0.0.1:9",
        key_id="k",
        secret_key=SecretStr("s"),
        request_timeout_s=0.05,
    )

    class Socket:
        async def send(self, data: str) -> None:
            pass  # taken, never answered

    client._ws = Socket()  # type: ignore[assignment]
    client._up.set()
    errors = metrics.CALL_ERRORS.labels(account="silent", call="get_order", error="timeout")
    before = errors._value.get()
    with pytest.raises(AnswerUnread) as e:  # the broker may have acted on it
        await client.get_order(broker_order_id="b-1")
    assert "no answer to get_order within 0.05s" in str(e.value)
    assert errors._value.get() == before + 1
    assert not client._pending


async def test_a_close_all_answer_that_cannot_be_read_is_an_answer_unread(
    client: PaperBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker answered (and may have placed closing orders), but the
    answer cannot be parsed: not "the broker is away", which the gateway
    retries for ever (see test_a_close_all_whose_answer_cannot_be_read_is_given_up)."""
    answering(monkeypatch, client, 207, [{"symbol": "AAPL", "status": 200, "body": {"id": 7}}])
    with pytest.raises(AnswerUnread):
        await client.close_all()
    answering(monkeypatch, client, 207, {"not": "a list"})
    with pytest.raises(AnswerUnread):
        await client.close_all()


def paging(
    monkeypatch: pytest.MonkeyPatch, client: PaperBroker, pages: list[list[dict[str, Any]]]
) -> list[str]:
    """Answer each call with the next of ``pages`` (the last again once they
    run out); the paths asked, in order."""
    asked: list[str] = []

    async def call(call: str, method: str, path: str, request: Any = None) -> schemas.Response:
        body = pages[min(len(asked), len(pages) - 1)]
        asked.append(path)
        return schemas.Response(id="1", status=200, body=body)

    monkeypatch.setattr(client, "_call", call)
    return asked


def fill_activity(n: int, order_id: str, cum_qty: int = 0) -> dict[str, Any]:
    return {
        "id": f"f{n}",
        "order_id": order_id,
        "symbol": "AAPL",
        "side": "buy",
        "qty": "5",
        "price": "100",
        "cum_qty": str(cum_qty or 5),
        "leaves_qty": "0",
    }


async def test_an_order_s_fills_are_read_a_page_at_a_time_until_all_are_found(
    client: PaperBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Oldest first from a second before the order, ``page_token`` the last
    id of the page before; no page is asked once the order's filled
    quantity is found, though the page was full."""
    monkeypatch.setattr(client_module, "ACTIVITY_PAGE_SIZE", 2)
    ours = parse.order(schemas.Order.model_validate(ORDER))  # 10 filled
    asked = paging(
        monkeypatch,
        client,
        [
            [fill_activity(1, "OTHER"), fill_activity(2, "b-1", 5)],
            [fill_activity(3, "b-1", 10), fill_activity(4, "OTHER")],
            [fill_activity(5, "b-1", 15)],  # never asked
        ],
    )
    fills = await client.order_fills(ours)
    assert fills is not None
    assert [f.execution_id for f in fills] == ["f2", "f3"]
    assert asked == [
        "/v2/account/activities/FILL?page_size=2&direction=asc&after=2026-12-06T14%3A59%3A59.000001Z",
        "/v2/account/activities/FILL?page_size=2&direction=asc"
        "&after=2026-12-06T14%3A59%3A59.000001Z&page_token=f2",
    ]


async def test_an_order_s_fills_stop_after_the_most_pages_said(
    client: PaperBroker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(client_module, "ACTIVITY_PAGE_SIZE", 1)
    monkeypatch.setattr(client_module, "MAX_ACTIVITY_PAGES", 3)
    unknown_time = {**ORDER, "created_at": None}  # read newest first
    ours = parse.order(schemas.Order.model_validate(unknown_time))
    asked = paging(monkeypatch, client, [[fill_activity(1, "b-1", 5)]])
    with caplog.at_level("WARNING"):
        fills = await client.order_fills(ours)
    assert fills is not None
    assert len(fills) == 3
    assert asked == [
        "/v2/account/activities/FILL?page_size=1&direction=desc",
        "/v2/account/activities/FILL?page_size=1&direction=desc&page_token=f1",
        "/v2/account/activities/FILL?page_size=1&direction=desc&page_token=f1",
    ]
    assert "fills of order c-1 not all found in 3 pages of activities" in caplog.text


def option_activity(n: int) -> dict[str, Any]:
    return {
        "id": f"a{n}",
        "activity_type": "OPEXP",
        "date": "2026-12-11",
        "symbol": "X",
        "qty": "1",
    }


async def test_option_activities_are_read_until_a_short_page(
    client: PaperBroker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(client_module, "ACTIVITY_PAGE_SIZE", 2)
    asked = paging(
        monkeypatch,
        client,
        [[option_activity(1), option_activity(2)], [option_activity(3)], [option_activity(4)]],
    )
    with caplog.at_level("WARNING"):
        got = await client.option_activities(after=dt.date(2026, 12, 10))
    assert len(got) == 3
    query = (
        "activity_types=OPEXP%2COPEXC%2COPASN%2COPTRD&after=2026-12-10&direction=asc&page_size=2"
    )
    assert asked == [
        f"/v2/account/activities?{query}",
        f"/v2/account/activities?{query}&page_token=a2",
    ]
    assert caplog.text == ""
    monkeypatch.setattr(client_module, "MAX_ACTIVITY_PAGES", 2)
    asked = paging(monkeypatch, client, [[option_activity(1), option_activity(2)]])
    with caplog.at_level("WARNING"):
        got = await client.option_activities(after=dt.date(2026, 12, 10))
    assert len(got) == 4
    assert len(asked) == 2
    assert "option activities after 2026-12-10 read in 2 pages, more may follow" in caplog.text
