"""``positions`` from the latest snapshot of the fold (migration 0010) is
exactly the pure fold over every fill.

Random order flows (partial fills, flips through zero, an option contract
and its multiplier, commissions, fills carrying their strategy or not,
copies of a fill under a new id on either side of a snapshot, a fill whose
command is recorded after it, one whose command never is) are recorded in
batches; snapshots are written between some of them, and after each batch
``positions`` must equal 0006's view (the fold over ``fills`` from the
start) row for row, and equal it again with the snapshots emptied.

The recorder (holding the writer lock) writes them every
``position_snapshot_every_s``; one that fails is counted and recording goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import random
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from libs.bus.client import Bus
from libs.contract.envelope import Event, WallClock
from libs.contract.events import FillPayload, FillReceived, SubmitOrder, SubmitOrderPayload
from libs.store.urls import asyncpg_url
from libs.testing.store import recorded_count
from libs.testing.wait import eventually
from services.recorder.config import RecorderSettings
from services.recorder.recorder import Recorder
from tests.integration.recording import record_events

D = Decimal
CLOCK = WallClock()
ACCOUNTS = ("acct-a", "acct-b")
STRATEGIES = ("s1", "s2", "s3")
SYMBOLS = ("AAPL", "MSFT", "O:SPY261218C00600000")
MIGRATIONS = Path(__file__).parents[2] / "libs/store/migrations/versions"


def pure_positions_sql() -> str:
    """0006's ``positions`` (the fold over every fill from the start) as a query."""
    path = MIGRATIONS / "0006_option_multiplier.py"
    spec = importlib.util.spec_from_file_location("tradebus_migration_0006", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    view: str = module.POSITIONS
    return view.split(" AS\n", 1)[1]


ORDER = " ORDER BY account, strategy NULLS FIRST, symbol"


class Flow:
    """A random order flow; ``events`` is what is recorded, in order."""

    def __init__(self, rng: random.Random, *, commands_lost: bool = True) -> None:
        self.rng = rng
        #: Some commands recorded after their fills, or never.
        self.commands_lost = commands_lost
        self.events: list[Event] = []
        self.fills: list[FillReceived] = []
        self.late_commands: list[SubmitOrder] = []

    def order(self) -> None:
        rng = self.rng
        account = rng.choice(ACCOUNTS)
        strategy = rng.choice(STRATEGIES)
        symbol = rng.choice(SYMBOLS)
        side = rng.choice(("buy", "sell"))
        qty = rng.randint(1, 30)
        oid = uuid.uuid4()
        cmd = SubmitOrder.create(
            SubmitOrderPayload(
                order_id=oid,
                strategy=strategy,
                account=account,
                symbol=symbol,
                side=side,
                quantity=D(qty),
            ),
            source="test",
            clock=CLOCK,
        )
        fate = rng.random() if self.commands_lost else 1.0
        if fate < 0.08:
            self.late_commands.append(cmd)  # recorded after its fills (a later batch)
        elif fate >= 0.12:
            self.events.append(cmd)
        # else never recorded: its fills without a strategy book to none
        done = 0
        while done < qty:
            part = rng.randint(1, qty - done)
            done += part
            step = D("0.05") if symbol.startswith("O:") else D("0.01")
            price = (D(rng.randint(20, 400)) * step).quantize(step)
            fill = FillReceived.create(
                FillPayload(
                    order_id=oid,
                    account=account,
                    broker_order_id=f"b-{oid}",
                    fill_id=f"{oid}:{done}",
                    symbol=symbol,
                    side=side,
                    quantity=D(part),
                    price=price,
                    cumulative_quantity=D(done),
                    leaves_quantity=D(qty - done),
                    status="complete" if done == qty else "partial",
                    commission=rng.choice((D(0), D("0.65"), D("1.3"))),
                    strategy=strategy if rng.random() < 0.6 else None,
                ),
                source="test",
                clock=CLOCK,
            )
            self.events.append(fill)
            self.fills.append(fill)

    def duplicate(self) -> None:
        """A fill recorded earlier (maybe in an earlier batch) recorded again under a new id."""
        first = self.rng.choice(self.fills)
        strategy = self.rng.choice((None, first.payload.strategy, "s9"))
        payload = FillPayload.model_validate(first.payload.model_dump() | {"strategy": strategy})
        self.events.append(FillReceived.create(payload, source="test", clock=CLOCK))

    def batch(self, orders: int) -> list[Event]:
        if self.late_commands and self.rng.random() < 0.5:
            self.events.append(self.late_commands.pop(0))
        for _ in range(orders):
            self.order()
            if self.fills and self.rng.random() < 0.3:
                self.duplicate()
        out, self.events = self.events, []
        return out


async def rows(conn: asyncpg.Connection, sql: str) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(sql + ORDER)]


