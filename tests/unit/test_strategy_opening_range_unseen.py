"""Opening-range breakout: a position held that nothing says is today's.

Whether a position held is today's entry is its order history's to say. Where
the history holds no order of it (the runner's rebuild window shorter than the
time since its entry, a checkpoint holding the position) and no open time is
known either, it cannot tell: the position is closed (nothing says where its
stop is), its reason saying so, logged once a day. A position whose earlier
day's entry the history holds is carried, restarted or live.
"""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from libs.contract.events import OrderIntentCreated
from libs.strategy.examples.opening_range import CARRIED
from libs.strategy.testing import deny, fill_chain
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
)


def said(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What it said of the position held."""
    return [r for r in caplog.records if "held" in r.getMessage()]


def test_a_position_with_no_order_and_no_open_time_kept_is_closed_saying_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Restarted at 09:40 on a checkpoint with no open time, the chain of its
    # 09:33 entry not read back (finished before the rebuild window).
    rt = restarted(long_from_0933(DAY), opening(DAY), opened_known=False, history=False)
    assert rt.hosts["orb"].ledger.position("SPY").quantity == 50
    with caplog.at_level(logging.WARNING, logger="libs.strategy.examples.opening_range"):
        out = rt.run([at(DAY, "09:40", "102.5")])
    ((name, side, quantity, reason),) = closes(out)
    assert (name, side, quantity) == ("orb_flatten", "sell", Decimal(50))
    assert reason != CARRIED
    assert "cannot tell it was opened today" in reason
    (record,) = said(caplog)
    assert "no open time known" in record.getMessage()
    # Its close denied, it is sent again at the next bar, and not said again.
    (close,) = [e for e in out if isinstance(e, OrderIntentCreated)]
    rt.feed(deny(close, ids=next_id))
    with caplog.at_level(logging.WARNING, logger="libs.strategy.examples.opening_range"):
        ((_, _, _, again),) = closes(rt.run([at(DAY, "09:41", "102")]))
    assert again == reason
    assert len(said(caplog)) == 1


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


def test_with_no_order_kept_an_earlier_days_open_time_says_carried() -> None:
    # No chain of it read back, its ledger's open time DAY's: carried.
    rt = restarted(long_from_0933(DAY), opening(NEXT), history=False)
    ((name, _, _, reason),) = closes(rt.run([at(NEXT, "09:40", "100")]))
    assert (name, reason) == ("orb_flatten", CARRIED)
