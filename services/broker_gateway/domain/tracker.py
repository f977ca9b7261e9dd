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
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from libs.contract.codec import derived_id
from libs.contract.envelope import CauseRef, Clock, Event
from libs.contract.events import (
    AnyEvent,
    CancelOrder,
    ClosingOrder,
    ClosingOrdersPayload,
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
    PositionDifference,
    Settlement,
    SubmitOrder,
)
from services.broker_gateway.domain.model import (
    BrokerFill,
    BrokerOrder,
    BrokerPosition,
    CancelRefused,
    CloseRefused,
    OrderRequest,
    OrderUpdate,
    Side,
)

ZERO = Decimal(0)
#: Decimal places of a price the tracker computes (the contract allows 12).
PRICE_QUANTUM = Decimal("1e-12")


def canon(value: Decimal) -> str:
    """A decimal's one spelling (``100``, not ``1E+2`` or ``100.00``), for ids."""
    return format(value.normalize(), "f")


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


def _no_older(answer: BrokerOrder, seen: BrokerOrder) -> bool:
    """The broker's ``answer`` shows at least what the stream showed (``seen``).

    Fills only add up and an order that ended stays ended, so an answer with
    less filled, or still working where the stream said it ended, was read
    before the stream's update.
    """
    return answer.filled_quantity >= seen.filled_quantity and (seen.is_open or not answer.is_open)


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
    #: "filled", "canceled" or "rejected" once nothing more can happen.
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

    def close_for(self, flatten: FlattenAccount) -> None:
        """The order is one of ``flatten``'s closing orders, unless a command
        of its own caused it."""
        if self.cause is None:
            self.cause, self.closing = flatten, True


