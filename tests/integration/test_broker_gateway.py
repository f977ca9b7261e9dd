"""The broker-gateway with the paper broker and the recorder, each a real
process: acks, fills, partials, duplicates and rejects; the gateway killed
mid-stream; the broker lost and a flatten held until it is back; its
command consumer deleted under it. The stack and the helpers:
tests/integration/broker_gateway_stack.py."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from typing import Any

import orjson
from nats.js import api as js_api

from libs.bus.client import Bus
from libs.contract.events import (
    CancelOrder,
    CancelOrderPayload,
    FlattenAccount,
    FlattenAccountPayload,
)
from libs.testing.procs import ServiceProcess
from libs.testing.wait import eventually
from tests.integration import broker_gateway_stack
from tests.integration.broker_gateway_stack import (
    ACCOUNT,
    CLOCK,
    HEARTBEAT_INTERVAL_S,
    HEARTBEAT_TIMEOUT_S,
    Ago,
    D,
    Stack,
    again,
    broker_connected,
    broker_orders,
    broker_request,
    for_order,
    positions_cli,
    recorded,
    signal_for,
    submit,
    trade,
    up,
)

# The stack's fixture, registered in this module.
stack = broker_gateway_stack.stack


async def test_acks_fills_partials_duplicates_rejects_and_positions(stack: Stack, bus: Bus) -> None:
    _, _, gateway = await up(stack)
    db = stack.database_url
    await bus.publish_many([trade("AAPL", "100"), trade("MSFT", "200")])
    sig = signal_for("AAPL")
    buy_aapl = submit(sig, "AAPL", "buy", "50")
    big_msft = submit(sig, "MSFT", "buy", "250")
    halted = submit(sig, "HALT", "buy", "1")
    await bus.publish_many([sig, buy_aapl, big_msft, halted])

    # Ack and fill, each caused by the command and correlated to the signal.
    fills = await eventually(
        lambda: for_order(db, "FillReceived", buy_aapl.payload.order_id),
        timeout=20,
        message=stack.logs(),
    )
    [ack] = await for_order(db, "OrderAccepted", buy_aapl.payload.order_id)
    [fill] = fills
    for event in (ack, fill):
        assert event["causation_id"] == buy_aapl.id
        assert event["correlation_id"] == sig.id
        assert event["source"].startswith("broker-gateway/")
    assert ack["seq"] < fill["seq"]
    p = fill["payload"]
    assert (p["quantity"], p["price"], p["cumulative_quantity"], p["leaves_quantity"]) == (
        "50",
        "100",
        "50",
        "0",
    )
    assert (p["status"], p["strategy"], p["side"]) == ("complete", "s1", "buy")

    # The big order: 100 now, then 100 and 50 as MSFT trades.
    await eventually(lambda: for_order(db, "FillReceived", big_msft.payload.order_id), timeout=20)
    await bus.publish(trade("MSFT", "201"))
    await eventually(
        lambda: _count(for_order(db, "FillReceived", big_msft.payload.order_id), 2), timeout=20
    )
    await bus.publish(trade("MSFT", "202"))
    partials = await eventually(
        lambda: _count(for_order(db, "FillReceived", big_msft.payload.order_id), 3), timeout=20
    )
    assert [
        (
            f["payload"]["quantity"],
            f["payload"]["price"],
            f["payload"]["cumulative_quantity"],
            f["payload"]["leaves_quantity"],
            f["payload"]["status"],
        )
        for f in partials
    ] == [
        ("100", "200", "100", "150", "partial"),
        ("100", "201", "200", "50", "partial"),
        ("50", "202", "250", "0", "complete"),
    ]
    assert {f["causation_id"] for f in partials} == {big_msft.id}

    # The refused order: rejected with the broker's code, caused by its command.
    [rejected] = await eventually(
        lambda: for_order(db, "OrderRejected", halted.payload.order_id), timeout=20
    )
    assert rejected["payload"]["code"] == "42210000"
    assert "not tradable" in rejected["payload"]["reason"]
    assert rejected["causation_id"] == halted.id
    # Accepted, then rejected by the venue: both published, in that order.
    luld = submit(sig, "LULD", "buy", "1")
    await bus.publish(luld)
    [venue_rejected] = await eventually(
        lambda: for_order(db, "OrderRejected", luld.payload.order_id), timeout=20
    )
    [luld_ack] = await for_order(db, "OrderAccepted", luld.payload.order_id)
    assert luld_ack["seq"] < venue_rejected["seq"]
    assert venue_rejected["causation_id"] == luld.id

    # A duplicate SubmitOrder (new message id, same order id): one order at the broker.
    handled = gateway.health()["accounts"][ACCOUNT]["commands"]  # type: ignore[index]
    await bus.publish(again(buy_aapl))
    await eventually(
        lambda: gateway.health()["accounts"][ACCOUNT]["commands"] > handled,  # type: ignore[index]
        timeout=20,
    )
    orders = await broker_orders(stack.broker_port)
    assert [o["client_order_id"] for o in orders].count(str(buy_aapl.payload.order_id)) == 1
    assert len(orders) == 3  # AAPL, MSFT, LULD (rejected); the refused one was never created
    assert len(await for_order(db, "OrderAccepted", buy_aapl.payload.order_id)) == 1
    assert len(await for_order(db, "FillReceived", buy_aapl.payload.order_id)) == 1

    # A resting order canceled by a CancelOrder: the cancel is caused by that command.
    resting = submit(sig, "AAPL", "buy", "5", order_type="limit", limit_price=D(90))
    await bus.publish(resting)
    await eventually(lambda: for_order(db, "OrderAccepted", resting.payload.order_id), timeout=20)
    cancel = CancelOrder.create(
        CancelOrderPayload(order_id=resting.payload.order_id, account=ACCOUNT, reason="test"),
        source="test/risk-gate",
        clock=CLOCK,
        cause=resting,
    )
    await bus.publish(cancel)
    [canceled] = await eventually(
        lambda: for_order(db, "OrderCanceled", resting.payload.order_id), timeout=20
    )
    assert canceled["causation_id"] == cancel.id
    # A command that sat too long (older than max_submit_delay_s) is not sent.
    stale = submit(sig, "AAPL", "buy", "1", clock=Ago(120))
    await bus.publish(stale)
    [refused] = await eventually(
        lambda: for_order(db, "OrderRejected", stale.payload.order_id), timeout=20
    )
    assert (refused["payload"]["code"], refused["causation_id"]) == ("stale", stale.id)
    assert str(stale.payload.order_id) not in {
        o["client_order_id"] for o in await broker_orders(stack.broker_port)
    }

    # Realized P&L: sell 20 AAPL at 110.
    await bus.publish(trade("AAPL", "110"))
    # A limit at 110: filled at 110 whether the broker has seen that trade yet or not.
    sell = submit(sig, "AAPL", "sell", "20", order_type="limit", limit_price=D(110))
    await bus.publish(sell)
    await eventually(lambda: for_order(db, "FillReceived", sell.payload.order_id), timeout=20)
    await eventually(lambda: _marked(db, "AAPL", "110"), timeout=20)
    by_symbol = {r["symbol"]: r for r in positions_cli(db)}
    assert by_symbol["AAPL"] | {"last_fill_ns": 0} == {
        "account": ACCOUNT,
        "strategy": "s1",
        "symbol": "AAPL",
        "quantity": "30",
        "avg_price": "100",
        "realized_pnl": "200",
        "last_price": "110",
        "unrealized_pnl": "300",
        "fills": 2,
        "last_fill_ns": 0,
    }
    msft = by_symbol["MSFT"]
    # (100*200 + 100*201 + 50*202) / 250 = 200.8; marked at 202.
    assert (msft["quantity"], msft["avg_price"], msft["unrealized_pnl"]) == ("250", "200.8", "300")
    # SIGTERM stops each of them cleanly.
    for proc in reversed(stack.procs):
        assert proc.terminate() == 0, proc.log_text()[-2000:]


async def _count(rows_: Any, n: int) -> list[dict[str, Any]] | None:
    got = await rows_
    return got if len(got) >= n else None


async def _marked(database_url: str, symbol: str, price: str) -> bool:
    trades = await recorded(database_url, "TradePrinted")
    return any(t["payload"]["symbol"] == symbol and t["payload"]["price"] == price for t in trades)


async def test_gateway_killed_mid_stream_loses_nothing_and_duplicates_nothing(
    stack: Stack, bus: Bus
) -> None:
    _, _, gateway = await up(stack)
    db = stack.database_url
    await bus.publish(trade("SPY", "500"))
    sig = signal_for("SPY")
    # A limit order resting at the broker: it will fill while the gateway is dead.
    resting = submit(sig, "SPY", "buy", "7", order_type="limit", limit_price=D(499))
    await bus.publish_many([sig, resting])
    await eventually(lambda: for_order(db, "OrderAccepted", resting.payload.order_id), timeout=20)
    commands = [submit(sig, "SPY", "buy", "1") for _ in range(100)]
    await bus.publish_many(commands)
    # Kill it while it works through them.
    await eventually(lambda: _handled(gateway, 4), timeout=20, interval=0.005)
    gateway.kill()
    done_before = len(await broker_orders(stack.broker_port))
    assert done_before < len(commands) + 1, "the gateway finished before it was killed"
    await bus.publish(trade("SPY", "498.5"))  # fills the resting order, nobody listening
    await eventually(
        lambda: _positions_are(stack.broker_port, {"SPY": str(done_before + 6)}), timeout=20
    )
    stack.gateway()
    ids = {str(c.payload.order_id) for c in commands}

    async def all_filled() -> bool:
        fills = await recorded(db, "FillReceived")
        return {f["payload"]["order_id"] for f in fills} >= ids | {str(resting.payload.order_id)}

    await eventually(all_filled, timeout=40)
    orders = await broker_orders(stack.broker_port)
    everything = ids | {str(resting.payload.order_id)}
    assert sorted(o["client_order_id"] for o in orders) == sorted(everything)  # each once
    for type_ in ("OrderAccepted", "FillReceived"):
        events = await recorded(db, type_)
        per_order = [e["payload"]["order_id"] for e in events]
        assert sorted(per_order) == sorted(everything), type_
    # Every command got its broker answer with the right cause, the missed fill too.
    causes = {e["causation_id"] for e in await recorded(db, "OrderAccepted")}
    assert causes == {c.id for c in [*commands, resting]}
    [missed] = await for_order(db, "FillReceived", resting.payload.order_id)
    assert missed["causation_id"] == resting.id
    # The limit at 499, crossed by a trade at 498.5: filled at the better price.
    assert (missed["payload"]["quantity"], missed["payload"]["price"]) == ("7", "498.5")


def _handled(gateway: ServiceProcess, n: int) -> bool:
    health = gateway.health()
    return bool(health and health["accounts"][ACCOUNT]["commands"] >= n)


@contextlib.contextmanager
def _stopped(proc: ServiceProcess) -> Iterator[None]:
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.proc.send_signal(signal.SIGCONT)


async def test_broker_loss_is_reported_in_time_and_flatten_waits_for_it(
    stack: Stack, bus: Bus
) -> None:
    _, paper, gateway = await up(stack)
    db = stack.database_url
    await bus.publish_many([trade("AAPL", "100"), trade("MSFT", "50")])
    sig1, sig2 = signal_for("AAPL", "s1"), signal_for("MSFT", "s2")
    long_aapl = submit(sig1, "AAPL", "buy", "10", "s1")
    short_msft = submit(sig2, "MSFT", "sell", "5", "s2")
    await bus.publish_many([sig1, sig2, long_aapl, short_msft])
    await eventually(
        lambda: _positions_are(stack.broker_port, {"AAPL": "10", "MSFT": "-5"}), timeout=20
    )

    conn = await bus.js.subscribe(
        f"broker.conn.{ACCOUNT}", ordered_consumer=True, deliver_policy=js_api.DeliverPolicy.NEW
    )
    states: list[tuple[str, float]] = []

    async def watch() -> None:
        async for msg in conn.messages:
            states.append((orjson.loads(msg.data)["payload"]["state"], time.monotonic()))

    watcher = asyncio.create_task(watch())
    try:
        # A hung broker (SIGSTOP: the socket stays open, nothing answers).
        with _stopped(paper):
            hung_at = time.monotonic()
            await eventually(lambda: _state_seen(states, "disconnected"), timeout=10)
            detected = _state_seen(states, "disconnected") - hung_at
        limit = HEARTBEAT_INTERVAL_S + HEARTBEAT_TIMEOUT_S
        assert detected <= limit + 1.0, f"hang noticed after {detected:.2f}s (limit {limit}s)"
        await eventually(
            lambda: _last_state(states) == "connected", timeout=20, message=stack.logs()
        )

        # A dead broker: noticed at once; a flatten is held until it is back.
        states.clear()
        paper.kill()
        await eventually(lambda: _state_seen(states, "reconnecting"), timeout=10)
        flatten = FlattenAccount.create(
            FlattenAccountPayload(account=ACCOUNT, reason="connection_lost"),
            source="test/risk-gate",
            clock=CLOCK,
        )
        await bus.publish(flatten)
        await eventually(lambda: _gateway_took_it(gateway), timeout=10)
        assert not broker_connected(gateway)
        stack.paper()  # back, on the same port, with its journal
        await eventually(
            lambda: _last_state(states) == "connected", timeout=20, message=stack.logs()
        )
        await eventually(
            lambda: _positions_are(stack.broker_port, {}), timeout=20, message=stack.logs()
        )
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await conn.unsubscribe()
    assert [s for s, _ in states] == ["disconnected", "reconnecting", "connected"]

    # The closing fills are caused by the flatten and booked to each strategy.
    async def closing_fills() -> list[dict[str, Any]]:
        fills = await recorded(db, "FillReceived")
        return [f for f in fills if f["causation_id"] == flatten.id]

    closing = await eventually(lambda: _count(closing_fills(), 2), timeout=20)
    assert sorted(
        (
            f["payload"]["strategy"],
            f["payload"]["symbol"],
            f["payload"]["side"],
            f["payload"]["quantity"],
        )
        for f in closing
    ) == [("s1", "AAPL", "sell", "10"), ("s2", "MSFT", "buy", "5")]
    assert {f["correlation_id"] for f in closing} == {flatten.id}
    flat = {(r["strategy"], r["symbol"]): r["quantity"] for r in positions_cli(db)}
    assert flat == {("s1", "AAPL"): "0", ("s2", "MSFT"): "0"}


def _state_seen(states: list[tuple[str, float]], state: str) -> float:
    return next((t for s, t in states if s == state), 0.0)


def _last_state(states: list[tuple[str, float]]) -> str | None:
    return states[-1][0] if states else None


def _gateway_took_it(gateway: ServiceProcess) -> bool:
    # It tried the flatten's first call and found the broker away: the command is held.
    return (
        'tradebus_broker_call_errors_total{account="paper",call="cancel_all",error="unavailable"}'
        in gateway.metrics()
    )


async def _positions_are(port: int, expected: dict[str, str]) -> bool:
    body = await broker_request(port, "GET", "/v2/positions")
    return {p["symbol"]: p["qty"] for p in body} == expected


async def test_a_command_consumer_deleted_under_the_gateway_is_made_again(
    stack: Stack, bus: Bus
) -> None:
    """Its pull requests go unanswered, so the gateway looks, finds its consumer
    gone and makes it again: the next command still reaches the broker."""
    _, _, gateway = await up(stack)
    db = stack.database_url
    await bus.publish(trade("AAPL", "100"))
    await bus.js.delete_consumer("TRADEBUS", "broker-gateway")
    sig = signal_for("AAPL")
    buy = submit(sig, "AAPL", "buy", "5")
    await bus.publish_many([sig, buy])
    await eventually(
        lambda: for_order(db, "FillReceived", buy.payload.order_id),
        timeout=30,
        message=stack.logs(),
    )
    assert "command consumer broker-gateway is gone; recreating it" in gateway.log_text()
    assert (await bus.js.consumer_info("TRADEBUS", "broker-gateway")).config.durable_name
