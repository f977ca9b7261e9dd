"""Option positions the broker settled at expiry, published as fills.

At the close of its expiry day an option contract stops trading, and the
broker settles every position in it: exercised (a long one) or assigned (a
short one) into 100 shares of the underlying per contract at the strike, or
expired worthless. No order does it, so no trade update says it: the broker
lists it among the account's non-trade activities (Alpaca: ``OPEXP``,
``OPEXC``, ``OPASN``, and an ``OPTRD`` of the underlying with each exercise
or assignment; ``BrokerPort.option_activities``).

:class:`Settlements` reads them for each account and publishes what they did
to positions as ``FillReceived`` events with ``settlement`` set, which every
consumer already books (the risk-gate, the strategies' ledgers, the store's
``positions``) and none takes for a price:

- the contract's position closed at price 0 (``OPEXP``, ``OPEXC``,
  ``OPASN``: ``settlement`` ``expired``, ``exercised`` or ``assigned``), so
  the premium paid is realized as lost, the premium received as kept;
- for an exercise or assignment, the underlying bought or sold at the strike
  (``OPTRD``), booked to the same strategies, 100 shares per contract each.

The activities become fills in :mod:`services.broker_gateway.domain.settlement`
(how each is booked, exactly once), and what strategies hold against each
other in a contract is crossed in :mod:`services.broker_gateway.domain.cross`;
this module reads them and publishes what they make.

When: the activities are read after ``connected`` (the start-up's first
connection included) if any strategy of the account holds an option
contract (by the fills published), and whenever one held is past its
expiry, every second while one is, backing off to ``READ_MAX_S`` until the
broker has settled it (Alpaca does so overnight; the paper broker at the
close) and the offsetting part is crossed. They are read from the day
before the earliest such expiry. Likewise, backing off, while the last read
listed an exercise or assignment without its ``OPTRD`` (:func:`owed_shares`):
its contracts were published alone, so none is held, and the shares waited
for the next connection. A day after the contract's expiry the backoff
goes on to ``READ_SLOW_S`` (hourly), and a week after it (``GIVE_UP_NS``)
the settlement is given up: said once as an error naming it, counted in
``tradebus_broker_settlements_unsettled``, listed in /health, and read for
only after a connection. Until this a broker that never listed an
``OPTRD`` was read every 5 minutes for 8 days, and then nothing was said
(the read's week no longer reached the exercise); a contract it never
settled, for ever. And at once when a reconciliation finds an order
in an option contract that the broker no longer knows (404): past the
expiry it holds the settlement back no more, and after a restart, which
forgets the 404s, the start-up's read came before that reconciliation.
A read that fails on an error the gateway does not expect (a bug's) is
said with its traceback, counted as a reconciliation given up, and tried
again, backing off likewise: it is not the end of the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Sequence
from decimal import Decimal
from typing import Protocol

from libs.contract.envelope import Clock, Event
from libs.contract.events import FillReceived
from services.broker_gateway import metrics
from services.broker_gateway.domain.cross import cross_events, cross_order_id, crossing
from services.broker_gateway.domain.model import BrokerActivity
from services.broker_gateway.domain.settlement import (
    DAY_BEFORE,
    LATELY_NS,
    OUTCOMES,
    READ_BACK,
    Unsettled,
    held_expired,
    holds_options,
    may_still_fill,
    owed_shares,
    read_after_connecting,
    settled_lately,
    settlement_events,
    settlement_order_id,
    unsettled,
)
from services.broker_gateway.domain.tracker import OrderTracker
from services.broker_gateway.errors import BrokerError
from services.broker_gateway.ports import BrokerPort

__all__ = [
    "DAY_BEFORE",
    "FAST_FOR_NS",
    "GIVE_UP_NS",
    "LATELY_NS",
    "OUTCOMES",
    "READ_BACK",
    "READ_MAX_S",
    "READ_SLOW_S",
    "TICK_S",
    "Publisher",
    "Settlements",
    "Worker",
    "cross_events",
    "cross_order_id",
    "crossing",
    "held_expired",
    "holds_options",
    "may_still_fill",
    "owed_shares",
    "read_after_connecting",
    "settled_lately",
    "settlement_events",
    "settlement_order_id",
]

log = logging.getLogger(__name__)

#: How often the held contracts' expiries are looked at (a period, not synchronisation).
TICK_S = 1.0
#: Reads for a settlement the broker has not listed yet (a contract held past
#: its expiry, an exercise's shares) back off from TICK_S, doubling, to this
#: for the first FAST_FOR_NS after the contract's expiry (the paper broker
#: settles at the close, Alpaca overnight)...
READ_MAX_S = 300.0
FAST_FOR_NS = 24 * 3600 * 1_000_000_000
#: ... then to this ...
READ_SLOW_S = 3600.0
#: ... until GIVE_UP_NS after it: then the settlement is given up, said
#: (an error naming it, ``tradebus_broker_settlements_unsettled``, /health)
#: and read for only after a connection. A week: every read still reaches
#: the day before the expiry (``READ_BACK``), so a settlement listed late
#: is still found.
GIVE_UP_NS = int(READ_BACK.total_seconds()) * 1_000_000_000


class Publisher(Protocol):
    async def publish(self, events: Sequence[Event]) -> None: ...


class Worker(Protocol):
    """What of an account's worker (``gateway.AccountWorker``) this reads."""

    @property
    def account(self) -> str: ...
    @property
    def port(self) -> BrokerPort: ...
    @property
    def tracker(self) -> OrderTracker: ...
    @property
    def outbox(self) -> Publisher: ...
    @property
    def clock(self) -> Clock: ...


