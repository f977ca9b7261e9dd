"""Wiring of the marketdata service: settings, source, bus, sink, metrics, signals.

One source (Polygon live, synthetic or the local cache) runs until SIGTERM /
SIGINT sets the stop event (or, for the cache, until the cache is replayed);
everything it yields goes through the :class:`JetStreamSink`, which returns
only once JetStream has acknowledged it, and which makes the option marks
(:mod:`services.marketdata.domain.marks`) of the quotes passing through; a
second task publishes the marks the throttle held back once they are due, and
re-marks the quotes that still stand.
Exit codes: 0 after a clean stop or a finished replay, 1 when the bus or the
source fails, 2 for bad settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import signal
from typing import Any

from libs.bus.client import Bus
from libs.bus.errors import BusError
from libs.config import ConfigError, load_settings
from libs.contract.envelope import Clock, WallClock
from libs.observability.http import MetricsServer
from libs.observability.logs import setup_logging
from libs.runtime import run_service
from services.marketdata.config import FRESH_RUN, MarketdataSettings
from services.marketdata.domain.cache import CacheError
from services.marketdata.domain.marks import OptionMarks
from services.marketdata.feed import FeedSource
from services.marketdata.sink import JetStreamSink

log = logging.getLogger(__name__)

SERVICE = "marketdata"


def synthetic_run(settings: MarketdataSettings) -> str:
    """The salt of this start's synthetic ids: ``TRADEBUS_SYNTHETIC_RUN``, or a
    new random one when it is ``fresh`` (the same run for two starts would give
    the second start's different prices the first one's ids)."""
    if settings.synthetic_run == FRESH_RUN:
        run = f"start-{secrets.token_hex(6)}"
        log.info("synthetic run %s (TRADEBUS_SYNTHETIC_RUN=%s)", run, FRESH_RUN)
        return run
    return settings.synthetic_run


def build_source(settings: MarketdataSettings, clock: Clock) -> FeedSource:
    """The source ``settings.source`` names; :class:`ConfigError` if it cannot be built."""
    symbols = settings.symbol_list
    if not symbols:
        raise ConfigError("TRADEBUS_SYMBOLS: no symbols")
    if settings.source == "synthetic":
        from services.marketdata.adapters.synthetic import SyntheticSource
        from services.marketdata.domain.synthetic import (
            SyntheticConfig,
            SyntheticMarket,
            parse_channels,
        )

        try:
            config = SyntheticConfig(
                symbols=symbols,
                seed=settings.synthetic_seed,
                channels=parse_channels(settings.channels),
                run=synthetic_run(settings),
            )
        except ValueError as e:
            raise ConfigError(f"TRADEBUS_CHANNELS / TRADEBUS_SYMBOLS: {e}") from None
        return SyntheticSource(SyntheticMarket(config), rate=settings.synthetic_rate, clock=clock)
    if settings.source == "cache":
        from services.marketdata.adapters.cache import CacheSource, ParquetCache
        from services.marketdata.domain.cache import parse_speed

        if settings.cache_from is None:
            raise ConfigError("TRADEBUS_CACHE_FROM: --source cache needs --from (a date)")
        end = settings.cache_to or settings.cache_from
        if end < settings.cache_from:
            raise ConfigError(f"TRADEBUS_CACHE_TO: {end} is before {settings.cache_from}")
        return CacheSource(
            ParquetCache(settings.cache_dir),
            symbols,
            settings.cache_from,
            end,
            timespan=settings.cache_timespan,
            speed=parse_speed(settings.cache_speed),
            clock=clock,
        )
    # Imported here: the live feed's dependencies are only needed when it runs.
    try:
        from services.marketdata.adapters.polygon.client import (  # type: ignore[import-not-found,unused-ignore]
            PolygonSource,
        )
    except ImportError as e:
        raise ConfigError(f"TRADEBUS_SOURCE: the polygon source is not available: {e}") from e
    source: FeedSource = PolygonSource(settings, clock=clock)
    return source


def flush_every_s(settings: MarketdataSettings) -> float:
    """How often held-back marks and standing quotes are looked at: half the
    interval (the refresh without one), between 50 ms and 1 s (a held mark or
    a re-mark goes out at most that late)."""
    period = settings.mark_min_interval_s or settings.mark_refresh_s
    return min(max(period / 2, 0.05), 1.0)


async def run_source(
    source: FeedSource,
    sink: JetStreamSink,
    stop: asyncio.Event,
    clock: Clock,
    *,
    flush_every_s: float,
) -> None:
    """Run ``source`` until it ends or ``stop`` is set; meanwhile publish the
    marks the throttle held back as they fall due. A failure of either stops
    both and is raised as itself (a :class:`~libs.bus.errors.BusError`, say)."""

    # Without an interval no quote is ever held back, and without re-marks
    # none stands: then nothing ever falls due.
    policy = sink.marks.policy if sink.marks is not None else None
    holds = policy is not None and policy.min_interval_ns > 0

    async def source_then_stop() -> None:
        try:
            await source.run(sink, stop)
            if holds:
                # The flusher's last look may come before the source's last
                # publish (it drains what it had parsed after the stop), and a
                # quote held then is not due yet: mark what is held once
                # nothing more comes.
                await sink.publish_due(clock.now_ns(), final=True)
        finally:
            stop.set()

    async def flush_due_marks() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(flush_every_s):
                    await stop.wait()
            await sink.publish_due(clock.now_ns())

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(source_then_stop(), name="marketdata-source")
            if holds or (policy is not None and policy.max_standing_ns):
                tg.create_task(flush_due_marks(), name="marketdata-marks")
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None


class Service:
    """The running service: its source, its sink and what /health reports."""

    def __init__(self, settings: MarketdataSettings, source: FeedSource, sink: JetStreamSink):
        self.settings = settings
        self.source = source
        self.sink = sink
        self.stop = asyncio.Event()

    def health(self) -> tuple[bool, dict[str, Any]]:
        connected = bool(self.sink.bus.nc.is_connected)
        last = self.sink.last_event_ns
        detail: dict[str, Any] = {
            "service": SERVICE,
            "source": self.settings.source,
            "connected": connected,
            "published": self.sink.published,
            "last_event_ns": last,
            "last_event_time": (
                dt.datetime.fromtimestamp(last / 1e9, tz=dt.UTC).isoformat()
                if last is not None
                else None
            ),
        }
        ok = connected
        # A source may report more (the live feed: connection state, staleness).
        source_health = getattr(self.source, "health", None)
        if callable(source_health):
            source_ok, source_detail = source_health()
            ok = ok and bool(source_ok)
            detail["feed"] = source_detail
        return ok, detail


async def serve(settings: MarketdataSettings, *, clock: Clock | None = None) -> None:
    """Run the source until stopped (or done), publishing through JetStream."""
    clock = clock or WallClock()
    source = build_source(settings, clock)
    bus = await Bus.connect(
        settings.nats_url,
        name=f"{SERVICE}/{settings.instance}",
        user=settings.nats_user,
        password=settings.nats_password.get_secret_value() if settings.nats_password else None,
    )
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(bus)
        await bus.ensure_stream()
        sink = JetStreamSink(bus, marks=OptionMarks(settings.mark_policy()))
        service = Service(settings, source, sink)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, service.stop.set)
        await stack.enter_async_context(
            MetricsServer(settings.metrics_host, settings.metrics_port, service.health)
        )
        log.info("marketdata: source %s, symbols %s", settings.source, settings.symbols)
        log.info(
            "option marks from quotes: at most one per %gs per contract, a move of %s or "
            "after %gs; a standing quote re-marked every %gs for up to %gs; none from a "
            "spread wider than %s of the midpoint and %d ticks (TRADEBUS_MARK_*)",
            settings.mark_min_interval_s,
            settings.mark_min_change,
            settings.mark_refresh_s,
            settings.mark_refresh_s,
            settings.mark_max_standing_s,
            settings.mark_max_spread or "any",
            settings.mark_max_spread_ticks,
        )
        await run_source(source, sink, service.stop, clock, flush_every_s=flush_every_s(settings))
    log.info("marketdata stopped after %d events", service.sink.published)


def main(settings: MarketdataSettings | None = None) -> int:
    """Run the service; returns the process exit code."""
    try:
        settings = settings or load_settings(MarketdataSettings)
    except ConfigError as e:
        logging.getLogger(__name__).error("%s", e)
        return 2
    setup_logging(settings.log_level, json_lines=settings.log_json)
    try:
        run_service(serve(settings))  # a ConfigError in it: exit 2 (see run_service)
    except (BusError, CacheError) as e:
        log.error("marketdata stopped: %s", e)
        return 1
    return 0
