"""Opening-range breakout: a held position's open time a day off.

After a restart whose warm-up missed bars of today, a position held with no
entry counted is judged by ``Position.opened_ns``: its opening fill's market
time, the broker's own (``Event.market_ns``; no later than 5 s after the
gateway made the fill, which it may make late: a fill it learned of the next
morning, with no time from the broker, has the gateway's). It was judged by
the day alone: an earlier day's position stamped today was kept as today's
entry and stopped on a range it was not entered on. Only an open time where
it could have missed today's entry (from the first bar of today's entry time
it was not shown on) makes it today's; earlier, it is carried and closed.
Stamped a day behind, today's entry looks carried: it is closed, and its
entry still counts among those the warm-up cannot rule out.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from libs.contract.envelope import Event
from libs.contract.events import FillReceived
from libs.strategy.examples.opening_range import CARRIED
from libs.strategy.testing import ny_ns
from tests.unit.orb_inputs import DAY, NEXT, at, closes, long_from_0933, opening, restarted

DAY_NS = 24 * 3600 * 1_000_000_000


def stamped(books: list[Event], ts_event: int, ts_init: int) -> list[Event]:
    """``books`` with their fill made at ``ts_init``, stamped ``ts_event``."""
    return [
        e.model_copy(update={"ts_event": ts_event, "ts_init": ts_init})
        if isinstance(e, FillReceived)
        else e
        for e in books
    ]


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


def test_todays_entry_stamped_a_day_behind_is_closed_and_still_counted() -> None:
    # Today's 09:33 long, its fill stamped by the broker a day behind (not
    # clamped: only a time ahead is). It looks carried and is closed; its
    # entry is one the warm-up (09:33 to 09:40 not shown) cannot rule out.
    books = long_from_0933(DAY)
    (fill,) = [e for e in books if isinstance(e, FillReceived)]
    rt = restarted(stamped(books, fill.ts_event - DAY_NS, fill.ts_init), opening(DAY))
    ((name, _, _, reason),) = closes(rt.run([at(DAY, "09:40", "102.5")]))
    assert (name, reason) == ("orb_flatten", CARRIED)
    assert closes(rt.run([at(DAY, "09:41", "104"), at(DAY, "09:42", "97")])) == []
