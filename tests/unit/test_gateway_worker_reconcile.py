"""The gateway's AccountWorker without servers: its reconciliations and
the fetches of a submit's fills, what they ask the broker, what they publish
and how they give up and try again. The broker is a stand-in; the clock is
the test's."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from libs.testing.wait import eventually
from services.broker_gateway import gateway
from services.broker_gateway.domain.model import BrokerOrder
from services.broker_gateway.gateway import Timings
from tests.unit.gateway_doubles import CLOCK, accepted_order, broker, outbox_into, submit, worker


async def test_a_working_order_the_broker_no_longer_knows_is_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An order the broker acknowledged and now answers 404 for (a paper
    broker's forgotten order, an order removed at the venue) has an unknown
    outcome: reconciliation used to skip it without a word."""
    from libs.contract.events import OrderAccepted, OrderAcceptedPayload

    account = f"gone-{uuid.uuid4().hex[:8]}"
    w = worker([1000.0], [], account=account)
    command = submit()
    oid = command.payload.order_id
    accepted = OrderAcceptedPayload(
        order_id=oid, account=account, broker_order_id="b-42", symbol="AAPL"
    )
    w.tracker.evolve(
        command.model_copy(
            update={"payload": command.payload.model_copy(update={"account": account})}
        )
    )
    w.tracker.evolve(OrderAccepted.create(accepted, source="test", clock=CLOCK, cause=command))
    asked: list[str | None] = []

    async def get_order(**ids: str | None) -> None:
        asked.append(ids.get("broker_order_id"))

    async def open_orders() -> list[Any]:
        return []

    w.port = cast(Any, SimpleNamespace(get_order=get_order, open_orders=open_orders))

    def unknown() -> float | None:
        return REGISTRY.get_sample_value(
            "tradebus_broker_orders_unknown_total", {"account": account}
        )

    assert unknown() == 0
    with caplog.at_level("WARNING"):
        await w.reconcile()
    assert asked == ["b-42"]
    assert unknown() == 1
    assert f"the broker no longer knows order {oid} (broker order b-42" in caplog.text

    # Marked for its fills (the stream showed more filled than was published):
    # the broker's 404 ends the mark, which no answer could ever clear. It used
    # to stay, and every later stream update asked for the order (and said and
    # counted it) again.
    w.tracker.needs_reconcile[oid] = BrokerOrder(
        broker_order_id="b-42",
        client_order_id=str(oid),
        symbol="AAPL",
        side="buy",
        quantity=Decimal(1),
        filled_quantity=Decimal(1),
        filled_avg_price=Decimal(100),
        status="filled",
    )
    await w.reconcile(only=set(w.tracker.needs_reconcile))
    assert (asked, unknown()) == (["b-42", "b-42"], 1)
    assert oid not in w.tracker.needs_reconcile


async def test_an_order_the_broker_no_longer_knows_is_counted_once() -> None:
    """The order stays unsettled (its outcome is unknown), so every full
    reconciliation (each reconnection, each retry) asks for it again. The
    counter ("Working orders the broker no longer knows") counts orders: it
    used to count each of those answers, one old order climbing for ever."""
    from libs.contract.events import OrderAccepted, OrderAcceptedPayload

    account = f"gone-{uuid.uuid4().hex[:8]}"
    w = worker([1000.0], [], account=account)
    for n in range(2):
        command = submit()
        command = command.model_copy(
            update={"payload": command.payload.model_copy(update={"account": account})}
        )
        accepted = OrderAcceptedPayload(
            order_id=command.payload.order_id,
            account=account,
            broker_order_id=f"b-{n}",
            symbol="AAPL",
        )
        w.tracker.evolve(command)
        w.tracker.evolve(OrderAccepted.create(accepted, source="test", clock=CLOCK, cause=command))
    asked: list[str] = []

    async def get_order(**ids: str | None) -> None:
        asked.append(str(ids.get("broker_order_id")))

    async def open_orders() -> list[Any]:
        return []

    w.port = cast(Any, SimpleNamespace(get_order=get_order, open_orders=open_orders))
    for _ in range(3):  # three reconnections
        await w.reconcile()
    assert sorted(asked) == ["b-0"] * 3 + ["b-1"] * 3  # still asked: it may come back
    assert (
        REGISTRY.get_sample_value("tradebus_broker_orders_unknown_total", {"account": account}) == 2
    )


