"""The one interface every broker adapter implements (paper now; Alpaca, Tradier next).

Shaped on what Alpaca and Tradier offer (``../shared/PROTOCOLS.md``):

====================  ===================================  ======================================
BrokerPort            Alpaca                               Tradier
====================  ===================================  ======================================
submit                POST /v2/orders (client_order_id)    POST /v1/accounts/{id}/orders (tag)
cancel                DELETE /v2/orders/{id}               DELETE /v1/accounts/{id}/orders/{id}
cancel_all            DELETE /v2/orders                    each open order's DELETE
get_order             GET /v2/orders/{id},                 GET /v1/accounts/{id}/orders/{id},
                      GET /v2/orders:by_client_order_id    the order list filtered by tag
open_orders           GET /v2/orders?status=open, paged    GET /v1/accounts/{id}/orders
                      (limit=500, direction=asc, after)
orders_created        GET /v2/orders?status=all, paged     GET /v1/accounts/{id}/orders, by
                      (after, until: submission times)     create_date
positions             GET /v2/positions                    GET /v1/accounts/{id}/positions
close_all             DELETE /v2/positions?cancel_orders=  a closing market order per position
                      true (207: an entry per position)
order_fills           account activities (FILL)            None: inferred from exec_quantity/avg
option_activities     account activities (OPEXP, OPEXC,    account history (option expiration,
                      OPASN, OPTRD), after, paged          exercise, assignment entries) [U]
events                trade_updates stream                 account events stream (order events)
connection state      WebSocket ping/pong                  heartbeat frames (~60 s)
====================  ===================================  ======================================

The contract (``tests/integration/test_broker_contract.py`` runs it against
every implementation):

- :meth:`BrokerPort.submit` is idempotent on the request's
  ``client_order_id``: submitting it again returns the existing order and
  never places a second one (an adapter whose venue answers "duplicate"
  fetches and returns the existing order).
- Calls raise :class:`~services.broker_gateway.errors.BrokerUnavailable` when
  the broker cannot be reached; they never hang past the adapter's request
  timeout.
- :meth:`BrokerPort.events` yields the account's order updates in the
  broker's order and :class:`ConnectionUpdate`\\ s: ``disconnected`` as soon as
  the connection is found dead (heartbeat timeout), ``reconnecting`` while
  retrying, ``connected`` once authenticated and listening again. After
  ``connected`` the caller reconciles (``get_order``, ``order_fills``,
  ``open_orders``): updates sent while disconnected are not replayed.
- Venue types never leave the adapter: everything crossing this interface is
  in :mod:`services.broker_gateway.domain.model`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Protocol

from services.broker_gateway.domain.model import (
    BrokerActivity,
    BrokerEvent,
    BrokerFill,
    BrokerOrder,
    BrokerPosition,
    CanceledAll,
    ClosedAll,
    OrderRequest,
)


class BrokerPort(Protocol):
    """One broker account."""

    @property
    def broker(self) -> str:
        """The venue's name (``paper``, ``alpaca``, ``tradier``)."""
        ...

    @property
    def connected(self) -> bool:
        """True while authenticated and receiving the account's events."""
        ...

    async def start(self) -> None:
        """Start connecting (and reconnecting, until :meth:`close`); returns at once."""
        ...

    async def close(self) -> None:
        """Disconnect for good; idempotent."""
        ...

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until connected; False if ``timeout`` passed first."""
        ...

    def events(self) -> AsyncIterator[BrokerEvent]:
        """Order updates and connection changes, in order; one consumer."""
        ...

    async def submit(self, order: OrderRequest) -> BrokerOrder:
        """Place an order, idempotently on ``order.client_order_id``.

        Raises ``OrderRefused`` when the broker says no.
        """
        ...

    async def cancel(
        self, *, client_order_id: str | None = None, broker_order_id: str | None = None
    ) -> None:
        """Ask to cancel one order (the ``canceled`` update confirms it).

        Raises ``OrderNotFound`` or ``NotCancelable``.
        """
        ...

    async def cancel_all(self) -> CanceledAll:
        """Ask to cancel every open order: the orders whose cancel the broker
        took, and those it refused to cancel (still working unless they have
        ended since); never raises for a refused order."""
        ...

    async def get_order(
        self, *, client_order_id: str | None = None, broker_order_id: str | None = None
    ) -> BrokerOrder | None:
        """One order by either id, or None if the broker does not know it."""
        ...

    async def open_orders(self) -> list[BrokerOrder]:
        """Every working order of the account."""
        ...

    async def orders_created(self, after_ns: int, until_ns: int) -> list[BrokerOrder]:
        """Every order of the account, working or ended, that the broker
        created after ``after_ns`` and before ``until_ns`` (its own clock),
        oldest first. How a flatten finds the closing orders of a close-all
        whose answer it never read (see ``AccountWorker._recover``)."""
        ...

    async def positions(self) -> list[BrokerPosition]:
        """Every open position of the account."""
        ...

    async def close_all(self) -> ClosedAll:
        """Cancel the open orders, then close every position with market orders.

        Returns the closing orders and the positions the broker refused to
        close (they are still open); never raises for a refused position.
        Each refusal keeps its place in the venue's answer (``entry``) and
        its symbol, None if the venue named none: never a placeholder, which
        would give every such refusal the same ``OrderRejected``.
        """
        ...

    async def order_fills(self, order: BrokerOrder) -> list[BrokerFill] | None:
        """The order's executions, oldest first, or None if the venue cannot list them."""
        ...

    async def option_activities(self, *, after: dt.date) -> list[BrokerActivity]:
        """The account's option positions settled at their contracts' expiry
        (expired, exercised, assigned, and the underlying's trades those
        made), dated after ``after``, oldest first: what the broker did to
        positions that no order did (see ``settlement.py``)."""
        ...
