"""Opening-range breakout: entries made on bars a restart's warm-up was not shown.

After a restart the strategy counted today's entries on the bars it was
warmed up on, then, where the store missed bars of today's entry time, one
entry per bar interval it was not shown, up to ``max_entries``: an entry
made and closed there left nothing it could read, but a thin symbol's
minutes with no trade counted as well, and it might not enter again that
day. Its order history holds what it sent: those entries count, and only
those.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from libs.contract.events import OrderIntentCreated
from libs.strategy.testing import fill_chain
from tests.unit.orb_inputs import DAY, at, closes, next_id, opening, restarted, runtime, traded


def test_a_closed_entry_the_warm_up_missed_counts_with_the_one_held() -> None:
    # max_entries 2: a 09:33 long stopped at 09:34, a 09:35 long held; the
    # store has today's range only. The held one was counted, the closed
    # one not: after the held one's stop it entered a third time.
    books = traded(
        [
            *opening(DAY),
            at(DAY, "09:33", "103"),
            at(DAY, "09:34", "98"),
            at(DAY, "09:35", "104"),
        ],
        max_entries=2,
    )
    rt = restarted(books, opening(DAY), max_entries=2)
    assert rt.hosts["orb"].ledger.position("SPY").quantity == 50
    assert closes(rt.run([at(DAY, "09:40", "102.5")])) == []
    out = rt.run([at(DAY, "09:41", "98")])
    ((name, side, quantity, _),) = closes(out)
    assert (name, side, quantity) == ("orb_stop", "sell", Decimal(50))
    (stop,) = [e for e in out if isinstance(e, OrderIntentCreated)]
    rt.run(fill_chain(stop, 98, ids=next_id))
    assert closes(rt.run([at(DAY, "09:42", "104"), at(DAY, "09:43", "97")])) == []


@pytest.mark.parametrize(("max_entries", "enters"), [(1, False), (2, True)])
def test_an_entry_made_and_closed_on_bars_missing_from_the_store_counts_once(
    max_entries: int, enters: bool
) -> None:
    # Its one entry (09:33) stopped at 09:34, restarted flat at 09:40 on a
    # store with the range only. Seven minutes not shown counted as seven
    # entries it could not rule out: with max_entries 2 it did not enter again.
    books = traded([*opening(DAY), at(DAY, "09:33", "103"), at(DAY, "09:34", "98")])
    rt = restarted(books, opening(DAY), max_entries=max_entries)
    assert rt.hosts["orb"].ledger.position("SPY").quantity == 0
    expected = [("orb_breakout", "buy", Decimal(50))] if enters else []
    assert [c[:3] for c in closes(rt.run([at(DAY, "09:40", "104")]))] == expected


def test_a_bar_not_shown_counts_no_entry_it_did_not_send() -> None:
    # Every bar shown to 09:38; 09:39 not (missing, or no trade). It sent no
    # entry today: one was counted for that bar, and with max_entries 1 it
    # never entered that day.
    shown = [*opening(DAY), *(at(DAY, f"09:{m}", "100") for m in range(33, 39))]
    rt = restarted([], shown)
    expected = [("orb_breakout", "buy", Decimal(50))]
    assert [c[:3] for c in closes(rt.run([at(DAY, "09:40", "104")]))] == expected


def test_a_live_instance_counts_no_entry_for_minutes_without_a_bar() -> None:
    # Running since the open: no bar from 09:33 to 09:39 is no trade.
    rt = runtime()
    out = rt.run([*opening(DAY), at(DAY, "09:40", "104")])
    assert [c[:3] for c in closes(out)] == [("orb_breakout", "buy", Decimal(50))]
