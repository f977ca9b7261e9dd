"""Option settlements as fills: the broker's activities in, ``FillReceived`` out.

Pure and synchronous: the account's :class:`OrderTracker` and the activities
read in, the fills not published yet out, each taken in by the tracker as it
is made. ``services/broker_gateway/settlement.py`` reads the activities and
publishes the fills (see there what the broker does at an expiry, and when
it is read); the offsetting part of strategies holding opposite positions in
a contract is settled by :func:`services.broker_gateway.domain.cross.cross_events`.

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
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from libs.contract.codec import derived_id
from libs.contract.envelope import Event
from libs.contract.events import (
    OPTION_MULTIPLIER,
    OPTION_PREFIX,
    FillReceived,
    Settlement,
    Side,
)
from libs.contract.options import parse_option
from services.broker_gateway.domain.model import BrokerActivity
from services.broker_gateway.domain.tracked import canon
from services.broker_gateway.domain.tracker import OrderTracker

log = logging.getLogger(__name__)

ZERO = Decimal(0)
OUTCOMES: dict[str, Settlement] = {"OPEXP": "expired", "OPEXC": "exercised", "OPASN": "assigned"}

Slices = list[tuple[str | None, Decimal]]
#: An ``OPTRD``'s (underlying, shares, price): its exercise's or
#: assignment's (root, 100 shares a contract, strike).
TradeKey = tuple[str, Decimal, Decimal | None]


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


def owed_shares(activities: Sequence[BrokerActivity]) -> list[BrokerActivity]:
    """The exercises and assignments ``activities`` (a read's) list without
    their ``OPTRD`` (matched as :func:`settlement_events` does: root,
    shares, strike; listed before or after it; of several alike, the last
    listed are owed): their shares are owed, and a later read lists them.
    The read reaches back a week (``READ_BACK``), so one the broker never
    lists the trade of stops being read once it is older (the settlement
    task gives it up, said, before: ``services/broker_gateway/settlement.py``)."""
    exercises: dict[TradeKey, list[BrokerActivity]] = {}
    trades: Counter[TradeKey] = Counter()
    for a in activities:
        if a.quantity == 0:
            continue
        if a.activity_type in ("OPEXC", "OPASN"):
            try:
                contract = parse_option(a.symbol)
            except ValueError:
                continue  # booked by nobody (said when read)
            key = (contract.root, abs(a.quantity) * OPTION_MULTIPLIER, contract.strike)
            exercises.setdefault(key, []).append(a)
        elif a.activity_type == "OPTRD" and a.price is not None and a.price > 0:
            trades[_key(a)] += 1
    return [a for key, listed in exercises.items() for a in listed[trades[key] :]]


def holders_text(holdings: Iterable[tuple[str | None, Decimal]]) -> str:
    """``holdings`` ((strategy, signed quantity)) as the operator is told
    them: strategies in name order, no strategy last ("s1 +2, s2 -2")."""
    ordered = sorted(holdings, key=lambda sq: (sq[0] is None, sq[0] or ""))
    return ", ".join(f"{s or 'no strategy'} {q:+}" for s, q in ordered)


@dataclass(frozen=True, slots=True)
class Unsettled:
    """A settlement the broker has not listed yet: of a contract the account
    holds past its expiry, or the shares of an exercise or assignment
    listed without them."""

    #: The contract.
    symbol: str
    #: Its expiry (``OptionContract.expires_at_ns``): how long it has waited.
    expires_ns: int
    #: What is unsettled, as the operator is told.
    what: str


def unsettled(
    tracker: OrderTracker, owed: Sequence[BrokerActivity], now_ns: int
) -> list[Unsettled]:
    """What the broker has not settled of the account's options by ``now_ns``:
    each contract held (by the published fills) past its expiry, and the
    shares of each exercise or assignment in ``owed`` (:func:`owed_shares`
    of the last read). Oldest expiry first."""
    out: list[Unsettled] = []
    for symbol in held_contracts(tracker):
        contract = parse_option(symbol)
        if not contract.expired_by(now_ns):
            continue
        held = holders_text(
            (strategy, quantity)
            for (strategy, sym), quantity in tracker.positions.items()
            if sym == symbol and quantity != 0
        )
        what = f"{symbol} held ({held}) {contract.expired_text}, and the broker lists no settlement"
        out.append(Unsettled(symbol, contract.expires_at_ns, what))
    for a in owed:
        contract = parse_option(a.symbol)
        shares = abs(a.quantity) * OPTION_MULTIPLIER
        what = (
            f"{shares} {contract.root} shares at {canon(contract.strike)} of the "
            f"{OUTCOMES[a.activity_type]} {a.symbol} (activity {a.activity_id}): "
            f"the broker lists no OPTRD for them"
        )
        out.append(Unsettled(a.symbol, contract.expires_at_ns, what))
    return sorted(out, key=lambda u: (u.expires_ns, u.what))


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


def held_contracts(tracker: OrderTracker) -> set[str]:
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
    return bool(held_contracts(tracker))


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
        and _expired_lately(t.symbol, now_ns)
        for t in tracker.orders.values()
    )


def _expired_lately(symbol: str, now_ns: int) -> bool:
    """Whether the contract ``symbol`` expired in the :data:`LATELY_NS` up to
    ``now_ns``: expired by then, and not yet that long before."""
    contract = parse_option(symbol)
    return contract.expired_by(now_ns) and not contract.expired_by(now_ns - LATELY_NS)


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
    for symbol in held_contracts(tracker):
        contract = parse_option(symbol)
        if contract.expired_by(now_ns):
            dates.add(contract.expiry)
    return sorted(dates)
