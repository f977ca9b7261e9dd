"""docker-compose.yml and the deploy/ files it points at, parsed: the
``compose``, ``services`` and ``nats_conf`` fixtures of the test_compose*
files, and how they read a service's environment, mounts, Dockerfile and
NATS user block.

No Docker needed: the files are parsed (YAML, JSON, a light regex reading of
the NATS config and the Dockerfile) and checked against each other."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.marketdata.config import MarketdataSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
NATS_CONF = ROOT / "deploy" / "nats" / "nats-server.conf"
PYTHON_BASE = "python:3.12-slim"
SERVICE_USERS = (
    "recorder",
    "marketdata",
    "strategy-runner",
    "risk-gate",
    "broker-gateway",
    "paper-broker",
)
NATS_USERS = {"admin", "operator", *SERVICE_USERS}
#: compose service -> (its command, the NATS user it runs as).
ORDER_PATH = {
    "marketdata": (["marketdata", "run"], "marketdata"),
    "strategy-runner": (["strategy-runner", "run"], "strategy-runner"),
    "risk-gate": (["risk-gate", "run"], "risk-gate"),
    "broker-gateway": (["broker-gateway", "run"], "broker-gateway"),
    "paper-broker": (["paper-broker", "run"], "paper-broker"),
}
PYPROJECT = ROOT / "pyproject.toml"
READONLY_ROLE = "tradebus_readonly"


#: `${VAR}` or `${VAR:-dev default}`: how every credential enters compose.
ENV_REFERENCE = re.compile(r"^\$\{([A-Z][A-Z0-9_]*)(:-[^}]*)?\}$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


@pytest.fixture(scope="module")
def nats_conf() -> str:
    return NATS_CONF.read_text()


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path, for every bind mount (``./x:/y[:ro]``)."""
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        source, target, *_ = str(volume).split(":")
        if source.startswith((".", "/")):
            mounts[target] = (ROOT / source).resolve()
    return mounts


def dockerfile_of(service: dict[str, Any]) -> Path:
    build = service["build"]
    context = ROOT / build.get("context", ".")
    return Path(context / build.get("dockerfile", "Dockerfile")).resolve()


def nats_user_blocks(conf: str) -> dict[str, str]:
    """Each user's text in the authorization block, from ``user:`` to the next."""
    starts = list(re.finditer(r"^\s*user:\s*([\w-]+)\s*$", conf, re.MULTILINE))
    ends = [m.start() for m in starts[1:]] + [len(conf)]
    return {m.group(1): conf[m.start() : end] for m, end in zip(starts, ends, strict=True)}


def publish_allow(block: str) -> list[str]:
    match = re.search(r"publish:\s*\{\s*allow:\s*\[(.*?)\]", block, re.DOTALL)
    assert match, block
    return re.findall(r'"([^"]+)"', match.group(1))


def publish_deny(block: str) -> list[str]:
    match = re.search(r"deny:\s*\[(.*?)\]", block, re.DOTALL)
    return re.findall(r'"([^"]+)"', match.group(1)) if match else []


def assert_two_starts_share_no_ids(settings: MarketdataSettings) -> None:
    """Two starts of the synthetic source under ``settings`` give the same
    tick different event ids (none shared)."""
    from libs.contract.envelope import WallClock
    from services.marketdata.adapters.synthetic import SyntheticSource
    from services.marketdata.main import build_source

    first_ids = []
    for _start in range(2):
        source = build_source(settings, WallClock())
        assert isinstance(source, SyntheticSource)
        first_ids.append([e.id for e in source.market.tick(1_717_000_000_000_000_000)])
    assert first_ids[0]
    assert not set(first_ids[0]) & set(first_ids[1])
