"""Opening and closing auction orders (time in force ``opg`` and ``cls``).

Pure: which auction an order placed at a given time takes part in (or that
it is refused), and which print of the feed stands for that auction. The
book (``book.py``) holds the orders and calls these; the fill model
(``fill_model.on_auction``) says whether and at what price one fills.

Alpaca's rules (its time-in-force table), which the paper broker follows,
all in New York time (``EXCHANGE_TZ``), with the exchange's sessions
(``new_york.regular_session``: none on a weekend or a holiday, a 13:00
close on an NYSE half day):

- ``opg`` (market or limit on open) takes part in the opening auction only.
  Placed before 09:28 (two minutes before the open) on a day with a session
  it is for that day's open; from 09:28 to 19:00 it is refused; from 19:00
  on, or on a day without a session, it is for the next session's open.
  Nor is one canceled (or replaced) from 09:28 on its session's day until
  its auction settles it: the opening auction has it (:func:`cancel_refusal`).
- ``cls`` (market or limit on close) takes part in the closing auction only.
  Placed before 15:50 (ten minutes before the close) on a day with a
  session it is for that day's close; from then to 19:00 it is refused;
  from 19:00 on, or on a day without a session, it is for the next
  session's close. On a half day the cutoff is 12:50, ten minutes before
  its 13:00 close: Alpaca documents 15:50 only ("CLS orders submitted
  after 3:50pm but before 7:00pm ET will be rejected"), and the exchange's
  closing auction takes on-close orders until ten minutes before its close,
  so an order between 12:50 and 15:50 would be for an auction that has
  stopped taking orders or has already run. Nor is one canceled from its
  cutoff until its auction settles it: the exchanges make on-close orders
  irrevocable from their cutoff (Nasdaq's 15:50).

The feed has no auction prints, so a print stands for each auction, in the
feed's time:

- the open: the session's first print at or after 09:30: a trade's price,
  or the open of a bar that began at or after 09:30 (the 09:30 minute bar's
  open) if a bar comes first; a print at or after the session's close is
  another session's and stands for nothing;
- the close: the session's last print at or before its close (16:00, 13:00
  on a half day): the last trade at or before it, or the close of a bar
  that ended by then (the 15:59 minute bar's), known once a print after the
  close comes, or, failing one, when the broker's clock reaches the close
  plus :data:`AUCTION_WAIT_NS` (the last print then, if it is of the
  session's regular hours, 09:30 to the close).

An order whose auction has no such print by its auction time plus
:data:`AUCTION_WAIT_NS` (the broker's clock) expires: a print that reaches
the broker later is too late for it.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from decimal import Decimal

from libs.contract import sessions
from services.paper_broker.domain.fill_model import MarketUpdate
from services.paper_broker.domain.new_york import new_york, next_session, regular_session

AUCTIONS: frozenset[str] = frozenset({"opg", "cls"})

#: Alpaca refuses an ``opg`` order from two minutes before the open (09:28),
#: a ``cls`` order from ten minutes before the close (15:50; 12:50 on a half
#: day), until 19:00, when it takes them for the next session: how long
#: before its auction each cutoff is.
CUTOFF_BEFORE_NS: dict[str, int] = {"opg": 2 * 60_000_000_000, "cls": 10 * 60_000_000_000}
NEXT_SESSION_FROM = dt.time(19, 0)
#: How long after its auction (by the broker's clock) an order waits for the
#: print that stands for it: a one-minute bar comes when it ends, a few
#: seconds after, so the 09:30 bar (or the 15:59 one) is in by then.
AUCTION_WAIT_NS = 120 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class Session:
    """A regular session's open and close, in ns since the epoch."""

    open_ns: int
    close_ns: int

    def auction_ns(self, tif: str) -> int:
        """The time of the order's auction: the open for ``opg``, else the close."""
        return self.open_ns if tif == "opg" else self.close_ns

    def cutoff_ns(self, tif: str) -> int:
        """From when an order of ``tif`` for this session's auction is refused."""
        return self.auction_ns(tif) - CUTOFF_BEFORE_NS[tif]


def session_for(placed_ns: int, tif: str) -> Session | None:
    """The session whose auction an order of ``tif`` placed at ``placed_ns``
    takes part in; None: refused at that time (see the module's docstring)."""
    return _session_for(placed_ns // 1_000_000_000, tif)


@functools.lru_cache(maxsize=64)
def _session_for(placed_s: int, tif: str) -> Session | None:
    placed = new_york(placed_s)
    day = placed.date()
    today = _session(day)
    if today is not None:
        if placed_s * 1_000_000_000 < today.cutoff_ns(tif):
            return today
        if placed.time() < NEXT_SESSION_FROM:
            return None
    return _auctions(next_session(day))


def _session(day: dt.date) -> Session | None:
    s = regular_session(day)
    return None if s is None else _auctions(s)


def _auctions(s: sessions.Session) -> Session:
    return Session(s.open_ns, s.close_ns)


def _hhmm(ns: int) -> str:
    return f"{sessions.new_york_time(ns):%H:%M}"


def refusal(tif: str, placed_ns: int) -> str:
    """Why an order of ``tif`` placed at ``placed_ns`` is refused (Refused's
    message): the day's cutoff, 12:50 for ``cls`` on a half day."""
    auction = "opening" if tif == "opg" else "closing"
    today = _session(sessions.new_york_time(placed_ns).date())
    # Refused only on a day with a session (see _session_for).
    cutoff = "its cutoff" if today is None else _hhmm(today.cutoff_ns(tif))
    return (
        f"time_in_force {tif} is not accepted from {cutoff} to "
        f"{NEXT_SESSION_FROM:%H:%M} New York: the {auction} auction takes no more "
        f"orders (from {NEXT_SESSION_FROM:%H:%M} on, an order is for the next session's)"
    )


def cancel_refusal(tif: str, session: Session, now_ns: int) -> str | None:
    """Why an order of ``tif`` for ``session``'s auction cannot be canceled
    at ``now_ns`` (Refused's message); None: it can. From its cutoff (09:28
    for the open, 15:50 for the close, 12:50 on a half day) the auction has
    it, until the book settles it at its print or expires it: Alpaca refuses
    to cancel an ``opg`` order from 09:28, and the exchanges make on-close
    orders irrevocable from their cutoff (Nasdaq's 15:50)."""
    if now_ns < session.cutoff_ns(tif):
        return None
    auction = "opening" if tif == "opg" else "closing"
    return (
        f"order is not cancelable (time_in_force {tif}, from {_hhmm(session.cutoff_ns(tif))} "
        f"New York: the {auction} auction at {_hhmm(session.auction_ns(tif))} has it)"
    )


def opening_print(session: Session, update: MarketUpdate) -> Decimal | None:
    """The opening auction's price if ``update`` is a print of the session's
    regular hours (a trade at or after the open, a bar that began at or after
    it; before the close): a trade's price, a bar's open. The book takes the
    first such print."""
    at = update.ts_ns if update.kind == "trade" else update.start_ns
    if not session.open_ns <= at < session.close_ns:
        return None
    return update.open  # a trade's open is its price


def closing_print(session: Session, last: Decimal | None, last_ns: int) -> Decimal | None:
    """The closing auction's price once the session has closed, given the
    symbol's last price and its time before anything after the close: that
    price if it is of the session's regular hours (09:30 to its close included),
    else None (no print of the session stands for its close)."""
    if last is None or not session.open_ns <= last_ns <= session.close_ns:
        return None
    return last
