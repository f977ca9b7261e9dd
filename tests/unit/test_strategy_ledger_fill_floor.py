"""A short rebuild window does not shorten the ledger's fill guard below a
week: a fill made again by the broker-gateway (a restart whose rebuild did
not find it recorded) is dropped though the runner's
``TRADEBUS_REBUILD_FINISHED_S`` (``forget_after_ns``) is an hour. The ids of
finished chains still go after the hour (``libs/strategy/books.py``)."""

from __future__ import annotations

from libs.contract.events import FillReceived, OrderIntentCreated
from libs.strategy import InMemoryRuntime
from libs.strategy.books import MIN_FILL_KEYS_NS
from libs.strategy.testing import EchoStrategy, bar, fill_chain
from tests.unit.strategy_probes import counter_ids, of_type

DAY0 = 1_700_438_400 * 10**9
HOUR_NS = 3600 * 10**9
DAY_NS = 24 * HOUR_NS


def test_a_fill_made_again_two_days_later_is_dropped_with_an_hours_window() -> None:
    rt = InMemoryRuntime(ids=counter_ids())
    host = rt.add("echo", EchoStrategy, symbols=("AAPL",))
    host.forget_after_ns = HOUR_NS
    ids = rt.ids
    assert ids is not None
    (intent,) = of_type(rt.run([bar("AAPL", 100, DAY0)]), OrderIntentCreated)
    (first,) = of_type(fill_chain(intent, 100, ids=ids, at_ns=DAY0 + HOUR_NS), FillReceived)
    for event in fill_chain(intent, 100, ids=ids, at_ns=DAY0 + HOUR_NS):
        rt.feed(event)
    assert host.ledger.position("AAPL").quantity == 1
    # Two days of bars later (another fill applied then runs the forgetting).
    (later,) = of_type(rt.run([bar("AAPL", 101, DAY0 + 2 * DAY_NS)]), OrderIntentCreated)
    for event in fill_chain(later, 101, ids=ids, at_ns=DAY0 + 2 * DAY_NS + HOUR_NS):
        rt.feed(event)
    assert host.ledger.position("AAPL").quantity == 2
    # The first fill made again now: the same fill, a new ts_init.
    rt.feed(first.model_copy(update={"ts_init": DAY0 + 2 * DAY_NS + 2 * HOUR_NS}))
    assert host.ledger.position("AAPL").quantity == 2
    assert MIN_FILL_KEYS_NS == 7 * DAY_NS
