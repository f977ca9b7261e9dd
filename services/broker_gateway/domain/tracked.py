"""What the order tracker knows, and the events it makes.

:class:`TrackedOrder` is one order. :class:`TrackerState` is the base of
:class:`~services.broker_gateway.domain.tracker.OrderTracker`: the account's
orders and positions, taken in from the events recorded
(:meth:`TrackerState.evolve`, which a start-up's rebuild runs and every
event made goes through), and the events that record more: an order's
acceptance, rejection and cancel, and its fills (:meth:`TrackerState.fill_event`,
the one place a fill's ids are made; :meth:`TrackerState.allocate` splits a
closing fill over the strategies). How each is made exactly once: see
``tracker.py``.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Context, Decimal, localcontext

from libs.contract.codec import derived_id
from libs.contract.envelope import CauseRef, Clock, Event
from libs.contract.events import (
    AnyEvent,
    CancelOrder,
    ClosingOrdersPlaced,
    FillPayload,
    FillReceived,
    FlattenAccount,
    OrderAccepted,
    OrderAcceptedPayload,
    OrderCanceled,
    OrderCanceledPayload,
    OrderRejected,
    OrderRejectedPayload,
    Settlement,
    SubmitOrder,
)
from services.broker_gateway.domain.model import (
    BrokerOrder,
    Side,
)

ZERO = Decimal(0)
#: Where a fill's notional (and a price inferred from it) is computed: the
#: contract's quantities and prices have up to 38 digits, so a product has
#: up to 76 and a sum of them a few more. In Python's default 28 digits a
#: notional at a price of 1e16 or more was rounded, and the inferred price's
#: quantize to 12 places raised ``InvalidOperation``.
WIDE = Context(prec=90)

#: The first word of an ``OrderCanceled``'s reason when the order expired
#: (its time in force ran out: a day order at the close) rather than was
#: canceled. The contract has the one event for both; its reason is what
#: tells them apart, to a reader and to a tracker rebuilt from the events
#: (:attr:`TrackedOrder.terminal`).
EXPIRED = "expired"


def end_reason(kind: str, detail: str) -> str:
    """The reason of the ``OrderCanceled`` of an order that ended ``kind``
    (``canceled`` or ``expired``), the venue's ``detail`` kept: an expiry's
    says ``expired`` first, whatever words its venue gave it."""
    if kind != EXPIRED:
        return detail or kind
    return EXPIRED if detail in ("", EXPIRED) else f"{EXPIRED}: {detail}"


def is_expiry(reason: str) -> bool:
    """An ``OrderCanceled``'s ``reason`` records an expiry (:func:`end_reason`)."""
    return reason == EXPIRED or reason.startswith(f"{EXPIRED}: ")


def canon(value: Decimal) -> str:
    """A decimal's one spelling (``100``, not ``1E+2`` or ``100.00``), for ids."""
    return format(value.normalize(), "f")


def take_in_order(
    slices: Sequence[tuple[str | None, Decimal]], quantity: Decimal
) -> list[tuple[str | None, Decimal]]:
    """``quantity`` taken from ``slices`` (strategy, what it may take) in
    their order, each up to its own."""
    out: list[tuple[str | None, Decimal]] = []
    for strategy, held in slices:
        if quantity <= 0:
            break
        take = min(quantity, held)
        out.append((strategy, take))
        quantity -= take
    return out


def _signed(side: Side, quantity: Decimal) -> Decimal:
    return quantity if side == "buy" else -quantity


