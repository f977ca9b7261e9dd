"""Opening-range breakout, in exchange time (America/New_York by default).

Each trading day, the high and low of the bars that start in the first
``range_minutes`` after ``session_open`` form the opening range. After it,
the first bar that closes above the range high goes long ``quantity``; below
the range low, short (with ``allow_short``). Once in, the opposite side of the
range is the stop (exit to flat; with no range today, a position held is
exited at once), and everything is flattened from
``flatten_at`` on, by the first bar that ends at or after it. At most
``max_entries`` entries per symbol per day. A position held on a day with no
entry yet is an earlier day's whose flatten no bar reached (a symbol with no
trade in the session's last minutes gets no bar): it is closed by the first
bar from ``session_open`` on, not held through the range without a stop.
After a restart, today's entries are counted on the warm-up's bars, as if
it had been running. Where it was not shown bars of today's entry time
(missing from the store; or no trade, which it cannot tell apart), an entry
made and closed on one of them left nothing it can read (a position keeps no
past fills, realized P&L has no day), and from there on it cannot follow the
position: from the first such span to its first live bar, each bar interval
counts as an entry it cannot rule out, up to ``max_entries`` (logged). So it
never enters more than ``max_entries`` times a day; after such a restart it
may enter fewer, or none more. A position held live with no entry known
today is judged by when it was opened (``Position.opened_ns``, its opening
fill's market time): opened from the first bar of today's entry time the
warm-up was not shown (less 5 s of clock skew), it is today's entry, made
on a bar the warm-up was not shown (missing from the store): it is kept,
stopped at the range's other side, and counts toward ``max_entries``;
opened before (on an earlier day; or today where the warm-up was shown
every bar and no entry made), it is carried and closed as above. That time
is the broker's (the gateway's when the broker gives none, as for a fill it
learned of the next morning), and may be a day off: an earlier day's
position stamped inside that span is taken for today's (kept on today's
range); today's entry stamped a day behind is closed as carried, its entry
counted among those the warm-up cannot rule out. With no open time known (a position the
ledger was not told it of) and the warm-up not shown every bar of today from
the range's end (bars missing from the store; or no trade, which it cannot
tell apart), such a position may be today's: it is closed too, its reason
saying it cannot tell it was opened today (logged once a day). Held only by
an order still working with nothing filled (an entry sent before the
restart), it is today's entry in flight: counted, not closed (a sell against
a buy then canceled would leave it short).

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
replayed history both work.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
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
#: Why a position held with no entry today is closed: opened on an earlier
#: day, or (no open time known) every bar of today since the range's end
#: shown (live, or in a warm-up without a gap).
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
    #: The opening range's end: entries are made on bars from here on.
    range_end_ns: int
    high: Decimal | None = None
    low: Decimal | None = None
    #: Today's entries, toward max_entries: those made (live, or in the
    #: warm-up as if it had been running), and from the first live bar on
    #: those it cannot rule out on bars it was not shown (``unseen``).
    entries: int = 0
    #: An entry of today's is known (made on a bar shown, or a position held
    #: that was opened today): a position held is today's, not carried.
    entered: bool = False
    #: The first span of today's entry time not shown before the instance
    #: ran live (a warm-up's gap, or from its last bar to the first live
    #: one): an entry made on a bar in it is not seen.
    unseen: tuple[int, int] | None = None
    #: ``entries`` when that span began: after it, the warm-up's count is
    #: not known (its pretended position may not be the one held then).
    entries_before_unseen: int = 0
    #: That a position held with no entry seen was said (logged) today.
    said_unseen: bool = False


class OpeningRangeBreakout(Strategy[OpeningRangeParams]):
    """Trade the break of the first minutes' range; stop at the other side; flat by the close."""

    @classmethod
    def warmup_bars(cls, params: OpeningRangeParams) -> int:
        """A session's minutes, from the open to the flatten time: today's range
        and the entries made since the open."""
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
        #: During warm-up: the position it would have had, to count its entries.
        self._pretended: dict[str, Decimal] = {}
        #: Per symbol, the latest end of a bar shown (warm-up or live).
        self._shown_end: dict[str, int] = {}
        #: The symbols shown a live bar: from then on every bar is seen as it
        #: closes, and a span with none is one with no trade.
        self._live: set[str] = set()
        #: Per symbol, the shortest bar shown (ns): a bar not shown may have
        #: carried an entry each that long.
        self._bar_ns: dict[str, int] = {}

    def on_bar(self, bar: Bar) -> None:
        self._step(bar, exposure(self.ctx, bar.symbol), self._go, live=True)

    def on_warmup(self, bar: Bar) -> None:
        # As if it had been running: today's range, and the entries it would
        # have made, so that a restart never lets it enter more than
        # max_entries times a day (it may enter fewer). The position it would
        # have had is only pretended, to count them; live, the real one rules.
        def pretend(bar: Bar, target: Decimal, *_: str) -> None:
            self._pretended[bar.symbol] = target

        self._step(bar, self._pretended.get(bar.symbol, Decimal(0)), pretend, live=False)

    def _step(self, bar: Bar, held: Decimal, go: Callable[..., None], *, live: bool) -> None:
        p = self.params
        local = dt.datetime.fromtimestamp(bar.start_ns // NS, tz=self._zone)
        day = self._days.get(bar.symbol)
        if day is None or day.date != local.date():
            day = self._days[bar.symbol] = self._day(local.date())
        self._note_shown(bar, day, live=live)
        t = local.time()
        if t < p.session_open:
            return
        # Flat from the flatten on, judged by the bar's end: it is handled when
        # it closes. By its start, a 16:00 flatten with no bar after the close
        # (the last starts 15:59) never came and the position was held overnight.
        # Before the range: on an early close the flatten may come inside it.
        if bar.end_ns >= day.flatten_ns:
            if held != 0:
                go(bar, Decimal(0), "orb_flatten", "flat", day.flatten_reason)
            return
        # Held with no entry today: carried in from an earlier day whose
        # flatten no bar reached (a symbol with no trade in the last minutes
        # gets no bar). It was held without a stop through the range, then
        # kept as if it were today's breakout. Closed at the open instead,
        # unless a restart's warm-up missed it as today's entry.
        if live and held != 0 and not day.entered:
            self._judge_held(bar, day, held)
        carried = held != 0 and not day.entered
        if t < p.range_end:
            day.high = bar.high if day.high is None else max(day.high, bar.high)
            day.low = bar.low if day.low is None else min(day.low, bar.low)
            if carried:
                go(bar, Decimal(0), "orb_flatten", "flat", self._carried(bar, day, held, live=live))
            return
        if day.high is None or day.low is None:
            # No opening range today (data started late): no entry, and no
            # stop for a position held (one a past flatten did not close),
            # so it is closed rather than held unprotected until flatten_at.
            if held != 0:
                go(bar, Decimal(0), "orb_stop", "flat", "no opening range today to stop at")
            return
        if carried:
            go(bar, Decimal(0), "orb_flatten", "flat", self._carried(bar, day, held, live=live))
            return
        if held > 0 and bar.close < day.low:
            go(bar, Decimal(0), "orb_stop", "flat", f"close {bar.close} < range low")
        elif held < 0 and bar.close > day.high:
            go(bar, Decimal(0), "orb_stop", "flat", f"close {bar.close} > range high")
        elif held == 0 and day.entries < p.max_entries:
            if bar.close > day.high:
                day.entries += 1
                day.entered = True
                reason = f"close {bar.close} > range high {day.high}"
                go(bar, p.quantity, "orb_breakout", "long", reason)
            elif bar.close < day.low and p.allow_short:
                day.entries += 1
                day.entered = True
                reason = f"close {bar.close} < range low {day.low}"
                go(bar, -p.quantity, "orb_breakout", "short", reason)

    def _note_shown(self, bar: Bar, day: _Day, *, live: bool) -> None:
        """Note a span of today's entry time no bar was shown in before the
        symbol ran live: the store missing bars (or no trade in them, which
        the warm-up cannot tell apart). Live, every bar is seen as it closes.
        At the first live bar, count the entries it cannot rule out."""
        symbol = bar.symbol
        last = self._shown_end.get(symbol, 0)
        self._shown_end[symbol] = max(last, bar.end_ns)
        if symbol in self._live:
            return
        length = bar.end_ns - bar.start_ns
        self._bar_ns[symbol] = min(self._bar_ns.get(symbol, length), length)
        since = max(last, day.range_end_ns)
        if day.unseen is None and bar.start_ns > since:
            day.unseen = (since, bar.start_ns)
            day.entries_before_unseen = day.entries
        if live:
            self._live.add(symbol)
            self._count_unseen(bar, day)

    def _count_unseen(self, bar: Bar, day: _Day) -> None:
        """Count the entries it cannot rule out before ``bar``, the first
        live one. An entry made on a bar it was not shown, and closed since,
        leaves nothing it can read (a position keeps no past fills, and
        realized P&L has no day); after the first such span it cannot follow
        the position either. So from that span's start to this bar each bar's
        interval may have carried an entry: one each, up to max_entries."""
        if day.unseen is None:
            return
        start = day.unseen[0]
        step = max(self._bar_ns[bar.symbol], 1)
        bars = -((start - bar.start_ns) // step)  # rounded up
        may = min(self.params.max_entries, day.entries_before_unseen + bars)
        if may <= day.entries:
            return
        day.entries = may
        log.warning(
            "opening_range_breakout %s: no bar of %s was shown from %s to %s before it ran "
            "live (missing from the store, or no trade): entries counted today %d of "
            "max_entries %d, as many as it cannot rule out",
            self.ctx.name,
            bar.symbol,
            self._hhmm(start),
            self._hhmm(bar.start_ns),
            may,
            self.params.max_entries,
        )

    def _hhmm(self, ns: int) -> str:
        return dt.datetime.fromtimestamp(ns // NS, tz=self._zone).strftime("%H:%M")

    def _judge_held(self, bar: Bar, day: _Day, held: Decimal) -> None:
        """Count as today's entry, one the warm-up did not see, a position
        held live with none known today: held only by an order still working
        with nothing filled (an entry sent before a restart, in flight: orders
        do not outlive their day; closed, a sell against a buy then canceled
        would leave it short), or opened (its opening fill's market time) from
        the start of the first span of today's entry time it was not shown
        on, less the clock skew a time may have. Otherwise it is carried.

        Not by the day alone: the time is the broker's, or the gateway's when
        the broker gives none, and that may be a day off. An earlier day's
        position stamped today before that span (a fill the gateway learned
        of the next morning; the warm-up was shown every bar there, and no
        entry made) is not today's: it is carried, closed. One stamped a day
        behind looks carried too: closed, its entry still counted among
        those it cannot rule out (``_count_unseen``)."""
        position = self.ctx.position(bar.symbol)
        opened_ns = position.opened_ns
        if position.quantity == 0:
            how = (
                "working with nothing filled when it ran live: counted as today's entry, in flight"
            )
        elif (
            opened_ns is not None
            and day.unseen is not None
            and opened_ns >= day.unseen[0] - CLOCK_SKEW_NS
        ):
            how = (
                "held, opened today on a bar not shown before it ran live: counted as today's entry"
            )
        else:
            return
        day.entered, day.entries = True, max(day.entries, 1)
        log.info("opening_range_breakout %s: %s %s %s", self.ctx.name, held, bar.symbol, how)

    def _carried(self, bar: Bar, day: _Day, held: Decimal, *, live: bool) -> str:
        """Why a position held with no entry counted today is closed. Live,
        one with an open time (``Position.opened_ns``) not judged today's
        (``_judge_held``) is carried. With no open time known: with every bar
        of today's entry time shown, it is an earlier day's; with some not
        shown (a restart whose store missed them), it may be today's, entered
        on one of those, and the reason says so (logged once a day). Closed
        either way: a stop for it is not known. In the warm-up the reason is
        not used (the position is pretended)."""
        if not live or day.unseen is None or self.ctx.position(bar.symbol).opened_ns is not None:
            return CARRIED
        start, end = (self._hhmm(ns) for ns in day.unseen)
        reason = (
            f"held with no entry seen today, but no bar was shown from {start} to {end} "
            "(missing from the store, or no trade): cannot tell it was opened today; closed"
        )
        if live and not day.said_unseen:
            day.said_unseen = True
            log.warning(
                "opening_range_breakout %s: %s %s held with no entry seen today; no bar was "
                "shown from %s to %s before it ran live, so it cannot tell whether that "
                "position was entered today or carried from an earlier day: it is closed",
                self.ctx.name,
                held,
                bar.symbol,
                start,
                end,
            )
        return reason

    def _day(self, date: dt.date) -> _Day:
        """The day's flatten: flatten_at, as much earlier as the exchange
        closes early (asked once a day and symbol; the answer is cached)."""
        p = self.params
        local = dt.datetime.combine(date, p.flatten_at, tzinfo=self._zone)
        ns = (local - _EPOCH) // dt.timedelta(microseconds=1) * 1_000
        opens = dt.datetime.combine(date, p.session_open, tzinfo=self._zone)
        range_ns = (
            (opens + dt.timedelta(minutes=p.range_minutes) - _EPOCH)
            // dt.timedelta(microseconds=1)
            * 1_000
        )
        session = sessions.session(p.calendar, date) if p.calendar is not None else None
        if session is None or session.early_by_ns == 0:
            return _Day(date, ns, f"flatten at {p.flatten_at:%H:%M}", range_ns)
        ns -= session.early_by_ns
        flatten = dt.datetime.fromtimestamp(ns // NS, tz=self._zone)
        close = dt.datetime.fromtimestamp(session.close_ns // NS, tz=self._zone)
        when = "early" if session.early_by_ns > 0 else "late"
        return _Day(
            date, ns, f"flatten at {flatten:%H:%M} ({when} close at {close:%H:%M})", range_ns
        )

    def _go(self, bar: Bar, target: Decimal, name: str, direction: Direction, reason: str) -> None:
        trade_to(self.ctx, bar.symbol, target, name=name, direction=direction, reason=reason)
