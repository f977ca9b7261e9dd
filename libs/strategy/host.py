"""One strategy instance, its books and its fault policy: pure and synchronous.

:class:`StrategyHost` is what both the strategy-runner (one per asyncio task)
and the in-memory runtime (backtests, unit tests) drive. It is handed events
one at a time and returns the events the strategy emitted in answer, in
order; it never does I/O.

Invariants:

- A callback's emissions are all-or-nothing. If a callback raises, whatever
  it emitted before raising is dropped (half a pair trade must never reach
  the risk-gate) and a ``StrategyFaulted`` event is emitted instead.
- Books (positions, open intents, the order history) are updated *before*
  the strategy is called, and also while it is stopped: positions are
  facts, not opinions.
- After a fault the strategy is stopped, or — with ``restart="always"`` and
  fewer than ``max_restarts`` restarts so far — replaced by a fresh instance
  (``on_start`` again); its books survive the restart.
- A callback that runs past ``max_callback_s`` (an endless loop) is stopped
  by the :class:`~libs.strategy.watchdog.Watchdog`, when the host is given a
  started one, and that is a fault like any other.
- Ids are deterministic: injected, or derived from the strategy's name, the
  input event's id and the emission's index, so that processing the same
  input again yields the same ids (and JetStream drops the duplicates).

The books (:class:`~libs.strategy.books.HostBooks`: what each event does to
the positions and the working intents) and the emissions
(:class:`~libs.strategy.emitting.HostEmitter`: what ``ctx.signal()`` and
``ctx.order()`` may emit, checked) are mixins in modules of their own; this
one runs the strategy: its lifecycle, its warm-up and its fault policy.
"""

from __future__ import annotations

import logging
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal

from libs.contract.envelope import Clock, Event, IdFactory
from libs.contract.events import (
    BarClosed,
    OrderIntentCreated,
    OrderType,
    Side,
    SignalGenerated,
    StrategyFaulted,
    StrategyFaultPayload,
    TimeInForce,
)
from libs.contract.options import underlyings
from libs.strategy.base import Strategy, StrategyParams
from libs.strategy.books import HostBooks
from libs.strategy.context import Direction, OrderRecord, PnL, Position, SignalRecord
from libs.strategy.emitting import HostEmitter
from libs.strategy.history import OrderHistory
from libs.strategy.ledger import IntentBook, Ledger
from libs.strategy.watchdog import Watchdog

log = logging.getLogger(__name__)

RestartPolicy = Literal["never", "always"]
HostState = Literal["new", "running", "stopped"]

#: Longest error text carried by a ``StrategyFaulted`` event.
MAX_ERROR_CHARS = 2000
#: How long a host keeps the ids of finished intents and of its signals to
#: drop a copy read back (``StrategyHost.forget_after_ns``): the runner's
#: default ``rebuild_finished_s``.
DEFAULT_FORGET_AFTER_NS = 7 * 86_400 * 1_000_000_000


class _Context:
    """The :class:`~libs.strategy.context.StrategyContext` a host gives its strategy."""

    def __init__(self, host: StrategyHost) -> None:
        self._host = host

    @property
    def name(self) -> str:
        return self._host.name

    @property
    def symbols(self) -> tuple[str, ...]:
        return self._host.symbols

    @property
    def clock(self) -> Clock:
        return self._host.clock

    def now_ns(self) -> int:
        return self._host.clock.now_ns()

    def position(self, symbol: str) -> Position:
        return self._host.ledger.position(symbol)

    @property
    def positions(self) -> Mapping[str, Position]:
        return dict(self._host.ledger.positions)

    def pending(self, symbol: str) -> Decimal:
        return self._host.pending(symbol)

    def pnl(self) -> PnL:
        return self._host.ledger.pnl()

    def orders(
        self, symbol: str | None = None, *, since_ns: int | None = None
    ) -> Sequence[OrderRecord]:
        host = self._host
        return host.history.orders(symbol, since_ns=since_ns, fresh=host._outbox)

    @property
    def orders_complete_since_ns(self) -> int:
        return self._host.history.complete_since_ns

    def last_signal(
        self, name: str | None = None, *, symbol: str | None = None
    ) -> SignalRecord | None:
        host = self._host
        return host.history.last_signal(name, symbol=symbol, fresh=host._outbox)

    def expired(self, symbol: str) -> bool:
        return self._host.expired(symbol)

    def signal(
        self,
        symbol: str,
        name: str,
        direction: Direction,
        reason: str = "",
        strength: Decimal | None = None,
    ) -> SignalGenerated:
        return self._host.emit_signal(symbol, name, direction, reason, strength)

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
        return self._host.emit_order(
            symbol,
            side,
            quantity,
            cause=cause,
            order_type=order_type,
            limit_price=limit_price,
            stop_price=stop_price,
            time_in_force=time_in_force,
        )


