"""One strategy instance, its books and its fault policy: pure and synchronous.

:class:`StrategyHost` is what both the strategy-runner (one per asyncio task)
and the in-memory runtime (backtests, unit tests) drive. It is handed events
one at a time and returns the events the strategy emitted in answer, in
order; it never does I/O.

Invariants:

- A callback's emissions are all-or-nothing. If a callback raises, whatever
  it emitted before raising is dropped (half a pair trade must never reach
  the risk-gate) and a ``StrategyFaulted`` event is emitted instead.
- Books (positions, open intents) are updated *before* the strategy is
  called, and also while it is stopped: positions are facts, not opinions.
- After a fault the strategy is stopped, or — with ``restart="always"`` and
  fewer than ``max_restarts`` restarts so far — replaced by a fresh instance
  (``on_start`` again); its books survive the restart.
- A callback that runs past ``max_callback_s`` (an endless loop) is stopped
  by the :class:`~libs.strategy.watchdog.Watchdog`, when the host is given a
  started one, and that is a fault like any other.
- Ids are deterministic: injected, or derived from the strategy's name, the
  input event's id and the emission's index, so that processing the same
  input again yields the same ids (and JetStream drops the duplicates).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any, Literal

from libs.contract.codec import derived_id
from libs.contract.envelope import Clock, Event, IdFactory
from libs.contract.events import (
    BarClosed,
    FillReceived,
    MarkUpdated,
    OrderAccepted,
    OrderCanceled,
    OrderIntentCreated,
    OrderIntentPayload,
    OrderRejected,
    OrderType,
    QuoteUpdated,
    RiskDecisionMade,
    Side,
    SignalGenerated,
    SignalPayload,
    StrategyFaulted,
    StrategyFaultPayload,
    TimeInForce,
    TradePrinted,
    asset_class_of,
)
from libs.contract.options import OPTION_PREFIX, parse_option, underlyings
from libs.strategy.base import OrderUpdate, OrderUpdateKind, Strategy, StrategyParams
from libs.strategy.context import Direction, PnL, Position
from libs.strategy.ledger import IntentBook, Ledger, signed
from libs.strategy.watchdog import Watchdog

log = logging.getLogger(__name__)

RestartPolicy = Literal["never", "always"]
HostState = Literal["new", "running", "stopped"]

#: Longest error text carried by a ``StrategyFaulted`` event.
MAX_ERROR_CHARS = 2000

#: Longest name and reason a strategy may give a signal. Far longer, the
#: event would pass the services' ``TRADEBUS_MAX_EVENT_BYTES`` (256 KiB): the
#: bus would still carry it, but every consumer, the recorder included, would
#: dead-letter it, and its order chain would lose its root.
MAX_SIGNAL_NAME_CHARS = 200
MAX_SIGNAL_REASON_CHARS = 4000

#: What marks a position (with fills): trades, bars' closes and marketdata's
#: option marks; and quotes, which are shown to the strategy but mark nothing.
MARKET_DATA = (BarClosed, TradePrinted, QuoteUpdated, MarkUpdated)
#: What a symbol the strategy is not shown marks its position by (with fills).
PRICES = (BarClosed, TradePrinted, MarkUpdated)
BROKER_EVENTS = (OrderAccepted, OrderRejected, OrderCanceled, FillReceived)


class StrategyUsageError(ValueError):
    """The strategy asked its context for something it may not do."""


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


class StrategyHost:
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
        self.state: HostState = "new"
        self.restarts = 0
        self.faults = 0
        self.last_error: str | None = None
        self._ids = ids
        self._id_key = f"init/{name}"
        self._id_n = 0
        self._signals: set[uuid.UUID] = set()
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

    def restore(self, event: Event, *, ledger: bool = True) -> None:
        """Apply ``event`` to the books without calling the strategy (rebuild,
        catch-up); not to the ledger if ``ledger`` is false (it has it: a
        checkpoint's)."""
        self._apply(event, ledger=ledger)

    def mark_at_fill(self, event: FillReceived) -> None:
        """Another strategy's fill (or another account's) of a symbol this one
        trades, or of one of its :attr:`underlyings`: its price marks the
        position, as a print would (the risk-gate and ``tradebus positions``
        mark it so). The strategy is not called."""
        fill = event.payload
        if self._marks(fill.symbol) and fill.settlement is None:
            # A settlement (an option's expiry) is no market price.
            self.ledger.mark(fill.symbol, fill.price, event.market_ns)

    def mark_only(self, event: Event) -> None:
        """``event``'s price marks the position in its symbol, and the
        strategy is not called: another's fill (:meth:`mark_at_fill`), or a
        trade, a bar (of its ``bar_interval``) or a mark of one of its
        :attr:`underlyings`, which it is not shown (it did not ask for them)
        but whose shares an option's settlement may have booked to it."""
        if isinstance(event, FillReceived):
            self.mark_at_fill(event)
            return
        if not isinstance(event, PRICES) or not self._marks(event.payload.symbol):
            return
        if isinstance(event, BarClosed):
            if self.bar_interval in (None, event.payload.interval):
                self.ledger.mark(event.payload.symbol, event.payload.close, event.market_ns)
        else:
            self.ledger.mark(event.payload.symbol, event.payload.price, event.market_ns)

    def _marks(self, symbol: str) -> bool:
        """Whether ``symbol``'s prices mark this strategy's ledger."""
        return symbol in self.symbols or symbol in self.underlyings

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

    def pending(self, symbol: str) -> Decimal:
        """Open intents in ``symbol``, including those emitted in the current callback."""
        pending = self.intents.pending(symbol)
        for e in self._outbox:
            if isinstance(e, OrderIntentCreated) and e.payload.symbol == symbol:
                pending += signed(e.payload.side, e.payload.quantity)
        return pending

    def expired(self, symbol: str) -> bool:
        """Whether ``symbol`` is an option contract past its expiry by the
        host's clock (an ``O:`` symbol that names no contract: ValueError)."""
        if not symbol.startswith(OPTION_PREFIX):
            return False
        return parse_option(symbol).expired_by(self.clock.now_ns())

    def owns_signal(self, signal_id: uuid.UUID) -> bool:
        return signal_id in self._signals

    def _apply(self, event: Event, *, ledger: bool = True) -> Callable[[], None] | None:
        """Update the books (the ledger too, unless told); return the callback
        to call, if any."""
        if isinstance(event, MARKET_DATA):
            return self._apply_market_data(event, ledger=ledger)
        if isinstance(event, RiskDecisionMade):
            return self._apply_decision(event)
        if isinstance(event, FillReceived):
            return self._apply_fill(event, ledger=ledger)
        if isinstance(event, OrderAccepted | OrderRejected | OrderCanceled):
            return self._apply_order_update(event)
        # Our own emissions read back (from the store or the stream).
        if (
            isinstance(event, SignalGenerated | OrderIntentCreated)
            and event.payload.strategy == self.name
        ):
            self._commit(event)
        return None

    def _apply_market_data(
        self,
        event: BarClosed | TradePrinted | QuoteUpdated | MarkUpdated,
        *,
        ledger: bool = True,
    ) -> Callable[[], None] | None:
        """Mark the ledger as the risk-gate marks (``evolve_orders.on_price``): at a
        trade, a bar's close or a mark marketdata made of an option's quotes,
        the newest by market time; not at a quote, whose midpoint marketdata
        may refuse as a price (too wide a spread) and makes none of for an
        equity. The strategy is shown what it has a callback for: not marks."""
        symbol = event.payload.symbol
        if symbol not in self.symbols:
            return None
        instance = self._instance
        if isinstance(event, BarClosed):
            bar = event.payload
            if ledger:
                self.ledger.mark(symbol, bar.close, event.market_ns)
            return None if instance is None else lambda: instance.on_bar(bar)
        if isinstance(event, TradePrinted):
            trade = event.payload
            if ledger:
                self.ledger.mark(symbol, trade.price, event.market_ns)
            return None if instance is None else lambda: instance.on_trade(trade)
        if isinstance(event, MarkUpdated):
            if ledger:
                self.ledger.mark(symbol, event.payload.price, event.market_ns)
            return None
        quote = event.payload
        return None if instance is None else lambda: instance.on_quote(quote)

    def _apply_decision(self, event: RiskDecisionMade) -> Callable[[], None] | None:
        p = event.payload
        if p.strategy != self.name:
            return None
        intent = self.intents.get(p.intent_id)
        if p.decision == "accepted":
            self.intents.accepted(p.intent_id, p.order_id)
            return None
        if intent is None:
            return None
        self.intents.close(p.intent_id)
        update = OrderUpdate(
            kind="denied",
            signal_id=event.correlation_id,
            intent_id=p.intent_id,
            order_id=None,
            symbol=intent.symbol,
            reason=f"{p.reason.value}: {p.detail}" if p.detail else p.reason.value,
        )
        return self._order_update_call(update)

    def _apply_fill(self, event: FillReceived, *, ledger: bool = True) -> Callable[[], None] | None:
        fill = event.payload
        if ledger and not self.ledger.apply_fill(fill, event.market_ns):
            return None
        self.intents.filled(fill, event.correlation_id)
        instance = self._instance
        return None if instance is None else lambda: instance.on_fill(fill)

    def _apply_order_update(
        self, event: OrderAccepted | OrderRejected | OrderCanceled
    ) -> Callable[[], None] | None:
        p = event.payload
        symbol = event.payload.symbol if isinstance(event, OrderAccepted) else None
        intent = self.intents.find(p.order_id, event.correlation_id, symbol)
        kind: OrderUpdateKind
        if isinstance(event, OrderAccepted):
            kind, reason = "accepted", ""
        else:
            kind = "rejected" if isinstance(event, OrderRejected) else "canceled"
            reason = event.payload.reason
            if intent is not None:
                self.intents.close(intent.intent_id)
        update = OrderUpdate(
            kind=kind,
            signal_id=event.correlation_id,
            intent_id=intent.intent_id if intent is not None else None,
            order_id=p.order_id,
            symbol=intent.symbol if intent is not None else symbol,
            reason=reason,
        )
        return self._order_update_call(update)

    def _order_update_call(self, update: OrderUpdate) -> Callable[[], None] | None:
        instance = self._instance
        return None if instance is None else lambda: instance.on_order_update(update)

    # ------------------------------------------------------------ emitting

    def _next_id(self) -> uuid.UUID:
        if self._ids is not None:
            return self._ids()
        self._id_n += 1
        return derived_id("strategy", self.name, self._id_key, self._id_n)

    def emit_signal(
        self,
        symbol: str,
        name: str,
        direction: Direction,
        reason: str,
        strength: Decimal | None,
    ) -> SignalGenerated:
        self._refuse_in_warmup()
        if symbol not in self.symbols and self.ledger.position(symbol).quantity == 0:
            raise StrategyUsageError(f"{symbol!r} is not one of {self.name}'s symbols")
        for field, text, most in (
            ("name", name, MAX_SIGNAL_NAME_CHARS),
            ("reason", reason, MAX_SIGNAL_REASON_CHARS),
        ):
            if len(text) > most:
                raise StrategyUsageError(
                    f"a signal's {field} may have at most {most} characters, not {len(text)}"
                )
        signal = SignalGenerated.create(
            SignalPayload(
                strategy=self.name,
                symbol=symbol,
                name=name,
                direction=direction,
                strength=strength,
                reason=reason,
            ),
            source=self.source,
            clock=self.clock,
            ids=self._next_id,
        )
        self._outbox.append(signal)
        return signal

    def emit_order(
        self,
        symbol: str,
        side: Side,
        quantity: Decimal,
        *,
        cause: SignalGenerated,
        order_type: OrderType,
        limit_price: Decimal | None,
        stop_price: Decimal | None,
        time_in_force: TimeInForce,
    ) -> OrderIntentCreated:
        self._refuse_in_warmup()
        if symbol not in self.symbols:
            refused = f"{symbol!r} is not one of {self.name}'s symbols"
            self._refuse_unless_reducing(symbol, side, quantity, refused)
        if cause.payload.strategy != self.name or not (
            cause.id in self._signals or any(e is cause for e in self._outbox)
        ):
            raise StrategyUsageError("an order's cause must be a signal this strategy emitted")
        if order_type in ("limit", "stop_limit") and limit_price is None:
            raise StrategyUsageError(f"a {order_type} order needs a limit_price")
        if order_type in ("stop", "stop_limit") and stop_price is None:
            raise StrategyUsageError(f"a {order_type} order needs a stop_price")
        # The risk-gate and the broker go by the type: a price it does not use
        # is dropped, and a stop-loss left a market order sells at once.
        if order_type in ("market", "stop") and limit_price is not None:
            raise StrategyUsageError(
                f"a {order_type} order takes no limit_price (a limit order is "
                f"order_type='limit' or 'stop_limit')"
            )
        if order_type in ("market", "limit") and stop_price is not None:
            raise StrategyUsageError(
                f"a {order_type} order takes no stop_price (a stop order is "
                f"order_type='stop' or 'stop_limit')"
            )
        if self.expired(symbol):
            # The risk-gate denies it (contract_expired) and every broker
            # refuses it, a close included: a strategy that answers the
            # refusal by ordering again loops for ever (pairs_trade sent its
            # expired leg's close every minute). Refused here, at once.
            raise StrategyUsageError(
                f"{symbol} {parse_option(symbol).expired_text}: no venue takes an order in it, "
                f"a closing one included (the broker settles the position); ask "
                f"ctx.expired(symbol) before ordering it"
            )
        asset_class = asset_class_of(symbol)
        why = parse_option(symbol).unsupported if asset_class == "option" else None
        if why is not None:
            # The risk-gate denies it too (contract_unsupported), and
            # strategies.yaml refuses the symbol: here for a strategy hosted
            # without it (a backtest's, a test's), or one closing a position
            # taken before the refusal, which it may.
            self._refuse_unless_reducing(
                symbol, side, quantity, f"{symbol} is not supported: {why}"
            )
        if (
            asset_class == "option"
            and isinstance(quantity, Decimal)  # an int is whole; the contract checks the rest
            and quantity.is_finite()
            and quantity != quantity.to_integral_value()
        ):
            # The risk-gate passes it; every broker rejects part of a contract.
            raise StrategyUsageError(
                f"an option's quantity is a whole number of contracts, not {quantity} of {symbol}"
            )
        intent = OrderIntentCreated.create(
            OrderIntentPayload(
                strategy=self.name,
                account=self.account,
                symbol=symbol,
                side=side,
                quantity=quantity,
                order_type=order_type,
                limit_price=limit_price,
                stop_price=stop_price,
                time_in_force=time_in_force,
                asset_class=asset_class,
            ),
            source=self.source,
            clock=self.clock,
            cause=cause,
            ids=self._next_id,
        )
        self._outbox.append(intent)
        return intent

    def _refuse_unless_reducing(
        self, symbol: str, side: Side, quantity: Decimal, refused: str
    ) -> None:
        """Refuse (``refused``, saying why) an order in ``symbol`` unless it
        reduces a position the strategy holds in it, never past flat (its
        open intents counted). For a symbol not the strategy's own: the
        underlying's shares an option's exercise or assignment gave it (the
        gateway books them to the contract's strategy), which it could not
        close otherwise; for a contract tradebus cannot settle: one held
        before it was refused. The risk-gate lets the same through (a symbol
        not among a strategy's may be sold down, never added to)."""
        held = self.ledger.position(symbol).quantity
        if held == 0:
            raise StrategyUsageError(refused)
        after = held + self.pending(symbol) + signed(side, quantity)
        if signed(side, quantity) * held >= 0 or after * held < 0:
            raise StrategyUsageError(
                f"{refused}: an order in it may only reduce the position held ({held}, "
                f"{self.pending(symbol)} pending), not {side} {quantity}"
            )

    @contextlib.contextmanager
    def _warming_up(self) -> Iterator[None]:
        """While the strategy is shown past bars: emitting is refused."""
        self._warming = True
        try:
            yield
        finally:
            self._warming = False

    def _refuse_in_warmup(self) -> None:
        if self._warming:
            raise StrategyUsageError(
                "on_warmup may not emit signals or orders: the bars it is shown are past"
            )

    def _commit(self, event: Event) -> None:
        """Make an emitted (or read-back) signal or intent part of the books."""
        if isinstance(event, SignalGenerated):
            self._signals.add(event.id)
        elif isinstance(event, OrderIntentCreated):
            self._signals.add(event.correlation_id)
            self.intents.add(event)

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
