"""The ports of the marketdata service: where events come from and go to.

Every source (Polygon live, synthetic, local cache) is a :class:`FeedSource`
that pushes normalised events into an :class:`EventSink`. The sink publishes
to JetStream with ``Nats-Msg-Id`` = event id, and each event's id derives from
its source record (symbol + channel + sequence or window start), so a record
seen twice (a reconnect, a gap-fill overlapping live bars, a replayed cache)
is published once and recorded once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from libs.contract.envelope import Event


class EventSink(Protocol):
    """Takes normalised events; returns once JetStream has acknowledged them."""

    async def publish(self, events: Sequence[Event]) -> None: ...


class FeedSource(Protocol):
    """A source of market data; runs until ``stop`` is set."""

    async def run(self, sink: EventSink, stop: asyncio.Event) -> None: ...
