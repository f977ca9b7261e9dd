"""``tradebus events`` and ``tradebus audit`` of rows on subjects with square
brackets, which NATS subjects may hold: the listings printed the subject as
rich markup, so ``md.trade.[bold]x`` lost its tag and ``md.trade.[/x]``
(a closing tag nothing opened) ended the command with a MarkupError."""

from __future__ import annotations

import asyncio

import pytest

from libs.contract.codec import DEFAULT_MAX_BYTES
from libs.store.writer import EventWriter
from libs.testing.store import rows
from services.recorder.domain.rows import StreamMessage, to_row
from tests.integration.recorded_chains import cli

SUBJECTS = ["md.trade.[bold]x", "md.trade.[/x]", "md.trade.[red"]


async def _store(database_url: str) -> list[str]:
    """A bad message on each of SUBJECTS; their row ids."""
    sent = {seq: b"{not json" for seq in range(1, len(SUBJECTS) + 1)}
    recorded = [
        to_row(StreamMessage(seq, SUBJECTS[seq - 1], data), max_bytes=DEFAULT_MAX_BYTES).row
        for seq, data in sent.items()
    ]
    async with await EventWriter.open(database_url) as writer:
        await writer.write(recorded, sent=sent.get)
    stored = await rows(database_url)
    assert [r["subject"] for r in stored] == SUBJECTS
    return [str(r["id"]) for r in stored]


async def test_the_events_table_prints_subjects_as_they_are(database_url: str) -> None:
    await _store(database_url)
    proc = await asyncio.to_thread(cli, "events", database_url=database_url)
    assert proc.returncode == 0, proc.stderr
    for subject in SUBJECTS:
        assert f" {subject} " in proc.stdout, proc.stdout


@pytest.mark.parametrize("index", range(len(SUBJECTS)))
async def test_audit_prints_a_subject_as_it_is(database_url: str, index: int) -> None:
    ids = await _store(database_url)
    proc = await asyncio.to_thread(cli, "audit", ids[index], database_url=database_url)
    assert proc.returncode == 0, proc.stderr
    assert f" {SUBJECTS[index]} {ids[index]}" in proc.stdout, proc.stdout
