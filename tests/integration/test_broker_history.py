"""The gateway's start-up rebuild leaves out old settled orders, and nothing else.

A random history of one account (every way an order ends or stays open, a
flatten with closing fills booked to strategies, another account beside it)
is recorded in a real store. Rebuilt through
``services/broker_gateway/adapters/history.py``, every order kept must be
exactly what folding the whole history gives, the positions must be the
whole history's, and the orders left out must be exactly the settled ones
whose last event is both older than the window and before the first
command the consumer may still deliver.
"""

from __future__ import annotations

import random
import time
import uuid

import asyncpg
import pytest
from pydantic import SecretStr

from libs.bus.client import Bus
from libs.bus.consumer import ensure_consumer
from libs.contract.envelope import Event
from libs.contract.events import (
    CancelOrder,
    CancelOrderPayload,
    ClosingOrdersPlaced,
    FillReceived,
    FlattenAccount,
    FlattenAccountPayload,
    SubmitOrder,
    SubmitOrderPayload,
)
from libs.contract.subjects import ORDERS_CMD_ALL, STREAM
from libs.store.errors import StoreUnavailable
from libs.store.urls import asyncpg_url
from libs.strategy.testing import At
from services.broker_gateway.adapters.history import History, order_path_history
from services.broker_gateway.config import GatewaySettings
from services.broker_gateway.domain.model import BrokerOrder, OrderUpdate
from services.broker_gateway.domain.tracker import OrderTracker
from services.broker_gateway.main import _rebuilt
from tests.integration.order_histories import ACCOUNT, DAY_NS, Clock, D, flatten_and_close
from tests.integration.recording import record_events
from tests.integration.store_cut import CuttingProxy
from tests.integration.tracker_inputs import fill_update, order

OTHER = "other"
NOW = time.time_ns()
WINDOW_NS = 7 * DAY_NS
OUTCOMES = (
    "filled",
    "filled_in_parts",
    "rejected",
    "refused",
    "canceled",
    "canceled_after_a_fill",
    "open",
    "open_partly_filled",
    "unanswered",
    "withdrawn",
)


def _submit(clock: Clock, rng: random.Random, account: str = ACCOUNT) -> SubmitOrder:
    return SubmitOrder.create(
        SubmitOrderPayload(
            order_id=uuid.UUID(int=rng.getrandbits(128)),
            strategy=rng.choice(["s1", "s2"]),
            account=account,
            symbol=rng.choice(["AAPL", "MSFT"]),
            side=rng.choice(["buy", "sell"]),
            quantity=D(rng.randint(2, 20)),
        ),
        source="test/risk-gate",
        clock=At(clock.t),
    )


def _one_order(live: OrderTracker, clock: Clock, rng: random.Random, outcome: str) -> list[Event]:
    """The recorded events of one order that ends (or stays) as ``outcome``."""
    cmd = _submit(clock, rng, live.account)
    oid, qty = cmd.payload.order_id, int(cmd.payload.quantity)
    bid = f"b-{oid.hex[:12]}"
    out: list[Event] = [cmd]
    if outcome == "withdrawn":
        cancel = CancelOrder.create(
            CancelOrderPayload(order_id=oid, account=live.account),
            source="test/risk-gate",
            clock=At(clock.t),
        )
        live.evolve(cmd)
        live.evolve(cancel)
        return [*out, cancel, *live.withdrawn(oid)]
    assert live.plan_submit(cmd)
    live.request(oid)
    if outcome == "unanswered":
        return out
    if outcome == "refused":
        return out + live.refused(oid, "not shortable", "40310000")
    if outcome == "rejected":
        return out + live.submitted(oid, order(cmd, status="rejected", broker_id=bid))
    out += live.submitted(oid, order(cmd, broker_id=bid))
    if outcome == "open":
        return out
    cum = 0
    parts = {"filled": [qty], "open_partly_filled": [1]}.get(outcome, [1, qty - 1])
    if outcome == "canceled":
        parts = []
    for k, part in enumerate(parts[:1] if outcome == "canceled_after_a_fill" else parts):
        cum += part
        status = "filled" if cum == qty else "partially_filled"
        o = order(cmd, str(cum), "100", status, broker_id=bid)
        out += live.on_update(fill_update(o, str(part), "100", f"{bid}-{k}"))
    if outcome.startswith("canceled"):
        o = order(cmd, str(cum), "100" if cum else None, "canceled", broker_id=bid)
        out += live.on_update(OrderUpdate("canceled", o, clock.t))
    return out


