"""What the pairs_trade tests share: the strategy on MSFT/AAPL in an
in-memory runtime, a minute of both legs' bars, ids, readers of what it
emitted and holds, and a first runner's life to restart from (``Run``)."""

from __future__ import annotations

import itertools
import uuid
from decimal import Decimal

from libs.contract.envelope import Event
from libs.contract.events import (
    OrderCanceled,
    OrderCanceledPayload,
    OrderIntentCreated,
    SubmitOrder,
)
from libs.strategy import InMemoryRuntime
from libs.strategy.examples.pairs import PairsTrade
from libs.strategy.testing import MINUTE_NS, At, bar, fill_chain

IDS = itertools.count(1)
T0 = 1_700_000_000 * 1_000_000_000
#: Where the tests fill each leg.
PRICES = {"MSFT": Decimal(105), "AAPL": Decimal(100)}


def next_id() -> uuid.UUID:
    return uuid.UUID(int=next(IDS))


def runtime() -> InMemoryRuntime:
    rt = InMemoryRuntime()
    rt.add(
        "pair",
        PairsTrade,
        {"lookback": 5, "entry_z": 2, "exit_z": "0.5", "leg_notional": 10_000},
        symbols=("MSFT", "AAPL"),
    )
    return rt


def minute(i: int, msft: str, aapl: str = "100") -> list[Event]:
    return [bar("MSFT", msft, T0 + i * MINUTE_NS), bar("AAPL", aapl, T0 + i * MINUTE_NS)]


def intents(out: list[Event]) -> dict[str, OrderIntentCreated]:
    """The orders in ``out`` by leg: at most one per leg."""
    found = [e for e in out if isinstance(e, OrderIntentCreated)]
    by_symbol = {e.payload.symbol: e for e in found}
    assert len(by_symbol) == len(found)  # at most one order per leg
    return by_symbol


def legs(out: list[Event]) -> list[tuple[str, str, Decimal]]:
    return [(e.payload.symbol, e.payload.side, e.payload.quantity) for e in intents(out).values()]


def position(rt: InMemoryRuntime, symbol: str) -> Decimal:
    return rt.hosts["pair"].ledger.position(symbol).quantity


class Run:
    """The first runner's life: everything it emitted and was sent, in order."""

    def __init__(self) -> None:
        self.rt = runtime()
        self.history: list[Event] = []
        for i, msft in enumerate(["100", "101", "100", "101", "100"]):
            self.run(minute(i, msft))

    def run(self, events: list[Event]) -> list[Event]:
        out = self.rt.run(events)
        self.history += [*events, *out]
        return out

    def feed(self, events: list[Event]) -> list[Event]:
        out: list[Event] = []
        for event in events:
            self.history.append(event)
            answer = self.rt.feed(event)
            self.history += answer
            out += answer
        return out

    def fill(
        self,
        intent: OrderIntentCreated,
        quantity: Decimal | None = None,
        *,
        price: Decimal | None = None,
    ) -> list[Event]:
        """``intent`` filled (``quantity`` of it, at ``price``: by default all, at ``PRICES``)."""
        at = PRICES[intent.payload.symbol] if price is None else price
        return self.feed(fill_chain(intent, at, ids=next_id, quantity=quantity))

    def while_down(self, events: list[Event]) -> None:
        """``events`` happened while the runner was down: recorded, not handled."""
        self.history += events

    def part_fill_then_cancel(self, intent: OrderIntentCreated, quantity: Decimal) -> list[Event]:
        """``quantity`` of ``intent`` filled, the rest canceled by the broker."""
        return self.feed(part_filled_then_canceled(intent, quantity))

    def restarted(self, *, warm: bool = False) -> InMemoryRuntime:
        """A fresh runtime, its books rebuilt from everything so far (the
        store's and the catch-up's) through ``HostBooks.restore``, as the
        runner rebuilds them: positions, working intents and the order
        history (the strategy's own signals and intents, and what became of
        them), not yet shown a live bar; ``warm``: it
        is warmed up at its start on the latest bars, as the runner warms it
        on the store's (``warmup_bars`` of each leg)."""
        rt = runtime()
        for event in self.history:
            rt.restore(event)
        if warm:
            rt.hosts["pair"].remember(self.history)
        return rt

    def enter_short(self) -> dict[str, OrderIntentCreated]:
        """The wide minute: sell 95 MSFT, buy 100 AAPL."""
        entry = intents(self.run(minute(5, "105")))
        assert legs(list(entry.values())) == [
            ("MSFT", "sell", Decimal(95)),
            ("AAPL", "buy", Decimal(100)),
        ]
        return entry


def part_filled_then_canceled(intent: OrderIntentCreated, quantity: Decimal) -> list[Event]:
    """``quantity`` of ``intent`` filled, the rest canceled by the broker."""
    decision, command, ack, fill = fill_chain(
        intent, PRICES[intent.payload.symbol], ids=next_id, quantity=quantity
    )
    assert isinstance(command, SubmitOrder)
    canceled = OrderCanceled.create(
        OrderCanceledPayload(order_id=command.payload.order_id, account="paper", reason="ioc"),
        source="test/broker",
        clock=At(ack.ts_event),
        cause=ack,
        ids=next_id,
    )
    return [decision, command, ack, fill, canceled]


def exit_signaled(run: Run) -> dict[str, OrderIntentCreated]:
    for intent in run.enter_short().values():
        run.fill(intent)
    closes = intents(run.run(minute(6, "100.5")))
    assert legs(list(closes.values())) == [
        ("MSFT", "buy", Decimal(95)),
        ("AAPL", "sell", Decimal(100)),
    ]
    return closes
