"""The strategy SDK: in-memory runtime, books, routing, fault isolation."""

from __future__ import annotations

import itertools
import sys
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import pytest

from libs.contract.codec import order_id_for
from libs.contract.envelope import CLOCK_SKEW_NS, Event
from libs.contract.events import (
    FillReceived,
    MarkPayload,
    MarkUpdated,
    OrderAccepted,
    OrderCanceled,
    OrderCanceledPayload,
    OrderIntentCreated,
    OrderType,
    QuotePayload,
    QuoteUpdated,
    SignalGenerated,
    StrategyFaulted,
    TradePayload,
    TradePrinted,
)
from libs.contract.options import parse_option
from libs.strategy import (
    Bar,
    EventClock,
    Fill,
    InMemoryRuntime,
    OrderUpdate,
    Quote,
    Strategy,
    StrategyParams,
    Trade,
)
from libs.strategy.context import PnL
from libs.strategy.examples.sma_crossover import SmaCrossover
from libs.strategy.ledger import IntentBook, Ledger
from libs.strategy.testing import (
    MINUTE_NS,
    At,
    EchoStrategy,
    bar,
    bars,
    booked_fill,
    deny,
    fill_chain,
    market_intent,
    settlement_fill,
    signal,
)

SMA_PARAMS = {"fast_period": 1, "slow_period": 2, "quantity": 1}


def counter_ids() -> Callable[[], uuid.UUID]:
    n = itertools.count(1)
    return lambda: uuid.UUID(int=next(n))


T = TypeVar("T")


def of_type(events: list[Event], cls: type[T]) -> list[T]:
    return [e for e in events if isinstance(e, cls)]


class ProbeParams(StrategyParams):
    quantity: Decimal = Decimal(10)


class Probe(Strategy[ProbeParams]):
    """Buys on a bar closing at 100, records every callback."""

    def on_start(self) -> None:
        self.seen: list[object] = []

    def on_bar(self, bar: Bar) -> None:
        self.seen.append(bar)
        if bar.close == 100:
            signal = self.ctx.signal(bar.symbol, "probe", "long", reason="close is 100")
            self.ctx.order(bar.symbol, "buy", self.params.quantity, cause=signal)

    def on_quote(self, quote: Quote) -> None:
        self.seen.append(quote)

    def on_fill(self, fill: Fill) -> None:
        self.seen.append(fill)

    def on_order_update(self, update: OrderUpdate) -> None:
        self.seen.append(update)


def probe_seen(rt: InMemoryRuntime, name: str) -> list[object]:
    instance = rt.hosts[name].instance
    assert isinstance(instance, Probe)
    return instance.seen


def test_a_strategy_is_shown_the_bars_of_its_interval_only() -> None:
    rt = InMemoryRuntime()
    rt.add("minute", Probe, symbols=("AAPL",), bar_interval="1m")
    rt.add("second", Probe, symbols=("AAPL",), bar_interval="1s")
    rt.add("every", Probe, symbols=("AAPL",))
    second_bar = bar("AAPL", 100, 0, interval="1s")
    minute_bar = bar("AAPL", 101, 0)
    out = rt.run([second_bar, minute_bar])
    # Only "second" and "every" saw the 1-second bar that closed at 100.
    assert sorted(e.payload.strategy for e in of_type(out, SignalGenerated)) == [
        "every",
        "second",
    ]
    assert probe_seen(rt, "minute") == [minute_bar.payload]
    assert probe_seen(rt, "second") == [second_bar.payload]
    assert probe_seen(rt, "every") == [second_bar.payload, minute_bar.payload]


def test_another_strategy_s_fill_marks_a_position_without_calling_the_strategy() -> None:
    """A fill's price marks its symbol for every strategy trading it, as the
    risk-gate and ``tradebus positions`` mark every holder at it; the other
    strategies are not called with it, and a symbol they do not trade is not
    marked. Also after a restart from the store (``restore``)."""
    ids = counter_ids()
    for restoring in (False, True):
        rt = InMemoryRuntime(ids=ids)
        rt.add("a", Probe, symbols=("AAPL",))
        rt.add("b", Probe, symbols=("AAPL",))
        rt.add("c", Probe, symbols=("MSFT",))
        out = rt.run([bar("AAPL", 100, 0)])
        intent_a, intent_b = of_type(out, OrderIntentCreated)
        chain_a = fill_chain(intent_a, 100, ids=ids, at_ns=MINUTE_NS)
        chain_b = fill_chain(intent_b, "100.5", ids=ids, at_ns=2 * MINUTE_NS)
        for event in [*chain_a, *chain_b]:
            if restoring:
                rt.restore(event)
            else:
                rt.feed(event)
        a = rt.hosts["a"].ledger.position("AAPL")
        assert (a.quantity, a.mark, a.mark_ns) == (Decimal(10), Decimal("100.5"), 2 * MINUTE_NS)
        assert a.unrealized_pnl == Decimal(5)  # marked at b's fill: 10 x 0.5
        assert [f.price for f in probe_seen(rt, "a") if isinstance(f, Fill)] == (
            [] if restoring else [Decimal(100)]
        )
        assert rt.hosts["c"].ledger.positions == {}


def test_a_price_stamped_a_day_ahead_does_not_hold_the_mark() -> None:
    """Marked by the newest price by market time, a position would keep the
    price of a print stamped a day ahead by a bad clock for a day; its time
    counts no later than 5 s after it was made (``Event.market_ns``), so the
    next real price replaces it."""
    ids = counter_ids()
    rt = InMemoryRuntime(ids=ids)
    rt.add("a", Probe, symbols=("AAPL",))
    [intent] = of_type(rt.run([bar("AAPL", 100, 0)]), OrderIntentCreated)
    for event in fill_chain(intent, 100, ids=ids, at_ns=MINUTE_NS):
        rt.feed(event)
    bad = bar("AAPL", 150, 2 * MINUTE_NS)
    bad = bad.model_copy(update={"ts_event": bad.ts_event + 86_400 * 10**9})
    rt.feed(bad)
    rt.feed(bar("AAPL", 90, 3 * MINUTE_NS))
    position = rt.hosts["a"].ledger.position("AAPL")
    assert position.mark == Decimal(90)
    assert position.unrealized_pnl == Decimal(-100)  # 10 x (90 - 100)