async def test_a_submit_waiting_for_its_fills_is_woken_by_a_reconciliation() -> None:
    """A submit's answer shows a fill the stream does not bring (a command
    redelivered after a crash, or a gap): the submit waits up to
    SETTLE_GRACE_S for it, then fetches the order itself. A reconciliation
    that publishes the fill meanwhile (the one after a reconnection, or the
    gap's) must end that wait. It did not wake it: the account's commands
    stood still for the whole grace, and the order was asked for a second
    time, against the broker's rate limit."""
    from services.broker_gateway.domain.model import BrokerOrder

    w = worker([1000.0], [])
    command = submit()
    oid = command.payload.order_id
    assert w.tracker.plan_submit(command)
    w.tracker.request(oid)
    answer = BrokerOrder(
        "b-1", str(oid), "AAPL", "buy", Decimal(1), Decimal(1), Decimal(100), "filled"
    )
    w.tracker.submitted(oid, answer)
    asked: list[dict[str, Any]] = []

    async def get_order(**ids: Any) -> BrokerOrder:
        asked.append(ids)
        return answer

    async def order_fills(order: BrokerOrder) -> None:
        return None  # the fill is inferred from the order's totals

    async def publish(events: list[Any]) -> None:
        pass

    w.port = cast(Any, SimpleNamespace(get_order=get_order, order_fills=order_fills))
    w.outbox = cast(Any, SimpleNamespace(publish=publish))
    settling = asyncio.create_task(w._settle(answer))
    await asyncio.sleep(0)  # one step: the submit now waits for the fill
    assert not settling.done()
    await w.reconcile(only={oid})  # the reconciliation task's
    async with asyncio.timeout(5):
        await settling
    assert w.tracker.get(oid).filled == Decimal(1)  # type: ignore[union-attr]
    assert len(asked) == 1


