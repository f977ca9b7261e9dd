"""Whose ledger a price marks: the router's choice (``Router.markers``), the host's books."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from libs.contract.envelope import Event
from libs.contract.events import MarkPayload, MarkUpdated, TradePayload, TradePrinted
from libs.strategy import InMemoryRuntime
from libs.strategy.testing import (
    MINUTE_NS,
    At,
    EchoStrategy,
    bar,
    booked_fill,
    settlement_fill,
)

CALL = "O:SPY261211C00600000"


def trade(symbol: str, price: str, at_ns: int) -> TradePrinted:
    payload = TradePayload(symbol=symbol, price=Decimal(price), size=Decimal(1), feed="polygon")
    return TradePrinted.create(payload, source="test/marketdata", clock=At(at_ns))


def mark(symbol: str, price: str, at_ns: int) -> MarkUpdated:
    p = Decimal(price)
    payload = MarkPayload(symbol=symbol, price=p, bid_price=p - 1, ask_price=p + 1, feed="polygon")
    return MarkUpdated.create(payload, source="test/marketdata", clock=At(at_ns))


@pytest.mark.parametrize("restoring", [False, True])
def test_a_price_marks_only_the_strategies_it_concerns_whoever_holds_the_symbol(
    restoring: bool,
) -> None:
    """Three strategies hold SPY: q trades it; o trades a SPY call only (minute
    bars) and holds the shares of its exercise; p trades AAPL and holds SPY a
    flatten's closing fill booked to it, at 590. SPY's prices and another's
    fill of it mark o's (not a bar of another interval), never p's: the
    router names no strategy for a symbol it neither trades nor underlies,
    and the host marks only what it is handed. Every strategy the router
    hands a price trades its symbol or underlies it. Live and restored."""
    rt = InMemoryRuntime()
    rt.add("q", EchoStrategy, symbols=("SPY",))
    rt.add("o", EchoStrategy, symbols=(CALL,), bar_interval="1m")
    rt.add("p", EchoStrategy, symbols=("AAPL",))
    held: list[Event] = [
        booked_fill("SPY", "sell", 5, "590", strategy="p", flatten=uuid.uuid4(), fill_id="p"),
        booked_fill("SPY", "buy", 1, "600", strategy="q", flatten=uuid.uuid4(), fill_id="q"),
        settlement_fill("SPY", "buy", 200, "600", strategy="o", at_ns=1),
    ]
    prices: list[tuple[Event, str | None]] = [
        (trade("SPY", "603", MINUTE_NS), "603"),
        (bar("SPY", 650, MINUTE_NS, interval="1s"), None),  # not o's interval
        (bar("SPY", 604, 2 * MINUTE_NS), "604"),
        (mark("SPY", "605", 4 * MINUTE_NS), "605"),
        (booked_fill("SPY", "buy", 1, "606", strategy="q", flatten=uuid.uuid4(),
                     fill_id="q2", at_ns=5 * MINUTE_NS), "606"),
    ]  # fmt: skip
    if not restoring:
        rt.start()
    o_mark: Decimal | None = None
    # o's shares open marked at q's fill before them (600), SPY's newest price.
    marked_held = [(held[0], None), (held[1], None), (held[2], "600")]
    for i, (event, o_marked) in enumerate(marked_held + prices):
        for name in rt.router.markers(event, rt.router.route(event)):
            host = rt.hosts[name]
            assert event.payload.symbol in host.symbols + host.underlyings, (name, event)
        if restoring:
            rt.restore(event)
        else:
            rt.feed(event)
        if i == len(held) - 1:
            held_spy = {name: h.ledger.position("SPY").quantity for name, h in rt.hosts.items()}
            assert held_spy == {"q": 1, "o": 200, "p": -5}
        if o_marked is not None:
            o_mark = Decimal(o_marked)
        assert rt.hosts["o"].ledger.position("SPY").mark == o_mark, event
        assert rt.hosts["p"].ledger.position("SPY").mark == Decimal(590), event  # its own fill
