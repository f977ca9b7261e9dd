"""What the opening_range_breakout restart tests share: the strategy on SPY
(a 3-minute range, 50 shares) in an in-memory runtime, bars in New York time,
the closes it sent, a day's 09:33 long, a day traded with every order filled
at its bar's close, and a runner restarted on given books (its order
history rebuilt from them, as the strategy-runner's restore rebuilds it)."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from dataclasses import replace
from decimal import Decimal

from libs.contract.envelope import Event
from libs.contract.events import BarClosed, FillReceived, OrderIntentCreated, SignalGenerated
from libs.strategy import InMemoryRuntime
from libs.strategy.examples.opening_range import OpeningRangeBreakout
from libs.strategy.testing import bar, fill_chain, ny_ns

IDS = itertools.count(1)
DAY = dt.date(2024, 1, 8)
NEXT = dt.date(2024, 1, 9)


def next_id() -> uuid.UUID:
    return uuid.UUID(int=next(IDS))


def runtime(**params: object) -> InMemoryRuntime:
    rt = InMemoryRuntime()
    rt.add(
        "orb",
        OpeningRangeBreakout,
        {"range_minutes": 3, "quantity": 50, **params},
        symbols=("SPY",),
    )
    return rt


def at(
    day: dt.date, hhmm: str, close: str, high: str | None = None, low: str | None = None
) -> Event:
    h, m = (int(x) for x in hhmm.split(":"))
    return bar("SPY", close, ny_ns(day, h, m), high=high or close, low=low or close)


def opening(day: dt.date) -> list[Event]:
    return [
        at(day, "09:30", "100", high="101", low="99"),
        at(day, "09:31", "101", high="102", low="99.5"),
        at(day, "09:32", "99", high="101.5", low="98.5"),
    ]


def closes(out: list[Event]) -> list[tuple[str, str, Decimal, str]]:
    """(signal name, side, quantity, reason) of each intent in ``out``."""
    signals = {e.id: e for e in out if isinstance(e, SignalGenerated)}
    return [
        (
            signals[e.causation_id].payload.name,
            e.payload.side,
            e.payload.quantity,
            signals[e.causation_id].payload.reason,
        )
        for e in out
        if isinstance(e, OrderIntentCreated) and e.causation_id is not None
    ]


def long_from_0933(day: dt.date) -> list[Event]:
    """The first runner's life on ``day``: its range, its 09:33 breakout
    (long 50) and the fill: the events its books are rebuilt from."""
    before = runtime()
    out = before.run([*opening(day), at(day, "09:33", "103")])
    (intent,) = [e for e in out if isinstance(e, OrderIntentCreated)]
    return [*out, *fill_chain(intent, 103, ids=next_id)]


def stamped(books: list[Event], ts_event: int, ts_init: int) -> list[Event]:
    """``books`` with their fills made at ``ts_init``, stamped ``ts_event``
    (the broker's time: a fill's ``market_ns``, its position's ``opened_ns``)."""
    return [
        e.model_copy(update={"ts_event": ts_event, "ts_init": ts_init})
        if isinstance(e, FillReceived)
        else e
        for e in books
    ]


def traded(bars: list[Event], **params: object) -> list[Event]:
    """The first runner's life over ``bars`` (with ``params``), each order
    filled at once at its bar's close: the events its books are rebuilt from."""
    rt = runtime(**params)
    events: list[Event] = []
    for event in bars:
        assert isinstance(event, BarClosed)
        out = rt.run([event])
        events += out
        for intent in [e for e in out if isinstance(e, OrderIntentCreated)]:
            fills = fill_chain(intent, event.payload.close, ids=next_id)
            rt.run(fills)
            events += fills
    return events


def restarted(
    books: list[Event],
    shown: list[Event],
    *,
    opened_known: bool = True,
    history: bool = True,
    **params: object,
) -> InMemoryRuntime:
    """A fresh runner (with ``params``) whose books hold ``books`` (its order
    history too, through the restore) and whose store gives it ``shown`` to
    warm up on. Not ``opened_known``: its ledger is seeded with their fold
    less the positions' open times (a position whose open time the ledger was
    not told), as a checkpoint seeds it. Not ``history``: seeded with their
    fold and none of them read back, as for chains that finished before the
    runner's rebuild window (``TRADEBUS_REBUILD_FINISHED_S``), folded into a
    checkpoint: the order history holds none of them."""
    rt = runtime(**params)
    host = rt.hosts["orb"]
    host.remember(shown)
    upto: dict[str, int] | None = None
    if not opened_known or not history:
        folded = runtime(**params)
        for event in books:
            folded.restore(event)
        positions = folded.hosts["orb"].ledger.positions
        if not opened_known:
            positions = {s: replace(p, opened_ns=None) for s, p in positions.items()}
        host.ledger.seed(positions)
        upto = {"orb": len(books)}
    for seq, event in enumerate(books if history else [], start=1):
        rt.restore(event, seq=seq, ledgers_upto=upto)
    rt.start()
    return rt
