"""A strategy's own orders and signals (``ctx.orders()``, ``ctx.last_signal()``):
what becomes of each intent, kept after it finishes; the same whether the
events came live or through a rebuild (a restart of the strategy-runner);
bounded; and the same in a backtest."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path

import pytest

from libs.contract.envelope import Event
from libs.contract.events import (
    BarClosed,
    FillReceived,
    OrderCanceled,
    OrderCanceledPayload,
    OrderIntentCreated,
    ReasonCode,
    SignalGenerated,
)
from libs.strategy import (
    Bar,
    InMemoryRuntime,
    OrderRecord,
    OrderUpdate,
    SignalRecord,
    Strategy,
    StrategyContext,
)
from libs.strategy.history import OrderHistory
from libs.strategy.testing import (
    MINUTE_NS,
    At,
    EchoStrategy,
    bar,
    broker_reject,
    deny,
    fill_chain,
)
from tests.unit.strategy_probes import Probe, ProbeParams, counter_ids, of_type, probe_seen

D = Decimal
DAY_NS = 86_400 * 10**9
#: A Monday, 00:00 UTC.
DAY0 = 1_700_438_400 * 10**9


def ctx_of(rt: InMemoryRuntime, name: str) -> StrategyContext:
    instance = rt.hosts[name].instance
    assert instance is not None
    return instance.ctx


def next_fill(fill: Event, quantity: int, *, ids: Callable[[], uuid.UUID]) -> FillReceived:
    """The broker's next fill of ``fill``'s order: ``quantity`` more."""
    assert isinstance(fill, FillReceived)
    p = fill.payload
    cumulative = p.cumulative_quantity + quantity
    leaves = p.leaves_quantity - quantity
    payload = p.model_copy(
        update={
            "fill_id": f"{p.fill_id}+{quantity}",
            "quantity": D(quantity),
            "cumulative_quantity": cumulative,
            "leaves_quantity": leaves,
            "status": "complete" if leaves == 0 else "partial",
        }
    )
    return fill.model_copy(update={"id": ids(), "payload": payload})


def canceled(fill: Event, reason: str, *, ids: Callable[[], uuid.UUID]) -> OrderCanceled:
    """The broker's cancel of the order ``fill`` is of, the rest unfilled."""
    assert isinstance(fill, FillReceived)
    p = fill.payload
    return OrderCanceled.create(
        OrderCanceledPayload(order_id=p.order_id, account=p.account, reason=reason),
        source="test/broker",
        clock=At(fill.ts_event),
        cause=fill,
        ids=ids,
    )


def five_orders() -> tuple[list[Event], list[Event]]:
    """Probe buys 10 AAPL at each of five bars closing at 100; what becomes
    of them: filled whole, filled 4 then 6, filled 4 then canceled, denied,
    rejected by the broker. The bars with what the strategy emitted (as the
    store holds them: each bar, then its emissions), and the answers."""
    ids = counter_ids()
    rt = InMemoryRuntime(ids=ids)
    rt.add("a", Probe, symbols=("AAPL",))
    emitted: list[Event] = []
    for k in range(5):
        b = bar("AAPL", 100, DAY0 + k * MINUTE_NS)
        emitted += [b, *rt.run([b])]
    one, two, three, four, five = of_type(emitted, OrderIntentCreated)
    later = DAY0 + 10 * MINUTE_NS
    answers: list[Event] = fill_chain(one, 100, ids=ids, at_ns=later)
    parts = fill_chain(two, 100, ids=ids, quantity=D(4), at_ns=later)
    answers += [*parts, next_fill(parts[-1], 6, ids=ids)]
    parts = fill_chain(three, 100, ids=ids, quantity=D(4), at_ns=later)
    answers += [*parts, canceled(parts[-1], "canceled by the broker", ids=ids)]
    answers.append(deny(four, ids=ids, reason=ReasonCode.MAX_STRATEGY_POSITION))
    answers += broker_reject(five, "insufficient buying power", ids=ids, at_ns=later)
    return emitted, answers


