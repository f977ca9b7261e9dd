"""The flattens in the order tracker: whether one is done, the closing
orders its close-all placed and those an earlier run of it placed (found at
the broker after a crash: :meth:`Closing.adopt_closing_orders`), what it
refused or left working, and the orders nobody here placed.
:class:`~services.broker_gateway.domain.tracker.OrderTracker` is a
:class:`Closing`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from decimal import Decimal

from libs.contract.codec import derived_id
from libs.contract.envelope import CauseRef, Event
from libs.contract.events import (
    ClosingOrder,
    ClosingOrdersPayload,
    ClosingOrdersPlaced,
    FlattenAccount,
    OrderAccepted,
    OrderRejected,
)
from services.broker_gateway.domain.model import (
    BrokerOrder,
    CancelRefused,
    CloseRefused,
)
from services.broker_gateway.domain.tracked import ZERO, TrackedOrder, TrackerState, canon

#: Dead closing orders remembered (``TrackerState._dead_closing``): few at
#: most per flatten, and one the stream brings is let go.
MAX_DEAD_CLOSING = 1000


def ended_short(broker_order_id: str, status: str, filled: Decimal, quantity: Decimal) -> str:
    """Why a closing order leaves its position open: it ended (``status``)
    short of its ``quantity``."""
    what = "nothing" if filled == 0 else f"{canon(filled)} of {canon(quantity)}"
    return f"its closing order {broker_order_id} was {status} with {what} filled, and fills no more"


def still_open(what: str, why: str) -> str:
    """The reason of a refusal of a position a flatten left open (``what``)."""
    return f"flatten: the broker did not close {what}, which is still open: {why}"


class Closing(TrackerState):
    """An account's flattens and the orders nobody here placed (see the
    module docstring)."""

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
            if not (order.is_open or order.filled_quantity > 0):
                # Ended with nothing filled: no closing order, and not taken in
                # either. Taken in, it was unsettled (acknowledged, not ended)
                # and the next reconciliation published its OrderAccepted and
                # end, of an order that never traded and that a tracker
                # rebuilt from the events published here does not know. (One
                # the stream brought meanwhile is the flatten's already; one
                # it brings later is the flatten's too: _external.) Its
                # position is still open: the caller passes it among
                # ``refused`` (see left_open).
                if self.find(order) is None:
                    self._dead_closing[order.broker_order_id] = CauseRef.of(flatten)
                    while len(self._dead_closing) > MAX_DEAD_CLOSING:
                        del self._dead_closing[next(iter(self._dead_closing))]
                continue
            t = self._closing_order(order, flatten)
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
            rejected = self._rejection(t, still_open(what, r.reason), r.code, None)
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

    def left_open(self, orders: Sequence[BrokerOrder]) -> dict[str, str]:
        """Of the symbols of ``orders`` (a close-all's closing orders, as its
        answer or the broker lists them), those none of them closes, each
        with why: every closing order of it ended short of its quantity.

        A closing order closes its position if it still works or filled
        whole. One that ended otherwise (canceled, expired or rejected; a
        "dead" one with nothing filled) never fills again (final statuses),
        and leaves its position open at the broker, or what it did not fill
        of it. Ended as the broker lists it, or as the stream has brought it
        here already (the answer was made before). Until this a dead one was
        left out of the flatten's closing orders and nothing said its
        position was still open: the flatten said ``flattened`` with it
        open, and no positions check saw it (the fills recorded and the
        broker's position agree). Another closing order of the symbol that
        closes it (one of a later attempt, each of which cancels the one
        before's) leaves it closed.
        """
        closes: set[str] = set()
        ended: dict[str, str] = {}
        for order in orders:
            t = self.find(order)
            filled = max(order.filled_quantity, t.filled if t is not None else ZERO)
            if order.is_open and (t is None or t.terminal is None):
                closes.add(order.symbol)
                continue
            if filled >= order.quantity:
                closes.add(order.symbol)
                continue
            status = (t.terminal if order.is_open and t is not None else None) or order.status
            ended[order.symbol] = ended_short(order.broker_order_id, status, filled, order.quantity)
        return {symbol: why for symbol, why in ended.items() if symbol not in closes}

    def _ends_short(
        self, t: TrackedOrder, order: BrokerOrder, status: str, out: list[Event]
    ) -> None:
        """``t`` is about to be published as ended (``status``: canceled,
        expired or rejected) as the broker shows it in ``order``. If it is a
        closing order of a flatten whose close-all has answered, ended short
        of its quantity, and no other closing order of that flatten closes
        its symbol (one still working, or filled whole), its position is
        still open: published as the answer's refusals are (the same id,
        derived from the flatten and the symbol, so a refusal made already,
        at the answer or before a restart, is not made again; the same cause
        and "which is still open"), before the order's end, and kept in
        :attr:`left_open_late` for the worker to count and log.

        Before the answer it is the answer's to say (:meth:`left_open`). Not
        when a command after the flatten canceled it (a later flatten's
        cancel-all, whose close-all closes the position again; a
        ``CancelOrder``): that command answers for it. Until this the order's
        end was all that was published: a day order placed after the close,
        waiting for a price, expired at the next close, and nothing said the
        position was still open (the positions check agreed with the broker).

        The refusal leaves before the end: a crash between the two leaves
        the order unsettled in the store, and the restarted gateway's
        reconciliation ends it, the refusal found made. (After the end, a
        crash before the refusal lost it: an ended order is asked about no
        more.)
        """
        flatten = t.cause
        if not t.closing or flatten is None or t.terminal is not None:
            return
        if flatten.id in self._flattens and flatten.id not in self._flattened:
            return  # the answer is yet to come
        if t.cancel_cause is not None and t.cancel_cause.id != flatten.id:
            return
        if t.filled >= order.quantity:
            return
        for other in self.orders.values():
            if (
                other is not t
                and other.closing
                and other.broker_order_id is not None
                and other.cause is not None
                and other.cause.id == flatten.id
                and other.symbol == order.symbol
                and other.terminal in (None, "filled")
            ):
                return  # it closes the symbol, or will say so when it ends
        r = self._order(
            derived_id("broker.close", self.account, flatten.id, order.symbol), order.symbol
        )
        r.close_for(CauseRef.of(flatten))
        why = ended_short(order.broker_order_id, status, t.filled, order.quantity)
        reason = still_open(f"the {order.symbol} position", f"{why} (after its close-all answered)")
        rejected = self._rejection(r, reason, None, None)
        if rejected is not None:
            self._emit(out, rejected)
            self.left_open_late.append((order.symbol, rejected))

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
        """An order nobody here placed: a flatten's closing order, or someone else's.

        A closing order its close-all's answer listed as ended with nothing
        filled, which the stream brings after the flatten ended (its end,
        still in flight when the answer was read), is the flatten's: its
        events were roots. A fill of it cannot come (ended is final at
        Alpaca and at the paper broker); should a broker send one all the
        same, it is the flatten's too, booked to the strategies whose
        positions it closes, not to nobody: a safeguard, costing nothing."""
        oid = derived_id("broker.order", self.account, order.broker_order_id)
        t = self._order(oid, order.symbol)
        t.side, t.quantity = order.side, order.quantity
        t.client_order_id = order.client_order_id
        self._by_client[order.client_order_id] = oid
        self._index_broker(t, order.broker_order_id)
        dead = self._dead_closing.pop(order.broker_order_id, None)
        if dead is not None:
            t.close_for(dead)
        elif self._flattening is not None:
            t.close_for(self._flattening)
        return t
