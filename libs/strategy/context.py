"""What a strategy can see and do: the :class:`StrategyContext` port.

The context is the strategy's whole world: a clock, its own positions and
P&L (from its own fills and the last marks), what it has asked for and not
yet got (pending intents), what became of its recent orders and signals
(:class:`OrderRecord`, :class:`SignalRecord`), and two ways to act — emit a
signal, emit an order intent caused by a signal. The host behind it differs live, in shadow
mode and in a backtest; the strategy cannot tell.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Protocol

from libs.contract.envelope import Clock
from libs.contract.events import (
    OrderIntentCreated,
    OrderType,
    Side,
    SignalGenerated,
    TimeInForce,
    contract_multiplier,
)

Direction = Literal["long", "short", "flat"]
#: What became of an order intent: ``working`` until the risk-gate denies it,
#: the broker rejects or cancels it (an expiry included), or it is filled whole.
OrderStatus = Literal["working", "filled", "denied", "rejected", "canceled"]

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Position:
    """A strategy's position in one symbol, from its own fills (average cost).

    ``quantity`` is signed (negative = short), in shares or option contracts;
    prices are per share, so P&L is counted 100 per option contract
    (``contract_multiplier``). ``realized_pnl`` is net of commissions;
    ``unrealized_pnl`` is marked at ``mark``, or zero while there is no mark:
    the newest price seen by the market's own time (``mark_ns``), from a
    trade, a bar's close, a mark marketdata made of an option's quotes
    (``MarkUpdated``) or a fill (the strategy's own or another's), the prices
    the risk-gate marks by, so this is the P&L its daily-loss breaker trips
    on. Not a quote's midpoint: marketdata makes no mark of an equity's
    quotes, nor of an option quote it refuses as a price (too wide a spread).

    ``opened_ns`` is the market time (``Event.market_ns``) of the fill that
    last took the position from flat, or through it (a flip opens the new
    side then); a fill that adds to it or closes part of it keeps it, one
    that closes it clears it. None while flat, and where the ledger was not
    told (a position built without it).
    """

    symbol: str
    quantity: Decimal = ZERO
    average_price: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    mark: Decimal | None = None
    #: The market time (ns) of the price ``mark`` holds (0: none).
    mark_ns: int = 0
    #: The market time (ns) of the fill that last opened it from flat (None: flat, or unknown).
    opened_ns: int | None = None

    @property
    def unrealized_pnl(self) -> Decimal:
        if self.mark is None or self.quantity == 0:
            return ZERO
        return (self.mark - self.average_price) * self.quantity * contract_multiplier(self.symbol)

    @property
    def is_flat(self) -> bool:
        return self.quantity == 0


@dataclass(frozen=True, slots=True)
class PnL:
    """A strategy's profit and loss over all its symbols."""

    realized: Decimal = ZERO
    unrealized: Decimal = ZERO

    @property
    def total(self) -> Decimal:
        return self.realized + self.unrealized


@dataclass(frozen=True, slots=True)
class SignalRecord:
    """One of the strategy's own signals, as it emitted it.

    ``created_ns`` is the signal event's time (``ts_event``): the strategy's
    clock when it emitted it (``ctx.now_ns()`` then: the wall clock live and
    in shadow mode, the replayed market time in a backtest).
    """

    signal_id: uuid.UUID
    symbol: str
    name: str
    direction: Direction
    created_ns: int


@dataclass(frozen=True, slots=True)
class OrderRecord:
    """One of the strategy's own order intents and what became of it.

    ``filled`` is what its fills have filled so far (the broker's count:
    ``quantity`` less the order's leaves); ``status`` is ``working`` until
    the intent is denied by the risk-gate, rejected or canceled by the broker
    (one the broker expired is ``canceled``, its reason ``expired`` or
    ``expired: <the venue's words>``), or completely filled. An order filled
    in part and then canceled is ``canceled`` with ``filled`` above zero.
    ``reason`` is the denial's (``"<reason code>: <detail>"``, as
    ``OrderUpdate.reason``), the rejection's or the cancel's, when the event
    gives one; empty otherwise.

    ``signal_name`` and ``signal_direction`` are those of the signal that
    caused it (``signal_id``); None only when that signal is no longer known
    (an order caused by a signal older than the newest
    ``OrderHistory.MAX_SIGNALS``).

    ``created_ns`` is the intent event's time (``ts_event``): the strategy's
    clock when it emitted it, so ``ctx.orders(since_ns=start_of_today)`` with
    a start computed from ``ctx.now_ns()`` works alike live and in a backtest.
    """

    intent_id: uuid.UUID
    signal_id: uuid.UUID
    signal_name: str | None
    signal_direction: Direction | None
    symbol: str
    side: Side
    quantity: Decimal
    filled: Decimal
    status: OrderStatus
    reason: str
    created_ns: int

    @property
    def working(self) -> bool:
        """Not yet finished: its unfilled rest is among ``pending``."""
        return self.status == "working"


