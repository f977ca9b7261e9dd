"""Wiring of the demo source: settings, bus, metrics, signals, the publishing loop.

The loop ticks the pure :class:`~services.demo.domain.feed.DemoFeed` at the
configured rate and publishes what each tick yields, in order, waiting for
JetStream's acks. If publishing falls behind, the schedule restarts from now
rather than bursting to catch up (counted in a metric); nothing is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from typing import Any

from libs.bus.client import Bus
from libs.bus.errors import BusError
from libs.config import load_settings
from libs.contract.envelope import Clock, Event, WallClock
from libs.observability.http import MetricsServer
from libs.observability.logs import setup_logging
from services.demo import metrics
from services.demo.config import DemoSettings
from services.demo.domain.feed import DemoFeed, FeedConfig

log = logging.getLogger(__name__)

SERVICE = "demo"
#: Most ticks published in one go when catching up; beyond it the schedule resets.
MAX_CATCH_UP_TICKS = 1000


class DemoSource:
    """Publishes the feed at ``rate`` ticks per second until :meth:`stop`."""

    def __init__(self, bus: Bus, feed: DemoFeed, *, rate: float, clock: Clock) -> None:
        self.bus = bus
        self.feed = feed
        self.rate = rate
        self.clock = clock
        self.stopping = asyncio.Event()
        self.published = 0

    def stop(self) -> None:
        self.stopping.set()

    def health(self) -> tuple[bool, dict[str, Any]]:
        connected = bool(self.bus.nc.is_connected)
        return connected, {
            "service": SERVICE,
            "connected": connected,
            "published": self.published,
            "chains": self.feed.chains,
        }

    async def run(self) -> None:
        start = time.monotonic()
        ticks = 0
        while not self.stopping.is_set():
            due = int((time.monotonic() - start) * self.rate) + 1 - ticks
            if due > MAX_CATCH_UP_TICKS:
                metrics.SCHEDULE_RESETS.inc()
                log.warning(
                    "publishing is %d ticks behind %.0f/s; restarting the pace", due, self.rate
                )
                start = time.monotonic() - ticks / self.rate
                due = 1
            if due > 0:
                await self._publish(due)
                ticks += due
            delay = start + ticks / self.rate - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.stopping.wait()

    async def _publish(self, ticks: int) -> None:
        chains_before = self.feed.chains
        events: list[Event] = []
        for _ in range(ticks):
            events.extend(self.feed.tick(self.clock.now_ns()))
        await self.bus.publish_many(events)
        self.published += len(events)
        for e in events:
            metrics.EVENTS_PUBLISHED.labels(type=e.type).inc()
        chain = self.feed.last_chain
        if chain is not None and self.feed.chains > chains_before:
            metrics.CHAINS_PUBLISHED.inc(self.feed.chains - chains_before)
            fill = chain.fill
            log.info(
                "order chain: %s %s %s @ %s filled; try: tradebus audit %s",
                fill.payload.side,
                fill.payload.quantity,
                fill.payload.symbol,
                fill.payload.price,
                fill.id,
            )


async def serve(settings: DemoSettings) -> None:
    """Publish until SIGTERM/SIGINT, then finish the current publish and exit."""
    feed = DemoFeed(
        FeedConfig(
            symbols=settings.demo_symbols,
            seed=settings.demo_seed,
            chain_every_ns=int(settings.demo_chain_every_s * 1_000_000_000),
            run=uuid.uuid4().hex[:8],
        ),
        ids=uuid.uuid4,
    )
    bus = await Bus.connect(
        settings.nats_url,
        name=f"demo/{settings.instance}",
        user=settings.nats_user,
        password=settings.nats_password.get_secret_value() if settings.nats_password else None,
    )
    async with bus:
        await bus.ensure_stream()
        source = DemoSource(bus, feed, rate=settings.demo_rate, clock=WallClock())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, source.stop)
        async with MetricsServer(settings.metrics_host, settings.metrics_port, source.health):
            log.info(
                "demo publishing %s at %g trades/s, an order chain every %gs (seed %d)",
                ",".join(settings.demo_symbols),
                settings.demo_rate,
                settings.demo_chain_every_s,
                settings.demo_seed,
            )
            await source.run()
    log.info("demo stopped after %d events", source.published)


def main(settings: DemoSettings | None = None) -> int:
    """Run the demo source; returns the process exit code."""
    settings = settings or load_settings(DemoSettings)
    setup_logging(settings.log_level, json_lines=settings.log_json)
    try:
        asyncio.run(serve(settings))
    except BusError as e:
        log.error("demo stopped: %s", e)
        return 1
    return 0
