"""Wiring of the risk-gate: settings, limits, logging, metrics, signals, the loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from libs.observability.http import MetricsServer
from libs.observability.logs import setup_logging
from libs.runtime import run_service
from services.risk_gate.config import RiskGateSettings, load_limits
from services.risk_gate.domain.limits import RiskLimits
from services.risk_gate.gate import RiskGate

log = logging.getLogger(__name__)


async def serve(settings: RiskGateSettings, limits: RiskLimits) -> None:
    """Run the gate until SIGTERM/SIGINT, then finish the batch in hand and exit."""
    gate = RiskGate(settings, limits)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, gate.stop)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(
            MetricsServer(settings.metrics_host, settings.metrics_port, gate.health)
        )
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(gate.run(), name="risk-gate")
    log.info("risk-gate stopped at sequence %d", gate.last_seq)


def main(settings: RiskGateSettings, config: Path) -> int:
    """Run the risk-gate with the limits in ``config``; returns the exit code.

    The limits are read (and refused if invalid) before anything connects.
    """
    setup_logging(settings.log_level, json_lines=settings.log_json)
    limits = load_limits(config)
    log.info(
        "risk limits from %s: %d accounts, %d strategies",
        config,
        len(limits.accounts),
        len(limits.strategies),
    )
    run_service(serve(settings, limits))
    return 0
