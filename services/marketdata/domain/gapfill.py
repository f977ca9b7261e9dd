"""Gap-fill of bars after a feed outage: which window, which bars.

Pure and synchronous; the caller passes every time in (ns since the epoch).
One :class:`GapFiller` keeps one bar interval (``interval_ns``: a minute for
Polygon ``AM``, a second for ``A``); "minute" below stands for that interval.

The invariant: **every bar is published once**, whether it came live
(Polygon ``AM`` / ``A``) or from REST after an outage. :class:`GapFiller` keeps, per
symbol, the window starts of the bars already published (the ledger); live
bars and REST bars both go through :meth:`GapFiller.admit`, which says yes
once per (symbol, window start). Event ids also derive from (symbol, window
start), so even a bar admitted twice after a restart is deduplicated by
JetStream; the ledger is what makes it right beyond the duplicate window.

The window of an outage, per symbol:

- it starts at the minute after the last bar published before the
  disconnect (or, for a symbol with no bar yet, at the minute the feed first
  sent its subscribe, acknowledged or not: what came before we started is
  not ours to fill);
- it ends with the last minute *closed* at the reconnect (the bar starting at
  ``s`` is closed once ``s + 1 min <= reconnect``): the bar of the minute in
  progress comes live, and REST would only have a partial bar for it;
- it reaches back at most ``max_gap_ns``.

A closed bar is fetched from REST only once it is *final*: its window closed
``settle_ns`` ago. REST may not yet hold a just-closed window's late trades,
and the live bar of that window may still be on its way (both share an event
id: whichever came first would stand). So :meth:`GapFiller.windows` cuts a
window at the last final bar, the gap stays open after it, and
:meth:`GapFiller.final_at` says when the rest is final and to be fetched;
live bars that arrived meanwhile are in the ledger, and left out then.

A bar REST does not return is a window without trades only if REST returned
a later bar of that symbol (it had built the aggregates past it), or if the
window closed ``lag_ns`` ago: Polygon's REST aggregates can lag the live
feed, by minutes at times, and a bar it has not built yet would otherwise be
lost. So :meth:`GapFiller.filled` keeps the gap open from the first such bar
that is still recent (:attr:`Filled.waiting_from_ns`), :meth:`GapFiller.final_at`
says to fetch again ``recheck_ns`` later (or when that bar's ``lag_ns`` is
up), and a bar still missing then is given up on
(:attr:`Filled.given_up_from_ns`): about ``lag_ns / recheck_ns`` more
fetches of a symbol whose REST lags, at most. A gap the last run left open
(:meth:`GapFiller.reopen`) is waited for from where that run was waiting
(:meth:`GapFiller.awaiting_rest`, stated in its statuses), not at all if
it was open for another reason, and from its start if that run did not say.

A second outage before the first one's gap-fill succeeded keeps the earlier
start, so nothing is skipped; a gap whose fetch failed stays open and is
retried, and one still open when the feed stops is opened again by the next
run (:meth:`GapFiller.reopen`). Bars inside the window that were published
live meanwhile (a late ``AM``) are skipped, and what is left is published in
time order, marked ``backfilled``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, TypeVar

MINUTE_NS = 60 * 1_000_000_000

T = TypeVar("T")


class Unstated(enum.Enum):
    """The type of :data:`UNSTATED`."""

    UNSTATED = "unstated"


#: :meth:`GapFiller.reopen`'s ``waiting_from_ns`` when the last run did not
#: say why the gap was open (its statuses predate saying so).
UNSTATED: Final = Unstated.UNSTATED


def floor_to(ts_ns: int, step_ns: int) -> int:
    """``ts_ns`` rounded down to a multiple of ``step_ns``."""
    return ts_ns - ts_ns % step_ns


@dataclass(frozen=True, slots=True)
class GapWindow:
    """Bars of ``symbol`` whose window start is in ``[first_start_ns, last_start_ns]``."""

    symbol: str
    first_start_ns: int
    last_start_ns: int
    #: The outage generation this window was computed for (see :meth:`GapFiller.filled`).
    generation: int
    #: The bar interval (a minute, or a second for second bars).
    interval_ns: int = MINUTE_NS
    #: False: bars closed after it at the reconnect were not final yet; once
    #: this window is filled, the gap stays open after it (see ``settle_ns``).
    final: bool = True

    def contains(self, start_ns: int) -> bool:
        return self.first_start_ns <= start_ns <= self.last_start_ns

    @property
    def bars(self) -> int:
        """How many bar windows it spans."""
        return (self.last_start_ns - self.first_start_ns) // self.interval_ns + 1


@dataclass(frozen=True, slots=True)
class Filled:
    """What :meth:`GapFiller.filled` made of REST's answer for a window."""

    #: REST had no bar of the symbol from this window start on (nor a later
    #: one) and it closed less than ``lag_ns`` ago: the gap stays open from
    #: it, to be fetched again (:meth:`GapFiller.final_at`).
    waiting_from_ns: int | None = None
    #: Waited for since an earlier pass (or left open by the last run:
    #: :meth:`GapFiller.reopen`), REST still had no bar from this window
    #: start once it closed ``lag_ns`` ago: taken as no trades.
    given_up_from_ns: int | None = None