def test_a_backtest_s_clock_is_not_moved_a_day_ahead_by_one_bad_stamp() -> None:
    """The in-memory runtime's clock (a backtest's) reads the latest event's
    market time, ``Event.market_ns``: a bar stamped a day ahead of when it
    was made moved it a day ahead for the rest of the run, so every later
    intent carried tomorrow's time (and the risk-gate's stale-intent check,
    its age negative, never fired)."""
    rt = InMemoryRuntime()
    rt.add("p", Probe, symbols=("AAPL",))
    bad = bar("AAPL", 99, 0)
    bad = bad.model_copy(update={"ts_event": bad.ts_event + 86_400 * 10**9})
    rt.run([bad])
    assert rt.clock.now_ns() == bad.ts_init + CLOCK_SKEW_NS
    good = bar("AAPL", 100, MINUTE_NS)
    [_, intent] = rt.feed(good)
    assert intent.ts_event == good.ts_event  # the next bar's time, not tomorrow's


def test_warm_up_takes_the_bars_of_its_interval_only() -> None:
    rt = InMemoryRuntime()
    host = rt.add("sma", SmaCrossover, SMA_PARAMS, symbols=("AAPL",), bar_interval="1m")
    host.remember(
        [
            bar("AAPL", 10, 0),
            bar("AAPL", 50, MINUTE_NS, interval="1s"),
            bar("AAPL", 11, MINUTE_NS),
        ]
    )
    assert [b.payload.close for b in host.recent_bars()] == [Decimal(10), Decimal(11)]


def test_intent_is_caused_by_its_signal_and_stamped_with_market_time() -> None:
    rt = InMemoryRuntime()
    rt.add("p", Probe, symbols=("AAPL",), account="acct-a")
    b = bar("AAPL", 100, 1_700_000_000_000_000_000)
    out = rt.run([b])
    signal, intent = out
    assert isinstance(signal, SignalGenerated)
    assert isinstance(intent, OrderIntentCreated)
    assert signal.correlation_id == signal.id
    assert signal.causation_id is None
    assert intent.causation_id == signal.id
    assert intent.correlation_id == signal.id
    assert intent.payload.account == "acct-a"
    assert intent.payload.strategy == "p"
    assert intent.payload.quantity == Decimal(10)
    assert signal.ts_event == intent.ts_event == b.ts_event


def test_an_intent_carries_the_asset_class_its_symbol_names() -> None:
    """The risk-gate denies an intent whose asset class is not its symbol's
    (asset_class): the SDK sets it, so an options strategy need not."""
    option = "O:SPY241220P00720000"
    rt = InMemoryRuntime()
    rt.add("p", Probe, symbols=("AAPL", option))
    out = rt.run([bar("AAPL", 100, 0), bar(option, 100, MINUTE_NS)])
    intents = of_type(out, OrderIntentCreated)
    assert [(i.payload.symbol, i.payload.asset_class) for i in intents] == [
        ("AAPL", "equity"),
        (option, "option"),
    ]


def test_runs_are_deterministic_with_derived_or_injected_ids() -> None:
    data = bars("AAPL", [99, 100, 101, 100])

    def run(ids: Callable[[], uuid.UUID] | None) -> list[dict[str, object]]:
        rt = InMemoryRuntime(ids=ids)
        rt.add("p", Probe, symbols=("AAPL",))
        return [e.model_dump() for e in rt.run(data)]

    derived = run(None)
    assert len(derived) == 4
    assert derived == run(None)
    injected = run(counter_ids())
    assert injected == run(counter_ids())
    assert injected[0]["id"] == uuid.UUID(int=1)


def test_a_raising_strategy_is_stopped_and_its_partial_emissions_dropped() -> None:
    rt = InMemoryRuntime()
    rt.add("echo", EchoStrategy, {"fail_on_close": ["13"]}, symbols=("MSFT",))
    rt.add("p", Probe, symbols=("MSFT",))
    first = rt.run([bar("MSFT", 12, 0)])
    assert [type(e).__name__ for e in first] == ["SignalGenerated", "OrderIntentCreated"]

    faulted = rt.feed(bar("MSFT", 13, 60_000_000_000))
    assert len(faulted) == 1  # echo's signal and intent on the raising bar are dropped
    (fault,) = faulted
    assert isinstance(fault, StrategyFaulted)
    assert fault.payload.strategy == "echo"
    assert fault.payload.action == "stopped"
    assert "told to fail on close 13" in fault.payload.error
    assert fault.causation_id == bar("MSFT", 13, 60_000_000_000).id
    assert rt.hosts["echo"].state == "stopped"

    # The other strategy on the same symbol saw every bar and keeps trading.
    after = rt.feed(bar("MSFT", 100, 120_000_000_000))
    assert [e.payload.strategy for e in of_type(after, SignalGenerated)] == ["p"]
    assert len(probe_seen(rt, "p")) == 3


class Quitter(Strategy[ProbeParams]):
    """Leaves the way a script would: sys.exit on a bar closing at 13."""

    def on_bar(self, bar: Bar) -> None:
        signal = self.ctx.signal(bar.symbol, "quit", "long", reason="about to quit")
        self.ctx.order(bar.symbol, "buy", self.params.quantity, cause=signal)
        if bar.close == 13:
            sys.exit("quitter: done for today")


def test_a_strategy_calling_sys_exit_is_a_fault_not_the_end_of_the_others() -> None:
    # SystemExit is no Exception: unisolated, it left the host, ended the
    # strategy's task and with it the runner's process, every strategy in it.
    rt = InMemoryRuntime()
    rt.add("quit", Quitter, symbols=("MSFT",))
    rt.add("p", Probe, symbols=("MSFT",))
    rt.start()
    out = rt.feed(bar("MSFT", 13, 0))
    (fault,) = out
    assert isinstance(fault, StrategyFaulted)
    assert fault.payload.strategy == "quit"
    assert fault.payload.action == "stopped"
    assert fault.payload.error == "SystemExit: quitter: done for today"
    assert rt.hosts["quit"].state == "stopped"
    after = rt.feed(bar("MSFT", 100, 60_000_000_000))
    assert [e.payload.strategy for e in of_type(after, SignalGenerated)] == ["p"]


