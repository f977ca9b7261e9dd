"""Wiring of the paper broker: config, journal, books, WebSocket server, price feed.

Start-up replays the journal into the books, compacts it (a snapshot of what
is live, see ``adapters/journal.py``), then serves. SIGTERM/SIGINT
stops the feed and the server, closes the journal and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from typing import Any

from libs.contract.envelope import WallClock
from libs.contract.options import warm_calendar
from libs.contract.sessions import CalendarError
from libs.observability.http import MetricsServer
from libs.observability.logs import setup_logging
from libs.runtime import run_service
from services.paper_broker.adapters.market import NatsPriceFeed
from services.paper_broker.adapters.server import PaperBrokerServer
from services.paper_broker.config import PaperBrokerSettings, PaperConfig
from services.paper_broker.domain.book import PaperBook

log = logging.getLogger(__name__)

SERVICE = "paper-broker"
#: How often working day orders are looked at for their close.
EXPIRY_CHECK_S = 1.0


async def serve(settings: PaperBrokerSettings, config: PaperConfig) -> None:
    credentials = config.credentials()
    book = PaperBook(config.book_config(), clock=WallClock(), ids=lambda: str(uuid.uuid4()))
    journal = config.journal_file()
    if journal is not None:
        started = time.perf_counter()
        replayed = journal.replay(book)
        log.info(
            "replayed %d journal entries from %s in %.2fs",
            replayed,
            journal.path,
            time.perf_counter() - started,
        )
        if config.journal_compact and replayed:
            journal.compact_or_keep(book)
        journal.open()
    feed = None
    if config.market_data.source == "nats":
        feed = NatsPriceFeed(
            url=settings.nats_url,
            name=f"{SERVICE}/{settings.instance}",
            user=settings.nats_user,
            password=settings.nats_password.get_secret_value() if settings.nats_password else None,
            subjects=config.market_data.subjects,
            consumer=config.market_data.consumer,
            linger_s=config.market_data.linger_s,
        )
    server = PaperBrokerServer(
        book,
        credentials,
        journal=journal,
        host=config.host,
        port=config.port,
        auth_timeout_s=config.auth_timeout_s,
        binary_frames=config.binary_frames,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)

    def health() -> tuple[bool, dict[str, Any]]:
        return True, {
            "service": SERVICE,
            "port": server.port,
            "connections": server.connections,
            "market_data": "none" if feed is None else ("up" if feed.connected else "down"),
        }

    try:
        async with (
            server,
            MetricsServer(settings.metrics_host, settings.metrics_port, health),
            asyncio.TaskGroup() as tasks,
        ):
            if feed is not None:
                tasks.create_task(
                    feed.run(server.market, stop, on_price=server.price), name="price-feed"
                )
            # Day orders (and an expired contract's) end at the close even when
            # no price comes then.
            while not stop.is_set():
                server.expire_orders()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(EXPIRY_CHECK_S):
                        await stop.wait()  # a period, not synchronisation
    finally:
        if journal is not None:
            journal.close()
    log.info("paper broker stopped")


def main(settings: PaperBrokerSettings, config: PaperConfig) -> int:
    """Run the paper broker; returns the process exit code."""
    setup_logging(settings.log_level, json_lines=settings.log_json)
    try:
        # The expiry days' closes: from the committed table (no import)
        # while it reaches four years ahead; the library past it.
        warm_calendar()
    except CalendarError as missing:
        log.error("paper broker cannot start: %s", missing)
        return 2
    run_service(serve(settings, config))
    return 0
