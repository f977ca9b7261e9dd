"""The risk-gate as a real process restarted: after a kill -9 (no intent lost,
no order repeated, folded from its own checkpoint), acks after a replayed
backlog, and a stream reset under it or while it was down."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg

from libs.bus.client import Bus
from libs.contract.events import OrderIntentCreated
from libs.local.servers import NatsServer
from libs.store.urls import asyncpg_url
from libs.testing.procs import ServiceProcess
from libs.testing.streams import delete_stream
from libs.testing.wait import eventually
from tests.integration import risk_gate_stack
from tests.integration.recording import record_stream, wipe_nats
from tests.integration.risk_gate_stack import (
    Stack,
    accepted_order,
    broker_ack_and_fill,
    by_intent,
    decision_for,
    gate_live,
    gate_process,
    mark,
    recorded,
    signal_and_intent,
    submit_intent,
    wait_recorded,
)

# The risk-gate stack's fixtures, registered in this module.
limits_file = risk_gate_stack.limits_file
stack = risk_gate_stack.stack


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
    await gate_live(stack.gate)
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
    await gate_live(stack.gate)
    await bus.publish(mark("AAPL", "100"))
    order = await accepted_order(db, bus, "good", 100)
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
    await gate_live(stack.gate)
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
    await gate_live(stack.gate)
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
        await gate_live(gate)
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
    await delete_stream(bus.js, "TRADEBUS")
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
            gate = gate_process(tmp_path, env, "risk-gate-own").start()
            await gate_live(gate)
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
