"""The risk limits (``risk.yaml``), as validated, frozen values.

These models are what :func:`~services.risk_gate.domain.decide.decide` reads;
the service loads them from YAML (``services/risk_gate/config.py``) and the
backtest can build them in code. Unknown keys are errors (``extra="forbid"``),
so a typo in the file (``max_gros_notional``) is refused, not ignored.

Money, prices and quantities are ``Decimal``. A YAML number such as ``0.05``
arrives as a float; it is taken as the decimal it was written as (its shortest
``repr``), never as the binary double's long expansion.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from decimal import Decimal
from typing import Annotated, Any, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from libs.contract.envelope import SymbolToken, Token
from libs.contract.events import asset_class_of

GLOBAL = "global"


def _decimal_from_config(value: Any) -> Any:
    # YAML turns 0.05 into a float; repr() gives back the digits as written.
    if isinstance(value, float):
        return repr(value)
    return value


_Dec = BeforeValidator(_decimal_from_config)
#: A positive amount: money, a quantity, a notional.
Positive = Annotated[Decimal, _Dec, Field(gt=0, allow_inf_nan=False, max_digits=38)]
#: A loss limit: money, as the breaker's event carries it (``Money``: 12
#: places, 26 digits before the point); more, and a tripped breaker could not
#: be published.
LossLimit = Annotated[
    Decimal, _Dec, Field(gt=0, allow_inf_nan=False, max_digits=38, decimal_places=12)
]
#: A non-negative amount (0 allowed: "no position at all in this symbol").
NonNegative = Annotated[Decimal, _Dec, Field(ge=0, allow_inf_nan=False, max_digits=38)]


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RateLimit(_Config):
    """At most ``max_orders`` orders in any ``per_seconds`` window."""

    max_orders: int = Field(ge=1)
    per_seconds: float = Field(gt=0, le=86_400)

    @property
    def window_ns(self) -> int:
        return int(self.per_seconds * 1_000_000_000)


class SymbolLimit(_Config):
    """A cap on the absolute position in one symbol."""

    max_position: NonNegative


class AccountLimits(_Config):
    """One broker account: its daily-loss breaker and order-rate limit."""

    #: Day P&L (realized + unrealized) at or below minus this trips the breaker.
    daily_loss_limit: LossLimit
    #: Day P&L at or below minus this puts the account in ``reducing`` (optional).
    reduce_only_at_loss: LossLimit | None = None
    rate_limit: RateLimit | None = None
    #: Caps on the account's net position per symbol, all strategies together.
    symbols: dict[SymbolToken, SymbolLimit] = Field(default_factory=dict)
    #: Cancel, flatten and halt when the broker connection is lost.
    flatten_on_disconnect: bool = True

    @model_validator(mode="after")
    def _reduce_below_limit(self) -> Self:
        if self.reduce_only_at_loss is not None and self.reduce_only_at_loss >= (
            self.daily_loss_limit
        ):
            raise ValueError("reduce_only_at_loss must be smaller than daily_loss_limit")
        return self


class StrategyLimits(_Config):
    """One strategy: where it trades and how big it may get."""

    account: Token
    #: The paper account its orders go to in shadow mode, if it has one.
    shadow_account: Token | None = None
    #: Open positions + open orders + this order, valued at market (per account).
    max_gross_notional: Positive
    #: Absolute position in any one symbol, open orders included.
    max_position: Positive
    #: Fat-finger caps on a single order.
    max_order_quantity: Positive
    max_order_notional: Positive
    rate_limit: RateLimit | None = None
    #: When given, the only symbols it may trade, each with its own cap.
    symbols: dict[SymbolToken, SymbolLimit] | None = None


#: A price band's width, as a fraction of the last price: 0.05 is 5 %.
Deviation = Annotated[Decimal, _Dec, Field(gt=0, lt=1, allow_inf_nan=False)]


class OptionBand(_Config):
    """The price band of option contracts, where it differs: an option's
    spread and moves are often wider than 5 % of its price, and a contract may
    go minutes without a trade. A key left out takes the equities' value."""

    max_deviation: Deviation | None = None
    max_mark_age_s: float | None = Field(default=None, gt=0)


class PriceBand(_Config):
    """How far a limit or stop price may be from the last market price."""

    #: As a fraction of the last price: 0.05 is 5 %.
    max_deviation: Deviation = Decimal("0.05")
    #: A last price older than this counts as no price at all (None: any age).
    max_mark_age_s: float | None = Field(default=None, gt=0)
    #: Option contracts' own band (``O:…`` symbols); None: the same as equities.
    options: OptionBand | None = None

    def of(self, symbol: str) -> tuple[Decimal, float | None]:
        """``symbol``'s band: its maximum deviation and maximum mark age."""
        o = self.options
        if o is None or asset_class_of(symbol) != "option":
            return self.max_deviation, self.max_mark_age_s
        return (
            o.max_deviation if o.max_deviation is not None else self.max_deviation,
            o.max_mark_age_s if o.max_mark_age_s is not None else self.max_mark_age_s,
        )


class TradingDay(_Config):
    """When the trading day starts, in exchange time (day P&L resets then)."""

    timezone: str = "America/New_York"
    start: dt.time = dt.time(4, 0)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as e:
            raise ValueError(f"unknown time zone {value!r}") from e
        return value

    @field_validator("start")
    @classmethod
    def _local(cls, value: dt.time) -> dt.time:
        # trading_day() reads it in ``timezone``: an offset would be ignored.
        if value.tzinfo is not None:
            raise ValueError("must be a time in the trading day's timezone, without an offset")
        return value

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)


class RiskLimits(_Config):
    """Everything the risk-gate checks against."""

    trading_day: TradingDay = Field(default_factory=TradingDay)
    price_band: PriceBand = Field(default_factory=PriceBand)
    #: An intent older than this when decided is denied (None: no limit).
    max_intent_age_s: float | None = Field(default=30.0, gt=0)
    accounts: dict[Token, AccountLimits] = Field(default_factory=dict)
    strategies: dict[Token, StrategyLimits] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _accounts_exist(self) -> Self:
        if GLOBAL in self.accounts:
            raise ValueError(f"accounts: {GLOBAL!r} is reserved for the global scope")
        for name, s in self.strategies.items():
            for key, account in (("account", s.account), ("shadow_account", s.shadow_account)):
                if account is not None and account not in self.accounts:
                    raise ValueError(
                        f"strategies.{name}.{key}: account {account!r} is not under accounts"
                    )
        return self