async def test_a_submit_s_fetch_refused_again_and_again_is_given_up_and_tried_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The README: the fetch a submit makes when the stream has not brought
    the fills its answer shows gives up as a reconciliation does, one call
    refused RECONCILE_ATTEMPTS times in a row, with a warning and
    ``tradebus_broker_reconciliations_given_up_total`` (it gave up without
    counting it). The order is then marked for the reconciliation of gaps,
    which is tried after a backoff and publishes the fill. Until then the
    fill waited for the next reconnection."""
    from services.broker_gateway.domain.model import BrokerOrder
    from services.broker_gateway.errors import RateLimited

    monkeypatch.setattr(gateway, "SETTLE_GRACE_S", 0.01)
    account = f"refused-{uuid.uuid4().hex[:8]}"
    w = worker(
        [1000.0],
        [],
        account=account,
        timings=Timings(retry_initial_s=0.001, reconcile_retry_initial_s=0.01),
    )
    command = submit()
    command = command.model_copy(
        update={"payload": command.payload.model_copy(update={"account": account})}
    )
    oid = command.payload.order_id
    assert w.tracker.plan_submit(command)
    w.tracker.request(oid)
    answer = BrokerOrder(
        "b-1", str(oid), "AAPL", "buy", Decimal(1), Decimal(1), Decimal(100), "filled"
    )
    w.tracker.submitted(oid, answer)
    refusals: list[int] = []
    refusing = True
    published: list[str] = []

    async def get_order(**ids: Any) -> BrokerOrder:
        if not refusing:
            return answer
        refusals.append(1)
        raise RateLimited("429", retry_after_s=None)

    async def order_fills(order: BrokerOrder) -> None:
        return None  # the fill is inferred from the order's totals

    async def publish(events: list[Any]) -> None:
        published.extend(e.type for e in events)

    w.port = cast(
        Any, SimpleNamespace(get_order=get_order, order_fills=order_fills, connected=True)
    )
    w.outbox = cast(Any, SimpleNamespace(publish=publish))

    def given_up() -> float | None:
        return REGISTRY.get_sample_value(
            "tradebus_broker_reconciliations_given_up_total", {"account": account}
        )

    assert given_up() == 0
    with caplog.at_level("WARNING"):
        await w._settle(answer)
    assert len(refusals) == gateway.RECONCILE_ATTEMPTS
    assert given_up() == 1
    assert "given up" in caplog.text
    assert oid in w.tracker.needs_reconcile
    assert w._retry is not None
    assert published == []
    refusing = False
    retrying = asyncio.create_task(w.run_reconciliations())
    try:
        await eventually(lambda: published == ["FillReceived"], timeout=5)
    finally:
        retrying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await retrying
    assert oid not in w.tracker.needs_reconcile
    assert w.tracker.get(oid).filled == Decimal(1)  # type: ignore[union-attr]
    assert len(refusals) == gateway.RECONCILE_ATTEMPTS


async def test_a_submit_s_fetch_interrupted_by_a_broker_error_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A submit's fetch of the fills its answer shows (the stream did not
    bring them) interrupted by a broker error other than the broker being
    away (here Alpaca's 403 on the fill activities) is given up as a
    reconciliation's is: the order marked, tried again after a backoff. The
    error escaped the fetch instead: the SubmitOrder failed and was handed
    back, came again as a repeat (the order is accepted) and was acked, and
    the fill was never fetched: unpublished, the risk-gate's position
    short, until the next reconnection."""
    from services.broker_gateway.errors import OrderRefused

    monkeypatch.setattr(gateway, "SETTLE_GRACE_S", 0.01)
    w = worker(
        [1000.0],
        [],
        account=f"forbidden-{uuid.uuid4().hex[:8]}",
        timings=Timings(reconcile_retry_initial_s=0.01),
    )
    oid = accepted_order(w, 1)
    answer = BrokerOrder(
        "b-1", str(oid), "AAPL", "buy", Decimal(1), Decimal(1), Decimal(100), "filled"
    )
    refusing = True
    published: list[str] = []

    async def get_order(**ids: Any) -> BrokerOrder:
        return answer

    async def order_fills(order: BrokerOrder) -> None:
        if refusing:
            raise OrderRefused("forbidden", "40310000")
        return None  # the fill is inferred from the order's totals

    async def publish(events: list[Any]) -> None:
        published.extend(e.type for e in events)

    w.port = cast(
        Any, SimpleNamespace(get_order=get_order, order_fills=order_fills, connected=True)
    )
    w.outbox = cast(Any, SimpleNamespace(publish=publish))
    await w._settle(answer)
    assert oid in w.tracker.needs_reconcile
    assert w._retry is not None
    assert published == []
    refusing = False
    retrying = asyncio.create_task(w.run_reconciliations())
    try:
        await eventually(lambda: published == ["FillReceived"], timeout=5)
    finally:
        retrying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await retrying
    assert oid not in w.tracker.needs_reconcile


