"""What an account's worker holds and how it calls the broker.

:class:`WorkerBase` is the base of :class:`~services.broker_gateway.gateway.AccountWorker`:
its state (the commands held, the reconciliations and positions checks
asked for, the flattens a restart may have cut), a command given up on
(dead-lettered; a ``SubmitOrder``'s order given an outcome first), and its
broker calls, retried while the broker is away or does not serve them (the
backoffs: :func:`retry_delay_s`, :func:`reconcile_retry_delay_s`, their
timings the worker's :class:`Timings`). On it:
``reconciliation.py`` (:class:`Reconciling`), ``flatten.py``
(:class:`Flattening`), then ``gateway.py`` (the commands, the event stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import nats.errors
from nats.aio.msg import Msg

from libs.bus.acks import DeferredAcks
from libs.bus.errors import PublishFailed
from libs.contract.envelope import Clock
from libs.contract.events import AnyEvent, PositionDifference, SubmitOrder
from services.broker_gateway import metrics

# A command whose dead letter the stream did not take is handed back for
# as long as an undecodable one (then dead-lettered, not carried out).
from services.broker_gateway.adapters.commands import DEAD_LETTER_RETRY_S, hand_back
from services.broker_gateway.domain.model import BrokerOrder
from services.broker_gateway.domain.tracker import OrderTracker
from services.broker_gateway.errors import AnswerUnread, BrokerError, BrokerUnavailable, RateLimited
from services.broker_gateway.outbox import Outbox
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
#: A command handed back that has not come again after this many times its
#: delay is given up on (see ``AccountWorker.give_up_s``).
DEFERRED_GIVE_UP = 4
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
#: A positions check that finds a difference looks again after this long
#: and says only what differs both times: a fill the broker has booked may
#: still be on its way on the stream.
POSITION_CONFIRM_S = 2.0
#: How far the broker's clock may be from ours: a flatten looks for the
#: closing orders of an earlier close-all this much around its window.
CLOCK_SKEW_NS = 2_000_000_000


@dataclass(frozen=True, slots=True)
class Timings:
    """A worker's retry and confirmation timings, in seconds: the constants
    above unless a test (or a caller) gives its own to the worker. A
    parameter, not a module constant patched where it is read: when code
    moves to another module, such a patch silently takes effect no more."""

    retry_initial_s: float = RETRY_INITIAL_S
    retry_max_s: float = RETRY_MAX_S
    retry_after_max_s: float = RETRY_AFTER_MAX_S
    reconcile_retry_initial_s: float = RECONCILE_RETRY_INITIAL_S
    reconcile_retry_max_s: float = RECONCILE_RETRY_MAX_S
    position_confirm_s: float = POSITION_CONFIRM_S
    dead_letter_retry_s: float = DEAD_LETTER_RETRY_S
    #: How long a failed command is handed back for (NAK_DELAY_S); with
    #: the ack wait, how long one handed back for lack of room stays away.
    nak_delay_s: float = NAK_DELAY_S


TIMINGS = Timings()


def retry_delay_s(
    attempt: int, retry_after_s: float | None = None, timings: Timings = TIMINGS
) -> float:
    """How long to wait before attempt ``attempt + 1`` (``attempt`` from 0)."""
    if retry_after_s is not None:
        # Jittered up (never below what was asked, never at once), capped.
        wait = max(retry_after_s, timings.retry_initial_s) * random.uniform(1.0, 1.1)  # noqa: S311
        return min(wait, timings.retry_after_max_s)
    return _doubling(attempt, timings.retry_initial_s, timings.retry_max_s)


def reconcile_retry_delay_s(attempt: int, timings: Timings = TIMINGS) -> float:
    """How long after its ``attempt + 1``-th give-up in a row (``attempt``
    from 0) a reconciliation is tried again."""
    return _doubling(attempt, timings.reconcile_retry_initial_s, timings.reconcile_retry_max_s)


def _doubling(attempt: int, initial: float, maximum: float) -> float:
    # The exponent is bounded: 2**1024 would not fit a float.
    cap = min(initial * 2 ** min(attempt, 32), maximum)
    return random.uniform(cap / 2, cap)  # noqa: S311 - jitter


@dataclass(slots=True)
class Held:
    """A command a worker holds: under way or queued, kept alive on NATS."""

    command: AnyEvent
    #: The newest delivery of it (a keep-alive or ack on an older one is
    #: ignored by the server once it has redelivered the message).
    msg: Msg
    #: Its stream sequence (0 for a message that is not from JetStream).
    seq: int


class WorkerBase:
    """One broker account's worker: its state and its broker calls (see the
    module docstring)."""

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
        timings: Timings = TIMINGS,
    ) -> None:
        self.account = account
        #: Its backoffs and the positions check's second look (see Timings).
        self.timings = timings
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
        self.defer_s = max(ack_wait_s, timings.nak_delay_s)
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
        # Commands whose dead letter the stream did not take, by event id: the
        # error it is for. Handed back, each is dead-lettered when it comes
        # again, not carried out; its failures stay counted meanwhile.
        self._dead_letters_due: dict[uuid.UUID, str] = {}
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
        #: Flattens whose outcome this gateway counted ``flattened``, oldest
        #: first, at most ``flatten.MAX_FLATTENED_KEPT``: one a closing order's
        #: late end leaves open is counted as turned incomplete, once (see
        #: ``Flattening._left_open_late``).
        self._counted_flattened: dict[uuid.UUID, None] = {}
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

    @property
    def held(self) -> int:
        """Commands held: the one under way and those queued behind it."""
        return len(self._held)

    async def _dead_letter(self, held: Held, error: str) -> None:
        """Dead-letter ``held``'s command and ack it; if the stream does not
        take the dead letter within its deadline, hand the command back
        (``dead_letter_retry_s``) to be dead-lettered when it comes again.

        Raised, the PublishFailed ended the account's command task, and so
        the gateway for every account.
        """
        command_id = held.command.id
        try:
            await self.dead_letter(held.msg, error)
        except PublishFailed as e:
            self._dead_letters_due[command_id] = error
            what = f"{held.command.type} {command_id} of {self.account}"
            await hand_back(
                held.msg,
                what,
                e,
                reason="command_failed",
                retry_s=self.timings.dead_letter_retry_s,
            )
            return
        self._dead_letters_due.pop(command_id, None)
        self._failures.pop(command_id, None)
        # A lost ack only means a redelivery, which the tracker and the broker absorb.
        with contextlib.suppress(nats.errors.Error):
            await held.msg.ack()

    async def _abandoned(
        self,
        command: SubmitOrder,
        error: Exception,
        settle: Callable[[BrokerOrder], Awaitable[None]],
    ) -> None:
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

        ``settle``: how the worker makes sure what a submit's answer shows gets
        published (``AccountWorker._settle``, in ``gateway.py``, above this).
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
                await settle(found)
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
        delay = retry_delay_s(attempt, retry_after, self.timings)
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
