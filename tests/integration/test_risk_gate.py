"""The risk-gate as a real process, with the recorder, on real NATS and Postgres.

The test plays the strategy-runner (it publishes signals and intents) and,
where needed, the broker-gateway (acks, fills, connection state). What is
asserted is what the event store holds.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from libs.bus.client import Bus, Outgoing
from libs.contract.envelope import Event, WallClock
from libs.contract.events import (
    EVENT_ADAPTER,
    BarClosed,
    BarPayload,
    BrokerConnectionChanged,
    BrokerConnectionPayload,
    FillPayload,
    FillReceived,
    MarkPayload,
    MarkUpdated,
    OrderAccepted,
    OrderAcceptedPayload,
    OrderIntentCreated,
    OrderIntentPayload,
    SignalGenerated,
    SignalPayload,
    SubmitOrder,
    TradePayload,
    TradePrinted,
)
from libs.local.servers import NatsServer
from libs.store import queries
from libs.store.urls import asyncpg_url
from libs.testing.natsauth import config_users
from libs.testing.procs import ServiceProcess
from libs.testing.wait import eventually
from tests.integration.recording import record_stream, wipe_nats

CLOCK = WallClock()
D = Decimal

LIMITS = """
max_intent_age_s: 120
accounts:
  acct-a:
    daily_loss_limit: 1000
    rate_limit: {max_orders: 50, per_seconds: 1}
  acct-b:
    daily_loss_limit: 1000000
strategies:
  good:
    account: acct-a
    max_gross_notional: 100000
    max_position: 500
    max_order_quantity: 100
    max_order_notional: 20000
  typo:
    account: acct-a
    max_gross_notional: 50000
    max_position: 200
    max_order_quantity: 50
    max_order_notional: 10000
    rate_limit: {max_orders: 5, per_seconds: 1}
  bulk:
    account: acct-b
    max_gross_notional: 100000000
    max_position: 100000
    max_order_quantity: 1000
    max_order_notional: 1000000
"""


@dataclass
class Stack:
    """A recorder and a risk-gate, started; ``gate`` can be killed and restarted."""

    tmp: Path
    env: dict[str, str]
    database_url: str
    recorder: ServiceProcess
    gate: ServiceProcess
    starts: int = 1

    def new_gate(self) -> ServiceProcess:
        self.starts += 1
        self.gate = _gate(self.tmp, self.env, f"risk-gate-{self.starts}")
        return self.gate.start()

    def logs(self) -> str:
        return self.gate.log_text()[-3000:]


def _gate(tmp: Path, env: dict[str, str], name: str) -> ServiceProcess:
    return ServiceProcess(
        ["risk-gate", "run", "--config", str(tmp / "risk.yaml")],
        env=env,
        log_path=tmp / f"{name}.log",
        name=name,
    )


async def _live(gate: ServiceProcess) -> None:
    await eventually(
        lambda: (gate.health() or {}).get("ok"),
        timeout=30,
        message=f"risk-gate live; log: {gate.log_text()[-2000:]}",
    )


@pytest.fixture
def limits_file(tmp_path: Path) -> Path:
    path = tmp_path / "risk.yaml"
    path.write_text(LIMITS)
    return path


@pytest.fixture
async def stack(
    tmp_path: Path, bus: Bus, nats_url: str, database_url: str, limits_file: Path
) -> AsyncIterator[Stack]:
    env = {"NATS_URL": nats_url, "DATABASE_URL": database_url}
    recorder = ServiceProcess(
        ["recorder", "run"], env=env, log_path=tmp_path / "recorder.log", name="recorder"
    ).start()
    s = Stack(tmp_path, env, database_url, recorder, _gate(tmp_path, env, "risk-gate-1").start())
    try:
        await _live(s.gate)
        yield s
    finally:
        code = s.gate.terminate()
        recorder.terminate()
        assert code == 0, s.logs()


# ------------------------------------------------------------------ helpers


async def recorded(database_url: str, type_: str) -> list[Any]:
    """Recorded events of one type, decoded (typed loosely: each test knows its type)."""
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        rows = await queries.list_events(conn, type_=type_, limit=100_000)
    finally:
        await conn.close()
    return [EVENT_ADAPTER.validate_python(r.envelope()) for r in rows]


async def wait_recorded(database_url: str, type_: str, n: int, timeout: float = 20) -> list[Any]:
    async def enough() -> list[Any] | None:
        got = await recorded(database_url, type_)
        return got if len(got) >= n else None

    result: list[Any] = await eventually(enough, timeout=timeout, message=f"{n} x {type_}")
    return result


def mark(symbol: str, price: str) -> TradePrinted:
    return TradePrinted.create(
        TradePayload(symbol=symbol, price=D(price), size=D(100), feed="synthetic"),
        source="test/marketdata",
        clock=CLOCK,
    )


#: Expiring far ahead of the wall clock the gate runs on: an expired contract's
#: orders are denied contract_expired.
OPTION = "O:SPY391216P00720000"


def quote_mark(symbol: str, bid: str, ask: str) -> MarkUpdated:
    """What marketdata publishes on md.mark.<symbol> for an option's quote."""
    return MarkUpdated.create(
        MarkPayload(
            symbol=symbol,
            price=(D(bid) + D(ask)) / 2,
            bid_price=D(bid),
            ask_price=D(ask),
            feed="polygon",
        ),
        source="test/marketdata",
        clock=CLOCK,
    )