async def test_an_order_the_broker_answers_with_an_error_does_not_stop_the_reconciliation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two working orders filled unseen; the broker answers the first with an
    error of its own (a 403). The second's fill is published all the same,
    and the reconciliation says it is to be tried again. The first order's
    error used to end it, and every retry of it, before the second. Such an
    error may come at every retry: the positions check is not held off by
    it, and says the difference the skipped order leaves."""
    from services.broker_gateway.domain.model import BrokerPosition
    from services.broker_gateway.errors import OrderRefused

    w = worker([1000.0], [], account="skipping", timings=Timings(position_confirm_s=0.0))
    answers: dict[str, BrokerOrder] = {}
    for n in (1, 2):
        command = submit()
        command = command.model_copy(
            update={"payload": command.payload.model_copy(update={"account": "skipping"})}
        )
        oid = command.payload.order_id
        assert w.tracker.plan_submit(command)
        w.tracker.request(oid)
        accepted = BrokerOrder(
            f"b-{n}", str(oid), "AAPL", "buy", Decimal(1), Decimal(0), None, "accepted"
        )
        w.tracker.submitted(oid, accepted)
        answers[f"b-{n}"] = BrokerOrder(
            f"b-{n}", str(oid), "AAPL", "buy", Decimal(1), Decimal(1), Decimal(100), "filled"
        )
    published: list[str] = []

    async def get_order(**ids: Any) -> BrokerOrder:
        if ids.get("broker_order_id") == "b-1":
            raise OrderRefused("forbidden", "40310000")
        return answers[ids["broker_order_id"]]

    async def positions() -> list[BrokerPosition]:
        return [BrokerPosition("AAPL", Decimal(2), Decimal(100))]

    checked: list[Any] = []

    async def publish(events: list[Any]) -> None:
        for e in events:
            if e.type == "BrokerPositionsChecked":
                checked.append(e.payload)
            else:
                published.append(f"{e.type} {e.payload.broker_order_id}")

    w.port = broker(get_order=get_order, positions=positions)
    w.outbox = cast(Any, SimpleNamespace(publish=publish))
    with caplog.at_level("WARNING"):
        assert await w.reconcile() is False
    assert published == ["FillReceived b-2"]
    assert "skipped, the others go on (OrderRefused: forbidden)" in caplog.text

    w.position_check_every_s = 300.0
    running = asyncio.create_task(w.run_reconciliations())
    try:
        w.want_reconcile(everything=True)
        await eventually(lambda: checked, timeout=5)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    [difference] = checked[0].differences
    assert (difference.symbol, difference.broker_quantity, difference.recorded_quantity) == (
        "AAPL",
        Decimal(2),
        Decimal(1),
    )


async def test_a_reconciliation_that_raises_unexpectedly_is_given_up_not_the_gateway(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An error the gateway does not expect (a bug's, here a KeyError from
    taking the first order's answer in, then from listing the open orders)
    ended the reconciliation task, so the account's event task and with it
    the whole gateway, every account; restarted, the reconnection's
    reconciliation met it again. As a command's is (ce3702e), it is now said
    with its traceback: the order is skipped and the others reconciled, or
    the reconciliation given up, and either is tried again later."""
    w = worker([1000.0], [], account="buggy")
    answers: dict[str, BrokerOrder] = {}
    for n in (1, 2):
        command = submit()
        command = command.model_copy(
            update={"payload": command.payload.model_copy(update={"account": "buggy"})}
        )
        oid = command.payload.order_id
        assert w.tracker.plan_submit(command)
        w.tracker.request(oid)
        acked = BrokerOrder(
            f"b-{n}", str(oid), "AAPL", "buy", Decimal(1), Decimal(0), None, "accepted"
        )
        w.tracker.submitted(oid, acked)
        answers[f"b-{n}"] = BrokerOrder(
            f"b-{n}", str(oid), "AAPL", "buy", Decimal(1), Decimal(1), Decimal(100), "filled"
        )
    taken_in = w.tracker.reconcile

    def reconcile(order: BrokerOrder, fills: Any) -> list[Any]:
        if order.broker_order_id == "b-1":
            raise KeyError("a bug")
        return taken_in(order, fills)

    w.tracker.reconcile = reconcile  # type: ignore[method-assign]
    listing_fails = False

    async def get_order(**ids: Any) -> BrokerOrder:
        return answers[ids["broker_order_id"]]

    async def open_orders() -> list[BrokerOrder]:
        if listing_fails:
            raise KeyError("another bug")
        return []

    published: list[Any] = []
    w.port = broker(get_order=get_order, open_orders=open_orders)
    w.outbox = outbox_into(published)
    running = asyncio.create_task(w.run_reconciliations())
    try:
        with caplog.at_level("WARNING"):
            w.want_reconcile(everything=True)
            await eventually(lambda: published or running.done(), timeout=5)
            await eventually(lambda: w._retry is not None or running.done(), timeout=5)
            assert not running.done(), running
            assert [(e.type, e.payload.broker_order_id) for e in published] == [
                ("FillReceived", "b-2")
            ]
            assert "KeyError: 'a bug'" in caplog.text
            assert "Traceback" in caplog.text
            # Now the whole of it fails: given up, and tried again later.
            w.tracker.reconcile = taken_in  # type: ignore[method-assign]
            listing_fails = True
            assert await w.reconcile() is False
            assert "KeyError: 'another bug'" in caplog.text
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert [(e.type, e.payload.broker_order_id) for e in published] == [
        ("FillReceived", "b-2"),
        ("FillReceived", "b-1"),
    ]


