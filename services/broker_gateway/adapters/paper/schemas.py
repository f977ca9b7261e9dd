"""The paper broker's wire format, in its own field names (Alpaca's shapes).

Read tolerantly, as a real venue's must be: unknown fields are ignored (a
venue adds fields), numbers may come as strings or JSON numbers (Alpaca sends
both), optional fields may be missing or null. Written strictly: what we send
is exactly what the protocol documents (``services/paper_broker/README.md``).
Nothing here leaves the adapter; ``parse.py`` turns it into our types.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

#: Alpaca's error code for a ``client_order_id`` it has seen already (HTTP 422,
#: "client_order_id must be unique"): the order exists.
CODE_DUPLICATE_CLIENT_ORDER_ID = 40010001


def _exact(value: Any) -> Any:
    # A JSON number read as float: go through its shortest repr, not its binary value.
    return repr(value) if isinstance(value, float) else value


Num = Annotated[Decimal, BeforeValidator(_exact)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Envelope(_Wire):
    """Every server message: ``{"stream": ..., "data": {...}}``."""

    stream: str
    data: dict[str, Any] = Field(default_factory=dict)


class Authorization(_Wire):
    status: str
    action: str = "authenticate"


class Listening(_Wire):
    streams: list[str] = Field(default_factory=list)


class Response(_Wire):
    id: str | None = None
    status: int
    body: Any = None
    #: HTTP headers that matter (``Retry-After`` on a 429); names in any case.
    headers: dict[str, Any] = Field(default_factory=dict)


class ErrorBody(_Wire):
    code: int | None = None
    message: str = ""


class Order(_Wire):
    """Alpaca's order object (the fields the gateway uses)."""

    id: str
    client_order_id: str
    symbol: str
    side: str
    qty: Num | None = None
    filled_qty: Num = Decimal(0)
    filled_avg_price: Num | None = None
    type: str | None = None
    order_type: str | None = None
    time_in_force: str | None = None
    limit_price: Num | None = None
    stop_price: Num | None = None
    status: str
    created_at: str | None = None
    submitted_at: str | None = None
    updated_at: str | None = None


class TradeUpdate(_Wire):
    """The ``data`` of a ``trade_updates`` message."""

    event: str
    order: Order
    timestamp: str | None = None
    execution_id: str | None = None
    price: Num | None = None
    qty: Num | None = None
    position_qty: Num | None = None


class Position(_Wire):
    symbol: str
    qty: Num
    avg_entry_price: Num
    side: str | None = None


class FillActivity(_Wire):
    """An account activity of type FILL."""

    id: str
    order_id: str
    symbol: str
    side: str
    qty: Num
    price: Num
    cum_qty: Num
    leaves_qty: Num
    transaction_time: str | None = None


class OptionActivity(_Wire):
    """A non-trade activity of an option event (OPEXP, OPEXC, OPASN, OPTRD)."""

    id: str
    activity_type: str
    date: str
    symbol: str
    qty: Num
    price: Num | None = None
    net_amount: Num | None = None
    description: str = ""
    status: str | None = None


class MultiStatus(_Wire):
    """One entry of a 207 answer (cancel-all, close-all)."""

    id: str | None = None
    symbol: str | None = None
    status: int
    body: Any = None


class OrderRequest(BaseModel):
    """``POST /v2/orders`` body, as we send it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    symbol: str
    qty: str
    side: str
    type: str
    time_in_force: str
    client_order_id: str
    limit_price: str | None = None
    stop_price: str | None = None