def _history(seed: int) -> tuple[list[Event], int]:
    """A recorded history, and the sequence of its first recent event."""
    rng = random.Random(seed)
    clock = Clock()
    live = OrderTracker(ACCOUNT, clock=clock, source="broker-gateway/test")
    other = OrderTracker(OTHER, clock=clock, source="broker-gateway/test")
    events: list[Event] = []
    for i in range(150):
        clock.t = NOW - 10 * DAY_NS + i * 10**9
        events += _one_order(live, clock, rng, OUTCOMES[i % len(OUTCOMES)])
        if i in (40, 41, 100):
            # The one at 41 comes when every order working has its cancel
            # cause (the one at 40): it is left out with its closing orders.
            events += flatten_and_close(live, clock)
        if i % 7 == 0:
            events += _one_order(other, clock, rng, "filled")
    first_recent = len(events) + 1
    for i in range(40):
        clock.t = NOW - 3600 * 10**9 + i * 10**9
        events += _one_order(live, clock, rng, rng.choice(OUTCOMES))
    return events, first_recent


def _fold(events: list[Event]) -> OrderTracker:
    """The whole history folded: what every start-up did before."""
    full = OrderTracker(ACCOUNT, clock=Clock(), source="broker-gateway/test")
    for e in events:
        full.evolve(e)  # type: ignore[arg-type]
    return full


def _expected_left_out(
    events: list[Event], full: OrderTracker, pending_from: int, before_ns: int
) -> set[uuid.UUID]:
    last: dict[uuid.UUID, tuple[int, int]] = {}
    for seq, e in enumerate(events, start=1):
        oid = getattr(e.payload, "order_id", None)
        if oid is not None and e.payload.account == ACCOUNT:
            last[oid] = (seq, e.ts_init)
    return {
        oid
        for oid, (seq, ts) in last.items()
        if full.orders[oid].terminal is not None and seq < pending_from and ts < before_ns
    }


async def _rebuild(url: str, pending_from: int, before_ns: int) -> tuple[History, OrderTracker]:
    history = await order_path_history(
        url,
        [ACCOUNT],
        stream_last_seq=0,
        wait_s=0,
        pending_from_seq=pending_from,
        settled_before_ns=before_ns,
    )
    trackers = history.trackers([ACCOUNT], clock=Clock(), source="broker-gateway/test")
    return history, trackers[ACCOUNT]


async def test_old_settled_orders_are_left_out_and_nothing_else(database_url: str) -> None:
    events, first_recent = _history(seed=7)
    await record_events(database_url, events)
    full = _fold(events)
    before = NOW - WINDOW_NS
    assert full.positions
    assert any(t.closing for t in full.orders.values())
    for pending_from in (len(events) + 1, first_recent - 200, 1):
        history, kept = await _rebuild(database_url, pending_from, before)
        left_out = _expected_left_out(events, full, pending_from, before)
        if pending_from > 1:
            assert len(left_out) > 50, "the history must have old settled orders to leave out"
            assert history.flattens_left_out > 0, "and old flattens no order kept needs"
        assert history.orders_left_out == len(left_out)
        assert set(kept.orders) == set(full.orders) - left_out
        for oid, t in kept.orders.items():
            assert t == full.orders[oid], oid
        assert {t.order_id for t in kept.unsettled()} == {t.order_id for t in full.unsettled()}
        assert kept.positions == full.positions
        # Every kept order is found by its ids as before; the others are not held.
        assert kept._by_client == {k: v for k, v in full._by_client.items() if v in kept.orders}
        assert kept._by_broker == {k: v for k, v in full._by_broker.items() if v in kept.orders}
        # A command the consumer may still deliver is recognised, not sent again.
        for e in events[pending_from - 1 :]:
            if isinstance(e, SubmitOrder) and e.payload.account == ACCOUNT:
                t = kept.orders[e.payload.order_id]
                assert kept.plan_submit(e) == (t.terminal is None and not t.accepted
                                               and t.cancel_cause is None)  # fmt: skip


async def test_a_window_over_the_whole_history_keeps_everything(database_url: str) -> None:
    events, _ = _history(seed=11)
    await record_events(database_url, events)
    full = _fold(events)
    history, kept = await _rebuild(database_url, len(events) + 1, NOW - 30 * DAY_NS)
    assert history.orders_left_out == 0
    assert kept.orders == full.orders
    assert kept.positions == full.positions
    # The flatten is done rebuilt as live: its ClosingOrdersPlaced is read back.
    assert full._flattened
    assert kept._flattened == full._flattened


