"""Risk-gate settings (``TRADEBUS_*``) and the risk limits file (``risk.yaml``).

The file is validated by :class:`~services.risk_gate.domain.limits.RiskLimits`
(unknown keys refused); any problem stops start-up with a
:class:`RiskConfigError` naming the file and the offending key, e.g.
``risk.yaml: strategies.sma.max_gros_notional: Extra inputs are not permitted``.
Duplicate keys are refused too (YAML would silently keep the last one).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, ValidationError

from libs.config import ServiceSettings
from libs.yamlfile import load_yaml
from services.risk_gate.domain.limits import RiskLimits


class RiskGateSettings(ServiceSettings):
    #: The risk limits file (``--config`` overrides it).
    risk_config: Path | None = None
    #: Most messages taken from JetStream in one fetch.
    fetch_batch: int = Field(default=256, ge=1, le=10_000)
    #: How long one fetch waits for messages before the loop checks in.
    fetch_timeout_s: float = Field(default=0.25, gt=0, le=30)
    #: Pause before rebuilding after NATS or Postgres went away.
    retry_backoff_s: float = Field(default=0.5, gt=0, le=60)
    #: How often a child process folds the store into a new state checkpoint,
    #: so that a restart folds only what came after (0: only at start-up).
    checkpoint_every_s: float = Field(default=900, ge=0, le=86_400)


class RiskConfigError(ValueError):
    """The risk limits file is missing, not YAML, or not valid limits."""


def parse_limits(text: str, *, name: str = "risk.yaml") -> RiskLimits:
    """Validate the text of a limits file."""
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        raise RiskConfigError(f"{name}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RiskConfigError(f"{name}: the top level must be a mapping")
    try:
        return RiskLimits.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors(include_url=False, include_input=False):
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"{name}: {where}: {err['msg']}")
        raise RiskConfigError("\n".join(lines)) from None


def load_limits(path: Path) -> RiskLimits:
    """Read and validate the limits file at ``path``."""
    try:
        text = path.read_text()
    except OSError as e:
        raise RiskConfigError(f"cannot read the risk limits file {path}: {e.strerror}") from None
    return parse_limits(text, name=str(path))