def test_restart_policy_restarts_up_to_max_then_stops() -> None:
    rt = InMemoryRuntime()
    host = rt.add(
        "echo",
        EchoStrategy,
        {"fail_on_close": ["13"]},
        symbols=("MSFT",),
        restart="always",
        max_restarts=1,
    )
    rt.start()
    first_instance = host.instance
    out1 = rt.feed(bar("MSFT", 13, 0))
    assert [f.payload.action for f in of_type(out1, StrategyFaulted)] == ["restarted"]
    assert host.running
    assert host.instance is not first_instance  # a fresh instance
    assert len(of_type(rt.feed(bar("MSFT", 14, 60_000_000_000)), SignalGenerated)) == 1
    out2 = rt.feed(bar("MSFT", 13, 120_000_000_000))
    assert [f.payload.action for f in of_type(out2, StrategyFaulted)] == ["stopped"]
    assert host.state == "stopped"
    assert host.restarts == 1
    assert host.faults == 2
    assert rt.feed(bar("MSFT", 14, 180_000_000_000)) == []


def test_a_strategy_failing_on_start_is_restarted_then_stopped() -> None:
    rt = InMemoryRuntime()
    host = rt.add(
        "echo",
        EchoStrategy,
        {"fail_on_start": True},
        symbols=("MSFT",),
        restart="always",
        max_restarts=2,
    )
    out = rt.start()
    assert [f.payload.action for f in of_type(out, StrategyFaulted)] == [
        "restarted",
        "restarted",
        "stopped",
    ]
    assert host.state == "stopped"


def test_a_start_that_always_fails_uses_up_its_restarts_and_harms_no_other() -> None:
    # max_restarts may be as high as 1000; each restart of a strategy whose
    # on_start keeps raising must not nest the next one (the stack would
    # overflow and the RecursionError escape the host: the runner's task
    # group would then stop every strategy).
    rt = InMemoryRuntime()
    host = rt.add(
        "echo",
        EchoStrategy,
        {"fail_on_start": True},
        symbols=("MSFT",),
        restart="always",
        max_restarts=1000,
    )
    rt.add("p", Probe, symbols=("MSFT",))
    out = rt.start()
    actions = [f.payload.action for f in of_type(out, StrategyFaulted)]
    assert actions == ["restarted"] * 1000 + ["stopped"]
    assert len({f.id for f in of_type(out, StrategyFaulted)}) == 1001
    assert host.state == "stopped"
    assert (host.restarts, host.faults) == (1000, 1001)
    after = rt.feed(bar("MSFT", 100, 0))
    assert [e.payload.strategy for e in of_type(after, SignalGenerated)] == ["p"]


def test_on_stop_emissions_are_returned_and_a_raising_on_stop_is_not_restarted() -> None:
    class Flattener(Strategy[ProbeParams]):
        def on_stop(self) -> None:
            signal = self.ctx.signal("AAPL", "shutdown", "flat", reason="stopping")
            self.ctx.order("AAPL", "sell", Decimal(1), cause=signal)

    class BadStop(Strategy[ProbeParams]):
        def on_stop(self) -> None:
            raise ValueError("cannot stop")

    rt = InMemoryRuntime()
    rt.add("flat", Flattener, symbols=("AAPL",))
    rt.add("bad", BadStop, symbols=("AAPL",), restart="always", max_restarts=5)
    rt.start()
    out = rt.stop()
    assert [type(e).__name__ for e in out] == [
        "SignalGenerated",
        "OrderIntentCreated",
        "StrategyFaulted",
    ]
    fault = out[2]
    assert isinstance(fault, StrategyFaulted)
    assert fault.payload.action == "stopped"
    assert rt.hosts["bad"].state == rt.hosts["flat"].state == "stopped"
    assert rt.feed(bar("AAPL", 100, 0)) == []


def test_ordering_with_a_foreign_or_missing_signal_is_a_fault() -> None:
    class Rogue(Strategy[ProbeParams]):
        def on_bar(self, bar: Bar) -> None:
            foreign = SignalGenerated.model_validate(
                {
                    **self.ctx.signal(bar.symbol, "x", "long").model_dump(),
                    "payload": {
                        "strategy": "someone-else",
                        "symbol": bar.symbol,
                        "name": "x",
                        "direction": "long",
                    },
                }
            )
            self.ctx.order(bar.symbol, "buy", Decimal(1), cause=foreign)

    rt = InMemoryRuntime()
    rt.add("rogue", Rogue, symbols=("AAPL",))
    (fault,) = rt.run([bar("AAPL", 1, 0)])
    assert isinstance(fault, StrategyFaulted)
    assert "cause must be a signal this strategy emitted" in fault.payload.error


def test_trading_a_symbol_it_is_not_configured_for_is_a_fault() -> None:
    class Wanderer(Strategy[ProbeParams]):
        def on_bar(self, bar: Bar) -> None:
            self.ctx.signal("TSLA", "x", "long")

    rt = InMemoryRuntime()
    rt.add("w", Wanderer, symbols=("AAPL",))
    (fault,) = rt.run([bar("AAPL", 1, 0)])
    assert isinstance(fault, StrategyFaulted)
    assert "'TSLA' is not one of w's symbols" in fault.payload.error


@pytest.mark.parametrize(
    ("order_type", "limit", "stop", "unused"),
    [
        ("market", None, Decimal(95), "stop_price"),
        ("market", Decimal(99), None, "limit_price"),
        ("limit", Decimal(99), Decimal(95), "stop_price"),
        ("stop", Decimal(94), Decimal(95), "limit_price"),
    ],
)
def test_a_price_its_order_type_does_not_use_is_a_fault(
    order_type: OrderType, limit: Decimal | None, stop: Decimal | None, unused: str
) -> None:
    """A stop-loss written without ``order_type="stop"`` is a market order:
    the risk-gate and the broker go by the type and drop the stop price, so
    the sell meant for 95 was sold at once at the market. The emit refuses it."""

    class Protective(Strategy[ProbeParams]):
        def on_bar(self, bar: Bar) -> None:
            signal = self.ctx.signal(bar.symbol, "protect", "flat", reason="stop-loss")
            self.ctx.order(
                bar.symbol,
                "sell",
                Decimal(1),
                cause=signal,
                order_type=order_type,
                limit_price=limit,
                stop_price=stop,
            )

    rt = InMemoryRuntime()
    rt.add("p", Protective, symbols=("AAPL",))
    (fault,) = rt.run([bar("AAPL", 100, 0)])
    assert isinstance(fault, StrategyFaulted)
    assert f"a {order_type} order takes no {unused}" in fault.payload.error