class StrategyContext(Protocol):
    """The port a strategy talks to. It never reaches NATS or a broker."""

    @property
    def name(self) -> str:
        """The strategy's name (its subject token)."""
        ...

    @property
    def symbols(self) -> tuple[str, ...]:
        """The symbols it was configured for, in configuration order."""
        ...

    @property
    def clock(self) -> Clock:
        """Wall clock live, the replayed time in a backtest."""
        ...

    def now_ns(self) -> int:
        """``clock.now_ns()``."""
        ...

    def position(self, symbol: str) -> Position:
        """Its position in ``symbol`` (flat if it never traded it)."""
        ...

    @property
    def positions(self) -> Mapping[str, Position]:
        """Every symbol it has traded, flat ones included."""
        ...

    def pending(self, symbol: str) -> Decimal:
        """Signed quantity of its intents in ``symbol`` not yet filled, denied,
        rejected or canceled (buys positive, sells negative)."""
        ...

    def pnl(self) -> PnL:
        """Realized and unrealized P&L over all its symbols."""
        ...

    def orders(
        self, symbol: str | None = None, *, since_ns: int | None = None
    ) -> Sequence[OrderRecord]:
        """Its own order intents (in ``symbol``; created at or after
        ``since_ns`` by :attr:`clock`), oldest first, working and finished,
        those it emitted in this callback included (working, nothing filled).

        The same live, in shadow mode, in a backtest and after a restart, but
        it reaches back only so far: the newest ``OrderHistory.MAX_FINISHED``
        (10,000) finished ones and every working one; after a restart of the
        strategy-runner, only what it read back from the store: every chain
        with an intent still working, and those with an event within its
        ``rebuild_finished_s`` (7 days by default). A fresh instance after a
        fault sees the same (the books survive it). From when it holds every
        one: :attr:`orders_complete_since_ns`."""
        ...

    @property
    def orders_complete_since_ns(self) -> int:
        """The earliest clock time (ns, as ``OrderRecord.created_ns``) from
        which :meth:`orders` holds every one of its orders:
        ``orders(since_ns=t)`` is complete for any ``t`` at or after it, and
        may miss some before it. 0: it holds every order it ever made (live
        from the host's start with nothing read back, in a backtest).

        After a restart of the strategy-runner: its rebuild cut-off, the
        runner's start less ``rebuild_finished_s`` (a chain whose every order
        finished before it is not read back), or the start itself when it
        does not rebuild from the store (``rebuild_from_store`` off). Once the
        cap (``OrderHistory.MAX_FINISHED``) drops a finished order: just past
        the newest it dropped. It only moves forward. A strategy that counts
        its orders over a period (today's entries) checks that the period
        starts at or after it; otherwise the count may be short."""
        ...

    def last_signal(
        self, name: str | None = None, *, symbol: str | None = None
    ) -> SignalRecord | None:
        """Its newest signal (of that ``name``, in that ``symbol``), one
        emitted in this callback included; None if it has none. It remembers
        the newest ``OrderHistory.MAX_SIGNALS`` (10,000) signals, and after a
        restart of the strategy-runner those it read back from the store (as
        :meth:`orders`)."""
        ...

    def expired(self, symbol: str) -> bool:
        """Whether ``symbol`` is an option contract past its expiry (the close
        of its expiry day, 16:00 New York, 13:00 on a half day) by :attr:`clock`. No venue takes an
        order in it, a closing one included: :meth:`order` refuses one (a
        fault), and a position in it is the broker's to settle."""
        ...

    def signal(
        self,
        symbol: str,
        name: str,
        direction: Direction,
        reason: str = "",
        strength: Decimal | None = None,
    ) -> SignalGenerated:
        """Emit a signal: the root of an order chain. In one of its
        :attr:`symbols`, or in a symbol it holds a position in."""
        ...

    def order(
        self,
        symbol: str,
        side: Side,
        quantity: Decimal,
        *,
        cause: SignalGenerated,
        order_type: OrderType = "market",
        limit_price: Decimal | None = None,
        stop_price: Decimal | None = None,
        time_in_force: TimeInForce = "day",
    ) -> OrderIntentCreated:
        """Emit an order intent caused by ``cause`` (one of this strategy's
        signals); one in an option contract that has :meth:`expired` is
        refused (``StrategyUsageError``), and so is one in a symbol not among
        :attr:`symbols`, unless it reduces, never past flat, a position the
        strategy holds in it (the underlying's shares an option's exercise
        gave it)."""
        ...