def test_each_way_an_order_ends_is_recorded_and_kept() -> None:
    ids = counter_ids()
    rt = InMemoryRuntime(ids=ids)
    rt.add("a", Probe, symbols=("AAPL",))
    emitted, answers = five_orders()
    # The strategy emits its signals and intents again, with the same ids.
    assert rt.run([e for e in emitted if isinstance(e, BarClosed)]) == [
        e for e in emitted if not isinstance(e, BarClosed)
    ]
    ctx = ctx_of(rt, "a")
    made = ctx.orders()
    assert [(r.status, r.filled) for r in made] == [("working", D(0))] * 5
    intents = of_type(emitted, OrderIntentCreated)
    assert [r.intent_id for r in made] == [i.id for i in intents]
    first = made[0]
    assert first == OrderRecord(
        intent_id=intents[0].id,
        signal_id=intents[0].correlation_id,
        signal_name="probe",
        signal_direction="long",
        symbol="AAPL",
        side="buy",
        quantity=D(10),
        filled=D(0),
        status="working",
        reason="",
        created_ns=DAY0 + MINUTE_NS,  # the first bar's end: the clock then
    )
    assert first.created_ns == intents[0].ts_event

    for event in answers:
        rt.feed(event)
    done = ctx.orders()
    assert [(r.status, r.filled, r.reason) for r in done] == [
        ("filled", D(10), ""),
        ("filled", D(10), ""),
        ("canceled", D(4), "canceled by the broker"),
        ("denied", D(0), "max_strategy_position"),
        ("rejected", D(0), "insufficient buying power"),
    ]
    # The reasons are those the strategy's on_order_update was told.
    told = [u for u in probe_seen(rt, "a") if isinstance(u, OrderUpdate) and u.kind != "accepted"]
    assert [(u.kind, u.reason) for u in told] == [(r.status, r.reason) for r in done[2:]]
    assert not any(r.working for r in done)
    assert ctx.pending("AAPL") == 0


def test_a_part_fill_is_recorded_while_the_order_works() -> None:
    ids = counter_ids()
    rt = InMemoryRuntime(ids=ids)
    rt.add("a", Probe, symbols=("AAPL",))
    [intent] = of_type(rt.run([bar("AAPL", 100, DAY0)]), OrderIntentCreated)
    for event in fill_chain(intent, 100, ids=ids, quantity=D(3)):
        rt.feed(event)
    [record] = ctx_of(rt, "a").orders()
    assert (record.status, record.filled, record.working) == ("working", D(3), True)
    assert ctx_of(rt, "a").pending("AAPL") == D(7)


class ReadsInItsCallback(Strategy[ProbeParams]):
    """Signals and orders on each bar, then reads its history in the same callback."""

    def on_start(self) -> None:
        self.read: list[tuple[Sequence[OrderRecord], SignalRecord | None]] = []

    def on_bar(self, bar: Bar) -> None:
        name = "entry" if bar.close == 100 else "exit"
        signal = self.ctx.signal(bar.symbol, name, "long" if name == "entry" else "flat")
        self.ctx.order(bar.symbol, "buy" if name == "entry" else "sell", D(1), cause=signal)
        self.read.append((self.ctx.orders(bar.symbol), self.ctx.last_signal()))


def test_what_the_strategy_emitted_in_this_callback_is_in_its_history_at_once() -> None:
    rt = InMemoryRuntime(ids=counter_ids())
    rt.add("r", ReadsInItsCallback, symbols=("AAPL",))
    rt.run([bar("AAPL", 100, DAY0), bar("AAPL", 101, DAY0 + MINUTE_NS)])
    instance = rt.hosts["r"].instance
    assert isinstance(instance, ReadsInItsCallback)
    (first, signal1), (second, signal2) = instance.read
    assert [(r.signal_name, r.side, r.status) for r in first] == [("entry", "buy", "working")]
    assert signal1 is not None
    assert (signal1.name, signal1.direction) == ("entry", "long")
    # The second callback sees the first's order (committed) and its own.
    assert [(r.signal_name, r.side) for r in second] == [("entry", "buy"), ("exit", "sell")]
    assert second[0] == first[0]
    assert signal2 is not None
    assert signal2.name == "exit"
    # Read from outside after the callback: the same records.
    assert ctx_of(rt, "r").orders() == second


def test_last_signal_by_name_and_symbol() -> None:
    rt = InMemoryRuntime(ids=counter_ids())
    rt.add("r", ReadsInItsCallback, symbols=("AAPL", "MSFT"))
    rt.run(
        [
            bar("AAPL", 100, DAY0),
            bar("MSFT", 101, DAY0 + MINUTE_NS),
            bar("AAPL", 101, DAY0 + 2 * MINUTE_NS),
        ]
    )
    ctx = ctx_of(rt, "r")
    newest = ctx.last_signal()
    assert newest is not None
    assert (newest.symbol, newest.name, newest.created_ns) == ("AAPL", "exit", DAY0 + 3 * MINUTE_NS)
    entry = ctx.last_signal("entry")
    assert entry is not None
    assert (entry.symbol, entry.direction) == ("AAPL", "long")
    msft = ctx.last_signal("exit", symbol="MSFT")
    assert msft is not None
    assert msft.created_ns == DAY0 + 2 * MINUTE_NS
    assert ctx.last_signal("entry", symbol="MSFT") is None
    assert ctx.last_signal("nothing") is None
    assert [r.signal_id for r in ctx.orders()] == [
        entry.signal_id,
        msft.signal_id,
        newest.signal_id,
    ]
    assert [r.symbol for r in ctx.orders("MSFT")] == ["MSFT"]
    assert [r.signal_name for r in ctx.orders(since_ns=DAY0 + 2 * MINUTE_NS)] == ["exit", "exit"]
    assert ctx.orders(since_ns=DAY0 + 4 * MINUTE_NS) == ()


