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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import nats.errors
from nats.aio.msg import Msg

from libs import trace
from libs.bus.acks import DeferredAcks
from libs.bus.client import Bus
from libs.bus.pull import stream_seq
from libs.contract.envelope import Clock, Event
from libs.contract.events import (
    AnyEvent,
    BrokerConnectionChanged,
    BrokerConnectionPayload,
    BrokerPositionsChecked,
    CancelOrder,
    FlattenAccount,
    PositionDifference,
    PositionsCheckedPayload,
    SubmitOrder,
)
from libs.contract.options import OPTION_PREFIX, parse_option
from services.broker_gateway import metrics
from services.broker_gateway.domain.model import (
    BrokerOrder,
    CancelRefused,
    ClosedAll,
    CloseRefused,
    ConnectionUpdate,
)
from services.broker_gateway.domain.tracker import (
    OrderTracker,
    TrackedOrder,
    position_differences,
)
from services.broker_gateway.errors import (
    AnswerUnread,
    BrokerError,
    BrokerUnavailable,
    NotCancelable,
    OrderNotFound,
    OrderRefused,
    RateLimited,
)
from services.broker_gateway.ports import BrokerPort
from services.broker_gateway.settlement import Settlements

log = logging.getLogger(__name__)

T = TypeVar("T")

#: A command that failed this many times for a reason other than the broker
#: being away is dead-lettered instead of blocking the account for ever.
#: Counted by the worker, not by NATS's delivery count: that also counts the
#: deliveries handed back for lack of room and the copies after a reconnect.
MAX_FAILURES = 5
NAK_DELAY_S = 2.0
#: Commands one account's worker holds (under way and queued); more are
#: handed back to NATS until there is room, so that one account's backlog
#: (its broker away) never stops the shared consumer serving the others.
MAX_HELD = 1000
ACK_CONFIRM_TIMEOUT_S = 2.0
#: A command handed back that has not come again after this many times its
#: delay is given up on (see ``AccountWorker.give_up_s``).
DEFERRED_GIVE_UP = 4
#: How long a submit's answer may run ahead of the event stream before the
#: worker asks the broker for the order's fills itself (see ``_settle``).
SETTLE_GRACE_S = 1.0
#: Between attempts at a broker that is connected but did not serve the call
#: (429, 5xx, no answer in time): from RETRY_INITIAL_S doubling to RETRY_MAX_S,
#: jittered; or the Retry-After it sent, up to RETRY_AFTER_MAX_S. Retrying at
#: once, as before, hammers a rate-limited broker into refusing us longer.
RETRY_INITIAL_S = 0.25
RETRY_MAX_S = 10.0
RETRY_AFTER_MAX_S = 60.0
#: Attempts of one call of a reconciliation that the broker rate-limits, in a
#: row, before the reconciliation is given up for now. A call it serves
#: starts the count again.
RECONCILE_ATTEMPTS = 5
#: A reconciliation given up (or a submit's fetch of its fills) while the
#: broker is connected is tried again after a backoff: from
#: RECONCILE_RETRY_INITIAL_S doubling to RECONCILE_RETRY_MAX_S, jittered,
#: until one runs to the end. Until this, it waited for the next
#: reconnection or gap, and the fills it was to fetch stayed unpublished
#: (the risk-gate's positions short) for as long as the connection held.
RECONCILE_RETRY_INITIAL_S = 5.0
RECONCILE_RETRY_MAX_S = 300.0
#: Attempts of a flatten's close-all whose answer was not read (none in
#: time, or one that cannot be parsed) before the flatten gives up, saying
#: so. The broker may have acted on each: every attempt cancels the closing
#: orders the one before placed and places new ones, and an answer it cannot
#: parse it cannot parse the next time either (it was tried for ever).
CLOSE_ALL_ATTEMPTS = 3
#: How far the broker's clock may be from ours: a flatten looks for the
#: closing orders of an earlier close-all this much around its window.
CLOCK_SKEW_NS = 2_000_000_000
#: A positions check that finds a difference looks again after this long
#: and says only what differs both times: a fill the broker has booked may
#: still be on its way on the stream.
POSITION_CONFIRM_S = 2.0


def retry_delay_s(attempt: int, retry_after_s: float | None = None) -> float:
    """How long to wait before attempt ``attempt + 1`` (``attempt`` from 0)."""
    if retry_after_s is not None:
        # Jittered up (never below what was asked, never at once), capped.
        wait = max(retry_after_s, RETRY_INITIAL_S) * random.uniform(1.0, 1.1)  # noqa: S311
        return min(wait, RETRY_AFTER_MAX_S)
    return _doubling(attempt, RETRY_INITIAL_S, RETRY_MAX_S)


