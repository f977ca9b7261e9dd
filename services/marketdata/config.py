"""marketdata settings: ``TRADEBUS_*`` (and ``POLYGON_API_KEY``) from the environment."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from libs.config import ServiceSettings
from libs.contract.envelope import Symbol
from services.marketdata.domain.cache import parse_speed
from services.marketdata.domain.marks import NS, MarkPolicy


def _per_second(value: Any) -> Any:
    """``20`` or ``20/s`` -> 20."""
    return value.strip().removesuffix("/s") if isinstance(value, str) else value


Channel = Literal["trades", "quotes", "second_bars", "minute_bars"]

_SYMBOL: TypeAdapter[str] = TypeAdapter(Symbol)


def _symbols(value: str) -> tuple[str, ...]:
    """``value`` split at commas, trimmed and upper-cased, without repeats."""
    seen: dict[str, None] = {}
    for s in value.split(","):
        if s.strip():
            seen[s.strip().upper()] = None
    return tuple(seen)


#: ``TRADEBUS_SYNTHETIC_RUN`` value asking for a new salt at every start (what
#: docker-compose and ``tradebus up`` set: a restarted service must not reuse
#: the last start's ids).
FRESH_RUN = "fresh"


class MarketdataSettings(ServiceSettings):
    source: Literal["polygon", "synthetic", "cache"] = "synthetic"
    #: Comma-separated tickers, e.g. ``AAPL,MSFT`` (options as ``O:SPY241220P00720000``).
    symbols: str = Field(default="AAPL,MSFT,NVDA,SPY", min_length=1)
    channels: str = "trades,quotes,minute_bars"
    polygon_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("POLYGON_API_KEY", "TRADEBUS_POLYGON_API_KEY")
    )
    polygon_ws_url: str = "wss://socket.polygon.io/stocks"
    polygon_rest_url: str = "https://api.polygon.io"
    #: No data for this long during market hours: the feed is reported stale.
    stale_after_s: float = Field(default=30.0, gt=0, le=86_400)
    #: Exchange calendar for market hours (exchange-calendars code).
    calendar: str = "XNYS"
    cache_dir: str = ".tradebus/cache"

    # ---- Polygon live source (``--source polygon``) ----
    #: Options contracts (``O:...`` symbols) are streamed from this URL.
    polygon_options_ws_url: str = "wss://socket.polygon.io/options"
    #: First reconnect delay; doubles (with jitter) up to ``polygon_reconnect_max_s``.
    polygon_reconnect_initial_s: float = Field(default=0.5, gt=0, le=60)
    #: Validated when left out too: it must not be below a given ``polygon_reconnect_initial_s``.
    polygon_reconnect_max_s: float = Field(default=30.0, gt=0, le=3600, validate_default=True)
    #: Delay before retrying after ``auth_failed`` or ``max_connections`` (slow on purpose).
    polygon_auth_retry_s: float = Field(default=60.0, gt=0, le=3600)
    #: Named timeout for one phase of the handshake (open, connected frame, auth reply, acks).
    polygon_connect_timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: Longest outage gap-filled from REST (older bars are left out).
    polygon_gapfill_max_s: float = Field(default=86_400.0, gt=0, le=7 * 86_400)
    #: A bar is gap-filled from REST only once its window closed this long ago:
    #: REST may not yet hold a just-closed window's late trades, and its live
    #: bar may still be on the way (the two share an event id). The 60 s is a
    #: judgement: PROTOCOLS.md gives no figure (polygon/README.md, Limits).
    polygon_gapfill_settle_s: float = Field(default=60.0, ge=0, le=3600)
    #: REST's aggregates can lag the live feed: a bar REST does not return,
    #: nor a later one of that symbol, is asked again (every
    #: ``polygon_gapfill_recheck_s``) until its window closed this long ago,
    #: and only then taken as a window without trades. 0: at once.
    polygon_gapfill_lag_s: float = Field(default=600.0, ge=0, le=86_400)
    #: How often a bar REST has not built yet is asked again.
    polygon_gapfill_recheck_s: float = Field(default=60.0, gt=0, le=3600)
    #: Frames parsed but not yet published, at most (then the socket is not read).
    polygon_queue_frames: int = Field(default=4096, ge=1, le=1_000_000)
    #: Most events handed to the sink in one call.
    polygon_publish_batch: int = Field(default=4096, ge=1, le=100_000)
    #: At start-up, gap-fill from the newest bars on the stream (a restart loses nothing).
    polygon_resume_from_stream: bool = True

    # ---- synthetic source (``--source synthetic``; CLI options override) ----
    #: Ticks per second; each tick is one quote and one trade (plus any closed bars).
    synthetic_rate: Annotated[float, BeforeValidator(_per_second)] = Field(
        default=20.0, gt=0, le=1_000_000
    )
    #: Seed of the price path; the same seed gives the same prices and event ids.
    synthetic_seed: int = 7
    #: Salt for the synthetic ids (empty: ids depend on the seed alone, so a rerun
    #: of the same seed is deduplicated; set one per run to record every run;
    #: ``fresh`` (:data:`FRESH_RUN`): a new random salt at every start).
    synthetic_run: str = Field(default="", max_length=64)

    # ---- cache source (``--source cache``; CLI options override) ----
    #: First and last New York day replayed from the cache.
    cache_from: dt.date | None = None
    cache_to: dt.date | None = None
    #: ``max`` (as fast as JetStream acks) or ``10x`` (ten times real time).
    cache_speed: str = Field(default="max", pattern=r"^(max|\d+(\.\d+)?x)$")
    #: Bars to replay: ``minute`` (md.bar.1m.*) or ``second`` (md.bar.1s.*).
    cache_timespan: Literal["minute", "second"] = "minute"

    # ---- option marks (``md.mark.<symbol>`` from ``O:`` quotes, every source) ----
    #: At most one mark of a contract per this long (s); a quote within it is
    #: held back and marked when it ends, the newest held (domain/marks.py).
    mark_min_interval_s: float = Field(default=1.0, ge=0, le=3600)
    #: A midpoint within this fraction of the last mark is no new mark (0.001: 0.1 %)...
    mark_min_change: Decimal = Field(default=Decimal("0.001"), ge=0, lt=1, allow_inf_nan=False)
    #: ...unless this long (s) has passed since the last mark; a quote that
    #: still stands is re-marked when this long has passed since the last mark.
    mark_refresh_s: float = Field(default=30.0, gt=0, le=86_400)
    #: A quote stands (is re-marked) at most this long (s) after its time; 0: no re-marks.
    mark_max_standing_s: float = Field(default=300.0, ge=0, le=86_400)
    #: A quote whose spread is wider than this fraction of its midpoint is no
    #: mark (0.5: 50 %); 0: no limit.
    mark_max_spread: Decimal = Field(default=Decimal("0.5"), ge=0, lt=2, allow_inf_nan=False)
    #: ...unless it is at most this many ticks wide (a cheap contract's 0.05 x
    #: 0.10 is 67 % of its midpoint, and can be no narrower); 0: no such allowance.
    mark_max_spread_ticks: int = Field(default=2, ge=0, le=100)

    @field_validator("symbols")
    @classmethod
    def _symbols_the_contract_takes(cls, value: str) -> str:
        # Every source publishes these names in events, which refuse what the
        # contract does not take (an O: symbol naming no contract): refused
        # here, by name, rather than subscribed to and never heard of.
        for symbol in _symbols(value):
            try:
                _SYMBOL.validate_python(symbol)
            except ValidationError as e:
                why = e.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
                raise ValueError(why if why.startswith(symbol) else f"{symbol}: {why}") from None
        return value

    @field_validator("cache_speed")
    @classmethod
    def _speed_the_replay_can_keep(cls, value: str) -> str:
        parse_speed(value)  # the pattern lets 0x through: no pace at all
        return value

    @field_validator("stale_after_s")
    @classmethod
    def _stale_after_a_nanosecond_at_least(cls, value: float) -> float:
        if int(value * NS) == 0:  # gt=0 lets 1e-12 through: StaleMonitor refuses 0 ns
            raise ValueError(f"{value:g} s is less than a nanosecond")
        return value

    @field_validator("mark_refresh_s")
    @classmethod
    def _refresh_not_below_interval(cls, value: float, info: ValidationInfo) -> float:
        if round(value * NS) == 0:  # gt=0 lets 1e-12 through: 0 ns, no refresh at all
            raise ValueError(f"{value:g} s is less than a nanosecond")
        interval = info.data.get("mark_min_interval_s")
        if interval is not None and value < interval:
            raise ValueError(
                f"{value:g} s is shorter than TRADEBUS_MARK_MIN_INTERVAL_S ({interval:g} s)"
            )
        return value

    @field_validator("polygon_reconnect_max_s")
    @classmethod
    def _max_not_below_initial(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("polygon_reconnect_initial_s")
        if initial is not None and value < initial:
            raise ValueError(f"must be at least TRADEBUS_POLYGON_RECONNECT_INITIAL_S ({initial:g})")
        return value

    @field_validator("mark_max_standing_s")
    @classmethod
    def _standing_not_below_refresh(cls, value: float, info: ValidationInfo) -> float:
        refresh = info.data.get("mark_refresh_s")
        if value and refresh is not None and value < refresh:
            raise ValueError(
                f"{value:g} s is shorter than TRADEBUS_MARK_REFRESH_S ({refresh:g} s): "
                "no quote would ever be re-marked (0 turns re-marks off)"
            )
        return value

    def mark_policy(self) -> MarkPolicy:
        """The option marks' throttle, from the ``mark_*`` settings."""
        return MarkPolicy(
            min_interval_ns=round(self.mark_min_interval_s * NS),
            min_change=self.mark_min_change,
            refresh_ns=round(self.mark_refresh_s * NS),
            max_standing_ns=round(self.mark_max_standing_s * NS),
            max_spread=self.mark_max_spread,
            max_spread_ticks=self.mark_max_spread_ticks,
        )

    @property
    def symbol_list(self) -> tuple[str, ...]:
        """``symbols`` split, trimmed and upper-cased, without repeats."""
        return _symbols(self.symbols)
