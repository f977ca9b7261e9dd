"""Wiring of the strategy-runner: settings, logging, metrics, signals, the runner."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from libs.bus.errors import BusError
from libs.contract.options import warm_calendar
from libs.contract.sessions import CalendarError
from libs.observability.http import MetricsServer
from libs.observability.logs import setup_logging
from libs.runtime import leaf_errors, run_service
from libs.store.errors import StoreError
from libs.strategy.spec import LoadedStrategy
from services.strategy_runner.config import RunnerSettings
from services.strategy_runner.runner import Runner

log = logging.getLogger(__name__)


async def serve(settings: RunnerSettings, strategies: list[LoadedStrategy]) -> None:
    """Run the strategies until SIGTERM/SIGINT, then drain and return."""
    runner = Runner(settings, strategies)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, runner.stop)
    async with MetricsServer(settings.metrics_host, settings.metrics_port, runner.health):
        await runner.run()
    log.info("strategy-runner stopped")


def main(settings: RunnerSettings, strategies: list[LoadedStrategy]) -> int:
    """Run the strategy-runner; returns the process exit code."""
    setup_logging(settings.log_level, json_lines=settings.log_json)
    try:
        # Not in a callback's watchdog time: a strategy may ask ctx.expired
        # about any option contract, listed in its config or not. The
        # committed table answers while it reaches four years ahead; past
        # it, the first question would import and build the library's
        # calendar (about 0.5 s of the 1 s watchdog), so this does it now.
        warm_calendar()
    except CalendarError as missing:
        log.error("strategy-runner cannot start: %s", missing)
        return 2
    failed = False
    try:
        run_service(serve(settings, strategies))
    except* (BusError, StoreError) as group:
        for error in leaf_errors(group):
            log.error("strategy-runner stopped: %s", error)
        failed = True
    return 1 if failed else 0