def _history(rt: InMemoryRuntime, name: str) -> tuple[tuple[OrderRecord, ...], SignalRecord | None]:
    host = rt.hosts[name]
    return host.history.orders(), host.history.last_signal()


def test_the_records_are_the_same_live_and_rebuilt_from_the_store() -> None:
    """Live, the strategy emitted its signals and intents and the answers
    came after; a restart of the strategy-runner rebuilds the books from the
    store's copy of the same events (``restore``, the strategy not called),
    with or without a ledger checkpoint, and its catch-up reads its own
    emissions back a second time: the same records, none twice."""
    emitted, answers = five_orders()
    ids = counter_ids()
    live = InMemoryRuntime(ids=ids)
    live.add("a", Probe, symbols=("AAPL",))
    live.run([e for e in emitted if isinstance(e, BarClosed)])
    for event in answers:
        live.feed(event)
    expected = _history(live, "a")
    assert len(expected[0]) == 5
    assert len({r.status for r in expected[0]}) == 4  # not trivially alike

    store = [*emitted, *answers]
    for upto in (None, len(store)):  # without a checkpoint, and with all in one
        rebuilt = InMemoryRuntime(ids=ids)
        rebuilt.add("a", Probe, symbols=("AAPL",))
        for seq, event in enumerate(store, 1):
            rebuilt.restore(event, seq=seq, ledgers_upto=None if upto is None else {"a": upto})
        assert _history(rebuilt, "a") == expected
        # The catch-up (or a redelivery) brings its emissions, and the rest, again.
        for event in store:
            rebuilt.restore(event)
        assert _history(rebuilt, "a") == expected
        # Started after the rebuild, the strategy sees the same through its context.
        rebuilt.start()
        ctx = ctx_of(rebuilt, "a")
        assert ctx.orders() == expected[0]
        assert ctx.last_signal() == expected[1]


