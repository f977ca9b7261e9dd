"""Option contracts as tradebus names them: ``O:`` and the OCC symbol.

``O:SPY241220P00720000`` is SPY's put expiring 2024-12-20 with a strike of
720: after ``O:`` (Polygon's naming), the root (1 to 6 upper-case letters or
digits; an adjusted contract's root ends in a digit), the expiry as YYMMDD,
``C`` or ``P``, and the strike times 1000 in 8 digits. A symbol that starts
with ``O:`` and does not parse so names no contract: the event contract
refuses it (``envelope.Symbol``), rather than take it for an option no feed
quotes and no broker knows.

A contract expires at the close of its expiry day's regular session, read
from the exchange calendar (``sessions.py``, exchange-calendars' ``XNYS``):
16:00 New York on a full day, 13:00 on an NYSE half day (the day after
Thanksgiving has weekly contracts expiring). Expiries from 2000 to 2040 are
read from the committed table (``xnys_table.py``), without importing the
library; a service that asks on its order path calls :func:`warm_calendar`
at start-up, which imports and builds the library only if the table does not
reach the farthest listed expiry.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Context, Decimal
from typing import Literal, NamedTuple

from libs.contract import sessions

OPTION_PREFIX = "O:"
#: The exchange's time zone: an option's last trading day ends in it.
EXCHANGE_TZ = sessions.NEW_YORK
#: The close of a full trading day (New York time): an expiry day's close
#: where the calendar has no session that day (a holiday: no contract expires
#: then) or exchange-calendars is not installed past the table
#: (``sessions.xnys_session``: every service that trades options has it in
#: its extra and warms it).
EXPIRY_CLOSE = sessions.REGULAR_CLOSE
#: The exchange calendar (exchange-calendars' code) an expiry day's close is
#: read from (``sessions.xnys_session``): US equity and ETF options stop
#: trading with the NYSE, at its 13:00 early closes too.
EXPIRY_CALENDAR = sessions.XNYS
#: How far ahead :func:`warm_calendar` makes sure the calendar answers:
#: listed LEAPS expire up to about three years out.
_WARM_AHEAD = dt.timedelta(days=4 * 366)

#: The OCC roots of the cash-settled index options tradebus knows (the S&P
#: 500's, weeklies and mini, the Nasdaq-100's, the Russell 2000's and mini,
#: VIX's, the Dow's, the S&P 100's): an exercise or an assignment pays cash,
#: it delivers no shares.
CASH_SETTLED_ROOTS = frozenset(
    {"SPX", "SPXW", "XSP", "NDX", "NDXP", "RUT", "RUTW", "MRUT", "VIX", "VIXW", "DJX", "OEX", "XEO"}
)

#: US listed options' ticks (minimum price variations) by price level,
#: coarsest first: under $3, 0.05 (0.01 for the penny-program classes); from
#: $3, 0.10 (0.05 for the penny-program classes, 0.01 for SPY, QQQ and IWM).
_TICKS_UNDER_3 = (Decimal("0.05"), Decimal("0.01"))
_TICKS_FROM_3 = (Decimal("0.10"), Decimal("0.05"), Decimal("0.01"))
_THREE = Decimal(3)
_PENNY = Decimal("0.01")
#: The roots whose contracts trade in pennies at every price.
_PENNY_AT_EVERY_PRICE = frozenset({"SPY", "QQQ", "IWM"})
#: A price's 26 whole digits over 0.01 already take all 28 of the default context.
_WIDE = Context(prec=60)

_OCC = re.compile(r"([A-Z0-9]{1,6})([0-9]{6})([CP])([0-9]{8})")
_FORMAT = (
    "O: and the OCC symbol, e.g. O:SPY241220P00720000 (a root of 1 to 6 upper-case "
    "letters or digits, the expiry YYMMDD, C or P, the strike x 1000 in 8 digits)"
)


@dataclass(frozen=True, slots=True)
class OptionContract:
    """What an option symbol names."""

    root: str
    expiry: dt.date
    right: Literal["call", "put"]
    strike: Decimal

    @property
    def expires_at_ns(self) -> int:
        """The close of its expiry day's regular session (:func:`expiry_close`:
        13:00 New York on a half day, else 16:00), in nanoseconds since the
        epoch: from then on it no longer trades."""
        return expiry_close(self.expiry).at_ns

    def expired_by(self, now_ns: int) -> bool:
        """Whether it has expired at ``now_ns`` (from :attr:`expires_at_ns`
        on): no venue takes an order in it, a close included, and the broker
        settles a position in it."""
        return now_ns >= self.expires_at_ns

    @property
    def expired_text(self) -> str:
        """When it expires, as every message says it: ``expired at the close
        of 2024-12-20 (16:00 New York)``, ``(13:00 New York)`` on a half day."""
        return f"expired at the close of {self.expiry} ({expiry_close(self.expiry).text} New York)"

    @property
    def unsupported(self) -> str | None:
        """Why tradebus cannot settle it, or None. Every settlement (the
        paper broker's, the broker-gateway's and its cross) books an
        exercise or an assignment as 100 shares of the root at the strike:
        wrong for a cash-settled index option, which delivers none, and for
        an adjusted contract (an OCC root ending in a digit, ``SPY1``), whose
        deliverable is whatever the adjustment made it. The risk-gate denies
        an order that opens or adds to a position in one
        (``contract_unsupported``), the SDK refuses it at the emit and
        config check a strategy listing it."""
        if self.root in CASH_SETTLED_ROOTS:
            why = f"{self.root} options are cash-settled: an exercise or assignment pays cash"
        elif self.root[-1].isdigit():
            why = (
                f"an adjusted contract (its root {self.root} ends in a digit) delivers what "
                f"its adjustment made it"
            )
        else:
            return None  # asked at every option intent: nothing built
        return f"{why}, where tradebus would book 100 shares of {self.root} at the strike"


class ExpiryClose(NamedTuple):
    """An expiry day's close: in ns since the epoch, and as New York's ``HH:MM``."""

    at_ns: int
    text: str


# Asked at every intent and event of a contract (OptionContract is a frozen,
# slotted dataclass: no cached_property), so once per expiry day.
@functools.lru_cache(maxsize=4096)
def expiry_close(expiry: dt.date) -> ExpiryClose:
    """The close of ``expiry``'s regular session on :data:`EXPIRY_CALENDAR`
    (13:00 New York on a half day); :data:`EXPIRY_CLOSE` on a day without a
    session, or without exchange-calendars installed past the table."""
    session = sessions.xnys_session(expiry)
    close_ns = sessions.new_york_ns(expiry, EXPIRY_CLOSE) if session is None else session.close_ns
    return ExpiryClose(close_ns, f"{sessions.new_york_time(close_ns):%H:%M}")


def warm_calendar() -> None:
    """Make sure :data:`EXPIRY_CALENDAR` answers through the farthest listed
    expiry without an import or a build on the order path, for a service to
    call at start-up. Nothing to do while the committed table reaches that
    far (``sessions.TABLE_LAST``); past it, exchange-calendars is imported
    and built (about 0.5 s), and
    :class:`~libs.contract.sessions.CalendarError` if it is not installed
    (without it every expiry past the table would be at 16:00)."""
    sessions.check(EXPIRY_CALENDAR, through=dt.datetime.now(dt.UTC).date() + _WARM_AHEAD)


@functools.lru_cache(maxsize=4096)  # asked for at every event and intent of a contract
def parse_option(symbol: str) -> OptionContract:
    """The contract ``symbol`` (``O:`` + OCC symbol) names; ValueError saying
    what is wrong when it names none."""
    if not symbol.startswith(OPTION_PREFIX):
        raise ValueError(f"{symbol} is not an option symbol: {_FORMAT}")
    m = _OCC.fullmatch(symbol, len(OPTION_PREFIX))
    if m is None:
        raise ValueError(f"{symbol} is not an option symbol: {_FORMAT}")
    root, yymmdd, right, strike = m.groups()
    try:
        # OCC's two-digit year is this century's: 991217 is 2099-12-17.
        expiry = dt.date(2000 + int(yymmdd[:2]), int(yymmdd[2:4]), int(yymmdd[4:]))
    except ValueError:
        raise ValueError(
            f"{symbol} is not an option symbol: its expiry {yymmdd} is not a date (YYMMDD)"
        ) from None
    if int(strike) == 0:
        raise ValueError(f"{symbol} is not an option symbol: its strike is 0")
    return OptionContract(
        root=root,
        expiry=expiry,
        right="call" if right == "C" else "put",
        strike=Decimal(strike).scaleb(-3),
    )


def option_symbol(value: str) -> str:
    """``value`` as it is, if it is no ``O:`` symbol or a contract's; a
    ValueError saying what is wrong with an ``O:`` symbol that names none."""
    if value.startswith(OPTION_PREFIX):
        parse_option(value)
    return value


def option_tick(symbol: str, price: Decimal, quoted: Iterable[Decimal] = ()) -> Decimal:
    """The tick of ``symbol``'s contract at ``price``, as far as tradebus can
    tell: the one rule of marketdata's marks and the risk-gate's price band.

    SPY's, QQQ's and IWM's contracts (by the OCC root: not an adjusted
    contract's, nor SPX's) trade in 0.01 at every price. Nothing lists the
    other penny-program classes (0.01 under $3, 0.05 from $3), so any other
    contract is given the coarsest tick of ``price``'s level (0.05 under $3,
    0.10 from $3) on whose grid every ``quoted`` price is, else 0.01: with no
    prices (the gate has no quote in hand) the coarsest; a quote in pennies
    (0.02 x 0.10) shows a penny class's, held to 0.01, while one on the
    nickel grid (0.05 x 0.10) may be either's and is given the nickel.
    """
    if parse_option(symbol).root in _PENNY_AT_EVERY_PRICE:
        return _PENNY
    ladder = _TICKS_FROM_3 if price >= _THREE else _TICKS_UNDER_3
    prices = tuple(quoted)
    for tick in ladder:
        if all(not _WIDE.remainder(p, tick) for p in prices):
            return tick
    return ladder[-1]


def underlyings(symbols: Iterable[str]) -> tuple[str, ...]:
    """The roots of the option contracts among ``symbols`` that are not among
    them themselves, sorted: the symbols whose shares an exercise or an
    assignment of those contracts delivers (the broker-gateway books them
    under the root). A ``O:`` symbol that names no contract: ValueError."""
    held = set(symbols)
    roots = {parse_option(s).root for s in held if s.startswith(OPTION_PREFIX)}
    return tuple(sorted(roots - held))
