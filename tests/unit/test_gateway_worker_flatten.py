"""The gateway's AccountWorker without servers: a flatten's cancel-all and
close-all, what it publishes and counts when the broker refuses or its
answer is lost, and its recovery after a restart. The broker is a stand-in;
the clock is the test's."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, cast

import pytest
from nats.aio.msg import Msg
from prometheus_client import REGISTRY

from libs.testing.wait import eventually
from services.broker_gateway import gateway
from services.broker_gateway.domain.model import BrokerOrder, CanceledAll
from services.broker_gateway.gateway import MAX_FAILURES, AccountWorker, Held, Timings
from tests.unit.gateway_doubles import (
    CLOCK,
    Delivery,
    broker,
    filled_position,
    offer,
    outbox_into,
    said_fills,
    submit,
    worker,
)


async def test_a_flatten_with_a_closing_order_the_contract_refuses_publishes_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The close-all placed a closing order the contract cannot carry (here
    an option symbol it refuses) beside a good one, and refused a position.
    The flatten failed on it after recording the good one's acceptance, which
    marks the flatten done: its retry was a repeat, and the acceptance,
    ``ClosingOrdersPlaced`` and the refusal were never published. The order
    is now said and left out; the rest is published at once."""
    from libs.contract.events import FlattenAccount, FlattenAccountPayload
    from services.broker_gateway.domain.model import ClosedAll, CloseRefused

    w = worker([1000.0], [])
    closing = [
        BrokerOrder(
            f"c-{n}", f"close-{n}", symbol, "sell", Decimal(1), Decimal(0), None, "accepted"
        )
        for n, symbol in enumerate(["AAPL", "O:SPY241340P00720000"])
    ]
    published: list[Any] = []

    async def cancel_all() -> CanceledAll:
        return CanceledAll()

    async def close_all() -> ClosedAll:
        return ClosedAll(tuple(closing), (CloseRefused("MSFT", "halted", "403", entry=2),))

    async def publish(events: list[Any]) -> None:
        published.extend(events)

    w.port = cast(Any, SimpleNamespace(cancel_all=cancel_all, close_all=close_all, connected=True))
    w.outbox = cast(Any, SimpleNamespace(publish=publish))
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account="acct", reason="breaker"), source="test", clock=CLOCK
    )
    with caplog.at_level("ERROR"):
        await w.handle(Held(flatten, cast(Msg, Delivery(1)), 1))
    assert [e.type for e in published] == [
        "OrderAccepted",
        "ClosingOrdersPlaced",
        "OrderRejected",
    ]
    assert "cannot take in its closing order c-1 (sell 1 O:SPY241340P00720000)" in caplog.text
    await w.handle(Held(flatten, cast(Msg, Delivery(1, 2)), 1))  # a copy: a repeat
    assert len(published) == 3


