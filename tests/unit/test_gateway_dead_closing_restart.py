"""A close-all's order that its answer lists as ended with nothing filled
(a "dead" one: ``Closing.flatten_done`` leaves it out and remembers it in
``_dead_closing``, in-process only) across a gateway restart.

Nothing is lost with that memory. A dead order's statuses (canceled,
expired, rejected, and Alpaca's replaced) are final: Alpaca's order
"will not receive further updates", and the paper broker neither fills,
cancels nor expires an order that is not open; its ``done_for_day`` and
the like, which are not ends, map to ``accepted`` (adapters/paper/parse.py),
so an order that can still trade is never dead. The broker's stream is
live only: a restarted gateway's new connection gets only what happens
from then on, which for a dead order is nothing. So no fill of it ever
comes, before a restart or after, and the only news of it a restart
drops is its acceptance and end still in flight to the old connection,
which record no fill either. These tests show it on the paper broker's
own books."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from libs.contract.envelope import Event
from libs.contract.events import (
    FlattenAccount,
    FlattenAccountPayload,
    OrderRejected,
    SubmitOrder,
    SubmitOrderPayload,
)
from services.broker_gateway.adapters.paper import parse, schemas
from services.broker_gateway.domain.model import BrokerOrder, BrokerPosition, CloseRefused
from services.broker_gateway.domain.tracker import OrderTracker, position_differences
from services.paper_broker.adapters import wire
from services.paper_broker.domain.book import (
    BookConfig,
    OrderSpec,
    PaperBook,
    PaperOrder,
    Refused,
    TradeUpdate,
)
from services.paper_broker.domain.fill_model import MarketUpdate
from tests.unit.gateway_doubles import broker, outbox_into, worker
from tests.unit.paper_books import Clock

D = Decimal
ACCOUNT = "acct"
SOURCE = "broker-gateway/test"
#: Tuesday 14 November 2023, 17:13 New York: after the close.
START = 1_700_000_000 * 10**9
CLOCK = Clock(START)


def paper_book(ids: Iterator[int]) -> PaperBook:
    """A paper book on the test's clock; ``ids`` go on across its restarts."""
    config = BookConfig(day_orders_expire_at="close")
    return PaperBook(config, clock=CLOCK, ids=lambda: f"p{next(ids)}")


def as_sent(o: PaperOrder) -> BrokerOrder:
    """``o`` as the gateway reads it off the paper broker's wire."""
    return parse.order(schemas.Order.model_validate(wire.order_json(o)))


def streamed(t: OrderTracker, updates: list[TradeUpdate]) -> list[Event]:
    """The paper broker's stream ``updates`` through the gateway's tracker."""
    out: list[Event] = []
    for u in updates:
        update = parse.trade_update(schemas.TradeUpdate.model_validate(wire.trade_update_json(u)))
        assert update is not None
        out += t.on_update(update)
    return out


def rebuilt(recorded: list[Event]) -> OrderTracker:
    t = OrderTracker(ACCOUNT, clock=CLOCK, source=SOURCE)
    for e in recorded:
        t.evolve(e)  # type: ignore[arg-type]
    return t


def book_port(book: PaperBook) -> Any:
    """A broker port over ``book``: its open orders and orders, as read off its wire."""

    async def open_orders() -> list[BrokerOrder]:
        return [as_sent(o) for o in book.orders(ACCOUNT, "open")]

    async def get_order(
        client_order_id: str | None = None, broker_order_id: str | None = None
    ) -> BrokerOrder | None:
        o = None
        if broker_order_id is not None:
            o = book.order(ACCOUNT, broker_order_id)
        if o is None and client_order_id is not None:
            o = book.by_client_order_id(ACCOUNT, client_order_id)
        return as_sent(o) if o is not None else None

    return broker(open_orders=open_orders, get_order=get_order)


def held(book: PaperBook) -> list[BrokerPosition]:
    return [BrokerPosition(p.symbol, p.qty, p.avg_entry_price) for p in book.positions(ACCOUNT)]