def test_part_of_an_option_contract_is_a_fault() -> None:
    """Options trade in whole contracts: the risk-gate passed 0.5 of one and
    the broker always rejected it, the strategy learning so only from an
    ``OrderUpdate`` a round trip later. The emit refuses it; 2 contracts, and
    a fractional quantity of shares, pass."""
    option = "O:SPY241220P00720000"

    class Sizer(Strategy[ProbeParams]):
        def on_bar(self, bar: Bar) -> None:
            signal = self.ctx.signal(bar.symbol, "size", "long")
            self.ctx.order(bar.symbol, "buy", self.params.quantity, cause=signal)

    rt = InMemoryRuntime()
    rt.add("half", Sizer, {"quantity": "0.5"}, symbols=(option,))
    rt.add("two", Sizer, {"quantity": "2.0"}, symbols=(option,))
    rt.add("shares", Sizer, {"quantity": "0.5"}, symbols=("AAPL",))
    out = rt.run([bar(option, 5, 0), bar("AAPL", 100, MINUTE_NS)])
    (fault,) = of_type(out, StrategyFaulted)
    assert fault.payload.strategy == "half"
    assert f"an option's quantity is a whole number of contracts, not 0.5 of {option}" in (
        fault.payload.error
    )
    assert [(i.payload.strategy, i.payload.quantity) for i in of_type(out, OrderIntentCreated)] == [
        ("two", Decimal(2)),
        ("shares", Decimal("0.5")),
    ]


def test_an_order_in_an_expired_contract_is_a_fault_the_context_can_foresee() -> None:
    """No venue takes an order in a contract past the close of its expiry day,
    a close included: the broker refuses it, and a strategy that answers the
    refusal by ordering again loops for ever. The emit refuses it, its other
    emissions of the callback dropped; ``ctx.expired`` tells it beforehand.
    Up to the close (16:00 New York) the contract trades; an equity never
    expires."""
    option = "O:SPY241220P00720000"
    close = parse_option(option).expires_at_ns
    seen: list[tuple[str, bool]] = []

    class Closer(Strategy[ProbeParams]):
        def on_bar(self, bar: Bar) -> None:
            seen.append((bar.symbol, self.ctx.expired(bar.symbol)))
            signal = self.ctx.signal(bar.symbol, "close", "flat")
            self.ctx.order(bar.symbol, "sell", Decimal(1), cause=signal)

    rt = InMemoryRuntime()
    rt.add("closer", Closer, symbols=("SPY", option))
    # Bars ending a minute before the close, at it, and for the equity after it.
    before = rt.run([bar(option, 5, close - 2 * MINUTE_NS)])
    at = rt.run([bar(option, 5, close - MINUTE_NS), bar("SPY", 500, close)])
    assert seen == [(option, False), (option, True)]
    assert [e.type for e in before] == ["SignalGenerated", "OrderIntentCreated"]
    (fault,) = at  # stopped: the equity's bar is not shown
    assert isinstance(fault, StrategyFaulted)
    assert fault.payload.error == (
        f"StrategyUsageError: {option} expired at the close of 2024-12-20 (16:00 New York): "
        "no venue takes an order in it, a closing one included (the broker settles the "
        "position); ask ctx.expired(symbol) before ordering it"
    )
    assert not rt.hosts["closer"].expired("SPY")


class Trader(Strategy[ProbeParams]):
    """Orders ``quantity`` (negative: sells) of a bar's symbol at each bar."""

    def on_bar(self, bar: Bar) -> None:
        signal = self.ctx.signal(bar.symbol, "trade", "flat")
        quantity = self.params.quantity
        self.ctx.order(bar.symbol, "buy" if quantity > 0 else "sell", abs(quantity), cause=signal)


@pytest.mark.parametrize(
    ("symbol", "why"),
    [
        ("O:SPX261218C05000000", "SPX options are cash-settled"),
        ("O:SPY1261218P00500000", "an adjusted contract (its root SPY1 ends in a digit)"),
    ],
)
def test_an_order_opening_a_contract_tradebus_cannot_settle_is_a_fault(
    symbol: str, why: str
) -> None:
    """Every settlement books an exercise or assignment as 100 shares of the
    root at the strike: not what a cash-settled index option or an adjusted
    contract delivers. strategies.yaml refuses the symbol; a strategy hosted
    without it (a backtest's) is refused at the emit, as the risk-gate would
    deny it (contract_unsupported). One it holds already it may close, no
    further than flat."""
    rt = InMemoryRuntime(ids=counter_ids())
    rt.add("opener", Trader, {"quantity": "1"}, symbols=(symbol,))
    rt.add("closer", Trader, {"quantity": "-2"}, symbols=(symbol,))
    rt.add("flipper", Trader, {"quantity": "-3"}, symbols=(symbol,))
    for name in ("closer", "flipper"):
        flatten = uuid.uuid4()
        rt.restore(booked_fill(symbol, "buy", 2, "5", strategy=name, flatten=flatten))
    out = rt.run([bar(symbol, 5, 0)])
    faults = {f.payload.strategy: f.payload.error for f in of_type(out, StrategyFaulted)}
    assert sorted(faults) == ["flipper", "opener"]
    refused = f"StrategyUsageError: {symbol} is not supported: {why}"
    assert faults["opener"].startswith(refused), faults["opener"]
    assert faults["opener"].endswith("at the strike"), faults["opener"]
    assert faults["flipper"].startswith(refused), faults["flipper"]
    assert faults["flipper"].endswith(
        ": an order in it may only reduce the position held (2, 0 pending), not sell 3"
    )
    intents = of_type(out, OrderIntentCreated)
    assert [(i.payload.strategy, i.payload.side, i.payload.quantity) for i in intents] == [
        ("closer", "sell", Decimal(2))
    ]


@pytest.mark.parametrize(("name", "reason"), [("n" * 201, ""), ("x", "r" * 300_000)])
def test_a_signal_text_too_long_to_record_is_a_fault(name: str, reason: str) -> None:
    """Encoded past the services' 256 KiB, a signal would be dead-lettered by
    every consumer and its chain would lose its root in the store."""

    class Chatty(Strategy[ProbeParams]):
        def on_bar(self, bar: Bar) -> None:
            self.ctx.signal("AAPL", name, "long", reason=reason)

    rt = InMemoryRuntime()
    rt.add("c", Chatty, symbols=("AAPL",))
    (fault,) = rt.run([bar("AAPL", 1, 0)])
    assert isinstance(fault, StrategyFaulted)
    field, most = ("name", 200) if len(name) > 200 else ("reason", 4000)
    assert f"a signal's {field} may have at most {most} characters" in fault.payload.error

    # At the limits it passes.
    class Terse(Strategy[ProbeParams]):
        def on_bar(self, bar: Bar) -> None:
            self.ctx.signal("AAPL", "n" * 200, "long", reason="r" * 4000)

    rt = InMemoryRuntime()
    rt.add("t", Terse, symbols=("AAPL",))
    assert of_type(rt.run([bar("AAPL", 1, 0)]), SignalGenerated)


