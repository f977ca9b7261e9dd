"""The strategy SDK's books: fills routed to the strategy that owns them,
positions and P&L, marks by market time, intents pending and denied, and the
books rebuilt from the store."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from libs.contract.codec import order_id_for
from libs.contract.envelope import Event
from libs.contract.events import (
    FillReceived,
    MarkPayload,
    MarkUpdated,
    OrderAccepted,
    OrderCanceled,
    OrderCanceledPayload,
    OrderIntentCreated,
    QuotePayload,
    QuoteUpdated,
)
from libs.strategy import Fill, InMemoryRuntime, OrderUpdate
from libs.strategy.context import PnL
from libs.strategy.ledger import IntentBook, Ledger
from libs.strategy.testing import MINUTE_NS, At, EchoStrategy, bar, booked_fill, deny, fill_chain
from tests.unit.strategy_probes import Probe, counter_ids, of_type, probe_seen


def test_another_strategy_s_fill_marks_a_position_without_calling_the_strategy() -> None:
    """A fill's price marks its symbol for every strategy trading it, as the
    risk-gate and ``tradebus positions`` mark every holder at it; the other
    strategies are not called with it, and a symbol they do not trade is not
    marked. Also after a restart from the store (``restore``)."""
    ids = counter_ids()
    for restoring in (False, True):
        rt = InMemoryRuntime(ids=ids)
        rt.add("a", Probe, symbols=("AAPL",))
        rt.add("b", Probe, symbols=("AAPL",))
        rt.add("c", Probe, symbols=("MSFT",))
        out = rt.run([bar("AAPL", 100, 0)])
        intent_a, intent_b = of_type(out, OrderIntentCreated)
        chain_a = fill_chain(intent_a, 100, ids=ids, at_ns=MINUTE_NS)
        chain_b = fill_chain(intent_b, "100.5", ids=ids, at_ns=2 * MINUTE_NS)
        for event in [*chain_a, *chain_b]:
            if restoring:
                rt.restore(event)
            else:
                rt.feed(event)
        a = rt.hosts["a"].ledger.position("AAPL")
        assert (a.quantity, a.mark, a.mark_ns) == (Decimal(10), Decimal("100.5"), 2 * MINUTE_NS)
        assert a.unrealized_pnl == Decimal(5)  # marked at b's fill: 10 x 0.5
        assert [f.price for f in probe_seen(rt, "a") if isinstance(f, Fill)] == (
            [] if restoring else [Decimal(100)]
        )
        assert rt.hosts["c"].ledger.positions == {}


def test_a_price_stamped_a_day_ahead_does_not_hold_the_mark() -> None:
    """Marked by the newest price by market time, a position would keep the
    price of a print stamped a day ahead by a bad clock for a day; its time
    counts no later than 5 s after it was made (``Event.market_ns``), so the
    next real price replaces it."""
    ids = counter_ids()
    rt = InMemoryRuntime(ids=ids)
    rt.add("a", Probe, symbols=("AAPL",))
    [intent] = of_type(rt.run([bar("AAPL", 100, 0)]), OrderIntentCreated)
    for event in fill_chain(intent, 100, ids=ids, at_ns=MINUTE_NS):
        rt.feed(event)
    bad = bar("AAPL", 150, 2 * MINUTE_NS)
    bad = bad.model_copy(update={"ts_event": bad.ts_event + 86_400 * 10**9})
    rt.feed(bad)
    rt.feed(bar("AAPL", 90, 3 * MINUTE_NS))
    position = rt.hosts["a"].ledger.position("AAPL")
    assert position.mark == Decimal(90)
    assert position.unrealized_pnl == Decimal(-100)  # 10 x (90 - 100)


def two_probes_and_an_intent_of_p() -> tuple[InMemoryRuntime, OrderIntentCreated]:
    """Probes ``p`` and ``other`` on AAPL, after a bar closing at 100: ``p``'s buy intent."""
    rt = InMemoryRuntime()
    rt.add("p", Probe, symbols=("AAPL",))
    rt.add("other", Probe, symbols=("AAPL",))
    out = rt.run([bar("AAPL", 100, 0)])
    return rt, next(i for i in of_type(out, OrderIntentCreated) if i.payload.strategy == "p")


