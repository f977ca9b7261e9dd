"""Configuration shared by every service: built once, frozen, refused if bad.

``NATS_URL`` and ``DATABASE_URL`` are read as-is; everything else is
``TRADEBUS_<NAME>``. A bad value stops start-up with :class:`ConfigError`,
whose message names the offending environment variable.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.contract.envelope import SOURCE_MAX_LENGTH
from libs.store.urls import is_postgres_url

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/tradebus"
#: A service's events name it as ``<service>/<instance>``, which must fit an
#: event's ``source``: the longest service name is ``strategy-runner/`` (16).
INSTANCE_MAX_LENGTH = SOURCE_MAX_LENGTH - len("strategy-runner/")


class ConfigError(ValueError):
    """Start-up configuration is invalid; the message names the variable."""


#: The schemes of a NATS server URL, in which a user without a password is a token.
_NATS_SCHEMES = frozenset({"nats", "tls", "ws", "wss"})


def masked_url(url: str) -> str:
    """``url`` with its password shown as ``***``: what a message may say of
    a server (``postgresql://trader:***@db:5432/tradebus``). A password given
    as a parameter (``?password=...``, which libpq and asyncpg take too) is
    masked as well, and so is a NATS token (``nats://***@host:4222``: a NATS
    URL's user without a password, with which nats-py logs in)."""
    parts = urlsplit(url)
    pairs = parts.query.split("&") if parts.query else []
    in_query = any(pair.split("=", 1)[0] == "password" for pair in pairs)
    token = parts.scheme in _NATS_SCHEMES and parts.username and parts.password is None
    if parts.password is None and not in_query and not token:
        return url
    if token:
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"***@{host}")
    elif parts.password is not None:
        userinfo, host = parts.netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        parts = parts._replace(netloc=f"{user}:***@{host}")
    if in_query:
        query = "&".join(
            "password=***" if pair.split("=", 1)[0] == "password" else pair for pair in pairs
        )
        parts = parts._replace(query=query)
    return urlunsplit(parts)


class ServiceSettings(BaseSettings):
    """What every service needs: where NATS and Postgres are, who it is."""

    model_config = SettingsConfigDict(env_prefix="TRADEBUS_", extra="forbid", frozen=True)

    # Out of repr: a URL may carry credentials (nats://user:password@host).
    nats_url: str = Field(
        default=DEFAULT_NATS_URL,
        validation_alias=AliasChoices("NATS_URL", "TRADEBUS_NATS_URL"),
        repr=False,
    )
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    database_url: SecretStr = Field(
        default=SecretStr(DEFAULT_DATABASE_URL),
        validation_alias=AliasChoices("DATABASE_URL", "TRADEBUS_DATABASE_URL"),
    )
    instance: str = Field(
        default_factory=socket.gethostname, min_length=1, max_length=INSTANCE_MAX_LENGTH
    )
    log_level: str = Field(default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    log_json: bool = False
    metrics_host: str = "127.0.0.1"
    #: Port of the /metrics and /health endpoint; 0 picks a free one.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    max_event_bytes: int = Field(default=256 * 1024, ge=1024, le=1024 * 1024)
    #: How long a one-shot command (replay, kill-switch, ...) waits for NATS.
    command_connect_timeout_s: float = Field(default=10.0, gt=0, le=300)

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr) -> SecretStr:
        # Refused here, naming DATABASE_URL, rather than deep inside asyncpg.
        # The message never quotes the value: it may hold a password.
        url = value.get_secret_value()
        if not is_postgres_url(url):
            scheme = urlsplit(url).scheme
            got = f"scheme {scheme!r}" if scheme else "no scheme"
            raise ValueError(
                f"must be a URL such as postgresql://user:password@host:5432/tradebus, got {got}"
            )
        return value


S = TypeVar("S", bound=BaseSettings)

_ALIASES = {"nats_url": "NATS_URL", "database_url": "DATABASE_URL"}


def load_settings(cls: type[S], given_as: Mapping[str, str] | None = None, **overrides: Any) -> S:
    """Build ``cls`` from the environment, turning errors into :class:`ConfigError`.

    The message names the environment variable (``TRADEBUS_BATCH_SIZE``), the
    value's problem, and never echoes a secret. A field of ``overrides`` that
    ``given_as`` names came from a command-line option: the message names
    the option first (``--rate (TRADEBUS_SYNTHETIC_RATE)``), since the
    operator set no variable.
    """
    try:
        return cls(**overrides)
    except ValidationError as e:
        prefix = str(cls.model_config.get("env_prefix", ""))
        lines = []
        for err in e.errors(include_url=False, include_input=False):
            field = str(err["loc"][0]) if err["loc"] else "?"
            # A field read through an alias (DATABASE_URL) is located by the alias.
            var = _ALIASES.get(field.lower(), f"{prefix}{field}".upper())
            option = (given_as or {}).get(field) if field in overrides else None
            if option is not None:
                var = f"{option} ({var})"
            lines.append(f"{var}: {err['msg'].removeprefix('Value error, ')}")
        # Not chained: pydantic's own message quotes the input, which may be a secret.
        raise ConfigError("invalid configuration: " + "; ".join(lines)) from None
