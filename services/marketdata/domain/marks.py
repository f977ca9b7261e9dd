"""Option marks from quotes: which option quotes become a ``MarkUpdated``.

A thin option contract can go minutes without a trade or a bar while the
market quotes it all along; the risk-gate and the positions read model price
it from these marks (``md.mark.<symbol>``). Only option symbols (``O:…``) get
marks: equity quotes are most of the feed's volume, and equities trade often
enough to be priced by their trades.

The throttle runs on each mark's *slot*: the time of its quote when the mark
is made at once, the end of the interval when the quote was held back (so
marks are at most one per ``min_interval`` per symbol, and the rate of a
busy contract's marks is ``1 / min_interval``). The rules, per symbol, for a
quote at exchange time ``t`` with midpoint ``m`` (the symbol's last mark has
slot ``s0``, was quoted at ``t0 <= s0``, at price ``m0``):

1. A quote that is one-sided (a bid or ask of zero, or of zero size) or
   crossed (bid above ask) makes no mark, and drops a quote held back for the
   symbol (rule 5) and its standing quote (below): they are no longer the
   market. The last mark stays and ages; the risk-gate stops using it after
   its ``max_mark_age_s``. A locked quote
   (bid = ask) is a mark at that price.
2. The symbol's first quote since start-up is a mark at once.
3. A quote older than the last mark's (``t < t0``), or than the quote held
   back or standing, makes none (``out_of_order``) and changes nothing,
   whatever its prices: checked before rule 1, so a late quote neither
   replaces nor ends the newer quotes held or standing.
4. A quote whose midpoint is within ``min_change`` (relative) of ``m0`` makes
   none (``unchanged``) unless ``refresh`` has passed since ``s0``; it also
   drops a quote held back, whose different price is no longer the market.
4a. A quote whose spread is wider than ``max_spread`` times its midpoint
   (0.05 x 5.00: a midpoint of 2.525 nobody would trade at) makes none
   (``wide_spread``) and, like rule 1, drops a quote held back and the
   standing quote: the market no longer quotes that price. ``max_spread`` 0:
   no such limit. A quote at most ``max_spread_ticks`` ticks wide is never
   too wide (:func:`quote_tick`): a cheap contract's market can be no
   narrower than a tick, and 0.05 x 0.10, 67 % of its midpoint, would
   otherwise leave it unmarked for as long as it is that cheap.
5. Before ``s0 + min_interval`` the quote is held back (``throttled``), the
   newest one replacing an older one, and :meth:`OptionMarks.due` makes it a
   mark, with slot ``s0 + min_interval``, once the service's clock reaches
   that: the last quote of a burst is marked, not only its first (and
   ``due(..., final=True)``, when the source ends, marks it due or not).
6. Otherwise it is a mark at once, with slot ``t``.

**A standing quote.** Polygon sends no quote while a contract's quote does
not change, so a thin contract quoted unchanged for longer than the gate's
``max_mark_age_s`` would lose its price although the market still quotes it.
The symbol's newest two-sided quote (marked, held or ``unchanged``) *stands*
until one of these ends it:

- a one-sided or crossed quote (rule 1): the market no longer quotes it;
- a feed status saying the feed lost data (:data:`FEED_LOST`: a disconnect,
  a kick, a gap-fill) from the quote's feed, and from the quote's connection
  when the status names one (``market``: Polygon's stocks and options are
  separate connections, so a stocks disconnect loses no option quote): a
  quote may have been missed.
  ``stale`` does not end it: the connection is up (its pings answered) and
  silence is what an unchanged quote looks like; a dead connection is a
  disconnect within the WebSocket's ping timeout;
- ``max_standing`` passing since the quote's time: a contract nobody
  re-quotes for that long is likely dead, and must not stay priced forever.

While it stands, :meth:`OptionMarks.due` re-marks it once ``refresh`` has
passed since the symbol's last mark (and no quote is held back): the same
prices and causation (the quote), ``ts_event`` and ``ts_init`` the time the
re-mark is made. So **a mark's time means "this quote stood at this time"**:
a fresh quote's mark says so at the quote's time, a re-mark at a later one.

A mark's ``ts_event`` never goes back for a symbol: a quote made before the
last re-mark but reaching us after it (the feed's lag) is marked at the
re-mark's time instead of its own. The re-mark said the old quote still stood
then, which this quote shows was wrong; at the same time, the gate and
``positions_marked`` take the later in the stream, so the new quote wins
rather than being ignored as older.

Ids. A mark's id derives from its quote's id, so the same quote published
twice makes the same mark (one on the stream, JetStream deduplicating the
copy). A re-mark's derives from the quote's id and ``k = (time of the
re-mark - quote time) // refresh``, the refresh period of the quote's standing
it falls in: re-marks of one quote are at least ``refresh`` apart, so each has
its own id, and a restart (or a second instance) that sees the same quote
stand in the same period makes the same re-mark, which is stored once. An id
taken from a counter of re-marks would repeat after a quote is seen again (a
reconnect) and drop the later re-marks as duplicates; one taken from the
clock alone would give the same statement a new id at every restart.

``ts_init`` is when the mark was made: the quote's own for a mark made at
once, the clock's for one held back or re-made.

Pure and synchronous: no clock is read here (``due`` is given the time), no I/O.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Context, Decimal
from typing import Literal

from libs.contract.codec import derived_id
from libs.contract.envelope import Event
from libs.contract.events import (
    OPTION_PREFIX,
    AssetClass,
    FeedStatusChanged,
    MarkPayload,
    MarkUpdated,
    QuoteUpdated,
    asset_class_of,
)
from libs.contract.options import option_tick

#: Why an option quote made no mark (the metric's ``reason`` label).
SkipReason = Literal[
    "one_sided", "crossed", "out_of_order", "wide_spread", "unchanged", "throttled"
]
#: Why a standing quote stopped being re-marked (the metric's ``reason`` label;
#: one ended by a one-sided or crossed quote is counted as that quote's skip).
EndReason = Literal["feed_lost", "max_standing"]

#: Feed statuses after which no quote of that feed stands: the connection
#: ended (or is about to, for a kick) or a gap was filled, so a quote may have
#: been missed. ``connected``, ``authenticated`` and ``subscribed`` only come
#: after a disconnect, ``stale`` and ``recovered`` say nothing was received.
FEED_LOST = frozenset(
    {
        "disconnected",
        "reconnecting",
        "auth_failed",
        "max_connections",
        "force_disconnect",
        "slow_consumer",
        "gap_filled",
    }
)

#: The symbols each of a feed's connections carries (Polygon's stocks and
#: options clusters): a loss on one connection loses none of the other's quotes.
MARKET_CARRIES: dict[str, AssetClass] = {"stocks": "equity", "options": "option"}

NS = 1_000_000_000
#: The places a price can carry (the contract's ``Price``).
_QUANTUM = Decimal("1e-12")
_WIDE = Context(prec=60)
_TWO = Decimal(2)


@dataclass(frozen=True, slots=True)
class MarkPolicy:
    """How often a symbol's quotes become marks (see the module docstring)."""

    #: At most one mark of a symbol per this long (their slots), ns; a quote
    #: within it is held back until it ends.
    min_interval_ns: int = 1 * NS
    #: A midpoint within this fraction of the last mark is not a new mark...
    min_change: Decimal = Decimal("0.001")
    #: ...unless this long has passed since the last mark, ns; and a standing
    #: quote is re-marked when this long has passed since the last mark.
    refresh_ns: int = 30 * NS
    #: A quote stands (is re-marked) at most this long after its time, ns; 0:
    #: no re-marks (a quote is marked when it comes, as before).
    max_standing_ns: int = 300 * NS
    #: A quote whose ask - bid is more than this fraction of its midpoint is
    #: no mark; 0: no limit. (The spread of a two-sided quote is always below
    #: twice its midpoint, so 2 or more would be no limit either.)
    max_spread: Decimal = Decimal("0.5")
    #: ...unless it is at most this many ticks wide (:func:`quote_tick`); 0:
    #: the relative limit alone.
    max_spread_ticks: int = 2

    def __post_init__(self) -> None:
        if self.min_interval_ns < 0:
            raise ValueError(f"min_interval_ns {self.min_interval_ns} is negative")
        if not 0 <= self.min_change < 1:
            raise ValueError(f"min_change {self.min_change} is not in [0, 1)")
        if self.refresh_ns < self.min_interval_ns:
            raise ValueError(
                f"refresh_ns {self.refresh_ns} is shorter than min_interval_ns "
                f"{self.min_interval_ns}"
            )
        if not 0 <= self.max_spread < 2:
            raise ValueError(f"max_spread {self.max_spread} is not in [0, 2) (0: no limit)")
        if self.max_spread_ticks < 0:
            raise ValueError(f"max_spread_ticks {self.max_spread_ticks} is negative")
        if self.max_standing_ns < 0:
            raise ValueError(f"max_standing_ns {self.max_standing_ns} is negative")
        if self.max_standing_ns and not self.refresh_ns:
            raise ValueError("re-marks (max_standing_ns > 0) need a refresh_ns above 0")
        if self.max_standing_ns and self.max_standing_ns < self.refresh_ns:
            raise ValueError(
                f"max_standing_ns {self.max_standing_ns} is shorter than refresh_ns "
                f"{self.refresh_ns}: no quote would ever be re-marked (0 turns re-marks off)"
            )