def two_probes_and_an_intent_of_p() -> tuple[InMemoryRuntime, OrderIntentCreated]:
    """Probes ``p`` and ``other`` on AAPL, after a bar closing at 100: ``p``'s buy intent."""
    rt = InMemoryRuntime()
    rt.add("p", Probe, symbols=("AAPL",))
    rt.add("other", Probe, symbols=("AAPL",))
    out = rt.run([bar("AAPL", 100, 0)])
    return rt, next(i for i in of_type(out, OrderIntentCreated) if i.payload.strategy == "p")


def test_fills_build_positions_and_pnl_and_reach_only_the_owner() -> None:
    ids = counter_ids()
    rt, intent = two_probes_and_an_intent_of_p()
    assert rt.hosts["p"].pending("AAPL") == Decimal(10)

    chain = fill_chain(intent, "100.50", ids=ids, commission=Decimal("1"))
    for event in chain:
        rt.feed(event)
    pos = rt.hosts["p"].ledger.position("AAPL")
    assert pos.quantity == Decimal(10)
    assert pos.average_price == Decimal("100.50")
    assert rt.hosts["p"].pending("AAPL") == 0
    assert rt.hosts["other"].ledger.position("AAPL").is_flat
    seen = probe_seen(rt, "p")
    assert [type(x).__name__ for x in seen[1:]] == ["OrderUpdate", "FillPayload"]
    assert isinstance(seen[1], OrderUpdate)
    assert seen[1].kind == "accepted"
    assert seen[1].intent_id == intent.id

    rt.feed(bar("AAPL", 103, 60_000_000_000))  # mark
    pnl = rt.hosts["p"].ledger.pnl()
    assert pnl.realized == Decimal(-1)  # commission
    assert pnl.unrealized == Decimal("25.00")  # (103 - 100.50) x 10
    # The same fill again (redelivery) changes nothing.
    fill = of_type(chain, FillReceived)[0]
    assert rt.feed(fill) == []
    assert rt.hosts["p"].ledger.position("AAPL").quantity == Decimal(10)


def quote(symbol: str, bid: str, ask: str, *, at_ns: int, size: int = 100) -> QuoteUpdated:
    return QuoteUpdated.create(
        QuotePayload(
            symbol=symbol,
            bid_price=Decimal(bid),
            bid_size=Decimal(size),
            ask_price=Decimal(ask),
            ask_size=Decimal(size),
            feed="synthetic",
        ),
        source="test/marketdata",
        clock=At(at_ns),
    )


def option_mark(symbol: str, price: str, *, at_ns: int) -> MarkUpdated:
    """A mark marketdata made from a quote around ``price``."""
    p = Decimal(price)
    return MarkUpdated.create(
        MarkPayload(symbol=symbol, price=p, bid_price=p - 1, ask_price=p + 1, feed="synthetic"),
        source="test/marketdata",
        clock=At(at_ns),
    )


@pytest.mark.parametrize("symbol", ["AAPL", "O:SPY241220C00100000"])
@pytest.mark.parametrize("restoring", [False, True])
def test_the_books_are_marked_by_marketdata_s_marks_not_by_quotes(
    symbol: str, restoring: bool
) -> None:
    """A position is marked as the risk-gate marks it: by trades, bars'
    closes, fills and the marks marketdata makes of option quotes
    (``MarkUpdated``), the newest by market time; not at a quote's midpoint.
    The books took every two-sided quote's midpoint, an equity's too, and
    never read a mark: the strategy's unrealized P&L differed from the one
    the gate's daily-loss breaker trips on after any equity quote and after
    an option quote marketdata made no mark of (a wide spread). The strategy
    is still shown its quotes; a mark is not shown to it. The same live and
    rebuilt from the store (``restore``)."""
    multiplier = 100 if symbol.startswith("O:") else 1
    rt = InMemoryRuntime()
    rt.add("p", Probe, symbols=(symbol,))
    [intent] = of_type(rt.run([bar(symbol, 100, 0)]), OrderIntentCreated)
    feed = rt.restore if restoring else rt.feed
    for event in fill_chain(intent, "100.50", ids=counter_ids(), at_ns=MINUTE_NS):
        feed(event)  # the fill marks the position at 100.50

    def unrealized() -> Decimal:
        return rt.hosts["p"].ledger.pnl().unrealized / multiplier

    seen = len(probe_seen(rt, "p"))
    wide = quote(symbol, "90", "130", at_ns=200 * 10**9)  # marketdata makes no mark of it
    feed(wide)
    assert unrealized() == 0
    feed(option_mark(symbol, "103", at_ns=300 * 10**9))
    assert unrealized() == Decimal("25.00")  # (103 - 100.50) x 10
    feed(option_mark(symbol, "90", at_ns=250 * 10**9))  # older, late: no mark
    assert unrealized() == Decimal("25.00")
    later = bar(symbol, "101.50", 5 * MINUTE_NS)  # newer than the mark
    feed(later)
    assert unrealized() == Decimal("10.00")
    assert probe_seen(rt, "p")[seen:] == ([] if restoring else [wide.payload, later.payload])


def test_broker_events_reach_the_strategy_without_the_accepted_decision() -> None:
    # The runner reads only denials: an intent's order id is known from the
    # intent (order_id_for), so its ack and fill find their way without the
    # accepted decision, even under a correlation id the runner never saw.
    ids = counter_ids()
    rt, intent = two_probes_and_an_intent_of_p()
    _decision, _command, ack, fill = fill_chain(intent, "100.50", ids=ids)
    assert fill.payload.order_id == order_id_for(intent.id)
    foreign = uuid.uuid4()
    for event in (ack, fill):
        rt.feed(event.model_copy(update={"correlation_id": foreign}))
    assert rt.hosts["p"].ledger.position("AAPL").quantity == Decimal(10)
    assert rt.hosts["p"].pending("AAPL") == 0
    assert rt.hosts["other"].ledger.position("AAPL").is_flat
    update = next(x for x in probe_seen(rt, "p") if isinstance(x, OrderUpdate))
    assert (update.kind, update.intent_id, update.order_id) == (
        "accepted",
        intent.id,
        order_id_for(intent.id),
    )


