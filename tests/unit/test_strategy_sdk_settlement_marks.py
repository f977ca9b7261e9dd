"""Shares an option's settlement books to a strategy are marked at once by the
underlying's newest price, as the risk-gate and ``tradebus positions`` mark
them (``RiskState.marks``: the symbol's newest price, whoever held it then).

The ledger dropped every price of a symbol it held no position in, so the
shares of an exercise were unmarked until the underlying printed again:
after the close, overnight or over a weekend, ``ctx.pnl()`` left out their
whole move from the strike while the gate's daily-loss breaker counted it.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from libs.contract.envelope import Event
from libs.contract.events import TradePayload, TradePrinted
from libs.strategy import InMemoryRuntime
from libs.strategy.context import PnL
from libs.strategy.testing import MINUTE_NS, At, EchoStrategy, bar, booked_fill, settlement_fill

CALL = "O:SPY261211C00600000"
FLATTEN = uuid.UUID(int=7)


def spy_trade(price: str, at_ns: int) -> TradePrinted:
    payload = TradePayload(symbol="SPY", price=Decimal(price), size=Decimal(1), feed="polygon")
    return TradePrinted.create(payload, source="test/marketdata", clock=At(at_ns))


def exercised(at_ns: int) -> list[Event]:
    """p's 2 calls, bought at 5, exercised: the contracts at 0, 200 SPY at 600."""
    return [
        settlement_fill(CALL, "sell", 2, "0", strategy="p", at_ns=at_ns),
        settlement_fill("SPY", "buy", 200, "600", strategy="p", at_ns=at_ns),
    ]


def feed(rt: InMemoryRuntime, events: list[Event], restoring: bool) -> None:
    for event in events:
        if restoring:
            rt.restore(event)
        else:
            rt.feed(event)


@pytest.mark.parametrize("restoring", [False, True])
@pytest.mark.parametrize("own", [False, True])
def test_shares_of_an_exercise_are_marked_at_the_underlyings_last_price(
    own: bool, restoring: bool
) -> None:
    """SPY last traded at 612 before the exercise (p trades SPY itself, or
    only the call): its 200 shares at 600 are worth 2,400 more at once."""
    rt = InMemoryRuntime()
    rt.add("p", EchoStrategy, symbols=(CALL, "SPY") if own else (CALL,), bar_interval="1m")
    if not restoring:
        rt.start()
    opened = booked_fill(CALL, "buy", 2, "5", strategy="p", flatten=FLATTEN, at_ns=1)
    feed(rt, [opened, spy_trade("612", MINUTE_NS), *exercised(2 * MINUTE_NS)], restoring)
    shares = rt.hosts["p"].ledger.position("SPY")
    assert (shares.quantity, shares.average_price) == (Decimal(200), Decimal(600))
    assert (shares.mark, shares.mark_ns) == (Decimal(612), MINUTE_NS)
    assert shares.unrealized_pnl == Decimal(2400)
    assert rt.hosts["p"].ledger.pnl() == PnL(Decimal(-1000), Decimal(2400))
    # The newest price by market time marks from there, as before.
    feed(rt, [spy_trade("580", MINUTE_NS - 1)], restoring)  # late, stamped older
    assert rt.hosts["p"].ledger.position("SPY").mark == Decimal(612)
    feed(rt, [bar("SPY", 615, 3 * MINUTE_NS)], restoring)
    assert rt.hosts["p"].ledger.position("SPY").mark == Decimal(615)


def test_a_fill_newer_than_the_last_price_marks_a_new_position_at_its_own() -> None:
    rt = InMemoryRuntime()
    rt.add("p", EchoStrategy, symbols=("SPY",))
    rt.start()
    rt.feed(spy_trade("612", MINUTE_NS))
    rt.feed(
        booked_fill("SPY", "buy", 10, "613", strategy="p", flatten=FLATTEN, at_ns=MINUTE_NS + 1)
    )
    assert rt.hosts["p"].ledger.position("SPY").mark == Decimal(613)


def test_no_price_seen_leaves_the_shares_unmarked_and_a_price_makes_no_position() -> None:
    rt = InMemoryRuntime()
    rt.add("p", EchoStrategy, symbols=(CALL,))
    rt.start()
    rt.feed(booked_fill(CALL, "buy", 2, "5", strategy="p", flatten=FLATTEN, at_ns=1))
    rt.feed(spy_trade("612", MINUTE_NS))
    assert set(rt.hosts["p"].ledger.positions) == {CALL}, "a price is no position"
    other = InMemoryRuntime()
    other.add("p", EchoStrategy, symbols=(CALL,))
    other.start()
    for event in exercised(2 * MINUTE_NS):
        other.feed(event)
    shares = other.hosts["p"].ledger.position("SPY")
    assert (shares.quantity, shares.mark, shares.unrealized_pnl) == (Decimal(200), None, Decimal(0))


def test_after_a_restart_from_a_checkpoint_the_price_before_it_still_marks_the_shares() -> None:
    """The rebuild seeds p's ledger from a checkpoint at sequence 2 (its calls)
    and hands the ledger no event at or below it: SPY's last trade, at 2,
    was lost with it, and the shares of an exercise after it were unmarked."""
    calls = booked_fill(CALL, "buy", 2, "5", strategy="p", flatten=FLATTEN, at_ns=1)
    for own in (False, True):
        live = InMemoryRuntime()
        live.add("p", EchoStrategy, symbols=(CALL, "SPY") if own else (CALL,))
        live.restore(calls)
        rt = InMemoryRuntime()
        rt.add("p", EchoStrategy, symbols=(CALL, "SPY") if own else (CALL,))
        rt.hosts["p"].ledger.seed(live.hosts["p"].ledger.positions)
        events = [calls, spy_trade("612", MINUTE_NS), *exercised(2 * MINUTE_NS)]
        for seq, event in enumerate(events, start=1):
            rt.restore(event, seq=seq, ledgers_upto={"p": 2})
        shares = rt.hosts["p"].ledger.position("SPY")
        assert (shares.quantity, shares.mark) == (Decimal(200), Decimal(612)), own
        assert rt.hosts["p"].ledger.position(CALL).quantity == 0, own
