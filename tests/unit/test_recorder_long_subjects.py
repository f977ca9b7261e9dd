"""Subjects too long for the store's subject index, in the rows the recorder
makes itself (see tests/integration/test_recorder_long_subjects.py)."""

from __future__ import annotations

import json

import pytest

from libs.store.layout import SUBJECT_MAX_BYTES, stored_subject
from services.recorder.domain.rows import StreamMessage, to_row, unstorable_row


@pytest.mark.parametrize(
    ("subject", "stored"),
    [
        ("md.trade.AAPL", "md.trade.AAPL"),
        ("md.trade.A\x00B", "md.trade.A\ufffdB"),
        ("md." + "x" * (SUBJECT_MAX_BYTES - 3), "md." + "x" * (SUBJECT_MAX_BYTES - 3)),
        ("md." + "x" * SUBJECT_MAX_BYTES, "md." + "x" * (SUBJECT_MAX_BYTES - 3)),
        # A cut never splits a character: "é" is two bytes in UTF-8.
        ("md." + "é" * SUBJECT_MAX_BYTES, "md." + "é" * ((SUBJECT_MAX_BYTES - 3) // 2)),
    ],
)
def test_a_stored_subject_fits_the_index(subject: str, stored: str) -> None:
    assert stored_subject(subject) == stored
    assert len(stored_subject(subject).encode()) <= SUBJECT_MAX_BYTES


def test_an_undecodable_row_cuts_a_long_subject_and_keeps_it_whole_in_its_payload() -> None:
    subject = "md.trade." + "y" * 3000
    msg = StreamMessage(7, subject, b"not json", ts_ns=5)
    for row in (to_row(msg, max_bytes=1 << 20).row, unstorable_row(msg, "index row size")):
        assert (row.type, row.subject) == ("Undecodable", subject[:SUBJECT_MAX_BYTES])
        assert json.loads(row.payload)["subject"] == subject
        assert row.raw == b"not json"


def test_an_undecodable_row_on_a_short_subject_says_it_once() -> None:
    row = to_row(StreamMessage(7, "md.trade.AAPL", b"not json"), max_bytes=1 << 20).row
    assert row.subject == "md.trade.AAPL"
    assert "subject" not in json.loads(row.payload)