async def test_a_close_all_whose_answer_cannot_be_read_is_given_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker answers the close-all (and may place closing orders each
    time) with what the adapter cannot parse. It was tried for ever, every
    attempt canceling the closing orders of the one before and placing new
    ones, the account's commands held behind it. It is tried
    CLOSE_ALL_ATTEMPTS times, said; the broker, asked for the closing orders
    it placed, has none: the flatten is given up, the account reconciled and
    checked."""
    from libs.contract.events import FlattenAccount, FlattenAccountPayload
    from services.broker_gateway.errors import AnswerUnread

    w = worker([1000.0], [], timings=Timings(retry_initial_s=0.001))
    close_alls: list[int] = []

    async def cancel_all() -> CanceledAll:
        return CanceledAll()

    async def close_all() -> None:
        close_alls.append(1)
        raise AnswerUnread("acct: malformed answer: 1 validation error for Order")

    async def orders_created(after_ns: int, until_ns: int) -> list[BrokerOrder]:
        return []

    w.port = broker(cancel_all=cancel_all, close_all=close_all, orders_created=orders_created)
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account="acct", reason="breaker"), source="test", clock=CLOCK
    )
    with caplog.at_level("ERROR"):
        async with asyncio.timeout(10):
            await w.handle(Held(flatten, cast(Msg, Delivery(1)), 1))
    assert len(close_alls) == gateway.CLOSE_ALL_ATTEMPTS
    assert "the broker's answer to its close-all was not read 3 times" in caplog.text
    assert "given up: it may have placed closing orders" in caplog.text
    assert w._reconcile_wanted.is_set()
    assert w._reconcile_everything
    assert w._check_wanted
    assert w.tracker._flattening is None  # unknown orders are nobody's again


async def test_a_flatten_dead_lettered_after_its_close_all_was_sent_is_forgotten() -> None:
    """A flatten whose close-all the broker answers with an error of its own
    (a 403 the adapter maps to OrderRefused) fails MAX_FAILURES times, each
    run after the first looking for an earlier one's closing orders (none),
    and is dead-lettered. When this gateway sent its close-all stayed in
    _close_alls_sent for the life of the process, one entry per such
    flatten: it is forgotten once the flatten is not coming again."""
    from libs.contract.events import FlattenAccount, FlattenAccountPayload
    from services.broker_gateway.errors import OrderRefused

    dead: list[str] = []
    w = worker([1000.0], dead)
    close_alls: list[int] = []
    windows: list[tuple[int, int]] = []

    async def cancel_all() -> CanceledAll:
        return CanceledAll()

    async def close_all() -> None:
        close_alls.append(1)
        raise OrderRefused("forbidden", code="40310000")

    async def orders_created(after_ns: int, until_ns: int) -> list[BrokerOrder]:
        windows.append((after_ns, until_ns))
        return []

    w.port = broker(cancel_all=cancel_all, close_all=close_all, orders_created=orders_created)
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account="acct", reason="breaker"), source="test", clock=CLOCK
    )
    runner = asyncio.create_task(w.run_commands())
    try:
        for attempt in range(1, MAX_FAILURES + 1):
            msg = Delivery(3, delivered=attempt)
            await offer(w, flatten, msg)
            await eventually(lambda msg=msg: bool(msg.answers), timeout=5)  # type: ignore[misc]
            assert msg.answers == (["ack"] if attempt == MAX_FAILURES else ["nak"])
            if attempt < MAX_FAILURES:
                assert flatten.id in w._close_alls_sent, "the next run looks for its orders"
        await eventually(lambda: not w._held, timeout=5)
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    assert dead == ["OrderRefused: forbidden"]
    assert len(close_alls) == MAX_FAILURES
    assert len(windows) == MAX_FAILURES - 1
    assert w._close_alls_sent == {}


async def test_the_closing_orders_of_a_close_all_whose_answer_was_not_read_are_the_flatten_s() -> (
    None
):
    """The close-all's answer is not read (three times) but the broker acted
    on it: it placed a closing sell of s's 10 AAPL, 4 filled so far. The
    flatten gave up and left the order to the reconciliation, which took it in
    as nobody's: its fills booked to no strategy, s still long 10 in its own
    books (the gate's and the read model's) while the account was long 6. Now
    the flatten asks the broker for the orders its close-all placed and takes
    them in as its closing orders, as an answer's: the fill is booked to s,
    ClosingOrdersPlaced published; the reconciliation after finds nothing new."""
    from libs.contract.events import FlattenAccount, FlattenAccountPayload
    from services.broker_gateway.domain.model import BrokerFill, BrokerPosition
    from services.broker_gateway.errors import AnswerUnread

    w = worker([1000.0], [], timings=Timings(retry_initial_s=0.001))
    filled_position(w, 10)
    closing = BrokerOrder(
        "c-1", "close-1", "AAPL", "sell", Decimal(10), Decimal(4), Decimal(101), "partially_filled"
    )
    fill = BrokerFill(
        "c-1", "close-1", "AAPL", "sell", Decimal(4), Decimal(101), Decimal(4), Decimal(6), 1
    )
    published: list[Any] = []

    async def cancel_all() -> CanceledAll:
        return CanceledAll()

    async def close_all() -> None:
        raise AnswerUnread("acct: no answer to close_all within 5s")

    async def orders_created(after_ns: int, until_ns: int) -> list[BrokerOrder]:
        return [closing]

    async def open_orders() -> list[BrokerOrder]:
        return [closing]

    async def get_order(**ids: str | None) -> BrokerOrder:
        return closing

    async def order_fills(order: BrokerOrder) -> list[BrokerFill]:
        return [fill]

    async def positions() -> list[BrokerPosition]:
        return [BrokerPosition("AAPL", Decimal(6), Decimal(100))]

    w.port = broker(
        cancel_all=cancel_all,
        close_all=close_all,
        orders_created=orders_created,
        open_orders=open_orders,
        get_order=get_order,
        order_fills=order_fills,
        positions=positions,
    )
    w.outbox = outbox_into(published)
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account="acct", reason="breaker"), source="test", clock=CLOCK
    )
    async with asyncio.timeout(10):
        await w.handle(Held(flatten, cast(Msg, Delivery(1)), 1))
        await w.reconcile()  # the reconnection's, or the give-up's
    fills = [(e.payload.broker_order_id, e.payload.strategy) for e in said_fills(published)]
    assert fills == [("c-1", "s")]
    assert (w.tracker.position("AAPL", "s"), w.tracker.position("AAPL")) == (
        Decimal(6),
        Decimal(0),
    )
    [placed] = [e for e in published if e.type == "ClosingOrdersPlaced"]
    assert placed.causation_id == flatten.id
    assert [(o.leaves_quantity, o.strategy) for o in placed.payload.orders] == [(Decimal(6), "s")]
    assert w.tracker.flattened(flatten.id)


async def test_a_flatten_refused_only_an_expired_option_contract_is_done(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After its expiry no venue closes a contract (the paper broker refuses
    it, 422 "not tradable"): its position is the broker's to settle. Each
    flatten counted it as left open, outcome ``incomplete`` and the refused
    positions metric, for ever after, though no operator could clear it. A
    refusal of an expired contract is now said as awaiting settlement (its
    ``OrderRejected`` still published); the flatten's other refusals count
    as before."""
    from libs.contract.events import FlattenAccount, FlattenAccountPayload
    from services.broker_gateway.domain.model import ClosedAll, CloseRefused

    expired, live = "O:SPY241220P00720000", "O:SPY991217P00720000"
    account = f"expiry-{uuid.uuid4().hex[:8]}"

    def sample(name: str, **labels: str) -> float:
        value = REGISTRY.get_sample_value(name, {"account": account, **labels})
        return 0.0 if value is None else float(value)

    async def flatten(refused: tuple[CloseRefused, ...]) -> list[Any]:
        w = worker([1000.0], [], account=account)
        published: list[Any] = []

        async def cancel_all() -> CanceledAll:
            return CanceledAll()

        async def close_all() -> ClosedAll:
            return ClosedAll((), refused)

        async def publish(events: list[Any]) -> None:
            published.extend(events)

        w.port = cast(
            Any, SimpleNamespace(cancel_all=cancel_all, close_all=close_all, connected=True)
        )
        w.outbox = cast(Any, SimpleNamespace(publish=publish))
        command = FlattenAccount.create(
            FlattenAccountPayload(account=account, reason="breaker"), source="test", clock=CLOCK
        )
        await w.handle(Held(command, cast(Msg, Delivery(1)), 1))
        return published

    not_tradable = f"asset {expired} is not tradable: it expired at the close of 2024-12-20"
    with caplog.at_level("WARNING"):
        published = await flatten((CloseRefused(expired, not_tradable, "422", entry=0),))
    assert [e.type for e in published] == ["OrderRejected"]
    assert sample("tradebus_broker_commands_total", type="FlattenAccount", outcome="flattened") == 1
    assert (
        sample("tradebus_broker_commands_total", type="FlattenAccount", outcome="incomplete") == 0
    )
    assert sample("tradebus_broker_flatten_refused_positions_total") == 0
    assert f"{expired} expired at the close of 2024-12-20" in caplog.text
    assert "awaiting the broker's settlement" in caplog.text

    # A contract not yet expired, refused beside it: left open, as before.
    await flatten(
        (
            CloseRefused(expired, not_tradable, "422", entry=0),
            CloseRefused(live, "halted", "403", entry=1),
        )
    )
    assert (
        sample("tradebus_broker_commands_total", type="FlattenAccount", outcome="incomplete") == 1
    )
    assert sample("tradebus_broker_flatten_refused_positions_total") == 1


