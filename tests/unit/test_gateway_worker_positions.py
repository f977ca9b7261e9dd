"""The gateway's AccountWorker without servers: its positions checks, what
they say and when a difference is held off for a reconciliation. The broker
is a stand-in; the clock is the test's."""

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
from services.broker_gateway.domain.model import BrokerOrder
from services.broker_gateway.gateway import Timings
from tests.unit.gateway_doubles import CLOCK, accepted_order, broker, outbox_into, worker


async def test_positions_checks_publish_the_first_outcome_and_each_change_only() -> None:
    """``check_positions`` publishes ``BrokerPositionsChecked`` on the first
    check and whenever what differs changes; a difference seen in the first
    look only (a fill on its way) is not said."""
    from libs.contract.events import FillPayload, FillReceived
    from services.broker_gateway.domain.model import BrokerPosition

    w = worker([1000.0], [], account="checked", timings=Timings(position_confirm_s=0.0))
    fill = FillReceived.create(
        FillPayload(
            order_id=uuid.uuid4(),
            account="checked",
            broker_order_id="b-1",
            fill_id="f-1",
            symbol="AAPL",
            side="buy",
            quantity=Decimal(3),
            price=Decimal(100),
            cumulative_quantity=Decimal(3),
            leaves_quantity=Decimal(0),
            status="complete",
            strategy="s",
        ),
        source="test",
        clock=CLOCK,
    )
    w.tracker.evolve(fill)
    looks: list[list[BrokerPosition]] = []
    published: list[list[tuple[str, str, str]]] = []

    async def positions() -> list[BrokerPosition]:
        return looks.pop(0)

    async def publish(events: list[Any]) -> None:
        for e in events:
            published.append(
                [
                    (d.symbol, str(d.broker_quantity), str(d.recorded_quantity))
                    for d in e.payload.differences
                ]
            )

    w.port = broker(positions=positions)
    w.outbox = cast(Any, SimpleNamespace(publish=publish))

    def pos(symbol: str, qty: int) -> BrokerPosition:
        return BrokerPosition(symbol, Decimal(qty), Decimal(100))

    agree = [pos("AAPL", 3)]
    extra = [pos("AAPL", 3), pos("TSLA", 2)]
    checks: list[tuple[list[list[BrokerPosition]], list[list[tuple[str, str, str]]]]] = [
        ([agree], [[]]),  # the first check: said, though nothing differs
        ([agree], []),  # the same: nothing
        ([extra, agree], []),  # TSLA in the first look only: nothing
        ([extra, extra], [[("TSLA", "2", "0")]]),  # in both looks: said
        ([[*extra, pos("MSFT", 1)], extra], []),  # MSFT in the first look only, TSLA as before
        ([agree], [[]]),  # agrees again: said
    ]
    for answers, said in checks:
        looks[:] = answers
        before = len(published)
        await w.check_positions()
        assert looks == []
        assert published[before:] == said


def said(events: list[Any]) -> list[Any]:
    """What the events are: a check as its differences, anything else as its type."""
    return [
        [
            (d.symbol, str(d.broker_quantity), str(d.recorded_quantity))
            for d in e.payload.differences
        ]
        if e.type == "BrokerPositionsChecked"
        else e.type
        for e in events
    ]


async def test_a_difference_while_a_reconciliation_awaits_its_retry_is_said_and_cleared() -> None:
    """A reconnection's reconciliation is given up (the broker refused a call
    RECONCILE_ATTEMPTS times) and waits for its retry (up to
    RECONCILE_RETRY_MAX_S); the periodic positions check comes meanwhile.
    The fill the retry is to fetch is unpublished, the risk-gate's position
    short, for as long: that is said, not held off (a reconciliation that
    kept failing would hold every check off), and the retry's check clears
    it once the fill is published. (Passes before the fixes too: it guards
    the hold-off of a check against reaching a retry.)"""
    from services.broker_gateway.domain.model import BrokerPosition
    from services.broker_gateway.errors import RateLimited

    # A reconciliation given up is tried again 0.2-0.4 s later.
    w = worker(
        [1000.0],
        [],
        account=f"owed-{uuid.uuid4().hex[:8]}",
        timings=Timings(
            retry_initial_s=0.001, reconcile_retry_initial_s=0.4, position_confirm_s=0.0
        ),
    )
    w.position_check_every_s = 3600.0  # its own timer never fires here: _check_due below
    oid = accepted_order(w, 5)
    filled = BrokerOrder(
        "b-1", str(oid), "AAPL", "buy", Decimal(5), Decimal(5), Decimal(100), "filled"
    )
    refusing = True
    published: list[Any] = []

    async def get_order(**ids: Any) -> BrokerOrder:
        if refusing:
            raise RateLimited("429", retry_after_s=None)
        return filled

    async def positions() -> list[BrokerPosition]:
        return [BrokerPosition("AAPL", Decimal(5), Decimal(100))]

    w.port = broker(get_order=get_order, positions=positions)
    w.outbox = outbox_into(published)
    running = asyncio.create_task(w.run_reconciliations())
    try:
        w.want_reconcile(everything=True)  # the reconnection's
        await eventually(lambda: w._retry is not None, timeout=5)
        assert published == []
        refusing = False  # the rate limit is lifted before the retry is due
        w._check_due()  # the periodic check
        await eventually(lambda: "FillReceived" in said(published), timeout=5)
        await eventually(lambda: published[-1].type == "BrokerPositionsChecked", timeout=5)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert said(published) == [[("AAPL", "5", "0")], "FillReceived", []]


