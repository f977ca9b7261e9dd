"""The router keeps the route of every working order, however many orders
came after it; only finished orders' routes are bounded (``Router``'s
``max_tracked``, small here).

Before, both maps were one LRU bounded by count: an order resting for long
(good-till-canceled, or a day order among a burst of others) lost its route
to newer orders, its late fill or cancel went unrouted, the intent stayed
``working`` in the strategy's books for ever and its position missed the fill.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from libs.contract.codec import order_id_for
from libs.contract.envelope import Event, IdFactory
from libs.contract.events import (
    FillPayload,
    FillReceived,
    OrderCanceled,
    OrderCanceledPayload,
    OrderIntentCreated,
)
from libs.strategy import InMemoryRuntime
from libs.strategy.routing import Router
from libs.strategy.testing import (
    At,
    EchoStrategy,
    bar,
    broker_reject,
    deny,
    fill_chain,
    market_intent,
    signal,
)
from services.strategy_runner.adapters.store import History
from tests.unit.strategy_probes import counter_ids, of_type

#: A Monday, 00:00 UTC.
DAY0 = 1_700_438_400 * 10**9
MINUTE_NS = 60 * 10**9
#: Finished routes remembered: far fewer than the orders placed after the resting one.
CAP = 4


def small_runtime(ids: IdFactory) -> InMemoryRuntime:
    rt = InMemoryRuntime(ids=ids)
    # Before any strategy is added: the runtime builds its router with the default cap.
    rt.router = Router(max_tracked=CAP)
    rt.add("echo", EchoStrategy, symbols=("AAPL",))
    return rt


def cancel_of(
    intent: OrderIntentCreated, cause: Event, *, at_ns: int, ids: IdFactory
) -> OrderCanceled:
    return OrderCanceled.create(
        OrderCanceledPayload(
            order_id=order_id_for(intent.id),
            account=intent.payload.account,
            reason="canceled by the user",
        ),
        source="test/broker",
        clock=At(at_ns),
        cause=cause,
        ids=ids,
    )


def place_many(rt: InMemoryRuntime, ids: IdFactory, *, first: int, count: int) -> list[Event]:
    """``count`` orders (one a bar, minutes apart), each filled at once: what
    the router saw."""
    seen: list[Event] = []
    for k in range(first, first + count):
        out = rt.run([b := bar("AAPL", 100, DAY0 + k * MINUTE_NS)])
        seen += [b, *out]
        (intent,) = of_type(out, OrderIntentCreated)
        for event in fill_chain(intent, 100, ids=ids):
            rt.feed(event)
            seen.append(event)
    return seen


@pytest.mark.parametrize("late", ["fill", "cancel"])
def test_a_resting_orders_late_event_routes_after_many_newer_orders(late: str) -> None:
    ids = counter_ids()
    rt = small_runtime(ids)
    host = rt.hosts["echo"]
    (resting,) = of_type(rt.run([bar("AAPL", 100, DAY0)]), OrderIntentCreated)
    decision, command, ack, fill = fill_chain(resting, 101, ids=ids)
    for event in (decision, command, ack):
        rt.feed(event)
    place_many(rt, ids, first=1, count=5 * CAP)
    assert host.pending("AAPL") == 1
    assert host.ledger.position("AAPL").quantity == 5 * CAP

    at_ns = DAY0 + 6 * CAP * MINUTE_NS
    if late == "fill":
        late_event: Event = fill.model_copy(update={"ts_event": at_ns, "ts_init": at_ns})
    else:
        late_event = cancel_of(resting, command, at_ns=at_ns, ids=ids)
    rt.feed(late_event)

    assert host.pending("AAPL") == 0
    record = next(r for r in host.history.orders() if r.intent_id == resting.id)
    if late == "fill":
        assert record.status == "filled"
        assert host.ledger.position("AAPL").quantity == 5 * CAP + 1
    else:
        assert record.status == "canceled"
        assert host.ledger.position("AAPL").quantity == 5 * CAP


def test_a_restart_rebuilds_the_routes_of_working_orders() -> None:
    """The runner's rebuild (``History.restore_into``, as at start-up) routes
    every restored event: the resting order's route is rebuilt and kept
    through the finished orders restored after it."""
    ids = counter_ids()
    live = small_runtime(ids)
    out = live.run([first := bar("AAPL", 100, DAY0)])
    (resting,) = of_type(out, OrderIntentCreated)
    decision, command, ack, fill = fill_chain(resting, 101, ids=ids)
    stored: list[Event] = [first, *out, decision, command, ack]
    stored += place_many(live, ids, first=1, count=5 * CAP)

    fresh = small_runtime(ids)
    History(events=stored, seqs=list(range(1, len(stored) + 1))).restore_into(fresh)
    host = fresh.hosts["echo"]
    assert host.pending("AAPL") == 1
    fresh.start()
    fresh.feed(fill)
    assert host.pending("AAPL") == 0
    assert host.ledger.position("AAPL").quantity == 5 * CAP + 1


def finishers(intent: OrderIntentCreated, ids: IdFactory) -> dict[str, list[Event]]:
    """Every way ``intent``'s order finishes, as the books know it."""
    decision, command, ack, _ = fill_chain(intent, 100, ids=ids)
    complete = fill_chain(intent, 100, ids=ids)[-1]
    assert isinstance(complete, FillReceived)
    # Status "partial" but nothing left (a broker that says so): finished.
    leaves_0 = complete.model_copy(
        update={"payload": FillPayload(**{**complete.payload.model_dump(), "status": "partial"})}
    )
    at_ns = intent.ts_event
    return {
        "denied": [deny(intent, ids=ids)],
        "rejected": broker_reject(intent, "no buying power", ids=ids),
        "canceled": [decision, command, ack, cancel_of(intent, command, at_ns=at_ns, ids=ids)],
        "filled": [decision, command, ack, complete],
        "leaves 0": [decision, command, ack, leaves_0],
    }