async def test_a_store_of_only_old_settled_orders_still_gives_positions(database_url: str) -> None:
    rng = random.Random(3)
    clock = Clock()
    clock.t = NOW - 30 * DAY_NS
    live = OrderTracker(ACCOUNT, clock=clock, source="broker-gateway/test")
    events: list[Event] = []
    for _ in range(5):
        events += _one_order(live, clock, rng, "filled")
    # A fill recorded without its strategy is booked to its order's, as the
    # tracker books it.
    k, fill = next((k, e) for k, e in enumerate(events) if isinstance(e, FillReceived))
    events[k] = fill.model_copy(
        update={"payload": fill.payload.model_copy(update={"strategy": None})}
    )
    await record_events(database_url, events)
    history, kept = await _rebuild(database_url, len(events) + 1, NOW - WINDOW_NS)
    assert history.events == []
    assert history.orders_left_out == 5
    assert kept.orders == {}
    assert kept.positions == _fold(events).positions == live.positions != {}


async def test_the_gateway_keeps_what_its_consumer_may_still_deliver(
    database_url: str, bus: Bus
) -> None:
    """``main._rebuilt`` reads the consumer's ack floor: with none yet acked,
    any command may come again, so nothing is left out; with no consumer
    (a new one replays only ``max_submit_delay_s``), old settled orders are."""
    events, _ = _history(seed=5)
    await record_events(database_url, events)
    await bus.ensure_stream()
    settings = GatewaySettings(
        database_url=SecretStr(database_url),
        consumer=f"gw-{uuid.uuid4().hex[:8]}",
        rebuild_wait_s=0,
    )

    async def rebuilt() -> OrderTracker:
        # The store stands for the stream here: its last sequence is the stream's.
        trackers = await _rebuilt(
            settings, bus, [ACCOUNT], len(events), Clock(), "broker-gateway/test"
        )
        return trackers[ACCOUNT]

    full = _fold(events)
    without_consumer = await rebuilt()
    assert len(without_consumer.orders) < len(full.orders) - 50
    await ensure_consumer(bus, settings.consumer, filter_subject=ORDERS_CMD_ALL)
    try:
        assert (await rebuilt()).orders == full.orders
    finally:
        await bus.js.delete_consumer(STREAM, settings.consumer)