async def test_no_positions_check_says_a_difference_the_stream_showed_a_gap_in_meanwhile() -> None:
    """A check's first look differs (a fill the broker booked, on its way);
    the stream then brings that fill, but past a fill it lost: the order is
    marked for reconciliation, its fills not yet recorded. The second look
    still differs, and the check said it: a difference that is only fills
    the next reconciliation publishes, red on the board until the next
    check (TRADEBUS_POSITION_CHECK_EVERY_S). The check waits for the
    reconciliation instead, and is done after it."""
    from services.broker_gateway.domain.model import BrokerFill, BrokerPosition, OrderUpdate

    w = worker(
        [1000.0], [], account=f"gap-{uuid.uuid4().hex[:8]}", timings=Timings(position_confirm_s=0.0)
    )
    w.position_check_every_s = 3600.0
    oid = accepted_order(w, 10)
    filled = BrokerOrder(
        "b-1", str(oid), "AAPL", "buy", Decimal(10), Decimal(10), Decimal(100), "filled"
    )
    looks = 0
    published: list[Any] = []

    async def positions() -> list[BrokerPosition]:
        nonlocal looks
        looks += 1
        if looks == 2:
            # Between the looks: the last fill (4 of 10), the first one (6) lost.
            fill = BrokerFill(
                "b-1", str(oid), "AAPL", "buy", Decimal(4), Decimal(100), Decimal(10), Decimal(0), 1
            )
            assert w.tracker.on_update(OrderUpdate("fill", filled, 1, fill)) == []
            assert oid in w.tracker.needs_reconcile
        return [BrokerPosition("AAPL", Decimal(10), Decimal(100))]

    w.port = broker(positions=positions)
    w.outbox = outbox_into(published)
    await w.check_positions()
    assert looks == 2
    assert said(published) == []  # nothing said while fills are known to be missing
    assert w._check_wanted  # checked again after the reconciliation


async def test_no_check_says_a_difference_while_a_reconnection_s_reconciliation_waits() -> None:
    """The broker reconnects between a check's two looks: the reconciliation
    of everything it asks for is about to run, and may publish fills the
    broker booked while it was away. The check said the difference (a
    warning, the board red) and the check after that reconciliation took it
    back. It waits for that reconciliation instead."""
    from services.broker_gateway.domain.model import BrokerPosition

    w = worker(
        [1000.0],
        [],
        account=f"back-{uuid.uuid4().hex[:8]}",
        timings=Timings(position_confirm_s=0.0),
    )
    w.position_check_every_s = 3600.0
    accepted_order(w, 10)
    looks = 0
    published: list[Any] = []

    async def positions() -> list[BrokerPosition]:
        nonlocal looks
        looks += 1
        if looks == 2:
            w.want_reconcile(everything=True)  # the stream's "connected"
        return [BrokerPosition("AAPL", Decimal(10), Decimal(100))]

    w.port = broker(positions=positions)
    w.outbox = outbox_into(published)
    await w.check_positions()
    assert looks == 2
    assert said(published) == []
    assert w._check_wanted


async def test_a_mark_left_on_a_settled_order_does_not_hold_off_the_positions_check() -> None:
    """A submit's fetch given up marks its order (``fetch_later``); should
    the stream have brought its fill meanwhile, the order is settled and no
    reconciliation visits it again (they ask for unsettled orders only): the
    mark stays. It is no fill owed, so a difference in its symbol is said."""
    from libs.contract.events import FillPayload, FillReceived
    from services.broker_gateway.domain.model import BrokerPosition

    w = worker(
        [1000.0],
        [],
        account=f"settled-{uuid.uuid4().hex[:8]}",
        timings=Timings(position_confirm_s=0.0),
    )
    oid = accepted_order(w, 1)
    answer = BrokerOrder(
        "b-1", str(oid), "AAPL", "buy", Decimal(1), Decimal(1), Decimal(100), "filled"
    )
    fill = FillPayload(
        order_id=oid,
        account=w.account,
        broker_order_id="b-1",
        fill_id="f-1",
        symbol="AAPL",
        side="buy",
        quantity=Decimal(1),
        price=Decimal(100),
        cumulative_quantity=Decimal(1),
        leaves_quantity=Decimal(0),
        status="complete",
        strategy="s",
    )
    w.tracker.evolve(FillReceived.create(fill, source="test", clock=CLOCK))  # the stream's
    w.tracker.fetch_later(answer)  # the fetch, given up
    assert w.tracker.get(oid).terminal == "filled"  # type: ignore[union-attr]
    published: list[Any] = []

    async def positions() -> list[BrokerPosition]:
        return [BrokerPosition("AAPL", Decimal(3), Decimal(100))]  # 2 bought by hand

    w.port = broker(positions=positions)
    w.outbox = outbox_into(published)
    await w.check_positions()
    assert said(published) == [[("AAPL", "3", "1")]]


