"""Opening-range breakout: a position's open time after a restart.

The strategy counts today's entries on the bars it was shown (live, or in a
restart's warm-up). When the store missed bars of today, a position entered
today on one of them was not counted: it was closed at the first live bar
("cannot tell it was opened today"), and, not counted, the strategy could
enter again past ``max_entries``. A position now says when it was opened
(``Position.opened_ns``, its opening fill's market time): opened today on
or after the first bar the warm-up was not shown, it is today's entry, kept
and counted; opened on an earlier day, it is carried and closed as such
(see test_strategy_opening_range_broker_time.py for a time a day off); with
no open time known, it is closed saying it cannot tell.
"""

from __future__ import annotations

from decimal import Decimal

from libs.contract.events import OrderIntentCreated
from libs.strategy.examples.opening_range import CARRIED
from libs.strategy.testing import fill_chain
from tests.unit.orb_inputs import (
    DAY,
    NEXT,
    at,
    closes,
    long_from_0933,
    next_id,
    opening,
    restarted,
)


def test_a_position_entered_today_on_a_bar_missing_from_the_store_is_kept_and_counted() -> None:
    # Restarted at 09:40; the store has today's range but not 09:33 on.
    rt = restarted(long_from_0933(DAY), opening(DAY))
    assert rt.hosts["orb"].ledger.position("SPY").opened_ns is not None
    assert closes(rt.run([at(DAY, "09:40", "102.5")])) == []
    # Its stop is the range's other side, as for an entry it saw.
    out = rt.run([at(DAY, "09:41", "98")])
    ((name, side, quantity, _),) = closes(out)
    assert (name, side, quantity) == ("orb_stop", "sell", Decimal(50))
    (stop,) = [e for e in out if isinstance(e, OrderIntentCreated)]
    rt.run(fill_chain(stop, 98, ids=next_id))
    # It was today's one entry (max_entries 1): no second breakout.
    assert closes(rt.run([at(DAY, "09:42", "104"), at(DAY, "09:43", "97")])) == []


def test_a_position_from_an_earlier_day_is_said_carried_though_bars_are_missing() -> None:
    # An earlier day's long, its flatten never reached; restarted at 09:40
    # the next day, the store missing 09:33 on: it was opened on DAY.
    rt = restarted(long_from_0933(DAY), opening(NEXT))
    ((name, side, quantity, reason),) = closes(rt.run([at(NEXT, "09:40", "100")]))
    assert (name, side, quantity, reason) == ("orb_flatten", "sell", Decimal(50), CARRIED)


def test_with_no_open_time_known_it_still_says_it_cannot_tell() -> None:
    rt = restarted(long_from_0933(DAY), opening(DAY), opened_known=False)
    assert rt.hosts["orb"].ledger.position("SPY").quantity == 50
    ((name, _, _, reason),) = closes(rt.run([at(DAY, "09:40", "102.5")]))
    assert name == "orb_flatten"
    assert "cannot tell it was opened today" in reason
