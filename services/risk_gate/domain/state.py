"""What the risk-gate knows, as one immutable value.

:class:`RiskState` is rebuilt by folding every recorded event through
:func:`~services.risk_gate.domain.evolve.evolve`; nothing in it comes from
anywhere else. It is a frozen dataclass of read-only mappings, and evolve
copies only the mapping it changes (copy-on-write), so an old state stays
valid and table tests can compare states freely.

Besides positions, orders, marks and P&L it holds the gate's *obligations*:
things that must happen because of what was seen (a breaker that must trip,
a kill switch that must flatten, a resume that must be applied, an accepted
decision whose order command must go out). Evolve records an obligation; the
reaction's events, once applied, clear it. A crash between seeing the cause
and publishing the reaction therefore leaves the obligation in the rebuilt
state, and the reaction is published then (with the same derived ids).
"""

from __future__ import annotations

import bisect
import datetime as dt
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from decimal import Context, Decimal, getcontext, localcontext
from types import MappingProxyType
from typing import Any, Literal, TypeVar

from libs.contract.events import (
    OrderIntentCreated,
    Side,
    TradingState,
    contract_multiplier,
)
from services.risk_gate.domain.limits import GLOBAL, RiskLimits, TradingDay

ZERO = Decimal(0)
NS = 1_000_000_000
#: Where the caps' amounts are added, subtracted and multiplied: nothing
#: rounds. The contract's quantities, prices and money have at most 38 digits,
#: 12 after the point; caps 38 digits. A notional (quantity x price x a
#: multiplier of 100) has at most 79, a position marked against an average
#: cost (28 significant digits, wherever they fall) about 105, a sum of a
#: billion of them 10 more. Decimal's default 28 digits rounded a notional or
#: P&L past its cap by less than that to the cap, and passed it. Never divide
#: in it: a quotient that does not end would take all 200 digits.
EXACT = Context(prec=200)
#: An average cost is a quotient (it cannot be exact): rounded as it always was.
AVERAGE = Context(prec=28)


def exact() -> AbstractContextManager[Context | None]:
    """``EXACT`` for a block, or nothing if it is in force already: a decision
    enters it once (``decide.check``), not once per amount it adds up."""
    if getcontext().prec >= EXACT.prec:
        return nullcontext()
    return localcontext(EXACT)


#: Closed orders remembered (for fills that arrive after a cancel or reject).
CLOSED_KEPT = 256

K = TypeVar("K")
V = TypeVar("V")

ObligationKind = Literal["daily_loss", "connection_lost", "kill_switch", "resume", "reduce"]