def reconcile_retry_delay_s(attempt: int) -> float:
    """How long after its ``attempt + 1``-th give-up in a row (``attempt``
    from 0) a reconciliation is tried again."""
    return _doubling(attempt, RECONCILE_RETRY_INITIAL_S, RECONCILE_RETRY_MAX_S)


def _doubling(attempt: int, initial: float, maximum: float) -> float:
    # The exponent is bounded: 2**1024 would not fit a float.
    cap = min(initial * 2 ** min(attempt, 32), maximum)
    return random.uniform(cap / 2, cap)  # noqa: S311 - jitter


class Outbox:
    """Publishes events in the order they were handed in.

    What was handed in while the previous publish was out leaves together:
    back to back on one connection (stored in this order), the acks awaited
    together. An order's acceptance and its fill, taken in from one read of
    the broker's socket, so cost one round trip and one delivery to each
    reader, not two.
    """

    def __init__(self, bus: Bus, *, max_pending: int = 10_000) -> None:
        self.bus = bus
        self.max_pending = max_pending
        # Not bounded itself: see _queued.
        self._queue: asyncio.Queue[tuple[Sequence[Event], asyncio.Future[None] | None]] = (
            asyncio.Queue()
        )
        self._room = asyncio.Event()  # set each time run() has taken the queue

    async def publish(self, events: Sequence[Event]) -> None:
        """Queue ``events`` and wait until JetStream has stored them all."""
        if not events:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queued((events, done))
        await done

    async def post(self, events: Sequence[Event]) -> None:
        """Queue ``events`` without waiting for them to be stored (they still
        leave in order; a publish that fails for good ends the service)."""
        if events:
            await self._queued((events, None))

    async def _queued(self, item: tuple[Sequence[Event], asyncio.Future[None] | None]) -> None:
        """Queue ``item`` now, then wait while more than ``max_pending`` are queued.

        The events of one order come from three tasks (the stream, the
        reconciliations, the commands), each queueing them in the step the
        tracker made them: that is what keeps an order's OrderAccepted before
        its fills, and its fills in cumulative order. So the back-pressure
        comes after queueing, never before: a bounded asyncio.Queue let a
        task that found room overtake one waiting for it, which, woken, found
        the queue full again and went to the back.
        """
        self._queue.put_nowait(item)
        while self._queue.qsize() > self.max_pending:
            self._room.clear()
            await self._room.wait()

    async def run(self) -> None:
        """Publish until cancelled; a publish that fails for good ends the service."""
        while True:
            items = [await self._queue.get()]
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            self._room.set()
            events = [e for batch, _ in items for e in batch]
            if trace.ON:
                for key in {trace.order_key(e) for e in events} - {None}:
                    trace.mark("gateway: outbox wakes", key)
            waiting = [done for _, done in items if done is not None]
            try:
                await self.bus.publish_together(events)
                for event in events:
                    account = str(getattr(event.payload, "account", ""))
                    metrics.EVENTS_PUBLISHED.labels(account=account, type=event.type).inc()
            except BaseException as e:
                for done in waiting:
                    if not done.done():
                        done.set_exception(e)
                raise
            for done in waiting:
                if not done.done():
                    done.set_result(None)


@dataclass(slots=True)
class Held:
    """A command a worker holds: under way or queued, kept alive on NATS."""

    command: AnyEvent
    #: The newest delivery of it (a keep-alive or ack on an older one is
    #: ignored by the server once it has redelivered the message).
    msg: Msg
    #: Its stream sequence (0 for a message that is not from JetStream).
    seq: int


