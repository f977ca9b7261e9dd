"""A strategy host's books: what each event does to its positions, intents and history.

:class:`HostBooks` is the half of :class:`~libs.strategy.host.StrategyHost`
that keeps the books: it applies each event to the ledger (fills, and the
prices that mark it), to the working intents and to the order history
(``ctx.orders()``, :mod:`libs.strategy.history`), and says which callback,
if any, the event calls. It calls none itself and emits nothing: the host
calls the callback under its fault policy.

Books are updated before the strategy is called, and also while it is
stopped: positions are facts, not opinions. The strategy-runner's checkpoint
digest hashes this module (it decides what the ledger folds).

Replays. The books drop a signal or an intent read back a second time (its
id is known: ``_signals``, ``IntentBook``), or the history would record it
again and the intents would reopen a finished one. Where a copy can come
from, in the strategy-runner: its own emissions read back by the consumer
during the catch-up (it reads the strategies' signals and intents until it
goes live, then never again), seconds after they were committed. The
rebuild reads each stored event once, the catch-up starts after the store's
last sequence, and the consumer takes no acks, so nothing is redelivered.
A read-back intent comes before the events that finish it (one stream, in
order), so a finished intent's copy is never still to come. So the ids need
not be kept for ever: those of intents finished, and of
signals made (their chain no longer working), longer ago than
``forget_after_ns`` (the runner's ``rebuild_finished_s``, by the events' own
``ts_init``, as the rebuild judges a chain) are forgotten. A restart would
not read those chains back either: a long-running runner is then in no state
a restart would not put it in. Routing does not depend on them: broker
events go by the :class:`~libs.strategy.routing.Router`'s maps.

Fills. The ledger drops a fill it took before (by the broker's key:
account, broker order id, fill id), or it would book it twice. A copy never
comes from the runner's own reading (the above; and the store keeps one
event per id, so the rebuild reads each fill once), only from its producer:
the broker-gateway makes a fill again, under the same derived event id,
when it does not know it published it (its restart's rebuild did not find
it recorded yet). JetStream drops such a copy within its duplicate window
(2 minutes); a later one is in the stream twice, and the runner reads both.
The gateway makes one again only for an order its rebuild holds (settled
within its own 7-day window, or an option settlement) whose fill the store
lacked then: the copy comes at most as long after the first as the
recorder was behind at the gateway's restart (normally seconds). So a
fill's key is forgotten as the ids are, once the fill was seen (its
``ts_init``) longer ago than ``forget_after_ns`` (``Ledger.forget_fills``),
but never sooner than ``MIN_FILL_KEYS_NS`` (a week, the gateway's own
window for settled orders): a short ``rebuild_finished_s`` does not shorten
the guard against booking a fill twice.
What that gives up: a copy made more than that after the
first (a gateway restarted with its recorder that far behind) is booked
again, as a restarted runner already books one whose first is folded into
its ledger's checkpoint (which keeps positions, no keys). The checkpoint's
count of fills folded (``Ledger.fills_applied``) counts forgotten ones too.
"""

from __future__ import annotations

import uuid
import weakref
from collections import deque
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from libs.contract.envelope import Clock, Event
from libs.contract.events import (
    BarClosed,
    FillReceived,
    MarkUpdated,
    OrderAccepted,
    OrderCanceled,
    OrderIntentCreated,
    OrderRejected,
    QuoteUpdated,
    RiskDecisionMade,
    SignalGenerated,
    TradePrinted,
)
from libs.strategy.base import OrderUpdate, OrderUpdateKind, Strategy
from libs.strategy.history import OrderHistory
from libs.strategy.ledger import IntentBook, Ledger

#: What marks a position (with fills): trades, bars' closes and marketdata's
#: option marks; and quotes, which are shown to the strategy but mark nothing.
MARKET_DATA = (BarClosed, TradePrinted, QuoteUpdated, MarkUpdated)
#: What a symbol the strategy is not shown marks its position by (with fills).
PRICES = (BarClosed, TradePrinted, MarkUpdated)
#: The least time a fill's key is kept to drop a copy, whatever
#: ``forget_after_ns`` (the module's docstring, "Fills"): the broker-gateway's
#: own rebuild window for settled orders (``rebuild_settled_s``, 7 days by
#: default), the orders whose fills it can make again.
MIN_FILL_KEYS_NS = 7 * 86_400 * 1_000_000_000


