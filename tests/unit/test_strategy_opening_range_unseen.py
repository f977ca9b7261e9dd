"""Opening-range breakout: a position held with no entry seen today.

The strategy tells a position carried in from an earlier day from today's
by the entries it counted today, live or, after a restart, in the warm-up.
Its context cannot tell when a position was opened (a ``Position`` has no
fills' times). So when the store is missing today's bars (the warm-up jumps
from the range to the first live bar), a position entered today on a bar it
was not shown looked carried, and was closed as "held from an earlier day
(no bar reached its flatten): closed at the open" at 09:40. It is still
closed (nothing says where its stop is), and its reason says the truth:
it cannot tell.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import uuid
from decimal import Decimal

import pytest

from libs.contract.envelope import Event
from libs.contract.events import OrderIntentCreated, SignalGenerated
from libs.strategy import InMemoryRuntime
from libs.strategy.examples.opening_range import CARRIED, OpeningRangeBreakout
from libs.strategy.testing import bar, deny, fill_chain, ny_ns

IDS = itertools.count(1)
DAY = dt.date(2024, 1, 8)
NEXT = dt.date(2024, 1, 9)


def next_id() -> uuid.UUID:
    return uuid.UUID(int=next(IDS))


def runtime() -> InMemoryRuntime:
    rt = InMemoryRuntime()
    rt.add("orb", OpeningRangeBreakout, {"range_minutes": 3, "quantity": 50}, symbols=("SPY",))
    return rt


def at(
    day: dt.date, hhmm: str, close: str, high: str | None = None, low: str | None = None
) -> Event:
    h, m = (int(x) for x in hhmm.split(":"))
    return bar("SPY", close, ny_ns(day, h, m), high=high or close, low=low or close)


def opening(day: dt.date) -> list[Event]:
    return [
        at(day, "09:30", "100", high="101", low="99"),
        at(day, "09:31", "101", high="102", low="99.5"),
        at(day, "09:32", "99", high="101.5", low="98.5"),
    ]


def closes(out: list[Event]) -> list[tuple[str, str, Decimal, str]]:
    signals = {e.id: e for e in out if isinstance(e, SignalGenerated)}
    return [
        (
            signals[e.causation_id].payload.name,
            e.payload.side,
            e.payload.quantity,
            signals[e.causation_id].payload.reason,
        )
        for e in out
        if isinstance(e, OrderIntentCreated) and e.causation_id is not None
    ]


def long_from_0933(day: dt.date) -> list[Event]:
    """The first runner's life on ``day``: its range, its 09:33 breakout
    (long 50) and the fill: the events its books are rebuilt from."""
    before = runtime()
    out = before.run([*opening(day), at(day, "09:33", "103")])
    (intent,) = [e for e in out if isinstance(e, OrderIntentCreated)]
    return [*out, *fill_chain(intent, 103, ids=next_id)]


def restarted(books: list[Event], shown: list[Event]) -> InMemoryRuntime:
    """A fresh runner whose books hold ``books`` and whose store gives it
    ``shown`` to warm up on."""
    rt = runtime()
    host = rt.hosts["orb"]
    host.remember(shown)
    for event in books:
        rt.restore(event)
    rt.start()
    return rt


def test_a_position_entered_on_a_bar_missing_from_the_store_is_not_said_carried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Restarted at 09:40; the store has today's range but not 09:33 on.
    rt = restarted(long_from_0933(DAY), opening(DAY))
    assert rt.hosts["orb"].ledger.position("SPY").quantity == 50
    with caplog.at_level(logging.WARNING, logger="libs.strategy.examples.opening_range"):
        out = rt.run([at(DAY, "09:40", "102.5")])
    ((name, side, quantity, reason),) = closes(out)
    assert (name, side, quantity) == ("orb_flatten", "sell", Decimal(50))
    assert reason != CARRIED
    assert "cannot tell it was opened today" in reason
    assert "no bar was shown from 09:33 to 09:40" in reason
    (record,) = caplog.records
    assert "cannot tell whether that position was entered today" in record.getMessage()
    # Its close denied, it is sent again at the next bar, and not said again.
    (close,) = [e for e in out if isinstance(e, OrderIntentCreated)]
    rt.feed(deny(close, ids=next_id))
    with caplog.at_level(logging.WARNING, logger="libs.strategy.examples.opening_range"):
        ((_, _, _, again),) = closes(rt.run([at(DAY, "09:41", "102")]))
    assert again == reason
    assert len(caplog.records) == 1


def test_with_every_bar_of_today_shown_a_carried_position_is_said_carried() -> None:
    # An earlier day's long, its flatten never reached; restarted at 09:34
    # the next day, warmed up on every bar since the open: carried, certain.
    books = long_from_0933(DAY)
    rt = restarted(books, [*opening(NEXT), at(NEXT, "09:33", "100")])
    ((name, _, _, reason),) = closes(rt.run([at(NEXT, "09:34", "100")]))
    assert (name, reason) == ("orb_flatten", CARRIED)


def test_a_live_instance_on_a_thin_symbol_still_says_carried() -> None:
    # Running since the earlier day: no bar from 09:30 to 09:40 is no trade,
    # not a bar it was not shown. Its close at the open denied, the one
    # sent at 09:40 says carried too.
    rt = runtime()
    out = rt.run([*opening(DAY), at(DAY, "09:33", "103")])
    (intent,) = [e for e in out if isinstance(e, OrderIntentCreated)]
    rt.run(fill_chain(intent, 103, ids=next_id))
    out = rt.run([at(NEXT, "09:30", "100", high="101", low="99")])
    ((_, _, _, reason),) = closes(out)
    assert reason == CARRIED
    (close,) = [e for e in out if isinstance(e, OrderIntentCreated)]
    rt.feed(deny(close, ids=next_id))
    ((name, _, _, reason),) = closes(rt.run([at(NEXT, "09:40", "100")]))
    assert (name, reason) == ("orb_flatten", CARRIED)
