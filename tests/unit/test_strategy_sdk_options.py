"""The strategy SDK and options: the test helpers' option intents, settlements
booked (an exercise's contracts and shares), those shares marked by the
underlying and closable, and the router marking by underlyings."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from libs.contract.envelope import Event
from libs.contract.events import (
    OrderIntentCreated,
    QuotePayload,
    QuoteUpdated,
    StrategyFaulted,
    TradePayload,
    TradePrinted,
)
from libs.strategy import Fill, InMemoryRuntime, Strategy, Trade
from libs.strategy.context import PnL
from libs.strategy.testing import (
    MINUTE_NS,
    At,
    bar,
    booked_fill,
    fill_chain,
    market_intent,
    settlement_fill,
    signal,
)
from tests.unit.strategy_probes import Probe, ProbeParams, counter_ids, of_type, probe_seen


def test_the_test_helpers_give_an_option_intent_and_command_the_option_class() -> None:
    """market_intent and accept build what the SDK and the risk-gate would: an
    intent of an O: symbol is an option (else the gate denies it for its
    asset_class), and the order command carries the intent's class."""
    ids = counter_ids()
    root = signal("s", "O:SPY241220P00720000", at_ns=1_700_000_000 * 10**9, ids=ids)
    intent = market_intent(root, "paper", "buy", 1, ids=ids)
    assert intent.payload.asset_class == "option"
    _decision, command, _ack, _fill = fill_chain(intent, "5.5", ids=ids)
    assert command.payload.asset_class == "option"
    stock = market_intent(signal("s", "AAPL", at_ns=root.ts_event, ids=ids), "paper", "buy", 1)
    assert stock.payload.asset_class == "equity"


def test_a_settlement_is_booked_but_marks_nothing() -> None:
    """p holds 2 SPY 600 calls bought at 5, q holds 10 SPY marked at 612.
    The calls are exercised: p's contracts go at 0 (its 1,000 premium
    realized as lost) and p buys 200 SPY at 600. The ledgers book both, and
    neither fill marks a symbol: q's SPY stays at 612 (not the strike),
    p's contract keeps its last price, p's new shares open marked at SPY's
    last price, 612, as the risk-gate marks them. Also after a restart from
    the store (``restore``)."""
    call = "O:SPY261211C00600000"
    flatten = uuid.uuid4()
    for restoring in (False, True):
        rt = InMemoryRuntime(ids=counter_ids())
        rt.add("p", Probe, symbols=(call, "SPY"))
        rt.add("q", Probe, symbols=("SPY",))
        events: list[Event] = [
            booked_fill(call, "buy", 2, "5", strategy="p", flatten=flatten, fill_id="f-p", at_ns=1),
            booked_fill("SPY", "buy", 10, "610", strategy="q", flatten=flatten, fill_id="f-q"),
            bar("SPY", 612, 0),
            settlement_fill(call, "sell", 2, "0", strategy="p", at_ns=2 * MINUTE_NS),
            settlement_fill("SPY", "buy", 200, "600", strategy="p", at_ns=2 * MINUTE_NS),
        ]
        if restoring:
            for event in events:
                rt.restore(event)
        else:
            rt.run(events)
        p = rt.hosts["p"].ledger
        contract, shares = p.position(call), p.position("SPY")
        assert (contract.quantity, contract.realized_pnl) == (Decimal(0), Decimal(-1000))
        assert contract.mark == Decimal(5), "a settlement is no price of the contract"
        assert (shares.quantity, shares.average_price) == (Decimal(200), Decimal(600))
        assert shares.mark == Decimal(612), "SPY's last price, not the strike"
        q = rt.hosts["q"].ledger.position("SPY")
        assert (q.mark, q.unrealized_pnl) == (Decimal(612), Decimal(20)), "the strike is no price"
        if not restoring:
            assert [f.settlement for f in probe_seen(rt, "p") if isinstance(f, Fill)] == [
                None,
                "exercised",
                "exercised",
            ]


