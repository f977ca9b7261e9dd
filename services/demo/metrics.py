"""The demo source's Prometheus metrics."""

from __future__ import annotations

from libs.observability.metrics import Counter

EVENTS_PUBLISHED = Counter(
    "tradebus_demo_events_published_total", "Events the demo published (acked)", ["type"]
)
CHAINS_PUBLISHED = Counter(
    "tradebus_demo_chains_published_total", "Signal-to-fill order chains the demo published"
)
SCHEDULE_RESETS = Counter(
    "tradebus_demo_schedule_resets_total",
    "Times publishing fell too far behind the rate and the schedule restarted from now",
)
