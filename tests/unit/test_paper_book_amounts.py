"""The paper broker's books and amounts as large as the contract carries (38
digits, 12 of them places): booked exactly, and larger ones refused."""

from __future__ import annotations

import pytest

from services.paper_broker.domain.book import OrderSpec, Refused
from services.paper_broker.domain.fill_model import FillModelConfig, MarketUpdate
from tests.unit.paper_books import D, book, events


def test_prices_as_large_as_the_contract_carries_fill_without_an_error() -> None:
    """In the default 28-digit context, averaging a fill at 1e16 (to 12
    places) raised InvalidOperation after the book had changed: the update
    was never journaled or sent. The book's arithmetic has room for any
    38-digit amount the contract carries."""
    b = book(fill_model=FillModelConfig(slippage_bps=D(3)))
    b.on_market(MarketUpdate.trade("X", D("1e16")))
    b.submit("A", OrderSpec("X", "buy", D(1)))
    b.on_market(MarketUpdate.trade("X", D("3e16")))
    order, updates = b.submit("A", OrderSpec("X", "buy", D(3)))
    assert events(updates) == ["new", "fill"]
    assert order.filled_avg_price == D("30009000000000000")  # 3e16 + 3 bps, to the cent
    [pos] = b.positions("A")
    assert pos.qty == D(4)
    assert pos.avg_entry_price == D("25007500000000000")  # (1.0003e16 + 3 x 3.0009e16) / 4


def test_quantities_as_large_as_the_contract_carries_fill_exactly() -> None:
    """A quantity of more than 28 digits (the contract carries 38, 12 of them
    places) was rounded in the default decimal context: the order's fill
    came out short of its quantity, it stayed partially filled, and every
    later trade filled its last 1e-12 again, for ever, at the same rounded
    filled quantity."""
    qty = D("10000000000000000.000000000001")
    b = book(fill_model=FillModelConfig(max_fill_quantity=D("6000000000000000")))
    b.on_market(MarketUpdate.trade("X", D(5)))
    order, updates = b.submit("A", OrderSpec("X", "buy", qty))
    updates += b.on_market(MarketUpdate.trade("X", D(5)))
    assert events(updates) == ["new", "partial_fill", "fill"]
    assert [u.qty for u in updates[1:]] == [
        D("6000000000000000"),
        D("4000000000000000.000000000001"),
    ]
    final = b.order("A", order.id)
    assert final is not None
    assert (final.status, final.filled_qty, final.remaining) == ("filled", qty, D(0))
    assert updates[-1].position_qty == qty
    [pos] = b.positions("A")
    assert pos.qty == qty
    assert b.on_market(MarketUpdate.trade("X", D(5))) == []  # nothing left to fill
    b.submit("A", OrderSpec("X", "sell", qty))
    b.on_market(MarketUpdate.trade("X", D(5)))
    assert b.positions("A") == []


def test_a_sell_or_a_close_of_a_quantity_of_more_than_28_digits_is_booked_exactly() -> None:
    """Negating or taking the absolute value of a Decimal rounds it to the
    default context's 28 digits: a sell of 10000000000000000.000000000001
    (29 digits, the contract carries 38) took 10000000000000000.00000000000
    off the position and left 1E-12 of it for ever; a close-all ordered the
    rounded quantity (leaving the same), and the quantity available was the
    rounded one. Quantities are negated and made absolute exactly now."""
    qty = D("10000000000000000.000000000001")
    b = book()
    b.on_market(MarketUpdate.trade("X", D(5)))
    b.submit("A", OrderSpec("X", "buy", qty))
    _, updates = b.submit("A", OrderSpec("X", "sell", qty))
    assert (updates[-1].event, updates[-1].qty, updates[-1].position_qty) == ("fill", qty, D(0))
    assert b.positions("A") == []
    # Short, then a close-all: the closing order is for the whole position.
    b.submit("A", OrderSpec("X", "sell", qty))
    [pos] = b.positions("A")
    assert pos.qty == qty.copy_negate()  # -qty would round it
    assert b.qty_available("A", pos) == pos.qty
    [closing], _ = b.close_all("A")
    assert closing.order is not None
    assert (closing.order.qty, closing.order.status) == (qty, "filled")
    assert b.positions("A") == []


def test_an_amount_the_contract_cannot_carry_is_refused_and_breaks_nothing() -> None:
    """A quantity or price of 1e26 or more (the contract carries 38 digits,
    12 of them places) is refused (422). A quantity past the decimal
    context's exponent (1e1000000, a JSON number or string the wire takes)
    used to raise Overflow in the middle of the submit: the order was in the
    books (listed, never journaled, no answer sent), and every later price of
    its symbol raised again out of on_market, which ends the feed's task and
    the broker with it."""
    b = book()
    b.on_market(MarketUpdate.trade("X", D(5)))
    for spec in (
        OrderSpec("X", "buy", D("1e1000000")),
        OrderSpec("X", "buy", D("1e26")),
        OrderSpec("X", "sell", D(1), "limit", limit_price=D("1e1000000")),
        OrderSpec("X", "buy", D(1), "stop", stop_price=D("1e26")),
    ):
        with pytest.raises(Refused, match="must be less than 1e26") as e:
            b.submit("A", spec)
        assert e.value.status == 422
    assert b.orders("A", "all") == []
    assert b.on_market(MarketUpdate.trade("X", D(6))) == []
    largest = D("99999999999999999999999999.999999999999")  # 38 digits: taken
    order, _ = b.submit("A", OrderSpec("X", "buy", largest))
    assert (order.status, order.filled_qty) == ("filled", largest)