class SellsWhatItGets(Strategy[ProbeParams]):
    """Options only; sells ``quantity`` of any other symbol a fill gives it
    (the underlying's shares of an exercise)."""

    def on_fill(self, fill: Fill) -> None:
        if fill.symbol not in self.ctx.symbols and fill.side == "buy":
            signal = self.ctx.signal(fill.symbol, "unwind", "flat", reason="exercised")
            self.ctx.order(fill.symbol, "sell", self.params.quantity, cause=signal)


@pytest.mark.parametrize(
    ("quantity", "closes"),
    [("200", True), ("150", True), ("201", False)],
)
def test_an_options_only_strategy_may_close_the_shares_an_exercise_gave_it(
    quantity: str, closes: bool
) -> None:
    """p trades only a SPY call; exercised, it is given 200 SPY (booked to
    its ledger). It may sell them down (all, or part): an order in a symbol
    not its own that reduces a position it holds. Selling past flat (201,
    which would open a short in a symbol not its own) is still a fault.
    Before, any order in SPY was a fault: the shares could only be closed
    by hand (or a flatten of the whole account)."""
    call = "O:SPY261211C00600000"
    rt = InMemoryRuntime(ids=counter_ids())
    rt.add("p", SellsWhatItGets, {"quantity": quantity}, symbols=(call,))
    out = rt.run(
        [
            booked_fill(call, "buy", 2, "5", strategy="p", flatten=uuid.uuid4(), fill_id="f-p"),
            settlement_fill(call, "sell", 2, "0", strategy="p", at_ns=2 * MINUTE_NS),
            settlement_fill("SPY", "buy", 200, "600", strategy="p", at_ns=2 * MINUTE_NS),
        ]
    )
    assert rt.hosts["p"].ledger.position("SPY").quantity == Decimal(200), "booked"
    intents = of_type(out, OrderIntentCreated)
    if closes:
        [intent] = intents
        assert (intent.payload.symbol, intent.payload.side, intent.payload.quantity) == (
            "SPY",
            "sell",
            Decimal(quantity),
        )
        assert intent.payload.asset_class == "equity"
        assert not of_type(out, StrategyFaulted)
    else:
        assert intents == []
        [fault] = of_type(out, StrategyFaulted)
        assert "only reduce" in fault.payload.error, fault.payload.error


class ProbeOfTrades(Probe):
    """The probe, shown trades too."""

    def on_trade(self, trade: Trade) -> None:
        self.seen.append(trade)


def spy_trade(price: str, at_ns: int) -> TradePrinted:
    payload = TradePayload(symbol="SPY", price=Decimal(price), size=Decimal(1), feed="polygon")
    return TradePrinted.create(payload, source="test/marketdata", clock=At(at_ns))


def spy_quote(at_ns: int) -> QuoteUpdated:
    return QuoteUpdated.create(
        QuotePayload(
            symbol="SPY",
            bid_price=Decimal(500),
            bid_size=Decimal(1),
            ask_price=Decimal(700),
            ask_size=Decimal(1),
            feed="polygon",
        ),
        source="test/marketdata",
        clock=At(at_ns),
    )