@pytest.mark.parametrize("how", ["denied", "rejected", "canceled", "filled", "leaves 0"])
def test_a_finished_orders_route_is_kept_among_the_recent_finished_then_forgotten(
    how: str,
) -> None:
    ids = counter_ids()
    router = Router(max_tracked=CAP)
    router.add("s", ("AAPL",))

    def an_intent(k: int) -> OrderIntentCreated:
        cause = signal("s", "AAPL", at_ns=DAY0 + k, ids=ids)
        intent = market_intent(cause, "paper", "buy", 2, ids=ids)
        router.note_emitted("s", [cause, intent])
        return intent

    intent = an_intent(0)
    order_id = order_id_for(intent.id)
    events = finishers(intent, ids)[how]
    for event in events:
        router.route(event)
    assert order_id not in router._by_order.working
    # A late copy of the finishing event still routes (a recent finished route).
    assert router.route(events[-1]) == ("s",)

    # CAP more orders finished after it: its route is forgotten, memory bounded.
    for k in range(1, CAP + 1):
        for event in finishers(an_intent(k), ids)[how]:
            router.route(event)
    assert order_id not in router._by_order.working
    assert len(router._by_order.finished) == CAP
    assert len(router._by_order.working) == 0


def test_a_partial_fill_leaves_the_order_working_and_an_accepted_alias_replaces_it() -> None:
    """A partial fill (leaves > 0) is no finish; an accepted decision naming
    another order id than the derived one makes that the working route (the
    derived one only among the finished, as the books re-map the intent)."""
    ids = counter_ids()
    router = Router(max_tracked=CAP)
    router.add("s", ("AAPL",))
    cause = signal("s", "AAPL", at_ns=DAY0, ids=ids)
    intent = market_intent(cause, "paper", "buy", 2, ids=ids)
    router.note_emitted("s", [cause, intent])
    decision, _, _, partial = fill_chain(intent, 100, ids=ids, quantity=Decimal(1))
    router.route(decision)
    router.route(partial)
    assert order_id_for(intent.id) in router._by_order.working

    other = fill_chain(intent, 100, ids=ids)[0]
    alias = uuid.UUID(int=10**9)
    renamed = other.model_copy(
        update={"payload": other.payload.model_copy(update={"order_id": alias})}
    )
    router.route(renamed)
    assert dict(router._by_order.working) == {alias: "s"}
    assert router.route(partial) == ("s",)  # the derived id: among the finished