@dataclass(slots=True)
class TrackedOrder:
    """What the gateway knows about one order."""

    order_id: uuid.UUID
    symbol: str
    #: The command the order's events are caused by (SubmitOrder or FlattenAccount);
    #: once the order is done, only its ids (see ``OrderTracker._settled``).
    cause: Event | CauseRef | None = None
    strategy: str | None = None
    side: Side | None = None
    quantity: Decimal | None = None
    client_order_id: str | None = None
    broker_order_id: str | None = None
    accepted: bool = False
    #: "filled", "canceled", "expired" or "rejected" once nothing more can
    #: happen (an expiry is read back from its ``OrderCanceled``'s reason).
    terminal: str | None = None
    #: A closing order of a flatten: its fills are booked to strategies.
    closing: bool = False
    filled: Decimal = ZERO  # the watermark: cumulative quantity published
    notional: Decimal = ZERO  # sum of quantity x price over published fills
    #: An option settlement's (``FillPayload.settlement``): the quantity
    #: published per strategy, in the order published. A settlement cut by a
    #: restart is finished as it began from it, and an exercise's shares
    #: follow it (domain/settlement.py). None for any other
    #: order (it costs nothing there).
    split: dict[str | None, Decimal] | None = None
    cancel_cause: Event | CauseRef | None = None
    #: The broker may know the order: its SubmitOrder came (a gateway before
    #: a restart may have sent it, and a submit answered "pending" leaves no
    #: event), until the broker says it does not know an order it never
    #: acknowledged (see :meth:`OrderTracker.unknown_at_broker`).
    submitted: bool = False

    def close_for(self, flatten: FlattenAccount | CauseRef) -> None:
        """The order is one of ``flatten``'s closing orders, unless a command
        of its own caused it."""
        if self.cause is None:
            self.cause, self.closing = flatten, True


