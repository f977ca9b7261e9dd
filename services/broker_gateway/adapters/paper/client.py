"""The paper broker adapter: :class:`PaperBroker`, the ``BrokerPort`` over the
paper broker's WebSocket (:mod:`.connection`: the connection, its supervision,
the stream of trade updates and order entry as a ``request`` per call).

Here are the broker's calls, Alpaca's REST API carried by those requests, and
what their answers mean: a status mapped to our errors, a body read with
:mod:`.schemas` and turned into our model with :mod:`.parse`.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import math
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from pydantic import ValidationError

from services.broker_gateway import metrics
from services.broker_gateway.adapters.paper import parse, schemas
from services.broker_gateway.adapters.paper.connection import PaperConnection
from services.broker_gateway.domain.model import (
    BrokerActivity,
    BrokerFill,
    BrokerOrder,
    BrokerPosition,
    CanceledAll,
    CancelRefused,
    ClosedAll,
    CloseRefused,
    OrderRequest,
)
from services.broker_gateway.errors import (
    AnswerUnread,
    AuthenticationFailed,
    BrokerUnavailable,
    NotCancelable,
    OrderNotFound,
    OrderRefused,
    RateLimited,
)

log = logging.getLogger(__name__)

#: Alpaca's largest page of account activities (also its default).
ACTIVITY_PAGE_SIZE = 100
#: Alpaca's non-trade activity types of option events.
OPTION_ACTIVITY_TYPES = ("OPEXP", "OPEXC", "OPASN", "OPTRD")
#: The most pages of account activities one read takes (``order_fills``, ``option_activities``).
MAX_ACTIVITY_PAGES = 50
#: An activity of a page :meth:`PaperBroker._activity_pages` reads.
ActivityT = TypeVar("ActivityT", schemas.FillActivity, schemas.OptionActivity)
#: Alpaca's largest ``limit`` of ``GET /v2/orders`` (its default is 50).
ORDERS_PAGE_SIZE = 500


class PaperBroker(PaperConnection):
    """:class:`~services.broker_gateway.ports.BrokerPort` for the paper broker."""

    broker = "paper"

    # ------------------------------------------------------------- answers

    def _check(self, response: schemas.Response, call: str) -> Any:
        """The body of a successful answer; the matching error otherwise."""
        if 200 <= response.status < 300:
            return response.body
        message, code = _error_of(response.body, response.status)
        metrics.CALL_ERRORS.labels(
            account=self.account, call=call, error=str(response.status)
        ).inc()
        if response.status == 404:
            raise OrderNotFound(message)
        if response.status == 401:
            raise AuthenticationFailed(message)
        if response.status == 429:
            raise RateLimited(
                f"{self.account}: {call}: {message}", retry_after(response.headers, time.time())
            )
        if response.status >= 500:
            raise BrokerUnavailable(f"{self.account}: {call}: {message}")
        if call == "cancel" and response.status == 422:
            raise NotCancelable(message)
        raise OrderRefused(message, code)

    def _read(self, model: type[schemas._Wire], body: Any) -> Any:
        try:
            return model.model_validate(body)
        except ValidationError as e:
            metrics.MALFORMED.labels(account=self.account).inc()
            raise AnswerUnread(f"{self.account}: malformed answer: {e}") from e

    def _read_list(self, model: type[schemas._Wire], body: Any, what: str) -> list[Any]:
        """``body`` as a list of ``model``; else AnswerUnread saying what was expected."""
        if not isinstance(body, list):
            raise AnswerUnread(f"{self.account}: expected a list of {what}")
        return [self._read(model, item) for item in body]

    def _multi_status(
        self, body: Any
    ) -> tuple[list[BrokerOrder], list[tuple[int, schemas.MultiStatus]]]:
        """A 207 answer (cancel-all, close-all) split: the orders of its 2xx
        entries (one without an order body is left out), and its failed
        entries with their places in the answer (from 0)."""
        orders: list[BrokerOrder] = []
        failed: list[tuple[int, schemas.MultiStatus]] = []
        for place, entry in enumerate(self._read_list(schemas.MultiStatus, body, "statuses")):
            if not 200 <= entry.status < 300:
                failed.append((place, entry))
            elif isinstance(entry.body, dict):
                orders.append(parse.order(self._read(schemas.Order, entry.body)))
        return orders, failed

    # ------------------------------------------------------------ BrokerPort

    async def submit(self, order: OrderRequest) -> BrokerOrder:
        body = parse.order_request(order).model_dump(exclude_none=True)
        response = await self._call("submit", "POST", "/v2/orders", body)
        if _duplicate(response):
            return await self._existing(order)
        return parse.order(self._read(schemas.Order, self._check(response, "submit")))

    async def _existing(self, request: OrderRequest) -> BrokerOrder:
        """The order the broker holds under ``request``'s client order id.

        Alpaca answers a client order id it has seen with 422 (40010001,
        "client_order_id must be unique"), not with the order. For us that id
        is the submit's idempotency key: the order is there because an earlier
        attempt of this same submit landed (its answer lost to a timeout or a
        dropped connection, or the gateway restarted before recording it). It
        is read back and returned as a fresh answer would have been: taken as
        a refusal, the gateway would record it rejected while it lives and
        fills at the broker.
        """
        cid = request.client_order_id
        found = await self.get_order(client_order_id=cid)
        if found is None:
            # "Exists", yet not found: the venue has not caught up with itself.
            raise BrokerUnavailable(
                f"{self.account}: client order id {cid} is taken, but no order has it yet"
            )
        asked = (request.symbol, request.side, request.quantity, request.order_type)
        held = (found.symbol, found.side, found.quantity, found.order_type)
        if held != asked:
            raise OrderRefused(
                f"client_order_id {cid} is already used by a different order",
                str(schemas.CODE_DUPLICATE_CLIENT_ORDER_ID),
            )
        log.info("broker %s has order %s already; taking it", self.account, cid)
        return found

    async def cancel(
        self, *, client_order_id: str | None = None, broker_order_id: str | None = None
    ) -> None:
        if broker_order_id is None:
            if client_order_id is None:
                raise ValueError("cancel needs an order id")
            found = await self.get_order(client_order_id=client_order_id)
            if found is None:
                raise OrderNotFound(f"no order with client order id {client_order_id}")
            broker_order_id = found.broker_order_id
        response = await self._call("cancel", "DELETE", f"/v2/orders/{quote(broker_order_id)}")
        self._check(response, "cancel")

    async def cancel_all(self) -> CanceledAll:
        response = await self._call("cancel_all", "DELETE", "/v2/orders")
        body = self._check(response, "cancel_all")
        canceled, failed = self._multi_status(body)
        refused = []
        for place, entry in failed:
            log.warning("broker %s: %s failed with %s", self.account, body[place], entry.status)
            message, code = _error_of(entry.body, entry.status)
            refused.append(CancelRefused(entry.id or None, message, code, entry=place))
        return CanceledAll(tuple(canceled), tuple(refused))

    async def get_order(
        self, *, client_order_id: str | None = None, broker_order_id: str | None = None
    ) -> BrokerOrder | None:
        if broker_order_id is not None:
            path = f"/v2/orders/{quote(broker_order_id)}"
        elif client_order_id is not None:
            path = f"/v2/orders:by_client_order_id?client_order_id={quote(client_order_id)}"
        else:
            raise ValueError("get_order needs an order id")
        response = await self._call("get_order", "GET", path)
        try:
            body = self._check(response, "get_order")
        except OrderNotFound:
            return None
        return parse.order(self._read(schemas.Order, body))

    async def open_orders(self) -> list[BrokerOrder]:
        """Every working order, oldest first (see :meth:`_listed`)."""
        return await self._listed("open_orders", {"status": "open"})

    async def orders_created(self, after_ns: int, until_ns: int) -> list[BrokerOrder]:
        """Every order, working or ended, created after ``after_ns`` and before
        ``until_ns``, oldest first: ``GET /v2/orders?status=all`` with Alpaca's
        ``after`` and ``until`` (submission times, both exclusive)."""
        query = {"status": "all", "until": _iso(until_ns)}
        return [
            o
            for o in await self._listed("orders_created", query, after_ns=after_ns)
            if after_ns < o.created_ns < until_ns or not o.created_ns
        ]

    async def _listed(
        self, call: str, query: dict[str, str], *, after_ns: int | None = None
    ) -> list[BrokerOrder]:
        """The orders ``GET /v2/orders`` lists for ``query``, oldest first.

        Alpaca answers at most ``limit`` orders (50 unless asked, 500 at most),
        newest first: one call would miss the oldest orders of a busy
        account. So they are asked oldest first, 500 at a time, each page
        after the last one's submission time, until a page comes back short.
        ``after`` is exclusive, so each page starts a microsecond before that
        time and orders already seen are dropped: orders of the same instant
        on both sides of a page's end are all kept.
        """
        query = query | {"limit": str(ORDERS_PAGE_SIZE), "direction": "asc"}
        if after_ns is not None:
            query["after"] = _iso(after_ns)
        seen: dict[str, BrokerOrder] = {}
        while True:
            path = f"/v2/orders?{urlencode(query)}"
            response = await self._call(call, "GET", path)
            body = self._check(response, call)
            page = self._read_list(schemas.Order, body, "orders")
            fresh = [o for o in page if o.id not in seen]
            seen.update((o.id, parse.order(o)) for o in fresh)
            if len(page) < ORDERS_PAGE_SIZE:
                break
            last = parse.ns(page[-1].submitted_at or page[-1].created_at)
            if not fresh or not last:
                log.warning(
                    "broker %s: cannot page past %d orders (no new ones, or no time)",
                    self.account,
                    len(seen),
                )
                break
            query["after"] = _iso(last - 1000)
        return list(seen.values())

    async def positions(self) -> list[BrokerPosition]:
        response = await self._call("positions", "GET", "/v2/positions")
        body = self._check(response, "positions")
        return [parse.position(p) for p in self._read_list(schemas.Position, body, "positions")]

    async def close_all(self) -> ClosedAll:
        # cancel_orders=true: else Alpaca refuses (403) each position whose
        # shares open orders hold, and an order placed since our cancel-all
        # would keep its position open.
        response = await self._call("close_all", "DELETE", "/v2/positions?cancel_orders=true")
        orders, failed = self._multi_status(self._check(response, "close_all"))
        refused = []
        for place, entry in failed:
            message, code = _error_of(entry.body, entry.status)
            # Its place tells apart refusals that name no symbol.
            refused.append(CloseRefused(entry.symbol or None, message, code, entry=place))
        return ClosedAll(tuple(orders), tuple(refused))

    async def order_fills(self, order: BrokerOrder) -> list[BrokerFill] | None:
        """The order's fills, from the account's fill activities.

        Alpaca's activity list cannot be filtered by order (``date``,
        ``after``, ``until``, ``direction``, ``page_size``, ``page_token``
        only; newest first by default): the account's fills since the order
        was created are read oldest first, a page at a time, and those whose
        ``order_id`` is this order's are kept, until they add up to what the
        order reports filled or the list ends. Past ``MAX_ACTIVITY_PAGES``
        pages it stops with what it has; the tracker infers the rest from the
        order's cumulative quantity and average price.
        """
        query: dict[str, str] = {"page_size": str(ACTIVITY_PAGE_SIZE)}
        if order.created_ns:
            # A second early: a fill in the same instant as the order counts.
            query |= {"direction": "asc", "after": _iso(order.created_ns - 1_000_000_000)}
        else:
            query["direction"] = "desc"
        fills: list[BrokerFill] = []

        def take(page: list[schemas.FillActivity]) -> bool:
            # The account's activities: only this order's are its fills.
            fills.extend(parse.fill(a, order) for a in page if a.order_id == order.broker_order_id)
            found = max((f.cumulative_quantity for f in fills), default=Decimal(0))
            return found >= order.filled_quantity

        path = "/v2/account/activities/FILL"
        if not await self._activity_pages("order_fills", path, query, schemas.FillActivity, take):
            log.warning(
                "broker %s: fills of order %s not all found in %d pages of activities",
                self.account,
                order.client_order_id,
                MAX_ACTIVITY_PAGES,
            )
        return sorted(fills, key=lambda f: f.cumulative_quantity)

    async def option_activities(self, *, after: dt.date) -> list[BrokerActivity]:
        """The account's non-trade activities of option events (``OPEXP``,
        ``OPEXC``, ``OPASN``, ``OPTRD``) after ``after`` (exclusive), oldest
        first: ``GET /v2/account/activities?activity_types=...&after=...
        &direction=asc&page_size=100``, then ``page_token`` = the last
        activity's ``id`` until a page comes back short (at most
        ``MAX_ACTIVITY_PAGES`` pages: then what was read, said)."""
        query = {
            "activity_types": ",".join(OPTION_ACTIVITY_TYPES),
            "after": after.isoformat(),
            "direction": "asc",
            "page_size": str(ACTIVITY_PAGE_SIZE),
        }
        out: list[BrokerActivity] = []

        def take(page: list[schemas.OptionActivity]) -> bool:
            out.extend(
                parse.option_activity(a) for a in page if a.activity_type in OPTION_ACTIVITY_TYPES
            )
            return False  # to the list's end

        path = "/v2/account/activities"
        if not await self._activity_pages(
            "option_activities", path, query, schemas.OptionActivity, take
        ):
            log.warning(
                "broker %s: option activities after %s read in %d pages, more may follow",
                self.account,
                after,
                MAX_ACTIVITY_PAGES,
            )
        return out

    async def _activity_pages(
        self,
        call: str,
        path: str,
        query: dict[str, str],
        model: type[ActivityT],
        take: Callable[[list[ActivityT]], bool],
    ) -> bool:
        """Read the account activities ``GET path?query`` lists, a page at a
        time, each page to ``take``, until ``take`` says it has enough (True)
        or a page comes back short of ``ACTIVITY_PAGE_SIZE`` (``query`` asks
        for that ``page_size`` and its ``direction``). Alpaca pages
        activities by ``page_token``: the ``id`` of the last activity of the
        page before. False: ``MAX_ACTIVITY_PAGES`` full pages were read, and
        more may follow."""
        query = dict(query)
        for _ in range(MAX_ACTIVITY_PAGES):
            response = await self._call(call, "GET", f"{path}?{urlencode(query)}")
            page = self._read_list(model, self._check(response, call), "activities")
            if take(page) or len(page) < ACTIVITY_PAGE_SIZE:
                return True
            query["page_token"] = page[-1].id
        return False


def retry_after(headers: dict[str, Any], now: float) -> float | None:
    """The seconds a ``Retry-After`` header asks for (delay or HTTP date), if any."""
    raw = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if raw is None:
        return None
    value = str(raw).strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(when.timestamp() - now, 0.0)


def _iso(ns: int) -> str:
    """RFC 3339 UTC, to the microsecond, for a query."""
    t = dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC)
    return t.replace(microsecond=ns % 1_000_000_000 // 1000).isoformat().replace("+00:00", "Z")


def _error_of(body: Any, status: int) -> tuple[str, str]:
    """An error answer's message and code (Alpaca's body; the HTTP status if none)."""
    try:
        error = schemas.ErrorBody.model_validate(body if isinstance(body, dict) else {})
    except ValidationError:
        error = schemas.ErrorBody()
    message = error.message or f"HTTP {status}"
    return message, str(error.code) if error.code is not None else str(status)


def _duplicate(response: schemas.Response) -> bool:
    """Alpaca's "client_order_id must be unique" answer."""
    body = response.body
    return (
        response.status == 422
        and isinstance(body, dict)
        and str(body.get("code")) == str(schemas.CODE_DUPLICATE_CLIENT_ORDER_ID)
    )
