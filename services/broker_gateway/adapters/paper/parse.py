"""Paper broker wire format -> the gateway's venue-neutral types (and back for requests).

Status mapping follows Alpaca's list (``../shared/PROTOCOLS.md``), so that the
Alpaca adapter can share its spirit: anything working and unfilled is
``accepted``; ``pending_new`` and friends are ``pending``; ``replaced`` ends
this order (``canceled``). ``done_for_day`` is *not* an end: Alpaca's order
"will not receive further updates until the next trading day" and then works
again (a GTC order lives on), so it stays ``accepted`` (or
``partially_filled``), and its stream event changes nothing we track. It used
to count as ``expired``: the order was published canceled while it lived (the
risk-gate forgot its open quantity, reconciliation stopped asking about it).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Literal, cast

from services.broker_gateway.adapters.paper import schemas
from services.broker_gateway.domain.model import (
    BrokerActivity,
    BrokerFill,
    BrokerOrder,
    BrokerPosition,
    OrderRequest,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
)

_STATUS: dict[str, OrderStatus] = {
    "new": "accepted",
    "accepted": "accepted",
    "pending_cancel": "accepted",
    "pending_replace": "accepted",
    "accepted_for_bidding": "accepted",
    "calculated": "accepted",
    "held": "accepted",
    "stopped": "accepted",
    "suspended": "accepted",
    "partially_filled": "partially_filled",
    "filled": "filled",
    "canceled": "canceled",
    "replaced": "canceled",
    "expired": "expired",
    "done_for_day": "accepted",  # not ended: it works again the next trading day
    "rejected": "rejected",
    "pending_new": "pending",
    "pending_review": "pending",
}

_EVENTS: dict[str, Literal["accepted", "fill", "canceled", "expired", "rejected"]] = {
    "new": "accepted",
    "fill": "fill",
    "partial_fill": "fill",
    "canceled": "canceled",
    "expired": "expired",
    "rejected": "rejected",
}


def ns(value: str | None) -> int:
    """An RFC 3339 time as ns since the epoch (0 when absent)."""
    if not value:
        return 0
    t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


def _side(value: str) -> Side:
    if value not in ("buy", "sell"):
        raise ValueError(f"unknown side {value!r}")
    return cast(Side, value)


def order(o: schemas.Order) -> BrokerOrder:
    status = _STATUS.get(o.status)
    if status is None:
        raise ValueError(f"unknown order status {o.status!r}")
    if status == "accepted" and o.filled_qty > 0:
        status = "partially_filled"
    kind = o.type or o.order_type or "market"
    return BrokerOrder(
        broker_order_id=o.id,
        client_order_id=o.client_order_id,
        symbol=o.symbol,
        side=_side(o.side),
        quantity=o.qty if o.qty is not None else o.filled_qty,
        filled_quantity=o.filled_qty,
        filled_avg_price=o.filled_avg_price,
        status=status,
        order_type=cast(OrderType, kind)
        if kind in ("market", "limit", "stop", "stop_limit")
        else "market",
        limit_price=o.limit_price,
        updated_ns=ns(o.updated_at),
        created_ns=ns(o.created_at or o.submitted_at),
    )


def trade_update(u: schemas.TradeUpdate) -> OrderUpdate | None:
    """A ``trade_updates`` event, or None for events that change nothing we track."""
    kind = _EVENTS.get(u.event)
    if kind is None:
        return None
    o = order(u.order)
    ts = ns(u.timestamp) or o.updated_ns
    fill = None
    if kind == "fill":
        if u.qty is None or u.price is None:
            raise ValueError(f"{u.event} without qty or price")
        fill = BrokerFill(
            broker_order_id=o.broker_order_id,
            client_order_id=o.client_order_id,
            symbol=o.symbol,
            side=o.side,
            quantity=u.qty,
            price=u.price,
            cumulative_quantity=o.filled_quantity,
            leaves_quantity=o.quantity - o.filled_quantity,
            ts_ns=ts,
            execution_id=u.execution_id,
        )
    return OrderUpdate(kind=kind, order=o, ts_ns=ts, fill=fill, reason=u.event)


def position(p: schemas.Position) -> BrokerPosition:
    qty = p.qty
    if p.side == "short" and qty > 0:
        qty = -qty  # a venue that sends short quantities unsigned
    return BrokerPosition(symbol=p.symbol, quantity=qty, avg_entry_price=p.avg_entry_price)


def fill(f: schemas.FillActivity, o: BrokerOrder) -> BrokerFill:
    """A fill activity of order ``o`` as one of its fills.

    The activity list is the account's: the caller keeps only ``o``'s
    activities (``f.order_id == o.broker_order_id``) before asking.
    """
    return BrokerFill(
        broker_order_id=f.order_id,
        client_order_id=o.client_order_id,
        symbol=f.symbol,
        side=_side(f.side),
        quantity=f.qty,
        price=f.price,
        cumulative_quantity=f.cum_qty,
        leaves_quantity=f.leaves_qty,
        ts_ns=ns(f.transaction_time),
        execution_id=f.id,
    )


def option_activity(a: schemas.OptionActivity) -> BrokerActivity:
    """A non-trade activity of an option event. The paper broker names a
    contract as tradebus does (``O:`` + OCC symbol); a venue writing the OCC
    symbol alone (Alpaca) maps it here."""
    return BrokerActivity(
        activity_id=a.id,
        activity_type=a.activity_type,
        symbol=a.symbol,
        quantity=a.qty,
        price=a.price,
    )


def _num(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def order_request(r: OrderRequest) -> schemas.OrderRequest:
    return schemas.OrderRequest(
        symbol=r.symbol,
        qty=format(r.quantity, "f"),
        side=r.side,
        type=r.order_type,
        time_in_force=r.time_in_force,
        client_order_id=r.client_order_id,
        limit_price=_num(r.limit_price),
        stop_price=_num(r.stop_price),
    )
