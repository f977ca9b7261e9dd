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

Booking: each activity is split over the strategies that hold the contract as
a flatten's closing fill is (``OrderTracker.allocate``): in strategy-name
order, each up to its position, the rest to no strategy; one ``FillReceived``
per strategy, same order id, consecutive cumulative quantities. The
underlying's trade follows the split of its exercise or assignment (the
oldest one read before it of the contract's root, 100 times its contracts
and its strike as the price; none, the first such one read after it: both
happened at once, and nothing says the broker lists the trade second); one
that goes with none (read alone) is booked to no strategy. An activity of a
contract with an order that may still fill (its fill not published yet)
waits for a later read, with its trade: split before that fill, it gave the
fill's part to no strategy, and the late fill stayed in the contract. (Not
an order the broker no longer knows, once the contract has expired:
:func:`may_still_fill`.)

Exactly once. An activity is an order nobody placed: its order id is derived
from (account, activity id), its fills made as every fill is
(``OrderTracker.fill_event``: event id from account, order id, cumulative
quantity), so the stream drops a
repeat within its window, and the tracker, which evolves every event
published here and is rebuilt from the store at start-up, knows an activity
whose fills are all published (it is skipped) or only some (the rest follow,
split as the run before the restart began it: ``TrackedOrder.split``).

Strategies holding opposite positions in one contract: the broker holds
and settles only the account's net (s1 long 3 and s2 short 1 is 2 there; s1
long 2 and s2 short 2 is nothing, and no activity). Once the broker has
settled the contract, the offsetting part is settled here as an internal
cross, :func:`cross_events`: as the broker settled the net (both sides at 0
for an expiry; the long side exercising into shares at the strike and the
short side assigned for an exercise or assignment), or, with no activity and
no position at the broker, closed at 0 as expired; not while an order in the
contract may still fill. No net change to the account.

When: the activities are read after ``connected`` (the start-up's first
connection included) if any strategy of the account holds an option
contract (by the fills published), and whenever one held is past its
expiry, every second while one is, backing off to ``READ_MAX_S`` until the
broker has settled it (Alpaca does so overnight; the paper broker at the
close) and the offsetting part is crossed. They are read from the day
before the earliest such expiry. Likewise, backing off, while the last read
listed an exercise or assignment without its ``OPTRD`` (:func:`shares_owed`):
its contracts were published alone, so none is held, and the shares waited
for the next connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from libs.contract.codec import derived_id
from libs.contract.envelope import Clock, Event
from libs.contract.events import (
    OPTION_MULTIPLIER,
    OPTION_PREFIX,
    FillReceived,
    Settlement,
    Side,
)
from libs.contract.options import parse_option
from services.broker_gateway.domain.model import BrokerActivity
from services.broker_gateway.domain.tracker import OrderTracker, canon, take_in_order
from services.broker_gateway.errors import BrokerError
from services.broker_gateway.ports import BrokerPort

log = logging.getLogger(__name__)

ZERO = Decimal(0)
OUTCOMES: dict[str, Settlement] = {"OPEXP": "expired", "OPEXC": "exercised", "OPASN": "assigned"}
#: How often the held contracts' expiries are looked at (a period, not synchronisation).
TICK_S = 1.0
#: Reads for a contract past its expiry that the broker has not settled yet
#: back off from TICK_S, doubling, to this.
READ_MAX_S = 300.0

Slices = list[tuple[str | None, Decimal]]
#: An ``OPTRD``'s (underlying, shares, price): its exercise's or
#: assignment's (root, 100 shares a contract, strike).
TradeKey = tuple[str, Decimal, Decimal | None]


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


def settlement_order_id(account: str, activity_id: str) -> uuid.UUID:
    """The order id an activity is published under."""
    return derived_id("broker.settlement", account, activity_id)


