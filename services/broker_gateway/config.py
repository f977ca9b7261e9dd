"""Broker-gateway settings: the shared ``TRADEBUS_*`` ones plus ``brokers.yaml``.

``brokers.yaml`` (example: ``deploy/config/brokers.yaml``) maps each account to
its adapter, URL and the *names* of the environment variables holding its
credentials, and sets its heartbeat and timeouts. It is validated strictly
(unknown keys are errors); a bad value stops start-up naming the key
(``accounts.paper-a.heartbeat.timeout_s``) or the missing variable; a key
given twice is refused with its line (YAML alone would keep the last). Secrets
are read into ``SecretStr`` and never printed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from libs.config import ConfigError, ServiceSettings
from libs.contract.envelope import Token
from libs.yamlfile import load_yaml

EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class GatewaySettings(ServiceSettings):
    #: ``brokers.yaml`` (``--config`` overrides).
    brokers_config: Path | None = None
    #: Name of the gateway's durable consumer of ``orders.cmd.>``.
    consumer: Token = "broker-gateway"
    #: Redelivery delay of a command taken but not acknowledged (a crash).
    command_ack_wait_s: float = Field(default=10.0, ge=1, le=3600)
    #: A SubmitOrder older than this when the broker can take it is rejected
    #: (``stale``) instead of sent: a market order from minutes ago is not wanted.
    max_submit_delay_s: float = Field(default=30.0, gt=0, le=86_400)
    #: On start-up, wait this long for the recorder to catch up before rebuilding.
    rebuild_wait_s: float = Field(default=30.0, ge=0, le=600)
    #: The start-up rebuild leaves out a settled order (filled, canceled or
    #: rejected) whose last event is older than this, unless a command after
    #: the consumer's ack floor is about it: nothing the broker or the stream
    #: can still bring concerns it. At least ``max_submit_delay_s`` (a
    #: recreated consumer replays that far back). At most a century: beyond
    #: (``inf`` too), the cut-off in nanoseconds overflows.
    rebuild_settled_s: float = Field(default=7 * 86_400, gt=0, le=36_525 * 86_400)
    #: How often each account's positions at the broker are compared with
    #: its recorded fills (also after every reconnection); 0: never.
    position_check_every_s: float = Field(default=300.0, ge=0, le=86_400)
    #: How long a dead letter's publish is retried before the message is
    #: handed back, to be dead-lettered again later: the bus's own 30 s held
    #: every account's commands back (an undecodable one), then ended the
    #: gateway.
    dead_letter_deadline_s: float = Field(default=5.0, gt=0, le=60)

    @field_validator("rebuild_settled_s")
    @classmethod
    def _covers_replay(cls, value: float, info: ValidationInfo) -> float:
        delay = info.data.get("max_submit_delay_s")
        if delay is not None and value < delay:
            raise ValueError(f"must be at least max_submit_delay_s ({delay:g})")
        return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CredentialsSection(_Strict):
    """Environment variables holding the API key pair."""

    key_id_env: EnvName
    secret_key_env: EnvName


class HeartbeatSection(_Strict):
    """A ping every ``interval_s``; no answer within ``timeout_s`` is a lost connection."""

    interval_s: float = Field(default=2.0, gt=0, le=300)
    timeout_s: float = Field(default=3.0, gt=0, le=300)


class ReconnectSection(_Strict):
    """Backoff between reconnection attempts: doubling from ``initial_s`` to ``max_s``."""

    initial_s: float = Field(default=0.25, gt=0, le=60)
    #: Validated when left out too: it must not be below a given ``initial_s``.
    max_s: float = Field(default=5.0, gt=0, le=600, validate_default=True)

    @field_validator("max_s")
    @classmethod
    def _not_below_initial(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("initial_s")
        if initial is not None and value < initial:
            raise ValueError(f"must be at least initial_s ({initial:g})")
        return value


class AccountSection(_Strict):
    adapter: Literal["paper"]
    url: str = Field(pattern=r"^wss?://")
    credentials: CredentialsSection
    heartbeat: HeartbeatSection = HeartbeatSection()
    reconnect: ReconnectSection = ReconnectSection()
    request_timeout_s: float = Field(default=5.0, gt=0, le=120)


class BrokersConfig(_Strict):
    """The whole of ``brokers.yaml``."""

    accounts: dict[Token, AccountSection] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class BrokerAccount:
    """One account, ready to connect: config plus the credentials' values."""

    name: str
    section: AccountSection
    key_id: str
    secret_key: SecretStr


def load_brokers_config(path: Path) -> BrokersConfig:
    """Read and validate ``brokers.yaml``."""
    try:
        raw = load_yaml(path.read_text()) or {}  # a key given twice is refused
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    try:
        return BrokersConfig.model_validate(raw)
    except ValidationError as e:
        lines = [
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in e.errors(include_url=False, include_input=False)
        ]
        raise ConfigError(f"{path}: " + "; ".join(lines)) from None


def resolve_accounts(
    config: BrokersConfig, env: Mapping[str, str] | None = None
) -> list[BrokerAccount]:
    """Each account with its credentials read from the environment."""
    env = os.environ if env is None else env
    out = []
    for name, section in config.accounts.items():
        values = []
        for key in ("key_id_env", "secret_key_env"):
            var = getattr(section.credentials, key)
            value = env.get(var)
            if not value:
                raise ConfigError(
                    f"accounts.{name}.credentials.{key}: environment variable {var} is not set"
                )
            values.append(value)
        out.append(BrokerAccount(name, section, values[0], SecretStr(values[1])))
    return out
