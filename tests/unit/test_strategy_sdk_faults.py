"""The strategy SDK's fault isolation: a strategy that raises, exits or misuses
its context is stopped or restarted, and what it emitted meanwhile dropped;
the others trade on."""

from __future__ import annotations

import sys
import uuid
from decimal import Decimal

import pytest

from libs.contract.events import OrderIntentCreated, OrderType, SignalGenerated, StrategyFaulted
from libs.contract.options import parse_option
from libs.strategy import Bar, InMemoryRuntime, Strategy
from libs.strategy.testing import MINUTE_NS, EchoStrategy, bar, booked_fill
from tests.unit.strategy_probes import Probe, ProbeParams, counter_ids, of_type, probe_seen


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
