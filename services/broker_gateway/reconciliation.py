"""Reconciliation: what an account's worker asks the broker about what the
stream may not have brought, and the positions check.

:class:`Reconciling` (on :class:`~services.broker_gateway.worker.WorkerBase`)
runs one reconciliation at a time beside the stream, asked for by a
``connected``, a gap the stream showed or a submit's fetch given up; tries
one given up again after a backoff; compares the broker's positions with
the recorded fills; and holds back the orders a flatten recorded before a
restart may claim until it has run (:meth:`Reconciling._holds_back`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Sequence
from typing import Any

from libs.contract.events import (
    OPTION_PREFIX,
    BrokerPositionsChecked,
    PositionDifference,
    PositionsCheckedPayload,
)
from services.broker_gateway import metrics
from services.broker_gateway.domain.model import BrokerOrder
from services.broker_gateway.domain.tracker import TrackedOrder, position_differences
from services.broker_gateway.errors import BrokerError, BrokerUnavailable, RateLimited
from services.broker_gateway.worker import CLOCK_SKEW_NS, WorkerBase, reconcile_retry_delay_s

log = logging.getLogger(__name__)


class Reconciling(WorkerBase):
    """An account's reconciliations and positions checks (see the module
    docstring)."""

    def want_reconcile(self, *, everything: bool = False) -> None:
        """Have the account reconciled: ``everything`` after a connection, else
        the orders the stream found gaps in. Never waits: asked for while a
        reconciliation runs, one more runs after it (however often asked)."""
        self._reconcile_everything |= everything
        self._reconcile_wanted.set()

    async def run_reconciliations(self) -> None:
        """One reconciliation at a time, whenever one was asked for.

        They run beside the stream, so the tracker takes in stream updates
        between a reconciliation's questions and its answers being applied:
        an answer may be older than what the stream has brought since. The
        tracker takes such an answer without undoing or repeating anything
        (see :meth:`OrderTracker.reconcile`). What still needs an order:
        reconciliations of an account do not overlap (they would ask the
        broker the same things, twice the calls against its rate limit), and
        one asked for after a ``connected`` starts after it is published.
        Orders held back for a flatten recorded before this start are taken
        in by the reconciliation after it has run (see :meth:`_holds_back`);
        positions checks wait for them.
        """
        if self.position_check_every_s > 0:
            self._arm_check()
        if self._recoverable:
            self._recovery_timer = asyncio.get_running_loop().call_later(
                self.give_up_s, self._recovery_due
            )
        try:
            while True:
                await self._reconcile_wanted.wait()
                self._reconcile_wanted.clear()
                everything, self._reconcile_everything = self._reconcile_everything, False
                check, self._check_wanted = self._check_wanted, False
                if self._retry is not None and (everything or not self._retry_everything):
                    # This one covers what the retry was for.
                    self._retry.cancel()
                    self._retry, self._retry_everything = None, False
                done = True
                if everything:
                    done = await self.reconcile()
                elif self.tracker.needs_reconcile:
                    done = await self.reconcile(only=set(self.tracker.needs_reconcile))
                if not done:
                    if self.port.connected:
                        # Away, the reconnection reconciles everything anyway.
                        self._retry_later(everything=everything)
                    if not self._reached_end:
                        # Positions are compared once nothing is missing: a
                        # check due is kept for the retry (it was dropped
                        # until the next period).
                        self._check_wanted |= check
                        continue
                    # It went through but skipped orders the broker answered
                    # with an error, which may fail at every retry: compare
                    # now, a difference they leave is worth saying.
                if self._retry is None:
                    self._given_up = 0
                if (everything or check) and self.position_check_every_s > 0:
                    await self.check_positions()
        finally:
            for timer in (self._retry, self._check_timer, self._recovery_timer):
                if timer is not None:
                    timer.cancel()
            self._retry = self._check_timer = self._recovery_timer = None

    def _retry_later(self, *, everything: bool) -> None:
        """Have a reconciliation given up tried again after a backoff (see
        :class:`~services.broker_gateway.worker.Timings`); one already due keeps its time."""
        self._retry_everything |= everything
        if self._retry is not None:
            return
        delay = reconcile_retry_delay_s(self._given_up, self.timings)
        self._given_up += 1
        log.info(
            "reconciliation of %s (%s) tried again in %.1fs",
            self.account,
            "everything" if self._retry_everything else "the orders with gaps",
            delay,
        )
        self._retry = asyncio.get_running_loop().call_later(delay, self._retry_due)

    def _retry_due(self) -> None:
        self._retry = None
        everything, self._retry_everything = self._retry_everything, False
        self.want_reconcile(everything=everything)

    def _arm_check(self) -> None:
        self._check_timer = asyncio.get_running_loop().call_later(
            self.position_check_every_s, self._check_due
        )

    def _check_due(self) -> None:
        self._arm_check()
        self._check_wanted = True
        self._reconcile_wanted.set()

    async def check_positions(self) -> None:
        """Compare the broker's positions with the account's recorded fills.

        Run in the reconciliation task, after a reconciliation has run to the
        end (nothing known to be missing). A difference is looked at again
        after ``Timings.position_confirm_s`` and said only if it is there both
        times (a fill may be on its way). The outcome is published as
        ``BrokerPositionsChecked`` the first time and whenever it changes;
        each difference is logged; the account's differing symbols are a
        gauge. It means a position tradebus does not know about: an order
        placed at the broker by hand that filled while the gateway was away,
        an option exercised or expired, a corporate action, a lost fill.
        Nothing is traded on it: the operator decides.
        """
        if not self.port.connected:
            return
        try:
            held = await self._reconciling(self.port.positions)
            differences = position_differences(self.tracker.net_positions(), held)
            if differences:
                # A policy delay, not synchronisation.
                await asyncio.sleep(self.timings.position_confirm_s)
                first = {d.symbol for d in differences}
                held = await self._reconciling(self.port.positions)
                differences = tuple(
                    d
                    for d in position_differences(self.tracker.net_positions(), held)
                    if d.symbol in first
                )
        except (BrokerError, ValueError) as e:
            metrics.POSITION_CHECKS.labels(account=self.account, outcome="failed").inc()
            log.warning("positions check of %s failed: %s", self.account, e)
            return
        except Exception:
            # A bug's error: this check's failure (the next period's check
            # runs), as a reconciliation's is (reconcile). Raised, it ended
            # this task, so the account's event task and the whole gateway,
            # and the next start's reconnection met it again.
            metrics.POSITION_CHECKS.labels(account=self.account, outcome="failed").inc()
            log.exception("positions check of %s failed on an unexpected error", self.account)
            return
        if differences and self._fills_owed(differences):
            # Fills a reconciliation about to run publishes may explain them
            # (a gap the stream showed between the looks, a reconnection):
            # said, they stayed on the board until the next periodic check,
            # the reconciliation of the gaps checking nothing. The check runs
            # again after it.
            log.info("positions check of %s waits for its reconciliation", self.account)
            self._check_wanted = True
            return
        outcome = "differ" if differences else "agree"
        metrics.POSITION_CHECKS.labels(account=self.account, outcome=outcome).inc()
        metrics.POSITION_DIFFERENCES.labels(account=self.account).set(len(differences))
        for d in differences:
            log.warning(
                "positions of %s: %s is %s at the broker, %s from the recorded fills",
                self.account,
                d.symbol,
                d.broker_quantity,
                d.recorded_quantity,
            )
        if differences == self._differences:
            return
        if not differences and self._differences:
            log.info("positions of %s agree with the broker's again", self.account)
        event = BrokerPositionsChecked.create(
            PositionsCheckedPayload(
                account=self.account,
                broker=self.port.broker,
                broker_positions=sum(1 for p in held if p.quantity != 0),
                differences=differences,
            ),
            source=self.source,
            clock=self.clock,
        )
        await self.outbox.publish([event])
        self._differences = differences

    def _fills_owed(self, differences: Sequence[PositionDifference]) -> bool:
        """A reconciliation about to run may publish fills of these symbols:
        one of everything is asked for (a reconnection), or an unsettled
        order of one of them is marked (a gap the stream showed, which asks
        for the reconciliation of the gaps). Not while one given up waits
        for its retry: the fills may stay unpublished for minutes, which is
        worth saying (the retry of everything checks again), and one that
        keeps failing would hold every check off. Nor a mark left on a
        settled order (its fill came on the stream after a submit's fetch
        was given up): reconciliations ask for unsettled orders only. Nor
        while orders are held back for a flatten's recovery (see
        :meth:`_holds_back`): their fills are published once it has run (or
        has not come), and a reconciliation of everything follows."""
        if self._reconcile_everything or (self._held_back and self._recoverable):
            return True
        if self._retry is not None:
            return False
        marked = set()
        for order_id, order in self.tracker.needs_reconcile.items():
            t = self.tracker.get(order_id)
            if t is not None and t.terminal is None:
                marked.add(order.symbol)
        return any(d.symbol in marked for d in differences)

    async def reconcile(self, only: set[Any] | None = None) -> bool:
        """Ask the broker what we may have missed; publish the difference.

        Every unsettled order and every open order we do not know, or only the
        orders ``only``. A call the broker rate-limits is tried again after a
        backoff and the reconciliation goes on from where it was; a call
        refused ``RECONCILE_ATTEMPTS`` times in a row gives it up (logged and
        counted), as does the broker going away, and False is returned:
        :meth:`run_reconciliations` tries again later. An order the broker
        answers with an error of its own (a 4xx), or with what the tracker
        cannot take in, is skipped (said) and the others are reconciled; then
        False too. (Such an order used to end the reconciliation, and every
        retry of it, before the orders after it.) What it publishes has
        derived ids, so asking again is harmless.
        """
        published = 0
        skipped = 0
        self._reached_end = False
        try:
            for t in self.tracker.unsettled():
                if only is not None and t.order_id not in only:
                    continue
                n = await self._unless_refused(t.order_id, self._reconcile_one(t))
                if n is None:
                    skipped += 1
                else:
                    published += n
            if only is None:
                if not self._recoverable:
                    for order in list(self._held_back.values()):
                        n = await self._unless_refused(
                            order.client_order_id, self._take_in_held_back(order)
                        )
                        if n is None:
                            skipped += 1
                        else:
                            published += n
                for order in await self._reconciling(self.port.open_orders):
                    if self.tracker.find(order) is None and not self._holds_back(order):
                        n = await self._unless_refused(
                            order.client_order_id, self._take_in_unknown(order)
                        )
                        if n is None:
                            skipped += 1
                        else:
                            published += n
        except RateLimited as e:
            self._refused_too_often(f"reconciliation of {self.account}", e, published)
            return False
        except (BrokerError, ValueError) as e:
            log.warning("reconciliation of %s interrupted: %s", self.account, e)
            return False
        except Exception:
            # A bug's error: this reconciliation's failure (tried again later),
            # as a command's is (gateway.run_commands). Raised, it ended this
            # task, so the account's event task and the whole gateway, and the
            # next start's reconnection met it again.
            log.exception("reconciliation of %s interrupted by an unexpected error", self.account)
            return False
        if published:
            log.info("reconciliation of %s published %d events", self.account, published)
        self._reached_end = True
        return not skipped

    async def _take_in_unknown(self, order: BrokerOrder) -> int:
        """An open order we do not know (placed at the broker by hand, or lost
        with a crash): take it in, fills included; the events published."""
        # Its fills are read from the account's whole list: only if it has any.
        fills = (
            await self._reconciling(functools.partial(self.port.order_fills, order))
            if order.filled_quantity > 0
            else None
        )
        events = self.tracker.reconcile(order, fills)
        await self.outbox.publish(events)
        return len(events)

    def _holds_back(self, order: BrokerOrder) -> bool:
        """Whether ``order``, which the tracker does not know, is held back
        until the flattens recorded before this start whose close-all is not
        known to have answered have run here (kept in ``_held_back``).

        Such a flatten, delivered again after a crash, claims the market
        orders created from its creation until this start (the window of
        :meth:`_earlier_close_all`) as the closing orders of its close-all.
        But the reconnection's reconciliation runs at once, and the flatten
        comes again only an ack wait after the crash: a closing order still
        working was taken in before as an order nobody here placed, and its
        fills published meanwhile were booked to no strategy for good (each
        strategy kept, in its own books and the risk-gate's, the position
        the broker had closed). Re-booking them would take an event the
        contract does not have; holding the order back takes none, and its
        fills are published once, booked by the flatten's recovery. An order
        held back that no flatten claims is taken in as nobody's after.
        """
        if not self._recoverable or order.order_type != "market":
            return False
        if order.created_ns:
            after = min(f.ts_init for f in self._recoverable.values()) - CLOCK_SKEW_NS
            if not after <= order.created_ns <= self.started_ns + CLOCK_SKEW_NS:
                return False
        if order.broker_order_id not in self._held_back:
            log.info(
                "%s: order %s (%s %s %s), which nobody here placed, waits for the "
                "flattens recorded before the restart to run: it may be a closing order of one",
                self.account,
                order.broker_order_id,
                order.side,
                order.quantity,
                order.symbol,
            )
        self._held_back[order.broker_order_id] = order
        return True

    def _flatten_ran(self, flatten_id: uuid.UUID) -> None:
        """A flatten has run to its outcome (or was dead-lettered): the last
        of those recorded before this start, the orders held back for them
        are taken in."""
        if self._recoverable.pop(flatten_id, None) is not None and not self._recoverable:
            self._hold_over()

    def _recovery_due(self) -> None:
        """The recorded flattens not delivered again by now never will be:
        a command the gateway before held comes again an ack wait after it
        died (a handed back one, ``defer_s``), and it died before this start.
        They ran to the end (an account already flat records nothing), or
        were never delivered to it (a first delivery claims nothing). Those
        delivered are waited for until they have run."""
        self._recovery_timer = None
        for flatten_id in set(self._recoverable) - self._recoverable_came:
            del self._recoverable[flatten_id]
        if not self._recoverable:
            self._hold_over()

    def _hold_over(self) -> None:
        if self._recovery_timer is not None:
            self._recovery_timer.cancel()
            self._recovery_timer = None
        if self._held_back:
            log.info(
                "%s: the flattens recorded before the restart have run; "
                "taking in the %d orders held back for them",
                self.account,
                len(self._held_back),
            )
            self.want_reconcile(everything=True)

    async def _take_in_held_back(self, order: BrokerOrder) -> int:
        """An order held back (:meth:`_holds_back`) once the flattens have
        run: unless one claimed it, taken in as the broker has it now, as
        nobody's (it may have ended meanwhile); the events published. A
        claimed one is the unsettled orders' to reconcile."""
        published = 0
        if self.tracker.find(order) is None:
            found = await self._reconciling(
                functools.partial(self.port.get_order, broker_order_id=order.broker_order_id)
            )
            if found is not None:
                published = await self._take_in_unknown(found)
        del self._held_back[order.broker_order_id]
        return published

    async def _unless_refused(self, order: object, call: Awaitable[int]) -> int | None:
        """``call``'s events published for ``order``; None, said and counted,
        if the broker answered it with an error of its own or with what the
        tracker cannot take in, or failed on an unexpected error (a bug's).
        The broker away or rate-limiting us ends the reconciliation instead
        (raised)."""
        try:
            return await call
        except BrokerUnavailable:
            raise
        except (BrokerError, ValueError) as e:
            metrics.RECONCILIATIONS_GIVEN_UP.labels(account=self.account).inc()
            log.warning(
                "reconciliation of %s: order %s skipped, the others go on (%s: %s); "
                "it is tried again later",
                self.account,
                order,
                type(e).__name__,
                e,
            )
            return None
        except Exception as e:
            # A bug's error (see reconcile): said with its traceback, and the
            # order skipped as one the broker answered with an error is.
            metrics.RECONCILIATIONS_GIVEN_UP.labels(account=self.account).inc()
            log.exception(
                "reconciliation of %s: order %s skipped after an unexpected error, the "
                "others go on (%s: %s); it is tried again later",
                self.account,
                order,
                type(e).__name__,
                e,
            )
            return None

    async def _reconcile_one(self, t: TrackedOrder) -> int:
        if t.broker_order_id is not None:
            call = functools.partial(self.port.get_order, broker_order_id=t.broker_order_id)
        elif t.client_order_id is not None:
            call = functools.partial(self.port.get_order, client_order_id=t.client_order_id)
        else:
            return 0
        order = await self._reconciling(call)
        if order is None:
            known = t.order_id not in self.tracker.forgotten
            self.tracker.unknown_at_broker(t.order_id)
            forgotten = known and t.order_id in self.tracker.forgotten
            if forgotten and t.symbol.startswith(OPTION_PREFIX):
                # Its contract's settlement may have waited for it (past the
                # expiry it no longer does: domain/settlement.py). Nothing
                # recorded says a 404, so after a restart the settlements
                # were read first and backed off: read them now, not at the
                # backoff's next read (up to READ_MAX_S away).
                self.settlements.wanted()
            if t.broker_order_id is not None:
                # Acknowledged once, unknown now: whatever became of it (fills
                # included) cannot be read back. Said, not guessed; counted
                # once (the counter counts orders, not answers).
                if t.order_id not in self._unknown_counted:
                    self._unknown_counted.add(t.order_id)
                    metrics.ORDERS_UNKNOWN.labels(account=self.account).inc()
                log.warning(
                    "reconciliation of %s: the broker no longer knows order %s "
                    "(broker order %s, %s %s %s, %s filled): its outcome is unknown, "
                    "check it at the broker",
                    self.account,
                    t.order_id,
                    t.broker_order_id,
                    t.side,
                    t.quantity,
                    t.symbol,
                    t.filled,
                )
            return 0
        fills = (
            await self._reconciling(functools.partial(self.port.order_fills, order))
            if order.filled_quantity > t.filled
            else None
        )
        events = self.tracker.reconcile(order, fills)
        fills_published = sum(1 for e in events if e.type == "FillReceived")
        if fills_published:
            metrics.RECONCILED_FILLS.labels(account=self.account).inc(fills_published)
        await self.outbox.publish(events)
        if events:
            await self._taken_in()  # as when the stream brings it
        return len(events)

    async def _taken_in(self) -> None:
        """The tracker has taken in an order's news (the stream's, or a
        reconciliation's): a submit waiting in _settle for it may go on."""
        async with self._progress:
            self._progress.notify_all()