def frozen_map(items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> Mapping[K, V]:
    """A read-only copy: state mappings are never changed in place."""
    return MappingProxyType(dict(items))


def _copy(m: Mapping[K, V]) -> dict[K, V]:
    # A dict copy keeps the stored hashes; dict(mapping) would hash every key
    # again (a UUID's hash is Python code: that was most of a decision's time).
    if isinstance(m, MappingProxyType):
        return m.copy()
    return dict(m)


def with_item(m: Mapping[K, V], key: K, value: V) -> Mapping[K, V]:
    d = _copy(m)
    d[key] = value
    return MappingProxyType(d)


def without(m: Mapping[K, V], key: K) -> Mapping[K, V]:
    if key not in m:
        return m
    d = _copy(m)
    del d[key]
    return MappingProxyType(d)


#: The last trading day looked up per (time zone, start): its first and past-
#: the-last nanosecond, and its date. Every event asks (``roll_day``), nearly
#: always for the same day; a zone conversion each time was a measurable
#: share of the risk-gate's CPU.
_DAY_WINDOWS: dict[tuple[str, dt.time], tuple[int, int, dt.date]] = {}


def trading_day(ts_ns: int, day: TradingDay) -> dt.date:
    """The trading day ``ts_ns`` belongs to, in exchange time.

    A day starts at ``day.start`` local exchange time (04:00 New York by
    default), so 03:59 still belongs to the previous day.
    """
    key = (day.timezone, day.start)
    window = _DAY_WINDOWS.get(key)
    if window is not None and window[0] <= ts_ns < window[1]:
        return window[2]
    zone = day.zone
    local = dt.datetime.fromtimestamp(ts_ns // NS, tz=zone)
    start = dt.datetime.combine(local.date(), day.start, tzinfo=zone)
    date = local.date() if local >= start else local.date() - dt.timedelta(days=1)
    first = dt.datetime.combine(date, day.start, tzinfo=zone)
    after = dt.datetime.combine(date + dt.timedelta(days=1), day.start, tzinfo=zone)
    # A day with a clock change in it is left uncached: its start may lie in
    # the skipped or the repeated hour, where instants and wall times differ.
    offsets = {t.replace(fold=f).utcoffset() for t in (first, after) for f in (0, 1)}
    if len(offsets) == 1:
        _DAY_WINDOWS[key] = (int(first.timestamp()) * NS, int(after.timestamp()) * NS, date)
    return date


# ----------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Mark:
    """The last market price of a symbol and when it printed."""

    price: Decimal
    ts_ns: int


@dataclass(frozen=True, slots=True)
class Position:
    """A net position with average-cost P&L, for the account or a strategy.

    ``day_basis`` is what today's P&L is measured from: the cost of what was
    bought today, and the last mark before the day started for what was
    carried over. ``realized_day`` is net of commissions.
    """

    quantity: Decimal = ZERO
    avg_price: Decimal = ZERO
    day_basis: Decimal = ZERO
    realized_day: Decimal = ZERO
    realized_total: Decimal = ZERO

    def fill(
        self, side: Side, quantity: Decimal, price: Decimal, commission: Decimal, mult: Decimal
    ) -> Position:
        with exact():
            return self._fill(side, quantity, price, commission, mult)

    def _fill(
        self, side: Side, quantity: Decimal, price: Decimal, commission: Decimal, mult: Decimal
    ) -> Position:
        signed = quantity if side == "buy" else -quantity
        q = self.quantity
        new_q = q + signed
        if q == 0 or (q > 0) == (signed > 0):
            size = abs(new_q)
            avg = AVERAGE.divide(abs(q) * self.avg_price + quantity * price, size)
            basis = AVERAGE.divide(abs(q) * self.day_basis + quantity * price, size)
            return Position(
                new_q,
                avg,
                basis,
                self.realized_day - commission,
                self.realized_total - commission,
            )
        closing = min(quantity, abs(q))
        direction = 1 if q > 0 else -1
        realized_total = closing * (price - self.avg_price) * direction * mult
        realized_day = closing * (price - self.day_basis) * direction * mult
        if new_q == 0:
            avg = basis = ZERO
        elif quantity > closing:  # crossed through zero: the rest opens at this price
            avg = basis = price
        else:
            avg, basis = self.avg_price, self.day_basis
        return Position(
            new_q,
            avg,
            basis,
            self.realized_day + realized_day - commission,
            self.realized_total + realized_total - commission,
        )

    def day_pnl(self, mark: Decimal | None, mult: Decimal) -> Decimal:
        """Realized today plus the open quantity marked against the day basis."""
        if mark is None or self.quantity == 0:
            return self.realized_day
        # EXACT's methods, not exact(): this runs on every price of a held symbol.
        moved = EXACT.multiply(self.quantity, EXACT.subtract(mark, self.day_basis))
        return EXACT.add(self.realized_day, EXACT.multiply(moved, mult))

    def new_day(self, mark: Decimal | None) -> Position:
        basis = mark if (mark is not None and self.quantity != 0) else self.avg_price
        return replace(self, day_basis=basis, realized_day=ZERO)

    def from_close(self, carried: Position, close: Decimal, mult: Decimal) -> Position:
        """This position, ``carried`` when the day began with no close (its
        cost its day basis: ``new_day(None)``) and filled since or not, with
        the carried part's day started from ``close``, a late close.

        Unfilled since, it starts from ``close`` (``new_day(close)``). Filled
        since, its day basis mixes the carried cost with the fills' prices
        (and what it sold was realized against that): measured from
        ``close``, its day P&L differs by the carried quantity times (cost -
        close), whatever was filled, average cost being linear in the carried
        basis. That goes into the day's realized P&L: the day P&L (what the
        breaker reads) is exact; which part of it is realized is not kept
        per lot.
        """
        if self == carried:
            return self.new_day(close)
        with exact():
            shift = carried.quantity * (carried.day_basis - close) * mult
            return replace(self, realized_day=self.realized_day + shift)


@dataclass(frozen=True, slots=True)
class Order:
    """An order command the gate issued (or saw issued), or a flatten's closing
    order (``ClosingOrdersPlaced``), and what is left of it."""

    order_id: uuid.UUID
    intent_id: uuid.UUID | None
    #: None: a closing order booked to no one strategy (several, or nobody).
    strategy: str | None
    account: str
    symbol: str
    side: Side
    quantity: Decimal
    remaining: Decimal
    limit_price: Decimal | None
    ts_ns: int
    #: A flatten's closing order: ``strategy`` is only the book its open
    #: quantity counts against; its fills are booked as the gateway books
    #: them (``FillPayload.strategy``, None: to no strategy).
    closing: bool = False

    @property
    def is_open(self) -> bool:
        """Nothing of a closed order remains (``evolve_orders._close`` zeroes it)."""
        return self.remaining > 0


@dataclass(frozen=True, slots=True)
class ScopeState:
    """Trading state of one scope (an account, or ``global``)."""

    state: TradingState = "active"
    reason: str = ""
    since_ns: int = 0


@dataclass(frozen=True, slots=True)
class KillSwitch:
    engaged: bool = False
    operator: str = ""
    reason: str = ""
    since_ns: int = 0


@dataclass(frozen=True, slots=True)
class Obligation:
    """Something the gate must still do because of the event ``trigger_id``."""

    kind: ObligationKind
    scope: str
    trigger_id: uuid.UUID
    correlation_id: uuid.UUID
    reason: str
    limit: Decimal | None = None
    value: Decimal | None = None
    operator: str = ""
    #: The trading day of the loss (``daily_loss``, ``reduce``): what the
    #: reaction records as tripped or reduced, whatever day it comes on.
    day: dt.date | None = None


class IdSet:
    """A persistent set of ids: every version stays valid, and adding to the
    newest one costs O(1), like a lookup.

    All versions along one history share one dict of id -> the version size
    at which it was added; a version of size ``n`` holds the ids stamped
    below ``n``. Adding to the newest version stamps the id and returns a
    version one larger; adding to an older one (a branch: a state kept and
    evolved a second way, as tests and what-if checks do) copies the ids it
    holds into a dict of its own first. A day holds tens of thousands of
    decided intents and fills: neither a copy per addition nor a lookup that
    grows with the day will do.
    """

    __slots__ = ("_size", "_stamps")

    def __init__(self, _stamps: dict[uuid.UUID | str, int] | None = None, _size: int = 0) -> None:
        self._stamps: dict[uuid.UUID | str, int] = {} if _stamps is None else _stamps
        self._size = _size

    def __contains__(self, key: object) -> bool:
        stamp: int = self._stamps.get(key, self._size)  # type: ignore[call-overload]
        return stamp < self._size

    def add(self, key: uuid.UUID | str) -> IdSet:
        stamps, size = self._stamps, self._size
        if stamps.get(key, size) < size:
            return self
        if len(stamps) != size:  # not the newest version: branch off
            stamps = {k: n for k, n in stamps.items() if n < size}
        stamps[key] = size
        return IdSet(stamps, size + 1)

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[uuid.UUID | str]:
        return (k for k, n in self._stamps.items() if n < self._size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IdSet):
            return NotImplemented
        return len(self) == len(other) and all(k in other for k in self)

    def __hash__(self) -> int:
        return hash(frozenset(self))

    def __repr__(self) -> str:
        return f"IdSet({len(self)} ids)"


def in_window(times: tuple[int, ...], ts_ns: int, window_ns: int) -> tuple[int, ...]:
    """A rate window's submission times (ascending) with ``ts_ns`` added and
    those no later than ``ts_ns - window_ns`` dropped.

    Ascending, so that trimming and counting are a bisection, not a pass over
    every order in the window (hundreds, at a few hundred orders a second);
    a time earlier than the last one (the clock stepped back) is inserted in
    its place.
    """
    kept = times[bisect.bisect_right(times, ts_ns - window_ns) :]
    if kept and kept[-1] > ts_ns:
        at = bisect.bisect_right(kept, ts_ns)
        return (*kept[:at], ts_ns, *kept[at:])
    return (*kept, ts_ns)


@dataclass(frozen=True, slots=True)
class DayIds:
    """Ids remembered for today and for the last earlier trading day that had
    any (``yesterday``): enough for any redelivery.

    Any event rolls the trading day, a weekend's operator command or
    connection change too, so the day before today is often one with no fill
    or intent at all. A roll from a day that added nothing keeps the older set
    (Friday's fills on Monday, after a Sunday command; across a holiday);
    only a day that added ids replaces it.

    Rolls come at the same point of the stream live and in a fold of the
    store, and ids of other services' events (fills, operator and connection
    events) are added at the same point in both, so ``fills_seen`` is the same
    set live and folded. The gate's own events (decisions, orders,
    reactions) are applied live as they are published, but in a fold where
    they land in the stream, which can be after the next day's roll. So they
    are filed by the day they were made in (their ``Event.market_ns``, the
    gate's clock), wherever they are applied (``file_own``): one of a day
    before today under the last earlier day (``add_earlier``), one of a day
    after today (the gate's clock read the new day before the state reached
    it) under that day, held ``ahead`` until the roll to it (``add_ahead``).
    Filed by the day they were applied in, an id made on D + 1 was D's live
    and D + 1's in a fold that reached it after D + 1's first message, or an
    id made on D was D's live and D + 1's in the fold: a day that added
    nothing on one side added ids on the other, and at the next roll the
    fold dropped an older set the live gate kept. Filed by the day they were
    made in, the two agree, or the fold keeps an older set the live gate has
    dropped (an id that lands a day late: ``add_earlier`` adds it to the set
    kept), never the reverse.
    """

    today: IdSet = field(default_factory=IdSet)
    yesterday: IdSet = field(default_factory=IdSet)
    #: Ids made on trading days after today, per day, ascending: normally
    #: empty, or the few decisions and reactions made in the milliseconds
    #: between a day's start on the gate's clock and the state's roll to it.
    ahead: tuple[tuple[dt.date, IdSet], ...] = ()

    def __contains__(self, key: object) -> bool:
        if key in self.today or key in self.yesterday:
            return True
        if not self.ahead:
            return False
        return any(key in ids for _, ids in self.ahead)

    def __iter__(self) -> Iterator[uuid.UUID | str]:
        yield from self.today
        yield from self.yesterday
        for _, ids in self.ahead:
            yield from ids

    def add(self, key: uuid.UUID | str) -> DayIds:
        if key in self.yesterday or (self.ahead and key in self):
            return self
        today = self.today.add(key)
        return self if today is self.today else DayIds(today, self.yesterday, self.ahead)

    def add_earlier(self, key: uuid.UUID | str) -> DayIds:
        """``key`` filed under the last earlier day (``yesterday``): an id of
        the gate's own event made on a day before today (``file_own``)."""
        if key in self:
            return self
        return DayIds(self.today, self.yesterday.add(key), self.ahead)

    def add_ahead(self, key: uuid.UUID | str, day: dt.date) -> DayIds:
        """``key`` filed under ``day``, a trading day after today: an id of the
        gate's own event made on it (``file_own``), today's once the state
        rolls to ``day``."""
        if key in self:
            return self
        days = dict(self.ahead)
        days[day] = days.get(day, IdSet()).add(key)
        return DayIds(self.today, self.yesterday, tuple(sorted(days.items())))

    def roll(self, day: dt.date) -> DayIds:
        """The ids on the roll to trading day ``day``, a later one."""
        today, yesterday = self.today, self.yesterday
        if today:  # a day that added nothing keeps the last one that did
            today, yesterday = IdSet(), today
        kept = []
        for made, ids in self.ahead:
            if made > day:
                kept.append((made, ids))
            elif made == day:
                today = ids
            else:
                # A day between the old today and ``day`` that added ids (the
                # state skipped it): filed as a fold that applies them after
                # this roll files them (``add_earlier``), with the set kept.
                for key in ids:
                    yesterday = yesterday.add(key)
        if today is self.today and yesterday is self.yesterday and len(kept) == len(self.ahead):
            return self
        return DayIds(today, yesterday, tuple(kept))

    def __len__(self) -> int:
        return len(self.today) + len(self.yesterday) + sum(len(ids) for _, ids in self.ahead)


# ------------------------------------------------------------------ state

#: (account, symbol) and (strategy, account, symbol) position keys.
AccountKey = tuple[str, str]
StrategyKey = tuple[str, str, str]
#: (account, strategy, symbol): what the open orders of one book still want
#: (strategy None: closing orders of a flatten booked to no one strategy).
OpenKey = tuple[str, str | None, str]
#: Remaining quantity of the open orders on each side: (buys, sells).
OpenSides = tuple[Decimal, Decimal]
NONE_OPEN: OpenSides = (ZERO, ZERO)


@dataclass(frozen=True, slots=True)
class Carried:
    """The positions in one symbol carried into the trading day with no mark,
    as the day began (their cost their day basis), per account and per
    strategy: what a late close of the day before starts the day of
    (``Position.from_close``), filled since or not."""

    accounts: tuple[tuple[AccountKey, Position], ...] = ()
    strategies: tuple[tuple[StrategyKey, Position], ...] = ()


def with_open(
    open_quantity: Mapping[OpenKey, OpenSides], order: Order, change: Decimal
) -> Mapping[OpenKey, OpenSides]:
    """``open_quantity`` with ``order``'s side moved by ``change`` (its remaining
    quantity when it opens, minus it when it closes); a book with nothing
    open on either side leaves the mapping."""
    key = (order.account, order.strategy, order.symbol)
    buys, sells = open_quantity.get(key, NONE_OPEN)
    if order.side == "buy":
        buys = EXACT.add(buys, change)
    else:
        sells = EXACT.add(sells, change)
    if buys == 0 and sells == 0:
        return without(open_quantity, key)
    return with_item(open_quantity, key, (buys, sells))


def _empty() -> Mapping[Any, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RiskState:
    """Positions, orders, marks, P&L, trading states and obligations."""

    limits: RiskLimits
    #: The current trading day (None until the first event).
    day: dt.date | None = None
    marks: Mapping[str, Mark] = field(default_factory=_empty)
    #: Symbols held into the current trading day with no mark (their
    #: positions' day basis is their cost, for want of a close) and not priced
    #: since, with those positions as the day began: a late price of the day
    #: before, their first, is the close they start the day from, filled
    #: since or not (``evolve_orders.first_price``).
    unpriced_carried: Mapping[str, Carried] = field(default_factory=_empty)
    positions: Mapping[AccountKey, Position] = field(default_factory=_empty)
    strategy_positions: Mapping[StrategyKey, Position] = field(default_factory=_empty)
    #: Open orders only; an order leaves when it is filled, canceled or rejected.
    orders: Mapping[uuid.UUID, Order] = field(default_factory=_empty)
    #: The open orders' remaining quantity per (account, strategy, symbol) and
    #: side, kept with ``orders`` (see :func:`with_open`): the checks read it
    #: instead of going through every open order, so a decision costs the same
    #: with a thousand resting orders as with one (bench/risk_decide.py).
    open_quantity: Mapping[OpenKey, OpenSides] = field(default_factory=_empty)
    #: The last :data:`CLOSED_KEPT` closed orders, to attribute a late fill.
    closed_orders: Mapping[uuid.UUID, Order] = field(default_factory=_empty)
    #: Submission times per rate-limit key (``strategy:<name>``, ``account:<name>``).
    rate_windows: Mapping[str, tuple[int, ...]] = field(default_factory=_empty)
    states: Mapping[str, ScopeState] = field(default_factory=_empty)
    kill_switch: KillSwitch = KillSwitch()
    connections: Mapping[str, str] = field(default_factory=_empty)
    #: Account -> the trading day its daily-loss breaker last tripped for (the
    #: day of the loss, which may be before the day the breaker's event came on).
    loss_tripped: Mapping[str, dt.date] = field(default_factory=_empty)
    #: Account -> the trading day (of the loss) it was last put in reducing for.
    loss_reduced: Mapping[str, dt.date] = field(default_factory=_empty)
    obligations: tuple[Obligation, ...] = ()
    #: Intents seen and not yet decided, in arrival order.
    pending_intents: Mapping[uuid.UUID, OrderIntentCreated] = field(default_factory=_empty)
    #: Accepted intents whose SubmitOrder has not been seen yet.
    awaiting_order: Mapping[uuid.UUID, OrderIntentCreated] = field(default_factory=_empty)
    decided: DayIds = field(default_factory=DayIds)
    fills_seen: DayIds = field(default_factory=DayIds)
    #: Operator, connection, closing-order and reaction events applied
    #: (``evolve.ONCE_TYPES``).
    applied: DayIds = field(default_factory=DayIds)

    @classmethod
    def initial(cls, limits: RiskLimits | None = None) -> RiskState:
        return cls(limits=limits if limits is not None else RiskLimits())

    # ---------------------------------------------------------- queries

    def scope_state(self, scope: str) -> ScopeState:
        return self.states.get(scope, ScopeState())

    def mark(self, symbol: str) -> Mark | None:
        return self.marks.get(symbol)

    def open_orders(
        self,
        *,
        account: str | None = None,
        strategy: str | None = None,
        symbol: str | None = None,
    ) -> list[Order]:
        return [
            o
            for o in self.orders.values()
            if (account is None or o.account == account)
            and (strategy is None or o.strategy == strategy)
            and (symbol is None or o.symbol == symbol)
        ]

    def open_by_side(self, account: str, symbol: str, strategy: str | None = None) -> OpenSides:
        """Remaining quantity of the open orders in ``symbol`` on ``account``
        (of ``strategy`` only, if given): (buys, sells)."""
        if strategy is not None:
            return self.open_quantity.get((account, strategy, symbol), NONE_OPEN)
        buys = sells = ZERO
        for (acct, _, sym), (b, s) in self.open_quantity.items():
            if acct == account and sym == symbol:
                buys = EXACT.add(buys, b)
                sells = EXACT.add(sells, s)
        return buys, sells

    def open_symbols(self, account: str, strategy: str) -> set[str]:
        """Symbols in which ``strategy`` has open orders on ``account``."""
        return {sym for (acct, st, sym) in self.open_quantity if acct == account and st == strategy}

    def account_position(self, account: str, symbol: str) -> Decimal:
        p = self.positions.get((account, symbol))
        return p.quantity if p is not None else ZERO

    def strategy_position(self, strategy: str, account: str, symbol: str) -> Decimal:
        p = self.strategy_positions.get((strategy, account, symbol))
        return p.quantity if p is not None else ZERO

    def day_pnl(self, account: str) -> Decimal:
        """Realized + unrealized P&L of ``account`` since the trading day began."""
        total = ZERO
        for (acct, symbol), pos in self.positions.items():
            if acct == account:
                m = self.marks.get(symbol)
                pnl = pos.day_pnl(m.price if m else None, contract_multiplier(symbol))
                total = EXACT.add(total, pnl)
        return total

    def orders_in_window(self, key: str, now_ns: int, window_ns: int) -> int:
        """Orders under ``key`` submitted after ``now_ns - window_ns``."""
        times = self.rate_windows.get(key, ())  # ascending (see ``in_window``)
        return len(times) - bisect.bisect_right(times, now_ns - window_ns)

    def accounts_known(self) -> list[str]:
        """Configured accounts plus any with open orders or positions."""
        names = set(self.limits.accounts)
        names.update(o.account for o in self.orders.values())
        names.update(acct for (acct, _), p in self.positions.items() if p.quantity != 0)
        names.discard(GLOBAL)
        return sorted(names)


def file_own(state: RiskState, ids: DayIds, key: uuid.UUID | str, made_ns: int) -> DayIds:
    """``ids`` with ``key``, an id of the gate's own event made at ``made_ns``
    (its ``Event.market_ns``: the gate's clock when it made it), filed under
    the trading day it was made in, not the day the state is in.

    The live gate applies its own events as it publishes them, in the day its
    state is in then; a fold of the store applies them where they land, which
    can be after the next day's first message. Filed by the day they were
    made in, they land in the same day's set either way (see ``DayIds``):
    one made on a day before the state's under the earlier day
    (``DayIds.add_earlier``), one made on a later day (the gate's clock
    passed the day start before the state rolled) under that day
    (``DayIds.add_ahead``).
    """
    if state.day is None:
        return ids.add(key)
    made = trading_day(made_ns, state.limits.trading_day)
    if made < state.day:
        return ids.add_earlier(key)
    if made > state.day:
        return ids.add_ahead(key, made)
    return ids.add(key)


def of_a_day_gone(state: RiskState, ts_ns: int) -> bool:
    """Whether ``ts_ns`` (a market time) lies in a trading day before the one
    ``state`` is in: a price of such a day marks only a symbol with no mark
    (``evolve_orders.to_mark``). Evolve rolls the day on the event before
    this is asked, so live and a fold of the store answer alike: the
    stream's order decides.
    """
    return state.day is not None and trading_day(ts_ns, state.limits.trading_day) < state.day
