"""The internal cross of an option contract past its expiry that strategies
of one account hold against each other.

Strategies holding opposite positions in one contract: the broker holds
and settles only the account's net (s1 long 3 and s2 short 1 is 2 there; s1
long 2 and s2 short 2 is nothing, and no activity). Once the broker has
settled the contract, the offsetting part is settled here as an internal
cross, :func:`cross_events`: as the broker settled the net (both sides at 0
for an expiry; the long side exercising into shares at the strike and the
short side assigned for an exercise or assignment), or, with no activity and
no position at the broker, closed at 0 as expired; not while an order in the
contract may still fill. No net change to the account.

Pure and synchronous, as :mod:`services.broker_gateway.domain.settlement`,
whose fills of the same read come first.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal

from libs.contract.codec import derived_id
from libs.contract.envelope import Event
from libs.contract.events import OPTION_MULTIPLIER, FillReceived, Settlement, Side
from libs.contract.options import parse_option
from services.broker_gateway.domain.model import BrokerActivity
from services.broker_gateway.domain.settlement import (
    OUTCOMES,
    ZERO,
    Slices,
    held_contracts,
    holders_text,
    may_still_fill,
)
from services.broker_gateway.domain.tracked import canon, take_in_order
from services.broker_gateway.domain.tracker import OrderTracker

log = logging.getLogger(__name__)


def cross_order_id(account: str, symbol: str, strategy: str | None, leg: str) -> uuid.UUID:
    """The order id of one strategy's leg (``contracts`` or ``shares``) of
    the cross of ``symbol`` (see :func:`cross_events`)."""
    return derived_id("broker.cross", account, symbol, strategy or "-", leg)


def crossing(tracker: OrderTracker, now_ns: int) -> bool:
    """Whether a contract past its expiry is held long by one strategy and
    short by another: :func:`cross_events` needs the broker's positions."""
    for symbol in held_contracts(tracker):
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
      restart is finished as it began; an exercise's also when the next
      read no longer lists the activity (:func:`_begun`).
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
    for symbol in sorted(held_contracts(tracker)):
        contract = parse_option(symbol)
        if not contract.expired_by(now_ns) or symbol in working:
            continue
        before = _before_cross(tracker, symbol)
        longs = _in_order([(s, q) for s, q in before.items() if q > 0])
        shorts = _in_order([(s, -q) for s, q in before.items() if q < 0])
        if not longs or not shorts:
            continue
        outcome = outcomes.get(symbol) or _begun(tracker, symbol, before)
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
        if outcome == "expired" and symbol not in outcomes and built:
            _said_at_0(tracker, symbol, before)
        for event in built:
            tracker.evolve(event)
            out.append(event)
    return out


def _said_at_0(tracker: OrderTracker, symbol: str, before: Mapping[str | None, Decimal]) -> None:
    """Warn that the net-0 cross of ``symbol`` is closed at 0 with nothing
    to tell whether it ended in the money: that needs the underlying's
    price at the expiry's close, which the gateway does not have (the
    strike would price the shares, not decide whether they are delivered)."""
    contract = parse_option(symbol)
    held = holders_text(before.items())
    above = "above" if contract.right == "call" else "below"
    log.warning(
        "%s: %s crossed at 0 as expired (%s): the broker held none and lists no settlement, "
        "and nothing here tells whether it ended in the money (%s closing %s the %s strike); "
        "if it did, the long side was owed the intrinsic value by the short side, 100 %s "
        "shares a contract delivered at the strike, which this booking lacks (the account's "
        "total is the same)",
        tracker.account,
        symbol,
        held,
        contract.root,
        above,
        canon(contract.strike),
        contract.root,
    )


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


def _begun(
    tracker: OrderTracker, symbol: str, before: Mapping[str | None, Decimal]
) -> Settlement | None:
    """How the cross of ``symbol`` that a restart cut short began, for a read
    that no longer lists the broker's activity: an exercise (or assignment)
    once one of its shares legs is published (they come first); None if
    none is (not begun, or an expiry, which has no shares: the positions
    decide, as for one not begun). Made ``expired`` from the positions, the
    rest of an exercise's cross sold the long side's contracts as expired,
    and cut after the long side's shares, the short side's were never
    delivered."""
    for strategy in before:
        t = tracker.get(cross_order_id(tracker.account, symbol, strategy, "shares"))
        if t is not None and t.filled > 0:
            return "exercised"
    return None


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
