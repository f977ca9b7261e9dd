"""The paper broker's wire format: Alpaca's JSON shapes, numbers as strings.

Outbound (orders, trade updates, positions, fill activities, errors) and
inbound (an order request's body) conversions between the books' typed
objects and JSON, plus the journal's record formats (a trade update with its
account; a snapshot's positions, orders and fill activities). Field names
follow Alpaca's order object and ``trade_updates`` stream
(``../../shared/PROTOCOLS.md``); see this service's README.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from typing import Any, get_args

from libs.contract.events import asset_class_of, contract_multiplier
from services.paper_broker.domain.book import (
    CODE_UNPROCESSABLE,
    AccountPosition,
    Canceling,
    Closing,
    FillActivity,
    OrderSpec,
    PaperOrder,
    Position,
    Refused,
    Restored,
    Settlement,
    TimeInForce,
    TradeUpdate,
)
from services.paper_broker.domain.fill_model import OrderType
from services.paper_broker.domain.settlement import OptionActivity

ORDER_TYPES = get_args(OrderType)
TIMES_IN_FORCE = get_args(TimeInForce)

Json = dict[str, Any]
#: Alpaca's status in a cancel-all's entry for an order it could not cancel.
CANCEL_ALL_REFUSED = 500


#: The last time written and its text: one order's created, submitted,
#: updated and filled times, and its update's timestamp, are often the same
#: instant, and each was formatted again (a fifth of a submit's cost).
_last_iso: tuple[int, str] = (-1, "")


def iso(ns: int | None) -> str | None:
    """RFC 3339 UTC with microseconds, as Alpaca writes times."""
    global _last_iso
    if ns is None:
        return None
    if _last_iso[0] == ns:
        return _last_iso[1]
    seconds, rest = divmod(ns, 1_000_000_000)
    t = time.gmtime(seconds)  # strftime through datetime cost ~10% of the broker's CPU
    text = (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T"
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{rest // 1000:06d}Z"
    )
    _last_iso = (ns, text)
    return text


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: An RFC 3339 time's fraction of a second (the time's, not an offset's).
_FRACTION = re.compile(r"\d{4}-\d{2}-\d{2}.\d{2}:\d{2}:\d{2}[.,](\d+)")


def parse_iso(value: str | None) -> int | None:
    """An RFC 3339 time in ns since the epoch (a YYYY-MM-DD date, as Alpaca's
    ``after`` / ``until`` take, is its midnight; a time without an offset is
    UTC), to the nanosecond (digits past it are cut). In integers: seconds
    as a float cut the digits past the microsecond, took a time before 1970
    with a fraction as after it (int() rounds toward zero) and, in a far
    year, rounded .999999 up to the next second."""
    if value is None:
        return None
    t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    ns = (t - _EPOCH) // dt.timedelta(microseconds=1) * 1000
    # datetime keeps six digits of the fraction: the nanoseconds past them.
    if (fraction := _FRACTION.match(value)) is not None:
        ns += int(fraction.group(1)[6:9].ljust(3, "0"))
    return ns


def num(value: Decimal | None) -> str | None:
    """A decimal as Alpaca sends numbers: a plain string, never exponent notation."""
    return None if value is None else format(value, "f")


def order_json(o: PaperOrder) -> Json:
    """Alpaca's order object."""
    return {
        "id": o.id,
        "client_order_id": o.client_order_id,
        "created_at": iso(o.created_at_ns),
        "updated_at": iso(o.updated_at_ns),
        "submitted_at": iso(o.created_at_ns),
        "filled_at": iso(o.filled_at_ns),
        "expired_at": iso(o.updated_at_ns) if o.status == "expired" else None,
        "canceled_at": iso(o.canceled_at_ns),
        "failed_at": None,
        "asset_class": o.asset_class,
        "symbol": o.symbol,
        "notional": None,
        "qty": num(o.qty),
        "filled_qty": num(o.filled_qty),
        "filled_avg_price": num(o.filled_avg_price),
        "order_class": "",
        "order_type": o.order_type,
        "type": o.order_type,
        "side": o.side,
        "time_in_force": o.time_in_force,
        "limit_price": num(o.limit_price),
        "stop_price": num(o.stop_price),
        "status": o.status,
        "extended_hours": False,
        "legs": None,
    }


