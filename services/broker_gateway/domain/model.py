"""Venue-neutral broker types: what every adapter turns its venue's wire format into.

Shaped on Alpaca and Tradier (``../shared/PROTOCOLS.md``): an order has the
broker's id and our client order id (Alpaca ``client_order_id``, Tradier
``tag``), a normalised status, cumulative filled quantity and average price;
a fill has its quantity, price and the order's cumulative and leaves
quantities after it. Quantities and prices are Decimals; times are ns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit", "stop", "stop_limit"]
TimeInForce = Literal["day", "gtc", "ioc", "fok", "opg", "cls"]
AssetClass = Literal["equity", "option"]

#: Normalised order status. Alpaca's and Tradier's many statuses map onto these:
#: ``pending`` (not yet acknowledged), ``accepted`` (working, nothing filled),
#: ``partially_filled``, and the terminal ``filled``, ``canceled``, ``expired``,
#: ``rejected``.
OrderStatus = Literal[
    "pending", "accepted", "partially_filled", "filled", "canceled", "expired", "rejected"
]
TERMINAL_STATUSES: frozenset[str] = frozenset({"filled", "canceled", "expired", "rejected"})

ConnectionState = Literal["connected", "disconnected", "reconnecting"]


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """An order to place; ``client_order_id`` makes placing it idempotent."""

    client_order_id: str
    symbol: str
    side: Side
    quantity: Decimal
    order_type: OrderType = "market"
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: TimeInForce = "day"
    asset_class: AssetClass = "equity"


@dataclass(frozen=True, slots=True)
class BrokerOrder:
    """An order as the broker reports it."""

    broker_order_id: str
    client_order_id: str
    symbol: str
    side: Side
    quantity: Decimal
    filled_quantity: Decimal
    filled_avg_price: Decimal | None
    status: OrderStatus
    order_type: OrderType = "market"
    limit_price: Decimal | None = None
    updated_ns: int = 0
    #: When the broker created it (0 if it does not say).
    created_ns: int = 0

    @property
    def is_open(self) -> bool:
        return self.status not in TERMINAL_STATUSES

    @property
    def leaves_quantity(self) -> Decimal:
        return self.quantity - self.filled_quantity if self.is_open else Decimal(0)


@dataclass(frozen=True, slots=True)
class BrokerFill:
    """One execution: its size and price, and the order's totals right after it."""

    broker_order_id: str
    client_order_id: str
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal
    cumulative_quantity: Decimal
    leaves_quantity: Decimal
    ts_ns: int
    execution_id: str | None = None


@dataclass(frozen=True, slots=True)
class BrokerActivity:
    """A non-trade activity of an option event: an option position settled at
    its contract's expiry (Alpaca's ``OPEXP`` expired worthless, ``OPEXC``
    exercised, ``OPASN`` assigned) or the underlying's trade an exercise or
    assignment made (``OPTRD``).

    ``quantity`` is signed as the venue signs it: the contracts taken out of
    the position (negative for a long one), or the shares bought (positive)
    or sold (negative); ``price`` is an ``OPTRD``'s strike. ``symbol`` is
    tradebus's (``O:`` + OCC symbol for a contract)."""

    activity_id: str
    activity_type: str
    symbol: str
    quantity: Decimal
    price: Decimal | None = None


@dataclass(frozen=True, slots=True)
class BrokerPosition:
    """A net position at the broker: positive long, negative short."""

    symbol: str
    quantity: Decimal
    avg_entry_price: Decimal


@dataclass(frozen=True, slots=True)
class CloseRefused:
    """A position the broker would not close (a failed entry of a close-all).

    ``symbol`` is None when the venue's entry names none; ``entry`` is the
    entry's place in the venue's answer (from 0), which then tells such
    refusals apart: the same answer read again gives the same places.
    """

    symbol: str | None
    reason: str
    code: str | None = None
    entry: int = field(kw_only=True)


@dataclass(frozen=True, slots=True)
class CancelRefused:
    """An order the broker would not cancel (a failed entry of a cancel-all:
    Alpaca's 500 for an ``opg`` or ``cls`` order from its cutoff until its auction, a 422 for
    one that has just filled). Unless it has ended since, it still works,
    and may fill.

    ``broker_order_id`` is None when the venue's entry names none; ``entry``
    is the entry's place in the venue's answer (from 0)."""

    broker_order_id: str | None
    reason: str
    code: str | None = None
    entry: int = field(kw_only=True)


@dataclass(frozen=True, slots=True)
class CanceledAll:
    """What a cancel-all did: the orders whose cancel the broker took, and
    those it refused to cancel (each on its own, as a close-all's positions)."""

    orders: tuple[BrokerOrder, ...] = ()
    refused: tuple[CancelRefused, ...] = ()


@dataclass(frozen=True, slots=True)
class ClosedAll:
    """What a close-all did: the closing orders placed, and the positions refused.

    The venue closes or refuses each position on its own (Alpaca: a 207 of one
    entry per position; a position whose shares open orders hold is a 403), so
    a close-all can leave some positions open.
    """

    orders: tuple[BrokerOrder, ...] = ()
    refused: tuple[CloseRefused, ...] = ()


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """Something happened to an order (the broker's account event stream)."""

    kind: Literal["accepted", "fill", "canceled", "expired", "rejected"]
    order: BrokerOrder  # as it is after this update
    ts_ns: int
    fill: BrokerFill | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ConnectionUpdate:
    """The adapter's connection to the broker changed state."""

    state: ConnectionState
    detail: str = ""


BrokerEvent = OrderUpdate | ConnectionUpdate
