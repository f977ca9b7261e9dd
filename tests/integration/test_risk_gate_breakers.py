"""The risk-gate as a real process tripping its breakers: the daily loss, the
kill switch across a kill -9, a lost broker connection."""

from __future__ import annotations

import json
from pathlib import Path

from libs.bus.client import Bus
from libs.contract.events import (
    BarClosed,
    BarPayload,
    BrokerConnectionChanged,
    BrokerConnectionPayload,
)
from tests.integration import risk_gate_stack
from tests.integration.risk_gate_stack import (
    CLOCK,
    D,
    Stack,
    accepted_order,
    broker_ack_and_fill,
    decision_for,
    gate_live,
    mark,
    recorded,
    submit_intent,
    tradebus,
    wait_recorded,
)

# The risk-gate stack's fixtures, registered in this module.
limits_file = risk_gate_stack.limits_file
stack = risk_gate_stack.stack


async def test_daily_loss_breaker_flattens_and_halts_until_resumed(
    stack: Stack, bus: Bus, limits_file: Path
) -> None:
    db = stack.database_url
    await bus.publish(mark("AAPL", "100"))
    bought = await accepted_order(db, bus, "good", 100)
    await bus.publish_many(broker_ack_and_fill(bought, "100"))  # long 100 @ 100
    resting = await accepted_order(db, bus, "good", 10, order_type="limit", limit_price=D(99))
    await bus.publish_many(broker_ack_and_fill(resting, "99")[:1])  # working, not filled
    await bus.publish(mark("AAPL", "95"))  # -500: nothing happens
    slide = BarClosed.create(
        BarPayload(
            symbol="AAPL",
            interval="1m",
            open=D(95),
            high=D(95),
            low=D(89),
            close=D(89),
            volume=D(1000),
            start_ns=CLOCK.now_ns() - 60_000_000_000,
            end_ns=CLOCK.now_ns(),
            feed="synthetic",
        ),
        source="test/marketdata",
        clock=CLOCK,
    )
    await bus.publish(slide)  # -1100: past the 1000 daily-loss limit

    (breaker,) = await wait_recorded(db, "BreakerTripped", 1)
    assert (breaker.payload.account, breaker.payload.breaker) == ("acct-a", "daily_loss")
    assert breaker.payload.value == D(-1100)
    assert breaker.causation_id == slide.id
    (cancel,) = await wait_recorded(db, "CancelOrder", 1)
    assert cancel.payload.order_id == resting.payload.order_id
    (flatten,) = await wait_recorded(db, "FlattenAccount", 1)
    assert flatten.payload.account == "acct-a"
    (halted,) = await wait_recorded(db, "TradingStateChanged", 1)
    assert (halted.payload.scope, halted.payload.state) == ("acct-a", "halted")

    status = json.loads(
        await tradebus(stack.env, "risk", "status", "--json", "--config", str(limits_file))
    )
    acct = status["accounts"]["acct-a"]
    assert (acct["state"], acct["day_pnl"], acct["breaker_tripped_today"]) == (
        "halted",
        "-1100.00",
        True,
    )
    assert (
        status["strategies"]["good"]["accounts"]["acct-a"]["positions"]["AAPL"]["quantity"] == "100"
    )

    denied = await submit_intent(bus, "good", 1, side="sell")
    d = await decision_for(db, denied)
    assert (d.payload.decision, d.payload.reason.value) == ("denied", "halted")

    out = await tradebus(stack.env, "risk", "resume", "acct-a", "--reason", "reviewed the losses")
    assert "resume of acct-a requested" in out
    states = await wait_recorded(db, "TradingStateChanged", 2)
    assert (states[-1].payload.state, states[-1].payload.previous) == ("active", "halted")
    allowed = await submit_intent(bus, "good", 1, side="sell")
    assert (await decision_for(db, allowed)).payload.decision == "accepted"
    orders = await recorded(db, "SubmitOrder")
    assert {o.payload.intent_id for o in orders} == {
        bought.payload.intent_id,
        resting.payload.intent_id,
        allowed,
    }
    assert len(await recorded(db, "BreakerTripped")) == 1, "the breaker trips once a day"