def test_an_options_only_strategy_s_shares_from_an_exercise_follow_the_underlying() -> None:
    """p trades only a SPY call (minute bars); exercised, it is given 200
    SPY at the strike, 600. SPY's prices mark them as they mark the
    risk-gate's positions: a trade at 603, a minute bar closing at 604,
    another strategy's fill at 606; not a second bar (p takes minutes), a
    quote, nor a late print stamped older. A print from before it held them
    (590) marks them from the settlement on, as it marks the gate's.
    p is shown none of them (it did not ask for SPY): its callbacks see its
    fills only. Live and when restored (a restart). Before, nothing marked
    the shares: ``ctx.pnl()`` showed no unrealized P&L on them whatever SPY
    did, while the gate and ``tradebus positions`` counted it."""
    call = "O:SPY261211C00600000"
    for restoring in (False, True):
        rt = InMemoryRuntime(ids=counter_ids())
        host = rt.add("p", ProbeOfTrades, symbols=(call,), bar_interval="1m")
        rt.add("q", Probe, symbols=("SPY",))
        assert host.underlyings == ("SPY",)
        q_fill = booked_fill(
            "SPY", "buy", 1, "606", strategy="q", flatten=uuid.uuid4(), fill_id="f-q",
            at_ns=5 * MINUTE_NS,
        )  # fmt: skip
        steps: list[tuple[Event, str | None]] = [
            (booked_fill(call, "buy", 2, "5", strategy="p", flatten=uuid.uuid4(), at_ns=1), None),
            (spy_trade("590", MINUTE_NS), None),  # not held yet: no position
            (settlement_fill(call, "sell", 2, "0", strategy="p", at_ns=2 * MINUTE_NS), None),
            # Opened at SPY's last price, as the gate marks them.
            (settlement_fill("SPY", "buy", 200, "600", strategy="p", at_ns=2 * MINUTE_NS), "590"),
            (spy_trade("603", 3 * MINUTE_NS), "603"),
            (bar("SPY", 650, 3 * MINUTE_NS, interval="1s"), "603"),  # not p's interval
            (spy_quote(3 * MINUTE_NS + 2 * 10**9), "603"),  # a quote marks nothing
            (bar("SPY", 604, 3 * MINUTE_NS), "604"),  # closes at 4 minutes
            (q_fill, "606"),  # another strategy's fill
            (spy_trade("580", 4 * MINUTE_NS + 1), "606"),  # late, stamped older
        ]
        if not restoring:
            rt.start()
        for event, mark in steps:
            if restoring:
                rt.restore(event)
            else:
                assert not of_type(rt.feed(event), StrategyFaulted)
            shares = rt.hosts["p"].ledger.position("SPY")
            if mark is None:
                assert shares.mark is None, event
                continue
            unrealized = (Decimal(mark) - 600) * 200
            assert (shares.mark, shares.unrealized_pnl) == (Decimal(mark), unrealized), event
            assert rt.hosts["p"].ledger.pnl() == PnL(Decimal(-1000), unrealized), event
        if not restoring:
            seen = probe_seen(rt, "p")
            assert [(f.symbol, f.settlement) for f in seen if isinstance(f, Fill)] == [
                (call, None),
                (call, "exercised"),
                ("SPY", "exercised"),
            ]
            assert len(seen) == 3, "p is shown none of SPY's market data"


def test_an_order_in_a_symbol_not_its_own_and_not_held_is_still_a_fault() -> None:
    rt = InMemoryRuntime(ids=counter_ids())
    rt.add("p", SellsWhatItGets, {"quantity": "1"}, symbols=("AAPL",))
    out = rt.run([booked_fill("SPY", "sell", 5, "600", strategy="p", flatten=uuid.uuid4())])
    # Short 5 SPY it does not trade: its fill is a sell, nothing is ordered.
    assert of_type(out, OrderIntentCreated) == []
    host = rt.hosts["p"]
    with pytest.raises(ValueError, match="not one of p's symbols"):
        host.emit_signal("MSFT", "x", "flat", "", None)


def test_the_router_marks_an_option_strategy_by_its_underlying_only_where_not_traded() -> None:
    """The router's symbols read to mark only: the roots of a strategy's
    contracts it does not trade, with the bar intervals of the strategies
    marked by them (what the runner subscribes to and the rebuild reads)."""
    rt = InMemoryRuntime()
    rt.add("opt", Probe, symbols=("O:SPY261211C00600000", "O:QQQ261211P00500000", "QQQ"))
    rt.add("min", Probe, symbols=("O:SPY261218P00590000",), bar_interval="1m")
    assert rt.hosts["opt"].underlyings == ("SPY",)
    assert rt.router.marked_symbols() == {"SPY": {None, "1m"}}
