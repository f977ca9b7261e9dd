"""What a hosted strategy may emit: its signals and order intents, checked.

:class:`HostEmitter` is the half of :class:`~libs.strategy.host.StrategyHost`
behind its context's ``signal()`` and ``order()``: it refuses (with
:class:`StrategyUsageError`) what no venue or risk-gate would take, builds
the events with deterministic ids and puts them in the current callback's
outbox, which the host keeps or drops as a whole.
"""

from __future__ import annotations

import contextlib
import uuid
import weakref
from collections.abc import Iterator
from decimal import Decimal

from libs.contract.codec import derived_id
from libs.contract.envelope import Clock, Event, IdFactory
from libs.contract.events import (
    OrderIntentCreated,
    OrderIntentPayload,
    OrderType,
    Side,
    SignalGenerated,
    SignalPayload,
    TimeInForce,
    asset_class_of,
)
from libs.contract.options import OPTION_PREFIX, parse_option
from libs.strategy.context import Direction
from libs.strategy.ledger import IntentBook, Ledger, signed

#: Longest name and reason a strategy may give a signal. Far longer, the
#: event would pass the services' ``TRADEBUS_MAX_EVENT_BYTES`` (256 KiB): the
#: bus would still carry it, but every consumer, the recorder included, would
#: dead-letter it, and its order chain would lose its root.
MAX_SIGNAL_NAME_CHARS = 200
MAX_SIGNAL_REASON_CHARS = 4000


class StrategyUsageError(ValueError):
    """The strategy asked its context for something it may not do."""


class HostEmitter:
    """Checks and builds a host's emissions (a mixin of
    :class:`~libs.strategy.host.StrategyHost`, which sets these attributes)."""

    name: str
    symbols: tuple[str, ...]
    account: str
    clock: Clock
    source: str
    ledger: Ledger
    intents: IntentBook
    _ids: IdFactory | None
    _id_key: str
    _id_n: int
    _signals: set[uuid.UUID]
    _issued: weakref.WeakValueDictionary[uuid.UUID, SignalGenerated]
    _outbox: list[Event]
    _warming: bool

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
            cause.id in self._signals
            or cause.id in self._issued  # older, still held by the strategy
            or any(e is cause for e in self._outbox)
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
            # The risk-gate denies it too (fractional_quantity), as every broker does.
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
