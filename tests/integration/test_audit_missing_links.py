"""``tradebus audit`` of a chain with a link the store does not hold: the
event after the gap is said to have a cause that is not recorded, rather
than printed as one more root of the chain."""

from __future__ import annotations

import asyncio

import asyncpg

from libs.contract.codec import encode
from libs.contract.envelope import Event
from libs.store.layout import COPY_COLUMNS
from libs.store.urls import asyncpg_url
from libs.store.writer import duplicate_row
from services.recorder.domain.rows import StreamMessage, to_row
from tests.integration.recorded_chains import cli, order_chain
from tests.integration.recording import record_events


def audit(database_url: str, event_id: object) -> list[str]:
    proc = cli("audit", str(event_id), database_url=database_url)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def line_of(lines: list[str], event: Event) -> int:
    (at,) = [i for i, line in enumerate(lines) if str(event.id) in line]
    return at


async def test_a_fill_whose_order_command_is_not_recorded_says_its_cause_is_missing(
    database_url: str,
) -> None:
    """Signal, intent, (SubmitOrder lost), OrderAccepted, FillReceived: the
    acceptance read as a second root of the chain, at depth 0 beside the
    signal, as if nothing had caused it; now the line under it names its
    cause and says the store does not hold it."""
    signal, intent, command, accepted, fill = order_chain()
    assert isinstance(command, Event)
    assert isinstance(accepted, Event)
    assert isinstance(fill, Event)
    await record_events(database_url, [signal, intent, accepted, fill])  # type: ignore[list-item]
    lines = await asyncio.to_thread(audit, database_url, fill.id)
    at = line_of(lines, accepted)
    assert "OrderAccepted" in lines[at]
    note = lines[at + 1]
    assert f"caused by {command.id}, which is not recorded" in note, lines
    assert "FillReceived" in lines[at + 2]  # its own effects still under it
    # Only the gap is noted: the signal (the root) and the fill (its cause
    # recorded) have none.
    assert sum("not recorded" in line for line in lines) == 1, lines


async def test_a_chain_whose_root_is_not_recorded_says_so(database_url: str) -> None:
    """The signal itself lost: the intent starts what is left, and says the
    event that caused it (the chain's root) is not recorded."""
    signal, intent, command, accepted, fill = order_chain()
    assert isinstance(signal, Event)
    assert isinstance(intent, Event)
    await record_events(database_url, [intent, command, accepted, fill])  # type: ignore[list-item]
    lines = await asyncio.to_thread(audit, database_url, intent.id)
    assert lines[0].startswith("*"), lines
    assert "OrderIntentCreated" in lines[0]
    assert f"caused by {signal.id}, which is not recorded" in lines[1], lines


async def test_a_duplicate_s_pointer_is_not_said_to_miss_its_cause(database_url: str) -> None:
    """A DuplicateSuppressed row names the original as its cause (another
    chain, its own): that is no missing link."""
    chain = order_chain()
    signal = chain[0]
    assert isinstance(signal, Event)
    await record_events(database_url, chain)  # type: ignore[arg-type]
    copy = to_row(StreamMessage(len(chain) + 1, "s", encode(signal)), max_bytes=1 << 20).row
    pointer = duplicate_row(copy, 1, sent=None)
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        await conn.copy_records_to_table("events", records=[tuple(pointer)], columns=COPY_COLUMNS)
    finally:
        await conn.close()
    lines = await asyncio.to_thread(audit, database_url, pointer.id)
    assert f"duplicate of {signal.id} at seq 1" in lines[0], lines
    assert not any("not recorded" in line for line in lines), lines
