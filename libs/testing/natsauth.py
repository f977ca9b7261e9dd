"""The NATS users of deploy/nats/nats-server.conf, for tests that run it."""

from __future__ import annotations

import re
from pathlib import Path

NATS_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "nats-server.conf"


def config_users(config: Path = NATS_CONFIG) -> tuple[str, ...]:
    """Every ``user:`` the server config declares (each needs its password variable)."""
    return tuple(re.findall(r"^\s*user:\s*([A-Za-z0-9_-]+)\s*$", config.read_text(), re.M))


def password_variable(user: str) -> str:
    """``NATS_<USER>_PASSWORD``, as the config names it (``risk-gate`` -> ``RISK_GATE``)."""
    return f"NATS_{user.upper().replace('-', '_')}_PASSWORD"