def midpoint(bid: Decimal, ask: Decimal) -> Decimal:
    """``(bid + ask) / 2``, exact, or to the contract's 12 places (half even)
    when it needs a 13th; either way within ``[bid, ask]``."""
    mid = _WIDE.divide(_WIDE.add(bid, ask), _TWO)
    exponent = mid.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -12:
        mid = mid.quantize(_QUANTUM, context=_WIDE)
    return mid


def quote_tick(symbol: str, bid: Decimal, ask: Decimal) -> Decimal:
    """The tick of ``symbol``'s contract, as far as its quote shows it
    (:func:`~libs.contract.options.option_tick`, the risk-gate's rule too):
    0.01 for SPY's, QQQ's and IWM's contracts; for any other, the coarsest
    tick of the bid's price level (0.05 under $3, 0.10 from $3) whose grid
    both prices are on, else 0.01.

    Neither the feed nor the OCC symbol says whether another class is in the
    penny program, so the prices are the only evidence: a quote in pennies
    (0.02 x 0.10) is a penny class's, held to 0.01; one on the nickel grid
    (0.05 x 0.10) may be either's and is given the nickel, so a penny class's
    quote there may be up to five times as many of its ticks wide."""
    return option_tick(symbol, bid, (bid, ask))


def make_mark(
    quote: QuoteUpdated,
    price: Decimal,
    ts_init: int,
    *,
    ts_event: int | None = None,
    period: int | None = None,
) -> MarkUpdated:
    """The ``MarkUpdated`` of ``quote`` at ``price``, made at ``ts_init``; at
    ``ts_event`` (default: the quote's). ``period``: a re-mark's refresh period
    of the quote's standing (its id derives from it)."""
    q = quote.payload
    return MarkUpdated(
        id=(
            derived_id("marketdata", "mark", quote.id)
            if period is None
            else derived_id("marketdata", "mark", quote.id, "stood", period)
        ),
        ts_event=quote.ts_event if ts_event is None else ts_event,
        ts_init=ts_init,
        source=quote.source,
        correlation_id=quote.correlation_id,
        causation_id=quote.id,
        payload=MarkPayload(
            symbol=q.symbol,
            price=price,
            bid_price=q.bid_price,
            ask_price=q.ask_price,
            feed=q.feed,
        ),
    )


