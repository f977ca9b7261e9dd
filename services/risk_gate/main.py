"""Wiring of the risk-gate: settings, limits, logging, metrics, signals, the loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from libs.contract.options import warm_calendar
from libs.contract.sessions import CalendarError
from libs.observability.http import MetricsServer
from libs.observability.logs import setup_logging
from libs.runtime import run_service
from services.risk_gate import metrics
from services.risk_gate.config import RiskGateSettings, load_limits
from services.risk_gate.domain.limits import RiskLimits
from services.risk_gate.gate import RiskGate

log = logging.getLogger(__name__)


async def checkpoints(gate: RiskGate, every_s: float, config: Path) -> None:
    """Every ``every_s``, fold the store into a new state checkpoint in a child
    process (``risk-gate checkpoint``, at low priority), so that a restart
    folds only what came after it. Not in this process: a fold of a busy
    feed's minutes is seconds of CPU, which the order path must not wait for.
    """
    while not gate.stopping.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every_s):
                await gate.stopping.wait()
        if gate.stopping.is_set() or gate.phase != "live":
            continue
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.cli",
                "risk-gate",
                "checkpoint",
                "--config",
                str(config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as e:  # no process to be had now: the next round tries again
            metrics.CHECKPOINT_RUNS.labels(outcome="failed").inc()
            log.warning("cannot start the checkpoint fold: %s", e)
            continue
        done = asyncio.ensure_future(proc.communicate())
        stopped = asyncio.ensure_future(gate.stopping.wait())
        await asyncio.wait([done, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not done.done():  # stopping: the child's write is one transaction
            proc.terminate()
            await proc.wait()
            done.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await done
            return
        _, errors = done.result()
        if proc.returncode == 0:
            metrics.CHECKPOINT_RUNS.labels(outcome="ok").inc()
        else:
            metrics.CHECKPOINT_RUNS.labels(outcome="failed").inc()
            tail = errors.decode(errors="replace").strip().splitlines()[-3:]
            log.warning("checkpoint fold exited %s: %s", proc.returncode, " | ".join(tail))


async def serve(settings: RiskGateSettings, limits: RiskLimits, config: Path | None = None) -> None:
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
            if config is not None and settings.checkpoint_every_s > 0:
                tasks.create_task(
                    checkpoints(gate, settings.checkpoint_every_s, config), name="checkpoints"
                )
    log.info("risk-gate stopped at sequence %d", gate.last_seq)


def main(settings: RiskGateSettings, config: Path) -> int:
    """Run the risk-gate with the limits in ``config``; returns the exit code.

    The limits are read (and refused if invalid) before anything connects.
    """
    setup_logging(settings.log_level, json_lines=settings.log_json)
    try:
        # The expiry days' closes: from the committed table (no import)
        # while it reaches four years ahead; the library past it.
        warm_calendar()
    except CalendarError as missing:
        log.error("risk-gate cannot start: %s", missing)
        return 2
    limits = load_limits(config)
    log.info(
        "risk limits from %s: %d accounts, %d strategies",
        config,
        len(limits.accounts),
        len(limits.strategies),
    )
    run_service(serve(settings, limits, config))
    return 0
