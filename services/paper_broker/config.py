"""Paper broker settings: the shared ``TRADEBUS_*`` ones plus ``paper.yaml``.

``paper.yaml`` (example: ``deploy/config/paper.yaml``) names the accounts and
the environment variables holding each one's API key pair, and sets the fill
model. It is validated strictly (unknown keys are errors) and a bad value
stops start-up with a message naming the key (``accounts.paper-a.key_id_env``)
or the missing environment variable; a secret is never echoed.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from libs.config import ConfigError, ServiceSettings
from libs.contract.envelope import SymbolToken, Token
from libs.yamlfile import load_yaml
from services.paper_broker.adapters.journal import Journal
from services.paper_broker.adapters.server import Credentials
from services.paper_broker.domain.book import BookConfig
from services.paper_broker.domain.fill_model import FillModelConfig

EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class PaperBrokerSettings(ServiceSettings):
    #: ``paper.yaml``; without one, a single account ``paper`` whose keys are in
    #: ``TRADEBUS_PAPER_KEY_ID`` / ``TRADEBUS_PAPER_SECRET_KEY``.
    paper_config: Path | None = None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AccountSection(_Strict):
    """Where an account's API key pair comes from (environment variable names)."""

    key_id_env: EnvName
    secret_key_env: EnvName


class FillModelSection(_Strict):
    """See ``services/paper_broker/domain/fill_model.py`` for the rules."""

    slippage_bps: Decimal = Field(default=Decimal(0), ge=0, le=10_000)
    max_fill_quantity: Decimal | None = Field(default=None, gt=0)
    price_decimals: int = Field(default=4, ge=0, le=12)
    limit_fill_on_touch: bool = True


class MarketDataSection(_Strict):
    """Where prices come from: the recorded stream's trades and bars, or nowhere."""

    source: Literal["nats", "none"] = "nats"
    subjects: tuple[str, ...] = ("md.trade.>", "md.bar.>")
    #: Name of the paper broker's pull consumer on the stream.
    consumer: Token = "paper-broker"
    #: Seconds prices are left to gather on the server once one has arrived,
    #: to be taken together in one pull: a price reaches the book up to this
    #: late (a market order fills at the last price the book has). 0 takes
    #: each price as it comes, at a wake-up of the broker each.
    linger_s: float = Field(default=0.05, ge=0, le=1)


def _default_accounts() -> dict[str, AccountSection]:
    return {
        "paper": AccountSection(
            key_id_env="TRADEBUS_PAPER_KEY_ID",
            secret_key_env="TRADEBUS_PAPER_SECRET_KEY",  # noqa: S106 - a variable's name
        )
    }


