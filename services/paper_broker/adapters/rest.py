"""The paper broker's order-entry API: Alpaca's REST endpoints over the books.

The WebSocket server (``server.py``) hands each authenticated, unthrottled
``request`` message to :meth:`OrderEntry.route`, which answers it with an
HTTP status and a body (or raises ``Refused``, which the server answers
with its status and code). Trade updates a request causes (a submit, a
cancel, a close) are published through the server, journaled and queued to
the account's listeners before the server queues the answer.

``GET /v2/orders`` and ``GET /v2/account/activities`` list as Alpaca's do:
a time window, a direction, pages (the functions below the class).
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from libs.contract.sessions import new_york_time
from services.paper_broker import metrics
from services.paper_broker.adapters import wire
from services.paper_broker.domain.book import (
    CODE_DUPLICATE_CLIENT_ORDER_ID,
    CODE_NOT_FOUND,
    CODE_UNPROCESSABLE,
    FillActivity,
    PaperBook,
    PaperOrder,
    Refused,
    TradeUpdate,
)
from services.paper_broker.domain.settlement import OPTION_ACTIVITY_TYPES, OptionActivity

#: Journals trade updates and queues them to their account's listeners;
#: returns each one's wire JSON (``PaperBrokerServer._publish``).
Publish = Callable[[Sequence[TradeUpdate]], list[wire.Json]]


class OrderEntry:
    """Routes one order-entry request of an account to its endpoint."""

    def __init__(self, book: PaperBook, publish: Publish) -> None:
        self.book = book
        self._publish = publish

    def route(
        self,
        account: str,
        method: str,
        path: str,
        query: dict[str, list[str]],
        data: dict[str, Any],
    ) -> tuple[int, Any]:
        book = self.book
        one = {k: v[-1] for k, v in query.items() if v}
        if path == "/v2/orders":
            if method == "POST":
                return self._submit(account, data.get("body"))
            if method == "GET":
                status = one.get("status", "open")
                if status not in ("open", "closed", "all"):
                    raise Refused(422, CODE_UNPROCESSABLE, "status must be open, closed or all")
                orders = book.orders(account, status)  # type: ignore[arg-type]
                return 200, [wire.order_json(o) for o in _order_page(orders, one)]
            if method == "DELETE":
                entries, updates = book.cancel_all(account)
                self._publish(updates)
                return 207, [wire.canceling_json(e) for e in entries]
        elif path == "/v2/orders:by_client_order_id" and method == "GET":
            order = book.by_client_order_id(account, one.get("client_order_id", ""))
            if order is None:
                raise Refused(404, CODE_NOT_FOUND, "order not found")
            return 200, wire.order_json(order)
        elif path.startswith("/v2/orders/"):
            order_id = path.removeprefix("/v2/orders/")
            if method == "GET":
                order = book.order(account, order_id)
                if order is None:
                    raise Refused(404, CODE_NOT_FOUND, "order not found")
                return 200, wire.order_json(order)
            if method == "DELETE":
                self._publish(book.cancel(account, order_id))
                return 204, None
        elif path == "/v2/positions":
            if method == "GET":
                return 200, [
                    wire.position_json(p, book.last_price(p.symbol), book.qty_available(account, p))
                    for p in book.positions(account)
                ]
            if method == "DELETE":
                cancel_orders = one.get("cancel_orders", "false").lower() == "true"
                closings, updates = book.close_all(account, cancel_orders=cancel_orders)
                self._publish(updates)
                return 207, [wire.closing_json(c) for c in closings]
        elif path.startswith("/v2/account/activities") and method == "GET":
            return 200, self._activities(account, path, one)
        elif path == "/v2/account" and method == "GET":
            return 200, {"id": account, "account_number": account, "status": "ACTIVE"}
        raise Refused(404, CODE_NOT_FOUND, f"no endpoint {method} {path}")

    def _activities(self, account: str, path: str, query: dict[str, str]) -> list[wire.Json]:
        """``GET /v2/account/activities[/{activity_type}]``: the account's
        fills (``FILL``) and option events' non-trade activities (``OPEXP``,
        ``OPEXC``, ``OPASN``, ``OPTRD``), one type by the path or several
        by ``activity_types`` (comma-separated; all when absent)."""
        if path == "/v2/account/activities":
            asked = query.get("activity_types")
            types = set(asked.split(",")) if asked else {"FILL", *OPTION_ACTIVITY_TYPES}
        elif path.startswith("/v2/account/activities/"):
            types = {path.removeprefix("/v2/account/activities/")}
        else:
            raise Refused(404, CODE_NOT_FOUND, f"no endpoint GET {path}")
        known = {"FILL", *OPTION_ACTIVITY_TYPES}
        if types - known:
            # Alpaca has more types (dividends, fees, ...); the paper broker makes none of them.
            types &= known
        fills = self.book.fills(account) if "FILL" in types else ()
        options = [a for a in self.book.activities(account) if a.activity_type in types]
        if not options:
            return [wire.activity_json(f) for f in _activities(fills, query)]
        merged: list[FillActivity | OptionActivity] = sorted(
            [*fills, *options], key=lambda a: a.ts_ns
        )
        return [
            wire.activity_json(a) if isinstance(a, FillActivity) else wire.option_activity_json(a)
            for a in _activities(merged, query)
        ]

    def _submit(self, account: str, body: Any) -> tuple[int, Any]:
        try:
            spec = wire.spec_from_json(body)
            order, updates = self.book.submit(account, spec)
        except Refused as e:
            duplicate = e.code == CODE_DUPLICATE_CLIENT_ORDER_ID
            outcome = "duplicate" if duplicate else "refused"
            metrics.ORDERS.labels(account=account, outcome=outcome).inc()
            raise
        metrics.ORDERS.labels(account=account, outcome="accepted").inc()
        data = self._publish(updates)
        if updates and updates[-1].order == order:
            return 200, data[-1]["order"]  # the order as its last update showed it
        return 200, wire.order_json(order)


#: Alpaca's default and largest page of account activities.
ACTIVITIES_PAGE_SIZE = 100
#: Alpaca's default and largest number of orders in one ``GET /v2/orders``.
ORDERS_LIMIT_DEFAULT = 50
ORDERS_LIMIT_MAX = 500


def _instant(query: dict[str, str], name: str) -> int | None:
    try:
        return wire.parse_iso(query.get(name))
    except ValueError:
        raise Refused(422, CODE_UNPROCESSABLE, f"{name} is not an RFC 3339 time") from None


def _direction(query: dict[str, str]) -> str:
    direction = query.get("direction", "desc")
    if direction not in ("asc", "desc"):
        raise Refused(422, CODE_UNPROCESSABLE, "direction must be asc or desc")
    return direction


T = TypeVar("T")


def _window(items: Sequence[T], when: Callable[[T], int], query: dict[str, str]) -> list[T]:
    """``items`` (oldest first) strictly between ``after`` and ``until``
    (RFC 3339), newest first unless ``direction=asc``: Alpaca's listing rules."""
    after, until = _instant(query, "after"), _instant(query, "until")
    picked = [
        i
        for i in items
        if (after is None or when(i) > after) and (until is None or when(i) < until)
    ]
    if _direction(query) == "desc":
        picked.reverse()
    return picked


