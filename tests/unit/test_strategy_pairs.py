"""Pairs trade on the z-score of a log-price spread."""

from __future__ import annotations

import logging
from decimal import Context, Decimal

import pytest

from libs.contract.envelope import Event
from libs.contract.events import BarClosed, OrderIntentCreated, SignalGenerated
from libs.contract.options import parse_option
from libs.strategy import InMemoryRuntime
from libs.strategy.examples.pairs import PairsParams, PairsTrade
from libs.strategy.indicators import rounded
from libs.strategy.testing import MINUTE_NS, bar, broker_reject, fill_chain
from tests.unit.pairs_inputs import T0, minute, next_id, runtime


def history() -> list[Event]:
    out: list[Event] = []
    for i, msft in enumerate(["100", "101", "100", "101", "100"]):
        out += minute(i, msft, "100")
    return out


def legs(out: list[Event]) -> list[tuple[str, str, Decimal]]:
    return [
        (e.payload.symbol, e.payload.side, e.payload.quantity)
        for e in out
        if isinstance(e, OrderIntentCreated)
    ]


def test_a_wide_spread_sells_it_with_both_legs_under_one_signal() -> None:
    rt = runtime()
    assert rt.run(history()) == []
    out = rt.run(minute(5, "105", "100"))
    signals = [e for e in out if isinstance(e, SignalGenerated)]
    assert len(signals) == 1
    (signal,) = signals
    assert signal.payload.symbol == "MSFT"
    assert signal.payload.direction == "short"
    assert signal.payload.strength is not None
    assert signal.payload.strength > 2
    assert legs(out) == [("MSFT", "sell", Decimal(95)), ("AAPL", "buy", Decimal(100))]
    assert all(e.causation_id == signal.id for e in out if isinstance(e, OrderIntentCreated))


def test_the_spread_reverting_closes_both_legs() -> None:
    rt = runtime()
    rt.run(history())
    out = rt.run(minute(5, "105", "100"))
    for intent in [e for e in out if isinstance(e, OrderIntentCreated)]:
        for event in fill_chain(
            intent, (intent.payload.symbol == "MSFT" and 105) or 100, ids=next_id
        ):
            rt.feed(event)
    host = rt.hosts["pair"]
    assert host.ledger.position("MSFT").quantity == -95
    assert host.ledger.position("AAPL").quantity == 100
    out = rt.run(minute(6, "100.5", "100"))
    assert legs(out) == [("MSFT", "buy", Decimal(95)), ("AAPL", "sell", Decimal(100))]
    (signal,) = [e for e in out if isinstance(e, SignalGenerated)]
    assert signal.payload.name == "pair_exit"


def test_a_negative_spread_buys_it_and_a_lone_leg_waits_for_its_partner() -> None:
    rt = runtime()
    rt.run(history())
    assert rt.run([bar("MSFT", "95", T0 + 5 * MINUTE_NS)]) == []
    out = rt.run([bar("AAPL", "100", T0 + 5 * MINUTE_NS)])
    assert legs(out) == [("MSFT", "buy", Decimal(105)), ("AAPL", "sell", Decimal(100))]


def test_warmed_up_on_past_minutes_it_trades_on_the_first_live_one() -> None:
    # The five past minutes, shown through on_warmup after a restart, fill
    # the spread history: the first live minute's wide spread trades at once.
    params = PairsParams(lookback=5, entry_z=Decimal(2), exit_z=Decimal("0.5"))
    assert PairsTrade.warmup_bars(params) == 5
    warm = runtime()
    warm.start()
    assert all(warm.hosts["pair"].warm_up(b) == [] for b in history() if isinstance(b, BarClosed))
    out = warm.run(minute(5, "105", "100"))
    assert legs(out) == [("MSFT", "sell", Decimal(95)), ("AAPL", "buy", Decimal(100))]
    cold = runtime()  # the same live minute without the history: nothing
    assert cold.run(minute(5, "105", "100")) == []


def test_a_ratio_held_exactly_is_no_signal_and_no_fault() -> None:
    # MSFT stays at twice AAPL for the whole lookback: the spread is ln 2 each
    # minute, up to the last digit of the logarithms. Its deviation is rounding
    # noise, and the z-score of the next real move over it once made the
    # strategy fault (InvalidOperation) and stop.
    rt = runtime()
    out: list[Event] = []
    for i, (msft, aapl) in enumerate([(200, 100), (400, 200), (600, 300), (202, 101), (800, 400)]):
        out += rt.run(minute(i, str(msft), str(aapl)))
    out += rt.run(minute(5, "830", "400"))  # a real move, over a flat history
    assert [e.type for e in out] == []
    assert rt.hosts["pair"].running


