"""Pairs trade: one leg of an entry or an exit fails, and no leg is left naked.

The strategy once ignored its order updates: a leg of an entry denied by
the risk-gate (or rejected, or canceled) left the other leg held alone until
the spread came back inside ``exit_z``, which might never happen. An exit
whose close of one leg failed sent it again only at a paired minute inside
``exit_z``.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from libs.contract.envelope import Event
from libs.contract.events import (
    OrderCanceled,
    OrderCanceledPayload,
    OrderIntentCreated,
    SignalGenerated,
)
from libs.strategy import InMemoryRuntime
from libs.strategy.testing import MINUTE_NS, At, bar, broker_reject, deny, fill_chain
from tests.unit.pairs_inputs import PRICES, T0, intents, legs, minute, next_id, position, runtime


def warmed() -> InMemoryRuntime:
    """Five minutes of a spread that wanders little: the next wide one enters."""
    rt = runtime()
    for i, msft in enumerate(["100", "101", "100", "101", "100"]):
        assert rt.run(minute(i, msft)) == []
    return rt


def fill(rt: InMemoryRuntime, intent: OrderIntentCreated) -> list[Event]:
    out: list[Event] = []
    for event in fill_chain(intent, PRICES[intent.payload.symbol], ids=next_id):
        out += rt.feed(event)
    return out


def refuse_at_gate(rt: InMemoryRuntime, intent: OrderIntentCreated) -> list[Event]:
    return rt.feed(deny(intent, ids=next_id))


def refuse_at_broker(rt: InMemoryRuntime, intent: OrderIntentCreated) -> list[Event]:
    out: list[Event] = []
    for event in broker_reject(intent, "insufficient buying power", ids=next_id):
        out += rt.feed(event)
    return out


def enter_short(rt: InMemoryRuntime) -> dict[str, OrderIntentCreated]:
    """The wide minute: sell 95 MSFT, buy 100 AAPL, one signal."""
    entry = intents(rt.run(minute(5, "105")))
    assert legs(list(entry.values())) == [
        ("MSFT", "sell", Decimal(95)),
        ("AAPL", "buy", Decimal(100)),
    ]
    return entry


def test_an_entry_leg_denied_by_the_gate_closes_the_filled_leg_at_once() -> None:
    rt = warmed()
    entry = enter_short(rt)
    assert fill(rt, entry["MSFT"]) == []
    out = refuse_at_gate(rt, entry["AAPL"])
    assert legs(out) == [("MSFT", "buy", Decimal(95))]
    (signal,) = [e for e in out if isinstance(e, SignalGenerated)]
    assert signal.payload.direction == "flat"
    assert "AAPL" in signal.payload.reason
    assert "denied" in signal.payload.reason
    fill(rt, intents(out)["MSFT"])
    assert position(rt, "MSFT") == position(rt, "AAPL") == 0


def test_an_entry_leg_rejected_by_the_broker_closes_the_filled_leg_at_once() -> None:
    rt = warmed()
    entry = enter_short(rt)
    assert fill(rt, entry["AAPL"]) == []
    out = refuse_at_broker(rt, entry["MSFT"])
    assert legs(out) == [("AAPL", "sell", Decimal(100))]
    (signal,) = [e for e in out if isinstance(e, SignalGenerated)]
    assert "rejected" in signal.payload.reason


def test_a_leg_denied_before_the_other_fills_closes_it_on_its_fill() -> None:
    # No close is sent against an order still working in the same symbol:
    # it waits for that order's end, and the fill closes what it filled.
    rt = warmed()
    entry = enter_short(rt)
    assert refuse_at_gate(rt, entry["AAPL"]) == []
    out = fill(rt, entry["MSFT"])
    assert legs(out) == [("MSFT", "buy", Decimal(95))]


def test_both_entry_legs_refused_leave_the_pair_flat_and_free_to_enter() -> None:
    rt = warmed()
    entry = enter_short(rt)
    assert refuse_at_gate(rt, entry["AAPL"]) == []
    assert refuse_at_broker(rt, entry["MSFT"]) == []
    again = rt.run(minute(6, "110"))
    assert legs(again) == [("MSFT", "sell", Decimal(90)), ("AAPL", "buy", Decimal(100))]


def test_a_leg_canceled_part_filled_unwinds_what_each_leg_actually_holds() -> None:
    # AAPL fills 40 of 100, then the broker cancels the rest: the pair holds
    # -95 MSFT against +40 AAPL. Both are closed, by what they hold.
    rt = warmed()
    entry = enter_short(rt)
    assert fill(rt, entry["MSFT"]) == []
    decision, command, ack, partial = fill_chain(
        entry["AAPL"], PRICES["AAPL"], ids=next_id, quantity=Decimal(40)
    )
    for event in (decision, command, ack, partial):
        assert rt.feed(event) == []
    canceled = OrderCanceled.create(
        OrderCanceledPayload(order_id=command.payload.order_id, account="paper", reason="ioc"),
        source="test/broker",
        clock=At(ack.ts_event),
        cause=ack,
        ids=next_id,
    )
    out = rt.feed(canceled)
    assert legs(out) == [("MSFT", "buy", Decimal(95)), ("AAPL", "sell", Decimal(40))]
    assert "canceled" in next(e for e in out if isinstance(e, SignalGenerated)).payload.reason


def test_no_pair_is_entered_while_a_naked_leg_is_being_closed() -> None:
    # The close of the naked leg is denied too: the next minute, with the
    # spread as wide as ever, sends that close again and no new pair.
    rt = warmed()
    entry = enter_short(rt)
    fill(rt, entry["MSFT"])
    close = intents(refuse_at_gate(rt, entry["AAPL"]))["MSFT"]
    assert refuse_at_gate(rt, close) == []  # retried at the next bar, not at once
    out = rt.run(minute(6, "112"))
    assert legs(out) == [("MSFT", "buy", Decimal(95))]
    fill(rt, intents(out)["MSFT"])
    assert position(rt, "MSFT") == 0
    # Flat again: a wide spread enters a new pair.
    assert legs(rt.run(minute(7, "120"))) == [
        ("MSFT", "sell", Decimal(83)),
        ("AAPL", "buy", Decimal(100)),
    ]


def exit_with(
    refuse: Callable[[InMemoryRuntime, OrderIntentCreated], list[Event]],
) -> tuple[InMemoryRuntime, list[Event]]:
    """Enter, fill both legs, revert: MSFT's close fills, AAPL's is refused."""
    rt = warmed()
    entry = enter_short(rt)
    for intent in entry.values():
        fill(rt, intent)
    closes = intents(rt.run(minute(6, "100.5")))
    assert legs(list(closes.values())) == [
        ("MSFT", "buy", Decimal(95)),
        ("AAPL", "sell", Decimal(100)),
    ]
    assert fill(rt, closes["MSFT"]) == []
    return rt, refuse(rt, closes["AAPL"])


def test_an_exit_leg_denied_is_sent_again_at_each_bar_until_flat() -> None:
    rt, answered = exit_with(refuse_at_gate)
    assert answered == []  # at the next bar, not at once
    assert position(rt, "AAPL") == 100
    # The spread goes wide again (outside exit_z): the close is sent anyway.
    out = rt.run([bar("MSFT", "112", T0 + 7 * MINUTE_NS)])
    assert legs(out) == [("AAPL", "sell", Decimal(100))]
    assert rt.run([bar("AAPL", "100", T0 + 7 * MINUTE_NS)]) == []  # it is working
    assert refuse_at_gate(rt, intents(out)["AAPL"]) == []
    out = rt.run(minute(8, "113"))
    assert legs(out) == [("AAPL", "sell", Decimal(100))]
    fill(rt, intents(out)["AAPL"])
    assert position(rt, "AAPL") == position(rt, "MSFT") == 0
    assert legs(rt.run(minute(9, "100.5"))) == []


def test_an_exit_leg_rejected_by_the_broker_is_sent_again_at_the_next_bar() -> None:
    rt, answered = exit_with(refuse_at_broker)
    assert answered == []
    out = rt.run(minute(7, "112"))
    assert legs(out) == [("AAPL", "sell", Decimal(100))]


def test_a_leg_held_alone_after_a_restart_is_closed_at_the_first_bar() -> None:
    # The runner was down when the denial came: a fresh instance, its books
    # rebuilt from the store, sees MSFT held and AAPL flat at its first bar.
    first = warmed()
    history = first.run(minute(5, "105"))  # the entry's signal and both legs
    entry = intents(history)
    history += fill_chain(entry["MSFT"], PRICES["MSFT"], ids=next_id)
    history.append(deny(entry["AAPL"], ids=next_id))
    rt = runtime()
    for event in history:
        rt.restore(event)
    assert position(rt, "MSFT") == -95
    out = rt.run([bar("MSFT", "104", T0 + 6 * MINUTE_NS)])
    assert legs(out) == [("MSFT", "buy", Decimal(95))]