class PaperConfig(_Strict):
    """The whole of ``paper.yaml``."""

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    accounts: dict[Token, AccountSection] = Field(default_factory=_default_accounts, min_length=1)
    fill_model: FillModelSection = FillModelSection()
    #: Orders for more than this are refused (403), like a broker's order limit.
    max_order_quantity: Decimal | None = Field(default=None, gt=0)
    #: Symbols refused as not tradable (422).
    untradable_symbols: tuple[SymbolToken, ...] = ()
    #: Symbols whose orders are accepted, then rejected by the venue (a halt).
    halted_symbols: tuple[SymbolToken, ...] = ()
    #: When working ``day`` orders expire: ``close``, at the close of their
    #: session from the exchange calendar (as Alpaca's do: 16:00 New York,
    #: 13:00 on a half day; weekends and holidays have no session); a New
    #: York time, then, or at the session's close if that comes first (a day
    #: order never outlives its session: 16:00 is the same as ``close``);
    #: null: they never expire.
    day_orders_expire_at: dt.time | Literal["close"] | None = "close"
    market_data: MarketDataSection = MarketDataSection()
    #: Journal file: state survives restarts. None keeps everything in memory.
    journal: Path | None = None
    journal_fsync: bool = False
    #: Compact the journal (a snapshot of what is live) at start-up and when
    #: it passes ``journal_compact_mb``; false keeps every update, as before.
    journal_compact: bool = True
    #: Finished orders (and their fill activities) are kept this many days
    #: after their last change, then forgotten at the next compaction; null
    #: keeps them all. Open orders and positions are always kept. At most a
    #: century: beyond, the window in nanoseconds overflows (``.inf`` too).
    journal_keep_finished_days: float | None = Field(default=7.0, gt=0, le=36_525)
    #: The journal is compacted while running once it passes this size (and
    #: twice its size after the last compaction); null: only at start-up.
    #: At most 1 TiB (``.inf`` overflows the size in bytes).
    journal_compact_mb: float | None = Field(default=64.0, gt=0, le=1 << 20)
    #: A client that has not authenticated by then is disconnected.
    auth_timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: Send JSON in binary frames, as Alpaca's paper stream does.
    binary_frames: bool = True

    @field_validator("day_orders_expire_at")
    @classmethod
    def _new_york_time(
        cls, value: dt.time | Literal["close"] | None
    ) -> dt.time | Literal["close"] | None:
        # Compared with New York's naive wall time: an offset is a TypeError at a day order.
        if isinstance(value, dt.time) and value.tzinfo is not None:
            raise ValueError("must be a New York time, without an offset")
        return value

    def book_config(self) -> BookConfig:
        fm = self.fill_model
        return BookConfig(
            fill_model=FillModelConfig(
                slippage_bps=fm.slippage_bps,
                max_fill_quantity=fm.max_fill_quantity,
                price_decimals=fm.price_decimals,
                limit_fill_on_touch=fm.limit_fill_on_touch,
            ),
            max_order_quantity=self.max_order_quantity,
            untradable_symbols=frozenset(self.untradable_symbols),
            halted_symbols=frozenset(self.halted_symbols),
            day_orders_expire_at=self.day_orders_expire_at,
        )

    def journal_file(self) -> Journal | None:
        """The journal as configured (None without ``journal``)."""
        if self.journal is None:
            return None
        days, mb = self.journal_keep_finished_days, self.journal_compact_mb
        if not self.journal_compact:  # every update kept, and replayed, as before
            days = mb = None
        return Journal(
            self.journal,
            fsync=self.journal_fsync,
            keep_finished_s=None if days is None else days * 86_400,
            compact_bytes=None if mb is None else int(mb * 2**20),
        )

    def credentials(self, env: Mapping[str, str] | None = None) -> list[Credentials]:
        """Each account's key pair, read from the environment variables named."""
        env = os.environ if env is None else env
        out: list[Credentials] = []
        owner: dict[str, str] = {}  # key id -> the first account whose it is
        for account, section in self.accounts.items():
            values = []
            for key in ("key_id_env", "secret_key_env"):
                var = getattr(section, key)
                value = env.get(var)
                if not value:
                    raise ConfigError(
                        f"accounts.{account}.{key}: environment variable {var} is not set"
                    )
                values.append(value)
            first = owner.setdefault(values[0], account)
            if first != account:
                # Named by their variables, not the key id's value.
                raise ConfigError(
                    f"accounts.{account}.key_id_env: environment variable "
                    f"{section.key_id_env} holds the key id of accounts.{first}.key_id_env "
                    f"({self.accounts[first].key_id_env}); each account needs a key of its own"
                )
            out.append(Credentials(values[0], SecretStr(values[1]), account))
        return out


def load_paper_config(path: Path | None) -> PaperConfig:
    """Read and validate ``paper.yaml`` (defaults when ``path`` is None)."""
    if path is None:
        return PaperConfig()
    try:
        raw = load_yaml(path.read_text()) or {}  # a key given twice is refused
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    try:
        return PaperConfig.model_validate(raw)
    except ValidationError as e:
        lines = [
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in e.errors(include_url=False, include_input=False)
        ]
        raise ConfigError(f"{path}: " + "; ".join(lines)) from None