def settlement_events(tracker: OrderTracker, activities: Sequence[BrokerActivity]) -> list[Event]:
    """The fills ``activities`` (oldest first) make that are not published
    yet; the tracker takes each in as it is made, so the next activity is
    split over the positions as they stand after it.

    The order of an exercise's or an assignment's legs: the risk-gate checks
    the day P&L against the daily-loss breaker at each leg's last fill and
    at every price of a symbol the account holds, and a print or an intent
    can come between the two legs, which are published back to back but not
    at once. Between them the day P&L must err on the side of a gain, never
    show a loss the account does not have:

    - an exercise (a long contract): the shares first, at the strike (worth
      the contract's intrinsic value more than they cost), then the
      contracts at 0. Contracts first, the account had lost the contracts'
      value and not yet got the shares: 2 calls last at 10 made the day
      -2,000 until the shares came, and a print in between tripped a 1,000
      breaker, which flattened and halted the account for a loss it never
      had;
    - an assignment (a short contract): the contracts first, bought back at
      0 (the premium kept), then the shares delivered at the strike.

    A read that has the contract's activity and not yet its OPTRD publishes
    the contract's alone. An OPTRD listed before its exercise or assignment
    waits for it to the end of the read (then it goes to nobody)."""
    out: list[Event] = []
    # The exercises and assignments read whose OPTRD has not come yet, oldest
    # first; an exercise's contract fills are held until its shares are out.
    pending: list[_Awaiting] = []
    # The OPTRDs read before any exercise or assignment of theirs, oldest
    # first: one listed after them takes them; the rest go to nobody.
    early: list[BrokerActivity] = []
    # Contracts with an order that may still fill (a fill not published yet:
    # the gateway away over the close, its reconciliation running beside
    # this read): their activities wait for a later read, which comes while
    # the contract is held. Split now, over the positions without that fill,
    # the activity gave the late fill's part to no strategy (or to another),
    # and the late fill stayed in the contract for ever.
    working = may_still_fill(tracker, tracker.clock.now_ns())
    # (root, shares, strike) of the exercises and assignments left for a
    # later read: their OPTRDs wait with them.
    later: list[TradeKey] = []
    for a in activities:
        if a.quantity == 0:
            continue
        side: Side = "buy" if a.quantity > 0 else "sell"
        quantity = abs(a.quantity)
        if a.activity_type in OUTCOMES:
            try:
                contract = parse_option(a.symbol)
            except ValueError as e:
                log.warning("%s: option activity %s names no contract: %s", tracker.account, a, e)
                continue
            outcome = OUTCOMES[a.activity_type]
            # What its OPTRD carries: (root, shares, strike).
            key: TradeKey = (contract.root, quantity * OPTION_MULTIPLIER, contract.strike)
            if a.symbol in working:
                log.info(
                    "%s: option activity %s waits: an order in %s may still fill",
                    tracker.account,
                    a.activity_id,
                    a.symbol,
                )
                if outcome != "expired":
                    trade = next((t for t in early if _key(t) == key), None)
                    if trade is None:
                        later.append(key)
                    else:
                        early.remove(trade)
                continue
            # What a run before a restart published of it stays as it was;
            # the rest goes to the positions as they stand now.
            done = _published(tracker, a)
            rest = quantity - sum(done.values(), ZERO)
            slices = _merged([*done.items(), *tracker.allocate(a.symbol, side, rest)])
            expires_ns = contract.expires_at_ns
            legs: list[Event] = []
            _publish(tracker, a, side, ZERO, outcome, slices, expires_ns, legs)
            if outcome == "expired":
                out += legs
                continue
            if outcome == "assigned":
                out += legs  # the contracts first (bought back at 0)
                legs = []
            waiting = _Awaiting(key, outcome, expires_ns, slices, legs)
            # Its OPTRD listed before it (nothing orders the two: they
            # happened at once), waiting for it: its shares now.
            trade = next((t for t in early if waiting.takes(t)), None)
            if trade is None:
                pending.append(waiting)
            else:
                early.remove(trade)
                _shares(tracker, trade, waiting, out)
        elif a.activity_type == "OPTRD":
            if a.price is None or a.price <= 0:
                log.warning("%s: option trade %s has no price: not booked", tracker.account, a)
                continue
            # Its exercise or assignment: the oldest read with its root, its
            # shares and its strike (the price), so the shares of two
            # exercises listed before their trades each go to their own.
            match = next((w for w in pending if w.takes(a)), None)
            if match is None and _key(a) in later:
                later.remove(_key(a))  # its exercise waits: so does it
            elif match is None:
                early.append(a)  # its exercise may be listed after it
            else:
                pending.remove(match)
                _shares(tracker, a, match, out)
    for a in early:
        log.warning(
            "%s: option trade %s goes with no exercise or assignment read with it: "
            "booked to no strategy",
            tracker.account,
            a,
        )
        side = "buy" if a.quantity > 0 else "sell"
        assert a.price is not None  # one without is left out when read
        alone: Slices = [(None, abs(a.quantity))]
        _publish(tracker, a, side, a.price, "exercised", alone, 0, out)
    # Exercises whose OPTRD this read does not have: their contracts alone.
    for waiting in pending:
        out += waiting.held
    return out


