"""Risk-state checkpoints in a real store: the rebuild folds on from the newest
usable one, and what it gets is what folding the whole store gets.

The store is filled the way the recorder fills it (published to JetStream,
then recorded), with a timeline of market data, decisions, orders, fills,
breakers and operator commands (``tests/unit/risk_timelines.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.bus.client import Bus
from services.risk_gate.adapters.checkpoint import KEEP
from services.risk_gate.adapters.store import Rebuilt, rebuild
from services.risk_gate.domain.evolve import RELEVANT_TYPES
from services.risk_gate.domain.limits import RiskLimits
from services.risk_gate.domain.state import RiskState
from tests.integration.recording import record_stream, sql
from tests.integration.risk_gate_stack import tradebus
from tests.unit.risk_evolve_inputs import LIMITS, trade
from tests.unit.risk_timelines import fold, timeline

EVENTS = timeline(8)
HALF = len(EVENTS) // 2


async def fill_store(bus: Bus, database_url: str, events: list) -> None:  # type: ignore[type-arg]
    await bus.publish_many(events)
    await record_stream(bus, database_url)


async def checkpoint_now(database_url: str) -> Rebuilt:
    """A rebuild that writes a checkpoint of whatever it folded."""
    return await rebuild(
        database_url, RiskState.initial(LIMITS), write_checkpoint=True, checkpoint_after=1
    )


def relevant(events: list) -> int:  # type: ignore[type-arg]
    return sum(e.type in RELEVANT_TYPES for e in events)


async def test_a_rebuild_folds_on_from_its_checkpoint_exactly(bus: Bus, database_url: str) -> None:
    await fill_store(bus, database_url, EVENTS[:HALF])
    first = await checkpoint_now(database_url)
    assert first.from_checkpoint is None
    assert first.wrote_checkpoint
    assert first.state == fold(RiskState.initial(LIMITS), EVENTS[:HALF])

    await fill_store(bus, database_url, EVENTS[HALF:])
    second = await rebuild(database_url, RiskState.initial(LIMITS))
    assert second.from_checkpoint == first.last_seq
    assert second.folded == relevant(EVENTS[HALF:])  # only what came after it
    assert second.events == relevant(EVENTS)
    assert not second.wrote_checkpoint  # not asked to
    assert second.state == fold(RiskState.initial(LIMITS), EVENTS)


async def test_a_checkpoint_that_does_not_fit_is_ignored(
    bus: Bus, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await fill_store(bus, database_url, EVENTS)
    made = await checkpoint_now(database_url)
    assert made.wrote_checkpoint
    whole = fold(RiskState.initial(LIMITS), EVENTS)

    # Other limits: folded from the start, under them.
    other = RiskLimits()
    under_other = await rebuild(database_url, RiskState.initial(other))
    assert under_other.from_checkpoint is None
    assert under_other.state == fold(RiskState.initial(other), EVENTS)

    # Folded from another store (the event at its sequence differs).
    await sql(database_url, "UPDATE risk_checkpoints SET event_id = gen_random_uuid()")
    with caplog.at_level("WARNING"):
        foreign = await rebuild(database_url, RiskState.initial(LIMITS))
    assert foreign.from_checkpoint is None
    assert foreign.state == whole
    assert "is of another store" in caplog.text

    # Unreadable.
    caplog.clear()
    await sql(database_url, "DELETE FROM risk_checkpoints")
    await checkpoint_now(database_url)
    await sql(database_url, "UPDATE risk_checkpoints SET state = 'garbage'::bytea")
    with caplog.at_level("WARNING"):
        unreadable = await rebuild(database_url, RiskState.initial(LIMITS))
    assert unreadable.from_checkpoint is None
    assert unreadable.state == whole
    assert "unreadable checkpoint" in caplog.text


async def test_only_the_newest_checkpoints_are_kept(bus: Bus, database_url: str) -> None:
    seqs = []
    for k in range(KEEP + 2):
        await fill_store(bus, database_url, [trade("AAPL", 100 + k)])
        made = await checkpoint_now(database_url)
        assert made.wrote_checkpoint
        seqs.append(made.last_seq)
    kept = await sql(database_url, "SELECT array_agg(seq ORDER BY seq) FROM risk_checkpoints")
    assert kept == seqs[-KEEP:]


async def test_the_checkpoint_command(
    bus: Bus, nats_url: str, database_url: str, tmp_path: Path
) -> None:
    limits = tmp_path / "risk.yaml"
    limits.write_text(LIMITS.model_dump_json())  # JSON is YAML
    await fill_store(bus, database_url, EVENTS)

    env = {"DATABASE_URL": database_url, "NATS_URL": nats_url}

    async def checkpoint(*args: str) -> str:
        return await tradebus(env, "risk-gate", "checkpoint", "--config", str(limits), *args)

    last = len(EVENTS)
    n = relevant(EVENTS)
    out = await checkpoint()
    assert out.startswith(f"checkpoint at sequence {last:,}: {n:,} events folded from the start")
    assert await sql(database_url, "SELECT seq FROM risk_checkpoints") == last
    await fill_store(bus, database_url, [trade("AAPL", 101)])
    out = await checkpoint("--min-events", "2")
    assert out.startswith("no new checkpoint: 1 events after the checkpoint at ")
    out = await checkpoint()
    assert out.startswith(
        f"checkpoint at sequence {last + 1:,}: 1 events folded from the checkpoint"
    )
    # The gate, restarted now, would fold from it.
    rebuilt = await rebuild(database_url, RiskState.initial(LIMITS))
    assert (rebuilt.from_checkpoint, rebuilt.folded) == (last + 1, 0)
