"""The paper broker's values: what a client asks for (:class:`OrderSpec`),
the orders, fills, positions and settlements the book holds and journals,
the answers of its commands (:class:`Refused`, :class:`Closing`,
:class:`Canceling`), and its configuration (:class:`BookConfig`). Alpaca's
objects, typed; the book (``book.py``) and its ledger (``ledger.py``) hold
them, the adapters turn them into Alpaca's JSON.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from services.paper_broker.domain.fill_model import WIDE, FillModelConfig, OrderType, Side
from services.paper_broker.domain.settlement import OptionActivity

TimeInForce = Literal["day", "gtc", "ioc", "fok", "opg", "cls"]
OrderStatus = Literal["new", "partially_filled", "filled", "canceled", "expired", "rejected"]
#: ``triggered`` (a stop reached without a fill) is for the journal only:
#: Alpaca's stream has no such event, and clients are never sent it.
UpdateEvent = Literal["new", "fill", "partial_fill", "canceled", "expired", "rejected", "triggered"]
JOURNAL_ONLY: frozenset[str] = frozenset({"triggered"})

OPEN_STATUSES: frozenset[str] = frozenset({"new", "partially_filled"})

# Alpaca's error codes (PROTOCOLS.md): 403 buying power and limits, 422 invalid.
CODE_FORBIDDEN = 40310000
CODE_UNPROCESSABLE = 42210000
CODE_NOT_FOUND = 40410000
#: Alpaca's answer to a client order id already used (HTTP 422).
CODE_DUPLICATE_CLIENT_ORDER_ID = 40010001
DUPLICATE_CLIENT_ORDER_ID = "client_order_id must be unique"


class Refused(Exception):
    """The broker says no: an HTTP status, Alpaca's error code, a message."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class OrderSpec:
    """What a client asks for (``POST /v2/orders``)."""

    symbol: str
    side: Side
    qty: Decimal
    order_type: OrderType = "market"
    time_in_force: TimeInForce = "day"
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    client_order_id: str | None = None
    asset_class: str = "us_equity"


@dataclass(frozen=True, slots=True)
class PaperOrder:
    """An order as the broker holds it (Alpaca's order object, typed)."""

    id: str
    client_order_id: str
    account: str
    symbol: str
    asset_class: str
    side: Side
    qty: Decimal
    order_type: OrderType
    time_in_force: TimeInForce
    limit_price: Decimal | None
    stop_price: Decimal | None
    status: OrderStatus
    filled_qty: Decimal
    filled_avg_price: Decimal | None
    created_at_ns: int
    updated_at_ns: int
    filled_at_ns: int | None = None
    canceled_at_ns: int | None = None
    #: A stop or stop-limit order whose stop was reached. Journaled with the
    #: order (a fill's, or a ``triggered`` update when the trigger filled
    #: nothing), so a restart does not make it cross its stop again.
    triggered: bool = False
    #: The market's time when the order was placed: the latest trade time or
    #: bar end of its symbol the book had seen (the feed's clock, so a replay
    #: of old prices compares with its own times). 0: none seen.
    placed_at_market_ns: int = 0

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def remaining(self) -> Decimal:
        # Quantities are added and subtracted in WIDE (fill_model.WIDE): in
        # the default 28 digits a quantity the contract carries (38) was
        # rounded, and its order filled short of it for ever.
        return WIDE.subtract(self.qty, self.filled_qty)


@dataclass(frozen=True, slots=True)
class TradeUpdate:
    """One event of the ``trade_updates`` stream; ``order`` is the order after it."""

    event: UpdateEvent
    order: PaperOrder
    ts_ns: int
    execution_id: str | None = None
    price: Decimal | None = None
    qty: Decimal | None = None
    position_qty: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Position:
    """A net position: positive long, negative short."""

    symbol: str
    asset_class: str
    qty: Decimal
    avg_entry_price: Decimal


@dataclass(frozen=True, slots=True)
class FillActivity:
    """A fill as the account's activity list shows it (``activity_type: FILL``)."""

    id: str
    account: str
    order_id: str
    symbol: str
    side: Side
    qty: Decimal
    price: Decimal
    cum_qty: Decimal
    leaves_qty: Decimal
    ts_ns: int
    order_status: OrderStatus

    @property
    def type(self) -> str:
        return "fill" if self.leaves_qty == 0 else "partial_fill"


@dataclass(frozen=True, slots=True)
class AccountPosition:
    """A position and the account holding it: a line of a journal's snapshot."""

    account: str
    position: Position


@dataclass(frozen=True, slots=True)
class Settlement:
    """One position settled at its contract's expiry: its activities (an
    ``OPEXP``, or an ``OPEXC`` / ``OPASN`` and its ``OPTRD``), applied
    together. Journaled as a trade update is, and replayed the same way."""

    account: str
    symbol: str
    activities: tuple[OptionActivity, ...]


#: What a journal's snapshot holds (:meth:`PaperBook.state`), restored as is.
Restored = PaperOrder | FillActivity | AccountPosition | OptionActivity
#: One entry of a journal: a snapshot's piece or an update after it.
JournalEntry = TradeUpdate | Settlement | Restored


@dataclass(frozen=True, slots=True)
class Closing:
    """One position's entry in a close-all: its closing order, or why there is none."""

    symbol: str
    order: PaperOrder | None = None
    refused: Refused | None = None


@dataclass(frozen=True, slots=True)
class Canceling:
    """One working order's entry in a cancel-all: the order after its
    cancellation, or the order still working and why it was not canceled."""

    order: PaperOrder
    refused: Refused | None = None


#: When a ``day`` order expires: its session's close, or a New York time.
DayOrderClose = dt.time | Literal["close"]


@dataclass(frozen=True, slots=True)
class BookConfig:
    """Everything that decides what the broker accepts and how it fills."""

    fill_model: FillModelConfig = field(default_factory=FillModelConfig)
    #: Larger orders are refused (403), as a broker's per-order limit would.
    max_order_quantity: Decimal | None = None
    #: Symbols the broker refuses to trade (422 "not tradable").
    untradable_symbols: frozenset[str] = frozenset()
    #: Symbols the venue rejects after accepting the order (``new``, then ``rejected``).
    halted_symbols: frozenset[str] = frozenset()
    #: When working ``day`` orders expire: ``"close"``, at their session's
    #: close (13:00 New York on a half day); a time (New York), then, or at
    #: the session's close if that is earlier; None: never (``paper.yaml``
    #: defaults to ``"close"``). See ``ledger.day_order_expiry_ns``.
    day_orders_expire_at: DayOrderClose | None = None