def test_a_flatten_fill_booked_to_a_strategy_reaches_its_books() -> None:
    # A FlattenAccount's closing order was placed by the broker, not by any
    # strategy: its fill has an order id and a chain no strategy knows. The
    # gateway books it to the strategy whose position it closed
    # (FillPayload.strategy); that strategy's books, and only its, must see it.
    ids = counter_ids()
    rt, intent = two_probes_and_an_intent_of_p()
    for event in fill_chain(intent, "100.50", ids=ids):
        rt.feed(event)
    assert rt.hosts["p"].ledger.position("AAPL").quantity == Decimal(10)
    flatten = uuid.uuid4()

    def closing_fill(strategy: str | None, fill_id: str) -> FillReceived:
        return booked_fill(
            "AAPL", "sell", 10, "99.50", strategy=strategy, flatten=flatten, fill_id=fill_id
        )

    # Booked to nobody, or to a strategy this runtime does not host: no one.
    rt.feed(closing_fill(None, "f-nobody"))
    rt.feed(closing_fill("elsewhere", "f-elsewhere"))
    assert rt.hosts["p"].ledger.position("AAPL").quantity == Decimal(10)
    # Booked to p: p is flat, the loss realized, and p is told.
    rt.feed(closing_fill("p", "f-p"))
    pos = rt.hosts["p"].ledger.position("AAPL")
    assert pos.is_flat
    assert rt.hosts["p"].ledger.pnl().realized == Decimal("-10.00")  # (99.50 - 100.50) x 10
    assert isinstance(probe_seen(rt, "p")[-1], Fill)
    assert rt.hosts["other"].ledger.position("AAPL").is_flat
    assert not any(isinstance(x, Fill) for x in probe_seen(rt, "other"))


@pytest.mark.parametrize("restoring", [False, True])
def test_a_reaction_in_another_strategy_s_chain_reaches_the_strategy_it_books_or_cancels(
    restoring: bool,
) -> None:
    """The risk-gate's reactions (FlattenAccount, CancelOrder) carry the chain
    of the event that tripped them: a fill of ``other``'s order that takes the
    day past the loss limit puts the flatten, its closing orders' fills and
    the cancels of every working order in ``other``'s chain. A closing fill
    the gateway booked to ``p``, and the cancel of ``p``'s working order,
    belong to ``p`` all the same (by its order id, by the strategy the fill
    names). Routed by the chain, ``other`` was booked ``p``'s closing sell
    (short 10 AAPL it never sold) and told of a cancel not its own, while
    ``p`` still held the 10 the risk-gate had flattened and waited for ever
    on its canceled intent. The same rebuilt from the store (``restore``)."""
    ids = counter_ids()
    rt = InMemoryRuntime()
    rt.add("p", Probe, symbols=("AAPL",))
    rt.add("other", Probe, symbols=("AAPL",))
    out = rt.run([bar("AAPL", 100, 0)])
    mine, theirs = (
        next(i for i in of_type(out, OrderIntentCreated) if i.payload.strategy == name)
        for name in ("p", "other")
    )
    # p's second intent stays working until the flatten cancels it.
    working = of_type(rt.feed(bar("AAPL", 100, MINUTE_NS)), OrderIntentCreated)
    [working_p] = [i for i in working if i.payload.strategy == "p"]
    feed = rt.restore if restoring else rt.feed
    for event in (*fill_chain(mine, "100", ids=ids), *fill_chain(theirs, "100", ids=ids)):
        feed(event)
    chain = theirs.correlation_id  # the tripping fill's, so the flatten's
    closing = booked_fill("AAPL", "sell", 10, "90", strategy="p", flatten=chain, fill_id="c-p")
    canceled = OrderCanceled.create(
        OrderCanceledPayload(order_id=order_id_for(working_p.id), account="paper"),
        source="test/broker",
        clock=At(2 * MINUTE_NS),
    ).model_copy(update={"correlation_id": chain, "causation_id": uuid.uuid4()})
    seen_other = len(probe_seen(rt, "other"))
    feed(closing)
    feed(canceled)

    assert rt.hosts["p"].ledger.position("AAPL").is_flat
    assert rt.hosts["p"].ledger.pnl().realized == Decimal(-100)  # (90 - 100) x 10
    assert rt.hosts["p"].pending("AAPL") == 0
    assert rt.hosts["p"].intents.get(working_p.id) is None
    assert rt.hosts["other"].ledger.position("AAPL").quantity == Decimal(10)
    assert probe_seen(rt, "other")[seen_other:] == []
    if not restoring:
        updates = [x for x in probe_seen(rt, "p") if isinstance(x, OrderUpdate)]
        assert (updates[-1].kind, updates[-1].intent_id) == ("canceled", working_p.id)


class Warmed(Probe):
    """A probe that keeps the bars it is shown through on_warmup."""

    def on_start(self) -> None:
        super().on_start()
        self.warmed: list[Bar] = []

    def on_warmup(self, bar: Bar) -> None:
        self.warmed.append(bar)


class EmitsInWarmup(Probe):
    def on_warmup(self, bar: Bar) -> None:
        signal = self.ctx.signal(bar.symbol, "stale", "long", reason="a past bar")
        self.ctx.order(bar.symbol, "buy", Decimal(1), cause=signal)


def test_warm_up_shows_past_bars_without_books_or_emissions() -> None:
    rt = InMemoryRuntime()
    rt.add("w", Warmed, symbols=("AAPL",))
    rt.add("bad", EmitsInWarmup, symbols=("AAPL",), restart="never")
    rt.start()
    past = bar("AAPL", 100, 0)  # would make a Probe buy, were it live
    assert rt.hosts["w"].warm_up(past) == []
    assert rt.hosts["w"].warm_up(bar("MSFT", 50, 0)) == []  # not its symbol: not shown
    instance = rt.hosts["w"].instance
    assert isinstance(instance, Warmed)
    assert instance.warmed == [past.payload]
    assert instance.seen == []  # on_bar was not called
    assert rt.hosts["w"].ledger.position("AAPL").mark is None  # books untouched
    # Emitting from on_warmup is the strategy's fault; nothing it emitted leaves.
    out = rt.hosts["bad"].warm_up(past)
    assert [type(e) for e in out] == [StrategyFaulted]
    assert "on_warmup may not emit" in out[0].payload.error
    assert out[0].payload.action == "stopped"


