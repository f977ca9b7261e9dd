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
from typing import Annotated, Any, NamedTuple, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from libs.contract.envelope import SymbolToken, Token
from libs.contract.events import asset_class_of
from libs.contract.options import option_tick

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
        # Rounded, not cut: 4.1 * 1e9 is 4099999999.9999995 in binary.
        return round(self.per_seconds * 1_000_000_000)


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


def _not_a_bool(value: Any) -> Any:
    # pydantic takes YAML's true as 1: a typo, not a count of ticks.
    if isinstance(value, bool):
        raise ValueError(f"a whole number of ticks, not {str(value).lower()}")
    return value


#: A price band's allowance in ticks (:func:`price_tick`): a whole number, 0 or more.
Ticks = Annotated[int, BeforeValidator(_not_a_bool), Field(ge=0)]

_PENNY = Decimal("0.01")
#: US equities' (Reg NMS rule 612): 0.01 from $1, 0.0001 below.
_SUB_PENNY = Decimal("0.0001")


def price_tick(symbol: str, price: Decimal) -> Decimal:
    """The tick the price band counts in for ``symbol`` at ``price``.

    An equity's is 0.01 from $1 and 0.0001 below. An option's is 0.05 under
    $3 and 0.10 from $3, and 0.01 at every price for SPY's, QQQ's and IWM's
    contracts (by the OCC root): :func:`~libs.contract.options.option_tick`,
    marketdata's rule for its marks too. The gate has no quote in hand and nothing
    lists the other penny-program classes (0.01 under $3, 0.05 from $3), so
    their contracts are given the coarser tick: an allowance of N ticks is up
    to 5 N of theirs under $3 (2 N from $3). The finer tick would keep every
    contract within N of its own, but would leave the others' orders at the
    bid or ask of a contract quoted 0.05 x 0.10 (half a nickel from its mark,
    2.5 pennies) denied at any N below 3; the difference is at most N x 0.05
    a share, and counts only where that is wider than the relative band.
    """
    if asset_class_of(symbol) == "option":
        return option_tick(symbol, price)  # marketdata's marks' rule too
    return _PENNY if price >= 1 else _SUB_PENNY


class SymbolBand(NamedTuple):
    """One symbol's price band (:meth:`PriceBand.of`)."""

    #: A price within this fraction of the last price passes...
    max_deviation: Decimal
    #: ...as does one within this many ticks of it (:func:`price_tick`).
    max_deviation_ticks: int
    #: A last price older than this counts as none (None: any age).
    max_mark_age_s: float | None


class OptionBand(_Config):
    """The price band of option contracts, where it differs: an option's
    spread and moves are often wider than 5 % of its price, and a contract may
    go minutes without a trade. A key left out takes the equities' value,
    except ``max_deviation_ticks``: a tick is not the same thing for them."""

    max_deviation: Deviation | None = None
    max_mark_age_s: float | None = Field(default=None, gt=0)
    #: A cheap contract's relative band is narrower than its tick (25 % of
    #: 0.075 is 0.019; the tick 0.05): its own bid and ask, a tick from its
    #: last trade, would be out of band. 2 ticks take in the bid and the ask
    #: of a quote on the contract's grid that marketdata marks for being at
    #: most 2 ticks wide (each is at most one from its midpoint), and one more.
    max_deviation_ticks: Ticks = 2


#: The options' band when risk.yaml gives none: the equities' values but ticks.
_OPTIONS = OptionBand()


class PriceBand(_Config):
    """How far a limit or stop price may be from the last market price."""

    #: As a fraction of the last price: 0.05 is 5 %.
    max_deviation: Deviation = Decimal("0.05")
    #: Or as many ticks (:func:`price_tick`), whichever is wider: equities
    #: only (options have their own); 0, the default, the fraction alone.
    max_deviation_ticks: Ticks = 0
    #: A last price older than this counts as no price at all (None: any age).
    max_mark_age_s: float | None = Field(default=None, gt=0)
    #: Option contracts' own band (``O:…`` symbols); None: the equities'
    #: fraction and age, and 2 ticks.
    options: OptionBand | None = None

    def of(self, symbol: str) -> SymbolBand:
        """``symbol``'s band: its maximum deviation, in ticks, and mark age."""
        if asset_class_of(symbol) != "option":
            return SymbolBand(self.max_deviation, self.max_deviation_ticks, self.max_mark_age_s)
        o = self.options if self.options is not None else _OPTIONS
        return SymbolBand(
            o.max_deviation if o.max_deviation is not None else self.max_deviation,
            o.max_deviation_ticks,
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