def may_still_fill(tracker: OrderTracker, now_ns: int) -> set[str]:
    """The symbols of the account's orders that may still fill: those not
    done (``OrderTracker.unsettled``), except one the broker answered it no
    longer knows (404, ``OrderTracker.forgotten``) in an option contract past
    its expiry by ``now_ns``. The broker ends every order in a contract at
    its expiry; such an order's outcome is unknown and stays so (it stays
    unsettled: the reconciliations ask for it and say so), but no fill of it
    can come any more. Counted, it held its contract's settlement and cross
    back for ever, the contract held and read for every ``READ_MAX_S``."""
    out: set[str] = set()
    for t in tracker.unsettled():
        if t.order_id in tracker.forgotten and _expired(t.symbol, now_ns):
            log.info(
                "%s: order %s in %s, which the broker no longer knows, ended at the "
                "contract's expiry: its settlement goes on",
                tracker.account,
                t.order_id,
                t.symbol,
            )
            continue
        out.add(t.symbol)
    return out


def _expired(symbol: str, now_ns: int) -> bool:
    """Whether ``symbol`` is an option contract past its expiry by ``now_ns``."""
    if not symbol.startswith(OPTION_PREFIX):
        return False
    try:
        return parse_option(symbol).expired_by(now_ns)
    except ValueError:
        return False


def shares_owed(activities: Sequence[BrokerActivity]) -> bool:
    """Whether ``activities`` (a read's) list an exercise or assignment
    without its ``OPTRD`` (matched as :func:`settlement_events` does: root,
    shares, strike; listed before or after it): its shares are owed, and a
    later read lists them. The read reaches back a week (``READ_BACK``), so
    one the broker never lists the trade of stops counting once it is older."""
    owed: Counter[TradeKey] = Counter()
    for a in activities:
        if a.quantity == 0:
            continue
        if a.activity_type in ("OPEXC", "OPASN"):
            try:
                contract = parse_option(a.symbol)
            except ValueError:
                continue  # booked by nobody (said when read)
            owed[(contract.root, abs(a.quantity) * OPTION_MULTIPLIER, contract.strike)] += 1
        elif a.activity_type == "OPTRD" and a.price is not None and a.price > 0:
            owed[_key(a)] -= 1
    return any(n > 0 for n in owed.values())


def _key(trade: BrokerActivity) -> TradeKey:
    """An ``OPTRD``'s (underlying, shares, price): its exercise's or
    assignment's (root, shares, strike)."""
    return trade.symbol, abs(trade.quantity), trade.price


def _shares(tracker: OrderTracker, a: BrokerActivity, of: _Awaiting, out: list[Event]) -> None:
    """The shares ``a`` (an ``OPTRD``) delivers for the exercise or
    assignment ``of``, split as its contracts, then an exercise's contracts
    (held until its shares are out)."""
    assert a.price is not None
    side: Side = "buy" if a.quantity > 0 else "sell"
    slices = [(s, q * OPTION_MULTIPLIER) for s, q in of.contracts]
    _publish(tracker, a, side, a.price, of.outcome, slices, of.expires_ns, out)
    out += of.held  # an exercise's contracts after its shares


@dataclass(frozen=True, slots=True)
class _Awaiting:
    """An exercise or assignment read, waiting for its ``OPTRD``."""

    #: Its OPTRD's (root, shares: 100 a contract, strike).
    key: TradeKey
    outcome: Settlement
    expires_ns: int
    #: Its split, in contracts.
    contracts: Slices
    #: An exercise's contract fills, published after its shares.
    held: list[Event]

    def takes(self, a: BrokerActivity) -> bool:
        """Whether ``a``, an ``OPTRD``, is this one's: its root, its shares,
        its strike (the price)."""
        return _key(a) == self.key


def _published(tracker: OrderTracker, a: BrokerActivity) -> dict[str | None, Decimal]:
    """What is published of ``a``'s fills, per strategy, in the order published."""
    t = tracker.get(settlement_order_id(tracker.account, a.activity_id))
    return dict(t.split) if t is not None and t.split is not None else {}


def _merged(slices: Slices) -> Slices:
    """``slices`` with one entry per strategy (summed, in first-seen order)."""
    out: dict[str | None, Decimal] = {}
    for strategy, q in slices:
        out[strategy] = out.get(strategy, ZERO) + q
    return list(out.items())