def _count(query: dict[str, str], name: str, default: int, most: int) -> int:
    """A page size ``name`` from 1 to ``most`` (``default`` when not asked)."""
    try:
        n = int(query.get(name, default))
    except ValueError:
        n = 0
    if not 1 <= n <= most:
        raise Refused(422, CODE_UNPROCESSABLE, f"{name} must be 1 to {most}")
    return n


def _order_page(orders: list[PaperOrder], query: dict[str, str]) -> list[PaperOrder]:
    """The orders ``GET /v2/orders`` answers with, as Alpaca's: by submission
    time, newest first unless ``direction=asc``, only those submitted
    ``after`` / ``until`` (exclusive), at most ``limit`` (50 unless asked, 500
    at most)."""
    picked = _window(orders, lambda o: o.created_at_ns, query)
    return picked[: _count(query, "limit", ORDERS_LIMIT_DEFAULT, ORDERS_LIMIT_MAX)]


A = TypeVar("A", FillActivity, OptionActivity, FillActivity | OptionActivity)


def _activities(activities: Sequence[A], query: dict[str, str]) -> list[A]:
    """One page of activities, as Alpaca's ``GET /v2/account/activities``.

    ``after`` / ``until`` (RFC 3339 or a YYYY-MM-DD date, exclusive) bound
    the time, ``date`` (YYYY-MM-DD) keeps one day's (New York; a non-trade
    activity's ``date``), ``direction`` is ``desc`` (newest first, the
    default) or ``asc``, ``page_size`` at most 100 (the default; with
    ``date``, every one of the day unless asked, and no most), ``page_token`` the id of
    the last activity of the page before. There is no filter by order: a
    client keeps what is its own.
    """
    picked = _window(activities, lambda a: a.ts_ns, query)
    day = query.get("date")
    if day is not None:
        try:
            wanted = dt.date.fromisoformat(day[:10])
        except ValueError:
            raise Refused(422, CODE_UNPROCESSABLE, "date is not a YYYY-MM-DD date") from None
        picked = [a for a in picked if _activity_date(a) == wanted]
    token = query.get("page_token")
    if token:
        at = next((i for i, a in enumerate(picked) if a.id == token), None)
        if at is None:
            raise Refused(422, CODE_UNPROCESSABLE, f"page_token {token} is not in the list")
        picked = picked[at + 1 :]
    if day is not None:
        # As at Alpaca: with a date, the whole day unless asked, and no most.
        if "page_size" not in query:
            return picked
        return picked[: _count(query, "page_size", ACTIVITIES_PAGE_SIZE, sys.maxsize)]
    return picked[: _count(query, "page_size", ACTIVITIES_PAGE_SIZE, ACTIVITIES_PAGE_SIZE)]


def _activity_date(a: FillActivity | OptionActivity) -> dt.date:
    """The New York day an activity is of (``date``'s filter): a non-trade
    activity's own ``date``, a fill's by its time. In whole seconds: as a
    float, a time a nanosecond before midnight was rounded up to the next day."""
    if isinstance(a, OptionActivity):
        return a.date
    return new_york_time(a.ts_ns).date()
