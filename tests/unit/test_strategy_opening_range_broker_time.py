"""Opening-range breakout: a held position's open time a day off.

``Position.opened_ns`` is its opening fill's market time, the broker's own
(``Event.market_ns``; no later than 5 s after the gateway made the fill,
which it may make late: a fill it learned of the next morning, with no time
from the broker, has the gateway's). Whether a position held is today's
entry is its order history's to say (an entry order of today, on its side,
with something filled), not that time's: an earlier day's position stamped
today is carried and closed, today's entry stamped a day behind is kept.
(See test_strategy_opening_range_history.py for one stamped inside the bars
a restart's warm-up was not shown.)
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from libs.contract.events import FillReceived, OrderIntentCreated
from libs.strategy.examples.opening_range import CARRIED
from libs.strategy.testing import fill_chain, ny_ns
from tests.unit.orb_inputs import (
    DAY,
    NEXT,
    at,
    closes,
    long_from_0933,
    next_id,
    opening,
    restarted,
    stamped,
)

DAY_NS = 24 * 3600 * 1_000_000_000


def test_an_earlier_days_position_stamped_before_todays_range_ended_is_carried() -> None:
    # DAY's 09:33 long, its fill made by a gateway that learned of it at
    # 09:20 the next day (no time from the broker): opened NEXT 09:20, an
    # hour where no entry of NEXT's is made. Restarted at 09:40 on a store
    # with NEXT's range only.
    late = ny_ns(NEXT, 9, 20)
    books = stamped(long_from_0933(DAY), late, late)
    rt = restarted(books, opening(NEXT))
    assert rt.hosts["orb"].ledger.position("SPY").opened_ns == late
    ((name, side, quantity, reason),) = closes(rt.run([at(NEXT, "09:40", "102.5")]))
    assert (name, side, quantity, reason) == ("orb_flatten", "sell", Decimal(50), CARRIED)


@pytest.mark.parametrize("last_shown", ["09:36", "09:39"])
def test_a_position_stamped_where_every_bar_was_shown_is_not_todays_entry(
    last_shown: str,
) -> None:
    # The broker's time a day ahead: DAY's 09:33 long stamped NEXT 09:34
    # (the gateway made it then). Every bar of NEXT to 09:36 was shown, none
    # broke out: no entry was made at 09:34 (to 09:39: no bar missing at all).
    ahead = ny_ns(NEXT, 9, 34)
    books = stamped(long_from_0933(DAY), ahead, ahead)
    last = int(last_shown[-2:])
    shown = [*opening(NEXT), *(at(NEXT, f"09:{m}", "100") for m in range(33, last + 1))]
    rt = restarted(books, shown)
    ((name, side, quantity, reason),) = closes(rt.run([at(NEXT, "09:40", "100")]))
    assert (name, side, quantity, reason) == ("orb_flatten", "sell", Decimal(50), CARRIED)


def test_todays_entry_stamped_a_day_behind_is_kept_as_todays_entry() -> None:
    # Today's 09:33 long, its fill stamped by the broker a day behind (not
    # clamped: only a time ahead is). Restarted at 09:40 on a store missing
    # 09:33 on, it looked carried and was closed; its entry is in the history.
    books = long_from_0933(DAY)
    (fill,) = [e for e in books if isinstance(e, FillReceived)]
    rt = restarted(stamped(books, fill.ts_event - DAY_NS, fill.ts_init), opening(DAY))
    assert closes(rt.run([at(DAY, "09:40", "102.5")])) == []
    out = rt.run([at(DAY, "09:41", "98")])
    assert [c[:3] for c in closes(out)] == [("orb_stop", "sell", Decimal(50))]
    (stop,) = [e for e in out if isinstance(e, OrderIntentCreated)]
    rt.run(fill_chain(stop, 98, ids=next_id))
    assert closes(rt.run([at(DAY, "09:42", "104"), at(DAY, "09:43", "97")])) == []