async def test_a_submit_answered_pending_before_a_restart_is_reconciled() -> None:
    """A submit the broker answered ``pending`` (Alpaca's pending_new) is
    acknowledged by the stream's "new"; a restart before that leaves only
    the recorded SubmitOrder. The rebuilt tracker did not count the order as
    one the broker may know, and the reconnection's reconciliation skips the
    open orders the tracker knows: the order (filled meanwhile, here) was
    never acknowledged and its fill never published. Now every order with
    a SubmitOrder and no outcome is asked for; one the broker does not know
    (never sent) is asked for once."""
    from services.broker_gateway.adapters.history import History

    sent, unsent = submit(), submit()
    w = worker([1000.0], [])
    w.tracker = History([sent, unsent]).trackers(["acct"], clock=CLOCK, source="test")["acct"]
    filled = BrokerOrder(
        "b-1",
        str(sent.payload.order_id),
        "AAPL",
        "buy",
        Decimal(1),
        Decimal(1),
        Decimal(100),
        "filled",
    )
    asked: list[str] = []
    published: list[str] = []

    async def get_order(**ids: Any) -> BrokerOrder | None:
        asked.append(ids["client_order_id"])
        return filled if ids["client_order_id"] == filled.client_order_id else None

    async def open_orders() -> list[BrokerOrder]:
        return []  # filled while the gateway was away: no longer open

    async def order_fills(order: BrokerOrder) -> None:
        return None  # inferred from the order's totals

    async def publish(events: list[Any]) -> None:
        published.extend(e.type for e in events)

    w.port = cast(
        Any, SimpleNamespace(get_order=get_order, open_orders=open_orders, order_fills=order_fills)
    )
    w.outbox = cast(Any, SimpleNamespace(publish=publish))
    assert await w.reconcile()
    assert published == ["OrderAccepted", "FillReceived"]
    assert w.tracker.get(sent.payload.order_id).terminal == "filled"  # type: ignore[union-attr]
    assert sorted(asked) == sorted([str(sent.payload.order_id), str(unsent.payload.order_id)])
    await w.reconcile()  # the next reconnection
    assert len(asked) == 2
    assert published == ["OrderAccepted", "FillReceived"]
    # Its command delivered after all (it was queued): sent, and asked for again.
    assert w.tracker.plan_submit(unsent)
    w.tracker.request(unsent.payload.order_id)
    assert [t.order_id for t in w.tracker.unsettled()] == [unsent.payload.order_id]


async def test_a_reconciliation_asks_the_broker_about_no_settlement_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """s1 holds 1 call and s2 2; the broker lists them expired (one activity,
    split in two fills) and the gateway died after publishing s1's. Rebuilt,
    the settlement's order (no broker order: its id is the activity's) is not
    done, and a reconnection's reconciliation asked the broker for it by the
    activity's id, as if it were an order it had acknowledged: 404, "the
    broker no longer knows order ..." said and counted, at every
    reconnection until the next settlement read. It asks about the broker's
    order only; the settlement's rest is still published by the next read."""
    from services.broker_gateway.settlement import settlement_events
    from tests.unit.gateway_settlement_inputs import CALL, activity, opened, tracker

    holdings = opened([("s1", CALL, "1"), ("s2", CALL, "2")])
    expired = [activity("a1", "OPEXP", CALL, "-3")]
    s1_expired, _ = settlement_events(tracker(holdings), expired)
    w = worker([1000.0], [], tracker=tracker([*holdings, s1_expired]))
    accepted_order(w, 1)  # b-1, working
    working = BrokerOrder("b-1", "c", "AAPL", "buy", Decimal(1), Decimal(0), None, "accepted")
    asked: list[dict[str, Any]] = []

    async def get_order(**ids: Any) -> BrokerOrder | None:
        asked.append(ids)
        return working if ids.get("broker_order_id") == "b-1" else None

    published: list[Any] = []
    w.port = broker(get_order=get_order)
    w.outbox = outbox_into(published)
    with caplog.at_level("WARNING"):
        assert await w.reconcile()
    assert asked == [{"broker_order_id": "b-1"}]
    assert "no longer knows" not in caplog.text
    assert published == []
    rest = settlement_events(w.tracker, expired)
    assert [(e.payload.strategy, e.payload.quantity) for e in rest] == [("s2", Decimal(2))]
