"""The config files ``tradebus up`` hands to its services, checked before any starts.

Each file is loaded by the loader of the service that reads it (the same
validation, the same messages), so that a file the service would refuse at
start-up (exit code 2, a restart loop under the supervisor) is refused here,
before anything runs, with the file and the offending key named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from libs.strategy.spec import LoadedStrategy
    from services.broker_gateway.config import BrokersConfig
    from services.paper_broker.config import PaperConfig
    from services.risk_gate.domain.limits import RiskLimits


@dataclass(frozen=True)
class ConfigFiles:
    """The files to check; None: not in use (that service does not run)."""

    strategies: Path | None = None
    risk: Path | None = None
    brokers: Path | None = None
    paper: Path | None = None


@dataclass(frozen=True)
class Loaded:
    """Each file's validated content; None where the file was not given or is invalid."""

    files: ConfigFiles
    strategies: list[LoadedStrategy] | None = None
    risk: RiskLimits | None = None
    brokers: BrokersConfig | None = None
    paper: PaperConfig | None = None
    #: One entry per invalid file: ``<file> is invalid:`` then a line per problem.
    problems: tuple[str, ...] = ()


def _invalid(path: Path, lines: list[str]) -> str:
    return "\n".join([f"{path} is invalid:", *(f"  {line}" for line in lines)])


def _without_path(path: Path, message: str) -> str:
    return message.removeprefix(f"{path}: ")


def load_configs(files: ConfigFiles) -> Loaded:
    """Load and validate every file given, collecting every file's problems."""
    problems: list[str] = []
    strategies = risk = brokers = paper = None
    if files.strategies is not None:
        from libs.strategy.spec import StrategyConfigError, load_strategies

        try:
            strategies = load_strategies(files.strategies)
        except StrategyConfigError as e:
            problems.append(_invalid(files.strategies, list(e.problems)))
    if files.risk is not None:
        from services.risk_gate.config import RiskConfigError, load_limits

        try:
            risk = load_limits(files.risk)
        except RiskConfigError as e:
            lines = [_without_path(files.risk, line) for line in str(e).splitlines()]
            problems.append(_invalid(files.risk, lines))
    if files.brokers is not None:
        from libs.config import ConfigError
        from services.broker_gateway.config import load_brokers_config

        try:
            brokers = load_brokers_config(files.brokers)
        except ConfigError as e:
            problems.append(_invalid(files.brokers, [_without_path(files.brokers, str(e))]))
    if files.paper is not None:
        from libs.config import ConfigError
        from services.paper_broker.config import load_paper_config

        try:
            paper = load_paper_config(files.paper)
        except ConfigError as e:
            problems.append(_invalid(files.paper, [_without_path(files.paper, str(e))]))
    return Loaded(files, strategies, risk, brokers, paper, tuple(problems))