async def test_a_flatten_made_after_the_start_and_delivered_again_asks_for_no_window() -> None:
    """A flatten handed back for want of room comes again as a second
    delivery. Made after this gateway started, no gateway before it can have
    run it, yet its recovery window (from its making to the start) was
    asked of the broker, ending before it began (a broker may refuse
    ``after`` past ``until``, failing the flatten each time). One made before
    the start is still looked for."""
    from libs.contract.events import FlattenAccount, FlattenAccountPayload
    from libs.strategy.testing import At
    from services.broker_gateway.domain.model import ClosedAll

    asked: list[tuple[int, int]] = []

    async def orders_created(after_ns: int, until_ns: int) -> list[BrokerOrder]:
        asked.append((after_ns, until_ns))
        return []

    async def cancel_all() -> CanceledAll:
        return CanceledAll()

    async def close_all() -> ClosedAll:
        return ClosedAll((), ())

    async def publish(events: list[Any]) -> None:
        pass

    async def flatten(made_ns: int) -> None:
        w = worker([1000.0], [])
        w.port = cast(
            Any,
            SimpleNamespace(
                cancel_all=cancel_all,
                close_all=close_all,
                orders_created=orders_created,
                connected=True,
            ),
        )
        w.outbox = cast(Any, SimpleNamespace(publish=publish))
        command = FlattenAccount.create(
            FlattenAccountPayload(account="acct", reason="breaker"), source="t", clock=At(made_ns)
        )
        await w.handle(Held(command, cast(Msg, Delivery(1, 2)), 1))

    minute = 60 * 10**9
    await flatten(CLOCK.now_ns() + minute)  # made after the worker starts
    assert asked == []
    await flatten(CLOCK.now_ns() - minute)  # made before it: a crash may have cut it
    assert len(asked) == 1
    assert asked[0][0] < asked[0][1]