def test_the_history_keeps_every_working_order_and_the_newest_finished(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(OrderHistory, "MAX_FINISHED", 3)
    monkeypatch.setattr(OrderHistory, "MAX_SIGNALS", 2)
    ids = counter_ids()
    rt = InMemoryRuntime(ids=ids)
    rt.add("echo", EchoStrategy, symbols=("AAPL",))
    out = rt.run([bar("AAPL", 100 + k, DAY0 + k * MINUTE_NS) for k in range(7)])
    intents = of_type(out, OrderIntentCreated)
    assert len(intents) == 7
    # The first and the fourth stay working; the others are denied in turn.
    for k in (1, 2, 4, 5, 6):
        rt.feed(deny(intents[k], ids=ids))
    history = rt.hosts["echo"].history
    kept = [i.id for i in intents]
    assert [r.intent_id for r in history.orders()] == [kept[0], kept[3], *kept[4:]]
    assert len(history) == 5
    # An evicted intent read back again (a redelivery) is not recorded again.
    rt.restore(intents[1])
    rt.restore(deny(intents[1], ids=ids))
    assert [r.intent_id for r in history.orders()] == [kept[0], kept[3], *kept[4:]]
    # Signals: the newest two.
    # Signals: the newest two.
    signals = of_type(out, SignalGenerated)
    newest = history.last_signal()
    assert newest is not None
    assert newest.signal_id == signals[-1].id
    assert ctx_of(rt, "echo").last_signal(symbol="AAPL") == newest
    assert [s.signal_id for s in history._signals.values()] == [s.id for s in signals[-2:]]


class OrdersOnItsFirstSignal(Strategy[ProbeParams]):
    """Signals at each bar; orders at each, caused by its first signal."""

    def on_start(self) -> None:
        self.first: SignalGenerated | None = None

    def on_bar(self, bar: Bar) -> None:
        signal = self.ctx.signal(bar.symbol, "first" if self.first is None else "later", "long")
        self.first = self.first or signal
        self.ctx.order(bar.symbol, "buy", D(1), cause=self.first)


def test_an_order_of_a_signal_no_longer_kept_has_no_signal_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(OrderHistory, "MAX_SIGNALS", 2)
    rt = InMemoryRuntime(ids=counter_ids())
    rt.add("f", OrdersOnItsFirstSignal, symbols=("AAPL",))
    rt.run([bar("AAPL", 100 + k, DAY0 + k * MINUTE_NS) for k in range(3)])
    orders = ctx_of(rt, "f").orders()
    assert [(r.signal_name, r.signal_direction) for r in orders] == [
        ("first", "long"),
        ("first", "long"),
        (None, None),  # three signals made: the first no longer kept
    ]
    assert len({r.signal_id for r in orders}) == 1
    assert ctx_of(rt, "f").last_signal("first") is None


def test_the_default_bounds() -> None:
    assert OrderHistory.MAX_FINISHED == 10_000
    assert OrderHistory.MAX_SIGNALS == 10_000


class TwoEntriesADay(Strategy[ProbeParams]):
    """Buys on each bar, at most two entries a (UTC) day that were not
    refused, counted from its own orders: so a restart mid-day counts the
    day's entries made before it."""

    def on_bar(self, bar: Bar) -> None:
        now = self.ctx.now_ns()
        today = [
            r
            for r in self.ctx.orders(bar.symbol, since_ns=now - now % DAY_NS)
            if r.signal_name == "entry" and r.status not in ("denied", "rejected")
        ]
        if len(today) < 2:
            signal = self.ctx.signal(bar.symbol, "entry", "long")
            self.ctx.order(bar.symbol, "buy", self.params.quantity, cause=signal)


def test_a_backtest_counts_the_day_s_entries_and_so_does_a_restart() -> None:
    """In a backtest the clock is the bars' market time and ``created_ns``
    is on it: two entries a day (a denied one not counted), a new day counts
    afresh; a runtime rebuilt mid-day from what was emitted and answered
    (a restart) makes no third entry that day."""
    ids = counter_ids()

    def runtime() -> InMemoryRuntime:
        rt = InMemoryRuntime(ids=ids)
        rt.add("t", TwoEntriesADay, symbols=("AAPL",))
        return rt

    def answer(rt: InMemoryRuntime, out: list[Event], *, refuse: bool) -> list[Event]:
        answers: list[Event] = []
        for intent in of_type(out, OrderIntentCreated):
            answers += [deny(intent, ids=ids)] if refuse else fill_chain(intent, 100, ids=ids)
        for event in answers:
            rt.feed(event)
        return answers

    rt = runtime()
    store: list[Event] = []
    day1 = [bar("AAPL", 100, DAY0 + (9 * 60 + k) * MINUTE_NS) for k in range(4)]
    entries = 0
    for k, b in enumerate(day1[:3]):
        out = rt.run([b])
        store += [b, *out]
        store += answer(rt, out, refuse=k == 0)
        entries += len(of_type(out, OrderIntentCreated))
    assert entries == 3  # the first denied, then two
    ctx = ctx_of(rt, "t")
    assert [r.status for r in ctx.orders()] == ["denied", "filled", "filled"]

    # A restart mid-day: rebuilt from the store, then the day's next bar.
    again = runtime()
    for event in store:
        again.restore(event)
    out = again.run([day1[3]])
    assert of_type(out, OrderIntentCreated) == []
    assert again.hosts["t"].history.orders() == rt.hosts["t"].history.orders()

    # The next day counts afresh: two entries again.
    day2 = [bar("AAPL", 100, DAY0 + DAY_NS + (9 * 60 + k) * MINUTE_NS) for k in range(3)]
    made = [of_type(again.feed(b), OrderIntentCreated) for b in day2]
    assert [len(m) for m in made] == [1, 1, 0]
    today = ctx_of(again, "t").orders(since_ns=DAY0 + DAY_NS)
    assert [r.created_ns for r in today] == [b.ts_event for b in day2[:2]]


def test_the_history_is_no_part_of_a_ledger_checkpoint_s_digest() -> None:
    """A checkpoint holds positions only; the history is rebuilt from the
    chains each start-up reads. So its module is not hashed into the
    checkpoints' code digest: changing it does not discard them."""
    import libs.strategy.history as history_module
    from services.strategy_runner.adapters import checkpoint

    hashed = {path.resolve() for path in checkpoint._SOURCES}
    assert history_module.__file__ is not None
    assert Path(history_module.__file__).resolve() not in hashed
    assert Path(checkpoint.__file__).resolve().parents[3] / "libs/strategy/books.py" in hashed
