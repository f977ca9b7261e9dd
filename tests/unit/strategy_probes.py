"""Strategies and helpers the strategy SDK's tests share: ``Probe`` records every
callback and buys on a bar closing at 100; ``of_type`` picks events of a type."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import TypeVar

from libs.contract.envelope import Event
from libs.strategy import Bar, Fill, InMemoryRuntime, OrderUpdate, Quote, Strategy, StrategyParams


def counter_ids() -> Callable[[], uuid.UUID]:
    n = itertools.count(1)
    return lambda: uuid.UUID(int=next(n))


T = TypeVar("T")


def of_type(events: list[Event], cls: type[T]) -> list[T]:
    return [e for e in events if isinstance(e, cls)]


class ProbeParams(StrategyParams):
    quantity: Decimal = Decimal(10)


class Probe(Strategy[ProbeParams]):
    """Buys on a bar closing at 100, records every callback."""

    def on_start(self) -> None:
        self.seen: list[object] = []

    def on_bar(self, bar: Bar) -> None:
        self.seen.append(bar)
        if bar.close == 100:
            signal = self.ctx.signal(bar.symbol, "probe", "long", reason="close is 100")
            self.ctx.order(bar.symbol, "buy", self.params.quantity, cause=signal)

    def on_quote(self, quote: Quote) -> None:
        self.seen.append(quote)

    def on_fill(self, fill: Fill) -> None:
        self.seen.append(fill)

    def on_order_update(self, update: OrderUpdate) -> None:
        self.seen.append(update)


def probe_seen(rt: InMemoryRuntime, name: str) -> list[object]:
    instance = rt.hosts[name].instance
    assert isinstance(instance, Probe)
    return instance.seen