class Settlements:
    """Reads one account's option settlements and publishes them (see the
    module's docstring). :meth:`wanted` asks for a read (after a
    connection); :meth:`run` reads until cancelled."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._wanted = asyncio.Event()
        self._wanted.set()  # at start-up
        self._next_read_s = 0.0
        self._backoff_s = TICK_S
        #: The exercises and assignments the last read listed without their shares.
        self._owed: list[BrokerActivity] = []
        #: What the broker has not settled that is no longer read for (past
        #: GIVE_UP_NS), as said (:meth:`_given_up`).
        self.given_up: list[str] = []
        #: The last read failed on an unexpected error: read again (backing off).
        self._failed = False

    def wanted(self) -> None:
        self._wanted.set()

    async def run(self) -> None:
        w = self.worker
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await self._wanted.wait()  # or the period passes
            if not w.port.connected:
                # A read waits for the connection (a wanted one stays wanted).
                await w.port.wait_connected()
                continue
            wanted = self._wanted.is_set()
            self._wanted.clear()
            try:
                await self._read_if_due(wanted, loop.time())
            except Exception:
                # A bug's error (a read given up, as a reconciliation's is:
                # reconciliation.py): raised, it ended this task, so the
                # account's event task and the whole gateway, and the next
                # start's read met it again. Read again after the backoff.
                metrics.RECONCILIATIONS_GIVEN_UP.labels(account=w.account).inc()
                log.exception(
                    "option settlements of %s not read after an unexpected error; "
                    "read again in %.0fs",
                    w.account,
                    self._backoff_s,
                )
                self._failed = True
                self._read_later(loop.time())

    async def _read_if_due(self, wanted: bool, now_s: float) -> None:
        """Read if a connection ``wanted`` it, or one is due (a settlement
        the broker has not listed, not given up; a read failed) and its
        backoff has passed; then set the next one's backoff."""
        w = self.worker
        now_ns = w.clock.now_ns()
        forced = wanted and read_after_connecting(w.tracker, now_ns)
        waiting = self._waiting(now_ns)
        if not forced and (not (waiting or self._failed) or now_s < self._next_read_s):
            return
        due = held_expired(w.tracker, now_ns)
        try:
            await self.read(due[0] if due else None)
        except BrokerError as e:
            log.warning("option settlements of %s not read: %s", w.account, e)
        self._failed = False
        now_ns = w.clock.now_ns()
        waiting = self._waiting(now_ns)
        if waiting:
            # The broker has not settled them yet (or listed an exercise's
            # shares): read again, less often, and less so a day on.
            fast = any(now_ns - u.expires_ns < FAST_FOR_NS for u in waiting)
            self._read_later(now_s, READ_MAX_S if fast else READ_SLOW_S)
        else:
            self._backoff_s = TICK_S

    def _waiting(self, now_ns: int) -> list[Unsettled]:
        """What the broker has not settled yet and is still read for: not
        past GIVE_UP_NS. What is past it is given up (:meth:`_given_up`)."""
        w = self.worker
        waiting: list[Unsettled] = []
        given_up: list[Unsettled] = []
        for u in unsettled(w.tracker, self._owed, now_ns):
            (waiting if now_ns - u.expires_ns < GIVE_UP_NS else given_up).append(u)
        self._given_up([u.what for u in given_up])
        return waiting

    def _given_up(self, what: list[str]) -> None:
        """Say each settlement newly given up (an error: a broker that never
        lists it, or fills published that the broker never had), and keep
        them in ``given_up`` (/health) and the gauge. Nothing is published
        for them: a read after a connection still books one listed late,
        and the positions check reports the difference meanwhile."""
        w = self.worker
        for new in sorted(set(what) - set(self.given_up)):
            log.error(
                "%s: option settlement not listed by the broker a week after the expiry, "
                "no longer read for but after a connection (the positions check reports "
                "the difference): %s",
                w.account,
                new,
            )
        self.given_up = what
        metrics.SETTLEMENTS_UNSETTLED.labels(account=w.account).set(len(what))

    def _read_later(self, now_s: float, cap_s: float = READ_MAX_S) -> None:
        self._next_read_s = now_s + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, cap_s)

    async def read(self, since: dt.date | None) -> int:
        """Read the activities from the day before ``since`` (the earliest
        expiry past; none held: the last week's) and publish what is new;
        the events published."""
        w = self.worker
        if since is None:
            today = dt.datetime.fromtimestamp(w.clock.now_ns() / 1e9, dt.UTC).date()
            since = today - READ_BACK
        now_ns = w.clock.now_ns()
        held: dict[str, Decimal] | None = None
        if crossing(w.tracker, now_ns):
            # Read before the activities: a contract netting to 0 that the
            # broker held none of then has nothing left for it to settle, and
            # what it settled before is among the activities read after. Read
            # after them, a settlement between the two calls was in neither,
            # and the contract was crossed at 0 as expired though the broker
            # had just exercised it. (Its settlement cannot make a contract
            # crossing that was not: it reduces the holders it closes.)
            held = {p.symbol: p.quantity for p in await w.port.positions()}
        activities = await w.port.option_activities(after=since - DAY_BEFORE)
        self._owed = owed_shares(activities)
        events = settlement_events(w.tracker, activities)
        events += cross_events(w.tracker, activities, held, now_ns=now_ns)
        if events:
            log.info(
                "%s: %d option settlement fills published (%s)",
                w.account,
                len(events),
                ", ".join(
                    sorted({e.payload.symbol for e in events if isinstance(e, FillReceived)})
                ),
            )
            await w.outbox.publish(events)
        return len(events)