def order_from_json(account: str, d: Json, ns: Sequence[int | None] | None = None) -> PaperOrder:
    """The inverse of :func:`order_json` (the journal reads it back). ``ns``:
    its created, updated, filled and canceled times to the ns, as the journal
    keeps them (the wire's are to the microsecond, and are not parsed then)."""
    avg = d.get("filled_avg_price")
    if ns is not None:
        created, updated, filled, canceled = ns
    else:
        created = parse_iso(d["created_at"]) or 0
        updated = parse_iso(d["updated_at"]) or 0
        filled, canceled = parse_iso(d.get("filled_at")), parse_iso(d.get("canceled_at"))
    return PaperOrder(
        id=d["id"],
        client_order_id=d["client_order_id"],
        account=account,
        symbol=d["symbol"],
        asset_class=d["asset_class"],
        side=d["side"],
        qty=Decimal(d["qty"]),
        order_type=d["type"],
        time_in_force=d["time_in_force"],
        limit_price=Decimal(d["limit_price"]) if d.get("limit_price") is not None else None,
        stop_price=Decimal(d["stop_price"]) if d.get("stop_price") is not None else None,
        status=d["status"],
        filled_qty=Decimal(d["filled_qty"]),
        filled_avg_price=Decimal(avg) if avg is not None else None,
        created_at_ns=created or 0,
        updated_at_ns=updated or 0,
        filled_at_ns=filled,
        canceled_at_ns=canceled,
    )


def trade_update_json(u: TradeUpdate) -> Json:
    """The ``data`` of a ``trade_updates`` message."""
    data: Json = {"event": u.event, "timestamp": iso(u.ts_ns), "order": order_json(u.order)}
    if u.execution_id is not None:
        data["execution_id"] = u.execution_id
        data["price"] = num(u.price)
        data["qty"] = num(u.qty)
        data["position_qty"] = num(u.position_qty)
    return data


def journal_record(u: TradeUpdate, data: Json | None = None) -> Json:
    """A journal line: the update as sent (``data``, if already built), its
    account, its times to the ns, ``triggered`` for a stop whose stop was
    reached and ``market_ns``, the market's time when the order was placed
    (Alpaca's order object says neither)."""
    o = u.order
    record: Json = {
        "account": o.account,
        "update": trade_update_json(u) if data is None else data,
        "ns": [u.ts_ns, o.created_at_ns, o.updated_at_ns, o.filled_at_ns, o.canceled_at_ns],
    }
    if o.triggered:
        record["triggered"] = True
    if o.placed_at_market_ns:
        record["market_ns"] = o.placed_at_market_ns
    return record


def trade_update_from_record(record: Json) -> TradeUpdate:
    data = record["update"]
    price, qty, pos = data.get("price"), data.get("qty"), data.get("position_qty")
    if "ns" in record:  # exact times (the wire's are to the microsecond)
        ts_ns, *order_ns = record["ns"]
        order = order_from_json(record["account"], data["order"], order_ns)
    else:  # journals from before the exact times
        ts_ns = parse_iso(data["timestamp"]) or 0
        order = order_from_json(record["account"], data["order"])
    # Journals written before ``triggered`` was recorded: a stop that has
    # filled anything was triggered.
    triggered = bool(record.get("triggered")) or (
        order.order_type in ("stop", "stop_limit") and order.filled_qty > 0
    )
    if triggered:
        order = replace(order, triggered=True)
    if market_ns := record.get("market_ns"):
        order = replace(order, placed_at_market_ns=market_ns)
    return TradeUpdate(
        event=data["event"],
        order=order,
        ts_ns=ts_ns,
        execution_id=data.get("execution_id"),
        price=Decimal(price) if price is not None else None,
        qty=Decimal(qty) if qty is not None else None,
        position_qty=Decimal(pos) if pos is not None else None,
    )


# A journal's snapshot (see adapters/journal.py): a ``snapshot`` header line,
# then one line per position (``position``), order (``order``) and fill
# activity (``fill``), then a ``snapshot_end`` line with the counts.
SNAPSHOT_VERSION = 1
#: The keys of a snapshot's first and last lines.
SNAPSHOT, SNAPSHOT_END = "snapshot", "snapshot_end"


def snapshot_header(taken_ns: int, kept_since_ns: int | None) -> Json:
    return {SNAPSHOT: {"version": SNAPSHOT_VERSION, "ns": taken_ns, "kept_since": kept_since_ns}}


def snapshot_end(counts: dict[str, int]) -> Json:
    return {SNAPSHOT_END: counts}