class FlakyWarmed(Warmed):
    """Wants its last 2 bars per symbol; raises on a close of 13."""

    @classmethod
    def warmup_bars(cls, params: Any) -> int:
        return 2

    def on_bar(self, bar: Bar) -> None:
        super().on_bar(bar)
        if bar.close == 13:
            raise RuntimeError("flaky on 13")


def test_an_instance_restarted_after_a_fault_is_warmed_up_on_the_latest_bars() -> None:
    rt = InMemoryRuntime()
    rt.add("f", FlakyWarmed, symbols=("AAPL", "MSFT"), restart="always", max_restarts=1)
    data = [bar("AAPL", 10, 0), bar("MSFT", 20, 0), bar("AAPL", 11, 60_000_000_000)]
    data += [bar("AAPL", 12, 120_000_000_000), bar("AAPL", 13, 180_000_000_000)]
    out = rt.run(data)
    faults = of_type(out, StrategyFaulted)
    assert [f.payload.action for f in faults] == ["restarted"]
    fresh = rt.hosts["f"].instance
    assert isinstance(fresh, FlakyWarmed)
    # The two latest bars of each symbol, in the order they closed (the bar
    # it failed on included: it did close).
    assert [(b.symbol, int(b.close)) for b in fresh.warmed] == [
        ("MSFT", 20),
        ("AAPL", 12),
        ("AAPL", 13),
    ]
    assert fresh.seen == []  # on_bar not called for them again


class OrdersOnStartFailsAWarmup(Warmed):
    """Buys on each start (an entry at the open, say); its on_warmup raises
    on a close of 13."""

    def on_start(self) -> None:
        super().on_start()
        signal = self.ctx.signal("AAPL", "open", "long", reason="started")
        self.ctx.order("AAPL", "buy", Decimal(1), cause=signal)

    def on_warmup(self, bar: Bar) -> None:
        super().on_warmup(bar)
        if bar.close == 13:
            raise RuntimeError("flaky warm-up on 13")


def test_an_instance_restarted_after_a_fault_in_a_warm_up_may_emit_from_its_start() -> None:
    # A fault in on_warmup (the catch-up's bars) restarts the strategy; its
    # new on_start is a start, not a warm-up, and may emit as the first did.
    rt = InMemoryRuntime()
    rt.add("s", OrdersOnStartFailsAWarmup, symbols=("AAPL",), restart="always", max_restarts=3)
    host = rt.hosts["s"]
    assert [type(e) for e in host.start()] == [SignalGenerated, OrderIntentCreated]
    out = host.warm_up(bar("AAPL", 13, 0))
    assert [type(e) for e in out] == [StrategyFaulted, SignalGenerated, OrderIntentCreated]
    assert of_type(out, StrategyFaulted)[0].payload.error == "RuntimeError: flaky warm-up on 13"
    assert (host.running, host.restarts) == (True, 1)
    assert host.warm_up(bar("AAPL", 14, MINUTE_NS)) == []  # still refused from on_warmup itself


class OrdersOnStart(Strategy[ProbeParams]):
    """Buys at its start (an entry at the open, say), before any bar."""

    def on_start(self) -> None:
        signal = self.ctx.signal("AAPL", "open", "long", reason="started")
        self.ctx.order("AAPL", "buy", self.params.quantity, cause=signal)


def test_a_backtest_stamps_what_a_strategy_emits_from_its_start_at_the_first_event() -> None:
    """Live, what on_start emits is stamped with the wall clock at start-up,
    just before the first event; the in-memory runtime's clock read 0 until
    an event was fed, so a backtest's first signal and intent were stamped
    1970 (and a risk-gate fed them would find the intent fifty years stale).
    It now takes the first event's market time, or the start time the
    backtest gives its clock."""
    first = bar("AAPL", 99, 1_700_000_000_000_000_000)
    rt = InMemoryRuntime()
    rt.add("s", OrdersOnStart, symbols=("AAPL",))
    signal, intent = rt.run([first, bar("AAPL", 100, first.ts_event + MINUTE_NS)])
    assert signal.ts_event == intent.ts_event == first.market_ns
    # A start time given to the clock is the backtest's own: it stays.
    rt = InMemoryRuntime(clock=EventClock(first.ts_event - MINUTE_NS))
    rt.add("s", OrdersOnStart, symbols=("AAPL",))
    signal, intent = rt.run([first])
    assert signal.ts_event == intent.ts_event == first.ts_event - MINUTE_NS


def test_the_host_keeps_the_last_n_bars_of_each_symbol_in_order() -> None:
    history = [
        bar(s, c, i * 60_000_000_000)
        for i, (s, c) in enumerate(
            [("AAPL", 1), ("MSFT", 2), ("AAPL", 3), ("AAPL", 4), ("MSFT", 5), ("SPY", 6)]
        )
    ]
    rt = InMemoryRuntime()
    rt.add("two", FlakyWarmed, symbols=("AAPL", "MSFT"))  # warmup_bars 2
    rt.add("none", Warmed, symbols=("AAPL",))  # warmup_bars 0
    for host in rt.hosts.values():
        host.remember(history)
    picked = rt.hosts["two"].recent_bars()
    assert [(b.payload.symbol, int(b.payload.close)) for b in picked] == [
        ("MSFT", 2),
        ("AAPL", 3),
        ("AAPL", 4),
        ("MSFT", 5),
    ]
    assert rt.hosts["none"].recent_bars() == []


def test_a_decision_naming_another_order_id_remaps_the_intent() -> None:
    book = IntentBook()
    rt = InMemoryRuntime()
    rt.add("p", Probe, symbols=("AAPL",))
    intent = of_type(rt.run([bar("AAPL", 100, 0)]), OrderIntentCreated)[0]
    assert book.add(intent)
    derived, other = order_id_for(intent.id), uuid.uuid4()
    assert book.find(derived, uuid.uuid4()) is book.get(intent.id)
    book.accepted(intent.id, other)
    assert book.find(other, uuid.uuid4()) is book.get(intent.id)
    # The derived id no longer maps: an unknown order of a foreign signal finds nothing.
    assert book.find(derived, uuid.uuid4()) is None
    book.close(intent.id)
    assert book.find(other, uuid.uuid4()) is None


def test_a_denied_intent_is_no_longer_pending_and_the_strategy_is_told() -> None:
    ids = counter_ids()
    rt = InMemoryRuntime()
    rt.add("p", Probe, symbols=("AAPL",))
    intent = of_type(rt.run([bar("AAPL", 100, 0)]), OrderIntentCreated)[0]
    rt.feed(deny(intent, ids=ids))
    assert rt.hosts["p"].pending("AAPL") == 0
    update = probe_seen(rt, "p")[-1]
    assert isinstance(update, OrderUpdate)
    assert update.kind == "denied"
    assert update.intent_id == intent.id
    assert update.reason == "max_order_quantity"