async def test_a_periodic_check_whose_reconciliation_is_given_up_runs_after_its_retry() -> None:
    """The periodic check is due while an order is marked (a gap): the
    reconciliation of the gaps runs first, and the check only once it has
    run to the end. That reconciliation is given up (the broker refused a
    call RECONCILE_ATTEMPTS times) and tried again later, and runs to the
    end: the check must run then. It was dropped, until the next period
    (TRADEBUS_POSITION_CHECK_EVERY_S, 300 s)."""
    from services.broker_gateway.domain.model import BrokerPosition
    from services.broker_gateway.errors import RateLimited

    # A reconciliation given up is tried again 0.2-0.4 s later.
    w = worker(
        [1000.0],
        [],
        account=f"dropped-{uuid.uuid4().hex[:8]}",
        timings=Timings(
            retry_initial_s=0.001, reconcile_retry_initial_s=0.4, position_confirm_s=0.0
        ),
    )
    w.position_check_every_s = 3600.0  # its own timer never fires here: _check_due below
    oid = accepted_order(w, 5)
    filled = BrokerOrder(
        "b-1", str(oid), "AAPL", "buy", Decimal(5), Decimal(5), Decimal(100), "filled"
    )
    w.tracker.fetch_later(filled)  # marked, as a gap in the stream is
    refusing = True
    published: list[Any] = []

    async def get_order(**ids: Any) -> BrokerOrder:
        if refusing:
            raise RateLimited("429", retry_after_s=None)
        return filled

    async def positions() -> list[BrokerPosition]:
        return [BrokerPosition("AAPL", Decimal(5), Decimal(100))]

    w.port = broker(get_order=get_order, positions=positions)
    w.outbox = outbox_into(published)
    running = asyncio.create_task(w.run_reconciliations())
    try:
        w._check_due()  # the periodic check
        await eventually(lambda: w._retry is not None, timeout=5)
        assert published == []
        refusing = False  # the rate limit is lifted before the retry is due
        await eventually(lambda: "FillReceived" in said(published), timeout=5)
        await eventually(lambda: published[-1].type == "BrokerPositionsChecked", timeout=2)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert said(published) == ["FillReceived", []]


async def test_a_positions_check_that_raises_unexpectedly_fails_not_the_gateway(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The positions check after a reconnection's reconciliation meets an
    error the gateway does not expect (a bug's KeyError, here from the
    broker's positions). check_positions caught only BrokerError and
    ValueError: the error ended the reconciliation task, so the account's
    event task and the whole gateway, and the next start's reconnection met
    it again. It is now a failed check, said with its traceback and counted
    as one; the reconciliations go on, and the next check publishes."""
    from services.broker_gateway.domain.model import BrokerPosition

    account = f"checked-{uuid.uuid4().hex[:8]}"
    w = worker([1000.0], [], account=account, timings=Timings(position_confirm_s=0.0))
    w.position_check_every_s = 3600.0  # its own timer never fires here: _check_due below
    looks = 0

    async def positions() -> list[BrokerPosition]:
        nonlocal looks
        looks += 1
        if looks == 1:
            raise KeyError("a bug")
        return []

    published: list[Any] = []
    w.port = broker(positions=positions)
    w.outbox = outbox_into(published)

    def failed() -> float | None:
        return REGISTRY.get_sample_value(
            "tradebus_broker_position_checks_total", {"account": account, "outcome": "failed"}
        )

    running = asyncio.create_task(w.run_reconciliations())
    try:
        with caplog.at_level("WARNING"):
            w.want_reconcile(everything=True)  # the reconnection's, and its check
            await eventually(lambda: looks == 1 and (failed() or running.done()), timeout=5)
            assert not running.done(), running
            assert failed() == 1
            assert "KeyError: 'a bug'" in caplog.text
            assert "Traceback" in caplog.text
            w._check_due()  # the next periodic check
            await eventually(lambda: bool(published) or running.done(), timeout=5)
            assert not running.done(), running
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert said(published) == [[]]
