"""The READMEs' tables name what exists: every environment variable a
settings table lists is a setting (with the default it gives), every metric
the docs and the Grafana boards name is registered with the labels they
use, and every option of the CLI reference is one its command takes.

The tables are read as they are written (a backticked name in the first
cell, a backticked default in the second); a row this reading does not
understand is left alone rather than guessed at.
"""

from __future__ import annotations

import importlib
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import typer
from prometheus_client.metrics import MetricWrapperBase
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from libs import trace
from services.cli import app

ROOT = Path(__file__).resolve().parents[2]
READMES = [ROOT / "README.md", *sorted((ROOT / "services").rglob("README.md"))]
BOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
SETTINGS = {
    "libs.config": "ServiceSettings",
    "services.recorder.config": "RecorderSettings",
    "services.demo.config": "DemoSettings",
    "services.marketdata.config": "MarketdataSettings",
    "services.strategy_runner.config": "RunnerSettings",
    "services.risk_gate.config": "RiskGateSettings",
    "services.broker_gateway.config": "GatewaySettings",
    "services.paper_broker.config": "PaperBrokerSettings",
}
VARIABLE = re.compile(r"`((?:TRADEBUS_[A-Z0-9_]+)|NATS_URL|DATABASE_URL|POLYGON_API_KEY)`")
METRIC = re.compile(r"(tradebus_[a-z0-9_]+)(?:\{([^}]*)\})?")
#: Names of that shape that are no metric.
NOT_METRICS = {"tradebus_readonly"}  # the PostgreSQL role Grafana reads as


def _rows(path: Path) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        for line in path.read_text().splitlines()
        if line.startswith("| `")
    ]


def _defaults() -> dict[str, list[Any]]:
    """Each variable the settings classes read -> the defaults they give it."""
    out: dict[str, list[Any]] = {}
    for module, name in SETTINGS.items():
        cls: type[BaseSettings] = getattr(importlib.import_module(module), name)
        prefix = str(cls.model_config.get("env_prefix", ""))
        for field_name, field in cls.model_fields.items():
            default = None if field.default_factory is not None else field.default
            names = [prefix + field_name.upper()]
            if isinstance(field.validation_alias, AliasChoices):
                names = [str(c) for c in field.validation_alias.choices]
            for variable in names:
                out.setdefault(variable, []).append(default)
    return out


def _same(documented: str, default: Any) -> bool:
    if hasattr(default, "get_secret_value"):
        default = default.get_secret_value()
    if isinstance(default, bool):
        return documented == str(default).lower()
    if isinstance(default, int | float | Decimal):
        return Decimal(documented) == Decimal(str(default))
    if isinstance(default, tuple):
        return documented == ",".join(default)
    return documented == str(default)


def test_every_variable_a_readme_table_names_is_a_setting_with_that_default() -> None:
    defaults = _defaults()
    wrong = []
    for path in READMES:
        for cells in _rows(path):
            variables = VARIABLE.findall(cells[0])
            if not variables or not re.fullmatch(r"(`[A-Z0-9_]+`( / )?)+", cells[0]):
                continue
            for variable in variables:
                where = f"{path.relative_to(ROOT)}: {variable}"
                if variable == trace.ENV:  # read once at import, not through a settings class
                    continue
                if variable not in defaults:
                    wrong.append(f"{where} is no setting")
                    continue
                documented = re.match(r"`([^`]*)`", cells[1]) if len(cells) > 1 else None
                if (
                    len(variables) == 1
                    and documented is not None
                    and not any(_same(documented.group(1), d) for d in defaults[variable])
                ):
                    wrong.append(f"{where}: {documented.group(1)}, not {defaults[variable]}")
    assert wrong == []


def _metrics() -> dict[str, set[str]]:
    """Every registered metric's name -> its label names."""
    out: dict[str, set[str]] = {}
    paths = [*(ROOT / "services").rglob("metrics.py"), *(ROOT / "libs").rglob("metrics.py")]
    for path in paths:
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                out[value._name] = set(value._labelnames)
    return out


def _registered(name: str, metrics: dict[str, set[str]]) -> set[str] | None:
    for suffix in ("_total", "_bucket", "_sum", "_count", ""):
        if name.endswith(suffix) and name.removesuffix(suffix) in metrics:
            return metrics[name.removesuffix(suffix)]
    return metrics.get(name)


def test_every_metric_the_docs_and_boards_name_is_registered_with_its_labels() -> None:
    metrics = _metrics()
    wrong = []
    for path in READMES:
        for name, labels in METRIC.findall(path.read_text()):
            if name in NOT_METRICS:
                continue
            have = _registered(name, metrics)
            named = {lb.split("=")[0].strip() for lb in labels.split(",") if lb.strip()}
            if have is None or not named <= have:
                wrong.append(f"{path.relative_to(ROOT)}: {name}{{{labels}}} (labels {have})")
    for path in BOARDS:
        exprs = [
            target.get("expr", "")
            for panel in json.loads(path.read_text())["panels"]
            for p in [panel, *panel.get("panels", [])]
            for target in p.get("targets", [])
        ]
        for expr in exprs:
            by = re.findall(r"by \(([^)]*)\)", expr)
            grouped = {label.strip() for labels in by for label in labels.split(",")}
            for name, selector in METRIC.findall(expr):
                have = _registered(name, metrics)
                named = set(re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", selector))
                if have is None or not (named | grouped) - {"le"} <= have:
                    wrong.append(f"{path.name}: {name} in {expr!r} (labels {have})")
    assert wrong == []


def _commands() -> dict[str, set[str]]:
    """``"risk-gate checkpoint"`` -> the options it takes."""
    out: dict[str, set[str]] = {}

    def walk(command: Any, path: list[str]) -> None:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])
            return
        out[" ".join(path)] = {
            opt for p in command.params for opt in (*p.opts, *p.secondary_opts) if opt[:2] == "--"
        }

    walk(typer.main.get_command(app), [])
    return out


def _cli_rows() -> list[tuple[str, str]]:
    """(command, its usage) of each row of the README's CLI reference."""
    out = []
    for cells in _rows(ROOT / "README.md"):
        usage = re.match(r"`tradebus ([^`]*)`", cells[0])
        if usage is None:
            continue
        words = []
        for word in usage.group(1).split():
            if not re.fullmatch(r"[a-z][a-z-]*(\\\|[a-z][a-z-]*)*", word):
                break
            words.append(word.split("\\|"))
        heads = [" ".join(w[0] for w in words[:-1])] if len(words) > 1 else [""]
        for last in words[-1]:
            out.append(((heads[0] + " " + last).strip(), usage.group(1)))
    return out


@pytest.mark.parametrize(("command", "usage"), _cli_rows())
def test_every_option_of_the_cli_reference_is_one_its_command_takes(
    command: str, usage: str
) -> None:
    commands = _commands()
    assert command in commands, f"no command tradebus {command}"
    assert set(re.findall(r"--[a-z][a-z-]*", usage)) <= commands[command]