def option_intent(strategy: str, quantity: int, limit: str) -> list[Event]:
    """A signal and its intent to buy ``quantity`` contracts of OPTION at ``limit``."""
    sig = SignalGenerated.create(
        SignalPayload(strategy=strategy, symbol=OPTION, name="test", direction="long"),
        source="test/strategy-runner",
        clock=CLOCK,
    )
    intent = OrderIntentCreated.create(
        OrderIntentPayload(
            strategy=strategy,
            account="acct-a",
            symbol=OPTION,
            side="buy",
            quantity=D(quantity),
            order_type="limit",
            limit_price=D(limit),
            asset_class="option",
        ),
        source="test/strategy-runner",
        clock=CLOCK,
        cause=sig,
    )
    return [sig, intent]


def signal_and_intent(
    strategy: str, quantity: int | str, side: str = "buy", account: str = "acct-a", **kw: Any
) -> tuple[SignalGenerated, OrderIntentCreated]:
    sig = SignalGenerated.create(
        SignalPayload(strategy=strategy, symbol="AAPL", name="test", direction="long"),
        source="test/strategy-runner",
        clock=CLOCK,
    )
    intent = OrderIntentCreated.create(
        OrderIntentPayload(
            strategy=strategy,
            account=account,
            symbol="AAPL",
            side=side,
            quantity=D(quantity),
            **kw,
        ),
        source="test/strategy-runner",
        clock=CLOCK,
        cause=sig,
    )
    return sig, intent


async def submit_intent(bus: Bus, strategy: str, quantity: int | str, **kw: Any) -> uuid.UUID:
    sig, intent = signal_and_intent(strategy, quantity, **kw)
    await bus.publish_many([sig, intent])
    return intent.id


async def decision_for(database_url: str, intent_id: uuid.UUID) -> Any:
    async def find() -> Any:
        for d in await recorded(database_url, "RiskDecisionMade"):
            if d.payload.intent_id == intent_id:
                return d
        return None

    return await eventually(find, timeout=20, message=f"decision for {intent_id}")


