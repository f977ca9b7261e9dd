"""How the listings (``tradebus events``, ``tradebus audit``) print a subject:
whole up to SUBJECT_SHOWN characters, a longer one shortened around ``…``
and said so beside it, set off by a space (no NATS subject holds one)."""

from __future__ import annotations

import pytest

from services.ops.cli import SUBJECT_HEAD, SUBJECT_SHOWN, SUBJECT_TAIL, shown_subject


@pytest.mark.parametrize(
    "subject", ["md.trade.AAPL", "md.quote.O:SPY241220P00720000", "x" * SUBJECT_SHOWN]
)
def test_a_subject_up_to_the_limit_is_shown_whole(subject: str) -> None:
    assert shown_subject(subject) == subject


def test_a_longer_subject_shows_its_start_and_end_and_its_whole_size() -> None:
    subject = "md.trade." + "é" * SUBJECT_SHOWN + ".AAPL"  # é: 2 bytes
    shown = shown_subject(subject)
    head, rest = shown.split("…")
    tail, note = rest.split(" ", 1)
    assert (head, tail) == (subject[:SUBJECT_HEAD], subject[-SUBJECT_TAIL:])
    assert note == f"({len(subject.encode()):,} bytes, shortened here; --json has it whole)"
    assert note.startswith(f"({9 + 2 * SUBJECT_SHOWN + 5:,} bytes")
