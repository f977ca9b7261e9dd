"""Opening-range breakout: an order history that does not reach back to
today's session open (``ctx.orders_complete_since_ns``) cannot count today's
entries, so it makes none more that day; said once a day, naming the setting.

Before, after a restart whose rebuild window (``TRADEBUS_REBUILD_FINISHED_S``)
ended after today's open, the entries made and closed before it were not in
the history and not counted: with ``max_entries`` 1 it entered a second time.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from libs.contract.events import OrderIntentCreated
from libs.strategy.testing import fill_chain, ny_ns
from tests.unit.orb_inputs import DAY, NEXT, at, closes, next_id, opening, restarted, traded

ENTRY = [("orb_breakout", "buy", Decimal(50))]


def test_an_entry_the_restart_left_out_of_the_history_blocks_another_that_day(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Its 09:33 long was stopped at 09:34; the runner restarted at 11:00 with
    # a one-hour window did not read that chain back: the history is complete
    # from 10:00 only, and holds no entry of today.
    books = traded([*opening(DAY), at(DAY, "09:33", "103"), at(DAY, "09:34", "98")])
    rt = restarted(books, opening(DAY), history=False)
    rt.hosts["orb"].history.missing_before(ny_ns(DAY, 10, 0))
    assert rt.hosts["orb"].ledger.position("SPY").quantity == 0
    with caplog.at_level("WARNING"):
        assert closes(rt.run([at(DAY, "11:01", "104")])) == []
        assert closes(rt.run([at(DAY, "11:02", "97"), at(DAY, "11:03", "105")])) == []
    said = [r for r in caplog.records if "TRADEBUS_REBUILD_FINISHED_S" in r.getMessage()]
    assert len(said) == 1  # once a day
    assert "no entry in SPY today" in said[0].getMessage()
    # The next day its history reaches back past the open: it enters again.
    caplog.clear()
    with caplog.at_level("WARNING"):
        out = rt.run([*opening(NEXT), at(NEXT, "09:33", "103")])
    assert [c[:3] for c in closes(out)] == ENTRY
    assert not [r for r in caplog.records if "TRADEBUS_REBUILD_FINISHED_S" in r.getMessage()]


@pytest.mark.parametrize(("hour", "minute"), [(9, 30), (8, 0)])
def test_a_history_complete_from_the_open_or_before_counts_as_ever(hour: int, minute: int) -> None:
    # The same restart with a window reaching back to the open (or before):
    # the history holds no entry of today, rightly, and it enters.
    rt = restarted([], opening(DAY))
    rt.hosts["orb"].history.missing_before(ny_ns(DAY, hour, minute))
    assert [c[:3] for c in closes(rt.run([at(DAY, "11:01", "104")]))] == ENTRY


def test_with_entries_left_to_make_it_still_makes_none_when_it_cannot_count() -> None:
    # max_entries 3, one entry (held) before a restart whose history reaches
    # back to 09:40 only, after the open: it holds its position and enters no
    # more today, though the history shows too few entries to stop it.
    books = traded([*opening(DAY), at(DAY, "09:33", "103")], max_entries=3)
    rt = restarted(books, opening(DAY), max_entries=3)
    rt.hosts["orb"].history.missing_before(ny_ns(DAY, 9, 40))
    assert rt.hosts["orb"].ledger.position("SPY").quantity == 50
    out = rt.run([at(DAY, "11:01", "97")])  # its stop
    assert [c[:3] for c in closes(out)] == [("orb_stop", "sell", Decimal(50))]
    (stop,) = [e for e in out if isinstance(e, OrderIntentCreated)]
    rt.run(fill_chain(stop, 97, ids=next_id))
    assert rt.hosts["orb"].ledger.position("SPY").quantity == 0
    # One entry in the history of three allowed, but the history may miss some.
    assert closes(rt.run([at(DAY, "11:02", "105"), at(DAY, "11:03", "96")])) == []
