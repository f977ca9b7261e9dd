"""What ``tradebus up`` runs: each service's command line, environment and config.

The whole order path, each service its own process with its own NATS user:

    marketdata (synthetic) ─▶ strategy-runner ─▶ risk-gate ─▶ broker-gateway ─▶ paper-broker
                                                                   ▲                 │ WebSocket
    recorder (everything into the store)                           └─────────────────┘

Configs come from ``deploy/config/*.yaml``; the two that must point at this
stack (the paper broker's port and journal, the gateway's paper URL) are
rewritten into ``<home>/config/``. The market data is synthetic, on the
symbols the strategies trade, with ``TRADEBUS_SYNTHETIC_RUN=fresh`` as in
docker-compose.yml: marketdata salts its ids anew at every start, so that a
restart's events are new events, not duplicates.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml

from libs.contract.options import underlyings
from libs.yamlfile import load_yaml
from services.marketdata.config import FRESH_RUN
from services.stack.credentials import Credentials, password_variable

if TYPE_CHECKING:
    from libs.strategy.spec import LoadedStrategy

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "deploy" / "config"
NATS_CONFIG = ROOT / "deploy" / "nats" / "nats-server.conf"
#: The paper broker's and the gateway's configs, rewritten for this stack.
PAPER_CONFIG = CONFIG_DIR / "paper.yaml"
BROKERS_CONFIG = CONFIG_DIR / "brokers.yaml"

#: Every service, in start order; they stop in reverse (producers first, the
#: recorder last, so that it records what the others published).
SERVICES = (
    "recorder",
    "paper-broker",
    "broker-gateway",
    "risk-gate",
    "strategy-runner",
    "marketdata",
)
#: The NATS user each service runs as (deploy/nats/nats-server.conf): its name.
NATS_USER = {name: name for name in SERVICES}
#: Every user of deploy/nats/nats-server.conf: the admin (``up`` declares the
#: stream as it), the operator (the CLI of whoever runs the stack) and the services'.
NATS_USERS = ("admin", "operator", *NATS_USER.values())

#: Synthetic bars the strategies see unless TRADEBUS_CHANNELS says otherwise:
#: one-second bars, so that the example strategies trade within a minute.
DEFAULT_CHANNELS = "trades,quotes,second_bars"


class WiringError(Exception):
    """A config file is missing or invalid; the message names it."""


@dataclass(frozen=True)
class Plan:
    """One service to run: ``tradebus <argv...>`` with this environment."""

    name: str
    argv: list[str]
    env: dict[str, str]


@dataclass(frozen=True)
class Inputs:
    home: Path
    nats_url: str
    database_url: str
    #: None: NATS is not ours; services use NATS_<USER>_PASSWORD if set, else
    #: whatever TRADEBUS_NATS_USER / TRADEBUS_NATS_PASSWORD the environment holds.
    credentials: Credentials | None
    #: strategies.yaml, handed to the strategy-runner.
    strategies: Path
    risk: Path
    paper_port: int
    md_rate: str
    #: ``strategies`` as ``up`` loaded and validated it, once
    #: (:func:`services.stack.configs.load_configs`): marketdata's symbols.
    loaded_strategies: Sequence[LoadedStrategy]
    #: The paper account's key pair (:meth:`Credentials.paper_env`), handed to
    #: the paper broker and the gateway whoever runs NATS; None: the
    #: credentials' (if any).
    paper_keys: Mapping[str, str] | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


def config_path(given: Path | None, name: str) -> Path:
    """``given``, else ``deploy/config/<name>``; it must exist."""
    path = (given or CONFIG_DIR / name).resolve()
    if not path.is_file():
        raise WiringError(f"{path}: no such file (give another with the matching option)")
    return path


def strategy_symbols(strategies: Sequence[LoadedStrategy]) -> list[str]:
    """The symbols ``strategies`` trade, each once, in the order first named,
    then the underlyings of their option contracts that none of them trades:
    an exercise or assignment books their shares, which the risk-gate and
    the strategies' ledgers mark by the underlying's prices (no feed of it,
    nothing marked them)."""
    symbols: dict[str, None] = {}
    for strategy in strategies:
        for symbol in strategy.spec.symbols:
            symbols[symbol] = None
    return [*symbols, *underlyings(symbols)]


#: The bars each market-data channel publishes.
CHANNEL_INTERVAL = {"second_bars": "1s", "minute_bars": "1m"}


def bar_interval_warnings(strategies: Sequence[LoadedStrategy], channels: str) -> list[str]:
    """A line per strategy of ``strategies`` that takes bars of an interval
    the demo feed (``channels``, as ``TRADEBUS_CHANNELS``) does not publish:
    it would run and see no bar at all."""
    published = {
        CHANNEL_INTERVAL[c.strip()] for c in channels.split(",") if c.strip() in CHANNEL_INTERVAL
    }
    out = []
    for strategy in strategies:
        wanted = strategy.spec.bar_interval
        if wanted is None or wanted in published:
            continue
        offered = ", ".join(f"{iv} bars" for iv in sorted(published)) or "no bars"
        fixes = [f"bar_interval: {iv}" for iv in sorted(published)]
        channel = next(c for c, iv in CHANNEL_INTERVAL.items() if iv == wanted)
        fixes.append(f"{channel} in TRADEBUS_CHANNELS")
        out.append(
            f"strategy {strategy.spec.name} takes {wanted} bars (bar_interval), but the demo "
            f"feed publishes {offered} (TRADEBUS_CHANNELS={channels}): it will see no bar. "
            f"Give it {' or '.join(fixes)}"
        )
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        # Refusing a key given twice, as the service would: rewritten, the
        # file would hold only the last one, and the service never see both.
        data = load_yaml(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise WiringError(f"{path}: cannot read: {e}") from e
    if not isinstance(data, dict):
        raise WiringError(f"{path}: the top level must be a mapping")
    return data


def _write_yaml(path: Path, source: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# Written by tradebus up from {source}: edit that file, not this one.\n"
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
    return path


def paper_config(home: Path, port: int) -> Path:
    """deploy/config/paper.yaml with this stack's port and a journal under ``home``."""
    source = PAPER_CONFIG
    data = _read_yaml(source)
    data["host"] = "127.0.0.1"
    data["port"] = port
    data["journal"] = str(home / "paper" / "journal.jsonl")
    return _write_yaml(home / "config" / "paper.yaml", source, data)