def first_life(end: str) -> tuple[PaperBook, OrderTracker, list[Event], PaperOrder]:
    """s1 bought 5 AAPL at 100 (recorded). The paper broker restarts (its
    journal replayed: the position, no price yet); a flatten's close-all
    places a market order closing it, which waits for a price and is ended
    (``end``) with nothing filled before the close-all's answer is read: the
    answer lists it dead. The gateway records the flatten's events; the
    closing order's own stream updates are still in flight when it dies."""
    CLOCK.t = START
    ids = itertools.count()
    book = paper_book(ids)
    live = OrderTracker(ACCOUNT, clock=CLOCK, source=SOURCE)
    submit = SubmitOrder.create(
        SubmitOrderPayload(
            order_id=uuid.uuid4(),
            strategy="s1",
            account=ACCOUNT,
            symbol="AAPL",
            side="buy",
            quantity=D(5),
        ),
        source="risk-gate/test",
        clock=CLOCK,
    )
    live.evolve(submit)
    recorded: list[Event] = [submit]
    spec = OrderSpec("AAPL", "buy", D(5), client_order_id=str(submit.payload.order_id))
    _, journal = book.submit(ACCOUNT, spec)
    journal += book.on_market(MarketUpdate.trade("AAPL", D(100), ts_ns=CLOCK.t))
    recorded += streamed(live, journal)
    assert live.position("AAPL", "s1") == D(5)

    book = paper_book(ids)
    for u in journal:
        book.apply(u)
    assert book.last_price("AAPL") is None
    [closing], _ = book.close_all(ACCOUNT, cancel_orders=True)
    assert closing.order is not None
    assert closing.order.status == "new", "waits for a price"
    CLOCK.t += 1_000_000
    if end == "canceled":
        book.cancel(ACCOUNT, closing.order.id)
    else:  # a day order placed after the close, at its session's close
        CLOCK.t += 48 * 3600 * 10**9
        book.expire_orders()
    dead = book.order(ACCOUNT, closing.order.id)
    assert dead is not None
    assert dead.status == end
    assert dead.filled_qty == 0

    flatten = FlattenAccount.create(
        FlattenAccountPayload(account=ACCOUNT, reason="breaker"), source="risk-gate", clock=CLOCK
    )
    live.evolve(flatten)
    live.flatten_started(flatten)
    # As the worker passes it: its position left open (Flattening._left_open).
    [(symbol, why)] = live.left_open([as_sent(dead)]).items()
    events = live.flatten_done([as_sent(dead)], [CloseRefused(symbol, why, entry=0)])
    live.flatten_ended()
    [rejected] = events
    assert isinstance(rejected, OrderRejected)
    assert "AAPL position, which is still open" in rejected.payload.reason
    assert f"was {end} with nothing filled" in rejected.payload.reason
    assert live.find(as_sent(dead)) is None, "left out, remembered in-process only"
    recorded += [flatten, *events]
    return book, live, recorded, dead


@pytest.mark.parametrize("end", ["canceled", "expired"])
async def test_a_dead_closing_order_never_fills_and_a_restart_loses_nothing(end: str) -> None:
    """After the answer, prices come: the paper broker fills nothing of the
    dead order, will not cancel or expire it again, and streams nothing of
    it. The gateway restarts: its tracker, rebuilt from the recorded events,
    does not know the order (nothing recorded names it), and the start-up's
    reconciliation publishes nothing (it is no open order); the strategies'
    positions are the live gateway's, and what the broker holds agrees
    with them: no fill to book was missed."""
    book, live, recorded, dead = first_life(end)

    later = book.on_market(MarketUpdate.trade("AAPL", D(99), ts_ns=CLOCK.t))
    later += book.expire_orders()
    with pytest.raises(Refused) as refused:
        book.cancel(ACCOUNT, dead.id)
    assert refused.value.status == 422
    assert all(u.order.id != dead.id for u in later), "the stream brings nothing of it"
    assert book.order(ACCOUNT, dead.id) == dead, "final: unchanged"
    assert [(p.symbol, p.qty) for p in book.positions(ACCOUNT)] == [("AAPL", D(5))]

    again = rebuilt(recorded)
    assert again.find(as_sent(dead)) is None
    published: list[Any] = []
    w = worker([0.0], [], account=ACCOUNT, tracker=again)
    w.port = book_port(book)
    w.outbox = outbox_into(published)
    assert await w.reconcile() is True
    assert published == []
    assert again.unsettled() == []
    assert again.positions == live.positions == {("s1", "AAPL"): D(5)}
    assert position_differences(again.net_positions(), held(book)) == ()