class OrderTracker:
    """One account's orders and positions; turns broker facts into events."""

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
            t.terminal = t.terminal or "canceled"
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

    def flattened(self, flatten_id: uuid.UUID) -> bool:
        """The flatten ``flatten_id`` is done: a copy of it must not run again."""
        return flatten_id in self._flattened

    def unfinished_flattens(self) -> list[FlattenAccount]:
        """The flattens taken in whose close-all is not known to have
        answered: no ``ClosingOrdersPlaced`` and no refusal of theirs.

        In a tracker rebuilt on start-up, those include a flatten the gateway
        before was running when it died, after the broker had acted on its
        close-all: delivered again, it claims the closing orders it finds at
        the broker (:meth:`adopt_closing_orders`). A flatten that ran to the
        end records its ``ClosingOrdersPlaced``, with no order if it placed
        none and nothing was refused (an account already flat); one the
        command consumer acknowledged, whatever it recorded, is let go
        (:meth:`flattens_acknowledged`): it will not come again.
        """
        return [f for fid, f in self._flattens.items() if fid not in self._flattened]

    def flattens_acknowledged(self, flatten_ids: Iterable[uuid.UUID]) -> None:
        """The flattens ``flatten_ids`` (those of this account among them)
        were acknowledged on the command consumer: each ran to its outcome,
        or was given up or dead-lettered, and none will be delivered again.
        They are not among :meth:`unfinished_flattens`, whatever they
        recorded, and the tracker lets them go: their closing orders and the
        orders they canceled, taken in already, keep them as their causes.

        Whether each is done (:meth:`flattened`) is kept: a consumer made
        anew (lost with the server's data) replays the last
        ``max_submit_delay_s`` of commands.
        """
        for fid in flatten_ids:
            self._flattens.pop(fid, None)

    def flatten_acknowledged(self, flatten_id: uuid.UUID, *, now_ns: int, replay_ns: int) -> None:
        """The live gateway's :meth:`flattens_acknowledged`: the command
        consumer confirmed at ``now_ns`` the ack of the flatten
        ``flatten_id``, which it will not deliver again, and the tracker lets
        it go. Whether it is done (:meth:`flattened`) is kept for
        ``replay_ns`` more, as far back as a consumer made anew replays (a
        copy it brings is a repeat), then forgotten: each is checked at the
        next flatten acknowledged.

        Without this a running gateway kept every flatten it ever handled
        (only a start-up's rebuild was bounded). What it keeps is the flattens
        of the last ``replay_ns``, those rebuilt on start-up, and any whose
        ack was not confirmed (it may come again).
        """
        self.flattens_acknowledged((flatten_id,))
        replayable = self._replayable
        while replayable and replayable[0][0] <= now_ns:
            self._flattened.discard(replayable.popleft()[1])
        if flatten_id in self._flattened:
            replayable.append((now_ns + replay_ns, flatten_id))

    def flatten_started(self, command: FlattenAccount) -> None:
        """A close-all is about to be sent: orders that appear now are its.

        The flatten is taken in (:meth:`evolve`) unless it was already: the
        gateway takes it in before its cancel-all, and again it would make
        the cancels of orders taken in since (as nobody's) the flatten's,
        which a tracker rebuilt from the recorded events does not.
        """
        if command.id not in self._flattens:
            self.evolve(command)
        self._flattening = command

    def flatten_done(
        self,
        orders: Sequence[BrokerOrder],
        refused: Sequence[CloseRefused] = (),
        *,
        unexpressed: list[tuple[BrokerOrder, ValueError]] | None = None,
        working: Sequence[CancelRefused] = (),
    ) -> list[Event]:
        """The close-all answered: its closing orders, and the positions it refused.

        The closing orders it placed are published as one ``ClosingOrdersPlaced``
        (caused by the flatten, its id derived from it), after their
        acceptances: the risk-gate reads no acks, and without it counted none
        of them as open orders of the account (see :meth:`_placed`).

        Each refused position is published as an ``OrderRejected`` of the
        closing order that could not be placed (its id derived from the
        flatten and the symbol, caused by the flatten, the venue's code), so
        a flatten that left a position open never passes for done silently.
        So is each order its cancel-all left ``working`` (see
        :meth:`left_working`), under an id derived from the flatten and the
        broker's order id: the order itself stays working here, and its
        fills, which may come, are published and booked. A refusal that
        names no symbol has its id derived from its place in
        the venue's answer instead: from a symbol of "?", every such refusal
        had one id, and all but the first were dropped as its repeats.

        All of it is built before any of it is recorded. A closing order the
        contract cannot carry (a symbol it refuses, a quantity with too many
        places) raises ``ValueError`` with nothing recorded, or, given
        ``unexpressed``, is added there and left out, the rest recorded: the
        close-all has run, and the flatten is done either way. (Recorded as
        they were built, the events before such an order marked the flatten
        done, so its retry was a repeat, and they were never published.)
        """
        flatten = self._flattening
        assert flatten is not None, "flatten_started() first"
        built: list[OrderAccepted | ClosingOrdersPlaced | OrderRejected] = []
        placed: list[ClosingOrder] = []
        for order in orders:
            t = self._closing_order(order, flatten)
            if not (order.is_open or order.filled_quantity > 0):
                continue
            try:
                accepted = self._acceptance(t, order, order.updated_ns)
                closing = self._placed(t, order)
            except ValueError as e:
                if unexpressed is None:
                    raise
                unexpressed.append((order, e))
                continue
            if accepted is not None:
                built.append(accepted)
            placed.append(closing)
        if placed or not refused:
            # Also when it placed nothing and refused nothing (an account
            # already flat): the flatten is recorded as answered, so a rebuilt
            # tracker does not count it among the flattens a crash may have
            # cut (unfinished_flattens), which hold back unknown orders at
            # every start-up until they come again, and this one never would.
            built.append(
                ClosingOrdersPlaced.create(
                    ClosingOrdersPayload(account=self.account, orders=tuple(placed)),
                    source=self.source,
                    clock=self.clock,
                    cause=flatten,
                    event_id=derived_id("broker.closing", self.account, flatten.id),
                )
            )
        for r in refused:
            if r.symbol:
                oid = derived_id("broker.close", self.account, flatten.id, r.symbol)
                what = f"the {r.symbol} position"
            else:
                # Deterministic all the same: the same answer, read again by a
                # rebuilt tracker, has the same entries in the same places.
                oid = derived_id("broker.close.entry", self.account, flatten.id, r.entry)
                what = f"a position (entry {r.entry} of its answer, which names no symbol)"
            t = self._order(oid, r.symbol or "?")
            t.close_for(flatten)
            reason = f"flatten: the broker refused to close {what}, which is still open: {r.reason}"
            rejected = self._rejection(t, reason, r.code, None)
            if rejected is not None and all(e.id != rejected.id for e in built):
                built.append(rejected)
        for w in working:
            key = w.broker_order_id or f"entry {w.entry}"
            oid = derived_id("broker.close.working", self.account, flatten.id, key)
            known = self._by_broker.get(w.broker_order_id) if w.broker_order_id else None
            held = self.orders.get(known) if known is not None else None
            if w.broker_order_id is None:
                what = f"an order (entry {w.entry} of its answer, which names none)"
            else:
                what = f"order {w.broker_order_id}"
            if held is not None:
                what += f" ({held.side} {held.quantity} {held.symbol})"
            t = self._order(oid, held.symbol if held is not None else "?")
            t.close_for(flatten)
            reason = (
                f"flatten: the broker did not cancel {what}, which is still working "
                f"and may fill: {w.reason}"
            )
            rejected = self._rejection(t, reason, w.code, None)
            if rejected is not None and all(e.id != rejected.id for e in built):
                built.append(rejected)
        out: list[Event] = []
        for event in built:
            self._emit(out, event)
        self._flattened.add(flatten.id)
        self._flattening = None
        return out

    def left_working(self, refused: Sequence[CancelRefused]) -> list[CancelRefused]:
        """Of the orders a cancel-all refused to cancel, those not known to
        have ended since (the stream, or the reconciliation before the
        close-all, ended one that had just filled): still working at the
        broker, they may fill after the flatten."""
        out: list[CancelRefused] = []
        for r in refused:
            oid = self._by_broker.get(r.broker_order_id) if r.broker_order_id else None
            t = self.orders.get(oid) if oid is not None else None
            if t is None or t.terminal is None:
                out.append(r)
        return out

    def adopt_closing_orders(self, orders: Sequence[BrokerOrder]) -> list[BrokerOrder]:
        """Of ``orders``, the broker's orders created while an earlier run of
        the flatten under way may have sent its close-all, those that are its
        closing orders, taken in as such (their fills then booked to the
        strategies whose positions they close); the others are left alone.

        Its closing orders are market orders nobody here placed: unknown, or
        taken in as nobody's (a reconciliation may have found one working
        before the flatten ran again), or known as its already (taken in
        from the stream before the crash). An order of a strategy, a
        flatten's before it, or other than a market order is not.
        """
        flatten = self._flattening
        assert flatten is not None, "flatten_started() first"
        found: list[BrokerOrder] = []
        for order in orders:
            t = self.find(order)
            if t is None or t.cause is None:
                if order.order_type != "market":
                    continue
            elif not (t.closing and t.cause.id == flatten.id):
                continue
            self._closing_order(order, flatten)
            found.append(order)
        return found

    def _placed(self, t: TrackedOrder, order: BrokerOrder) -> ClosingOrder:
        """``order``, a closing order, as ``ClosingOrdersPlaced`` lists it for
        the risk-gate, which counts what still works as an open order.

        What still works is its quantity less the fills published so far
        (events leave in the order they are made: the gate has those fills
        before this), nothing once the stream has ended it. Not the answer's
        own fills: one the stream has not brought yet would then be in
        neither the gate's positions nor its open orders. Its strategy is the
        one whose position takes all of it, as the fills would be booked now.
        """
        leaves = ZERO if t.terminal is not None else max(order.quantity - t.filled, ZERO)
        booked = self.allocate(order.symbol, order.side, leaves) if leaves > 0 else []
        return ClosingOrder(
            order_id=t.order_id,
            symbol=order.symbol,
            side=order.side,
            quantity=order.quantity,
            leaves_quantity=leaves,
            strategy=booked[0][0] if len(booked) == 1 else None,
        )

    def flatten_ended(self) -> None:
        """The flatten is over (done or failed): unknown orders are nobody's again."""
        self._flattening = None

    def _closing_order(self, order: BrokerOrder, flatten: FlattenAccount) -> TrackedOrder:
        t = self.find(order) or self._external(order)
        t.close_for(flatten)
        return t

    def _external(self, order: BrokerOrder) -> TrackedOrder:
        """An order nobody here placed: a flatten's closing order, or someone else's."""
        oid = derived_id("broker.order", self.account, order.broker_order_id)
        t = self._order(oid, order.symbol)
        t.side, t.quantity = order.side, order.quantity
        t.client_order_id = order.client_order_id
        self._by_client[order.client_order_id] = oid
        self._index_broker(t, order.broker_order_id)
        if self._flattening is not None:
            t.close_for(self._flattening)
        return t

    # ------------------------------------------------------- broker facts

    def on_update(self, update: OrderUpdate) -> list[Event]:
        """One event of the broker's stream."""
        order = update.order
        t = self.find(order) or self._external(order)
        self._index_broker(t, order.broker_order_id)
        out: list[Event] = []
        if update.kind == "rejected":
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
            self._cancel(t, order, update.ts_ns, update.reason, out)
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
        the broker ended every order in it at the close.
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
            total = order.filled_avg_price * order.filled_quantity
            price = ((total - t.notional) / missing).quantize(PRICE_QUANTUM, ROUND_HALF_EVEN)
            if price <= 0:
                price = order.filled_avg_price
            # Computed to 12 places: a fill at 190 is 190, not 190.000000000000.
            price = _plain(price)
            fid = f"reconciled:{order.broker_order_id}:{canon(order.filled_quantity)}"
            self._fill(t, order, missing, price, fid, order.updated_ns, out)
        if order.status in ("canceled", "expired"):
            self._cancel(t, order, order.updated_ns, order.status, out)
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
