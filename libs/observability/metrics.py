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

from collections.abc import Iterable
from typing import Any, Self, cast

import prometheus_client
from prometheus_client.samples import Sample


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


class KnownGauge(prometheus_client.Gauge):
    """An unlabelled gauge with no sample until it is ``set``, and none again
    after ``forget()``. A plain one reads 0 from its creation and keeps its
    last value for ever: a board cannot tell "not known" (not rebuilt yet,
    not recording) from a real 0 or a figure gone stale."""

    _known = False

    def set(self, value: float) -> None:
        super().set(value)
        self._known = True

    def forget(self) -> None:
        """No sample until the next ``set``."""
        self._known = False

    def _child_samples(self) -> Iterable[Sample]:
        return super()._child_samples() if self._known else ()


DEAD_LETTERS = Counter(
    "tradebus_dead_letters_total", "Messages dead-lettered", ["service", "reason"]
)
