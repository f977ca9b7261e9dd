"""Which strategies an event concerns: pure, shared by the runner and backtests.

- Market data goes to every strategy configured for its symbol; a bar only
  to those that take its interval (``bar_interval``; None: every interval).
  marketdata's option marks (``MarkUpdated``) too: they mark the strategy's
  ledger, as they mark the risk-gate's positions, without calling it.
- A strategy's own signals and intents (read back) and the risk-gate's
  decisions name the strategy in their payload.
- Broker events (acks, rejects, cancels, fills) do not name a strategy; they
  carry the order id, which the risk-gate derives from the intent's id
  (``order_id_for``), and the chain's correlation id. The router remembers
  each intent's order id (and any other order id an accepted decision names)
  and which strategy emitted each signal, and routes by the order id first:
  the chain is not always the order's (the risk-gate's FlattenAccount and
  CancelOrder carry the chain of the event that tripped them, often a fill
  of another strategy's order, and the broker's cancels and closing fills
  carry it on).
- The order routes of working orders are kept until the order finishes,
  however many orders come after it (an order may rest for days, good till
  canceled, or for hours among a burst of others): its late fill or cancel
  must reach the books, or its intent stays working in them for ever and
  its position misses the fill. An order finishes on the events the books
  close its intent on (``HostBooks``): the risk-gate's denial of its intent,
  the broker's reject or cancel, a fill with nothing left (``complete``, or
  ``leaves_quantity`` 0). Its route is then kept among the ``max_tracked``
  most recently used of finished orders (a fill racing a cancel, a copy
  still routes), and the signal routes are the ``max_tracked`` most
  recently used: both bounded by count. The working routes are bounded by
  the orders working, which the books keep too. After a restart they are
  rebuilt from the restored chains (the rebuild reads every working chain
  whole, and routes each event as live: ``InMemoryRuntime.restore``).
- A fill of an order the router does not know goes to the strategy it is
  booked to (``FillPayload.strategy``: the closing order of a
  ``FlattenAccount``, which the broker-gateway books to the strategies whose
  positions it closes), or to none, whatever its chain; another broker event
  of an unknown order, by its chain.
- A fill's price also marks its symbol for the other strategies trading it
  (:meth:`Router.markers`), as a print would: the risk-gate and ``tradebus
  positions`` mark every holder at it, so their ledgers must too.
- The prices (trades, bars, marks, fills) of the underlyings of a strategy's
  option contracts that are not among its symbols mark its ledger without
  calling it (:meth:`Router.markers`): an exercise or an assignment books
  the underlying's shares to it, and the risk-gate and ``tradebus
  positions`` mark them.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Iterable

from libs.contract.codec import order_id_for
from libs.contract.envelope import Event
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

#: Signals, and finished orders, remembered per router before the least
#: recently used are forgotten (working orders are all kept).
DEFAULT_MAX_TRACKED = 200_000


class _Lru:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[uuid.UUID, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: uuid.UUID, value: str) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def get(self, key: uuid.UUID) -> str | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value


class _OrderRoutes:
    """Order id -> strategy: every working order's route until the order
    finishes, then among the ``capacity`` most recently used finished ones."""

    def __init__(self, capacity: int) -> None:
        self.working: dict[uuid.UUID, str] = {}
        self.finished = _Lru(capacity)

    def __len__(self) -> int:
        return len(self.working) + len(self.finished)

    def open(self, order_id: uuid.UUID, name: str) -> None:
        """``order_id`` is working (an intent, an accepted decision); not if
        it finished already: a copy read back, or a decision late in the
        stream, does not reopen it."""
        if self.finished.get(order_id) is None:
            self.working[order_id] = name

    def get(self, order_id: uuid.UUID) -> str | None:
        name = self.working.get(order_id)
        return name if name is not None else self.finished.get(order_id)

    def finish(self, order_id: uuid.UUID) -> str | None:
        """``order_id`` finished: its route moves to the finished ones."""
        name = self.working.pop(order_id, None)
        if name is None:
            return self.finished.get(order_id)
        self.finished.put(order_id, name)
        return name


class Router:
    """Routes events to strategy names."""

    def __init__(self, *, max_tracked: int = DEFAULT_MAX_TRACKED) -> None:
        self._by_symbol: dict[str, list[str]] = {}
        #: The strategies a symbol marks without being routed to them: the
        #: underlyings of their option contracts that they do not trade.
        self._marked_by: dict[str, list[str]] = {}
        #: The strategies of a symbol that take bars of an interval.
        self._bars: dict[tuple[str, str], tuple[str, ...]] = {}
        self._intervals: dict[str, str | None] = {}
        self._names: set[str] = set()
        self._by_signal = _Lru(max_tracked)
        self._by_order = _OrderRoutes(max_tracked)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._names)

    def add(
        self,
        name: str,
        symbols: Iterable[str],
        bar_interval: str | None = None,
        *,
        marked: Iterable[str] = (),
    ) -> None:
        """Route ``symbols``' market data to ``name``: of bars, only those of
        ``bar_interval`` (None: every interval); the prices of ``marked``
        (its option contracts' underlyings, ``StrategyHost.underlyings``) only
        mark it (:meth:`markers`)."""
        if name in self._names:
            raise ValueError(f"strategy {name!r} is already routed")
        self._names.add(name)
        self._intervals[name] = bar_interval
        symbols = tuple(symbols)
        for symbol in symbols:
            self._by_symbol.setdefault(symbol, []).append(name)
        for symbol in marked:
            if symbol not in symbols:
                self._marked_by.setdefault(symbol, []).append(name)
        self._bars.clear()

    def marked_symbols(self) -> dict[str, set[str | None]]:
        """The symbols whose prices only mark strategies, each with the bar
        intervals those take (None: every interval)."""
        return {
            symbol: {self._intervals[n] for n in names} for symbol, names in self._marked_by.items()
        }

    def _bar_takers(self, symbol: str, interval: str) -> tuple[str, ...]:
        key = (symbol, interval)
        names = self._bars.get(key)
        if names is None:
            names = self._bars[key] = tuple(
                n for n in self._by_symbol.get(symbol, ()) if self._intervals[n] in (None, interval)
            )
        return names

    def note_emitted(self, name: str, events: Iterable[Event]) -> None:
        """Remember the signals ``name`` emitted, so their chains route back to it."""
        for event in events:
            if isinstance(event, SignalGenerated | OrderIntentCreated):
                self._own(event, name)

    def _own(self, event: SignalGenerated | OrderIntentCreated, name: str) -> None:
        """``name`` owns the chain of ``event`` and, for an intent, its order id."""
        self._by_signal.put(event.correlation_id, name)
        if isinstance(event, OrderIntentCreated):
            self._by_order.open(order_id_for(event.id), name)

    def owner_of_signal(self, signal_id: uuid.UUID) -> str | None:
        return self._by_signal.get(signal_id)

    def markers(self, event: Event, owners: tuple[str, ...]) -> tuple[str, ...]:
        """The strategies ``event`` marks without concerning them (less
        ``owners``, what :meth:`route` gave): of a fill, those trading its
        symbol; of a fill, a trade, a bar (of the interval they take) or a
        mark, those it is an option's underlying for and not their own."""
        if isinstance(event, FillReceived):
            symbol = event.payload.symbol
            names = (*self._by_symbol.get(symbol, ()), *self._marked_by.get(symbol, ()))
            return tuple(n for n in names if n not in owners)
        if isinstance(event, TradePrinted | MarkUpdated):
            return tuple(self._marked_by.get(event.payload.symbol, ()))
        if isinstance(event, BarClosed):
            interval = event.payload.interval
            return tuple(
                n
                for n in self._marked_by.get(event.payload.symbol, ())
                if self._intervals[n] in (None, interval)
            )
        return ()

    def route(self, event: Event) -> tuple[str, ...]:
        """The names of the strategies ``event`` concerns (possibly none)."""
        if isinstance(event, BarClosed):
            return self._bar_takers(event.payload.symbol, event.payload.interval)
        if isinstance(event, TradePrinted | QuoteUpdated | MarkUpdated):
            return tuple(self._by_symbol.get(event.payload.symbol, ()))
        if isinstance(event, SignalGenerated | OrderIntentCreated):
            name = event.payload.strategy
            if name not in self._names:
                return ()
            self._own(event, name)
            return (name,)
        if isinstance(event, RiskDecisionMade):
            name = event.payload.strategy
            if name not in self._names:
                return ()
            p = event.payload
            if p.decision == "accepted":
                if p.order_id is not None:
                    derived = order_id_for(p.intent_id)
                    if p.order_id != derived:
                        # The books re-map the intent to the gate's id (IntentBook.accepted).
                        self._by_order.finish(derived)
                    self._by_order.open(p.order_id, name)
            else:
                self._by_order.finish(order_id_for(p.intent_id))
            return (name,)
        if isinstance(event, OrderAccepted | OrderRejected | OrderCanceled | FillReceived):
            # The order id first: a chain is not always the order's. The
            # risk-gate's reactions (FlattenAccount, CancelOrder) carry the
            # chain of the event that tripped them, often a fill of one
            # strategy's order, and the broker's cancels of every working
            # order and the closing orders' fills carry it on.
            order_id = event.payload.order_id
            owner = (
                self._by_order.finish(order_id)
                if _finishes(event)
                else self._by_order.get(order_id)
            )
            if owner is None and isinstance(event, FillReceived):
                # A fill of an order no strategy placed: the closing order of
                # a FlattenAccount, booked by the gateway to the strategy
                # whose position it closed (None: to nobody, as the risk-gate
                # books it). The strategy's books, and only its, must see it.
                booked = event.payload.strategy
                return (booked,) if booked in self._names else ()
            if owner is None:
                owner = self._by_signal.get(event.correlation_id)
            return (owner,) if owner is not None else ()
        return ()


def _finishes(event: OrderAccepted | OrderRejected | OrderCanceled | FillReceived) -> bool:
    """Whether the broker event ends its order, as the books judge it
    (``HostBooks``: they close the intent on it)."""
    if isinstance(event, FillReceived):
        return event.payload.status == "complete" or event.payload.leaves_quantity == 0
    return not isinstance(event, OrderAccepted)