def option_activity_json(a: OptionActivity) -> Json:
    """A non-trade activity of an option event, as Alpaca lists it
    (``OPEXP``, ``OPEXC``, ``OPASN``, ``OPTRD``; ``price`` an ``OPTRD``'s only)."""
    data: Json = {
        "id": a.id,
        "activity_type": a.activity_type,
        "date": a.date.isoformat(),
        "net_amount": num(a.net_amount),
        "description": a.description,
        "symbol": a.symbol,
        "qty": num(a.qty),
        "status": a.status,
    }
    if a.price is not None:
        data["price"] = num(a.price)
    return data


def _option_activity_record(a: OptionActivity) -> Json:
    return {**option_activity_json(a), "account": a.account, "ns": a.ts_ns}


def _option_activity_from_record(d: Json) -> OptionActivity:
    return OptionActivity(
        id=d["id"],
        account=d["account"],
        activity_type=d["activity_type"],
        date=dt.date.fromisoformat(d["date"]),
        symbol=d["symbol"],
        qty=Decimal(d["qty"]),
        net_amount=Decimal(d["net_amount"]),
        ts_ns=d["ns"],
        price=Decimal(d["price"]) if d.get("price") is not None else None,
        description=d["description"],
        status=d["status"],
    )


def settlement_record(s: Settlement) -> Json:
    """A journal line: one position's settlement, its activities applied together."""
    return {
        "settlement": {
            "account": s.account,
            "symbol": s.symbol,
            "activities": [_option_activity_record(a) for a in s.activities],
        }
    }


def settlement_from_record(record: Json) -> Settlement:
    d = record["settlement"]
    activities = tuple(_option_activity_from_record(a) for a in d["activities"])
    return Settlement(d["account"], d["symbol"], activities)


def restored_record(entry: Restored) -> Json:
    """A snapshot line: a position, an order (Alpaca's object, its times to
    the ns, ``triggered`` and ``market_ns``), a fill activity or a non-trade
    activity (``activity``)."""
    if isinstance(entry, OptionActivity):
        return {"activity": _option_activity_record(entry)}
    if isinstance(entry, PaperOrder):
        o = entry
        order: Json = {
            "account": o.account,
            "order": order_json(o),
            "ns": [o.created_at_ns, o.updated_at_ns, o.filled_at_ns, o.canceled_at_ns],
        }
        if o.triggered:
            order["triggered"] = True
        if o.placed_at_market_ns:
            order["market_ns"] = o.placed_at_market_ns
        return order
    if isinstance(entry, FillActivity):
        f = entry
        return {
            "fill": {
                "id": f.id,
                "account": f.account,
                "order_id": f.order_id,
                "symbol": f.symbol,
                "side": f.side,
                "qty": num(f.qty),
                "price": num(f.price),
                "cum_qty": num(f.cum_qty),
                "leaves_qty": num(f.leaves_qty),
                "ns": f.ts_ns,
                "order_status": f.order_status,
            }
        }
    p = entry.position
    return {
        "position": {
            "account": entry.account,
            "symbol": p.symbol,
            "asset_class": p.asset_class,
            "qty": num(p.qty),
            "avg_entry_price": num(p.avg_entry_price),
        }
    }


def restored_from_record(record: Json) -> Restored:
    """The inverse of :func:`restored_record`."""
    if "activity" in record:
        return _option_activity_from_record(record["activity"])
    if "order" in record:
        return replace(
            order_from_json(record["account"], record["order"], record["ns"]),
            triggered=bool(record.get("triggered")),
            placed_at_market_ns=record.get("market_ns", 0),
        )
    if "fill" in record:
        f = record["fill"]
        return FillActivity(
            id=f["id"],
            account=f["account"],
            order_id=f["order_id"],
            symbol=f["symbol"],
            side=f["side"],
            qty=Decimal(f["qty"]),
            price=Decimal(f["price"]),
            cum_qty=Decimal(f["cum_qty"]),
            leaves_qty=Decimal(f["leaves_qty"]),
            ts_ns=f["ns"],
            order_status=f["order_status"],
        )
    p = record["position"]
    qty, avg = Decimal(p["qty"]), Decimal(p["avg_entry_price"])
    return AccountPosition(p["account"], Position(p["symbol"], p["asset_class"], qty, avg))