def test_fills_build_positions_and_pnl_and_reach_only_the_owner() -> None:
    ids = counter_ids()
    rt, intent = two_probes_and_an_intent_of_p()
    assert rt.hosts["p"].pending("AAPL") == Decimal(10)

    chain = fill_chain(intent, "100.50", ids=ids, commission=Decimal("1"))
    for event in chain:
        rt.feed(event)
    pos = rt.hosts["p"].ledger.position("AAPL")
    assert pos.quantity == Decimal(10)
    assert pos.average_price == Decimal("100.50")
    assert rt.hosts["p"].pending("AAPL") == 0
    assert rt.hosts["other"].ledger.position("AAPL").is_flat
    seen = probe_seen(rt, "p")
    assert [type(x).__name__ for x in seen[1:]] == ["OrderUpdate", "FillPayload"]
    assert isinstance(seen[1], OrderUpdate)
    assert seen[1].kind == "accepted"
    assert seen[1].intent_id == intent.id

    rt.feed(bar("AAPL", 103, 60_000_000_000))  # mark
    pnl = rt.hosts["p"].ledger.pnl()
    assert pnl.realized == Decimal(-1)  # commission
    assert pnl.unrealized == Decimal("25.00")  # (103 - 100.50) x 10
    # The same fill again (redelivery) changes nothing.
    fill = of_type(chain, FillReceived)[0]
    assert rt.feed(fill) == []
    assert rt.hosts["p"].ledger.position("AAPL").quantity == Decimal(10)


def quote(symbol: str, bid: str, ask: str, *, at_ns: int, size: int = 100) -> QuoteUpdated:
    return QuoteUpdated.create(
        QuotePayload(
            symbol=symbol,
            bid_price=Decimal(bid),
            bid_size=Decimal(size),
            ask_price=Decimal(ask),
            ask_size=Decimal(size),
            feed="synthetic",
        ),
        source="test/marketdata",
        clock=At(at_ns),
    )


def option_mark(symbol: str, price: str, *, at_ns: int) -> MarkUpdated:
    """A mark marketdata made from a quote around ``price``."""
    p = Decimal(price)
    return MarkUpdated.create(
        MarkPayload(symbol=symbol, price=p, bid_price=p - 1, ask_price=p + 1, feed="synthetic"),
        source="test/marketdata",
        clock=At(at_ns),
    )


@pytest.mark.parametrize("symbol", ["AAPL", "O:SPY241220C00100000"])
@pytest.mark.parametrize("restoring", [False, True])
def test_the_books_are_marked_by_marketdata_s_marks_not_by_quotes(
    symbol: str, restoring: bool
) -> None:
    """A position is marked as the risk-gate marks it: by trades, bars'
    closes, fills and the marks marketdata makes of option quotes
    (``MarkUpdated``), the newest by market time; not at a quote's midpoint.
    The books took every two-sided quote's midpoint, an equity's too, and
    never read a mark: the strategy's unrealized P&L differed from the one
    the gate's daily-loss breaker trips on after any equity quote and after
    an option quote marketdata made no mark of (a wide spread). The strategy
    is still shown its quotes; a mark is not shown to it. The same live and
    rebuilt from the store (``restore``)."""
    multiplier = 100 if symbol.startswith("O:") else 1
    rt = InMemoryRuntime()
    rt.add("p", Probe, symbols=(symbol,))
    [intent] = of_type(rt.run([bar(symbol, 100, 0)]), OrderIntentCreated)
    feed = rt.restore if restoring else rt.feed
    for event in fill_chain(intent, "100.50", ids=counter_ids(), at_ns=MINUTE_NS):
        feed(event)  # the fill marks the position at 100.50

    def unrealized() -> Decimal:
        return rt.hosts["p"].ledger.pnl().unrealized / multiplier

    seen = len(probe_seen(rt, "p"))
    wide = quote(symbol, "90", "130", at_ns=200 * 10**9)  # marketdata makes no mark of it
    feed(wide)
    assert unrealized() == 0
    feed(option_mark(symbol, "103", at_ns=300 * 10**9))
    assert unrealized() == Decimal("25.00")  # (103 - 100.50) x 10
    feed(option_mark(symbol, "90", at_ns=250 * 10**9))  # older, late: no mark
    assert unrealized() == Decimal("25.00")
    later = bar(symbol, "101.50", 5 * MINUTE_NS)  # newer than the mark
    feed(later)
    assert unrealized() == Decimal("10.00")
    assert probe_seen(rt, "p")[seen:] == ([] if restoring else [wide.payload, later.payload])