class AccountWorker:
    """One broker account: its command queue, its event stream, its tracker."""

    def __init__(
        self,
        account: str,
        port: BrokerPort,
        tracker: OrderTracker,
        outbox: Outbox,
        *,
        clock: Clock,
        source: str,
        max_submit_delay_s: float,
        ack_wait_s: float,
        dead_letter: Callable[[Msg, str], Awaitable[None]],
        max_held: int = MAX_HELD,
        position_check_every_s: float = 0.0,
    ) -> None:
        self.account = account
        #: How often the broker's positions are compared with the recorded
        #: fills (and after every reconnection's reconciliation); 0: never.
        self.position_check_every_s = position_check_every_s
        metrics.account_started(account)
        self.port = port
        self.tracker = tracker
        self.outbox = outbox
        self.clock = clock
        self.source = source
        #: Option positions the broker settled at expiry (settlement.py).
        self.settlements = Settlements(self)
        self.max_submit_delay_s = max_submit_delay_s
        self.keepalive_s = max(ack_wait_s / 3, 0.2)
        #: How long a command handed back for lack of room stays away.
        self.defer_s = max(ack_wait_s, NAK_DELAY_S)
        #: How long the first one handed back may take to come again before
        #: the later ones are taken without it (it left the stream: else the
        #: account would wait for it for ever).
        self.give_up_s = DEFERRED_GIVE_UP * self.defer_s
        self.dead_letter = dead_letter
        self.max_held = max_held
        self.acks = DeferredAcks()
        self.handled = 0
        # Held commands by event id (queued and under way); the queue in order.
        self._held: dict[uuid.UUID, Held] = {}
        # Read when scraped, not set at every command.
        metrics.COMMANDS_HELD.labels(account=account).set_function(lambda: self.held)
        self._queue: deque[Held] = deque()
        self._queued = asyncio.Event()
        # Stream sequences handed back for lack of room (a min-heap and its
        # members): until the lowest has been taken, nothing later is.
        self._deferred: list[int] = []
        self._deferred_seqs: set[int] = set()
        self._deferred_since = 0.0  # when the lowest became the one to wait for
        self.monotonic = time.monotonic  # (a test's clock instead)
        # Failures of commands that will come again (nak'd), by event id: how
        # many, and when the command was last seen (failed or delivered).
        self._failures: dict[uuid.UUID, tuple[int, float]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        # Notified each time the event stream has been taken in (see _settle).
        self._progress = asyncio.Condition()
        # Reconciliations asked for (see want_reconcile).
        self._reconcile_wanted = asyncio.Event()
        self._reconcile_everything = False
        # A reconciliation to try again (see _retry_later): its timer, whether
        # it is to reconcile everything, and the give-ups in a row so far.
        self._retry: asyncio.TimerHandle | None = None
        self._retry_everything = False
        self._given_up = 0
        # Whether the last reconciliation went through every order (some
        # may have been skipped), rather than being given up part-way.
        self._reached_end = False
        # Positions checks (see check_positions): one is due; the periodic
        # timer; what the last BrokerPositionsChecked said (None: none yet).
        self._check_wanted = False
        self._check_timer: asyncio.TimerHandle | None = None
        self._differences: tuple[PositionDifference, ...] | None = None
        # Orders the broker answered 404 for, counted once each: they stay
        # unsettled, so every later reconciliation asks for them again.
        self._unknown_counted: set[uuid.UUID] = set()
        #: When this gateway sent a flatten's close-all (ns), until its outcome
        #: is published: the flatten run again looks for its closing orders.
        self._close_alls_sent: dict[uuid.UUID, int] = {}
        #: Closing orders created after this (ns) are no earlier gateway's.
        self.started_ns = clock.now_ns()
        #: Flattens recorded before this start whose close-all is not known to
        #: have answered, and that the command consumer may still deliver
        #: (after its ack floor), by id, until each has run here: orders they
        #: may claim are held back meanwhile (see _holds_back).
        self._recoverable = {f.id: f for f in tracker.unfinished_flattens()}
        #: Those of them delivered to this gateway (see _recovery_due).
        self._recoverable_came: set[uuid.UUID] = set()
        #: The orders held back, by broker order id.
        self._held_back: dict[str, BrokerOrder] = {}
        self._recovery_timer: asyncio.TimerHandle | None = None

    # ----------------------------------------------------------- commands

    @property
    def held(self) -> int:
        """Commands held: the one under way and those queued behind it."""
        return len(self._held)

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
                del self._held[held.command.id]
                if (
                    isinstance(held.command, FlattenAccount)
                    and held.command.id not in self._failures
                ):
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
            del self._failures[command.id]
            if isinstance(command, SubmitOrder):
                await self._abandoned(command, error)
            await self.dead_letter(msg, f"{type(error).__name__}: {error}")
            await _ack(msg)
        else:
            with contextlib.suppress(nats.errors.Error):
                await msg.nak(delay=NAK_DELAY_S)

    async def _abandoned(self, command: SubmitOrder, error: Exception) -> None:
        """A ``SubmitOrder`` about to be dead-lettered gets an outcome, unless
        its order is acknowledged or ended already.

        Without one, the risk-gate counted the order open for good (its
        quantity and notional against the caps, whatever was canceled or
        flattened since) and the strategy's intent never ended. An attempt
        may have reached the broker, so it is asked first (waiting for it if
        away, as every call of the account's commands does): an order it has
        is taken in as a submit's answer is; one it does not have is rejected,
        code ``failed``, the reason naming the failure. If it cannot say, the
        order is left unsettled, for the reconciliations to ask about.
        """
        order_id = command.payload.order_id
        t = self.tracker.get(order_id)
        if t is None or t.accepted or t.terminal is not None:
            return
        try:
            found = await self._call(
                "get_order", lambda: self.port.get_order(client_order_id=str(order_id))
            )
            if found is not None:
                await self.outbox.publish(self.tracker.submitted(order_id, found))
                await self._settle(found)
                return
        except (BrokerError, ValueError) as e:
            log.error(
                "order %s of %s: its SubmitOrder is dead-lettered and the broker cannot say "
                "whether it has the order (%s: %s); left to the reconciliations",
                order_id,
                self.account,
                type(e).__name__,
                e,
            )
            return
        except Exception:
            # The bug the submit failed on can be on this path too (taking
            # the broker's answer in): raised from here, it ended the command
            # task before the command was dead-lettered, as ce3702e stopped
            # the command itself from doing.
            log.exception(
                "order %s of %s: its SubmitOrder is dead-lettered and taking the broker's "
                "answer for it failed; left to the reconciliations",
                order_id,
                self.account,
            )
            return
        reason = (
            f"failed: not sent, the broker-gateway failed {MAX_FAILURES} times "
            f"(the last: {type(error).__name__}: {error})"
        )
        log.error("rejecting order %s of %s: %s", order_id, self.account, reason)
        await self.outbox.publish(self.tracker.refused(order_id, reason, "failed"))

    def _forget_failures(self, now: float) -> None:
        """Forget the failures of commands not seen for ``give_up_s``.

        A failed command is handed back and comes again within ``NAK_DELAY_S``
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
            working = await self._flatten_done(command, closed, uncanceled)
        finally:
            self.tracker.flatten_ended()
        assert closed is not None
        if working:
            # Published above as an OrderRejected each (caused by the
            # flatten). The order stays working here: its fills, if it fills,
            # are published and booked, and the account is not flat.
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
        refused = [r for r in closed.refused if not self._settles(command, r)]
        if refused:
            # Published above as an OrderRejected per position (caused by the
            # flatten). Not retried: a second close-all could close positions
            # opened since, or race the first one's closing orders. The
            # risk-gate has halted the account; an operator clears the cause
            # (a halt, an order holding the shares) and flattens again.
            metrics.FLATTEN_REFUSED.labels(account=self.account).inc(len(refused))
            log.error(
                "flatten %s of %s left %d positions open, the broker refused to close them: %s",
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
        return "flattened"

    def _settles(self, command: FlattenAccount, refused: CloseRefused) -> bool:
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
            command.id,
            self.account,
            refused.symbol,
            contract.expired_text,
            refused.reason,
        )
        return True

    async def _flatten_done(
        self, command: FlattenAccount, closed: ClosedAll, uncanceled: Sequence[CancelRefused] = ()
    ) -> list[CancelRefused]:
        """Publish what the close-all did: its closing orders, its refusals,
        and the orders the cancel-all before it left working (``uncanceled``
        less those ended since: an opg order from 09:28 until the open, one
        the close-all's own cancel left too); those are returned."""
        # Still under way after a close-all's answer; taken up again after a
        # recovery (_recover), which leaves it between its broker calls.
        self.tracker.flatten_started(command)
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
        return working

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
        that none of them closes. None if it placed no closing order: then
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
        closing = {o.symbol for o in found}
        refused = tuple(
            CloseRefused(
                p.symbol,
                "no closing order was placed for it (found after the close-all's answer was lost)",
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

    async def _call(
        self, name: str, call: Callable[[], Awaitable[T]], *, unread_attempts: int | None = None
    ) -> T:
        """``call()``, retried whenever the broker is away (however long that
        takes) or does not serve it (with a backoff); given ``unread_attempts``,
        its ``AnswerUnread`` is raised once it has come that many times."""
        attempt = 0
        unread = 0
        while True:
            try:
                return await call()
            except BrokerUnavailable as e:
                if isinstance(e, AnswerUnread):
                    unread += 1
                    if unread_attempts is not None and unread >= unread_attempts:
                        raise
                log.warning("%s on %s waits for the broker: %s", name, self.account, e)
                attempt = await self._pause(e, attempt, None)

    async def _pause(self, error: BrokerUnavailable, attempt: int, deadline: float | None) -> int:
        """Before trying a call again; returns the next attempt number.

        A broker that is away is waited for (until ``deadline``), and tried
        again once back. One that is connected but did not serve the call
        (rate-limited, an error, no answer in time) is given time first:
        its ``Retry-After``, else a backoff that doubles with each attempt.
        """
        if not self.port.connected:
            await self._wait_connected(deadline)
            return 0
        retry_after = error.retry_after_s if isinstance(error, RateLimited) else None
        delay = retry_delay_s(attempt, retry_after)
        if deadline is not None:
            delay = min(delay, max(deadline - time.time(), 0.0))
        if isinstance(error, RateLimited):
            metrics.RATE_LIMITED.labels(account=self.account).inc()
        await asyncio.sleep(delay)  # a backoff, not synchronisation
        return attempt + 1

    async def _call_once(self, call: Awaitable[int]) -> bool:
        """``call`` (a fetch of :meth:`_reconcile_one`); False if it was given
        up: one of its calls refused ``RECONCILE_ATTEMPTS`` times in a row
        (said and counted as a reconciliation's is), or the broker away or
        not answering, or any other failure a reconciliation gives up on (a
        broker error, an answer the tracker cannot take in). The caller has
        the order fetched later. (Those used to escape: the submit failed and
        came again as a repeat, and the fills were never fetched.)
        """
        try:
            await call
        except RateLimited as e:
            self._refused_too_often(f"{self.account}: fetch of an order", e)
            return False
        except (BrokerError, ValueError) as e:
            log.warning("%s: fetch of an order given up: %s", self.account, e)
            return False
        return True

    async def _wait_connected(self, deadline: float | None) -> None:
        """Until the broker is back (or ``deadline``); ``keep_alive`` tells NATS meanwhile."""
        while True:
            timeout = self.keepalive_s
            if deadline is not None:
                timeout = min(timeout, max(deadline - time.time(), 0))
            if await self.port.wait_connected(timeout=timeout):
                return
            if deadline is not None and time.time() >= deadline:
                return

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
        :data:`RECONCILE_RETRY_INITIAL_S`); one already due keeps its time."""
        self._retry_everything |= everything
        if self._retry is not None:
            return
        delay = reconcile_retry_delay_s(self._given_up)
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
        after :data:`POSITION_CONFIRM_S` and said only if it is there both
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
                await asyncio.sleep(POSITION_CONFIRM_S)  # a policy delay, not synchronisation
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
        if published:
            log.info("reconciliation of %s published %d events", self.account, published)
        self._reached_end = True
        return not skipped

    def _refused_too_often(self, what: str, error: RateLimited, published: int = 0) -> None:
        """``what`` is given up for now (tried again later): one of its calls
        was refused ``RECONCILE_ATTEMPTS`` times in a row. Said and counted."""
        metrics.RECONCILIATIONS_GIVEN_UP.labels(account=self.account).inc()
        log.warning(
            "%s given up after %d events: the broker refused a call %d times in a row (%s); "
            "it is tried again later",
            what,
            published,
            RECONCILE_ATTEMPTS,
            error,
        )

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
        tracker cannot take in. The broker away or rate-limiting us ends the
        reconciliation instead (raised)."""
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

    async def _reconciling(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` of a reconciliation: rate-limited, it is tried again after
        the backoff (:meth:`_pause`); refused ``RECONCILE_ATTEMPTS`` times in a
        row, the ``RateLimited`` is raised. Until this a 429 started the whole
        reconciliation again from the first order: with many orders and a
        strict rate limit, it never reached the last ones."""
        refusals = 0
        while True:
            try:
                return await call()
            except RateLimited as e:
                refusals += 1
                if refusals >= RECONCILE_ATTEMPTS:
                    raise
                log.warning("reconciliation of %s rate-limited: %s", self.account, e)
                await self._pause(e, refusals - 1, None)

    async def _reconcile_one(self, t: TrackedOrder) -> int:
        if t.broker_order_id is not None:
            call = functools.partial(self.port.get_order, broker_order_id=t.broker_order_id)
        elif t.client_order_id is not None:
            call = functools.partial(self.port.get_order, client_order_id=t.client_order_id)
        else:
            return 0
        order = await self._reconciling(call)
        if order is None:
            self.tracker.unknown_at_broker(t.order_id)
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


def _deliveries(msg: Msg) -> int:
    """How many times JetStream has delivered ``msg`` (1 for a plain message)."""
    return msg.metadata.num_delivered if msg.reply else 1


async def _ack(msg: Msg) -> None:
    # A lost ack only means a redelivery, which the tracker and the broker absorb.
    with contextlib.suppress(nats.errors.Error):
        await msg.ack()
