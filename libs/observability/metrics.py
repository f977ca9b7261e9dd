"""Metrics every service shares (one registration per process)."""

from __future__ import annotations

from prometheus_client import Counter

DEAD_LETTERS = Counter(
    "tradebus_dead_letters_total", "Messages dead-lettered", ["service", "reason"]
)
