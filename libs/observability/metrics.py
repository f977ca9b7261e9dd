"""Metric types every service uses, and the metrics they share.

``Counter``, ``Gauge`` and ``Histogram`` here are prometheus-client's, with
one change: ``labels(...)`` remembers the child it returned for those label
values. prometheus-client takes a lock, turns every value into a string and
looks the child up on each call; on a per-message path (a few calls per
order in each service) that was several per cent of a service's CPU. Children
are never removed here (no ``remove``/``clear``), so a remembered child is
always the one exported.
"""

from __future__ import annotations

from typing import Any, Self, cast

import prometheus_client


class _RemembersChildren:
    """``labels`` with a per-metric cache of children (keyed as called)."""

    def labels(self, *values: Any, **by_name: Any) -> Self:
        key = (values, tuple(by_name.items()))
        children: dict[Any, Self] = self.__dict__.setdefault("_tradebus_children", {})
        child = children.get(key)
        if child is None:
            child = cast(Self, super().labels(*values, **by_name))  # type: ignore[misc]
            children[key] = child
        return child


class Counter(_RemembersChildren, prometheus_client.Counter):
    pass


class Gauge(_RemembersChildren, prometheus_client.Gauge):
    pass


class Histogram(_RemembersChildren, prometheus_client.Histogram):
    pass


DEAD_LETTERS = Counter(
    "tradebus_dead_letters_total", "Messages dead-lettered", ["service", "reason"]
)
