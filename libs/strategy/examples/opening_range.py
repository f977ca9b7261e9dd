"""Opening-range breakout, in exchange time (America/New_York by default).

Each trading day, the high and low of the bars that start in the first
``range_minutes`` after ``session_open`` form the opening range. After it,
the first bar that closes above the range high goes long ``quantity``; below
the range low, short (with ``allow_short``). Once in, the opposite side of the
range is the stop (exit to flat; with no range today, a position held is
exited at once), and everything is flattened from
``flatten_at`` on, by the first bar that ends at or after it.

At most ``max_entries`` entries per symbol per day. Today's entries are its
own: the ``orb_breakout`` signals it sent since today's ``session_open``
(``ctx.orders(symbol, since_ns=...)``, by the strategy's clock), each counted
when sent, denied, rejected or canceled ones included. When its history is
not complete from today's open (``ctx.orders_complete_since_ns`` after it: a
restart whose rebuild window, ``TRADEBUS_REBUILD_FINISHED_S``, ends after the
open, or a runner that does not rebuild started after it, or the history's
cap dropped one of today's orders) it cannot count them, and counts
``max_entries``: no entry more in that symbol that day (a warning says so,
once a day); a position held is still stopped and flattened.

A position held is today's entry when an ``orb_breakout`` order of today in that symbol, on the
position's side, has something filled or is still working (an entry in
flight: closing it, a sell against a buy then canceled would leave it
short); otherwise it is an earlier day's whose flatten no bar reached (a
symbol with no trade in the session's last minutes gets no bar): it is
closed by the first bar from ``session_open`` on, not held through the range
without a stop (``CARRIED``).

That history is the same live, in a backtest and after a restart of the
strategy-runner (rebuilt from the store), so a restart changes neither the
count nor the judgment, whatever bars the warm-up is shown; the warm-up
(a session's bars) only rebuilds today's range. A breakout the warm-up's
bars show but that was never sent (the runner was down then) is no entry:
it may enter at its first live bar. After a restart the history holds what
the runner read back: every chain with an order working, and those with an
event within ``TRADEBUS_REBUILD_FINISHED_S`` (7 days). With that set shorter
than the time since today's open, it cannot know today's entries and makes
none more today (above); entries the store lost are not counted. Either way,
where the history holds no order of a position's side in its symbol at all
(nothing it could have been opened by), the position is judged by its open
time instead (``Position.opened_ns``, from the range's end less 5 s of clock
skew: today's entry, counted; earlier: carried; not known: closed, its reason
saying it cannot tell), logged once a day. That time is the broker's (the
gateway's when it gives none), and may be a day off; an order's is the
strategy's own clock's when it sent it.

On a day the exchange closes early (``calendar``, the NYSE's ``XNYS`` by
default: 13:00 the day after Thanksgiving, on Christmas Eve, on July 3) the
flatten comes as long before that close as ``flatten_at`` is before the
full-day close: 12:55 for 15:55, whose bar would never come, the position
held overnight and, the next morning, without a stop until the new range
forms. On a day the exchange does not trade (only synthetic data has bars
then) and with ``calendar: null``, ``flatten_at`` stands. The day is the
bar's date in ``timezone``, the calendar's session date when the two zones
agree.

Times are read from the bars' own ``start_ns`` (``end_ns`` for the flatten)
converted with ``zoneinfo``, never from a clock, so daylight saving and
replayed history both work; only the orders' ``created_ns`` is the clock's
(the wall clock live, the market time in a backtest).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from decimal import Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from libs.contract import sessions
from libs.contract.envelope import CLOCK_SKEW_NS
from libs.strategy.base import Bar, ParamError, Strategy, StrategyParams
from libs.strategy.context import Direction
from libs.strategy.examples._common import OrderQuantity, exposure, trade_to

log = logging.getLogger(__name__)

NS = 1_000_000_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: The signal each entry is sent under: today's entries are today's orders it caused.
ENTRY = "orb_breakout"
#: Why a position held with no entry of today's is closed.
CARRIED = "held from an earlier day (no bar reached its flatten): closed at the open"


class OpeningRangeParams(StrategyParams):
    range_minutes: int = Field(default=15, ge=1, le=240)
    quantity: OrderQuantity = Decimal(100)
    session_open: dt.time = dt.time(9, 30)
    flatten_at: dt.time = dt.time(15, 55)
    timezone: str = "America/New_York"
    allow_short: bool = True
    max_entries: int = Field(default=1, ge=1, le=100)
    #: The exchange calendar (exchange-calendars code) whose early closes move
    #: the flatten; None: flatten_at every day.
    calendar: str | None = "XNYS"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ValueError(f"unknown time zone {value!r}") from e
        return value

    @field_validator("calendar")
    @classmethod
    def _calendar(cls, value: str | None) -> str | None:
        return None if value is None else sessions.check(value)

    @field_validator("session_open", "flatten_at")
    @classmethod
    def _local(cls, value: dt.time) -> dt.time:
        # Compared with the bars' naive local times: an offset is a TypeError there.
        if value.tzinfo is not None:
            raise ValueError("must be a time in the strategy's timezone, without an offset")
        return value

    @model_validator(mode="after")
    def _times(self) -> OpeningRangeParams:
        if self.flatten_at <= self.range_end:
            raise ParamError(
                "flatten_at", f"must be after the opening range ends ({self.range_end:%H:%M})"
            )
        return self

    @property
    def range_end(self) -> dt.time:
        start = dt.datetime.combine(dt.date(2000, 1, 3), self.session_open)
        return (start + dt.timedelta(minutes=self.range_minutes)).time()


@dataclass(slots=True)
class _Day:
    date: dt.date
    #: Flat from a bar ending here on: flatten_at, earlier on an early close.
    flatten_ns: int
    flatten_reason: str
    #: The session's open: today's orders are those created from here on.
    open_ns: int
    #: The opening range's end: entries are made on bars from here on.
    range_end_ns: int
    high: Decimal | None = None
    low: Decimal | None = None
    #: Today's entries, toward max_entries: read from the order history the
    #: first time it may enter today, then counted as it sends them (the
    #: history holds each one sent, so the two agree). None: not read yet.
    entries: int | None = None
    #: The position now held is today's entry (judged once while it is held).
    entered: bool = False
    #: That a position was judged by its open time (no order of it in the
    #: history) was said (logged) today.
    said_unknown: bool = False


class OpeningRangeBreakout(Strategy[OpeningRangeParams]):
    """Trade the break of the first minutes' range; stop at the other side; flat by the close."""

    @classmethod
    def warmup_bars(cls, params: OpeningRangeParams) -> int:
        """A session's minutes, from the open to the flatten time: today's range."""
        day = dt.date(2000, 1, 3)
        start = dt.datetime.combine(day, params.session_open)
        end = dt.datetime.combine(day, params.flatten_at)
        return int((end - start).total_seconds()) // 60

    @classmethod
    def warmup_bars_for(cls, params: OpeningRangeParams, bar_interval: str | None) -> int:
        """A session's bars: its minutes, times 60 for 1-second bars (61 when
        every interval is shown), or the range would be rebuilt from its last
        seconds only."""
        per_minute = {"1m": 1, "1s": 60}.get(bar_interval or "", 61)
        return cls.warmup_bars(params) * per_minute

    def on_start(self) -> None:
        self._zone = ZoneInfo(self.params.timezone)
        self._days: dict[str, _Day] = {}

    def on_warmup(self, bar: Bar) -> None:
        # Today's range only. What it sent today (its entries, and so whether
        # a position held is one of them) is in its order history, the same
        # after a restart; the bars shown may miss some, or show breakouts
        # it never sent while the runner was down.
        day, t = self._today(bar)
        if self.params.session_open <= t < self.params.range_end and bar.end_ns < day.flatten_ns:
            self._widen(day, bar)

    def on_bar(self, bar: Bar) -> None:
        p = self.params
        day, t = self._today(bar)
        if t < p.session_open:
            return
        held = exposure(self.ctx, bar.symbol)
        if held == 0:
            day.entered = False
        # Flat from the flatten on, judged by the bar's end: it is handled when
        # it closes. By its start, a 16:00 flatten with no bar after the close
        # (the last starts 15:59) never came and the position was held overnight.
        # Before the range: on an early close the flatten may come inside it.
        if bar.end_ns >= day.flatten_ns:
            if held != 0:
                self._go(bar, Decimal(0), "orb_flatten", "flat", day.flatten_reason)
            return
        if t < p.range_end:
            self._widen(day, bar)
            # Held with no entry today: carried in from an earlier day whose
            # flatten no bar reached (a symbol with no trade in the last
            # minutes gets no bar), held without a stop through the range.
            carried = self._carried(bar, day, held) if held != 0 else None
            if carried is not None:
                self._go(bar, Decimal(0), "orb_flatten", "flat", carried)
            return
        if day.high is None or day.low is None:
            # No opening range today (data started late): no entry, and no
            # stop for a position held (one a past flatten did not close),
            # so it is closed rather than held unprotected until flatten_at.
            if held != 0:
                self._go(bar, Decimal(0), "orb_stop", "flat", "no opening range today to stop at")
            return
        if held != 0:
            # Not kept as if it were today's breakout, stopped on a range it
            # was not entered on.
            carried = self._carried(bar, day, held)
            if carried is not None:
                self._go(bar, Decimal(0), "orb_flatten", "flat", carried)
            elif held > 0 and bar.close < day.low:
                self._go(bar, Decimal(0), "orb_stop", "flat", f"close {bar.close} < range low")
            elif held < 0 and bar.close > day.high:
                self._go(bar, Decimal(0), "orb_stop", "flat", f"close {bar.close} > range high")
            return
        direction: Direction
        if bar.close > day.high:
            target, direction = p.quantity, "long"
            reason = f"close {bar.close} > range high {day.high}"
        elif bar.close < day.low and p.allow_short:
            target, direction = -p.quantity, "short"
            reason = f"close {bar.close} < range low {day.low}"
        else:
            return
        if self._entries(bar.symbol, day) < p.max_entries and self._go(
            bar, target, ENTRY, direction, reason
        ):
            day.entries = self._entries(bar.symbol, day) + 1
            day.entered = True

    def _today(self, bar: Bar) -> tuple[_Day, dt.time]:
        """The bar's day (its start's date in ``timezone``) and local time."""
        local = dt.datetime.fromtimestamp(bar.start_ns // NS, tz=self._zone)
        day = self._days.get(bar.symbol)
        if day is None or day.date != local.date():
            day = self._days[bar.symbol] = self._day(local.date())
        return day, local.time()

    @staticmethod
    def _widen(day: _Day, bar: Bar) -> None:
        day.high = bar.high if day.high is None else max(day.high, bar.high)
        day.low = bar.low if day.low is None else min(day.low, bar.low)

    def _entries(self, symbol: str, day: _Day) -> int:
        """Today's entries in ``symbol``: the entry signals it sent today
        (one order each), whatever became of their orders, as counted when
        sent. Read from the history once a day; counted as sent after.
        A history that does not reach back to today's open
        (``ctx.orders_complete_since_ns`` after it) may miss some: then
        ``max_entries``, no entry more today (said once a day)."""
        if day.entries is None:
            reach = self.ctx.orders_complete_since_ns
            if reach > day.open_ns:
                day.entries = self.params.max_entries
                log.warning(
                    "opening_range_breakout %s: its order history is complete only from "
                    "%s, after today's session open, so it cannot count today's entries "
                    "(after a restart the runner reads back finished orders only within "
                    "TRADEBUS_REBUILD_FINISHED_S, and the history keeps the newest "
                    "OrderHistory.MAX_FINISHED finished ones): no entry in %s today",
                    self.ctx.name,
                    dt.datetime.fromtimestamp(reach // NS, tz=self._zone).isoformat(),
                    symbol,
                )
            else:
                since = self.ctx.orders(symbol, since_ns=day.open_ns)
                day.entries = len({r.signal_id for r in since if r.signal_name == ENTRY})
        return day.entries

    def _carried(self, bar: Bar, day: _Day, held: Decimal) -> str | None:
        """Why a position held (``held``: with what is pending) is closed as
        not today's entry; None when it is today's. Today's when an entry
        order of today in its symbol, on its side, filled something or is
        still working. Where the history holds no order of that side in the
        symbol at all (the runner kept none: its rebuild window shorter than
        the time since, or the store lost them), it cannot know: the open
        time decides (``_by_open_time``). Today's holds while the position is
        held; a carried one is judged again at each bar it is still held (its
        close denied)."""
        if day.entered:
            return None
        side = "buy" if held > 0 else "sell"
        records = self.ctx.orders(bar.symbol)
        if any(
            r.created_ns >= day.open_ns
            and r.signal_name == ENTRY
            and r.side == side
            and (r.filled > 0 or r.working)
            for r in records
        ):
            day.entered = True
            return None
        if any(r.side == side and (r.filled > 0 or r.working) for r in records):
            return CARRIED
        return self._by_open_time(bar, day, held)

    def _by_open_time(self, bar: Bar, day: _Day, held: Decimal) -> str | None:
        """A position held with no order of its side in the history, judged
        by its opening fill's market time (``Position.opened_ns``): from the
        range's end (less the clock skew a time may have), today's entry,
        counted; before, carried; not known, closed saying it cannot tell.
        That time is the broker's (the gateway's when it gives none) and may
        be a day off: only here, where the history cannot say, is it used."""
        opened_ns = self.ctx.position(bar.symbol).opened_ns
        today = opened_ns is not None and opened_ns >= day.range_end_ns - CLOCK_SKEW_NS
        if today:
            day.entered = True
            day.entries = max(self._entries(bar.symbol, day), 1)
            reason, judged = None, "opened today: kept as today's entry, counted"
        elif opened_ns is not None:
            reason, judged = CARRIED, "opened before today's range ended: closed as carried"
        else:
            reason = (
                "held with no order of it in the history and no open time known: "
                "cannot tell it was opened today; closed"
            )
            judged = "no open time known: cannot tell it was opened today, closed"
        if not day.said_unknown:
            day.said_unknown = True
            log.warning(
                "opening_range_breakout %s: %s %s held, and its order history holds no "
                "order of that side in it (the runner kept none: TRADEBUS_REBUILD_FINISHED_S "
                "shorter than the time since, or the store lost them); judged by its open "
                "time: %s",
                self.ctx.name,
                held,
                bar.symbol,
                judged,
            )
        return reason

    def _day(self, date: dt.date) -> _Day:
        """The day's open, range end and flatten: flatten_at, as much earlier
        as the exchange closes early (asked once a day and symbol; the answer
        is cached)."""
        p = self.params
        ns = _ns(dt.datetime.combine(date, p.flatten_at, tzinfo=self._zone))
        opens = dt.datetime.combine(date, p.session_open, tzinfo=self._zone)
        open_ns = _ns(opens)
        range_ns = _ns(opens + dt.timedelta(minutes=p.range_minutes))
        session = sessions.session(p.calendar, date) if p.calendar is not None else None
        if session is None or session.early_by_ns == 0:
            return _Day(date, ns, f"flatten at {p.flatten_at:%H:%M}", open_ns, range_ns)
        ns -= session.early_by_ns
        flatten = dt.datetime.fromtimestamp(ns // NS, tz=self._zone)
        close = dt.datetime.fromtimestamp(session.close_ns // NS, tz=self._zone)
        when = "early" if session.early_by_ns > 0 else "late"
        reason = f"flatten at {flatten:%H:%M} ({when} close at {close:%H:%M})"
        return _Day(date, ns, reason, open_ns, range_ns)

    def _go(self, bar: Bar, target: Decimal, name: str, direction: Direction, reason: str) -> bool:
        """Trade ``bar.symbol`` to ``target``; whether a signal was sent."""
        sent = trade_to(self.ctx, bar.symbol, target, name=name, direction=direction, reason=reason)
        return sent is not None


def _ns(local: dt.datetime) -> int:
    """An aware datetime as integer ns since the epoch."""
    return (local - _EPOCH) // dt.timedelta(microseconds=1) * 1_000