def test_rounding_takes_any_value() -> None:
    assert rounded(Decimal("1.23456789")) == Decimal("1.2346")
    assert rounded(Decimal("1e30")) == Decimal("1e30").quantize(
        Decimal("0.0001"), context=Context(prec=50)
    )


def test_an_option_leg_is_sized_by_the_contract_s_notional() -> None:
    # An option contract is 100 shares of its per-share price: at 5.00 one
    # contract is 500 of notional, so 10,000 a leg is 20 contracts. Sized by
    # the per-share price alone, the leg was 2,000 contracts: 100 times the
    # notional asked for (1,000,000).
    option = "O:AAPL261218C00100000"
    rt = InMemoryRuntime()
    rt.add(
        "pair",
        PairsTrade,
        {"lookback": 5, "entry_z": 2, "exit_z": "0.5", "leg_notional": 10_000},
        symbols=("MSFT", option),
    )
    for i, msft in enumerate(["100", "101", "100", "101", "100"]):
        rt.run([bar("MSFT", msft, T0 + i * MINUTE_NS), bar(option, "5", T0 + i * MINUTE_NS)])
    out = rt.run([bar("MSFT", "105", T0 + 5 * MINUTE_NS), bar(option, "5", T0 + 5 * MINUTE_NS)])
    assert legs(out) == [("MSFT", "sell", Decimal(95)), (option, "buy", Decimal(20))]


def test_a_leg_notional_below_a_leg_s_price_skips_the_entry_saying_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 50 buys no whole share at 100: each leg sized to 0, and the entry was
    # skipped without a word, so the strategy silently never traded.
    rt = InMemoryRuntime()
    rt.add(
        "pair",
        PairsTrade,
        {"lookback": 5, "entry_z": 2, "exit_z": "0.5", "leg_notional": 50},
        symbols=("MSFT", "AAPL"),
    )
    rt.run(history())
    with caplog.at_level(logging.WARNING, logger="libs.strategy.examples.pairs"):
        out = rt.run(minute(5, "105", "100")) + rt.run(minute(6, "110", "100"))
    assert legs(out) == []
    (said,) = [r.getMessage() for r in caplog.records]
    assert said == (
        "pairs pair: leg_notional 50 buys no whole MSFT at 105 (one is 105): "
        "no pair is entered while one unit of a leg costs more than leg_notional"
    )


@pytest.mark.parametrize("option_leg", [0, 1])
def test_no_pair_is_entered_with_an_option_leg_past_its_expiry_saying_so_once(
    option_leg: int, caplog: pytest.LogCaptureFixture
) -> None:
    # The contract expired at the close of 2023-11-10, days before these bars
    # (T0 is 2023-11-14). The entry sent both legs: the risk-gate denies the
    # option's (contract_expired) and takes the other, which is left unhedged.
    option = "O:AAPL231110C00100000"
    symbols = ("MSFT", option) if option_leg else (option, "MSFT")
    rt = InMemoryRuntime()
    rt.add(
        "pair",
        PairsTrade,
        {"lookback": 5, "entry_z": 2, "exit_z": "0.5", "leg_notional": 10_000},
        symbols=symbols,
    )

    def pair_minute(i: int, msft: str) -> list[Event]:
        return [bar(s, msft if s == "MSFT" else "5", T0 + i * MINUTE_NS) for s in symbols]

    for i, msft in enumerate(["100", "101", "100", "101", "100"]):
        rt.run(pair_minute(i, msft))
    with caplog.at_level(logging.WARNING, logger="libs.strategy.examples.pairs"):
        out = rt.run(pair_minute(5, "105")) + rt.run(pair_minute(6, "95"))
    assert [e.type for e in out] == []
    (said,) = [r.getMessage() for r in caplog.records]
    assert said == (
        f"pairs pair: {option} expired at the close of 2023-11-10 (16:00 New York): "
        "no pair is entered with it"
    )