@pytest.mark.parametrize("seed", range(12))
async def test_positions_from_snapshots_are_the_pure_fold(database_url: str, seed: int) -> None:
    rng = random.Random(seed)
    flow = Flow(rng)
    pure = pure_positions_sql()
    conn = await asyncpg.connect(asyncpg_url(database_url))
    written = []
    try:
        for _ in range(12):
            await record_events(database_url, flow.batch(rng.randint(1, 8)))
            if rng.random() < 0.6:
                written.append(await conn.fetchval("SELECT write_position_snapshot()"))
            expected = await rows(conn, pure)
            assert expected, "the flow has positions"
            assert await rows(conn, "SELECT * FROM positions") == expected
        # The snapshots are only a cache: without them, the same.
        await conn.execute("TRUNCATE position_snapshots")
        assert await rows(conn, "SELECT * FROM positions") == expected
    finally:
        await conn.close()
    assert any(w is not None for w in written), "some snapshots were written"


def recorder_settings(nats_url: str, database_url: str, every_s: float) -> RecorderSettings:
    return RecorderSettings.model_validate(
        {
            "nats_url": nats_url,
            "database_url": database_url,
            "instance": "snapshot-test",
            "trim_every_s": 0,
            "position_snapshot_every_s": every_s,
            "retry_backoff_s": 0.1,
        }
    )


@contextlib.asynccontextmanager
async def running(recorder: Recorder) -> AsyncIterator[Recorder]:
    task = asyncio.create_task(recorder.run())
    try:
        yield recorder
    finally:
        recorder.stop()
        await asyncio.wait_for(task, timeout=20)


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def test_the_recorder_snapshots_the_fold_as_of_what_it_committed(
    bus: Bus, nats_url: str, database_url: str
) -> None:
    flow = Flow(random.Random(99), commands_lost=False)
    settings = recorder_settings(nats_url, database_url, every_s=0.05)
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        async with running(Recorder(settings)):
            for part in (flow.batch(5), flow.batch(5)):
                # Counted before the publish: after it, the recorder may have
                # stored some of the part already, and the total came out high.
                total = await recorded_count(database_url) + len(part)
                await bus.publish_many(part)

                async def snapshot_of_all(total: int = total) -> bool:
                    upto = await conn.fetchval("SELECT max(upto_seq) FROM position_snapshots")
                    return bool(upto == total)

                await eventually(snapshot_of_all, timeout=30)
                assert await rows(conn, "SELECT * FROM positions") == await rows(
                    conn, pure_positions_sql()
                )
        assert sample("tradebus_recorder_position_snapshot_sequence") > 0
    finally:
        await conn.close()


async def test_a_failing_snapshot_is_counted_and_recording_goes_on(
    bus: Bus, nats_url: str, database_url: str
) -> None:
    calls = 0

    async def failing(url: str) -> int | None:
        nonlocal calls
        calls += 1
        raise asyncpg.UndefinedFunctionError("write_position_snapshot() does not exist")

    labels = {"cause": "UndefinedFunctionError"}
    before = sample("tradebus_recorder_position_snapshot_failures_total", labels)
    events = Flow(random.Random(5)).batch(4)
    settings = recorder_settings(nats_url, database_url, every_s=0.05)
    async with running(Recorder(settings, snapshot=failing)) as rec:
        await bus.publish_many(events)

        async def recorded_and_tried() -> bool:
            return await recorded_count(database_url) == len(events) and calls >= 2

        await eventually(recorded_and_tried, timeout=30)
        assert rec.problem is None
    assert sample("tradebus_recorder_position_snapshot_failures_total", labels) - before >= 2


async def test_two_writers_at_once_write_one_snapshot(database_url: str) -> None:
    """Two copies of one snapshot would count its positions twice: writers
    take turns on the table, and the second finds the sequence written."""
    await record_events(database_url, Flow(random.Random(3), commands_lost=False).batch(10))
    conns = [await asyncpg.connect(asyncpg_url(database_url)) for _ in range(2)]
    try:
        await conns[0].execute("TRUNCATE position_snapshots, position_snapshot_unbooked")
        written = await asyncio.gather(
            *(c.fetchval("SELECT write_position_snapshot()") for c in conns)
        )
        last = await conns[0].fetchval("SELECT max(seq) FROM events")
        assert sorted(written, key=lambda w: w is None) == [last, None]
        copies = await conns[0].fetchval(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM position_snapshots "
            "GROUP BY account, strategy, symbol) c"
        )
        assert copies == 1
        assert await rows(conns[0], "SELECT * FROM positions") == await rows(
            conns[0], pure_positions_sql()
        )
    finally:
        for c in conns:
            await c.close()