def test_broker_events_reach_the_strategy_without_the_accepted_decision() -> None:
    # The runner reads only denials: an intent's order id is known from the
    # intent (order_id_for), so its ack and fill find their way without the
    # accepted decision, even under a correlation id the runner never saw.
    ids = counter_ids()
    rt, intent = two_probes_and_an_intent_of_p()
    _decision, _command, ack, fill = fill_chain(intent, "100.50", ids=ids)
    assert fill.payload.order_id == order_id_for(intent.id)
    foreign = uuid.uuid4()
    for event in (ack, fill):
        rt.feed(event.model_copy(update={"correlation_id": foreign}))
    assert rt.hosts["p"].ledger.position("AAPL").quantity == Decimal(10)
    assert rt.hosts["p"].pending("AAPL") == 0
    assert rt.hosts["other"].ledger.position("AAPL").is_flat
    update = next(x for x in probe_seen(rt, "p") if isinstance(x, OrderUpdate))
    assert (update.kind, update.intent_id, update.order_id) == (
        "accepted",
        intent.id,
        order_id_for(intent.id),
    )


def test_a_flatten_fill_booked_to_a_strategy_reaches_its_books() -> None:
    # A FlattenAccount's closing order was placed by the broker, not by any
    # strategy: its fill has an order id and a chain no strategy knows. The
    # gateway books it to the strategy whose position it closed
    # (FillPayload.strategy); that strategy's books, and only its, must see it.
    ids = counter_ids()
    rt, intent = two_probes_and_an_intent_of_p()
    for event in fill_chain(intent, "100.50", ids=ids):
        rt.feed(event)
    assert rt.hosts["p"].ledger.position("AAPL").quantity == Decimal(10)
    flatten = uuid.uuid4()

    def closing_fill(strategy: str | None, fill_id: str) -> FillReceived:
        return booked_fill(
            "AAPL", "sell", 10, "99.50", strategy=strategy, flatten=flatten, fill_id=fill_id
        )

    # Booked to nobody, or to a strategy this runtime does not host: no one.
    rt.feed(closing_fill(None, "f-nobody"))
    rt.feed(closing_fill("elsewhere", "f-elsewhere"))
    assert rt.hosts["p"].ledger.position("AAPL").quantity == Decimal(10)
    # Booked to p: p is flat, the loss realized, and p is told.
    rt.feed(closing_fill("p", "f-p"))
    pos = rt.hosts["p"].ledger.position("AAPL")
    assert pos.is_flat
    assert rt.hosts["p"].ledger.pnl().realized == Decimal("-10.00")  # (99.50 - 100.50) x 10
    assert isinstance(probe_seen(rt, "p")[-1], Fill)
    assert rt.hosts["other"].ledger.position("AAPL").is_flat
    assert not any(isinstance(x, Fill) for x in probe_seen(rt, "other"))


