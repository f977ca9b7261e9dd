"""Polygon's own wire format, with Polygon's own field names (``PROTOCOLS.md``).

Nothing here leaves the adapter: :mod:`.parse` turns these into our events.

WebSocket frames are JSON arrays of events told apart by ``ev``: ``status``,
``T`` (trade), ``Q`` (quote), ``A`` (second bar), ``AM`` (minute bar). All
times are **milliseconds**. Fields the venue adds later are ignored
(``extra="ignore"``): a new field must not take the feed down; a missing
required field or a wrong type makes that one event invalid.

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


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


#: Prices, sizes and volumes as the venue sends them: finite decimals.
WireDecimal = Annotated[Decimal, Field(allow_inf_nan=False)]


class WsStatus(_Wire):
    """``{"ev":"status","status":"auth_success","message":"authenticated"}``."""

    ev: Literal["status"]
    status: str
    message: str = ""


class WsTrade(_Wire):
    """A trade (``T``). Option trades have no ``i`` and no ``z``."""

    ev: Literal["T"]
    sym: str
    #: Exchange id.
    x: int | None = None
    #: Trade id (a string).
    i: str | None = None
    #: Tape: 1 = NYSE, 2 = AMEX, 3 = Nasdaq.
    z: int | None = None
    p: WireDecimal
    s: WireDecimal
    #: Condition codes; absent when there are none.
    c: tuple[int, ...] = ()
    #: SIP timestamp, ms.
    t: int
    #: Sequence number, increasing per ticker (with gaps).
    q: int | None = None
    trfi: int | None = None
    trft: int | None = None


class WsQuote(_Wire):
    """A quote (``Q``): sizes of stocks in round lots. Option quotes lack ``c``, ``i``, ``z``."""

    ev: Literal["Q"]
    sym: str
    bx: int | None = None
    bp: WireDecimal
    bs: WireDecimal
    ax: int | None = None
    ap: WireDecimal
    as_: WireDecimal = Field(alias="as")
    #: Condition (one int).
    c: int | None = None
    #: Indicators.
    i: tuple[int, ...] = ()
    t: int
    q: int | None = None
    z: int | None = None


class WsAggregate(_Wire):
    """A second (``A``) or minute (``AM``) bar; ``s``/``e`` are window start/end in ms."""

    ev: Literal["A", "AM"]
    sym: str
    v: WireDecimal
    #: Day volume so far.
    av: WireDecimal | None = None
    #: Official open of the day.
    op: WireDecimal | None = None
    vw: WireDecimal | None = None
    o: WireDecimal
    h: WireDecimal
    l: WireDecimal  # noqa: E741 - Polygon's field name
    c: WireDecimal
    #: Day VWAP.
    a: WireDecimal | None = None
    #: Average trade size in the window.
    z: WireDecimal | None = None
    s: int
    e: int
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