class StrategyHost(HostBooks, HostEmitter):
    """Runs one strategy: routes events to its callbacks, keeps its books."""

    def __init__(
        self,
        *,
        name: str,
        strategy: type[Strategy[Any]],
        params: StrategyParams | Mapping[str, Any],
        symbols: tuple[str, ...],
        account: str,
        clock: Clock,
        source: str = "strategy-runner",
        ids: IdFactory | None = None,
        restart: RestartPolicy = "never",
        max_restarts: int = 0,
        watchdog: Watchdog | None = None,
        max_callback_s: float | None = None,
        bar_interval: str | None = None,
    ) -> None:
        self.name = name
        self.strategy_cls = strategy
        self.params = (
            params
            if isinstance(params, StrategyParams)
            else strategy.params_model.model_validate(params)
        )
        self.symbols = symbols
        #: The underlyings of its option contracts that are not among its
        #: symbols: their prices mark the shares an exercise or an assignment
        #: books to it (:meth:`mark_only`), and call no callback.
        self.underlyings = underlyings(symbols)
        self.account = account
        self.clock = clock
        self.source = source
        self.restart = restart
        self.max_restarts = max_restarts
        #: Stops a callback that runs longer than ``max_callback_s`` (None: no limit).
        self.watchdog = watchdog
        self.max_callback_s = max_callback_s
        #: The bars it is shown (None: every interval); the router and
        #: :meth:`remember` keep the others away.
        self.bar_interval = bar_interval
        self.ledger = Ledger()
        self.intents = IntentBook()
        #: Its intents, working and finished, and its signals (``ctx.orders()``).
        self.history = OrderHistory()
        self.state: HostState = "new"
        self.restarts = 0
        self.faults = 0
        self.last_error: str | None = None
        self._ids = ids
        self._id_key = f"init/{name}"
        self._id_n = 0
        self._signals: set[uuid.UUID] = set()
        self._issued: weakref.WeakValueDictionary[uuid.UUID, SignalGenerated] = (
            weakref.WeakValueDictionary()
        )
        self._retired: deque[tuple[int, uuid.UUID, bool]] = deque()
        #: Ids of intents finished, and of signals made, this long ago are
        #: forgotten (``HostBooks``: no copy comes so late); the runner sets its
        #: ``rebuild_finished_s``.
        self.forget_after_ns = DEFAULT_FORGET_AFTER_NS
        self._outbox: list[Event] = []
        self._instance: Strategy[Any] | None = None
        self._stopping = False
        self._context = _Context(self)
        #: Inside ``on_warmup``: emitting is refused.
        self._warming = False
        #: Bars per symbol the strategy asks to be warmed up on (``warmup_bars``,
        #: of its ``bar_interval``).
        self.warmup_bars = strategy.warmup_bars_for(self.params, bar_interval)
        #: The latest of those per symbol: handed in from the store before the
        #: start (:meth:`remember`), then every bar it is shown. Each new
        #: instance (the first, or a fresh one after a fault) is warmed up on them.
        self._shown: dict[str, deque[BarClosed]] = {}

    # ----------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def instance(self) -> Strategy[Any] | None:
        """The live strategy object (a new one after each restart; None when stopped)."""
        return self._instance

    def start(self) -> list[Event]:
        """Build the strategy and call ``on_start``."""
        if self.state != "new":
            return []
        self.state = "running"
        return self._spawn(None)

    def stop(self) -> list[Event]:
        """Call ``on_stop`` (if running) and stop; later events only update the books."""
        if not self.running or self._instance is None:
            self.state = "stopped"
            return []
        instance = self._instance
        self._stopping = True  # a fault in on_stop stops; it never restarts
        out = self._invoke(instance.on_stop, None, f"stop/{self.restarts}/{self.clock.now_ns()}")
        self.state = "stopped"
        self._instance = None
        return out

    # -------------------------------------------------------------- events

    def handle(self, event: Event) -> list[Event]:
        """Apply ``event`` to the books, then call the strategy (if running)."""
        call = self._apply(event)
        if call is None or not self.running:
            return []
        if isinstance(event, BarClosed):
            self._remember(event)
        return self._invoke(call, event, str(event.id))

    def warm_up(self, event: BarClosed) -> list[Event]:
        """Show a past bar to the strategy (``on_warmup``) for its indicators.

        The books do not change (a bar from the store is older than them; one
        from the catch-up is applied by :meth:`restore`). An emission from
        ``on_warmup`` is a fault; what is returned is that fault, if any.
        """
        instance = self._instance
        if not self.running or instance is None or event.payload.symbol not in self.symbols:
            return []
        self._remember(event)
        bar = event.payload

        def show() -> None:
            # Only the call is a warm-up: should it fault, the fresh instance's
            # on_start (the policy's restart, in the same _invoke) may emit.
            with self._warming_up():
                instance.on_warmup(bar)

        return self._invoke(show, event, f"warmup/{event.id}")

    def remember(self, bars: Iterable[Event]) -> None:
        """Past bars (the store's, oldest first) to warm the strategy up on when
        it starts; only the latest ``warmup_bars`` of each of its symbols (of
        its ``bar_interval``) stay."""
        for event in bars:
            if (
                isinstance(event, BarClosed)
                and event.payload.symbol in self.symbols
                and self.bar_interval in (None, event.payload.interval)
            ):
                self._remember(event)

    def _remember(self, event: BarClosed) -> None:
        """Keep the latest ``warmup_bars`` bars per symbol (oldest dropped)."""
        if self.warmup_bars > 0:
            symbol = event.payload.symbol
            shown = self._shown.get(symbol)
            if shown is None:
                shown = self._shown[symbol] = deque(maxlen=self.warmup_bars)
            shown.append(event)

    def recent_bars(self) -> list[BarClosed]:
        """The bars a new instance is warmed up on, in the order they closed."""
        bars = [e for shown in self._shown.values() for e in shown]
        return sorted(bars, key=lambda e: (e.payload.end_ns, e.payload.symbol))

    # --------------------------------------------------------- fault policy

    def _invoke(self, call: Callable[[], None], cause: Event | None, key: str) -> list[Event]:
        """Run one callback; all its emissions, or a fault and none of them
        (then, by the policy, a fresh instance: what its start emitted)."""
        faults: list[Event] = []
        # A loop, not a recursion through _fault: a strategy whose on_start
        # keeps raising would otherwise nest one call chain per restart
        # (max_restarts may be 1000) and overflow the stack, and each fault
        # would carry all the earlier ones as its context.
        while True:
            self._id_key, self._id_n = key, 0
            self._outbox = []
            try:
                if self.watchdog is None:
                    call()
                else:
                    self.watchdog.run(call, self.max_callback_s)
            # The strategy's fault, whatever it is (an overrun, a sys.exit, a
            # CancelledError too: from a synchronous callback they are the
            # strategy's own): isolate it. Only a Ctrl-C (a backtest's) stops all.
            except KeyboardInterrupt:
                raise
            except BaseException as e:
                error: BaseException = e
            else:
                out, self._outbox = self._outbox, []
                for event in out:
                    self._commit(event)
                return faults + out
            self._outbox = []
            fault = self._fault(error, cause)
            faults.append(fault)
            if not self.running:
                return faults
            call, key = self._build_and_start, self._start_key()

    def _start_key(self) -> str:
        return f"start/{self.restarts}/{self.clock.now_ns()}"

    def _spawn(self, cause: Event | None) -> list[Event]:
        return self._invoke(self._build_and_start, cause, self._start_key())

    def _build_and_start(self) -> None:
        self._instance = None
        instance = self.strategy_cls(self.params, self._context)
        self._instance = instance
        instance.on_start()
        if self._shown:
            # The first instance: on the store's latest bars; a fresh one
            # after a fault: on those the one before it was shown.
            with self._warming_up():
                for past in self.recent_bars():
                    if self.watchdog is not None:
                        self.watchdog.extend()  # each bar has the whole budget
                    instance.on_warmup(past.payload)

    def _fault(self, error: BaseException, cause: Event | None) -> Event:
        """Record ``error`` and apply the policy: stopped, or (still running)
        to be restarted by the caller with a fresh instance."""
        self.faults += 1
        text = f"{type(error).__name__}: {error}"[:MAX_ERROR_CHARS]
        self.last_error = text
        restart = (
            self.restart == "always" and self.restarts < self.max_restarts and not self._stopping
        )
        action: Literal["stopped", "restarted"] = "restarted" if restart else "stopped"
        log.error(
            "strategy %s raised (%s); %s",
            self.name,
            text,
            action,
            exc_info=(type(error), error, error.__traceback__),
        )
        fault = StrategyFaulted.create(
            StrategyFaultPayload(strategy=self.name, error=text, action=action),
            source=self.source,
            clock=self.clock,
            cause=cause,
            ids=self._next_id,
        )
        if not restart:
            self.state = "stopped"
            self._instance = None
            return fault
        self.restarts += 1
        return fault
