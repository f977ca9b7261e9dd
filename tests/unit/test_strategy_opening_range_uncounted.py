"""Opening-range breakout: entries a restart's warm-up was not shown.

After a restart the strategy counts today's entries on the bars it is warmed
up on. When the store missed bars of today's entry time, an entry made on
one of them was not counted unless its position was still held (judged by
``Position.opened_ns``): one made and closed there was forgotten, so the
strategy could enter more than ``max_entries`` times that day. Its books
cannot tell (a position keeps no past fills; realized P&L has no day), so
it counts what it cannot rule out: one entry per bar interval from the
first span of today's entry time it was not shown to its first live bar.
"""

from __future__ import annotations

import logging
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


@pytest.mark.parametrize("max_entries", [1, 2])
def test_an_entry_made_and_closed_on_bars_missing_from_the_store_is_not_made_again(
    max_entries: int, caplog: pytest.LogCaptureFixture
) -> None:
    # Its one entry (09:33) stopped at 09:34, restarted flat at 09:40. Seven
    # minutes not shown could have held two entries as well as one.
    books = traded([*opening(DAY), at(DAY, "09:33", "103"), at(DAY, "09:34", "98")])
    rt = restarted(books, opening(DAY), max_entries=max_entries)
    assert rt.hosts["orb"].ledger.position("SPY").quantity == 0
    with caplog.at_level(logging.WARNING, logger="libs.strategy.examples.opening_range"):
        assert closes(rt.run([at(DAY, "09:40", "104")])) == []
    (record,) = caplog.records
    said = record.getMessage()
    assert "from 09:33 to 09:40" in said
    assert f"entries counted today {max_entries} of max_entries {max_entries}" in said


@pytest.mark.parametrize(("max_entries", "entered"), [(1, False), (2, True)])
def test_one_bar_not_shown_counts_one_entry(max_entries: int, entered: bool) -> None:
    # Every bar shown to 09:38; 09:39 not (missing, or no trade): one entry
    # may have been made on it, no more.
    shown = [*opening(DAY), *(at(DAY, f"09:{m}", "100") for m in range(33, 39))]
    rt = restarted([], shown, max_entries=max_entries)
    expected = [("orb_breakout", "buy", Decimal(50))] if entered else []
    assert [c[:3] for c in closes(rt.run([at(DAY, "09:40", "104")]))] == expected


def test_a_live_instance_counts_no_entry_for_minutes_without_a_bar() -> None:
    # Running since the open: no bar from 09:33 to 09:39 is no trade.
    rt = runtime()
    out = rt.run([*opening(DAY), at(DAY, "09:40", "104")])
    assert [c[:3] for c in closes(out)] == [("orb_breakout", "buy", Decimal(50))]
