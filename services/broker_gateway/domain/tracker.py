"""The order tracker: broker facts in, our events out, each exactly once.

One tracker per account. It knows every order of the account — the command
that caused it, what the broker acknowledged, how much has been filled — and
the account's positions per strategy and symbol. It is rebuilt on start-up
by :meth:`OrderTracker.evolve`-ing the recorded order-path events, and every
event it emits goes through :meth:`OrderTracker.evolve` as well, so live and
rebuilt trackers are the same.

Exactly once. Every event's id derives from broker facts, never from time
or chance:

- ``OrderAccepted`` / ``OrderRejected`` / ``OrderCanceled``: (account, order id);
- ``FillReceived``: (account, order id, cumulative quantity after the fill);
- ``ClosingOrdersPlaced``: (account, flatten id).

A fill is new only if it takes the order's cumulative quantity past what has
been published (the *watermark*); the same fill seen again — from the stream
and from a reconciliation query, before and after a reconnect or a restart —
is dropped here, and if it were published again JetStream would drop it by
its id; seen again with part of it published (a closing fill whose split
over the strategies a restart cut), only the rest is. A fill whose
cumulative quantity jumps past the watermark by more than its own size
means fills were missed: the tracker publishes nothing for
it and marks the order for reconciliation, which queries the broker and
publishes the missing fills in order (:meth:`OrderTracker.reconcile`).

A reconciliation's answer may be older than what the stream has brought
since it was asked for (the gateway reads the stream while it reconciles).
Such a stale answer is harmless: the watermark only rises, so fills it shows
at or below it are dropped; an order already acknowledged or ended is not
acknowledged or ended again; and it clears an order's mark only if it shows
at least what the stream showed when it set it (as much filled, ended if the
stream said ended) — else the missed fills would wait for the next
reconnection.

Causation. An order's events name the command that caused it: the
``SubmitOrder`` (so a fill's correlation id is the signal's), or for an
``OrderCanceled`` the ``CancelOrder`` when there was one. A flatten's closing
orders (made by the broker's close-all) are caused by the ``FlattenAccount``;
each of their fills is booked to the strategies whose positions it closes
(in strategy name order, each up to its position; the rest to nobody), as one
``FillReceived`` per strategy with ``strategy`` set, so positions per
strategy stay right. Orders nobody here placed are roots (no cause).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

from libs.contract.codec import derived_id
from libs.contract.envelope import Event
from libs.contract.events import (
    CancelOrder,
    FlattenAccount,
    OrderCanceled,
    OrderCanceledPayload,
    PositionDifference,
    SubmitOrder,
)
from services.broker_gateway.domain.closing import Closing
from services.broker_gateway.domain.model import (
    BrokerFill,
    BrokerOrder,
    BrokerPosition,
    OrderRequest,
    OrderUpdate,
)
from services.broker_gateway.domain.tracked import (
    WIDE,
    ZERO,
    TrackedOrder,
    TrackerState,
    canon,
    end_reason,
    take_in_order,
)

__all__ = [
    "PRICE_QUANTUM",
    "ZERO",
    "Closing",
    "OrderTracker",
    "TrackedOrder",
    "TrackerState",
    "canon",
    "position_differences",
    "take_in_order",
]

#: Decimal places of a price the tracker computes (the contract allows 12).
PRICE_QUANTUM = Decimal("1e-12")


def _plain(value: Decimal) -> Decimal:
    """``value`` without trailing zeros after its point (``190.000000000000``
    -> ``190``, ``100.50`` -> ``100.5``): the same number exactly, whatever
    its digits (no context rounds it), and never in exponent form, as
    ``normalize()`` writes ``190`` (``1.9E+2``)."""
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        return value  # not finite: nothing to trim
    while exponent < 0 and len(digits) > 1 and digits[-1] == 0:
        digits, exponent = digits[:-1], exponent + 1
    return Decimal((sign, digits, exponent))


def _no_older(answer: BrokerOrder, seen: BrokerOrder) -> bool:
    """The broker's ``answer`` shows at least what the stream showed (``seen``).

    Fills only add up and an order that ended stays ended, so an answer with
    less filled, or still working where the stream said it ended, was read
    before the stream's update.
    """
    return answer.filled_quantity >= seen.filled_quantity and (seen.is_open or not answer.is_open)


class OrderTracker(Closing):
    """One account's orders and positions; turns broker facts into events.

    Its state, the recorded events taken in and the events it makes are
    :class:`TrackerState`'s (``tracked.py``), the flattens
    :class:`Closing`'s (``closing.py``); here, the commands and the broker's
    facts (the stream, a reconciliation's answers)."""

    # ----------------------------------------------------------- commands

    def plan_submit(self, command: SubmitOrder) -> bool:
        """Take the command in; True if the broker still has to be asked.

        False when the broker has it already (or it is done), and also when a
        cancel or a flatten came first — a redelivery after a crash can bring
        a command back after its own cancel: see :meth:`withdrawn`.
        """
        self.evolve(command)
        t = self.orders[command.payload.order_id]
        return t.terminal is None and not t.accepted and t.cancel_cause is None

    def cancel_pending(self, order_id: uuid.UUID) -> bool:
        """A cancel or flatten asked for this order before the broker acknowledged it."""
        t = self.orders.get(order_id)
        return (
            t is not None and t.terminal is None and not t.accepted and t.cancel_cause is not None
        )

    def called_off(self, order_id: uuid.UUID, command: CancelOrder | FlattenAccount) -> None:
        """``command``, queued behind the order's submit, cancels it before it is
        sent (the order only: a flatten is taken in when it runs)."""
        t = self.orders.get(order_id)
        if t is not None and t.cancel_cause is None:
            t.cancel_cause = command

    def withdrawn(self, order_id: uuid.UUID) -> list[Event]:
        """The order is canceled without ever being sent (the broker does not have it)."""
        t = self.orders[order_id]
        out: list[Event] = []
        if t.terminal is None:
            self._emit(
                out,
                OrderCanceled.create(
                    OrderCanceledPayload(
                        order_id=t.order_id,
                        account=self.account,
                        reason="canceled before it reached the broker",
                    ),
                    source=self.source,
                    clock=self.clock,
                    cause=t.cancel_cause or t.cause,
                    event_id=derived_id("broker.cancel", self.account, t.order_id),
                ),
            )
        return out

    def request(self, order_id: uuid.UUID) -> OrderRequest:
        """The broker request for a submitted order (client order id = order id)."""
        t = self.orders[order_id]
        assert isinstance(t.cause, SubmitOrder)
        p = t.cause.payload
        t.submitted = True
        return OrderRequest(
            client_order_id=str(p.order_id),
            symbol=p.symbol,
            side=p.side,
            quantity=p.quantity,
            order_type=p.order_type,
            limit_price=p.limit_price,
            stop_price=p.stop_price,
            time_in_force=p.time_in_force,
            asset_class=p.asset_class,
        )

    def submitted(self, order_id: uuid.UUID, order: BrokerOrder) -> list[Event]:
        """The broker answered a submit with ``order``: it is acknowledged.

        Only the acknowledgement (or a rejection) is taken from the answer:
        fills and cancels come from the stream, in order, with their own
        prices, or from a reconciliation if the stream lost them.
        """
        t = self.orders[order_id]
        self._index_broker(t, order.broker_order_id)
        out: list[Event] = []
        if order.status == "rejected":
            self._reject(t, "rejected by the broker", None, order.updated_ns or None, out)
        elif order.status != "pending":
            self._ack(t, order, order.updated_ns, out)
        return out

    def refused(self, order_id: uuid.UUID, reason: str, code: str | None) -> list[Event]:
        """The broker (or the gateway on its behalf) refused the order."""
        out: list[Event] = []
        self._reject(self.orders[order_id], reason, code, None, out)
        return out

    # ------------------------------------------------------- broker facts

    def on_update(self, update: OrderUpdate) -> list[Event]:
        """One event of the broker's stream."""
        order = update.order
        t = self.find(order) or self._external(order)
        self._index_broker(t, order.broker_order_id)
        # The broker knows it again (as a reconciliation's answer says): it
        # may still fill, so its contract's settlement waits for it again.
        self.forgotten.discard(t.order_id)
        out: list[Event] = []
        if update.kind == "rejected":
            self._ends_short(t, order, "rejected", out)
            self._reject(t, update.reason or "rejected by the broker", None, update.ts_ns, out)
            return out
        self._ack(t, order, update.ts_ns, out)
        if update.kind == "fill" and update.fill is not None:
            fill = update.fill
            if fill.cumulative_quantity > t.filled:
                before = fill.cumulative_quantity - fill.quantity
                if before > t.filled:
                    # Fills between the watermark and this one were missed.
                    self._mark(t, order)
                    return out
                fid = (
                    fill.execution_id
                    or f"{order.broker_order_id}:{canon(fill.cumulative_quantity)}"
                )
                if before == t.filled:
                    self._fill(t, order, fill.quantity, fill.price, fid, fill.ts_ns, out)
                else:
                    # Part of it is published: a closing fill whose split over
                    # the strategies a restart cut, brought again. The rest
                    # only, split on from where it stopped (the event ids of
                    # the uncut run, as a reconciliation's); the whole again
                    # sold it twice.
                    rest = fill.cumulative_quantity - t.filled
                    self._fill(t, order, rest, fill.price, fid, fill.ts_ns, out, resumed=True)
        elif update.kind in ("canceled", "expired"):
            if order.filled_quantity > t.filled:
                self._mark(t, order)
                return out  # the fills first; the reconciliation cancels it too
            self._ends_short(t, order, update.kind, out)
            self._cancel(t, order, update.ts_ns, end_reason(update.kind, update.reason), out)
        return out

    def _mark(self, t: TrackedOrder, order: BrokerOrder) -> None:
        """The stream showed ``order`` ahead of what was published: reconcile it."""
        seen = self.needs_reconcile.get(t.order_id)
        if seen is None or _no_older(order, seen):
            self.needs_reconcile[t.order_id] = order

    def fetch_later(self, order: BrokerOrder) -> None:
        """A fetch of what ``order`` (a submit's answer) shows was given up:
        mark it, as a gap in the stream is, for the next reconciliation."""
        t = self.find(order)
        if t is not None:
            self._mark(t, order)

    def unknown_at_broker(self, order_id: uuid.UUID) -> None:
        """The broker answered it does not know ``order_id`` (404): no answer
        will ever clear its gap mark, so the mark goes. Kept, every later
        stream update asked the broker for it again (and said so again).

        An order it never acknowledged was not sent (its command not yet
        delivered, or never): reconciliations stop asking for it. Its submit
        sets the flag again; one under way meanwhile is settled by its own
        answer (which names the broker's order id) or its retries.

        One it acknowledged stays unsettled (nothing says how it ended) and
        goes in :attr:`forgotten`: in an option contract past its expiry it
        no longer holds the contract's settlement back (domain/settlement.py), as
        the broker ended every order in it at the close. It leaves it when the
        broker shows the order again (a reconciliation's answer or a stream
        update). Only in memory: nothing published records a 404, so after a
        restart it is empty until the first reconciliation's 404 again (which
        has the settlements read again at once: reconciliation.py).
        """
        self.needs_reconcile.pop(order_id, None)
        t = self.orders.get(order_id)
        if t is None:
            return
        if t.broker_order_id is None and not t.accepted:
            t.submitted = False
        else:
            self.forgotten.add(order_id)

    def reconcile(self, order: BrokerOrder, fills: Sequence[BrokerFill] | None) -> list[Event]:
        """Bring the order up to what the broker says: ack, missed fills, final state.

        ``fills`` are the order's executions if the venue lists them; without
        them (or past them) a fill is inferred from the cumulative quantity
        and average price the broker reports. ``order`` may be older than
        what the stream has brought since: nothing published is undone or
        repeated, and the order stays marked unless ``order`` shows at least
        what the stream showed (see the module docstring).
        """
        t = self.find(order) or self._external(order)
        self._index_broker(t, order.broker_order_id)
        self.forgotten.discard(t.order_id)  # it knows it again
        seen = self.needs_reconcile.get(t.order_id)
        if seen is not None and _no_older(order, seen):
            del self.needs_reconcile[t.order_id]
        out: list[Event] = []
        if order.status == "rejected":
            self._ends_short(t, order, "rejected", out)
            self._reject(t, "rejected by the broker", None, order.updated_ns or None, out)
            return out
        if order.status == "pending":
            return out
        self._ack(t, order, order.updated_ns, out)
        for f in sorted(fills or (), key=lambda f: f.cumulative_quantity):
            if f.cumulative_quantity <= t.filled:
                continue
            if f.cumulative_quantity - f.quantity != t.filled:
                break  # the list has a hole: infer the rest below
            fid = f.execution_id or f"{order.broker_order_id}:{canon(f.cumulative_quantity)}"
            self._fill(t, order, f.quantity, f.price, fid, f.ts_ns, out)
        missing = order.filled_quantity - t.filled
        if missing > 0 and order.filled_avg_price is not None:
            with localcontext(WIDE):  # exact, whatever the price's size (see WIDE)
                total = order.filled_avg_price * order.filled_quantity
                price = ((total - t.notional) / missing).quantize(PRICE_QUANTUM, ROUND_HALF_EVEN)
            if price <= 0:
                price = order.filled_avg_price
            # Computed to 12 places: a fill at 190 is 190, not 190.000000000000.
            price = _plain(price)
            fid = f"reconciled:{order.broker_order_id}:{canon(order.filled_quantity)}"
            self._fill(t, order, missing, price, fid, order.updated_ns, out)
        if order.status in ("canceled", "expired"):
            self._ends_short(t, order, order.status, out)
            self._cancel(t, order, order.updated_ns, end_reason(order.status, ""), out)
        return out


def position_differences(
    recorded: Mapping[str, Decimal], broker: Iterable[BrokerPosition]
) -> tuple[PositionDifference, ...]:
    """The symbols whose net position at the broker is not what the recorded
    fills make it (``recorded``: :meth:`OrderTracker.net_positions`), by
    symbol. A position the broker lists flat counts as none; one it lists
    twice (a venue that splits long and short) is summed."""
    held: dict[str, Decimal] = {}
    for p in broker:
        held[p.symbol] = held.get(p.symbol, ZERO) + p.quantity
    return tuple(
        PositionDifference(
            symbol=symbol,
            broker_quantity=held.get(symbol, ZERO),
            recorded_quantity=recorded.get(symbol, ZERO),
        )
        for symbol in sorted(set(held) | set(recorded))
        if held.get(symbol, ZERO) != recorded.get(symbol, ZERO)
    )
