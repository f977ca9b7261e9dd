"""Opening-range breakout: today's entries from its own order history.

After a restart the strategy guessed its entries from the warm-up's bars:
each bar interval of today it was not shown (missing from the store, or no
trade: it cannot tell) counted as an entry, so a thin symbol might not enter
again that day; a breakout in those bars counted as made and a position
pretended, whatever the risk-gate or the broker did with it; and a position
held was judged today's by its open time, which may be a day off. Now it
reads what it sent (``ctx.orders``), rebuilt from the store as it was live.
"""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from libs.contract.envelope import Event
from libs.contract.events import OrderIntentCreated
from libs.strategy import InMemoryRuntime
from libs.strategy.examples.opening_range import CARRIED
from libs.strategy.testing import deny, fill_chain, ny_ns
from tests.unit.orb_inputs import (
    DAY,
    NEXT,
    at,
    closes,
    long_from_0933,
    next_id,
    opening,
    restarted,
    runtime,
    stamped,
    traded,
)

LOGGER = "libs.strategy.examples.opening_range"


@pytest.mark.parametrize(("max_entries", "enters"), [(1, False), (2, True)])
def test_a_thin_symbol_restarted_mid_day_enters_again_under_max_entries(
    max_entries: int, enters: bool
) -> None:
    # Its 09:33 long stopped at 09:34; no trade from 09:35 to 09:39, so no
    # bar. Restarted at 09:40 on every bar there was: five minutes without
    # one counted five entries it could not rule out, and with max_entries 2
    # it never entered again that day. It sent one entry: one of two used.
    bars = [*opening(DAY), at(DAY, "09:33", "103"), at(DAY, "09:34", "98")]
    rt = restarted(traded(bars, max_entries=max_entries), bars, max_entries=max_entries)
    assert rt.hosts["orb"].ledger.position("SPY").quantity == 0
    expected = [("orb_breakout", "buy", Decimal(50))] if enters else []
    assert [c[:3] for c in closes(rt.run([at(DAY, "09:40", "104")]))] == expected


def denied_then_entered(rt: InMemoryRuntime) -> list[Event]:
    """max_entries 2: its 09:33 long denied by the risk-gate, its 09:34 long
    (the second entry) filled, held to 09:39; every event of it."""
    events = rt.run([*opening(DAY), at(DAY, "09:33", "103")])
    (first,) = [e for e in events if isinstance(e, OrderIntentCreated)]
    denial = deny(first, ids=next_id)
    rt.feed(denial)
    out = rt.run([at(DAY, "09:34", "104")])
    assert [c[:3] for c in closes(out)] == [("orb_breakout", "buy", Decimal(50))]
    (second,) = [e for e in out if isinstance(e, OrderIntentCreated)]
    fills = fill_chain(second, 104, ids=next_id)
    rt.run(fills)
    held = [at(DAY, f"09:{m}", "103") for m in range(35, 40)]
    assert closes(rt.run(held)) == []
    return [*events, denial, *out, *fills]


def test_a_denied_entry_before_the_restart_counts_as_live() -> None:
    # The warm-up pretended the 09:33 long filled and held to 09:39: one
    # entry. After the held one's stop it entered a third time.
    live = runtime(max_entries=2)
    books = denied_then_entered(live)
    bars = [*opening(DAY), *(at(DAY, f"09:{m}", "103") for m in range(33, 40))]
    rt = restarted(books, bars, max_entries=2)
    assert rt.hosts["orb"].ledger.position("SPY").quantity == 50
    for instance in (live, rt):
        assert closes(instance.run([at(DAY, "09:40", "103")])) == []
        out = instance.run([at(DAY, "09:41", "98")])
        assert [c[:3] for c in closes(out)] == [("orb_stop", "sell", Decimal(50))]
        (stop,) = [e for e in out if isinstance(e, OrderIntentCreated)]
        instance.run(fill_chain(stop, 98, ids=next_id))
        assert closes(instance.run([at(DAY, "09:42", "104"), at(DAY, "09:43", "97")])) == []


def test_an_earlier_days_position_stamped_inside_todays_missing_bars_is_carried() -> None:
    # DAY's 09:33 long, its fill made by a gateway that learned of it at
    # 09:35 the next day (no time from the broker). Restarted at 09:40 on a
    # store with NEXT's range only: opened inside the bars not shown, it was
    # taken for NEXT's entry and stopped on a range it was not entered on.
    late = ny_ns(NEXT, 9, 35)
    rt = restarted(stamped(long_from_0933(DAY), late, late), opening(NEXT))
    assert rt.hosts["orb"].ledger.position("SPY").opened_ns == late
    ((name, side, quantity, reason),) = closes(rt.run([at(NEXT, "09:40", "102.5")]))
    assert (name, side, quantity, reason) == ("orb_flatten", "sell", Decimal(50), CARRIED)


def test_with_no_order_of_it_kept_a_position_opened_today_is_kept_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The runner's rebuild window shorter than the time since the 09:33
    # entry (a checkpoint holds its position, no chain of it was read): the
    # history cannot say; its open time does, and it says so.
    rt = restarted(long_from_0933(DAY), opening(DAY), history=False)
    assert rt.hosts["orb"].instance is not None
    assert rt.hosts["orb"].history.orders("SPY") == ()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert closes(rt.run([at(DAY, "09:40", "102.5")])) == []
    (record,) = caplog.records
    assert "holds no order of that side" in record.getMessage()
    assert "opened today: kept as today's entry, counted" in record.getMessage()
    out = rt.run([at(DAY, "09:41", "98")])
    assert [c[:3] for c in closes(out)] == [("orb_stop", "sell", Decimal(50))]
    (stop,) = [e for e in out if isinstance(e, OrderIntentCreated)]
    rt.run(fill_chain(stop, 98, ids=next_id))
    assert closes(rt.run([at(DAY, "09:42", "104")])) == []