@dataclass(slots=True)
class Marked:
    """A batch of events with the marks made from it, in place; or the marks
    that fell due (:meth:`OptionMarks.due`)."""

    #: The batch, each mark right after the quote it came from.
    events: Sequence[Event]
    marks: int = 0
    skipped: Counter[SkipReason] = field(default_factory=Counter)
    #: Of ``marks``, re-marks of a standing quote.
    remarks: int = 0
    #: Standing quotes no longer re-marked, by why.
    ended: Counter[EndReason] = field(default_factory=Counter)


class OptionMarks:
    """Makes marks from option quotes, throttled per symbol by a :class:`MarkPolicy`,
    and re-marks the quotes that still stand."""

    __slots__ = ("_held", "_last", "_standing", "policy")

    def __init__(self, policy: MarkPolicy | None = None) -> None:
        self.policy = policy if policy is not None else MarkPolicy()
        #: Symbol -> (slot, quote time, price, ts_event) of its last mark.
        self._last: dict[str, tuple[int, int, Decimal, int]] = {}
        #: Symbol -> the newest quote held back by the interval, and its midpoint.
        self._held: dict[str, tuple[QuoteUpdated, Decimal]] = {}
        #: Symbol -> its standing quote, and its midpoint (none kept when
        #: re-marks are off).
        self._standing: dict[str, tuple[QuoteUpdated, Decimal]] = {}

    def on_quote(self, quote: QuoteUpdated) -> MarkUpdated | SkipReason:
        """The mark ``quote`` makes now, or why it makes none (yet: a
        ``throttled`` quote is held back for :meth:`due`)."""
        symbol = quote.payload.symbol
        last = self._last.get(symbol)
        if last is not None and quote.ts_event < last[1]:
            return "out_of_order"  # first: a late quote is not the market now, whatever it says
        # Nor is one older than the quote held back or standing (newer than the
        # last mark, unmarked yet): it must neither replace nor end that quote.
        for newer in (self._held.get(symbol), self._standing.get(symbol)):
            if newer is not None and quote.ts_event < newer[0].ts_event:
                return "out_of_order"
        invalid = quote.payload.unpriceable()  # one-sided or crossed: no mark
        if invalid is not None:
            self._held.pop(symbol, None)
            self._standing.pop(symbol, None)
            return invalid
        mid = midpoint(quote.payload.bid_price, quote.payload.ask_price)
        q = quote.payload
        spread, p = q.ask_price - q.bid_price, self.policy
        if (
            p.max_spread
            and spread > p.max_spread * mid
            and spread > p.max_spread_ticks * quote_tick(q.symbol, q.bid_price, q.ask_price)
        ):
            self._held.pop(symbol, None)
            self._standing.pop(symbol, None)
            return "wide_spread"
        if self.policy.max_standing_ns:
            self._standing[symbol] = (quote, mid)  # the market's quote now, marked or not
        stamp = quote.ts_event
        if last is not None:
            s0, _, m0, stamped = last
            elapsed = quote.ts_event - s0
            if elapsed < p.refresh_ns and abs(mid - m0) < p.min_change * m0:
                self._held.pop(symbol, None)
                return "unchanged"
            # (Without an interval nothing is held, even a quote from before the
            # slot of a re-mark: it is marked at once, at the re-mark's time.)
            if p.min_interval_ns and elapsed < p.min_interval_ns:
                self._held[symbol] = (quote, mid)
                return "throttled"
            stamp = max(stamp, stamped)  # never before a re-mark (module docstring)
        self._held.pop(symbol, None)
        self._last[symbol] = (quote.ts_event, quote.ts_event, mid, stamp)
        return make_mark(quote, mid, quote.ts_init, ts_event=stamp)

    def on_status(self, status: FeedStatusChanged) -> int:
        """Take a feed status: one in :data:`FEED_LOST` ends the standing of
        every quote of its feed, or only of its connection's symbols when it
        names one (:data:`MARKET_CARRIES`). Returns how many it ended."""
        if status.payload.status not in FEED_LOST or not self._standing:
            return 0
        feed, market = status.payload.feed, status.payload.market
        carried = None if market is None else MARKET_CARRIES[market]
        lost = [
            s
            for s, (q, _) in self._standing.items()
            if q.payload.feed == feed and (carried is None or asset_class_of(s) == carried)
        ]
        for symbol in lost:
            del self._standing[symbol]
        return len(lost)

    def with_marks(self, events: Sequence[Event]) -> Marked:
        """``events`` with the mark of each option quote that makes one right
        after it (the same sequence when none does); feed statuses among them
        taken as :meth:`on_status` takes them."""
        out: list[Event] = []
        copied = 0  # events[:copied] are in out
        marked = Marked(events)
        quote_type, status_type, prefix = QuoteUpdated, FeedStatusChanged, OPTION_PREFIX
        for i, event in enumerate(events):
            # The equities' quotes, most of the feed, cost this one test each
            # (about 0.1 µs; an event costs the feed tens of µs).
            if type(event) is not quote_type:
                if type(event) is status_type and (ended := self.on_status(event)):
                    marked.ended["feed_lost"] += ended
                continue
            if not event.payload.symbol.startswith(prefix):
                continue
            result = self.on_quote(event)
            if isinstance(result, str):
                marked.skipped[result] += 1
                continue
            out.extend(events[copied : i + 1])
            out.append(result)
            copied = i + 1
            marked.marks += 1
        if marked.marks:
            out.extend(events[copied:])
            marked.events = out
        return marked

    def due(self, now_ns: int, *, final: bool = False) -> Marked:
        """What falls due by ``now_ns`` (the service's clock), made at
        ``now_ns``: the marks of the quotes held back whose interval has ended,
        in the order they were held, then the re-marks of the standing quotes
        whose refresh has passed since their symbol's last mark. Ends the
        standing of quotes older than ``max_standing``. ``final`` (the source
        has ended): every quote held back is marked, due or not, rather than
        lost with the process (each is its contract's newest market)."""
        out: list[Event] = []
        marked = Marked(out)
        interval = self.policy.min_interval_ns
        for symbol, (quote, mid) in list(self._held.items()):
            slot, _, _, stamped = self._last[symbol]
            slot += interval
            if now_ns < slot and not final:
                continue
            del self._held[symbol]
            stamp = max(quote.ts_event, stamped)
            self._last[symbol] = (slot, quote.ts_event, mid, stamp)
            out.append(make_mark(quote, mid, now_ns, ts_event=stamp))
        marked.marks = len(out)
        if self._standing:
            self._remark(now_ns, marked, out)
        return marked

    def _remark(self, now_ns: int, marked: Marked, out: list[Event]) -> None:
        refresh, longest = self.policy.refresh_ns, self.policy.max_standing_ns
        # Marked as held just now (a late look can find both due): not twice.
        just_marked = {m.payload.symbol for m in out if isinstance(m, MarkUpdated)}
        for symbol, (quote, mid) in list(self._standing.items()):
            if now_ns - quote.ts_event > longest:
                del self._standing[symbol]
                marked.ended["max_standing"] += 1
                continue
            slot, _, _, stamped = self._last[symbol]
            # A held quote is this one, marked as held first when it falls due.
            if symbol in self._held or symbol in just_marked or now_ns < slot + refresh:
                continue
            stamp = max(now_ns, stamped)
            self._last[symbol] = (now_ns, quote.ts_event, mid, stamp)
            period = (now_ns - quote.ts_event) // refresh
            out.append(make_mark(quote, mid, now_ns, ts_event=stamp, period=period))
            marked.marks += 1
            marked.remarks += 1

    @property
    def held(self) -> int:
        """Quotes held back now (one per symbol at most)."""
        return len(self._held)

    @property
    def standing(self) -> int:
        """Quotes standing now (one per symbol at most), re-marked when due."""
        return len(self._standing)