async def test_kill_switch_holds_across_a_kill_9_restart(stack: Stack, bus: Bus) -> None:
    db = stack.database_url
    await bus.publish(mark("AAPL", "100"))
    before = await accepted_order(db, bus, "good", 5)
    out = await tradebus(stack.env, "kill-switch", "on", "--reason", "runaway", "--operator", "ann")
    assert "kill switch ENGAGED by ann" in out
    (engaged,) = await wait_recorded(db, "KillSwitchEngaged", 1)
    assert engaged.payload.operator == "ann"
    flattens = await wait_recorded(db, "FlattenAccount", 2)
    assert {f.payload.account for f in flattens} == {"acct-a", "acct-b"}
    (cancel,) = await wait_recorded(db, "CancelOrder", 1)
    assert cancel.payload.order_id == before.payload.order_id
    (halted,) = await wait_recorded(db, "TradingStateChanged", 1)
    assert (halted.payload.scope, halted.payload.state) == ("global", "halted")

    denied = await submit_intent(bus, "good", 5)
    assert (await decision_for(db, denied)).payload.reason.value == "kill_switch"

    stack.gate.kill()
    while_down = await submit_intent(bus, "good", 5)  # decided on restart
    stack.new_gate()
    await gate_live(stack.gate)
    after = await submit_intent(bus, "good", 5)
    for intent_id in (while_down, after):
        assert (await decision_for(db, intent_id)).payload.reason.value == "kill_switch"
    assert [o.payload.intent_id for o in await recorded(db, "SubmitOrder")] == [
        before.payload.intent_id
    ]
    assert len(await recorded(db, "FlattenAccount")) == 2, "no second reaction after restart"

    await tradebus(stack.env, "kill-switch", "off", "--reason", "fixed", "--operator", "ann")
    await wait_recorded(db, "KillSwitchReleased", 1)
    still = await submit_intent(bus, "good", 5)
    assert (await decision_for(db, still)).payload.reason.value == "halted"
    await tradebus(stack.env, "risk", "resume", "global", "--reason", "fixed", "--operator", "ann")
    await wait_recorded(db, "TradingStateChanged", 2)
    resumed = await submit_intent(bus, "good", 5)
    assert (await decision_for(db, resumed)).payload.decision == "accepted"


async def test_broker_connection_lost_flattens_and_halts(stack: Stack, bus: Bus) -> None:
    db = stack.database_url
    await bus.publish(mark("AAPL", "100"))
    working = await accepted_order(db, bus, "good", 5)
    lost = BrokerConnectionChanged.create(
        BrokerConnectionPayload(
            account="acct-a", broker="paper", state="disconnected", detail="no heartbeat for 3s"
        ),
        source="test/broker-gateway",
        clock=CLOCK,
    )
    await bus.publish(lost)
    (breaker,) = await wait_recorded(db, "BreakerTripped", 1)
    assert (breaker.payload.account, breaker.payload.breaker) == ("acct-a", "connection_lost")
    assert breaker.causation_id == lost.id
    (flatten,) = await wait_recorded(db, "FlattenAccount", 1)
    assert (flatten.payload.account, flatten.causation_id) == ("acct-a", lost.id)
    (cancel,) = await wait_recorded(db, "CancelOrder", 1)
    assert cancel.payload.order_id == working.payload.order_id
    (halted,) = await wait_recorded(db, "TradingStateChanged", 1)
    assert (halted.payload.scope, halted.payload.state) == ("acct-a", "halted")
    back = BrokerConnectionChanged.create(
        BrokerConnectionPayload(account="acct-a", broker="paper", state="connected"),
        source="test/broker-gateway",
        clock=CLOCK,
    )
    await bus.publish(back)
    denied = await submit_intent(bus, "good", 5)
    d = await decision_for(db, denied)
    assert (d.payload.reason.value, "connection lost" in d.payload.detail) == ("halted", True)
    assert len(await recorded(db, "SubmitOrder")) == 1
