"""The risk-gate as a real process deciding intents: a typo strategy's caps, a
redelivered and a malformed intent, a lone intent, an option priced by its
quote mark, an intent the server sent to another gate."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from libs.bus.client import Bus, Outgoing
from libs.contract.envelope import Event
from libs.contract.events import EVENT_ADAPTER, OrderIntentCreated
from libs.testing.wait import eventually
from tests.integration import risk_gate_stack
from tests.integration.risk_gate_stack import (
    OPTION,
    D,
    Stack,
    by_intent,
    decision_for,
    mark,
    option_intent,
    quote_mark,
    recorded,
    signal_and_intent,
    submit_intent,
    wait_recorded,
)

# The risk-gate stack's fixtures, registered in this module.
limits_file = risk_gate_stack.limits_file
stack = risk_gate_stack.stack


async def test_typo_strategy_never_gets_an_order_past_its_caps(stack: Stack, bus: Bus) -> None:
    db = stack.database_url
    await bus.publish(mark("AAPL", "100"))
    meant = await submit_intent(bus, "typo", 10)
    typo = await submit_intent(bus, "typo", 1000)  # the parameter typo: 100x the size
    # ... and an order loop: the same buy 40 times as fast as it can.
    loop: list[Event] = []
    loop_ids = []
    for _ in range(40):
        sig, intent = signal_and_intent("typo", 10)
        loop += [sig, intent]
        loop_ids.append(intent.id)
    await bus.publish_many(loop)
    decisions = await wait_recorded(db, "RiskDecisionMade", 42)

    per_intent = by_intent(decisions)
    assert set(per_intent) == {meant, typo, *loop_ids}
    assert all(len(ds) == 1 for ds in per_intent.values()), "one decision per intent"
    reasons = {i: ds[0].payload.reason.value for i, ds in per_intent.items()}
    assert reasons[meant] == "accepted"
    assert reasons[typo] == "max_order_quantity"
    loop_reasons = [reasons[i] for i in loop_ids]
    assert "strategy_rate_limit" in loop_reasons
    assert set(loop_reasons) <= {"accepted", "strategy_rate_limit", "max_strategy_position"}
    accepted = {i for i, r in reasons.items() if r == "accepted"}
    assert 2 <= len(accepted) <= 20  # 10 each, a 200 position cap

    orders = await recorded(db, "SubmitOrder")
    assert {o.payload.intent_id for o in orders} == accepted, "no order for a denied intent"
    assert len(orders) == len(accepted), "one order per accepted intent"
    assert sum(o.payload.quantity for o in orders) <= D(200)
    for o in orders:
        (d,) = per_intent[o.payload.intent_id]
        assert o.causation_id == d.id
        assert o.payload.order_id == d.payload.order_id
        assert d.causation_id == o.payload.intent_id
    denials = [d for d in decisions if d.payload.decision == "denied"]
    assert all(d.payload.detail for d in denials), "every denial says why"

    # The same intent again under a new message id (a redelivery past the
    # duplicate window): recorded again, decided once, ordered once.
    (original,) = [e for e in await recorded(db, "OrderIntentCreated") if e.id == meant]
    await bus.publish_raw(Outgoing("strategy.intent.typo", _encode(original), uuid.uuid4().hex))
    await eventually(
        lambda: "tradebus_risk_duplicate_intents_total 1.0" in stack.gate.metrics(),
        timeout=10,
        message="the gate saw the redelivered intent",
    )
    # A malformed intent is dead-lettered and does not stop the gate.
    await bus.publish_raw(
        Outgoing("strategy.intent.typo", b'{"type": "OrderIntentCreated"}', "bad-1")
    )
    letters = await wait_recorded(db, "MessageDeadLettered", 2)
    assert {dl.payload.service for dl in letters} == {"risk-gate", "recorder"}
    after = await submit_intent(bus, "good", 1)
    assert (await decision_for(db, after)).payload.decision == "accepted"
    assert len(by_intent(await recorded(db, "RiskDecisionMade"))[meant]) == 1
    assert len([o for o in await recorded(db, "SubmitOrder") if o.payload.intent_id == meant]) == 1
    metrics = stack.gate.metrics()
    assert 'tradebus_orders_denied_total{reason="max_order_quantity"} 1.0' in metrics
    # Counted where the boards look for every service's dead letters.
    assert 'tradebus_dead_letters_total{reason="invalid_event",service="risk-gate"} 1.0' in metrics


def _encode(event: Event) -> bytes:
    return event.model_dump_json().encode()


async def test_a_lone_intent_is_decided_at_once(stack: Stack, bus: Bus) -> None:
    """No batching delay: an intent arriving alone is decided within milliseconds
    (a fetch that waits for a full batch would hold it for the fetch timeout)."""
    await bus.publish(mark("AAPL", "100"))
    seen: dict[uuid.UUID, float] = {}

    async def on_decision(msg: Any) -> None:
        event: Any = EVENT_ADAPTER.validate_json(msg.data)
        seen[event.payload.intent_id] = time.perf_counter()

    sub = await bus.nc.subscribe("risk.decision.good.>", cb=on_decision)
    latencies = []
    try:
        for k in range(10):
            sig, intent = signal_and_intent("good", 1, side="buy" if k % 2 else "sell")
            await bus.publish(sig)
            sent = time.perf_counter()
            await bus.publish(intent)
            await eventually(lambda i=intent.id: i in seen, timeout=10)  # type: ignore[misc]
            latencies.append(seen[intent.id] - sent)
    finally:
        await sub.unsubscribe()
    latencies.sort()
    assert latencies[len(latencies) // 2] < 0.05, latencies

    # Live, the gate's consumer leaves out what the gate itself publishes (it
    # applied those as it published them): no delivery is spent on them.
    info = await bus.js.consumer_info("TRADEBUS", "risk-gate")
    subjects = set(info.config.filter_subjects or [])
    assert "strategy.intent.>" in subjects
    assert not subjects & {"risk.>", "orders.cmd.>"}, subjects
    # Nor broker acks (they change nothing it decides on); fills and the rest it reads.
    assert "broker.ack.>" not in subjects
    assert {
        "broker.fill.>",
        "broker.reject.>",
        "broker.cancel.>",
        "broker.close.>",
        "broker.conn.>",
    } <= subjects


async def test_an_option_priced_only_by_its_quote_mark_gets_its_order(
    stack: Stack, bus: Bus
) -> None:
    """A contract with no trade and no bar has no price: its order is denied
    no_market_price. Once marketdata's mark of its quote (md.mark.<symbol>)
    is on the stream, the same order passes, priced at the mark."""
    db = stack.database_url
    before = option_intent("good", 2, "2.05")
    await bus.publish_many(before)
    denied = await decision_for(db, before[1].id)
    assert (denied.payload.decision, denied.payload.reason.value) == ("denied", "no_market_price")

    await bus.publish(quote_mark(OPTION, "1.95", "2.05"))
    after = option_intent("good", 2, "2.05")
    await bus.publish_many(after)
    accepted = await decision_for(db, after[1].id)
    assert accepted.payload.decision == "accepted", accepted.payload.detail
    [order] = [
        o for o in await wait_recorded(db, "SubmitOrder", 1) if o.payload.intent_id == after[1].id
    ]
    assert (order.payload.symbol, order.payload.asset_class) == (OPTION, "option")
    # Priced by the mark (2.00): a limit 10 % away is outside the 5 % band.
    far = option_intent("good", 2, "2.20")
    await bus.publish_many(far)
    banded = await decision_for(db, far[1].id)
    assert banded.payload.reason.value == "price_band"
    assert "from the last price 2.00" in banded.payload.detail
    info = await bus.js.consumer_info("TRADEBUS", "risk-gate")
    assert "md.mark.>" in set(info.config.filter_subjects or [])


async def test_an_intent_the_server_sent_elsewhere_is_decided_not_lost(
    stack: Stack, bus: Bus
) -> None:
    """The gate acks all up to the last message it handled and skips what is at
    or below its place, so a message the server sent and the gate never got
    (into a connection that dropped and reconnected) is neither sent again
    nor missed by anyone: without a check, that intent is never decided. Here
    another reader of the gate's durable takes an intent; the gate sees the
    hole in the consumer sequence, starts again from the store, and decides
    it."""
    db = stack.database_url
    await bus.publish(mark("AAPL", "100"))
    first = await submit_intent(bus, "bulk", 1, account="acct-b")
    await decision_for(db, first)

    async def waiting(n: int) -> bool:
        info = await bus.js.consumer_info("TRADEBUS", "risk-gate")
        return (info.num_waiting or 0) >= n

    theft: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def on_stolen(msg: Any) -> None:
        if not theft.done():
            theft.set_result(msg)

    inbox = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(inbox, cb=on_stolen)
    try:
        request = json.dumps({"batch": 1, "expires": 20_000_000_000}).encode()
        await bus.nc.publish("$JS.API.CONSUMER.MSG.NEXT.TRADEBUS.risk-gate", request, inbox)
        await eventually(lambda: waiting(2), timeout=10)  # the gate's pull and the thief's
        # New messages are shared out among the waiting pulls: intents go out
        # one by one until the thief's pull has taken one.
        sent: list[uuid.UUID] = []
        while not theft.done():
            assert len(sent) < 500, "the thief's pull was never served"
            sent.append(await submit_intent(bus, "bulk", 1, account="acct-b"))
            await eventually(
                lambda: theft.done() or decision_for_all(db, sent), timeout=20, message=stack.logs
            )
    finally:
        await sub.unsubscribe()
    stolen = EVENT_ADAPTER.validate_json(theft.result().data)
    assert isinstance(stolen, OrderIntentCreated)
    after = await submit_intent(bus, "bulk", 1, account="acct-b")  # shows the hole
    await decision_for(db, after)
    d = await decision_for(db, stolen.id)
    assert d.payload.decision == "accepted", d.payload.detail
    decisions = by_intent(await recorded(db, "RiskDecisionMade"))
    assert set(decisions) == {first, *sent, after}
    assert all(len(ds) == 1 for ds in decisions.values()), "each decided once"
    orders = await recorded(db, "SubmitOrder")
    assert sorted(o.payload.intent_id for o in orders) == sorted(decisions)


async def decision_for_all(database_url: str, intent_ids: list[uuid.UUID]) -> bool:
    decided = {d.payload.intent_id for d in await recorded(database_url, "RiskDecisionMade")}
    return set(intent_ids) <= decided