async def tradebus(env: dict[str, str], *args: str) -> str:
    """Run ``tradebus ARGS`` as the operator would; returns stdout."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


def broker_ack_and_fill(
    order: SubmitOrder, price: str, quantity: Decimal | None = None
) -> list[Event]:
    p = order.payload
    ack = OrderAccepted.create(
        OrderAcceptedPayload(
            order_id=p.order_id,
            account=p.account,
            broker_order_id="b-" + p.order_id.hex[:8],
            symbol=p.symbol,
        ),
        source="test/broker-gateway",
        clock=CLOCK,
        cause=order,
    )
    qty = quantity or p.quantity
    fill = FillReceived.create(
        FillPayload(
            order_id=p.order_id,
            account=p.account,
            broker_order_id="b-" + p.order_id.hex[:8],
            fill_id=uuid.uuid4().hex,
            symbol=p.symbol,
            side=p.side,
            quantity=qty,
            price=D(price),
            cumulative_quantity=qty,
            leaves_quantity=p.quantity - qty,
            status="complete" if qty == p.quantity else "partial",
            strategy=p.strategy,
        ),
        source="test/broker-gateway",
        clock=CLOCK,
        cause=ack,
    )
    return [ack, fill]


def by_intent(events: list[Any]) -> dict[uuid.UUID, list[Any]]:
    out: dict[uuid.UUID, list[Any]] = {}
    for e in events:
        out.setdefault(e.payload.intent_id, []).append(e)
    return out


# -------------------------------------------------------------------- tests


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


async def _accepted_order(
    db: str, bus: Bus, strategy: str, quantity: int, **kw: Any
) -> SubmitOrder:
    intent_id = await submit_intent(bus, strategy, quantity, **kw)
    decision = await decision_for(db, intent_id)
    assert decision.payload.decision == "accepted", decision.payload.detail

    async def order() -> SubmitOrder | None:
        for o in await recorded(db, "SubmitOrder"):
            if o.payload.intent_id == intent_id:
                assert isinstance(o, SubmitOrder)
                return o
        return None

    result: SubmitOrder = await eventually(order, timeout=20, message="the order command")
    return result


async def test_daily_loss_breaker_flattens_and_halts_until_resumed(
    stack: Stack, bus: Bus, limits_file: Path
) -> None:
    db = stack.database_url
    await bus.publish(mark("AAPL", "100"))
    bought = await _accepted_order(db, bus, "good", 100)
    await bus.publish_many(broker_ack_and_fill(bought, "100"))  # long 100 @ 100
    resting = await _accepted_order(db, bus, "good", 10, order_type="limit", limit_price=D(99))
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
    before = await _accepted_order(db, bus, "good", 5)
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
    await _live(stack.gate)
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
    working = await _accepted_order(db, bus, "good", 5)
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


async def test_kill_9_mid_stream_loses_no_intent_and_repeats_no_order(
    stack: Stack, bus: Bus
) -> None:
    db = stack.database_url
    await bus.publish(mark("AAPL", "100"))
    n = 300
    intents = []
    for k in range(n):
        intents += list(
            signal_and_intent("bulk", 1, side="buy" if k % 2 else "sell", account="acct-b")
        )
    ids = [e.id for e in intents if isinstance(e, OrderIntentCreated)]

    async def publish_steadily() -> None:
        for k in range(0, len(intents), 10):
            await bus.publish_many(intents[k : k + 10])
            await asyncio.sleep(0.02)  # pacing the producer (~250 intents/s), not synchronisation

    producer = asyncio.create_task(publish_steadily())
    await wait_recorded(db, "RiskDecisionMade", 60)
    stack.gate.kill()
    killed_at = len(await recorded(db, "RiskDecisionMade"))
    stack.new_gate()
    await producer
    await _live(stack.gate)
    decisions = await wait_recorded(db, "RiskDecisionMade", n, timeout=60)
    per_intent = by_intent(decisions)
    assert set(per_intent) == set(ids), "every intent decided"
    assert all(len(ds) == 1 for ds in per_intent.values()), "exactly once"
    assert killed_at < n, "the gate was killed mid-stream"
    orders = await recorded(db, "SubmitOrder")
    accepted = {i for i, ds in per_intent.items() if ds[0].payload.decision == "accepted"}
    assert len(accepted) == n
    assert sorted(o.payload.intent_id for o in orders) == sorted(accepted), "one order each"
    assert len({o.payload.order_id for o in orders}) == n


async def test_a_restart_after_kill_9_folds_from_the_gates_own_checkpoint(
    stack: Stack, bus: Bus
) -> None:
    db = stack.database_url
    assert stack.gate.terminate() == 0, stack.logs()
    stack.env["TRADEBUS_CHECKPOINT_EVERY_S"] = "0.3"
    stack.new_gate()
    await _live(stack.gate)
    await bus.publish(mark("AAPL", "100"))
    order = await _accepted_order(db, bus, "good", 100)
    await bus.publish_many(broker_ack_and_fill(order, "100"))
    (fill,) = await wait_recorded(db, "FillReceived", 1)
    fill_seq = await _seq_of(db, fill.id)

    async def checkpointed() -> int | None:
        conn = await asyncpg.connect(asyncpg_url(db))
        try:
            seq = await conn.fetchval("SELECT max(seq) FROM risk_checkpoints")
        finally:
            await conn.close()
        return seq if seq is not None and seq >= fill_seq else None

    # The gate's own child process folds the store every 0.3 s.
    await eventually(checkpointed, timeout=30, message="a checkpoint past the fill")
    ok_runs = 'tradebus_risk_checkpoint_runs_total{outcome="ok"}'
    await eventually(lambda: (_gauge(stack.gate, ok_runs) or 0) >= 1, timeout=10)

    before = [await submit_intent(bus, "good", 100) for _ in range(2)]
    await wait_recorded(db, "SubmitOrder", 3)
    stack.gate.kill()
    while_down = [await submit_intent(bus, "good", 100) for _ in range(3)]
    stack.env["TRADEBUS_CHECKPOINT_EVERY_S"] = "0"
    stack.new_gate()
    await _live(stack.gate)
    start = _gauge(stack.gate, "tradebus_risk_rebuild_from_checkpoint")
    assert start is not None
    assert start >= fill_seq, "the restart folded from a checkpoint holding the fill"

    decisions = by_intent(await wait_recorded(db, "RiskDecisionMade", 6))
    assert all(len(ds) == 1 for ds in decisions.values()), "each intent decided once"
    verdicts = [decisions[i][0].payload for i in before + while_down]
    # Position 100 (the fill, in the checkpoint only) plus 100 per open order:
    # max_position 500 lets four more through, not the fifth.
    assert [v.decision for v in verdicts] == ["accepted"] * 4 + ["denied"]
    assert verdicts[-1].reason.value == "max_strategy_position"
    assert "(position 100, open orders 400)" in verdicts[-1].detail
    orders = await recorded(db, "SubmitOrder")
    assert len(orders) == 5
    assert len({o.payload.order_id for o in orders}) == 5


async def test_a_failing_checkpoint_fold_is_counted_and_the_gate_goes_on(
    stack: Stack, bus: Bus
) -> None:
    assert stack.gate.terminate() == 0, stack.logs()
    stack.env["TRADEBUS_CHECKPOINT_EVERY_S"] = "0.2"
    stack.new_gate()
    await _live(stack.gate)
    (stack.tmp / "risk.yaml").unlink()  # the child reads it; the gate read it at start
    failed = 'tradebus_risk_checkpoint_runs_total{outcome="failed"}'
    await eventually(lambda: (_gauge(stack.gate, failed) or 0) >= 1, timeout=30)
    assert "checkpoint fold exited 2" in stack.gate.log_text()
    await bus.publish(mark("AAPL", "100"))
    intent_id = await submit_intent(bus, "good", 5)
    assert (await decision_for(stack.database_url, intent_id)).payload.decision == "accepted"


async def _seq_of(database_url: str, event_id: uuid.UUID) -> int:
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        seq = await conn.fetchval("SELECT seq FROM events WHERE id = $1", event_id)
    finally:
        await conn.close()
    assert isinstance(seq, int)
    return seq


def _gauge(proc: ServiceProcess, name: str) -> float | None:
    for line in proc.metrics().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


NATS_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "nats-server.conf"
NATS_USERS = config_users()  # every user the config declares


def _metric(proc: ServiceProcess, line: str) -> bool:
    return line in proc.metrics()


async def test_gate_works_under_its_own_nats_user(
    tmp_path: Path, database_url: str, limits_file: Path
) -> None:
    """With deploy/nats permissions on: the gate (user risk-gate) starts on a
    store that is not empty (its start-up reads the stream's message at the
    store's last sequence), makes its consumer and issues orders, an option's
    priced by the quote mark user marketdata published; intents come from
    user strategy-runner, the kill switch from user operator (the CLI)."""
    passwords = {u: f"pw{secrets.token_hex(12)}" for u in NATS_USERS}
    server = NatsServer(tmp_path / "nats", config_file=NATS_CONFIG)
    with pytest.MonkeyPatch.context() as mp:
        for user, password in passwords.items():
            mp.setenv(f"NATS_{user.upper().replace('-', '_')}_PASSWORD", password)
        server.start()

    def creds(user: str) -> dict[str, str]:
        return {
            "NATS_URL": server.url,
            "DATABASE_URL": database_url,
            "TRADEBUS_NATS_USER": user,
            "TRADEBUS_NATS_PASSWORD": passwords[user],
        }

    gate: ServiceProcess | None = None
    try:
        async with await Bus.connect(
            server.url, name="test-admin", user="admin", password=passwords["admin"]
        ) as admin:
            await admin.ensure_stream()
            async with await Bus.connect(
                server.url, name="test-md", user="marketdata", password=passwords["marketdata"]
            ) as md:
                await md.publish(mark("AAPL", "100"))
                await md.publish(quote_mark(OPTION, "1.95", "2.05"))  # md.mark.<option>
            assert await record_stream(admin, database_url) == 2
        gate = ServiceProcess(
            ["risk-gate", "run", "--config", str(limits_file)],
            env=creds("risk-gate"),
            log_path=tmp_path / "gate-perm.log",
            name="gate-perm",
        ).start()
        await _live(gate)
        log_text = gate.log_text()
        assert "state rebuilt up to store sequence 2 in " in log_text
        assert ": 2 events folded from the start" in log_text
        async with await Bus.connect(
            server.url,
            name="test-strategy",
            user="strategy-runner",
            password=passwords["strategy-runner"],
        ) as strategies:
            await submit_intent(strategies, "good", 5)
            # Priced by the mark the marketdata user published (rebuilt from the store).
            await strategies.publish_many(option_intent("good", 1, "2.05"))
            submitted = 'tradebus_orders_submitted_total{account="acct-a"} 2.0'
            await eventually(lambda: _metric(gate, submitted), timeout=20, message=gate.log_text())
            await tradebus(creds("operator"), "kill-switch", "on", "--reason", "perm test")
            await eventually(lambda: _metric(gate, "tradebus_risk_kill_switch 1.0"), timeout=20)
            await submit_intent(strategies, "good", 5)
            denied = 'tradebus_orders_denied_total{reason="kill_switch"} 1.0'
            await eventually(lambda: _metric(gate, denied), timeout=20, message=gate.log_text())
        assert "Permissions Violation" not in gate.log_text()
        assert gate.terminate() == 0, gate.log_text()[-3000:]
    finally:
        if gate is not None:
            gate.kill()
        server.stop()


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


async def test_acks_reach_the_live_consumer_after_a_replayed_backlog(
    stack: Stack, bus: Bus
) -> None:
    """Going live recreates the consumer (without the gate's own subjects) while
    acks are sent at intervals: once the gate has replayed a backlog from the
    stream and decided live intents, its consumer has nothing pending."""
    # The recorder first, so the store misses all that follows and the gate
    # must replay it from the stream (killed after the mark, it could have
    # recorded the mark: seen once under load, 40 to replay instead of 41).
    stack.recorder.kill()
    await bus.publish(mark("AAPL", "100"))
    stack.gate.kill()
    backlog = [
        e for k in range(40) for e in signal_and_intent("bulk", 1, side="buy" if k % 2 else "sell")
    ]
    await bus.publish_many(backlog)
    gate = stack.new_gate()
    recorder = ServiceProcess(
        ["recorder", "run"], env=stack.env, log_path=stack.tmp / "recorder-2.log", name="rec-2"
    )
    try:
        await _live(gate)
        assert "with 41 to replay" in gate.log_text()  # the mark and the intents
        recorder.start()
        await bus.publish_many(
            [e for k in range(3) for e in signal_and_intent("bulk", 1, side="sell")]
        )
        await wait_recorded(stack.database_url, "RiskDecisionMade", 43)

        async def all_acked() -> bool:
            info = await bus.js.consumer_info("TRADEBUS", "risk-gate")
            return bool(info.num_pending == 0 and info.num_ack_pending == 0)

        await eventually(all_acked, timeout=15, message=stack.logs)
    finally:
        recorder.terminate()


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


async def test_a_reset_stream_is_refused_not_read_past(stack: Stack, bus: Bus) -> None:
    """The NATS data wiped while the store is kept: the new stream ends before
    the store does, and a gate reading on from the store's next sequence would
    skip the new stream's first intents. It refuses: not live, unhealthy with
    the reason, nothing decided; the intents wait in the stream."""
    await bus.publish(mark("AAPL", "100"))
    await bus.publish_many(list(signal_and_intent("good", 1)))
    await wait_recorded(stack.database_url, "RiskDecisionMade", 1)
    stack.gate.kill()
    stack.recorder.kill()
    await bus.js.delete_stream("TRADEBUS")
    await bus.ensure_stream()
    await bus.publish(mark("AAPL", "100"))
    sig, intent = signal_and_intent("good", 1)
    await bus.publish_many([sig, intent])
    gate = stack.new_gate()
    health = await eventually(
        lambda: (h := gate.health()) is not None and "problem" in h and h, timeout=30
    )
    assert not health["ok"]
    assert health["phase"] == "restarting"
    assert "the stream was reset; not deciding" in health["problem"], health
    assert "holds up to" in health["problem"]
    assert gate.alive
    assert "the stream was reset" in gate.log_text()
    info = await bus.js.stream_info("TRADEBUS")
    assert info.state.messages == 3, "no decision or order went out; the three messages wait"


async def test_a_stream_reset_under_a_live_gate_is_refused(
    tmp_path: Path, database_url: str, limits_file: Path
) -> None:
    """NATS restarted with its data wiped while the gate is live: its consumer
    is gone with the stream (its pull requests go unanswered), so it rebuilds
    and finds the new stream does not continue the store: it refuses instead
    of skipping the new stream's first intents. On its own nats-server (it is
    wiped)."""
    server = NatsServer(tmp_path / "own-nats").start()
    env = {"NATS_URL": server.url, "DATABASE_URL": database_url}
    gate: ServiceProcess | None = None
    try:
        async with await Bus.connect(server.url, name="test-feed") as feed:
            await feed.ensure_stream()
            await feed.publish(mark("AAPL", "100"))
            assert await record_stream(feed, database_url) == 1
            gate = _gate(tmp_path, env, "risk-gate-own").start()
            await _live(gate)
            await wipe_nats(server, feed)
            await feed.publish(mark("AAPL", "101"))
            await feed.publish_many(list(signal_and_intent("good", 1)))
            health = await eventually(
                lambda: (h := gate.health()) is not None and "problem" in h and h, timeout=30
            )
            assert not health["ok"]
            # Looked at before or after the new messages came: either sign.
            assert "the stream was reset; not deciding" in health["problem"], health
            info = await feed.js.stream_info("TRADEBUS")
            assert info.state.messages == 3, "no decision or order went out"
        assert gate.terminate() == 0, gate.log_text()[-2000:]
    finally:
        if gate is not None:
            gate.kill()
        server.stop()