def working_order(w: AccountWorker, broker_order_id: str, created_ns: int) -> BrokerOrder:
    """s's limit buy of 3 AAPL at 90, on the opening auction, acknowledged as
    ``broker_order_id`` and working (nothing filled): the order as the broker
    lists it."""
    from libs.contract.events import OrderAccepted, OrderAcceptedPayload

    command = submit()
    command = command.model_copy(
        update={
            "payload": command.payload.model_copy(
                update={
                    "account": w.account,
                    "quantity": Decimal(3),
                    "order_type": "limit",
                    "limit_price": Decimal(90),
                    "time_in_force": "opg",
                }
            )
        }
    )
    oid = command.payload.order_id
    w.tracker.evolve(command)
    accepted = OrderAcceptedPayload(
        order_id=oid, account=w.account, broker_order_id=broker_order_id, symbol="AAPL"
    )
    w.tracker.evolve(OrderAccepted.create(accepted, source="test", clock=CLOCK, cause=command))
    return BrokerOrder(
        broker_order_id,
        str(oid),
        "AAPL",
        "buy",
        Decimal(3),
        Decimal(0),
        None,
        "accepted",
        order_type="limit",
        limit_price=Decimal(90),
        created_ns=created_ns,
    )


async def test_a_recovered_flatten_reports_the_orders_its_cancel_all_left_working() -> None:
    """A flatten delivered again after a restart: its close-all was sent
    before and its answer lost. Its closing order (c-1, s's 10 AAPL sold) is
    found at the broker, but so is s's opg buy o-1, placed before it, which
    the cancel-all refused (locked 09:28-09:30) and which is still working:
    it may fill at the open, and the account is not flat. With no cancel-all
    answer to read it was not seen, and the flatten said ``flattened``. It
    is now published as the normal path does (an OrderRejected caused by the
    flatten, under an id derived from it and o-1, the order kept working)
    and the flatten is ``incomplete``. An order placed (by hand) after the
    closing order, which no cancel-all before it can have left, is not its."""
    from libs.contract.codec import derived_id
    from libs.contract.events import FlattenAccount, FlattenAccountPayload
    from services.broker_gateway.domain.model import BrokerFill, BrokerPosition

    w = worker([1000.0], [], account=f"recover-{uuid.uuid4().hex[:8]}")
    filled_position(w, 10)
    opg = working_order(w, "o-1", created_ns=1_000)
    closing = BrokerOrder(
        "c-1",
        "close-1",
        "AAPL",
        "sell",
        Decimal(10),
        Decimal(10),
        Decimal(101),
        "filled",
        created_ns=2_000,
    )
    by_hand = BrokerOrder(
        "h-1",
        "by-hand",
        "MSFT",
        "buy",
        Decimal(1),
        Decimal(0),
        None,
        "accepted",
        order_type="limit",
        limit_price=Decimal(300),
        created_ns=3_000,
    )
    fill = BrokerFill(
        "c-1", "close-1", "AAPL", "sell", Decimal(10), Decimal(101), Decimal(10), Decimal(0), 1
    )
    published: list[Any] = []

    async def orders_created(after_ns: int, until_ns: int) -> list[BrokerOrder]:
        return [closing]

    async def positions() -> list[BrokerPosition]:
        return []

    async def open_orders() -> list[BrokerOrder]:
        return [opg, by_hand]

    async def order_fills(order: BrokerOrder) -> list[BrokerFill]:
        return [fill]

    w.port = broker(
        orders_created=orders_created,
        positions=positions,
        open_orders=open_orders,
        order_fills=order_fills,
    )
    w.outbox = outbox_into(published)
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account=w.account, reason="breaker"), source="test", clock=CLOCK
    )
    async with asyncio.timeout(10):
        # Its second delivery: the gateway before a restart was running it.
        await w.handle(Held(flatten, cast(Msg, Delivery(1, 2)), 1))
    assert [(e.payload.broker_order_id, e.payload.strategy) for e in said_fills(published)] == [
        ("c-1", "s")
    ]
    [rejected] = [e for e in published if e.type == "OrderRejected"]
    assert rejected.causation_id == flatten.id
    assert rejected.payload.order_id == derived_id(
        "broker.close.working", w.account, flatten.id, "o-1"
    )
    assert "did not cancel order o-1 (buy 3 AAPL)" in rejected.payload.reason
    t = w.tracker.find(opg)
    assert t is not None
    assert t.terminal is None, "still working: its fills are published if it fills"
    assert w.tracker.flattened(flatten.id)
    outcomes = {
        outcome: REGISTRY.get_sample_value(
            "tradebus_broker_commands_total",
            {"account": w.account, "type": "FlattenAccount", "outcome": outcome},
        )
        for outcome in ("flattened", "incomplete")
    }
    assert outcomes == {"flattened": None, "incomplete": 1}
    # Counted as an order a flatten left working (the board's "Positions or
    # orders a flatten left open"), not as a position.
    assert [
        REGISTRY.get_sample_value(f"tradebus_broker_flatten_{what}_total", {"account": w.account})
        for what in ("working_orders", "refused_positions")
    ] == [1, 0]