def position_json(p: Position, last: Decimal | None, available: Decimal) -> Json:
    """Alpaca's position object (``qty`` negative for a short; ``available``:
    what open closing orders do not hold, ``PaperBook.qty_available``). Prices
    are per share; cost basis, market value and P&L are dollars, so an option
    contract's count 100 shares (``contract_multiplier``), as Alpaca's do."""
    current = last if last is not None else p.avg_entry_price
    multiplier = contract_multiplier(p.symbol)
    cost = p.qty * p.avg_entry_price * multiplier
    value = p.qty * current * multiplier
    return {
        "symbol": p.symbol,
        "asset_class": p.asset_class,
        "exchange": "PAPER",
        "qty": num(p.qty),
        "qty_available": num(available),
        "side": "long" if p.qty > 0 else "short",
        "avg_entry_price": num(p.avg_entry_price),
        "cost_basis": num(cost),
        "market_value": num(value),
        "current_price": num(current),
        "unrealized_pl": num(value - cost),
    }


def activity_json(f: FillActivity) -> Json:
    """An account activity of type FILL (``GET /v2/account/activities/FILL``)."""
    return {
        "id": f.id,
        "activity_type": "FILL",
        "transaction_time": iso(f.ts_ns),
        "type": f.type,
        "price": num(f.price),
        "qty": num(f.qty),
        "side": f.side,
        "symbol": f.symbol,
        "leaves_qty": num(f.leaves_qty),
        "order_id": f.order_id,
        "cum_qty": num(f.cum_qty),
        "order_status": f.order_status,
    }


def canceling_json(c: Canceling) -> Json:
    """One entry of ``DELETE /v2/orders``' 207: the canceled order (200), or,
    as Alpaca answers for an order it could not cancel, status 500; the body
    then says why, as a cancel of that order alone would (Alpaca documents
    no body for it)."""
    if c.refused is None:
        return {"id": c.order.id, "status": 200, "body": order_json(c.order)}
    return {
        "id": c.order.id,
        "status": CANCEL_ALL_REFUSED,
        "body": error_json(c.refused.code, c.refused.message),
    }


def closing_json(c: Closing) -> Json:
    """One entry of ``DELETE /v2/positions``' 207: the closing order, or the refusal."""
    if c.order is not None:
        return {"symbol": c.symbol, "status": 200, "body": order_json(c.order)}
    assert c.refused is not None
    return {
        "symbol": c.symbol,
        "status": c.refused.status,
        "body": error_json(c.refused.code, c.refused.message),
    }


def error_json(code: int, message: str) -> Json:
    return {"code": code, "message": message}


def _bad(message: str) -> Refused:
    return Refused(422, CODE_UNPROCESSABLE, message)


def _decimal(body: Json, name: str, *, required: bool = False) -> Decimal | None:
    value = body.get(name)
    if value is None:
        if required:
            raise _bad(f"{name} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise _bad(f"{name} must be a number or a decimal string")
    try:
        out = Decimal(value)
    except InvalidOperation as e:
        raise _bad(f"{name} is not a number: {value!r}") from e
    if not out.is_finite():
        raise _bad(f"{name} must be finite")
    return out


def _choice(body: Json, name: str, allowed: tuple[str, ...], default: str | None = None) -> str:
    value = body.get(name, default)
    if value is None:
        raise _bad(f"{name} is required")
    if value not in allowed:
        raise _bad(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return str(value)


def spec_from_json(body: Any) -> OrderSpec:
    """An order request's body (``POST /v2/orders``), checked; 422 when malformed."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    symbol = body.get("symbol")
    if not isinstance(symbol, str) or not symbol:
        raise _bad("symbol is required")
    if body.get("notional") is not None:
        raise _bad("notional orders are not supported by the paper broker; send qty")
    if body.get("order_class") not in (None, "", "simple"):
        raise _bad(f"order_class {body['order_class']!r} is not supported by the paper broker")
    cid = body.get("client_order_id")
    if cid is not None and not isinstance(cid, str):
        raise _bad("client_order_id must be a string")
    qty = _decimal(body, "qty", required=True)
    assert qty is not None
    return OrderSpec(
        symbol=symbol,
        side=_choice(body, "side", ("buy", "sell")),  # type: ignore[arg-type]
        qty=qty,
        order_type=_choice(body, "type", ORDER_TYPES, "market"),  # type: ignore[arg-type]
        time_in_force=_choice(body, "time_in_force", TIMES_IN_FORCE, "day"),  # type: ignore[arg-type]
        limit_price=_decimal(body, "limit_price"),
        stop_price=_decimal(body, "stop_price"),
        client_order_id=cid or None,
        asset_class="us_option" if asset_class_of(symbol) == "option" else "us_equity",
    )