@dataclass(frozen=True, slots=True)
class _Waiting:
    from_ns: int
    #: When to fetch again; None: at the settle time (bars after the window
    #: were not final yet, or a gap reopened at start-up not fetched yet, so
    #: a pass is due then anyway).
    recheck_at_ns: int | None


class GapFiller:
    """The ledger of published bars of one interval and the open gaps, per symbol."""

    def __init__(
        self,
        symbols: Iterable[str],
        *,
        interval_ns: int = MINUTE_NS,
        max_gap_ns: int = 24 * 3600 * 1_000_000_000,
        retention_ns: int = 2 * 24 * 3600 * 1_000_000_000,
        settle_ns: int = 0,
        lag_ns: int = 0,
        recheck_ns: int = MINUTE_NS,
    ) -> None:
        if interval_ns <= 0 or max_gap_ns <= 0 or recheck_ns <= 0:
            raise ValueError("interval_ns, max_gap_ns and recheck_ns must be positive")
        if settle_ns < 0 or lag_ns < 0:
            raise ValueError("settle_ns and lag_ns must not be negative")
        self.interval_ns = interval_ns
        self.settle_ns = settle_ns
        self.lag_ns = lag_ns
        self.recheck_ns = recheck_ns
        self.max_gap_ns = max_gap_ns
        self.retention_ns = max(retention_ns, max_gap_ns + interval_ns)
        self._symbols = tuple(dict.fromkeys(symbols))
        self._published: dict[str, set[int]] = {s: set() for s in self._symbols}
        self._last: dict[str, int] = {}
        #: Where each symbol's open gap starts (absent: no gap).
        self._gap_from: dict[str, int] = {}
        self._session_start: int | None = None
        self._generation = 0
        #: How many times the feed went down (see :attr:`disconnects`).
        self._disconnects = 0
        #: Symbols whose gap stays open for bars REST may not have built yet.
        self._waiting: dict[str, _Waiting] = {}

    # ---------------------------------------------------------------- ledger

    @property
    def symbols(self) -> tuple[str, ...]:
        return self._symbols

    def last_published(self, symbol: str) -> int | None:
        """Window start of the newest bar published for ``symbol``."""
        return self._last.get(symbol)

    def published(self, symbol: str, start_ns: int) -> bool:
        return start_ns in self._published.get(symbol, ())

    def admit(self, symbol: str, start_ns: int) -> bool:
        """Record a bar about to be published; False if it already was (skip it)."""
        seen = self._published.get(symbol)
        if seen is None:
            seen = self._published[symbol] = set()
        if start_ns in seen:
            return False
        seen.add(start_ns)
        last = self._last.get(symbol)
        if last is None or start_ns > last:
            self._last[symbol] = start_ns
            if len(seen) > 2 * (self.retention_ns // self.interval_ns):
                horizon = start_ns - self.retention_ns
                self._published[symbol] = {s for s in seen if s >= horizon}
        return True

    def seed(self, symbol: str, last_start_ns: int) -> None:
        """Start from a bar published before we ran (e.g. found on the stream at start-up).

        Opens a gap from the minute after it, to be filled at the first connection.
        """
        self.admit(symbol, last_start_ns)
        if symbol not in self._gap_from:
            self._gap_from[symbol] = last_start_ns + self.interval_ns
            self._generation += 1

    def reopen(
        self,
        symbol: str,
        gap_start_ns: int,
        published: Iterable[int] = (),
        *,
        waiting_from_ns: int | Unstated | None = UNSTATED,
    ) -> None:
        """Open again a gap a previous run left open (its statuses said so).

        ``published``: the window starts of ``symbol``'s bars already published
        since ``gap_start_ns`` (live bars after that run's reconnect, a part it
        did fill), so that the fill publishes none of them again. The earlier
        start wins against a gap already open (:meth:`seed`'s).

        ``waiting_from_ns``: where that run was waiting for REST to build the
        gap's bars (:meth:`awaiting_rest`), None if it was not (the gap was
        open for another reason). A bar REST still lacks from there on once
        it closed ``lag_ns`` ago is given up on and said so
        (:attr:`Filled.given_up_from_ns`), not taken as no trades silently;
        before there, or with None, a bar REST lacks is a window without
        trades, as it would have been in that run. :data:`UNSTATED` (that
        run's statuses did not say): waited for from ``gap_start_ns``.
        """
        if symbol not in self._published:
            return  # no longer configured
        for start_ns in published:
            self.admit(symbol, start_ns)
        current = self._gap_from.get(symbol)
        self._gap_from[symbol] = gap_start_ns if current is None else min(current, gap_start_ns)
        self._generation += 1
        waited = gap_start_ns if waiting_from_ns is UNSTATED else waiting_from_ns
        if waited is None:
            return
        waiting = self._waiting.get(symbol)
        if waiting is None or waited < waiting.from_ns:
            # No recheck time: the first pass is due at the reconnect anyway.
            self._waiting[symbol] = _Waiting(waited, None)

    # ---------------------------------------------------------------- outages

    def on_subscribed(self, now_ns: int) -> None:
        """The feed is subscribed; the first call marks where our session starts."""
        if self._session_start is None:
            self._session_start = floor_to(now_ns, self.interval_ns)

    @property
    def disconnects(self) -> int:
        """How many times the feed went down: a fill for a reconnect is stale once this moved.

        Its gaps then reach past that reconnect, into an outage still going on,
        and only the next reconnect can close them.
        """
        return self._disconnects

    def on_disconnect(self, now_ns: int) -> None:
        """The feed went down: open a gap for every symbol that has none open."""
        if self._session_start is None:
            return  # never subscribed: nothing was ours yet
        self._generation += 1
        self._disconnects += 1
        for symbol in self._symbols:
            if symbol in self._gap_from:
                continue  # an earlier gap is still open: keep its (earlier) start
            last = self._last.get(symbol)
            self._gap_from[symbol] = (
                last + self.interval_ns if last is not None else self._session_start
            )

    def open_gaps(self) -> dict[str, int]:
        """Symbol -> start of its open gap."""
        return dict(self._gap_from)

    def awaiting_rest(self) -> dict[str, int]:
        """Of the open gaps, those kept open for bars REST had not built yet:
        symbol -> window start of the first such bar (see :class:`Filled`).

        Why a gap is open, for a restart (:meth:`reopen`): one not here is
        open for another reason, and a bar REST lacks once it answers is a
        window without trades, not one given up on.
        """
        return {s: w.from_ns for s, w in self._waiting.items() if s in self._gap_from}

    def windows(self, reconnect_ns: int, now_ns: int | None = None) -> list[GapWindow]:
        """What to fetch now that the feed is back (one window per symbol with a gap).

        A gap with no closed minute in it (the feed was back within the same
        minute) is closed here: that minute's bar comes live. A window ends
        at the last minute closed at the reconnect, or at the last one final
        at ``now_ns`` (default: the reconnect) if that is earlier; a gap with
        no final minute yet gets no window and stays open (:meth:`final_at`).
        """
        last_closed = self._last_closed(reconnect_ns)
        now = reconnect_ns if now_ns is None else now_ns
        last_final = min(last_closed, self._last_closed(now - self.settle_ns))
        out: list[GapWindow] = []
        for symbol in self._symbols:
            start = self._window_start(symbol, reconnect_ns)
            if start is None:
                continue
            if start <= last_final:
                out.append(
                    GapWindow(
                        symbol,
                        start,
                        last_final,
                        self._generation,
                        self.interval_ns,
                        final=last_final == last_closed,
                    )
                )
            elif start > last_closed:
                self._gap_from.pop(symbol, None)
        return out

    def final_at(self, reconnect_ns: int) -> int | None:
        """When to fetch the gaps' bars closed at the reconnect again; None: no such gap open.

        After a fill that left bars not yet final, when they are all final;
        for a gap kept open for bars REST had not built (:class:`Filled`),
        ``recheck_ns`` after that fill, or when the first of them closed
        ``lag_ns`` ago if that is sooner.
        """
        last_closed = self._last_closed(reconnect_ns)
        final = last_closed + self.interval_ns + self.settle_ns
        dues = []
        for symbol in self._symbols:
            start = self._window_start(symbol, reconnect_ns)
            if start is None or start > last_closed:
                continue
            waiting = self._waiting.get(symbol)
            recheck = None if waiting is None else waiting.recheck_at_ns
            dues.append(final if recheck is None else recheck)
        return min(dues, default=None)

    def _last_closed(self, at_ns: int) -> int:
        """The start of the last window closed at ``at_ns``."""
        return floor_to(at_ns, self.interval_ns) - self.interval_ns

    def _window_start(self, symbol: str, reconnect_ns: int) -> int | None:
        """Where ``symbol``'s open gap starts to be fetched (whole windows, ``max_gap_ns`` back)."""
        start = self._gap_from.get(symbol)
        if start is None:
            return None
        horizon = floor_to(reconnect_ns - self.max_gap_ns, self.interval_ns)
        return max(floor_to(start + self.interval_ns - 1, self.interval_ns), horizon)

    def missing(
        self, window: GapWindow, bars: Iterable[T], start_of: Callable[[T], int]
    ) -> list[T]:
        """The bars of ``window`` not published yet, in time order, admitted to the ledger.

        Bars outside the window, repeats and bars already published are left out.
        """
        chosen: dict[int, T] = {}
        for bar in bars:
            start = start_of(bar)
            if (
                window.contains(start)
                and start not in chosen
                and not self.published(window.symbol, start)
            ):
                chosen[start] = bar
        ordered = sorted(chosen.items())
        return [bar for start, bar in ordered if self.admit(window.symbol, start)]

    def filled(
        self,
        window: GapWindow,
        rest_starts: Iterable[int] | None = None,
        now_ns: int | None = None,
    ) -> Filled:
        """``window`` was fetched and published: close the gap up to its end.

        If the feed dropped again meanwhile (a newer generation), or bars after
        the window were not final yet, the gap stays open from the minute
        after this window, so that outage (or those bars) is filled too.

        ``rest_starts``: the window starts of the bars REST returned, and
        ``now_ns`` when it did. Bars of the window after the last of them,
        not published and closed less than ``lag_ns`` before ``now_ns``, may
        be bars REST has not built yet: the gap stays open from the first
        (see :class:`Filled`). Without them, REST's answer is taken as final.
        """
        symbol = window.symbol
        before = self._waiting.pop(symbol, None)
        if symbol not in self._gap_from:
            return Filled()
        waiting = given_up = None
        if rest_starts is not None and now_ns is not None:
            newest = max((s for s in rest_starts if window.contains(s)), default=None)
            after = window.first_start_ns if newest is None else newest + self.interval_ns
            # The first window start that had not closed lag_ns before now.
            recent = self._last_closed(now_ns - self.lag_ns) + self.interval_ns
            end = window.last_start_ns + self.interval_ns
            waiting = self._first_unpublished(symbol, max(after, recent), end)
            if before is not None:
                given_up = self._first_unpublished(
                    symbol, max(after, before.from_ns), min(recent, end)
                )
            if waiting is not None:
                recheck = min(now_ns + self.recheck_ns, waiting + self.interval_ns + self.lag_ns)
                self._waiting[symbol] = _Waiting(waiting, recheck if window.final else None)
        if window.generation == self._generation and window.final and waiting is None:
            del self._gap_from[symbol]
        else:
            resume = window.last_start_ns + self.interval_ns if waiting is None else waiting
            self._gap_from[symbol] = max(self._gap_from[symbol], resume)
        return Filled(waiting, given_up)

    def _first_unpublished(self, symbol: str, from_ns: int, until_ns: int) -> int | None:
        """The first window start in ``[from_ns, until_ns)`` with no bar published."""
        for start in range(from_ns, until_ns, self.interval_ns):
            if not self.published(symbol, start):
                return start
        return None


def time_ordered(
    bars: Iterable[tuple[str, T]], start_of: Callable[[T], int]
) -> list[tuple[str, T]]:
    """(symbol, bar) pairs of several symbols ordered by window start, then symbol."""
    return sorted(bars, key=lambda sb: (start_of(sb[1]), sb[0]))
