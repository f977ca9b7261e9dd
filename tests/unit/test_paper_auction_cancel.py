"""Cancels of ``opg`` and ``cls`` orders once their auction has them.

An on-open or on-close order is committed from its cutoff (09:28 for the
open, 15:50 for the close, 12:50 on a half day) until its auction settles it:
the exchange's auction has it and a cancel is refused (422), as Alpaca and
the exchanges refuse it. Until this an ``opg`` order was cancelable again
from the open until its opening print came, and a ``cls`` order until its
closing print came, after the close.
"""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from services.paper_broker.domain.book import (
    BookConfig,
    OrderSpec,
    PaperBook,
    Refused,
    TimeInForce,
)
from services.paper_broker.domain.fill_model import MarketUpdate

D = Decimal
NY = ZoneInfo("America/New_York")


def ny_ns(text: str) -> int:
    """``2026-12-08 10:00`` New York time, in ns."""
    local = dt.datetime.fromisoformat(text).replace(tzinfo=NY)
    return int(local.timestamp() * 1_000_000) * 1_000


class SetClock:
    def __init__(self, ns: int) -> None:
        self.ns = ns

    def now_ns(self) -> int:
        return self.ns


def book(at: str) -> tuple[PaperBook, SetClock]:
    clock = SetClock(ny_ns(at))
    counter = itertools.count(1)
    return PaperBook(BookConfig(), clock=clock, ids=lambda: f"id-{next(counter)}"), clock


def trade(symbol: str, price: str, at: str) -> MarketUpdate:
    return MarketUpdate.trade(symbol, D(price), ny_ns(at))


@pytest.mark.parametrize(
    ("tif", "placed", "at", "cancelable"),
    [
        ("opg", "2026-12-08 08:00", "2026-12-08 09:27:59.999", True),
        ("opg", "2026-12-08 08:00", "2026-12-08 09:28", False),
        # From the open until its print comes: the auction is under way.
        ("opg", "2026-12-08 08:00", "2026-12-08 09:30", False),
        ("opg", "2026-12-08 08:00", "2026-12-08 09:31:59", False),
        ("cls", "2026-12-08 08:00", "2026-12-08 15:49:59.999", True),
        ("cls", "2026-12-08 08:00", "2026-12-08 15:50", False),
        ("cls", "2026-12-08 08:00", "2026-12-08 15:59", False),
        # After the close, before the print that stands for it.
        ("cls", "2026-12-08 08:00", "2026-12-08 16:01", False),
        # Placed in the evening, for the next session's close.
        ("cls", "2026-12-08 19:00", "2026-12-08 19:01", True),
        ("cls", "2026-12-08 19:00", "2026-12-09 15:49", True),
        ("cls", "2026-12-08 19:00", "2026-12-09 15:50", False),
        # The Friday after Thanksgiving closes at 13:00: the cutoff is 12:50.
        ("cls", "2026-11-27 08:00", "2026-11-27 12:49:59", True),
        ("cls", "2026-11-27 08:00", "2026-11-27 12:50", False),
    ],
)
def test_an_auction_order_cannot_be_canceled_from_its_cutoff_until_its_auction(
    tif: TimeInForce, placed: str, at: str, cancelable: bool
) -> None:
    b, clock = book(placed)
    order, _ = b.submit("A", OrderSpec("AAPL", "buy", D(1), time_in_force=tif))
    clock.ns = ny_ns(at)
    if cancelable:
        [update] = b.cancel("A", order.id)
        assert (update.event, update.order.id) == ("canceled", order.id)
        return
    with pytest.raises(Refused, match="not cancelable") as e:
        b.cancel("A", order.id)
    assert (e.value.status, e.value.code) == (422, 42210000)
    assert b.order("A", order.id) == order  # still working, for its auction


def test_the_refusals_name_the_cutoff_and_the_auction() -> None:
    b, clock = book("2026-11-27 08:00")  # a half day: closes at 13:00
    moo, _ = b.submit("A", OrderSpec("AAPL", "buy", D(1), time_in_force="opg"))
    moc, _ = b.submit("A", OrderSpec("AAPL", "buy", D(1), time_in_force="cls"))
    clock.ns = ny_ns("2026-11-27 09:31")
    with pytest.raises(Refused) as e:
        b.cancel("A", moo.id)
    assert e.value.message == (
        "order is not cancelable (time_in_force opg, from 09:28 New York: "
        "the opening auction at 09:30 has it)"
    )
    clock.ns = ny_ns("2026-11-27 12:55")
    with pytest.raises(Refused) as e:
        b.cancel("A", moc.id)
    assert e.value.message == (
        "order is not cancelable (time_in_force cls, from 12:50 New York: "
        "the closing auction at 13:00 has it)"
    )


def test_an_opg_order_whose_cancel_was_refused_after_the_open_fills_at_its_print() -> None:
    b, clock = book("2026-12-08 08:00")
    moo, _ = b.submit("A", OrderSpec("AAPL", "buy", D(2), time_in_force="opg"))
    clock.ns = ny_ns("2026-12-08 09:30:05")
    with pytest.raises(Refused):
        b.cancel("A", moo.id)
    updates = b.on_market(trade("AAPL", "101", "2026-12-08 09:30:01"))
    assert [(u.event, u.order.id, u.price) for u in updates] == [("fill", moo.id, D(101))]


def test_a_cancel_all_and_a_close_all_leave_a_cls_order_from_its_cutoff() -> None:
    """``DELETE /v2/orders`` at 15:55 cancels the day order and reports the
    ``cls`` order refused; ``DELETE /v2/positions?cancel_orders=true`` leaves
    it holding its shares, so the position is refused. It fills at the close."""
    b, clock = book("2026-12-08 08:00")
    b.on_market(trade("AAPL", "100", "2026-12-08 08:00"))
    b.submit("A", OrderSpec("AAPL", "buy", D(5)))
    moc, _ = b.submit("A", OrderSpec("AAPL", "sell", D(2), time_in_force="cls"))
    day, _ = b.submit("A", OrderSpec("AAPL", "buy", D(1), "limit", limit_price=D(90)))
    clock.ns = ny_ns("2026-12-08 15:55")
    entries, updates = b.cancel_all("A")
    assert [(u.event, u.order.id) for u in updates] == [("canceled", day.id)]
    assert [(e.order.id, e.refused is not None) for e in entries] == [
        (moc.id, True),
        (day.id, False),
    ]
    [closing], updates = b.close_all("A", cancel_orders=True)
    assert updates == []
    assert closing.refused is not None
    assert "insufficient qty available" in closing.refused.message
    b.on_market(trade("AAPL", "103", "2026-12-08 15:59:59"))
    clock.ns = ny_ns("2026-12-08 16:00:02")
    updates = b.on_market(trade("AAPL", "104", "2026-12-08 16:00:01"))
    assert [(u.event, u.order.id, u.price) for u in updates] == [("fill", moc.id, D(103))]
