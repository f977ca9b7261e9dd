"""Step 0 of :mod:`services.stack.up`, before anything starts: what ``tradebus
up`` is asked for (:class:`UpOptions`), how it refuses to start
(:class:`UpError`), and the config files every service will be given,
loaded, valid and agreeing (:func:`checked_configs`), their notes and
warnings printed."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from services.stack import configs, wiring
from services.stack.supervisor import Printer

if TYPE_CHECKING:
    from libs.strategy.spec import LoadedStrategy

#: The labels of up's own lines and of the server keeper's.
LABEL = "up"
SERVERS_LABEL = "servers"


class UpError(Exception):
    """``tradebus up`` cannot start; the message says why and what to do."""


@dataclass(frozen=True)
class UpOptions:
    home: Path
    #: Services to run (names of :data:`wiring.SERVICES`); None: all of them.
    only: tuple[str, ...] | None = None
    #: Synthetic market data ticks per second (each: a quote and a trade per symbol).
    md_rate: str = "5/s"
    #: strategies.yaml / risk.yaml; None: the ones in deploy/config/.
    strategies: Path | None = None
    risk: Path | None = None
    paper_port: int | None = None
    #: None: the preferred port if free, else any; 0: any free port; N: exactly N.
    nats_port: int | None = None
    nats_monitor_port: int | None = None
    postgres_port: int | None = None
    metrics_port: int | None = None
    stop_timeout: float = 10.0


@dataclass(frozen=True)
class Checked:
    """The config files the services will be given, loaded and valid."""

    strategies: Path
    risk: Path
    #: Loaded once; the warnings and marketdata's symbols use this copy.
    loaded_strategies: list[LoadedStrategy]


def checked_configs(options: UpOptions, names: list[str], printer: Printer) -> Checked:
    """The configs first: a bad one refuses the start (:class:`UpError`,
    :class:`wiring.WiringError`) before anything runs."""
    strategies = wiring.config_path(options.strategies, "strategies.yaml")
    risk = wiring.config_path(options.risk, "risk.yaml")
    loaded, notes = _check_configs(_config_files(names, strategies, risk))
    loaded_strategies = loaded.strategies or []
    # config check's notes too (a contract already expired, an account no
    # broker serves while its strategies run in shadow mode): up printed
    # none of them.
    for note in notes:
        printer.line(LABEL, f"note: {note}")
    # config check's warnings of the strategies' symbols, but none of
    # marketdata's TRADEBUS_SYMBOLS: up subscribes it to those symbols itself.
    for warning in configs.symbol_warnings(loaded.strategies, loaded.files, None):
        printer.alert(LABEL, warning)
    if "marketdata" in names and "strategy-runner" in names:
        channels = os.environ.get("TRADEBUS_CHANNELS", wiring.DEFAULT_CHANNELS)
        for warning in wiring.bar_interval_warnings(loaded_strategies, channels):
            printer.alert(LABEL, warning)
    return Checked(strategies, risk, loaded_strategies)


def _config_files(names: list[str], strategies: Path, risk: Path) -> configs.ConfigFiles:
    """The config files the services in ``names`` will be given."""
    return configs.ConfigFiles(
        strategies=strategies if {"strategy-runner", "marketdata"} & set(names) else None,
        risk=risk if "risk-gate" in names else None,
        brokers=wiring.BROKERS_CONFIG if "broker-gateway" in names else None,
        paper=wiring.PAPER_CONFIG if "paper-broker" in names else None,
    )


def _check_configs(files: configs.ConfigFiles) -> tuple[configs.Loaded, tuple[str, ...]]:
    """The files, loaded, and the notes of their cross-check; refuse to start
    (:class:`UpError`) unless every file is valid (a service refusing its
    file exits 2, and the stack would stop right after starting) and the
    files agree (:func:`configs.cross_check`: else the risk-gate denies, or
    no gateway takes, every order of a strategy or account)."""
    loaded = configs.load_configs(files)
    if loaded.problems:
        raise UpError("\n".join(loaded.problems))
    # The paper URLs are not compared: the stack points them at its own paper
    # broker. The wall clock, as config check's: a contract already expired
    # is a note.
    found = configs.cross_check(loaded, paper_url=False, now_ns=time.time_ns())
    if found.problems:
        raise UpError(
            "the config files do not agree (tradebus config check shows it too):\n"
            + "\n".join(f"  {p}" for p in found.problems)
        )
    return loaded, found.notes