def _publish(
    tracker: OrderTracker,
    a: BrokerActivity,
    side: Side,
    price: Decimal,
    outcome: Settlement,
    slices: Slices,
    ts_ns: int,
    out: list[Event],
) -> None:
    """The activity's fills (one per slice of its whole ``slices``) past what
    is published of it."""
    order_id = settlement_order_id(tracker.account, a.activity_id)
    total = abs(a.quantity)
    t = tracker.get(order_id)
    cumulative = t.filled if t is not None else ZERO
    if cumulative >= total:
        return  # published already (before a restart, or read again)
    if cumulative > 0:
        # Part of it was published (a crash in between): what each strategy
        # is still owed of its slice.
        done = _published(tracker, a)
        slices = [(s, q - done.get(s, ZERO)) for s, q in slices if q > done.get(s, ZERO)]
    # All of them built before any is taken in: one the contract cannot
    # carry (the venue's symbol or quantity) leaves the activity out whole,
    # said, rather than raising out of the settlement task (which ended the
    # account's worker, at every start-up again) with the tracker ahead of
    # what was published.
    built: list[FillReceived] = []
    try:
        for strategy, q in slices:
            # The first fill of the activity has its id; the others are told
            # apart by strategy (one slice each), also when a restart cut them.
            first = cumulative == 0
            cumulative += q
            built.append(
                tracker.fill_event(
                    order_id,
                    broker_order_id=a.activity_id,
                    fill_id=a.activity_id,
                    symbol=a.symbol,
                    side=side,
                    quantity=q,
                    price=price,
                    cumulative=cumulative,
                    leaves=total - cumulative,
                    strategy=strategy,
                    first=first,
                    settlement=outcome,
                    ts_ns=ts_ns,
                )
            )
    except ValueError as e:
        log.warning("%s: option activity %s not booked: %s", tracker.account, a, e)
        return
    for event in built:
        tracker.evolve(event)
        out.append(event)


def _held_contracts(tracker: OrderTracker) -> set[str]:
    """The option contracts any strategy (or none) of the account holds, by
    its published fills: a contract held long by one strategy and short by
    another is held, net 0 or not, until it is crossed."""
    return {
        symbol
        for (_, symbol), quantity in tracker.positions.items()
        if quantity != 0 and symbol.startswith(OPTION_PREFIX)
    }


def holds_options(tracker: OrderTracker) -> bool:
    """Whether the account holds any option contract (by its published fills)."""
    return bool(_held_contracts(tracker))


#: How far back a read with no expiry held goes (``Settlements.read``); every
#: read starts the day before its first day.
READ_BACK = dt.timedelta(days=7)
DAY_BEFORE = dt.timedelta(days=1)
#: How far back a connection reads for a settlement whose shares may still
#: be owed: as far as such a read reaches.
LATELY_NS = int((READ_BACK + DAY_BEFORE).total_seconds()) * 1_000_000_000


def settled_lately(tracker: OrderTracker, now_ns: int) -> bool:
    """Whether an option settlement of the account was published for a
    contract that expired in the last week: its other leg may still be owed.
    A restart between an assignment's legs (the contracts first) left the
    account holding no option, so no read ever came and the shares were
    never published; an exercise's shares first, its contracts are still
    held then."""
    return any(
        t.split is not None
        and t.symbol.startswith(OPTION_PREFIX)
        and 0 <= now_ns - parse_option(t.symbol).expires_at_ns < LATELY_NS
        for t in tracker.orders.values()
    )


def read_after_connecting(tracker: OrderTracker, now_ns: int) -> bool:
    """Whether a connection (the start-up's included) reads the activities:
    only for an account holding options or settled lately (a read is a call
    against the broker's rate limit, which the reconnection's
    reconciliation needs)."""
    return holds_options(tracker) or settled_lately(tracker, now_ns)


def held_expired(tracker: OrderTracker, now_ns: int) -> list[dt.date]:
    """The expiry dates of the contracts the account holds (by its published
    fills, per strategy) whose expiry has passed by ``now_ns``."""
    dates = set()
    for symbol in _held_contracts(tracker):
        contract = parse_option(symbol)
        if contract.expired_by(now_ns):
            dates.add(contract.expiry)
    return sorted(dates)


def cross_order_id(account: str, symbol: str, strategy: str | None, leg: str) -> uuid.UUID:
    """The order id of one strategy's leg (``contracts`` or ``shares``) of
    the cross of ``symbol`` (see :func:`cross_events`)."""
    return derived_id("broker.cross", account, symbol, strategy or "-", leg)