@pytest.mark.parametrize("restoring", [False, True])
def test_a_reaction_in_another_strategy_s_chain_reaches_the_strategy_it_books_or_cancels(
    restoring: bool,
) -> None:
    """The risk-gate's reactions (FlattenAccount, CancelOrder) carry the chain
    of the event that tripped them: a fill of ``other``'s order that takes the
    day past the loss limit puts the flatten, its closing orders' fills and
    the cancels of every working order in ``other``'s chain. A closing fill
    the gateway booked to ``p``, and the cancel of ``p``'s working order,
    belong to ``p`` all the same (by its order id, by the strategy the fill
    names). Routed by the chain, ``other`` was booked ``p``'s closing sell
    (short 10 AAPL it never sold) and told of a cancel not its own, while
    ``p`` still held the 10 the risk-gate had flattened and waited for ever
    on its canceled intent. The same rebuilt from the store (``restore``)."""
    ids = counter_ids()
    rt = InMemoryRuntime()
    rt.add("p", Probe, symbols=("AAPL",))
    rt.add("other", Probe, symbols=("AAPL",))
    out = rt.run([bar("AAPL", 100, 0)])
    mine, theirs = (
        next(i for i in of_type(out, OrderIntentCreated) if i.payload.strategy == name)
        for name in ("p", "other")
    )
    # p's second intent stays working until the flatten cancels it.
    working = of_type(rt.feed(bar("AAPL", 100, MINUTE_NS)), OrderIntentCreated)
    [working_p] = [i for i in working if i.payload.strategy == "p"]
    feed = rt.restore if restoring else rt.feed
    for event in (*fill_chain(mine, "100", ids=ids), *fill_chain(theirs, "100", ids=ids)):
        feed(event)
    chain = theirs.correlation_id  # the tripping fill's, so the flatten's
    closing = booked_fill("AAPL", "sell", 10, "90", strategy="p", flatten=chain, fill_id="c-p")
    canceled = OrderCanceled.create(
        OrderCanceledPayload(order_id=order_id_for(working_p.id), account="paper"),
        source="test/broker",
        clock=At(2 * MINUTE_NS),
    ).model_copy(update={"correlation_id": chain, "causation_id": uuid.uuid4()})
    seen_other = len(probe_seen(rt, "other"))
    feed(closing)
    feed(canceled)

    assert rt.hosts["p"].ledger.position("AAPL").is_flat
    assert rt.hosts["p"].ledger.pnl().realized == Decimal(-100)  # (90 - 100) x 10
    assert rt.hosts["p"].pending("AAPL") == 0
    assert rt.hosts["p"].intents.get(working_p.id) is None
    assert rt.hosts["other"].ledger.position("AAPL").quantity == Decimal(10)
    assert probe_seen(rt, "other")[seen_other:] == []
    if not restoring:
        updates = [x for x in probe_seen(rt, "p") if isinstance(x, OrderUpdate)]
        assert (updates[-1].kind, updates[-1].intent_id) == ("canceled", working_p.id)


def test_a_decision_naming_another_order_id_remaps_the_intent() -> None:
    book = IntentBook()
    rt = InMemoryRuntime()
    rt.add("p", Probe, symbols=("AAPL",))
    intent = of_type(rt.run([bar("AAPL", 100, 0)]), OrderIntentCreated)[0]
    assert book.add(intent)
    derived, other = order_id_for(intent.id), uuid.uuid4()
    assert book.find(derived, uuid.uuid4()) is book.get(intent.id)
    book.accepted(intent.id, other)
    assert book.find(other, uuid.uuid4()) is book.get(intent.id)
    # The derived id no longer maps: an unknown order of a foreign signal finds nothing.
    assert book.find(derived, uuid.uuid4()) is None
    book.close(intent.id)
    assert book.find(other, uuid.uuid4()) is None


def test_a_denied_intent_is_no_longer_pending_and_the_strategy_is_told() -> None:
    ids = counter_ids()
    rt = InMemoryRuntime()
    rt.add("p", Probe, symbols=("AAPL",))
    intent = of_type(rt.run([bar("AAPL", 100, 0)]), OrderIntentCreated)[0]
    rt.feed(deny(intent, ids=ids))
    assert rt.hosts["p"].pending("AAPL") == 0
    update = probe_seen(rt, "p")[-1]
    assert isinstance(update, OrderUpdate)
    assert update.kind == "denied"
    assert update.intent_id == intent.id
    assert update.reason == "max_order_quantity"


def test_a_stopped_strategy_still_books_its_fills() -> None:
    ids = counter_ids()
    rt = InMemoryRuntime()
    rt.add("echo", EchoStrategy, {"fail_on_close": ["2"]}, symbols=("MSFT",))
    intent = of_type(rt.run([bar("MSFT", 1, 0)]), OrderIntentCreated)[0]
    rt.feed(bar("MSFT", 2, 60_000_000_000))
    assert rt.hosts["echo"].state == "stopped"
    for event in fill_chain(intent, 1, ids=ids):
        assert rt.feed(event) == []
    assert rt.hosts["echo"].ledger.position("MSFT").quantity == Decimal(1)


def test_restore_rebuilds_books_without_calling_the_strategy() -> None:
    ids = counter_ids()
    live = InMemoryRuntime()
    live.add("p", Probe, symbols=("AAPL",))
    history: list[Event] = list(live.run([bar("AAPL", 100, 0)]))
    intent = of_type(history, OrderIntentCreated)[0]
    history += fill_chain(intent, 100, ids=ids)

    fresh = InMemoryRuntime()
    host = fresh.add("p", Probe, symbols=("AAPL",))
    for event in history:
        fresh.restore(event)
    fresh.start()
    assert host.ledger.position("AAPL").quantity == Decimal(10)
    assert host.pending("AAPL") == 0
    assert probe_seen(fresh, "p") == []
    # The restored signal still routes its chain's later events back.
    later = OrderAccepted.model_validate(
        {**of_type(history, OrderAccepted)[0].model_dump(), "id": uuid.uuid4()}
    )
    assert fresh.router.route(later) == ("p",)


