"""Polygon's own wire format, with Polygon's own field names (``PROTOCOLS.md``).

Nothing here leaves the adapter: :mod:`.parse` turns these into our events.

WebSocket frames are JSON arrays of events told apart by ``ev``: ``status``,
``T`` (trade), ``Q`` (quote), ``A`` (second bar), ``AM`` (minute bar). All
times are **milliseconds**. Fields the venue adds later are ignored
(``extra="ignore"``): a new field must not take the feed down; a missing
required field or a wrong type makes that one event invalid.

The fields that become ours (symbol, prices, sizes, times, codes) carry our
contract's own constraints (a symbol is a subject token, a price is positive
with at most 38 digits and 12 places, times in ns no later than 2200,
integers of 64 bits). So a record that validates here makes a valid event,
which lets :mod:`.parse` build events without validating twice;
``tests/unit/test_polygon_parse.py`` and
``tests/unit/test_polygon_contract_bounds.py`` check these constraints
against ``libs.contract.envelope``.

Numbers: Polygon writes prices as JSON numbers, produced from binary doubles
with the shortest text that reads back to the same double. Parsing that text
into a double and printing the double's shortest repr gives the same text
back, so ``Decimal(repr(float))`` (what pydantic does for a float into a
``Decimal`` field) is exactly the number Polygon wrote.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from libs.contract.envelope import INT64_MAX, INT64_MIN, NANOS_MAX


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


#: Numbers we do not pass on (day volume, official open): finite decimals.
WireDecimal = Annotated[Decimal, Field(allow_inf_nan=False)]

# The contract's constraints (libs.contract.envelope), without its refusal of
# floats: a JSON number from Polygon is exact as explained above.
_Exact = Field(allow_inf_nan=False, max_digits=38, decimal_places=12)
#: A price (``Price``): positive.
WirePrice = Annotated[Decimal, _Exact, Field(gt=0)]
#: A size (``Quantity``): positive.
WireQuantity = Annotated[Decimal, _Exact, Field(gt=0)]
#: A size that may be zero (``NonNegativeQuantity``): an empty side of a quote.
WireSize = Annotated[Decimal, _Exact, Field(ge=0)]
#: An amount (``Money``): a bid or ask price may be 0 when a side is empty.
WireMoney = Annotated[Decimal, _Exact]
#: A ticker (``Symbol``): ``BRK.B`` is one (published on ``md.*.BRK~B``); ``BRK B``
#: is not, so it is refused here, not later.
WireSymbol = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_:.\-/]+$")]
#: An integer we pass on (exchange, tape, condition codes, sequence number):
#: at most 64 bits, signed (``Int64``).
WireInt = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
#: Milliseconds that are a time of ours in nanoseconds (``Nanos``: up to
#: ``NANOS_MAX``, 2200-01-01).
WireMillis = Annotated[int, Field(ge=0, le=NANOS_MAX // 1_000_000)]


class WsStatus(_Wire):
    """``{"ev":"status","status":"auth_success","message":"authenticated"}``."""

    ev: Literal["status"]
    status: str
    message: str = ""


class WsTrade(_Wire):
    """A trade (``T``). Option trades have no ``i`` and no ``z``."""

    ev: Literal["T"]
    sym: WireSymbol
    #: Exchange id.
    x: WireInt | None = None
    #: Trade id (a string).
    i: str | None = None
    #: Tape: 1 = NYSE, 2 = AMEX, 3 = Nasdaq.
    z: WireInt | None = None
    p: WirePrice
    s: WireQuantity
    #: Condition codes; absent when there are none.
    c: tuple[WireInt, ...] = ()
    #: SIP timestamp, ms.
    t: WireMillis
    #: Sequence number, increasing per ticker (with gaps).
    q: WireInt | None = None
    trfi: int | None = None
    trft: int | None = None


class WsQuote(_Wire):
    """A quote (``Q``): sizes of stocks in round lots. Option quotes lack ``c``, ``i``, ``z``."""

    ev: Literal["Q"]
    sym: WireSymbol
    bx: WireInt | None = None
    bp: WireMoney
    bs: WireSize
    ax: WireInt | None = None
    ap: WireMoney
    as_: WireSize = Field(alias="as")
    #: Condition (one int).
    c: WireInt | None = None
    #: Indicators.
    i: tuple[WireInt, ...] = ()
    t: WireMillis
    q: WireInt | None = None
    z: WireInt | None = None


class WsAggregate(_Wire):
    """A second (``A``) or minute (``AM``) bar; ``s``/``e`` are window start/end in ms."""

    ev: Literal["A", "AM"]
    sym: WireSymbol
    v: WireSize
    #: Day volume so far.
    av: WireDecimal | None = None
    #: Official open of the day.
    op: WireDecimal | None = None
    vw: WireMoney | None = None
    o: WirePrice
    h: WirePrice
    l: WirePrice  # noqa: E741 - Polygon's field name
    c: WirePrice
    #: Day VWAP.
    a: WireDecimal | None = None
    #: Average trade size in the window.
    z: WireDecimal | None = None
    s: WireMillis
    e: WireMillis
    otc: bool = False


WsEvent = Annotated[WsStatus | WsTrade | WsQuote | WsAggregate, Field(discriminator="ev")]

#: One whole frame, parsed and validated in one pass (the fast path).
WS_FRAME: TypeAdapter[list[WsEvent]] = TypeAdapter(list[WsEvent])
#: One event of a frame (the slow path, when the whole frame does not validate).
WS_EVENT: TypeAdapter[WsEvent] = TypeAdapter(WsEvent)


def ws_auth(api_key: str) -> dict[str, str]:
    """The auth action (the key travels here and nowhere else)."""
    return {"action": "auth", "params": api_key}


def ws_subscribe(channels: list[str]) -> dict[str, str]:
    """``{"action":"subscribe","params":"T.AAPL,AM.AAPL"}``."""
    return {"action": "subscribe", "params": ",".join(channels)}


# ------------------------------------------------------------------ REST


class RestAgg(_Wire):
    """One bar of ``/v2/aggs/...``: ``t`` is the window **start**, ms."""

    o: WireDecimal
    h: WireDecimal
    l: WireDecimal  # noqa: E741 - Polygon's field name
    c: WireDecimal
    v: WireDecimal
    vw: WireDecimal | None = None
    n: int | None = None
    t: int
    otc: bool = False


class RestAggsResponse(_Wire):
    """A page of aggregates; a missing ``results`` means none (empty range)."""

    ticker: str | None = None
    adjusted: bool | None = None
    queryCount: int | None = None
    resultsCount: int | None = None
    status: str
    request_id: str | None = None
    next_url: str | None = None
    results: tuple[RestAgg, ...] = ()


class RestError(_Wire):
    """An error body: ``{"status":"ERROR","error":"Unknown API Key"}`` (401) or
    ``{"status":"NOT_AUTHORIZED","message":...}`` (403)."""

    status: str
    request_id: str | None = None
    error: str | None = None
    message: str | None = None

    @property
    def text(self) -> str:
        return self.error or self.message or self.status
