"""Wiring of the event-recorder: settings, logging, metrics, signals, the loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from libs.config import load_settings
from libs.observability.http import MetricsServer
from libs.observability.logs import setup_logging
from libs.runtime import run_service
from services.recorder.config import RecorderSettings
from services.recorder.recorder import Recorder

log = logging.getLogger(__name__)


async def serve(settings: RecorderSettings) -> None:
    """Run the recorder until SIGTERM/SIGINT, then finish the batch and exit."""
    recorder = Recorder(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, recorder.stop)
    async with MetricsServer(settings.metrics_host, settings.metrics_port, recorder.health):
        await recorder.run()
    log.info("recorder stopped at sequence %d", recorder.last_seq)


def main(settings: RecorderSettings | None = None) -> None:
    settings = settings or load_settings(RecorderSettings)
    setup_logging(settings.log_level, json_lines=settings.log_json)
    run_service(serve(settings))
