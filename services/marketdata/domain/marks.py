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
   symbol (rule 5): it is no longer the market. The last mark stands and ages;
   the risk-gate stops using it after its ``max_mark_age_s``. A locked quote
   (bid = ask) is a mark at that price.
2. The symbol's first quote since start-up is a mark at once.
3. A quote older than the last mark's (``t < t0``) makes none (``out_of_order``).
4. A quote whose midpoint is within ``min_change`` (relative) of ``m0`` makes
   none (``unchanged``) unless ``refresh`` has passed since ``s0``; it also
   drops a quote held back, whose different price is no longer the market.
5. Before ``s0 + min_interval`` the quote is held back (``throttled``), the
   newest one replacing an older one, and :meth:`OptionMarks.due` makes it a
   mark, with slot ``s0 + min_interval``, once the service's clock reaches
   that: the last quote of a burst is marked, not only its first.
6. Otherwise it is a mark at once, with slot ``t``.

A mark's ``ts_event`` is its quote's (the market's time, which the gate ages
marks by), its ``causation_id`` the quote's id, and its id derives from the
quote's id, so the same quote published twice makes the same mark (one on the
stream, JetStream deduplicating the copy). ``ts_init`` is when the mark was
made: the quote's own for a mark made at once, the clock's for one held back.

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
from libs.contract.events import OPTION_PREFIX, MarkPayload, MarkUpdated, QuoteUpdated

#: Why an option quote made no mark (the metric's ``reason`` label).
SkipReason = Literal["one_sided", "crossed", "out_of_order", "unchanged", "throttled"]

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
    #: ...unless this long has passed since the last mark, ns.
    refresh_ns: int = 30 * NS

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


def midpoint(bid: Decimal, ask: Decimal) -> Decimal:
    """``(bid + ask) / 2``, exact, or to the contract's 12 places (half even)
    when it needs a 13th; either way within ``[bid, ask]``."""
    mid = _WIDE.divide(_WIDE.add(bid, ask), _TWO)
    exponent = mid.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -12:
        mid = mid.quantize(_QUANTUM, context=_WIDE)
    return mid


def invalid_reason(quote: QuoteUpdated) -> SkipReason | None:
    """Why ``quote`` cannot be marked (one-sided or crossed), or None."""
    q = quote.payload
    if q.bid_price <= 0 or q.ask_price <= 0 or q.bid_size <= 0 or q.ask_size <= 0:
        return "one_sided"
    if q.bid_price > q.ask_price:
        return "crossed"
    return None


def make_mark(quote: QuoteUpdated, price: Decimal, ts_init: int) -> MarkUpdated:
    """The ``MarkUpdated`` of ``quote`` at ``price``, made at ``ts_init``."""
    q = quote.payload
    return MarkUpdated(
        id=derived_id("marketdata", "mark", quote.id),
        ts_event=quote.ts_event,
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
    """A batch of events with the marks made from it, in place."""

    #: The batch, each mark right after the quote it came from.
    events: Sequence[Event]
    marks: int = 0
    skipped: Counter[SkipReason] = field(default_factory=Counter)


class OptionMarks:
    """Makes marks from option quotes, throttled per symbol by a :class:`MarkPolicy`."""

    __slots__ = ("_held", "_last", "policy")

    def __init__(self, policy: MarkPolicy | None = None) -> None:
        self.policy = policy if policy is not None else MarkPolicy()
        #: Symbol -> (slot, quote time, price) of its last mark.
        self._last: dict[str, tuple[int, int, Decimal]] = {}
        #: Symbol -> the newest quote held back by the interval, and its midpoint.
        self._held: dict[str, tuple[QuoteUpdated, Decimal]] = {}

    def on_quote(self, quote: QuoteUpdated) -> MarkUpdated | SkipReason:
        """The mark ``quote`` makes now, or why it makes none (yet: a
        ``throttled`` quote is held back for :meth:`due`)."""
        symbol = quote.payload.symbol
        invalid = invalid_reason(quote)
        if invalid is not None:
            self._held.pop(symbol, None)
            return invalid
        mid = midpoint(quote.payload.bid_price, quote.payload.ask_price)
        last = self._last.get(symbol)
        if last is not None:
            s0, t0, m0 = last
            if quote.ts_event < t0:
                return "out_of_order"
            p = self.policy
            elapsed = quote.ts_event - s0
            if elapsed < p.refresh_ns and abs(mid - m0) < p.min_change * m0:
                self._held.pop(symbol, None)
                return "unchanged"
            if elapsed < p.min_interval_ns:
                self._held[symbol] = (quote, mid)
                return "throttled"
        self._held.pop(symbol, None)
        self._last[symbol] = (quote.ts_event, quote.ts_event, mid)
        return make_mark(quote, mid, quote.ts_init)

    def with_marks(self, events: Sequence[Event]) -> Marked:
        """``events`` with the mark of each option quote that makes one right
        after it (the same sequence when none does)."""
        out: list[Event] = []
        copied = 0  # events[:copied] are in out
        marked = Marked(events)
        quote_type, prefix = QuoteUpdated, OPTION_PREFIX
        for i, event in enumerate(events):
            # The equities' quotes, most of the feed, cost this one test each
            # (about 0.1 µs; an event costs the feed tens of µs).
            if type(event) is not quote_type or not event.payload.symbol.startswith(prefix):
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

    def due(self, now_ns: int) -> list[MarkUpdated]:
        """Marks of the quotes held back whose interval has ended by ``now_ns``
        (the service's clock), made at ``now_ns``, in the order they were held."""
        out: list[MarkUpdated] = []
        interval = self.policy.min_interval_ns
        for symbol, (quote, mid) in list(self._held.items()):
            slot = self._last[symbol][0] + interval
            if now_ns < slot:
                continue
            del self._held[symbol]
            self._last[symbol] = (slot, quote.ts_event, mid)
            out.append(make_mark(quote, mid, now_ns))
        return out

    @property
    def held(self) -> int:
        """Quotes held back now (one per symbol at most)."""
        return len(self._held)
