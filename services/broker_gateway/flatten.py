"""A ``FlattenAccount`` at the broker: cancel-all, the unsettled orders'
missed fills, close-all, once per flatten; and its recovery, when an
earlier run's close-all may have acted and its answer was lost.

:class:`Flattening` (on :class:`~services.broker_gateway.reconciliation.Reconciling`)
is what :class:`~services.broker_gateway.gateway.AccountWorker` runs for a
flatten command.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Sequence

from libs.contract.events import FlattenAccount
from libs.contract.options import OPTION_PREFIX, parse_option
from services.broker_gateway import metrics
from services.broker_gateway.domain.model import BrokerOrder, CancelRefused, ClosedAll, CloseRefused
from services.broker_gateway.errors import AnswerUnread, BrokerError
from services.broker_gateway.reconciliation import Reconciling
from services.broker_gateway.worker import CLOCK_SKEW_NS

log = logging.getLogger(__name__)

#: Attempts of a flatten's close-all whose answer was not read (none in
#: time, or one that cannot be parsed) before the flatten gives up, saying
#: so. The broker may have acted on each: every attempt cancels the closing
#: orders the one before placed and places new ones, and an answer it cannot
#: parse it cannot parse the next time either (it was tried for ever).
CLOSE_ALL_ATTEMPTS = 3

#: Flattens counted ``flattened`` kept to be counted again as turned
#: incomplete by a closing order's late end (``_left_open_late``): a few a day
#: at most, and a late end comes by the next session's close.
MAX_FLATTENED_KEPT = 1000


class Flattening(Reconciling):
    """An account's flattens (see the module docstring)."""

    async def _flatten(self, command: FlattenAccount, delivery: int = 1) -> str:
        # Once per flatten: run again later (a copy delivered after a resume,
        # or after more orders), its close-all would close positions opened
        # since. Its ack is sent at once and confirmed (run_commands) before
        # the next command runs, so a restart cannot bring it back after them.
        if self.tracker.flattened(command.id):
            log.info("flatten %s of %s is done already: a repeat", command.id, self.account)
            return "repeat"
        # The cancel-all's cancels are the flatten's doing.
        self.tracker.evolve(command)
        closed: ClosedAll | None = None
        # The orders the cancel-all did not cancel; ended since or not, said
        # once the close-all has answered (_flatten_done).
        uncanceled: tuple[CancelRefused, ...] = ()
        try:
            window = self._earlier_close_all(command, delivery)
            if window is not None:
                closed = await self._recover(command, *window)
                if closed is not None:
                    uncanceled = await self._left_working(command, closed)
            if closed is None:
                uncanceled = (await self._call("cancel_all", self.port.cancel_all)).refused
                await self._caught_up()
                # From here until the close-all answers, orders the broker
                # opens on its own are this flatten's closing orders. Not
                # before: the cancel-all waits out an outage (the very time a
                # flatten is sent for), and an order placed at the broker by
                # hand meanwhile, taken in by the reconnection's
                # reconciliation, was taken for a closing order: its fills
                # booked to the strategies, the flatten marked done.
                self.tracker.flatten_started(command)
                self._close_alls_sent[command.id] = self.clock.now_ns()
                try:
                    closed = await self._call(
                        "close_all", self.port.close_all, unread_attempts=CLOSE_ALL_ATTEMPTS
                    )
                except AnswerUnread as unread:
                    closed = await self._close_all_unread(command, unread)
                    if closed is None:
                        return "incomplete"
            closed, working = await self._flatten_done(command, closed, uncanceled)
        finally:
            self.tracker.flatten_ended()
        assert closed is not None
        if working:
            # Published above as an OrderRejected each (caused by the
            # flatten). The order stays working here: its fills, if it fills,
            # are published and booked, and the account is not flat.
            metrics.FLATTEN_WORKING.labels(account=self.account).inc(len(working))
            log.error(
                "flatten %s of %s left %d orders working, the broker refused to cancel "
                "them (they may fill): %s",
                command.id,
                self.account,
                len(working),
                "; ".join(
                    f"{w.broker_order_id or f'entry {w.entry}'}: {w.reason} ({w.code})"
                    for w in working
                ),
            )
        refused = [r for r in closed.refused if not self._settles(command.id, r)]
        if refused:
            # Published above as an OrderRejected per position (caused by the
            # flatten): refused by the broker, or its closing order ended short
            # (_recover, _left_open). Not retried: a second close-all could close positions
            # opened since, or race the first one's closing orders. The
            # risk-gate has halted the account; an operator clears the cause
            # (a halt, an order holding the shares, what ended the closing
            # order) and flattens again.
            metrics.FLATTEN_REFUSED.labels(account=self.account).inc(len(refused))
            log.error(
                "flatten %s of %s left %d positions open, the broker did not close them: %s",
                command.id,
                self.account,
                len(refused),
                "; ".join(
                    f"{r.symbol or f'entry {r.entry}'}: {r.reason} ({r.code})" for r in refused
                ),
            )
            return "incomplete"
        if working:
            return "incomplete"
        log.info(
            "flattened %s: %d closing orders (%s)", self.account, len(closed.orders), command.id
        )
        self._counted_flattened[command.id] = None
        while len(self._counted_flattened) > MAX_FLATTENED_KEPT:
            del self._counted_flattened[next(iter(self._counted_flattened))]
        return "flattened"

    def _flatten_ran(self, flatten_id: uuid.UUID) -> None:
        """Also forgets when this gateway sent the flatten's close-all: it
        will not run again, done or dead-lettered. (A flatten failing after
        its close-all was sent kept it for the life of the process, one
        entry per flatten dead-lettered so.)"""
        self._close_alls_sent.pop(flatten_id, None)
        super()._flatten_ran(flatten_id)

    async def _taken_in(self) -> None:
        """Also says each position a flatten's closing order left open by
        ending after the close-all had answered (:meth:`_left_open_late`)."""
        self._left_open_late()
        await super()._taken_in()

    def _left_open_late(self) -> None:
        """Each position the tracker found left open by a flatten's closing
        order that ended after its close-all had answered (its refusal
        published: ``Closing._ends_short``), counted and logged as one the
        close-all's answer left open is (:meth:`_flatten`; one in an option
        contract past its expiry too: :meth:`_settles`). The flatten's
        outcome was counted when it ran and stays so: a counter takes nothing
        back, and counted again, as ``incomplete``, the flatten would be two
        commands. A flatten counted ``flattened`` here is counted once in
        ``tradebus_broker_flattens_incomplete_late_total`` instead (flattened
        less those is what was flattened). The account stays halted (the
        risk-gate halted it when it sent the flatten); an operator clears the
        cause and flattens again."""
        late = self.tracker.left_open_late
        for symbol, refusal in late:
            if self._settles(
                refusal.causation_id, CloseRefused(symbol, refusal.payload.reason, entry=0)
            ):
                continue
            metrics.FLATTEN_REFUSED.labels(account=self.account).inc()
            if refusal.causation_id in self._counted_flattened:
                del self._counted_flattened[refusal.causation_id]  # once per flatten
                metrics.FLATTENS_INCOMPLETE_LATE.labels(account=self.account).inc()
            log.error(
                "flatten %s of %s left %s open, its closing order ended after its close-all "
                "had answered: %s",
                refusal.causation_id,
                self.account,
                symbol,
                refusal.payload.reason,
            )
        late.clear()

    def _left_open(self, closed: ClosedAll) -> ClosedAll:
        """A close-all's answer (or what a recovery found, :meth:`_recover`),
        with each position its closing orders leave open as the tracker
        knows them now (:meth:`OrderTracker.left_open`: a closing order
        ended with nothing filled, say; listed so, or ended by the stream or
        a reconciliation since) as one more refusal: published, counted and
        logged as one, and the flatten ``incomplete``. (A position refused
        already, by the broker or by the recovery, is refused once.)"""
        named = {r.symbol for r in closed.refused}
        more = tuple(
            CloseRefused(symbol, why, entry=len(closed.refused) + place)
            for place, (symbol, why) in enumerate(self.tracker.left_open(closed.orders).items())
            if symbol not in named
        )
        return ClosedAll(closed.orders, closed.refused + more) if more else closed

    def _settles(self, flatten_id: uuid.UUID | None, refused: CloseRefused) -> bool:
        """Whether a position the close-all did not close is in an option
        contract past its expiry: no venue closes it (every broker refuses
        an order in it), the broker settles it (exercise, assignment or
        lapse), and no operator can clear the refusal, so it leaves the
        flatten done, said here. Counted as left open, it made every later
        flatten of the account ``incomplete``."""
        if refused.symbol is None or not refused.symbol.startswith(OPTION_PREFIX):
            return False
        try:
            contract = parse_option(refused.symbol)
        except ValueError:
            return False
        if not contract.expired_by(self.clock.now_ns()):
            return False
        log.warning(
            "flatten %s of %s: %s %s, so no order "
            "closes it (the broker said: %s); awaiting the broker's settlement",
            flatten_id,
            self.account,
            refused.symbol,
            contract.expired_text,
            refused.reason,
        )
        return True

    async def _flatten_done(
        self, command: FlattenAccount, closed: ClosedAll, uncanceled: Sequence[CancelRefused] = ()
    ) -> tuple[ClosedAll, list[CancelRefused]]:
        """Publish what the close-all did: its closing orders, its refusals
        (with each position its closing orders leave open, :meth:`_left_open`),
        and the orders the cancel-all before it left working (``uncanceled``
        less those ended since: an opg or cls order from its cutoff until its auction, one
        the close-all's own cancel left too). Returned: the close-all's
        answer with those refusals, and those orders."""
        # Still under way after a close-all's answer; taken up again after a
        # recovery (_recover), which leaves it between its broker calls.
        self.tracker.flatten_started(command)
        # What the closing orders leave open is worked out here, in the step
        # that marks the flatten done (tracker.flatten_done), with nothing
        # awaited between: an end the tracker took in before it is said here,
        # one after it by Closing._ends_short (the flatten done, a late end).
        # Worked out before an await (a recovery's, before its open_orders
        # call), an end the stream or a reconciliation brought during it was
        # said by neither: the flatten said ``flattened`` with it open.
        closed = self._left_open(closed)
        unexpressed: list[tuple[BrokerOrder, ValueError]] = []
        working = self.tracker.left_working(uncanceled)
        events = self.tracker.flatten_done(
            closed.orders, closed.refused, unexpressed=unexpressed, working=working
        )
        for order, e in unexpressed:
            # Its fills will not be expressible either: said, as the stream's are.
            metrics.MALFORMED.labels(account=self.account).inc()
            log.error(
                "flatten %s of %s: cannot take in its closing order %s (%s %s %s): %s",
                command.id,
                self.account,
                order.broker_order_id,
                order.side,
                order.quantity,
                order.symbol,
                e,
            )
        await self.outbox.publish(events)
        self._close_alls_sent.pop(command.id, None)
        return closed, working

    def _earlier_close_all(self, command: FlattenAccount, delivery: int) -> tuple[int, int] | None:
        """When an earlier run of this flatten may have sent its close-all,
        whose outcome was never recorded: the window (ns, the broker's
        clock give or take :data:`CLOCK_SKEW_NS`) its closing orders were
        created in; None if none can have.

        This gateway sent it (and failed after): from then until now. Else
        a delivery after the first may be a copy the gateway before a
        restart (kill -9) was running: from the command's creation until
        this gateway started. (Not for a first delivery: after an outage,
        an order placed at the broker by hand since the flatten was sent
        would be taken for its closing order. Nor for a flatten made after
        this gateway started, clocks' skew allowed: no gateway before it can
        have run it; delivered again, it was handed back for want of room,
        and the broker would be asked about a window that ends before it
        begins.)
        """
        sent = self._close_alls_sent.get(command.id)
        if sent is not None:
            return sent - CLOCK_SKEW_NS, self.clock.now_ns() + CLOCK_SKEW_NS
        if delivery > 1:
            after, until = command.ts_init - CLOCK_SKEW_NS, self.started_ns + CLOCK_SKEW_NS
            return (after, until) if after < until else None
        return None

    async def _recover(
        self, command: FlattenAccount, after_ns: int, until_ns: int
    ) -> ClosedAll | None:
        """What an earlier close-all of this flatten did, read back from the
        broker: the closing orders it placed (created in the window, see
        :meth:`OrderTracker.adopt_closing_orders`), taken in with their fills
        and published (the fills booked to the strategies whose positions
        they close); and as refused, each position still open at the broker
        that none of them closes (one whose closing orders all ended short of
        it, a dead one say, is not closed: until this it counted as closed,
        and the flatten said ``flattened`` with it open). None if it placed
        no closing order: then
        it did nothing, or only refused, and the close-all is sent (again).

        A kill -9 between the broker's answer to a close-all and its events
        lost them: the closing fills made meanwhile were never published
        (or booked to nobody), or the flatten, rebuilt as done from a
        closing order's acceptance, lost its ClosingOrdersPlaced and
        refusals. Everything published here has derived ids, so what the
        gateway before the crash did publish is not published twice.
        """
        orders = await self._call(
            "orders_created", lambda: self.port.orders_created(after_ns, until_ns)
        )
        self.tracker.flatten_started(command)
        found = self.tracker.adopt_closing_orders(orders)
        # Unknown orders are nobody's again at once: the closing orders are
        # those found, and an order the stream or the reconnection's
        # reconciliation takes in while the calls below wait (one placed at
        # the broker by hand) is not one of them. Held until the events were
        # published, such an order was the flatten's, its fills booked to the
        # strategies. (_flatten_done takes the flatten up again to publish.)
        self.tracker.flatten_ended()
        if not found:
            log.info(
                "flatten %s of %s: no closing order of an earlier close-all at the broker",
                command.id,
                self.account,
            )
            return None
        held = await self._call("positions", self.port.positions)
        for order in found:
            t = self.tracker.find(order)
            fills = (
                await self._reconciling(functools.partial(self.port.order_fills, order))
                if t is not None and order.filled_quantity > t.filled
                else None
            )
            await self.outbox.publish(self.tracker.reconcile(order, fills))
        # A closing order that ended short of its quantity (a dead one: canceled,
        # expired or rejected with nothing filled) does not close its position.
        ended = self.tracker.left_open(found)
        closing = {o.symbol for o in found} - ended.keys()
        lost = "found after the close-all's answer was lost"
        refused = tuple(
            CloseRefused(
                p.symbol,
                f"{ended[p.symbol]} ({lost})"
                if p.symbol in ended
                else f"no closing order was placed for it ({lost})",
                entry=place,
            )
            for place, p in enumerate(held)
            if p.quantity != 0 and p.symbol not in closing
        )
        log.warning(
            "flatten %s of %s: its close-all was sent before and its answer lost; "
            "%d closing orders found at the broker, %d positions it left open",
            command.id,
            self.account,
            len(found),
            len(refused),
        )
        return ClosedAll(tuple(found), refused)

    async def _left_working(
        self, command: FlattenAccount, closed: ClosedAll
    ) -> tuple[CancelRefused, ...]:
        """After a recovery (:meth:`_recover`), the orders working at the
        broker that the earlier run's cancel-all should have canceled: each
        open order but the flatten's closing orders, unless the broker
        created it after the first of them (the cancel-all came before the
        close-all; such an order was placed since, by hand say), as a
        refusal of that cancel-all (:meth:`_flatten_done` says them).

        With the cancel-all's answer lost along with the close-all's, an
        order it refused (an opg or cls order from its cutoff until its auction) was never
        seen, and the flatten said ``flattened`` with it working.
        """
        closing = {o.broker_order_id for o in closed.orders}
        first = min((o.created_ns for o in closed.orders if o.created_ns), default=0)
        out: list[CancelRefused] = []
        for place, order in enumerate(await self._call("open_orders", self.port.open_orders)):
            t = self.tracker.find(order)
            if order.broker_order_id in closing or (
                t is not None and t.closing and t.cause is not None and t.cause.id == command.id
            ):
                continue
            if first and order.created_ns >= first:
                continue
            out.append(
                CancelRefused(
                    order.broker_order_id,
                    "working at the broker after the flatten "
                    "(found after its cancel-all's and close-all's answers were lost)",
                    entry=place,
                )
            )
        return tuple(out)

    async def _close_all_unread(
        self, command: FlattenAccount, error: AnswerUnread
    ) -> ClosedAll | None:
        """A close-all whose answer was not read ``CLOSE_ALL_ATTEMPTS`` times:
        the broker is asked what they did (:meth:`_recover`), and the closing
        orders found are the flatten's, as an answer's are. If it placed none
        (or cannot say), the flatten gives up: said, counted as
        ``incomplete``, and the account reconciled and its positions checked
        (a closing order placed all the same is taken in as nobody's)."""
        log.error(
            "flatten %s of %s: the broker's answer to its close-all was not read %d times "
            "(the last: %s); asking it for the closing orders it placed",
            command.id,
            self.account,
            CLOSE_ALL_ATTEMPTS,
            error,
        )
        window = self._earlier_close_all(command, 1)
        assert window is not None
        try:
            closed = await self._recover(command, *window)
        except (BrokerError, ValueError) as e:
            log.error("flatten %s of %s: the broker cannot say (%s)", command.id, self.account, e)
            closed = None
        if closed is not None:
            return closed
        log.error(
            "flatten %s of %s given up: it may have placed closing orders, which are not "
            "known here: check the account's positions at the broker",
            command.id,
            self.account,
        )
        self._close_alls_sent.pop(command.id, None)
        self._check_wanted = True
        self.want_reconcile(everything=True)
        return None

    async def _caught_up(self) -> None:
        """Before a close-all: each unsettled order's fills published.

        The close-all's fills are booked to the strategies whose positions
        they close, as the fills published make them. A fill the stream did
        not bring (made while the connection was lost, the very case a flatten
        is sent for) was left to the reconnection's reconciliation, which
        could publish it after the closing fill: that was booked to nobody,
        and the order's strategy kept the position the flatten closed. One
        question per unsettled order (after the cancel-all, so each is
        final), as a reconciliation asks; one given up is left to it.
        """
        for t in self.tracker.unsettled():
            if not self.port.connected:
                return  # the reconnection reconciles everything
            await self._call_once(self._reconcile_one(t))