def brokers_config(home: Path, port: int) -> Path:
    """deploy/config/brokers.yaml with every paper account pointed at our paper broker."""
    source = BROKERS_CONFIG
    data = _read_yaml(source)
    for account in (data.get("accounts") or {}).values():
        if isinstance(account, dict) and account.get("adapter") == "paper":
            path = urlsplit(str(account.get("url", ""))).path or "/stream"
            account["url"] = f"ws://127.0.0.1:{port}{path}"
    return _write_yaml(home / "config" / "brokers.yaml", source, data)


def _base_env(inputs: Inputs) -> dict[str, str]:
    """The environment every service starts from: no other user's password."""
    secret_names = {password_variable(u) for u in NATS_USERS}
    env = {k: v for k, v in inputs.environ.items() if k not in secret_names}
    env.update(
        NATS_URL=inputs.nats_url,
        DATABASE_URL=inputs.database_url,
        PYTHONUNBUFFERED="1",
    )
    return env


def nats_identity(inputs: Inputs, user: str) -> dict[str, str]:
    """``TRADEBUS_NATS_USER`` / ``TRADEBUS_NATS_PASSWORD`` for ``user``, if known."""
    if inputs.credentials is not None:
        return inputs.credentials.nats_env(user)
    password = inputs.environ.get(password_variable(user))
    if password:
        return {"TRADEBUS_NATS_USER": user, "TRADEBUS_NATS_PASSWORD": password}
    return {}


def _paper_keys(inputs: Inputs) -> dict[str, str]:
    if inputs.paper_keys is not None:
        return dict(inputs.paper_keys)
    if inputs.credentials is not None:
        return inputs.credentials.paper_env()
    return {}


def plans(inputs: Inputs, names: list[str]) -> list[Plan]:
    """The services in ``names`` (a subset of :data:`SERVICES`), in start order."""
    base = _base_env(inputs)
    out: list[Plan] = []
    for name in SERVICES:
        if name not in names:
            continue
        env = {**base, **nats_identity(inputs, NATS_USER[name])}
        if name == "recorder":
            argv = ["recorder", "run"]
        elif name == "marketdata":
            symbols = ",".join(strategy_symbols(inputs.loaded_strategies))
            argv = ["marketdata", "run", "--source", "synthetic", "--symbols", symbols]
            argv += ["--rate", inputs.md_rate]
            env.setdefault("TRADEBUS_CHANNELS", DEFAULT_CHANNELS)
            # Whatever the environment says: the supervisor restarts marketdata,
            # and a restart that reused the last start's ids would have its
            # (different) prices dropped as duplicates by JetStream and the recorder.
            env["TRADEBUS_SYNTHETIC_RUN"] = FRESH_RUN
        elif name == "strategy-runner":
            argv = ["strategy-runner", "run", "--config", str(inputs.strategies)]
        elif name == "risk-gate":
            argv = ["risk-gate", "run", "--config", str(inputs.risk)]
        elif name == "broker-gateway":
            path = brokers_config(inputs.home, inputs.paper_port)
            argv = ["broker-gateway", "run", "--config", str(path)]
            env.update(_paper_keys(inputs))
        elif name == "paper-broker":
            path = paper_config(inputs.home, inputs.paper_port)
            argv = ["paper-broker", "run", "--config", str(path)]
            env.update(_paper_keys(inputs))
        else:  # pragma: no cover - SERVICES is the list above
            raise WiringError(f"unknown service {name}")
        out.append(Plan(name, argv, env))
    return out


def parse_only(value: str | None) -> list[str]:
    """``--only recorder,marketdata`` as names in start order (all when None)."""
    if value is None:
        return list(SERVICES)
    wanted = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in SERVICES]
    if unknown or not wanted:
        raise WiringError(
            f"--only: unknown service {', '.join(unknown) or '(none given)'}; "
            f"choose from {','.join(SERVICES)}"
        )
    return [n for n in SERVICES if n in wanted]
