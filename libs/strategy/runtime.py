"""The in-memory runtime: strategies fed events in-process, no bus, no clock.

Used by the strategies' unit tests and by the backtest harness::

    rt = InMemoryRuntime()
    rt.add("sma", SmaCrossover, {"fast_period": 5, "slow_period": 20}, symbols=("AAPL",))
    out = rt.run(bars)            # start, then feed every event; returns what was emitted

It routes each event exactly as the strategy-runner does (same
:class:`~libs.strategy.routing.Router`, same :class:`~libs.strategy.host.StrategyHost`),
so a strategy behaves the same here as live. Time comes from the injected
clock; by default an :class:`EventClock` that follows the fed events'
``ts_event``, so emitted events are stamped with market time; what a
strategy emits from ``on_start`` in :meth:`InMemoryRuntime.run` is stamped
with the first event's, as live it is with the time the runner starts, just
before its first event (or with the start time given to the clock, a
backtest's own: ``EventClock(start_ns)``). Ids come from
the injected factory, or are derived from the input events' ids: either way
two runs over the same events emit identical events.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from libs.contract.envelope import Clock, Event, IdFactory
from libs.strategy.base import Strategy, StrategyParams
from libs.strategy.host import RestartPolicy, StrategyHost
from libs.strategy.routing import Router
from libs.strategy.spec import LoadedStrategy
from libs.strategy.watchdog import Watchdog

DEFAULT_SOURCE = "strategy-runtime"


class EventClock:
    """A clock that reads the market time of the latest event fed
    (``Event.market_ns``; never goes back), from ``start_ns`` if given."""

    def __init__(self, start_ns: int | None = None) -> None:
        self._now = start_ns if start_ns is not None else 0
        #: It has a time: a start time was given, or an event was fed. Until
        #: then it reads 0, which no event should carry.
        self.is_set = start_ns is not None

    def now_ns(self) -> int:
        return self._now

    def advance(self, ts_ns: int) -> None:
        self._now = max(self._now, ts_ns)
        self.is_set = True


class InMemoryRuntime:
    """Hosts several strategies; :meth:`feed` returns what they emit, in order."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        ids: IdFactory | None = None,
        source: str = DEFAULT_SOURCE,
        watchdog: Watchdog | None = None,
    ) -> None:
        self.clock: Clock = clock if clock is not None else EventClock()
        #: Stops callbacks that run past their budget, once started (the
        #: strategy-runner starts one; a backtest runs without).
        self.watchdog = watchdog
        self.ids = ids
        self.source = source
        self.hosts: dict[str, StrategyHost] = {}
        self.router = Router()
        self.emitted: list[Event] = []
        self.started = False

    def add(
        self,
        name: str,
        strategy: type[Strategy[Any]],
        params: StrategyParams | Mapping[str, Any] | None = None,
        *,
        symbols: Iterable[str],
        account: str = "paper",
        restart: RestartPolicy = "never",
        max_restarts: int = 0,
        max_callback_s: float | None = None,
        bar_interval: str | None = None,
    ) -> StrategyHost:
        """Add a strategy (``params`` validated by its model when given as a dict);
        of bars it is shown those of ``bar_interval`` only (None: every interval)."""
        host = StrategyHost(
            name=name,
            strategy=strategy,
            params=params if params is not None else {},
            symbols=tuple(symbols),
            account=account,
            clock=self.clock,
            source=self.source,
            ids=self.ids,
            restart=restart,
            max_restarts=max_restarts,
            watchdog=self.watchdog,
            max_callback_s=max_callback_s,
            bar_interval=bar_interval,
        )
        self.router.add(name, host.symbols, bar_interval, marked=host.underlyings)
        self.hosts[name] = host
        return host

    def add_loaded(self, loaded: LoadedStrategy) -> StrategyHost:
        """Add an entry of ``strategies.yaml`` (its order account, its restart
        policy, its callback budget, its bar interval)."""
        spec = loaded.spec
        return self.add(
            spec.name,
            loaded.cls,
            loaded.params,
            symbols=spec.symbols,
            account=spec.order_account,
            restart=spec.restart,
            max_restarts=spec.max_restarts,
            max_callback_s=spec.max_callback_s,
            bar_interval=spec.bar_interval,
        )

    def _collect(self, name: str, events: list[Event]) -> list[Event]:
        self.router.note_emitted(name, events)
        self.emitted.extend(events)
        return events

    def start(self) -> list[Event]:
        """Start every strategy (``on_start``), at the clock's time: an
        :class:`EventClock` without a start time or an event fed reads 0, so
        :meth:`run` (which sets it to its first event's) is the way to start
        a backtest."""
        out: list[Event] = []
        for name, host in self.hosts.items():
            out += self._collect(name, host.start())
        self.started = True
        return out

    def feed(self, event: Event) -> list[Event]:
        """Hand ``event`` to the strategies it concerns; what they emitted in answer."""
        if isinstance(self.clock, EventClock):
            # Its market time: one stamp a day ahead (a bad clock) must not
            # move the run's clock, and every later emission, a day ahead.
            self.clock.advance(event.market_ns)
        out: list[Event] = []
        names = self.router.route(event)
        for name in names:
            out += self._collect(name, self.hosts[name].handle(event))
        for name in self.router.markers(event, names):
            self.hosts[name].mark_only(event)
        return out

    def restore(
        self, event: Event, *, seq: int = 0, ledgers_upto: Mapping[str, int] | None = None
    ) -> None:
        """Rebuild books from a past event (the strategies are not called).

        With ``ledgers_upto`` (strategy -> the sequence its ledger was seeded
        at, from a checkpoint), an event at or below a strategy's is left out
        of that strategy's ledger, which has it already; its working intents
        still take it."""
        names = self.router.route(event)
        for name in names:
            upto = (ledgers_upto or {}).get(name)
            self.hosts[name].restore(event, ledger=upto is None or seq > upto)
        for name in self.router.markers(event, names):
            upto = (ledgers_upto or {}).get(name)
            self.hosts[name].mark_only(event, ledger=upto is None or seq > upto)

    def run(self, events: Iterable[Event]) -> list[Event]:
        """Start (if not yet), feed every event; everything emitted meanwhile.

        An :class:`EventClock` that has no time yet is set to the first
        event's market time before the start: live, ``on_start`` runs at the
        wall clock's time just before the first event, not at 1970."""
        events = iter(events)
        out: list[Event] = []
        if not self.started:
            first = next(events, None)
            if first is not None:
                if isinstance(self.clock, EventClock) and not self.clock.is_set:
                    self.clock.advance(first.market_ns)
                events = itertools.chain([first], events)
            out = self.start()
        for event in events:
            out += self.feed(event)
        return out

    def stop(self) -> list[Event]:
        """Stop every strategy (``on_stop``)."""
        out: list[Event] = []
        for name, host in self.hosts.items():
            out += self._collect(name, host.stop())
        return out
