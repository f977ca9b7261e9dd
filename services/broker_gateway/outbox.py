"""The gateway's :class:`Outbox`: every account's events published in the
order they were produced."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from libs import trace
from libs.bus.client import Bus
from libs.contract.envelope import Event
from services.broker_gateway import metrics


class Outbox:
    """Publishes events in the order they were handed in.

    What was handed in while the previous publish was out leaves together:
    back to back on one connection (stored in this order), the acks awaited
    together. An order's acceptance and its fill, taken in from one read of
    the broker's socket, so cost one round trip and one delivery to each
    reader, not two.
    """

    def __init__(self, bus: Bus, *, max_pending: int = 10_000) -> None:
        self.bus = bus
        self.max_pending = max_pending
        # Not bounded itself: see _queued.
        self._queue: asyncio.Queue[tuple[Sequence[Event], asyncio.Future[None] | None]] = (
            asyncio.Queue()
        )
        self._room = asyncio.Event()  # set each time run() has taken the queue

    async def publish(self, events: Sequence[Event]) -> None:
        """Queue ``events`` and wait until JetStream has stored them all."""
        if not events:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queued((events, done))
        await done

    async def post(self, events: Sequence[Event]) -> None:
        """Queue ``events`` without waiting for them to be stored (they still
        leave in order; a publish that fails for good ends the service)."""
        if events:
            await self._queued((events, None))

    async def _queued(self, item: tuple[Sequence[Event], asyncio.Future[None] | None]) -> None:
        """Queue ``item`` now, then wait while more than ``max_pending`` are queued.

        The events of one order come from three tasks (the stream, the
        reconciliations, the commands), each queueing them in the step the
        tracker made them: that is what keeps an order's OrderAccepted before
        its fills, and its fills in cumulative order. So the back-pressure
        comes after queueing, never before: a bounded asyncio.Queue let a
        task that found room overtake one waiting for it, which, woken, found
        the queue full again and went to the back.
        """
        self._queue.put_nowait(item)
        while self._queue.qsize() > self.max_pending:
            self._room.clear()
            await self._room.wait()

    async def run(self) -> None:
        """Publish until cancelled; a publish that fails for good ends the service."""
        while True:
            items = [await self._queue.get()]
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            self._room.set()
            events = [e for batch, _ in items for e in batch]
            if trace.ON:
                for key in {trace.order_key(e) for e in events} - {None}:
                    trace.mark("gateway: outbox wakes", key)
            waiting = [done for _, done in items if done is not None]
            try:
                await self.bus.publish_together(events)
                for event in events:
                    account = str(getattr(event.payload, "account", ""))
                    metrics.EVENTS_PUBLISHED.labels(account=account, type=event.type).inc()
            except BaseException as e:
                for done in waiting:
                    if not done.done():
                        done.set_exception(e)
                raise
            for done in waiting:
                if not done.done():
                    done.set_result(None)
