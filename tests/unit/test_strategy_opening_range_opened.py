"""Opening-range breakout: a position held after a restart, and its open time.

The strategy counted today's entries on the bars it was shown (live, or in a
restart's warm-up). When the store missed bars of today, a position entered
today on one of them was not counted: it was closed at the first live bar
("cannot tell it was opened today"), and, not counted, the strategy could
enter again past ``max_entries``; then it was judged by its open time
(``Position.opened_ns``). Now its order history says: an entry of today on
the position's side with something filled makes it today's entry, kept and
counted, whatever its open time, known or not; held with only an earlier
day's entry, it is carried and closed. The open time decides only where the
history holds no order of it (see test_strategy_opening_range_unseen.py and
test_strategy_opening_range_history.py).
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


def test_with_no_open_time_known_its_entry_in_the_history_makes_it_todays() -> None:
    # Its ledger seeded by a checkpoint that kept no open time: it was closed
    # saying it cannot tell it was opened today. Its 09:33 entry is in the
    # history: kept, stopped on today's range, and counted.
    rt = restarted(long_from_0933(DAY), opening(DAY), opened_known=False)
    position = rt.hosts["orb"].ledger.position("SPY")
    assert position.quantity == 50
    assert position.opened_ns is None
    assert closes(rt.run([at(DAY, "09:40", "102.5")])) == []
    out = rt.run([at(DAY, "09:41", "98")])
    assert [c[:3] for c in closes(out)] == [("orb_stop", "sell", Decimal(50))]
    (stop,) = [e for e in out if isinstance(e, OrderIntentCreated)]
    rt.run(fill_chain(stop, 98, ids=next_id))
    assert closes(rt.run([at(DAY, "09:42", "104")])) == []
