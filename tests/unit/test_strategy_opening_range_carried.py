"""Opening-range breakout: a position carried in from an earlier day.

A symbol with no trade in the session's last minutes gets no bar then (nor
from Polygon, nor from the synthetic feed): no bar reaches ``flatten_at`` and
the position is held overnight. The next morning it was held, without a
stop, through the whole opening range, and after it was kept as if it were
the day's own breakout, stopped only at the other side of a range it was not
entered on.
"""

from __future__ import annotations

from decimal import Decimal

from libs.contract.envelope import Event
from libs.contract.events import BarClosed, OrderIntentCreated, SignalGenerated
from libs.strategy import InMemoryRuntime
from libs.strategy.testing import deny, fill_chain
from tests.unit.orb_inputs import DAY, NEXT, at, next_id, opening, runtime


def intents(out: list[Event]) -> list[tuple[str, str, Decimal]]:
    signals = {e.id: e for e in out if isinstance(e, SignalGenerated)}
    return [
        (signals[e.causation_id].payload.name, e.payload.side, e.payload.quantity)
        for e in out
        if isinstance(e, OrderIntentCreated) and e.causation_id is not None
    ]


def long_without_a_flatten_bar(rt: InMemoryRuntime) -> None:
    """Long 50 from a 09:33 breakout on DAY; the symbol's last bar is 15:40."""
    out = rt.run([*opening(DAY), at(DAY, "09:33", "103")])
    (intent,) = [e for e in out if isinstance(e, OrderIntentCreated)]
    for event in fill_chain(intent, 103, ids=next_id):
        rt.feed(event)
    assert intents(rt.run([at(DAY, "15:40", "104")])) == []
    assert rt.hosts["orb"].ledger.position("SPY").quantity == 50


def test_a_position_carried_overnight_is_closed_at_the_next_open() -> None:
    rt = runtime()
    long_without_a_flatten_bar(rt)
    out = rt.run([at(NEXT, "09:30", "80", high="81", low="79")])
    assert intents(out) == [("orb_flatten", "sell", Decimal(50))]
    signal = next(e for e in out if isinstance(e, SignalGenerated))
    assert "earlier day" in signal.payload.reason
    # Pending, it is not sent twice.
    assert intents(rt.run([at(NEXT, "09:31", "79", high="80", low="78")])) == []


def test_a_denied_close_of_a_carried_position_is_sent_again() -> None:
    rt = runtime()
    long_without_a_flatten_bar(rt)
    out = rt.run([at(NEXT, "09:30", "80", high="81", low="79")])
    (intent,) = [e for e in out if isinstance(e, OrderIntentCreated)]
    rt.feed(deny(intent, ids=next_id))
    out = rt.run([at(NEXT, "09:31", "79", high="80", low="78")])
    assert intents(out) == [("orb_flatten", "sell", Decimal(50))]


def test_once_the_carried_position_is_closed_the_day_trades_as_usual() -> None:
    rt = runtime()
    long_without_a_flatten_bar(rt)
    out = rt.run([at(NEXT, "09:30", "100", high="101", low="99")])
    (intent,) = [e for e in out if isinstance(e, OrderIntentCreated)]
    for event in fill_chain(intent, 100, ids=next_id):
        rt.feed(event)
    assert rt.hosts["orb"].ledger.position("SPY").quantity == 0
    out = rt.run([*opening(NEXT)[1:], at(NEXT, "09:33", "103")])
    assert intents(out) == [("orb_breakout", "buy", Decimal(50))]


def test_a_position_carried_past_the_range_is_closed_not_kept_on_todays_range() -> None:
    # The runner was down over today's opening: the catch-up showed it
    # today's range (on_warmup), and the first live bar is past it. The
    # carried position was kept as if it were today's breakout.
    rt = runtime()
    long_without_a_flatten_bar(rt)
    host = rt.hosts["orb"]
    for past in opening(NEXT):
        assert isinstance(past, BarClosed)
        assert host.warm_up(past) == []
    out = rt.run([at(NEXT, "09:40", "100")])  # inside today's range
    assert intents(out) == [("orb_flatten", "sell", Decimal(50))]


def test_todays_own_position_after_a_restart_is_kept() -> None:
    # Restarted at 09:40, warmed up on today's bars (its 09:33 entry among
    # them) and holding that entry: it is today's, and stays on.
    before = runtime()
    out = before.run([*opening(DAY), at(DAY, "09:33", "103")])
    (intent,) = [e for e in out if isinstance(e, OrderIntentCreated)]
    rt = runtime()
    host = rt.hosts["orb"]
    host.remember([*opening(DAY), at(DAY, "09:33", "103")])
    for event in [*out, *fill_chain(intent, 103, ids=next_id)]:
        rt.restore(event)
    assert host.ledger.position("SPY").quantity == 50
    rt.start()
    assert intents(rt.run([at(DAY, "09:40", "102.5")])) == []
    assert intents(rt.run([at(DAY, "09:41", "98")])) == [("orb_stop", "sell", Decimal(50))]