def crossing(tracker: OrderTracker, now_ns: int) -> bool:
    """Whether a contract past its expiry is held long by one strategy and
    short by another: :func:`cross_events` needs the broker's positions."""
    for symbol in _held_contracts(tracker):
        if parse_option(symbol).expired_by(now_ns):
            held = _before_cross(tracker, symbol).values()
            if any(q > 0 for q in held) and any(q < 0 for q in held):
                return True
    return False


def cross_events(
    tracker: OrderTracker,
    activities: Sequence[BrokerActivity],
    broker_positions: Mapping[str, Decimal] | None,
    *,
    now_ns: int,
) -> list[Event]:
    """The settlement of what strategies of the account hold against each
    other in contracts past their expiry, not published yet.

    The broker holds the account's net: s1 long 3 calls and s2 short 1 is 2
    at the broker, which settles those 2 (:func:`settlement_events` gives
    them to s1), and s1 long 2, s2 short 2 is nothing there, settled and
    listed by nobody. The offsetting part is settled here, as the broker
    would have had each strategy held its own account: an internal cross,
    no activity, no net change to the account.

    - When: once the broker has settled the contract: this read's
      ``activities`` (:func:`settlement_events` booked first) hold its
      activity, or, the positions before the cross netting to 0, none is
      listed and the broker holds none of it (``broker_positions``, read
      after the expiry and before the activities; None: not read, nothing
      is crossed at 0); and once no order in it may still fill (every one
      the broker may know has ended: the broker ends them at the expiry,
      and the tracker learns it from the stream or a reconciliation, or the
      broker no longer knows it: :func:`may_still_fill`), so the positions
      are final.
    - How: its activity's outcome: expired, both sides closed at 0; exercised
      or assigned, in the money, so each long strategy exercises (the
      contracts at 0, the underlying bought, a put's sold, at the strike,
      100 shares a contract) and each short one is assigned (the other
      way). Without an activity nothing says whether it ended in the money
      (the gateway has no price of the underlying): closed at 0 as
      ``expired``. The account's total is the same either way; each
      strategy's P&L then lacks the intrinsic value the short side would
      have paid the long one.
    - Who: min(long, short) contracts, over the long strategies and over the
      short ones in name order (no strategy last), each up to its position;
      what is left (the broker settled something else) stays, and the
      positions check reports it.
    - Order: the long side's shares, the short side's shares, the short
      side's contracts, the long side's contracts: the risk-gate checks the
      day P&L at each fill (one per strategy and leg), and in between it is
      a gain (the shares at the strike, the short contracts bought at 0),
      never a loss the account does not have.
    - Exactly once: one order per strategy and leg, its id from (account,
      contract, strategy, leg), its one fill's event id from the order's as
      every fill's. The quantities come from the positions before the cross
      (what of it is published is taken back out), so a cross cut by a
      restart is finished as it began.
    """
    outcomes: dict[str, Settlement] = {}
    for a in activities:
        if a.activity_type in OUTCOMES:
            outcomes.setdefault(a.symbol, OUTCOMES[a.activity_type])
    out: list[Event] = []
    # Orders that may still fill (a fill not published yet: the gateway away
    # over the close, its reconciliation running beside this read). Crossed
    # before it came, a strategy's late fill stayed in the contract for ever:
    # its leg of the cross is one order, done once.
    working = may_still_fill(tracker, now_ns)
    for symbol in sorted(_held_contracts(tracker)):
        contract = parse_option(symbol)
        if not contract.expired_by(now_ns) or symbol in working:
            continue
        before = _before_cross(tracker, symbol)
        longs = _in_order([(s, q) for s, q in before.items() if q > 0])
        shorts = _in_order([(s, -q) for s, q in before.items() if q < 0])
        if not longs or not shorts:
            continue
        outcome = outcomes.get(symbol)
        if outcome is None:
            if (
                broker_positions is None
                or broker_positions.get(symbol, ZERO) != 0
                or sum(before.values(), ZERO) != 0
            ):
                continue  # the broker has not settled it yet (or may still)
            outcome = "expired"
        crossed = min(sum((q for _, q in longs), ZERO), sum((q for _, q in shorts), ZERO))
        long_side, short_side = take_in_order(longs, crossed), take_in_order(shorts, crossed)
        legs: list[tuple[str | None, str, Side, Decimal, Decimal, Settlement]] = []
        if outcome == "expired":
            legs += [(s, "contracts", "buy", q, ZERO, "expired") for s, q in short_side]
            legs += [(s, "contracts", "sell", q, ZERO, "expired") for s, q in long_side]
        else:
            # A long call buys the shares, a long put sells them; the short
            # side does the other.
            receives: Side = "buy" if contract.right == "call" else "sell"
            delivers: Side = "sell" if receives == "buy" else "buy"
            # The strike as the broker's OPTRD writes it (600, not 600.000).
            strike, shares = Decimal(canon(contract.strike)), OPTION_MULTIPLIER
            legs += [(s, "shares", receives, q * shares, strike, "exercised") for s, q in long_side]
            legs += [(s, "shares", delivers, q * shares, strike, "assigned") for s, q in short_side]
            legs += [(s, "contracts", "buy", q, ZERO, "assigned") for s, q in short_side]
            legs += [(s, "contracts", "sell", q, ZERO, "exercised") for s, q in long_side]
        built: list[FillReceived] = []
        try:
            for strategy, leg, side, quantity, price, settled in legs:
                fill = _cross_fill(
                    tracker,
                    symbol if leg == "contracts" else contract.root,
                    strategy,
                    leg,
                    side,
                    quantity,
                    price,
                    settled,
                    contract.expires_at_ns,
                    cross_order_id(tracker.account, symbol, strategy, leg),
                )
                if fill is not None:
                    built.append(fill)
        except ValueError as e:
            log.warning("%s: the cross of %s not booked: %s", tracker.account, symbol, e)
            continue
        for event in built:
            tracker.evolve(event)
            out.append(event)
    return out