def test_a_stopped_strategy_still_books_its_fills() -> None:
    ids = counter_ids()
    rt = InMemoryRuntime()
    rt.add("echo", EchoStrategy, {"fail_on_close": ["2"]}, symbols=("MSFT",))
    intent = of_type(rt.run([bar("MSFT", 1, 0)]), OrderIntentCreated)[0]
    rt.feed(bar("MSFT", 2, 60_000_000_000))
    assert rt.hosts["echo"].state == "stopped"
    for event in fill_chain(intent, 1, ids=ids):
        assert rt.feed(event) == []
    assert rt.hosts["echo"].ledger.position("MSFT").quantity == Decimal(1)


def test_restore_rebuilds_books_without_calling_the_strategy() -> None:
    ids = counter_ids()
    live = InMemoryRuntime()
    live.add("p", Probe, symbols=("AAPL",))
    history: list[Event] = list(live.run([bar("AAPL", 100, 0)]))
    intent = of_type(history, OrderIntentCreated)[0]
    history += fill_chain(intent, 100, ids=ids)

    fresh = InMemoryRuntime()
    host = fresh.add("p", Probe, symbols=("AAPL",))
    for event in history:
        fresh.restore(event)
    fresh.start()
    assert host.ledger.position("AAPL").quantity == Decimal(10)
    assert host.pending("AAPL") == 0
    assert probe_seen(fresh, "p") == []
    # The restored signal still routes its chain's later events back.
    later = OrderAccepted.model_validate(
        {**of_type(history, OrderAccepted)[0].model_dump(), "id": uuid.uuid4()}
    )
    assert fresh.router.route(later) == ("p",)


@pytest.mark.parametrize(
    ("fills", "quantity", "average", "realized"),
    [
        ([("buy", 10, 100), ("buy", 10, 110)], 20, 105, 0),
        ([("buy", 10, 100), ("sell", 4, 110)], 6, 100, 40),
        ([("buy", 10, 100), ("sell", 15, 110)], -5, 110, 100),
        ([("sell", 10, 50), ("buy", 10, 40)], 0, 0, 100),
    ],
)
def test_ledger_average_cost(
    fills: list[tuple[str, int, int]], quantity: int, average: int, realized: int
) -> None:
    ledger = ledger_of(fills, "X")
    pos = ledger.position("X")
    assert (pos.quantity, pos.average_price, pos.realized_pnl) == (
        Decimal(quantity),
        Decimal(average),
        Decimal(realized),
    )


def test_an_option_contract_counts_100_shares_of_its_price() -> None:
    """Option prices are per share; one contract is 100 shares. Counted per
    share, an options strategy's P&L read 100 times too small (the risk-gate
    counted it right, so its breaker and the strategy's books disagreed)."""
    option = "O:SPY241220P00720000"
    ledger = ledger_of([("buy", 2, 5), ("sell", 1, 6)], option)
    ledger.mark(option, Decimal("5.5"), 10)
    pos = ledger.position(option)
    assert (pos.quantity, pos.average_price) == (Decimal(1), Decimal(5))
    assert pos.realized_pnl == Decimal(100)  # (6 - 5) x 1 contract x 100
    assert pos.unrealized_pnl == Decimal(50)  # (5.5 - 5) x 1 x 100
    assert ledger.pnl() == PnL(Decimal(100), Decimal(50))


def test_a_position_is_marked_at_the_newest_price_by_market_time_fills_included() -> None:
    """As the risk-gate and ``tradebus positions`` mark it: a fill newer than
    the last print marks the position at its price (before, an illiquid
    contract's position kept an older print's price after the fill), and a
    price or fill arriving late with an older market time moves nothing."""
    ledger = ledger_of([("buy", 2, 5)], "AAPL")  # the fill at market time 1
    ledger.mark("AAPL", Decimal(7), 20)
    assert (ledger.position("AAPL").mark, ledger.position("AAPL").mark_ns) == (Decimal(7), 20)
    ledger.mark("AAPL", Decimal(6), 15)  # older: late
    assert ledger.position("AAPL").mark == Decimal(7)
    fill = Fill(
        order_id=uuid.UUID(int=99),
        account="a",
        broker_order_id="b99",
        fill_id="f99",
        symbol="AAPL",
        side="buy",
        quantity=Decimal(1),
        price=Decimal(8),
        cumulative_quantity=Decimal(1),
        leaves_quantity=Decimal(0),
        status="complete",
    )
    ledger.apply_fill(fill, 30)
    assert (ledger.position("AAPL").mark, ledger.position("AAPL").mark_ns) == (Decimal(8), 30)
    assert ledger.position("AAPL").unrealized_pnl == Decimal(8) * 3 - Decimal(18)
    late = fill.model_copy(update={"fill_id": "f100", "price": Decimal(4)})
    ledger.apply_fill(late, 25)  # a fill older than the mark: booked, not a mark
    assert (ledger.position("AAPL").quantity, ledger.position("AAPL").mark) == (
        Decimal(4),
        Decimal(8),
    )


def ledger_of(fills: list[tuple[str, int, int]], symbol: str) -> Ledger:
    ledger = Ledger()
    for i, (side, qty, price) in enumerate(fills):
        ledger.apply_fill(
            Fill(
                order_id=uuid.UUID(int=i + 1),
                account="a",
                broker_order_id=f"b{i}",
                fill_id=f"f{i}",
                symbol=symbol,
                side="buy" if side == "buy" else "sell",
                quantity=Decimal(qty),
                price=Decimal(price),
                cumulative_quantity=Decimal(qty),
                leaves_quantity=Decimal(0),
                status="complete",
            ),
            i + 1,
        )
    return ledger


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
    p's contract keeps its last price, p's new shares are unmarked until
    SPY prints. Also after a restart from the store (``restore``)."""
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
        assert shares.mark is None
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
    quote, a print from before it held them, nor a late print stamped older.
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
            (spy_trade("590", MINUTE_NS), None),  # not held yet: marks nothing
            (settlement_fill(call, "sell", 2, "0", strategy="p", at_ns=2 * MINUTE_NS), None),
            (settlement_fill("SPY", "buy", 200, "600", strategy="p", at_ns=2 * MINUTE_NS), None),
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