def test_an_option_leg_that_expires_in_the_pair_is_left_and_never_ordered_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The pair is entered before the option leg's expiry (the close of
    # 2023-11-15) and is still held after it, with the spread back inside
    # exit_z. The exit sent both legs' closes: MSFT's filled, the option's was
    # refused by the broker (no venue takes an expired contract), and from
    # then on every minute inside exit_z sent the option's close again (5 in
    # these 12 minutes), for ever. Now the stock leg closes alone, once, and
    # the option position is left to the broker's settlement, said once.
    option = "O:AAPL231115C00100000"
    expiry_ns = parse_option(option).expires_at_ns
    rt = InMemoryRuntime()
    rt.add(
        "pair",
        PairsTrade,
        {"lookback": 5, "entry_z": 2, "exit_z": "0.5", "leg_notional": 10_000},
        symbols=("MSFT", option),
    )

    def pair_minute(start_ns: int, msft: str) -> list[Event]:
        return [bar("MSFT", msft, start_ns), bar(option, "5", start_ns)]

    def answer(out: list[Event], at_ns: int) -> None:
        """The market fills each order; the broker refuses one in the option
        once it has expired."""
        for intent in [e for e in out if isinstance(e, OrderIntentCreated)]:
            price = 100 if intent.payload.symbol == "MSFT" else 5
            if intent.payload.symbol == "MSFT" or at_ns < expiry_ns:
                chain = fill_chain(intent, price, ids=next_id, at_ns=at_ns)
            else:
                reason = f"asset {option} is not tradable: it expired"
                chain = broker_reject(intent, reason, ids=next_id, at_ns=at_ns)
            for event in chain:
                rt.feed(event)

    for i, msft in enumerate(["100", "101", "100", "101", "100"]):
        rt.run(pair_minute(T0 + i * MINUTE_NS, msft))
    entry = rt.run(pair_minute(T0 + 5 * MINUTE_NS, "105"))
    assert legs(entry) == [("MSFT", "sell", Decimal(95)), (option, "buy", Decimal(20))]
    answer(entry, T0 + 6 * MINUTE_NS)
    out: list[Event] = []
    with caplog.at_level(logging.WARNING, logger="libs.strategy.examples.pairs"):
        for k in range(12):
            start = expiry_ns + k * MINUTE_NS
            minute_out = rt.run(pair_minute(start, ["100", "100.5", "101"][k % 3]))
            answer(minute_out, start + MINUTE_NS)
            out += minute_out
    assert legs(out) == [("MSFT", "buy", Decimal(95))]
    host = rt.hosts["pair"]
    assert host.running
    assert host.ledger.position("MSFT").quantity == 0
    assert host.ledger.position(option).quantity == 20
    (said,) = [r.getMessage() for r in caplog.records]
    assert said == (
        f"pairs pair: {option} expired at the close of 2023-11-15 (16:00 New York) with 20 "
        "held: no venue takes an order in it, so its leg is left to the broker's settlement "
        "and the other leg trades alone"
    )


def test_the_other_leg_closes_on_its_first_bar_after_the_option_leg_expired() -> None:
    # As the market is: the expired contract prints no more bars, so no
    # minute pairs again. The exit waited for a paired minute inside exit_z,
    # which never came: MSFT was held short, unhedged, for good. Now MSFT's
    # first bar after the expiry closes it, once (the close pending, the
    # next bar sends nothing), and the option is left to settlement.
    option = "O:AAPL231115C00100000"
    expiry_ns = parse_option(option).expires_at_ns
    rt = InMemoryRuntime()
    rt.add(
        "pair",
        PairsTrade,
        {"lookback": 5, "entry_z": 2, "exit_z": "0.5", "leg_notional": 10_000},
        symbols=("MSFT", option),
    )
    for i, msft in enumerate(["100", "101", "100", "101", "100"]):
        rt.run([bar("MSFT", msft, T0 + i * MINUTE_NS), bar(option, "5", T0 + i * MINUTE_NS)])
    entry = rt.run([bar("MSFT", "105", T0 + 5 * MINUTE_NS), bar(option, "5", T0 + 5 * MINUTE_NS)])
    assert legs(entry) == [("MSFT", "sell", Decimal(95)), (option, "buy", Decimal(20))]
    for intent in [e for e in entry if isinstance(e, OrderIntentCreated)]:
        price = 105 if intent.payload.symbol == "MSFT" else 5
        for event in fill_chain(intent, price, ids=next_id, at_ns=T0 + 6 * MINUTE_NS):
            rt.feed(event)
    before = rt.run([bar("MSFT", "120", expiry_ns - 2 * MINUTE_NS)])  # unpaired, not expired
    assert legs(before) == []
    after = rt.run([bar("MSFT", "121", expiry_ns + k * MINUTE_NS) for k in range(3)])
    assert legs(after) == [("MSFT", "buy", Decimal(95))]
    (signal,) = [e for e in after if isinstance(e, SignalGenerated)]
    assert signal.payload.reason == f"{option} expired: MSFT trades alone, closed"
    assert rt.hosts["pair"].running
