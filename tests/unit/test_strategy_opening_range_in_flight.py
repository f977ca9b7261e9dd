"""Opening-range breakout: an entry still working at a restart.

The first runner sent its 09:33 breakout (buy 50) and stopped before the fill;
the fresh one's store missed the bars from 09:33 on, so its warm-up counted no
entry. Held only by that working buy, SPY was taken as a position carried in
(no open time: nothing filled) and a sell of 50 sent against the buy: had the
buy then been canceled or rejected, the sell alone would have left SPY short
50 in a strategy that entered long. A working order with nothing filled is
today's entry in flight (orders do not outlive their day here): counted, and
not closed.
"""

from __future__ import annotations

from decimal import Decimal

from libs.contract.events import OrderIntentCreated
from libs.strategy.testing import fill_chain
from tests.unit.orb_inputs import DAY, at, closes, next_id, opening, restarted, runtime


def test_an_entry_working_at_a_restart_is_counted_not_closed() -> None:
    before = runtime().run([*opening(DAY), at(DAY, "09:33", "103")])
    (entry,) = [e for e in before if isinstance(e, OrderIntentCreated)]
    rt = restarted(before, opening(DAY))
    ctx = rt.hosts["orb"]
    assert ctx.ledger.position("SPY").quantity == 0
    assert closes(rt.run([at(DAY, "09:40", "102.5")])) == []
    rt.run(fill_chain(entry, 103, ids=next_id))
    assert ctx.ledger.position("SPY").quantity == Decimal(50)
    # Today's one entry (max_entries 1): no second breakout after a stop-out.
    out = rt.run([at(DAY, "09:41", "98")])
    ((name, side, quantity, _),) = closes(out)
    assert (name, side, quantity) == ("orb_stop", "sell", Decimal(50))
    (stop,) = [e for e in out if isinstance(e, OrderIntentCreated)]
    rt.run(fill_chain(stop, 98, ids=next_id))
    assert closes(rt.run([at(DAY, "09:42", "104")])) == []