async def test_a_recorded_order_the_contract_no_longer_takes_is_skipped_saying_so(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A row recorded under an older contract that the current one refuses
    (an ``O:`` symbol naming no contract, taken before options were parsed)
    is skipped with a warning naming it, as the risk-gate's and the runner's
    rebuilds skip theirs; it used to end the gateway's start-up in a
    ValidationError, at every restart. The orders around it are rebuilt."""
    events, _ = _history(seed=3)
    await record_events(database_url, events)
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        seq = await conn.fetchval(
            """
            INSERT INTO events (seq, id, subject, type, ts_event, ts_init, source,
                                correlation_id, account, symbol, payload)
            SELECT max(seq) + 1, gen_random_uuid(), 'orders.cmd.' || $1, 'SubmitOrder',
                   $2::bigint, $2::bigint, 'risk-gate/old', gen_random_uuid(), $1, 'O:SPY',
                   jsonb_build_object('order_id', gen_random_uuid()::text, 'strategy', 's1',
                                      'account', $1, 'symbol', 'O:SPY', 'side', 'buy',
                                      'quantity', '1')
            FROM events RETURNING seq
            """,
            ACCOUNT,
            NOW,
        )
    finally:
        await conn.close()
    with caplog.at_level("WARNING"):
        _, kept = await _rebuild(database_url, 1, NOW - WINDOW_NS)
    assert f"seq {seq}" in caplog.text
    assert "O:SPY" in caplog.text
    assert set(kept.orders) == set(_fold(events).orders)


def _flatten_cmd(clock: Clock) -> FlattenAccount:
    return FlattenAccount.create(
        FlattenAccountPayload(account=ACCOUNT, reason="test"),
        source="test/risk-gate",
        clock=At(clock.t),
    )


def _flatten_answered(live: OrderTracker, clock: Clock) -> list[Event]:
    """A flatten whose close-all answered, placing nothing (the account flat)."""
    flatten = _flatten_cmd(clock)
    live.flatten_started(flatten)
    out: list[Event] = [flatten, *live.flatten_done([])]
    live.flatten_ended()
    return out


async def test_old_flattens_are_left_out_unless_a_kept_order_needs_them(
    database_url: str,
) -> None:
    """Every FlattenAccount (and its ClosingOrdersPlaced) ever recorded was
    read back, as they name no order: the rebuild grew with the account's
    whole history. A flatten is now left out when the consumer cannot
    deliver it again (before its ack floor), it is older than the window (a
    consumer made anew replays less), and no order kept needs it: as the
    cancel cause of an order working when it came, as the cause of a
    closing order's events, or as the flatten that claimed an order. The
    orders kept are exactly what folding everything gives."""
    rng = random.Random(1)
    clock = Clock()
    clock.t = NOW - 10 * DAY_NS
    live = OrderTracker(ACCOUNT, clock=clock, source="broker-gateway/test")

    def working(name: str) -> BrokerOrder:
        return BrokerOrder(name, name, "AAPL", "sell", D(3), D(0), None, "accepted")

    events = _one_order(live, clock, rng, "filled")
    events += flatten_and_close(live, clock)  # its closing order filled: nothing kept needs it
    closed = events[-1]
    assert isinstance(closed, FillReceived)
    assert closed.payload.leaves_quantity == 0
    events += _flatten_answered(live, clock)  # the account already flat
    given_up = _flatten_cmd(clock)  # recorded nothing
    events.append(given_up)
    events += _one_order(live, clock, rng, "open")  # still working
    events += _flatten_answered(live, clock)  # its cancel cause
    cancels_it = events[-2]
    events += _flatten_answered(live, clock)  # it has its cancel cause already
    # Cut by a crash: its closing order, taken in as nobody's at the restart,
    # is claimed when it is delivered again.
    claims = _flatten_cmd(clock)
    live.flatten_started(claims)
    live.flatten_ended()
    events.append(claims)
    events += live.on_update(OrderUpdate("accepted", working("claimed"), clock.t))
    live.flatten_started(claims)
    assert live.adopt_closing_orders([working("claimed")])
    events += live.flatten_done([working("claimed")])
    live.flatten_ended()
    events += _flatten_answered(live, clock)  # the claimed order's cancel cause
    # Dead-lettered after its closing order was accepted (no answer recorded).
    causes = _flatten_cmd(clock)
    live.flatten_started(causes)
    events += [causes, *live.on_update(OrderUpdate("accepted", working("caused"), clock.t))]
    live.flatten_ended()
    clock.t = NOW - 3600 * 10**9
    events += _flatten_answered(live, clock)  # in the window
    recent = events[-2]
    pending_from = len(events) + 1
    events += _flatten_answered(live, clock)  # may be delivered again
    ran = events[-2]
    cut = _flatten_cmd(clock)  # cut by a crash: waited for
    events.append(cut)
    await record_events(database_url, events)
    full = _fold(events)

    history, kept = await _rebuild(database_url, pending_from, NOW - WINDOW_NS)
    needed = {cancels_it.id, claims.id, causes.id, recent.id, ran.id, cut.id}
    flattens = [e for e in history.events if isinstance(e, FlattenAccount)]
    assert len(flattens) == len(needed) + 1  # the claimed order's cancel cause
    assert needed < {e.id for e in flattens}
    # Each one's answer with it, no other.
    answers = {e.causation_id for e in history.events if isinstance(e, ClosingOrdersPlaced)}
    assert answers == {e.id for e in flattens} - {causes.id, cut.id}
    assert history.flattens_left_out == 4
    assert set(kept.orders) == {t.order_id for t in full.unsettled()}
    assert len(kept.orders) == 3
    for oid, t in kept.orders.items():
        assert t == full.orders[oid], oid
    closing = {t.broker_order_id: t for t in kept.orders.values() if t.closing}
    assert closing["claimed"].cause == claims
    assert closing["caused"].cause == causes
    # Redelivered, each flatten after the ack floor is known: a repeat, or
    # the one a crash may have cut; none before it is waited for.
    assert kept.flattened(ran.id)
    assert [f.id for f in kept.unfinished_flattens()] == [cut.id]
    # A consumer made anew replays the window: the recent flatten is done.
    assert kept.flattened(recent.id)
    assert not kept.flattened(given_up.id)


async def test_a_connection_closed_under_the_rebuild_is_store_unavailable(
    database_url: str,
) -> None:
    """The store closes the connection while the rebuild waits for the
    recorder (the stream is ahead of the store): the next poll's asyncpg
    InterfaceError ("connection is closed") is a StoreUnavailable, as a
    refused connection is; it went through as asyncpg's own error."""
    async with CuttingProxy(database_url, cut=1) as proxy:
        with pytest.raises(StoreUnavailable, match="cannot read the event store"):
            await order_path_history(
                proxy.url,
                [ACCOUNT],
                stream_last_seq=1,
                wait_s=30,
                pending_from_seq=1,
                settled_before_ns=NOW,
            )
        assert proxy.cut_done