class HostBooks:
    """Applies events to a host's ledger and intents (a mixin of
    :class:`~libs.strategy.host.StrategyHost`, which sets these attributes)."""

    name: str
    symbols: tuple[str, ...]
    bar_interval: str | None
    clock: Clock
    ledger: Ledger
    intents: IntentBook
    history: OrderHistory
    #: How long after an intent finished (by the finishing event's
    #: ``ts_init``), or a signal was made, its id is kept to drop a copy.
    forget_after_ns: int
    _instance: Strategy[Any] | None
    #: Its signals' ids (within ``forget_after_ns``, or of a working chain).
    _signals: set[uuid.UUID]
    #: Its signals the strategy may still hold, to order with (``emit_order``).
    _issued: weakref.WeakValueDictionary[uuid.UUID, SignalGenerated]
    #: (time, id, is a signal) to forget, oldest first.
    _retired: deque[tuple[int, uuid.UUID, bool]]

    def restore(self, event: Event, *, ledger: bool = True) -> None:
        """Apply ``event`` to the books without calling the strategy (rebuild,
        catch-up); not to the ledger if ``ledger`` is false (it has it: a
        checkpoint's)."""
        self._apply(event, ledger=ledger)

    def mark_at_fill(self, event: FillReceived, *, ledger: bool = True) -> None:
        """Another strategy's fill (or another account's) of a symbol this one
        trades, or of one of its :attr:`underlyings`: its price marks the
        position, as a print would (the risk-gate and ``tradebus positions``
        mark it so). The strategy is not called. Which strategies a fill
        marks is the caller's choice (``Router.markers``), not checked here."""
        fill = event.payload
        if fill.settlement is None:
            # A settlement (an option's expiry) is no market price.
            self._price(fill.symbol, fill.price, event.market_ns, ledger=ledger)

    def mark_only(self, event: Event, *, ledger: bool = True) -> None:
        """``event``'s price marks the position in its symbol, and the
        strategy is not called: another's fill (:meth:`mark_at_fill`), or a
        trade, a bar (of its ``bar_interval``) or a mark of one of its
        :attr:`underlyings`, which it is not shown (it did not ask for them)
        but whose shares an option's settlement may have booked to it. The
        caller (``Router.markers``) picks the strategies an event marks. Not
        ``ledger``: the ledger has it (a checkpoint's), but for the price of a
        symbol it holds no position in (:meth:`_price`)."""
        if isinstance(event, FillReceived):
            self.mark_at_fill(event, ledger=ledger)
            return
        if not isinstance(event, PRICES):
            return
        symbol = event.payload.symbol
        if isinstance(event, BarClosed):
            if self.bar_interval in (None, event.payload.interval):
                self._price(symbol, event.payload.close, event.market_ns, ledger=ledger)
        else:
            self._price(symbol, event.payload.price, event.market_ns, ledger=ledger)

    def _price(self, symbol: str, price: Decimal, ts_ns: int, *, ledger: bool) -> None:
        """A market price of ``symbol``: it marks the ledger; or, when the ledger
        has the event already (a checkpoint's, ``ledger`` false), is only kept
        for a symbol not held, as the mark a position in it opens with
        (``Ledger.note_price``): the checkpoint stores positions only."""
        if ledger:
            self.ledger.mark(symbol, price, ts_ns)
        else:
            self.ledger.note_price(symbol, price, ts_ns)

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
            self._price(symbol, bar.close, event.market_ns, ledger=ledger)
            return None if instance is None else lambda: instance.on_bar(bar)
        if isinstance(event, TradePrinted):
            trade = event.payload
            self._price(symbol, trade.price, event.market_ns, ledger=ledger)
            return None if instance is None else lambda: instance.on_trade(trade)
        if isinstance(event, MarkUpdated):
            self._price(symbol, event.payload.price, event.market_ns, ledger=ledger)
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
        self._retire(event.ts_init, p.intent_id, signal=False)
        update = OrderUpdate(
            kind="denied",
            signal_id=event.correlation_id,
            intent_id=p.intent_id,
            order_id=None,
            symbol=intent.symbol,
            reason=f"{p.reason.value}: {p.detail}" if p.detail else p.reason.value,
        )
        self.history.ended(p.intent_id, "denied", update.reason)
        return self._order_update_call(update)

    def _apply_fill(self, event: FillReceived, *, ledger: bool = True) -> Callable[[], None] | None:
        fill = event.payload
        if ledger:
            if not self.ledger.apply_fill(fill, event.market_ns, seen_ns=event.ts_init):
                return None
            # Kept as long as the ids of a finished chain, and at least a week
            # (the module's docstring, "Fills").
            kept_ns = max(self.forget_after_ns, MIN_FILL_KEYS_NS)
            self.ledger.forget_fills(self.clock.now_ns() - kept_ns)
        intent = self.intents.filled(fill, event.correlation_id)
        if intent is not None:
            done = self.intents.get(intent.intent_id) is None
            self.history.filled(intent.intent_id, intent.remaining, done=done)
            if done:
                self._retire(event.ts_init, intent.intent_id, signal=False)
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
            rejected = isinstance(event, OrderRejected)
            kind = "rejected" if rejected else "canceled"
            reason = event.payload.reason
            if intent is not None:
                self.intents.close(intent.intent_id)
                self.history.ended(intent.intent_id, "rejected" if rejected else "canceled", reason)
                self._retire(event.ts_init, intent.intent_id, signal=False)
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

    def _commit(self, event: Event) -> None:
        """Make an emitted (or read-back) signal or intent part of the books."""
        # A replay (a restore's event read back again) is no new record.
        if isinstance(event, SignalGenerated):
            if event.id not in self._signals:
                self.history.signaled(event)
                self._signals.add(event.id)
                self._issued[event.id] = event
                self._retire(event.ts_init, event.id, signal=True)
        elif isinstance(event, OrderIntentCreated) and self.intents.add(event):
            self.history.opened(event)

    def _retire(self, at_ns: int, id_: uuid.UUID, *, signal: bool) -> None:
        """An intent finished, or a signal was made, at ``at_ns``: its id is
        forgotten ``forget_after_ns`` later (see the module's docstring);
        forget those due now."""
        retired = self._retired
        retired.append((at_ns, id_, signal))
        now = self.clock.now_ns()
        cut_off = now - self.forget_after_ns
        # Oldest first; one stamped out of order waits for those before it.
        while retired and retired[0][0] < cut_off:
            _, old, is_signal = retired.popleft()
            if not is_signal:
                self.intents.forget(old)
            elif self.intents.working_of(old):
                # A restart reads a working chain back whole: kept, asked again later.
                retired.append((now, old, True))
            else:
                self._signals.discard(old)
