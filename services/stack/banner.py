"""What ``tradebus up`` prints once everything runs: where to look, what to try."""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from libs.config import masked_url


@dataclass(frozen=True)
class Endpoint:
    """A service's /metrics and /health."""

    name: str
    metrics_url: str
    health_url: str


@dataclass(frozen=True)
class StackInfo:
    home: Path
    nats_url: str
    database_url: str
    endpoints: Sequence[Endpoint]
    env_file: Path | None = None
    nats_monitor_url: str | None = None
    logs: Sequence[Path] = ()
    tradebus: str = "tradebus"
    psql: str = "psql"
    #: Where the generated NATS passwords are (never shown themselves).
    credentials_file: Path | None = None
    paper_url: str | None = None
    risk_config: Path | None = None


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def render(info: StackInfo) -> str:
    rule = "─" * 72
    db = masked_url(info.database_url)
    nats = masked_url(info.nats_url)
    monitor = f"   monitoring {info.nats_monitor_url}" if info.nats_monitor_url else ""
    rows = [("NATS", nats + monitor)]
    rows.append(("Postgres", db))
    for e in info.endpoints:
        rows.append((e.name, f"{e.metrics_url}   {e.health_url}"))
    if info.paper_url:
        rows.append(("paper broker", f"{info.paper_url}   (WebSocket, Alpaca-style)"))
    if info.credentials_file is not None:
        rows.append(("NATS users", f"one per service, passwords in {shown(info.credentials_file)}"))
    if info.logs:
        rows.append(("server logs", ", ".join(shown(p) for p in info.logs)))
    width = max(len(k) for k, _ in rows)
    lines = [rule, f" tradebus is up   (home: {shown(info.home)})", ""]
    lines += [f"   {k:<{width}}  {v}" for k, v in rows]
    lines += ["", " Try, in another terminal:"]
    if info.env_file is not None:
        lines.append(
            f"   source {shown(info.env_file)}    "
            "# NATS_URL, DATABASE_URL, the operator's NATS user, the risk limits"
        )
    else:
        lines.append(f"   export NATS_URL='{nats}' DATABASE_URL='{db}'")
    t = info.tradebus
    risk = f" --config {shown(info.risk_config)}" if info.risk_config else ""
    lines += [
        f"   {t} events --limit 20",
        f"   {t} events --type FillReceived --last 5    # the newest fills",
        f"   {t} audit <fill id>    # its whole causal chain, back to the signal; "
        "the 8 digits listed will do",
        f"   {t} positions",
        f"   {t} risk status{risk}",
        f'   {t} kill-switch on --reason "..."    # off again: kill-switch off, risk resume global',
        f"   {info.psql} '{db}'",
        "",
        " Ctrl-C stops everything (services first, then the servers);",
        " a second Ctrl-C kills the services at once.",
        rule,
    ]
    return "\n".join(lines)


def env_file_text(nats_url: str, database_url: str, extra: Mapping[str, str] | None = None) -> str:
    """A file to ``source``: the URLs of this stack, and ``extra`` (the operator's
    user, the risk limits file), each value quoted for the shell."""
    values = {"NATS_URL": nats_url, "DATABASE_URL": database_url, **(extra or {})}
    lines = ["# Written by tradebus up: source it to point tradebus commands at this stack."]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def command_path(name: str, fallback_dir: Path | None) -> str:
    """How to call ``name`` from here: bare if it is on PATH, else its path."""
    if shutil.which(name) or fallback_dir is None or not (fallback_dir / name).exists():
        return name
    path = shown(fallback_dir / name)
    return path if os.sep in path else f".{os.sep}{path}"