def _before_cross(tracker: OrderTracker, symbol: str) -> dict[str | None, Decimal]:
    """Each strategy's position in ``symbol`` as it was before its cross:
    what of the cross's contract legs is published taken back out."""
    out: dict[str | None, Decimal] = {}
    for (strategy, sym), quantity in tracker.positions.items():
        if sym != symbol:
            continue
        t = tracker.get(cross_order_id(tracker.account, symbol, strategy, "contracts"))
        if t is not None and t.filled > 0:
            quantity += t.filled if t.side == "sell" else -t.filled
        if quantity != 0:
            out[strategy] = quantity
    return out


def _in_order(slices: Slices) -> Slices:
    """Strategies in name order, no strategy last."""
    return sorted(slices, key=lambda sq: (sq[0] is None, sq[0] or ""))


def _cross_fill(
    tracker: OrderTracker,
    symbol: str,
    strategy: str | None,
    leg: str,
    side: Side,
    quantity: Decimal,
    price: Decimal,
    outcome: Settlement,
    ts_ns: int,
    order_id: uuid.UUID,
) -> FillReceived | None:
    """One strategy's leg of a cross, as one complete fill; None if published."""
    t = tracker.get(order_id)
    if t is not None and t.filled > 0:
        return None
    # Told apart from the broker's ids and from one another: the ledgers
    # and the risk-gate drop a fill whose ids they have seen.
    name = f"cross/{symbol}/{strategy or '-'}/{leg}"
    return tracker.fill_event(
        order_id,
        broker_order_id=name,
        fill_id=name,
        symbol=symbol,
        side=side,
        quantity=quantity,
        price=price,
        cumulative=quantity,
        leaves=ZERO,
        strategy=strategy,
        settlement=outcome,
        ts_ns=ts_ns,
    )


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
        #: The last read listed an exercise or assignment without its shares.
        self._shares_owed = False

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
            now_ns = w.clock.now_ns()
            due = held_expired(w.tracker, now_ns)
            forced = self._wanted.is_set() and read_after_connecting(w.tracker, now_ns)
            self._wanted.clear()
            if not forced and (not (due or self._shares_owed) or loop.time() < self._next_read_s):
                continue
            try:
                await self.read(due[0] if due else None)
            except BrokerError as e:
                log.warning("option settlements of %s not read: %s", w.account, e)
            if self._shares_owed or held_expired(w.tracker, w.clock.now_ns()):
                # The broker has not settled them yet (or listed an exercise's
                # shares): read again, less often.
                self._next_read_s = loop.time() + self._backoff_s
                self._backoff_s = min(self._backoff_s * 2, READ_MAX_S)
            else:
                self._backoff_s = TICK_S

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
        self._shares_owed = shares_owed(activities)
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