class TrackerState:
    """One account's orders and positions, and the events that record more
    of them; :class:`~services.broker_gateway.domain.tracker.OrderTracker`
    builds on it (the flattens: ``closing.py``; commands and broker facts:
    ``tracker.py``)."""

    def __init__(self, account: str, *, clock: Clock, source: str) -> None:
        self.account = account
        self.clock = clock
        self.source = source
        self.orders: dict[uuid.UUID, TrackedOrder] = {}
        self._by_client: dict[str, uuid.UUID] = {}
        self._by_broker: dict[str, uuid.UUID] = {}
        #: Net quantity per (strategy or None, symbol), from published fills.
        self.positions: dict[tuple[str | None, str], Decimal] = {}
        self._flattens: dict[uuid.UUID, FlattenAccount] = {}
        #: Flattens known to be done: their close-all answered here, or (rebuilt)
        #: their ClosingOrdersPlaced or a refusal of theirs was recorded. Never
        #: executed again. (A closing order's acceptance, published from the
        #: stream before the answer, is not enough: rebuilt after a crash
        #: between the two, the flatten passed for done, and its
        #: ClosingOrdersPlaced and refusals were never published.)
        self._flattened: set[uuid.UUID] = set()
        #: Flattens done whose ack the live gateway saw confirmed, oldest
        #: first, with the time (ns) until which a consumer made anew could
        #: bring them again: then they leave ``_flattened`` (see
        #: :meth:`flatten_acknowledged`).
        self._replayable: deque[tuple[int, uuid.UUID]] = deque()
        #: The flatten whose close-all is under way: unknown orders are its.
        self._flattening: FlattenAccount | None = None
        #: Closing orders a close-all's answer listed as ended with nothing
        #: filled, left out (see ``Closing.flatten_done``), by broker order
        #: id, with their flatten: the stream may bring one after the flatten
        #: has ended, and it is the flatten's then too. Oldest first, at most
        #: ``MAX_DEAD_CLOSING``.
        self._dead_closing: dict[str, CauseRef] = {}
        #: Positions a flatten left open that only a closing order's end after
        #: its close-all's answer showed (``Closing._ends_short``): each
        #: symbol and its refusal, published, for the worker to count and log;
        #: it empties it.
        self.left_open_late: list[tuple[str, OrderRejected]] = []
        #: Orders whose fills must be fetched from the broker (a gap was seen),
        #: with the order as the stream showed it then: an answer older than
        #: that does not clear the mark (see :meth:`reconcile`).
        self.needs_reconcile: dict[uuid.UUID, BrokerOrder] = {}
        #: Orders the broker acknowledged and then answered it does not know
        #: (404): their outcome is unknown, and they stay unsettled (see
        #: :meth:`unknown_at_broker`). Few, if any.
        self.forgotten: set[uuid.UUID] = set()

    # ------------------------------------------------------------ lookups

    def get(self, order_id: uuid.UUID) -> TrackedOrder | None:
        return self.orders.get(order_id)

    def find(self, order: BrokerOrder) -> TrackedOrder | None:
        oid = self._by_client.get(order.client_order_id)
        if oid is None:
            oid = self._by_broker.get(order.broker_order_id)
        return self.orders.get(oid) if oid is not None else None

    def unsettled(self) -> list[TrackedOrder]:
        """Orders the broker may know that are not done: what reconciliation
        checks, and what may still fill.

        Not an option settlement's or a cross's (``split`` set): no broker
        order stands behind it (its "broker order id" is the activity's or
        the cross's name), and its fills come from the settlement reads
        alone. One cut by a restart was asked for by every reconciliation,
        the broker's 404 said and counted as a working order it no longer
        knew.
        """
        return [
            t
            for t in self.orders.values()
            if t.terminal is None
            and t.split is None
            and (t.accepted or t.submitted or t.broker_order_id)
        ]

    def position(self, symbol: str, strategy: str | None = None) -> Decimal:
        return self.positions.get((strategy, symbol), ZERO)

    def net_positions(self) -> dict[str, Decimal]:
        """The account's net quantity per symbol over every strategy (and
        none), from the fills published: what the broker should hold. Flat
        symbols are left out."""
        net: dict[str, Decimal] = {}
        for (_, symbol), quantity in self.positions.items():
            net[symbol] = net.get(symbol, ZERO) + quantity
        return {symbol: quantity for symbol, quantity in net.items() if quantity != 0}

    def _order(self, order_id: uuid.UUID, symbol: str) -> TrackedOrder:
        t = self.orders.get(order_id)
        if t is None:
            t = self.orders[order_id] = TrackedOrder(order_id=order_id, symbol=symbol)
        return t

    def _index_broker(self, t: TrackedOrder, broker_order_id: str | None) -> None:
        if broker_order_id and t.broker_order_id is None:
            t.broker_order_id = broker_order_id
            self._by_broker[broker_order_id] = t.order_id

    # ------------------------------------------------------------- evolve

    def evolve(self, event: AnyEvent) -> None:
        """Take one order-path event of this account into the state."""
        if getattr(event.payload, "account", None) != self.account:
            return
        if isinstance(event, SubmitOrder):
            sp = event.payload
            t = self._order(sp.order_id, sp.symbol)
            if t.cause is None or t.cause.type != "SubmitOrder":
                t.cause = event
                t.strategy, t.side, t.quantity = sp.strategy, sp.side, sp.quantity
                t.client_order_id = str(sp.order_id)
                self._by_client[t.client_order_id] = t.order_id
                # Rebuilt, an order whose submit the broker answered "pending"
                # (Alpaca's pending_new) before a restart has only this: a
                # reconciliation must ask for it (the reconnection's skips
                # open orders the tracker knows), else its acceptance and
                # fills were never published.
                t.submitted = True
        elif isinstance(event, CancelOrder):
            c = self.orders.get(event.payload.order_id)
            if c is not None and c.cancel_cause is None:
                c.cancel_cause = event
        elif isinstance(event, FlattenAccount):
            self._flattens[event.id] = event
            # The flatten cancels whatever is working: their cancels are its doing.
            for t in self.orders.values():
                if t.terminal is None and t.cancel_cause is None:
                    t.cancel_cause = event
        elif isinstance(event, OrderAccepted):
            ap = event.payload
            t = self._order(ap.order_id, ap.symbol)
            t.accepted = True
            self._index_broker(t, ap.broker_order_id)
            flatten = self._flattens.get(event.causation_id) if event.causation_id else None
            if flatten is not None:
                # Its closing order, taken in from the stream: not yet the
                # flatten done (the close-all's answer may not have been
                # taken in, see ClosingOrdersPlaced below).
                t.close_for(flatten)
        elif isinstance(event, OrderRejected):
            t = self._order(event.payload.order_id, "")
            t.terminal = t.terminal or "rejected"
            self._settled(t)
            # A closing order of a flatten, refused: its close-all answered.
            if event.causation_id is not None and event.causation_id in self._flattens:
                self._flattened.add(event.causation_id)
        elif isinstance(event, OrderCanceled):
            t = self._order(event.payload.order_id, "")
            self._index_broker(t, event.payload.broker_order_id)
            ended = "expired" if is_expiry(event.payload.reason) else "canceled"
            t.terminal = t.terminal or ended
            self._settled(t)
        elif isinstance(event, FillReceived):
            self._evolve_fill(event)
        elif isinstance(event, ClosingOrdersPlaced) and event.causation_id is not None:
            # The flatten's close-all answered and was taken in: done. Its
            # orders are its own, also one taken in as nobody's before it
            # was found to be the flatten's (see adopt_closing_orders).
            self._flattened.add(event.causation_id)
            flatten = self._flattens.get(event.causation_id)
            for placed in event.payload.orders:
                closing = self.orders.get(placed.order_id)
                if flatten is not None and closing is not None:
                    closing.close_for(flatten)

    def _evolve_fill(self, event: FillReceived) -> None:
        p = event.payload
        t = self._order(p.order_id, p.symbol)
        self._index_broker(t, p.broker_order_id)
        if p.cumulative_quantity <= t.filled:
            return  # already counted (the same fill recorded twice)
        t.side = t.side or p.side
        t.filled = p.cumulative_quantity
        with localcontext(WIDE):
            t.notional += p.quantity * p.price
        strategy = p.strategy if p.strategy is not None else t.strategy
        key = (strategy, p.symbol)
        self.positions[key] = self.positions.get(key, ZERO) + _signed(p.side, p.quantity)
        if p.settlement is not None:
            split = t.split if t.split is not None else {}
            split[strategy] = split.get(strategy, ZERO) + p.quantity
            t.split = split
        if p.leaves_quantity == 0:
            t.terminal = "filled"
            self._settled(t)

    def _settled(self, t: TrackedOrder) -> None:
        """A done order has nothing left to fetch, and keeps its causes' ids
        only, not the commands themselves.

        Its gap mark goes: an order ends here once everything it filled is
        published (a cancel that shows more filled waits for the fills). A
        mark left by a fetch given up (:meth:`fetch_later`) whose fill the
        stream then brought used to stay for good, so every later stream
        update asked for an empty reconciliation.

        The tracker keeps every order it has seen (a late or repeated broker
        fact about it must still be recognised), so what one order costs is
        what a long-running gateway grows by: this cuts the cost of a
        settled order to about a third (``test_a_settled_order_keeps_only_its_causes_ids``).
        Everything later events need of a cause is its id and correlation id;
        a terminal order is never submitted again, so the command's payload is
        not needed.
        """
        self.needs_reconcile.pop(t.order_id, None)
        if isinstance(t.cause, Event):
            t.cause = CauseRef.of(t.cause)
        if isinstance(t.cancel_cause, Event):
            t.cancel_cause = CauseRef.of(t.cancel_cause)

    # ----------------------------------------------------------- emitting

    def _emit(self, out: list[Event], event: AnyEvent) -> None:
        self.evolve(event)
        out.append(event)

    def _ack(self, t: TrackedOrder, order: BrokerOrder, ts_ns: int, out: list[Event]) -> None:
        event = self._acceptance(t, order, ts_ns)
        if event is not None:
            self._emit(out, event)

    def _acceptance(self, t: TrackedOrder, order: BrokerOrder, ts_ns: int) -> OrderAccepted | None:
        """The order's ``OrderAccepted``, not yet recorded; None if it has one
        or has ended."""
        # Nothing after the end: the submit's answer can say "rejected" before
        # the stream's "new" comes (a venue rejection, or updates held up by a
        # reconciliation); that "new" must not make it OrderRejected, OrderAccepted.
        if t.accepted or t.terminal is not None:
            return None
        return OrderAccepted.create(
            OrderAcceptedPayload(
                order_id=t.order_id,
                account=self.account,
                broker_order_id=order.broker_order_id,
                symbol=order.symbol,
            ),
            source=self.source,
            clock=self.clock,
            ts_event=ts_ns or None,
            cause=t.cause,
            event_id=derived_id("broker.ack", self.account, t.order_id),
        )

    def _reject(
        self, t: TrackedOrder, reason: str, code: str | None, ts_ns: int | None, out: list[Event]
    ) -> None:
        event = self._rejection(t, reason, code, ts_ns)
        if event is not None:
            self._emit(out, event)

    def _rejection(
        self, t: TrackedOrder, reason: str, code: str | None, ts_ns: int | None
    ) -> OrderRejected | None:
        """The order's ``OrderRejected``, not yet recorded; None if it has ended."""
        if t.terminal is not None:
            return None
        return OrderRejected.create(
            OrderRejectedPayload(
                order_id=t.order_id,
                account=self.account,
                reason=reason or "rejected",
                code=code,
            ),
            source=self.source,
            clock=self.clock,
            ts_event=ts_ns,
            cause=t.cause,
            event_id=derived_id("broker.reject", self.account, t.order_id),
        )

    def _cancel(
        self, t: TrackedOrder, order: BrokerOrder, ts_ns: int, reason: str, out: list[Event]
    ) -> None:
        if t.terminal is not None:
            return
        self._emit(
            out,
            OrderCanceled.create(
                OrderCanceledPayload(
                    order_id=t.order_id,
                    account=self.account,
                    broker_order_id=order.broker_order_id,
                    reason=reason or order.status,
                ),
                source=self.source,
                clock=self.clock,
                ts_event=ts_ns or None,
                cause=t.cancel_cause or t.cause,
                event_id=derived_id("broker.cancel", self.account, t.order_id),
            ),
        )

    def _fill(
        self,
        t: TrackedOrder,
        order: BrokerOrder,
        quantity: Decimal,
        price: Decimal,
        fill_id: str,
        ts_ns: int,
        out: list[Event],
        *,
        resumed: bool = False,
    ) -> None:
        """Publish ``quantity`` more of ``t`` at ``price`` (booked to strategies
        if closing); ``resumed``: the rest of a fill ``fill_id`` whose first
        part is published, so no part of it takes the fill id itself."""
        total = t.quantity if t.quantity is not None else order.quantity
        slices: list[tuple[str | None, Decimal]]
        if t.closing and t.strategy is None:
            slices = self.allocate(order.symbol, order.side, quantity)
        else:
            slices = [(t.strategy, quantity)]
        cumulative = t.filled
        for i, (strategy, q) in enumerate(slices):
            cumulative += q
            self._emit(
                out,
                self.fill_event(
                    t.order_id,
                    broker_order_id=order.broker_order_id,
                    fill_id=fill_id,
                    symbol=order.symbol,
                    side=order.side,
                    quantity=q,
                    price=price,
                    cumulative=cumulative,
                    leaves=max(total - cumulative, ZERO),
                    strategy=strategy,
                    first=i == 0 and not resumed,
                    ts_ns=ts_ns,
                    cause=t.cause,
                ),
            )

    def fill_event(
        self,
        order_id: uuid.UUID,
        *,
        broker_order_id: str,
        fill_id: str,
        symbol: str,
        side: Side,
        quantity: Decimal,
        price: Decimal,
        cumulative: Decimal,
        leaves: Decimal,
        strategy: str | None,
        first: bool = True,
        settlement: Settlement | None = None,
        ts_ns: int = 0,
        cause: Event | CauseRef | None = None,
    ) -> FillReceived:
        """One ``FillReceived`` of the account, not yet recorded: a broker
        order's (:meth:`_fill`), an option settlement's or a cross's
        (domain/settlement.py, domain/cross.py). The one place a fill's ids
        are made, so that all of them are made alike.

        Its event id derives from (account, order id, ``cumulative``: the
        order's quantity published with it): the same fill made again, by
        this run or one after a restart, has the same id, which JetStream
        drops. ``fill_id`` is the venue's (or the activity's); a fill split
        over strategies keeps it for its ``first`` part and tells the others
        apart by strategy ("-": nobody), as the risk-gate and the ledgers
        drop a fill id they have seen. Raises ``ValueError`` (pydantic's)
        for what the contract cannot carry.
        """
        return FillReceived.create(
            FillPayload(
                order_id=order_id,
                account=self.account,
                broker_order_id=broker_order_id,
                fill_id=fill_id if first else f"{fill_id}/{strategy or '-'}",
                symbol=symbol,
                side=side,
                quantity=quantity,
                price=price,
                cumulative_quantity=cumulative,
                leaves_quantity=leaves,
                status="complete" if leaves == 0 else "partial",
                strategy=strategy,
                settlement=settlement,
            ),
            source=self.source,
            clock=self.clock,
            ts_event=ts_ns or None,
            cause=cause,
            event_id=derived_id("broker.fill", self.account, order_id, canon(cumulative)),
        )

    def allocate(
        self, symbol: str, side: Side, quantity: Decimal
    ) -> list[tuple[str | None, Decimal]]:
        """Split ``quantity`` (a closing fill, an option settlement) over the
        strategies whose positions ``side`` reduces, in strategy-name order,
        each up to its position; the rest to no strategy."""
        reducing = [
            (strategy, abs(qty))
            for (strategy, sym), qty in sorted(
                self.positions.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
            )
            if sym == symbol and strategy is not None and (qty > 0 if side == "sell" else qty < 0)
        ]
        out = take_in_order(reducing, quantity)
        left = quantity - sum((q for _, q in out), ZERO)
        if left > 0:
            out.append((None, left))
        return out
