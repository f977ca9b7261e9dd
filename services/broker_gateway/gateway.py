"""The gateway at run time: commands to broker calls, broker facts to events.

Per account, one :class:`AccountWorker` with two tasks:

- **commands**, strictly in stream order: ``SubmitOrder`` -> ``submit`` with
  client order id = order id (the broker keeps one order per id, so a
  redelivered or re-published command never places a second order);
  ``CancelOrder`` -> ``cancel``; ``FlattenAccount`` -> ``cancel_all``, the
  unsettled orders' missed fills, then ``close_all``, once per flatten (by its
  event id). A command is acknowledged on NATS only once its broker call is
  done (acks of several commands leave together, within ``ACK_DELAY_S``; a
  flatten's at once, see ``_flatten``).
  While the broker is unreachable the command is held and executed once it is
  back — except a ``SubmitOrder`` older than ``max_submit_delay_s``, which is
  rejected as ``stale`` (after checking that the broker never got it).

Every command a worker holds, the one under way and those queued behind it,
is kept "in progress" on NATS (``keep_alive``), so none is redelivered while
it waits; a copy delivered anyway (a keep-alive lost while NATS reconnected)
replaces the held message instead of being queued a second time. The
consumer is shared by all accounts and never waits for one: a worker holds at
most ``MAX_HELD`` commands, and what comes for it beyond that is handed back
to NATS (nak with a delay) and taken again, still in stream order, once there
is room (see :meth:`AccountWorker.offer`).
- **events**: the adapter's order updates through the :class:`OrderTracker`
  (acks, fills, cancels, rejects), and its connection changes as
  ``BrokerConnectionChanged``; on every ``connected`` (and when the stream
  shows a gap) the worker has the account reconciled: beside the stream, one
  reconciliation at a time, it asks the broker about each unsettled order
  and any open order it does not know, and publishes what the stream did
  not tell it (after a restart, an order it does not know that a flatten
  recorded before may claim waits until that flatten has run: see
  :meth:`AccountWorker._holds_back`). After a reconnection's reconciliation,
  and every ``position_check_every_s``, it compares the broker's positions
  with the account's recorded fills (:meth:`AccountWorker.check_positions`).

The tasks publish through one :class:`Outbox`, which publishes in the order
events were produced, so an order's ``OrderAccepted`` is on the stream before
its first ``FillReceived``.

Layout: the worker's state, its dead letters and its broker calls with
their retries are ``worker.py`` (:class:`WorkerBase`), its reconciliations
and positions checks ``reconciliation.py`` (:class:`Reconciling`), its flattens
``flatten.py`` (:class:`Flattening`), the outbox ``outbox.py``; here, the
commands and the broker's stream. Every name of them imported from here
still is.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
import uuid
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from libs import trace
from libs.bus.pull import stream_seq
from libs.contract.events import (
    AnyEvent,
    BrokerConnectionChanged,
    BrokerConnectionPayload,
    CancelOrder,
    FlattenAccount,
    SubmitOrder,
)
from services.broker_gateway import metrics
from services.broker_gateway.domain.model import BrokerOrder, ConnectionUpdate
from services.broker_gateway.domain.tracker import TrackedOrder
from services.broker_gateway.errors import (
    BrokerError,
    BrokerUnavailable,
    NotCancelable,
    OrderNotFound,
    OrderRefused,
)
from services.broker_gateway.flatten import CLOSE_ALL_ATTEMPTS, Flattening
from services.broker_gateway.outbox import Outbox
from services.broker_gateway.reconciliation import Reconciling
from services.broker_gateway.worker import (
    CLOCK_SKEW_NS,
    DEFERRED_GIVE_UP,
    MAX_FAILURES,
    MAX_HELD,
    NAK_DELAY_S,
    POSITION_CONFIRM_S,
    RECONCILE_ATTEMPTS,
    RECONCILE_RETRY_INITIAL_S,
    RECONCILE_RETRY_MAX_S,
    RETRY_AFTER_MAX_S,
    RETRY_INITIAL_S,
    RETRY_MAX_S,
    TIMINGS,
    Held,
    Timings,
    WorkerBase,
    reconcile_retry_delay_s,
    retry_delay_s,
)

__all__ = [
    "ACK_CONFIRM_TIMEOUT_S",
    "CLOCK_SKEW_NS",
    "CLOSE_ALL_ATTEMPTS",
    "DEFERRED_GIVE_UP",
    "MAX_FAILURES",
    "MAX_HELD",
    "NAK_DELAY_S",
    "POSITION_CONFIRM_S",
    "RECONCILE_ATTEMPTS",
    "RECONCILE_RETRY_INITIAL_S",
    "RECONCILE_RETRY_MAX_S",
    "RETRY_AFTER_MAX_S",
    "RETRY_INITIAL_S",
    "RETRY_MAX_S",
    "SETTLE_GRACE_S",
    "TIMINGS",
    "AccountWorker",
    "Flattening",
    "Held",
    "Outbox",
    "Reconciling",
    "Timings",
    "WorkerBase",
    "reconcile_retry_delay_s",
    "retry_delay_s",
]

log = logging.getLogger(__name__)

ACK_CONFIRM_TIMEOUT_S = 2.0
#: How long a submit's answer may run ahead of the event stream before the
#: worker asks the broker for the order's fills itself (see ``_settle``).
SETTLE_GRACE_S = 1.0


class AccountWorker(Flattening):
    """One broker account: its command queue, its event stream, its tracker.

    Its state and broker calls are :class:`WorkerBase`'s (``worker.py``), its
    reconciliations and positions checks :class:`Reconciling`'s
    (``reconciliation.py``), its flattens :class:`Flattening`'s
    (``flatten.py``); here, the commands and the broker's stream."""

    # ----------------------------------------------------------- commands
    async def offer(self, command: AnyEvent, msg: Msg) -> None:
        """Take a command delivered for this account; never waits for the worker.

        A delivery of a command already held is a copy (NATS redelivered it):
        its message replaces the held one, the command is not queued again.
        With ``max_held`` commands held, the message goes back to NATS for
        ``defer_s``; so that the account's commands still run in stream order,
        every later one goes back too until the first of them has been taken.
        """
        failed = self._failures.get(command.id)
        if failed is not None:
            self._failures[command.id] = (failed[0], self.monotonic())  # it comes back
        held = self._held.get(command.id)
        if held is not None:
            held.msg = msg
            metrics.COMMANDS.labels(account=self.account, type=command.type, outcome="copy").inc()
            return
        seq = stream_seq(msg)
        if self._deferred and seq == self._deferred[0]:
            # The one to wait for is back (to be taken, or handed back again
            # while there is no room): it has not left the stream.
            self._deferred_since = self.monotonic()
        elif self._deferred and self.monotonic() - self._deferred_since > self.give_up_s:
            log.warning(
                "account %s: the command at stream sequence %d did not come back in %.0fs; "
                "taking the %d later ones without it",
                self.account,
                self._deferred[0],
                self.give_up_s,
                len(self._deferred) - 1,
            )
            self._deferred.clear()
            self._deferred_seqs.clear()
        first_deferred = self._deferred[0] if self._deferred else None
        if len(self._held) >= self.max_held or (
            first_deferred is not None and seq != first_deferred
        ):
            if seq not in self._deferred_seqs:
                if not self._deferred:
                    self._deferred_since = self.monotonic()
                self._deferred_seqs.add(seq)
                heapq.heappush(self._deferred, seq)
            metrics.COMMANDS.labels(
                account=self.account, type=command.type, outcome="deferred"
            ).inc()
            with contextlib.suppress(nats.errors.Error):
                await msg.nak(delay=self.defer_s)
            return
        if first_deferred is not None:
            heapq.heappop(self._deferred)
            self._deferred_seqs.discard(seq)
            self._deferred_since = self.monotonic()  # the next one's turn
        held = Held(command, msg, seq)
        if command.id in self._recoverable:
            self._recoverable_came.add(command.id)
        self._held[command.id] = held
        self._queue.append(held)
        self._idle.clear()
        self._queued.set()

    async def run_commands(self) -> None:
        while True:
            while not self._queue:
                self._idle.set()
                self._queued.clear()
                await self._queued.wait()
            held = self._queue.popleft()
            due = self._dead_letters_due.get(held.command.id)
            if due is not None:
                # It failed MAX_FAILURES times and the stream did not take its
                # dead letter: back to be dead-lettered, not carried out.
                try:
                    await self._dead_letter(held, due)
                finally:
                    self._let_go(held)
                continue
            try:
                await self.handle(held)
            except (BrokerError, ValueError) as e:
                await self._failed(held, e)
            except Exception as e:
                # A bug's error: this command's failure (retried, then
                # dead-lettered with an outcome), not the end of the task.
                # Raised, it ended the gateway for every account, and the
                # redelivered command ended the restarted one again: no
                # cancel or flatten reached any broker.
                log.exception("%s %s: unexpected error", held.command.type, held.command.id)
                await self._failed(held, e)
            else:
                self._failures.pop(held.command.id, None)
                if isinstance(held.command, FlattenAccount):
                    if await self._ack_confirmed(held.msg):
                        # Not delivered again, but by a consumer made anew,
                        # replaying max_submit_delay_s on the server's clock.
                        self.tracker.flatten_acknowledged(
                            held.command.id,
                            now_ns=self.clock.now_ns(),
                            replay_ns=int(self.max_submit_delay_s * 1e9) + CLOCK_SKEW_NS,
                        )
                else:
                    self.acks.add(held.msg)
                self.handled += 1
            finally:
                self._let_go(held)

    def _let_go(self, held: Held) -> None:
        """``held`` is done with here: carried out, handed back or dead-lettered."""
        del self._held[held.command.id]
        if isinstance(held.command, FlattenAccount) and held.command.id not in self._failures:
            # Run to its outcome, or dead-lettered: not coming again.
            self._flatten_ran(held.command.id)
        if not self._queue:
            self._idle.set()

    async def keep_alive(self) -> None:
        """Tell NATS every ``keepalive_s`` that each held command is still being worked on.

        Without it a command queued behind one that waits for the broker
        would be redelivered every ``ack_wait`` (and each copy executed).
        """
        while True:
            await asyncio.sleep(self.keepalive_s)  # a period, not synchronisation
            for held in list(self._held.values()):
                if held.msg.reply:
                    with contextlib.suppress(nats.errors.Error):
                        await held.msg.in_progress()

    async def _ack_confirmed(self, msg: Msg) -> bool:
        """Ack now and wait for the server to have it (else: with the others).
        Whether it is confirmed: the consumer will not deliver it again."""
        if not msg.reply:
            return True  # no JetStream delivery: nothing delivers it again
        try:
            await msg.ack_sync(timeout=ACK_CONFIRM_TIMEOUT_S)
        except (nats.errors.Error, TimeoutError) as e:
            log.warning("ack of %s not confirmed (%s); sent again with the others", msg.subject, e)
            self.acks.add(msg)
            return False
        return True

    async def wait_idle(self) -> None:
        """Until the command under way (if any) is done and none is queued."""
        await self._idle.wait()

    async def _failed(self, held: Held, error: Exception) -> None:
        command, msg = held.command, held.msg
        now = self.monotonic()
        self._forget_failures(now)
        failures = self._failures.get(command.id, (0, now))[0] + 1
        self._failures[command.id] = (failures, now)
        log.error(
            "%s %s failed (failure %d of %d): %s: %s",
            command.type,
            command.id,
            failures,
            MAX_FAILURES,
            type(error).__name__,
            error,
        )
        metrics.COMMANDS.labels(account=self.account, type=command.type, outcome="failed").inc()
        if failures >= MAX_FAILURES:
            if isinstance(command, SubmitOrder):
                await self._abandoned(command, error, self._settle)
            await self._dead_letter(held, f"{type(error).__name__}: {error}")  # and acked
        else:
            with contextlib.suppress(nats.errors.Error):
                await msg.nak(delay=self.timings.nak_delay_s)

    def _forget_failures(self, now: float) -> None:
        """Forget the failures of commands not seen for ``give_up_s``.

        A failed command is handed back and comes again within ``nak_delay_s``
        (every ``defer_s`` while there is no room for it), and its count ends
        when it is done or dead-lettered. One that does not come again has
        left the stream (aged out, deleted) or was acked meanwhile: its
        count used to stay for the life of the gateway. Should it come back
        after all, its count starts again.
        """
        gone = [
            command_id
            for command_id, (_, seen) in self._failures.items()
            if now - seen > self.give_up_s and command_id not in self._held
        ]
        for command_id in gone:
            del self._failures[command_id]
            self._dead_letters_due.pop(command_id, None)

    async def handle(self, held: Held) -> None:
        command = held.command
        if isinstance(command, SubmitOrder):
            outcome = await self._submit(command)
        elif isinstance(command, CancelOrder):
            outcome = await self._cancel(command)
        elif isinstance(command, FlattenAccount):
            outcome = await self._flatten(command, _deliveries(held.msg))
        else:
            outcome = "ignored"
        metrics.COMMANDS.labels(account=self.account, type=command.type, outcome=outcome).inc()

    async def _submit(self, command: SubmitOrder) -> str:
        order_id = command.payload.order_id
        if trace.ON:
            trace.mark("gateway: submit begins", order_id)
        if not self.tracker.plan_submit(command):
            if self.tracker.cancel_pending(order_id):
                return await self._withdraw(order_id)
            log.info("order %s already at the broker; command %s is a repeat", order_id, command.id)
            return "repeat"
        request = self.tracker.request(order_id)
        deadline = command.ts_init / 1e9 + self.max_submit_delay_s
        attempt = 0
        while True:
            if self._called_off(order_id):
                return await self._withdraw(order_id)
            if time.time() > deadline:
                # Too old to send; but a crash may have sent it already: ask first.
                found = await self._call(
                    "get_order",
                    lambda: self.port.get_order(client_order_id=request.client_order_id),
                )
                if found is not None:
                    await self.outbox.publish(self.tracker.submitted(order_id, found))
                    await self._settle(found)
                    return "accepted"
                age = time.time() - command.ts_init / 1e9
                reason = f"stale: not sent to the broker within {self.max_submit_delay_s:g}s"
                log.warning("rejecting order %s: %s (%.1fs old)", order_id, reason, age)
                await self.outbox.publish(self.tracker.refused(order_id, reason, "stale"))
                return "stale"
            try:
                order = await self.port.submit(request)
            except OrderRefused as e:
                await self.outbox.publish(self.tracker.refused(order_id, e.reason, e.code))
                return "rejected"
            except BrokerUnavailable as e:
                log.warning("order %s waits for the broker: %s", order_id, e)
                attempt = await self._pause(e, attempt, deadline)
                continue
            await self.outbox.publish(self.tracker.submitted(order_id, order))
            await self._settle(order)
            return "accepted"

    def _called_off(self, order_id: uuid.UUID) -> bool:
        """A command queued behind this order's submit cancels it: its
        ``CancelOrder``, or a ``FlattenAccount`` (not a repeat). It is the
        order's cancel cause now, as in a tracker rebuilt after a crash (in
        stream order), so the order is withdrawn, not sent.

        The risk-gate's reaction to a lost connection (and the kill switch)
        is a ``CancelOrder`` per open order, then a ``FlattenAccount``: a
        submit held for the broker had them queued behind it, and was sent
        once it was back (a market order filled), the cancel came too late
        and the flatten traded it back.
        """
        for held in self._queue:
            c = held.command
            if (isinstance(c, CancelOrder) and c.payload.order_id == order_id) or (
                isinstance(c, FlattenAccount) and not self.tracker.flattened(c.id)
            ):
                self.tracker.called_off(order_id, c)
                break
        return self.tracker.cancel_pending(order_id)

    async def _withdraw(self, order_id: Any) -> str:
        """A cancel (or a flatten) came before this order was sent: do not send it.

        Unless it did reach the broker after all (sent just before a crash):
        then it is taken in and canceled there.
        """
        t = self.tracker.get(order_id)
        assert t is not None
        found = await self._call(
            "get_order", lambda: self.port.get_order(client_order_id=t.client_order_id)
        )
        if found is None:
            log.info("order %s canceled before it was sent", order_id)
            await self.outbox.publish(self.tracker.withdrawn(order_id))
            return "withdrawn"
        await self.outbox.publish(self.tracker.submitted(order_id, found))
        await self._settle(found)
        if found.is_open:
            with contextlib.suppress(OrderNotFound, NotCancelable):
                await self._call("cancel", lambda: self._cancel_one(t))
        return "withdrawn"

    async def _settle(self, order: BrokerOrder) -> None:
        """Make sure what the submit's answer shows (fills, an end) gets published.

        Normally the event stream brings it, in order, right after (or before)
        the answer. But a submit that found the order already there (a command
        redelivered after a crash) gets no more stream events for what happened
        before: if the stream has not caught up with the answer within
        ``SETTLE_GRACE_S``, the order is reconciled from the broker instead.
        """

        def settled() -> bool:
            t = self.tracker.find(order)
            if t is None:
                return False
            ended = order.is_open or t.terminal is not None
            return t.filled >= order.filled_quantity and ended

        if settled():
            return
        try:
            async with self._progress:
                async with asyncio.timeout(SETTLE_GRACE_S):
                    await self._progress.wait_for(settled)
        except TimeoutError:
            t = self.tracker.find(order)
            if t is not None:
                log.info("order %s: fetching what the stream did not bring", t.order_id)
                if not await self._call_once(self._reconcile_one(t)):
                    # Given up: the next reconciliation of the gaps fetches it.
                    self.tracker.fetch_later(order)
                    if self.port.connected:
                        self._retry_later(everything=False)

    async def _cancel(self, command: CancelOrder) -> str:
        self.tracker.evolve(command)
        t = self.tracker.get(command.payload.order_id)
        if t is None or t.terminal is not None:
            log.info("cancel of order %s: nothing to cancel", command.payload.order_id)
            return "nothing_to_cancel"
        try:
            await self._call("cancel", lambda: self._cancel_one(t))
        except (OrderNotFound, NotCancelable) as e:
            log.info("cancel of order %s: %s", command.payload.order_id, e)
            return "not_cancelable"
        return "sent"

    async def _cancel_one(self, t: TrackedOrder) -> None:
        await self.port.cancel(client_order_id=t.client_order_id, broker_order_id=t.broker_order_id)

    # ------------------------------------------------------------- events

    async def run_events(self) -> None:
        """Take in the broker's stream; reconciliations run beside it.

        A reconciliation makes many broker calls and may wait out a rate
        limit: run here, it held up the fills and acks the stream brought
        meanwhile, so the risk-gate's positions lagged for as long as the
        broker kept refusing. It runs in a task of its own (see
        :meth:`run_reconciliations`), which this one owns.
        """
        async with asyncio.TaskGroup() as tasks:
            reconciling = tasks.create_task(
                self.run_reconciliations(), name=f"{self.account}-reconcile"
            )
            settling = tasks.create_task(self.settlements.run(), name=f"{self.account}-settlements")
            async for event in self.port.events():
                if isinstance(event, ConnectionUpdate):
                    await self._connection(event)
                    if event.state == "connected":
                        self.want_reconcile(everything=True)
                        self.settlements.wanted()
                    continue
                if (
                    self._recoverable  # empty but after a crash: no lookup per stream update
                    and self.tracker.find(event.order) is None
                    and self._holds_back(event.order)
                ):
                    continue  # taken in from the broker once the flatten has run
                try:
                    events = self.tracker.on_update(event)
                except ValueError as e:
                    # A broker fact we cannot express as an event (say, a price with
                    # more places than the contract allows): say so loudly, go on.
                    metrics.MALFORMED.labels(account=self.account).inc()
                    log.error("%s: cannot take in %s: %s", self.account, event, e)
                    continue
                if trace.ON:
                    trace.mark(f"gateway: {event.kind} tracked", event.order.client_order_id)
                # Queued in the step the tracker made them, before anything can
                # wait: the reconciliation task and the command task also emit
                # (the tracker says what is new) and queue events of the same
                # orders, and the outbox keeps the order they are queued in.
                # Waking a submit waiting in _settle can wait for its lock.
                await self.outbox.post(events)
                # Should the publish not happen (a crash), the restarted gateway
                # reconciles the order from the broker; so the next update need
                # not wait for this one's ack.
                await self._taken_in()
                if self.tracker.needs_reconcile:
                    self.want_reconcile()
            reconciling.cancel()
            settling.cancel()

    async def _connection(self, update: ConnectionUpdate) -> None:
        metrics.CONNECTION_CHANGES.labels(account=self.account, state=update.state).inc()
        event = BrokerConnectionChanged.create(
            BrokerConnectionPayload(
                account=self.account,
                broker=self.port.broker,
                state=update.state,
                detail=update.detail[:500],
            ),
            source=self.source,
            clock=self.clock,
        )
        await self.outbox.publish([event])


def _deliveries(msg: Msg) -> int:
    """How many times JetStream has delivered ``msg`` (1 for a plain message)."""
    return msg.metadata.num_delivered if msg.reply else 1
