"""Settling an option position at its contract's expiry, as a broker does.

At the close of its expiry day (16:00 New York, 13:00 on an NYSE half day:
``OptionContract.expires_at_ns``) a standard US equity option stops
trading, and overnight the broker settles every position in it by OCC's
exercise-by-exception rule: a contract at least $0.01 in the money
against the underlying's last trade at or before the close is exercised (a
long position) or assigned (a short one), anything else expires worthless.
An exercise or assignment delivers 100 shares of the underlying per
contract at the strike: an exercised call buys them, an exercised put sells
them; an assigned call sells them, an assigned put buys them.

The broker says so as Alpaca's *non-trade activities* for option events
(``GET /v2/account/activities``, activity types ``OPEXP``, ``OPEXC``,
``OPASN`` and ``OPTRD``): see :func:`settle`. Pure: the caller gives the
position, the underlying's price and the ids.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Literal

from libs.contract.events import OPTION_MULTIPLIER
from libs.contract.options import OptionContract
from services.paper_broker.domain.fill_model import WIDE

#: Alpaca's activity types of an option event: expired worthless, exercised
#: (a long position), assigned (a short one), and the trade of the
#: underlying an exercise or assignment makes.
ActivityType = Literal["OPEXP", "OPEXC", "OPASN", "OPTRD"]
OPTION_ACTIVITY_TYPES: tuple[ActivityType, ...] = ("OPEXP", "OPEXC", "OPASN", "OPTRD")
DESCRIPTIONS: dict[ActivityType, str] = {
    "OPEXP": "Option Expiry",
    "OPEXC": "Option Exercise",
    "OPASN": "Option Assignment",
    "OPTRD": "Option Trade",
}
#: OCC exercises by exception a contract at least this far in the money.
EXERCISE_THRESHOLD = Decimal("0.01")

Outcome = Literal["expired", "exercised", "assigned"]


@dataclass(frozen=True, slots=True)
class OptionActivity:
    """One non-trade activity of an option event, as Alpaca lists it.

    ``qty`` is signed as Alpaca signs it: for ``OPEXP``, ``OPEXC`` and
    ``OPASN`` the contracts taken out of the position (negative for a long
    one: ``OPEXC`` of 2 contracts is ``-2``; positive for a short one), for
    ``OPTRD`` the shares of the underlying bought (positive) or sold
    (negative). ``price`` is the strike, an ``OPTRD``'s only. ``net_amount``
    is the cash it moved (an ``OPTRD`` buying 200 shares at 150: ``-30000``).
    ``ts_ns`` is when the broker settled it: the order of the list and what
    ``after`` / ``until`` compare; ``date`` is the expiry date.
    """

    id: str
    account: str
    activity_type: ActivityType
    date: dt.date
    symbol: str
    qty: Decimal
    net_amount: Decimal
    ts_ns: int
    price: Decimal | None = None
    description: str = ""
    status: str = "executed"


def moneyness(contract: OptionContract, underlying: Decimal) -> Decimal:
    """How far ``contract`` is in the money at the underlying's ``underlying``
    (negative: out of it)."""
    if contract.right == "call":
        return WIDE.subtract(underlying, contract.strike)
    return WIDE.subtract(contract.strike, underlying)


def outcome(contract: OptionContract, position_qty: Decimal, underlying: Decimal | None) -> Outcome:
    """What happens at expiry to a position of ``position_qty`` contracts
    (negative: short) when the underlying last traded at ``underlying`` at or
    before the close: exercised (long) or assigned (short) if at least $0.01
    in the money, else expired worthless. Without a price of the underlying
    (None) nothing says it is in the money: it expires worthless."""
    if underlying is None or moneyness(contract, underlying) < EXERCISE_THRESHOLD:
        return "expired"
    return "exercised" if position_qty > 0 else "assigned"


def settle(
    *,
    account: str,
    symbol: str,
    contract: OptionContract,
    position_qty: Decimal,
    underlying: Decimal | None,
    now_ns: int,
    ids: Callable[[], str],
    note: str = "",
) -> tuple[OptionActivity, ...]:
    """The activities settling ``account``'s position of ``position_qty``
    contracts of ``symbol`` (``contract``): one ``OPEXP``, or an ``OPEXC`` /
    ``OPASN`` followed by its ``OPTRD`` of the underlying (``contract.root``)
    at the strike. ``note`` is added to the first one's description (why
    it expired without a price, say)."""
    result = outcome(contract, position_qty, underlying)
    # The contracts taken out of the position, signed as Alpaca does (copy_negate:
    # unary minus rounds to the default context's 28 digits, as * does below).
    removed = position_qty.copy_negate()
    kind: ActivityType = {"expired": "OPEXP", "exercised": "OPEXC", "assigned": "OPASN"}[result]  # type: ignore[assignment]
    description = DESCRIPTIONS[kind] + (f": {note}" if note else "")
    first = OptionActivity(
        id=ids(),
        account=account,
        activity_type=kind,
        date=contract.expiry,
        symbol=symbol,
        qty=removed,
        net_amount=Decimal(0),
        ts_ns=now_ns,
        description=description,
    )
    if result == "expired":
        return (first,)
    # A call delivers shares to its holder, a put takes them: a long call
    # (removed < 0) buys, a short call (removed > 0) sells; a put the reverse.
    strike = _plain(contract.strike)
    with localcontext(WIDE):  # see fill_model.WIDE
        shares = OPTION_MULTIPLIER * position_qty
        if contract.right == "put":
            shares = -shares
        net_amount = -shares * strike
    trade = OptionActivity(
        id=ids(),
        account=account,
        activity_type="OPTRD",
        date=contract.expiry,
        symbol=contract.root,
        qty=shares,
        net_amount=net_amount,
        ts_ns=now_ns,
        price=strike,
        description=DESCRIPTIONS["OPTRD"],
    )
    return (first, trade)


def _plain(value: Decimal) -> Decimal:
    """``value`` without trailing zeros (a strike of ``600.000``: ``600``)."""
    if value == value.to_integral_value():
        return value.quantize(Decimal(1))
    return value.normalize()