@pytest.mark.parametrize(
    ("fills", "quantity", "average", "realized"),
    [
        ([("buy", 10, 100), ("buy", 10, 110)], 20, 105, 0),
        ([("buy", 10, 100), ("sell", 4, 110)], 6, 100, 40),
        ([("buy", 10, 100), ("sell", 15, 110)], -5, 110, 100),
        ([("sell", 10, 50), ("buy", 10, 40)], 0, 0, 100),
    ],
)
def test_ledger_average_cost(
    fills: list[tuple[str, int, int]], quantity: int, average: int, realized: int
) -> None:
    ledger = ledger_of(fills, "X")
    pos = ledger.position("X")
    assert (pos.quantity, pos.average_price, pos.realized_pnl) == (
        Decimal(quantity),
        Decimal(average),
        Decimal(realized),
    )


def test_an_option_contract_counts_100_shares_of_its_price() -> None:
    """Option prices are per share; one contract is 100 shares. Counted per
    share, an options strategy's P&L read 100 times too small (the risk-gate
    counted it right, so its breaker and the strategy's books disagreed)."""
    option = "O:SPY241220P00720000"
    ledger = ledger_of([("buy", 2, 5), ("sell", 1, 6)], option)
    ledger.mark(option, Decimal("5.5"), 10)
    pos = ledger.position(option)
    assert (pos.quantity, pos.average_price) == (Decimal(1), Decimal(5))
    assert pos.realized_pnl == Decimal(100)  # (6 - 5) x 1 contract x 100
    assert pos.unrealized_pnl == Decimal(50)  # (5.5 - 5) x 1 x 100
    assert ledger.pnl() == PnL(Decimal(100), Decimal(50))


def test_a_position_is_marked_at_the_newest_price_by_market_time_fills_included() -> None:
    """As the risk-gate and ``tradebus positions`` mark it: a fill newer than
    the last print marks the position at its price (before, an illiquid
    contract's position kept an older print's price after the fill), and a
    price or fill arriving late with an older market time moves nothing."""
    ledger = ledger_of([("buy", 2, 5)], "AAPL")  # the fill at market time 1
    ledger.mark("AAPL", Decimal(7), 20)
    assert (ledger.position("AAPL").mark, ledger.position("AAPL").mark_ns) == (Decimal(7), 20)
    ledger.mark("AAPL", Decimal(6), 15)  # older: late
    assert ledger.position("AAPL").mark == Decimal(7)
    fill = Fill(
        order_id=uuid.UUID(int=99),
        account="a",
        broker_order_id="b99",
        fill_id="f99",
        symbol="AAPL",
        side="buy",
        quantity=Decimal(1),
        price=Decimal(8),
        cumulative_quantity=Decimal(1),
        leaves_quantity=Decimal(0),
        status="complete",
    )
    ledger.apply_fill(fill, 30)
    assert (ledger.position("AAPL").mark, ledger.position("AAPL").mark_ns) == (Decimal(8), 30)
    assert ledger.position("AAPL").unrealized_pnl == Decimal(8) * 3 - Decimal(18)
    late = fill.model_copy(update={"fill_id": "f100", "price": Decimal(4)})
    ledger.apply_fill(late, 25)  # a fill older than the mark: booked, not a mark
    assert (ledger.position("AAPL").quantity, ledger.position("AAPL").mark) == (
        Decimal(4),
        Decimal(8),
    )


def ledger_of(fills: list[tuple[str, int, int]], symbol: str) -> Ledger:
    ledger = Ledger()
    for i, (side, qty, price) in enumerate(fills):
        ledger.apply_fill(
            Fill(
                order_id=uuid.UUID(int=i + 1),
                account="a",
                broker_order_id=f"b{i}",
                fill_id=f"f{i}",
                symbol=symbol,
                side="buy" if side == "buy" else "sell",
                quantity=Decimal(qty),
                price=Decimal(price),
                cumulative_quantity=Decimal(qty),
                leaves_quantity=Decimal(0),
                status="complete",
            ),
            i + 1,
        )
    return ledger
