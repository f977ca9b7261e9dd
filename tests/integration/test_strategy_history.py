"""The strategy-runner's start-up reads old finished chains' fills only.

A random history of two strategies (every way an intent ends or stays
working, several intents per signal, a flatten's closing fill booked to a
strategy, a strategy this runner does not run) is recorded in a real store
and restored through ``services/strategy_runner/adapters/store.py`` with and
without the window. The books must be the same either way (positions,
average prices, realized P&L, the working intents and what each has left),
while the chains left out are exactly those whose every intent is finished
and whose last event is older than the window.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import orjson

from libs.contract.envelope import Event
from libs.contract.events import (
    FillReceived,
    FlattenAccount,
    FlattenAccountPayload,
    MarkPayload,
    MarkUpdated,
    OrderCanceled,
    QuotePayload,
    QuoteUpdated,
    SignalGenerated,
    TradePayload,
    TradePrinted,
)
from libs.store.urls import asyncpg_url
from libs.strategy.runtime import InMemoryRuntime
from libs.strategy.testing import (
    At,
    EchoStrategy,
    accept,
    bar,
    fill_chain,
    market_intent,
    settlement_fill,
    signal,
)
from services.broker_gateway.domain.model import OrderUpdate
from services.broker_gateway.domain.tracker import OrderTracker
from services.risk_gate.domain.evolve import evolve_all
from services.risk_gate.domain.state import RiskState
from services.strategy_runner.adapters import store
from services.strategy_runner.adapters.store import History, load_history
from tests.integration.order_histories import (
    ACCOUNT,
    DAY_NS,
    NOW,
    STRATEGIES,
    SYMBOLS,
    Clock,
    D,
    strategy_chains,
)
from tests.integration.recording import record_events
from tests.integration.tracker_inputs import order


async def _restored(url: str, before_ns: int) -> tuple[History, dict[str, Any]]:
    history = await load_history(url, list(STRATEGIES), list(SYMBOLS), finished_before_ns=before_ns)
    runtime = InMemoryRuntime()
    for name in STRATEGIES:
        runtime.add(name, EchoStrategy, symbols=SYMBOLS, account=ACCOUNT)
    for event in history.events:
        runtime.restore(event)
    books = {
        name: (
            dict(runtime.hosts[name].ledger.positions),
            dict(runtime.hosts[name].intents._open),
            {s: runtime.hosts[name].intents.pending(s) for s in SYMBOLS},
        )
        for name in STRATEGIES
    }
    return history, books


async def test_old_finished_chains_are_read_as_fills_only(database_url: str) -> None:
    c = strategy_chains(seed=1)
    await record_events(database_url, c.events)
    before = NOW - 7 * DAY_NS
    every, books = await _restored(database_url, 0)
    windowed, windowed_books = await _restored(database_url, before)
    assert windowed_books == books
    # The books are not trivially equal: positions, working intents, old ones too.
    for positions, working, _ in books.values():
        assert any(p.quantity for p in positions.values())
        assert any(p.realized_pnl for p in positions.values())
        assert working
    ours = {
        e.id
        for e in c.events
        if isinstance(e, SignalGenerated) and e.payload.strategy in STRATEGIES
    }
    unbooked = {
        e.correlation_id
        for e in c.events
        if isinstance(e, FillReceived) and e.payload.strategy is None
    }
    old_done = {s for s, (done, t) in c.chains.items() if s in ours and done and t < before}
    assert old_done & unbooked, "old finished chains with a fill booked to no strategy"
    left_out = old_done - unbooked
    old_working = {s for s, (done, t) in c.chains.items() if s in ours and not done and t < before}
    assert len(left_out) > 30
    assert old_working
    read = {e.correlation_id for e in windowed.events if e.type != "FillReceived"}
    assert read.isdisjoint(left_out)
    assert old_working <= read
    assert {e.correlation_id for e in every.events} >= left_out
    # Of a chain left out, the fills are still read (the books need them).
    fills = [e for e in c.events if e.type == "FillReceived" and e.correlation_id in left_out]
    assert fills
    assert {e.id for e in fills} <= {e.id for e in windowed.events}


async def test_an_order_the_flatten_canceled_is_not_pending_after_a_restart(
    database_url: str,
) -> None:
    """A flatten cancels the strategies' working orders: the gateway's
    ``OrderCanceled`` is caused by the ``FlattenAccount``, so it is in the
    flatten's chain, not the strategy's. Live, the runner routes it by its
    order id and the intent is finished; the start-up read only the
    strategy's chains and missed it, so after a restart the intent was
    working again, its quantity pending for good (the strategy's exposure
    off by it: a long entry it would never make, an exit it would sell into
    a short)."""
    clock = Clock()
    clock.t = NOW - 3600 * 10**9
    broker = OrderTracker(ACCOUNT, clock=clock, source="broker-gateway/test")
    cause = signal("s1", "AAPL", at_ns=clock.t)
    intent = market_intent(cause, ACCOUNT, "buy", 5)
    decision, cmd = accept(intent)
    oid = cmd.payload.order_id
    broker.plan_submit(cmd)
    broker.request(oid)
    events: list[Event] = [cause, intent, decision, cmd]
    events += broker.submitted(oid, order(cmd, broker_id="b-1"))
    flatten = FlattenAccount.create(
        FlattenAccountPayload(account=ACCOUNT, reason="test"),
        source="test/risk-gate",
        clock=At(clock.t),
    )
    broker.flatten_started(flatten)
    events += [flatten, *broker.flatten_done([])]
    canceled = broker.on_update(
        OrderUpdate("canceled", order(cmd, status="canceled", broker_id="b-1"), clock.t)
    )
    assert [type(e) for e in canceled] == [OrderCanceled]
    assert canceled[0].correlation_id == flatten.id  # the flatten's chain
    events += canceled

    live = InMemoryRuntime()
    live.add("s1", EchoStrategy, symbols=SYMBOLS, account=ACCOUNT)
    for event in events:
        live.restore(event)
    assert live.hosts["s1"].pending("AAPL") == 0

    await record_events(database_url, events)
    _, books = await _restored(database_url, NOW - 7 * DAY_NS)
    assert books["s1"][2]["AAPL"] == 0
    assert books["s1"][1] == {}


async def test_the_rebuild_marks_at_the_newest_prices_not_at_late_older_ones(
    database_url: str,
) -> None:
    """s1 buys 5 AAPL at 100; then a trade at 110 and a minute bar closing
    at 108, and after them a trade at 90 and a bar at 95 stamped a minute
    older (late prints, as Polygon delivers out-of-sequence and
    late-reported trades). Live, the ledger keeps the newest by market time:
    marked at 110. The rebuild restored each kind's last in the stream, the
    late ones, so after a restart s1 was marked at 90 (5 x 20 of unrealized
    P&L gone); now it restores each kind's newest, and its books are the
    live ones."""
    cause = signal("s1", "AAPL", at_ns=NOW - 600 * 10**9)
    intent = market_intent(cause, ACCOUNT, "buy", 5)
    made_late = {"ts_init": NOW + 10**9}

    def trade(price: int, at_ns: int) -> TradePrinted:
        payload = TradePayload(symbol="AAPL", price=D(price), size=D(1), feed="polygon")
        return TradePrinted.create(payload, source="test/marketdata", clock=At(at_ns))

    events: list[Event] = [
        cause,
        intent,
        *fill_chain(intent, "100", ids=uuid.uuid4),
        trade(110, NOW),
        bar("AAPL", 108, NOW - 90 * 10**9),  # closes at NOW - 30 s
        trade(90, NOW - 60 * 10**9).model_copy(update=made_late),
        bar("AAPL", 95, NOW - 150 * 10**9).model_copy(update=made_late),
    ]
    live = InMemoryRuntime()
    for name in STRATEGIES:
        live.add(name, EchoStrategy, symbols=SYMBOLS, account=ACCOUNT)
    for event in events:
        live.restore(event)
    held = live.hosts["s1"].ledger.positions["AAPL"]
    assert (held.quantity, held.mark, held.mark_ns) == (D(5), D(110), NOW)

    await record_events(database_url, events)
    _, books = await _restored(database_url, 0)
    assert books["s1"][0] == dict(live.hosts["s1"].ledger.positions)


async def test_a_restarted_runner_marks_an_option_at_its_last_mark_as_the_gate_does(
    database_url: str,
) -> None:
    """The start-up rebuild marks a position by the same prices as the
    risk-gate: an option contract held at a trade of 5.50, then a mark of
    6.00 (marketdata's, from a quote), then a quote too wide for a mark. The
    gate marks it at 6.00, and so does the ledger live; the rebuild read no
    mark and marked it at the trade's 5.50 until the next quote (and live,
    the ledger took the wide quote's midpoint, 6.50)."""
    option = "O:SPY261218C00600000"
    t = NOW - 3600 * 10**9
    cause = signal("s1", option, at_ns=t)
    intent = market_intent(cause, ACCOUNT, "buy", 2)
    events: list[Event] = [cause, intent, *fill_chain(intent, "5", ids=uuid.uuid4, at_ns=t)]
    events.append(
        TradePrinted.create(
            TradePayload(symbol=option, price=D("5.5"), size=D(1), feed="polygon"),
            source="test/marketdata",
            clock=At(t + 10**9),
        )
    )
    quotes = [("5.9", "6.1"), ("4", "9")]  # the second: too wide for a mark
    for k, (bid, ask) in enumerate(quotes):
        quote = QuoteUpdated.create(
            QuotePayload(
                symbol=option,
                bid_price=D(bid),
                bid_size=D(5),
                ask_price=D(ask),
                ask_size=D(5),
                feed="polygon",
            ),
            source="test/marketdata",
            clock=At(t + (2 + k) * 10**9),
        )
        events.append(quote)
        if k == 0:
            events.append(
                MarkUpdated.create(
                    MarkPayload(
                        symbol=option,
                        price=D(6),
                        bid_price=D(bid),
                        ask_price=D(ask),
                        feed="polygon",
                    ),
                    source="test/marketdata",
                    clock=At(quote.ts_event),
                    cause=quote,
                )
            )
    assert evolve_all(RiskState.initial(), events).marks[option].price == D(6)
    live = InMemoryRuntime()
    live.add("s1", EchoStrategy, symbols=(option,), account=ACCOUNT)
    live.run(events)
    assert live.hosts["s1"].ledger.position(option).mark == D(6)

    await record_events(database_url, events)
    history = await load_history(database_url, ["s1"], [option])
    rebuilt = InMemoryRuntime()
    rebuilt.add("s1", EchoStrategy, symbols=(option,), account=ACCOUNT)
    history.restore_into(rebuilt)
    position = rebuilt.hosts["s1"].ledger.position(option)
    assert position == live.hosts["s1"].ledger.position(option)
    assert (position.quantity, position.mark) == (D(2), D(6))
    assert position.unrealized_pnl == D(200)  # (6 - 5) x 2 contracts x 100


async def test_a_restarted_runner_marks_the_shares_an_option_s_exercise_gave_a_strategy(
    database_url: str,
) -> None:
    """s1 trades only a SPY call: it bought 2 at 5, exercised into 200 SPY
    at 600. Then SPY trades at 610, a minute bar closes at 612 (the newest),
    a late trade at 590 stamped older is recorded after it, and a quote.
    Live, s1's shares are marked as the risk-gate marks them, at 612; the
    rebuild reads the last prices of the underlyings of its contracts too
    (``Router.marked_symbols``, as the runner asks for them), so after a
    restart they are marked alike. Before, it read its configured symbols'
    only, and routed SPY's prices to no strategy: the shares unmarked, 2,400
    of unrealized P&L missing from ``ctx.pnl()``."""
    call = "O:SPY261211C00600000"
    t = NOW - 3600 * 10**9
    cause = signal("s1", call, at_ns=t)
    intent = market_intent(cause, ACCOUNT, "buy", 2)

    def trade(price: int, at_ns: int) -> TradePrinted:
        payload = TradePayload(symbol="SPY", price=D(price), size=D(1), feed="polygon")
        return TradePrinted.create(payload, source="test/marketdata", clock=At(at_ns))

    quote = QuoteUpdated.create(
        QuotePayload(
            symbol="SPY",
            bid_price=D(500),
            bid_size=D(5),
            ask_price=D(700),
            ask_size=D(5),
            feed="polygon",
        ),
        source="test/marketdata",
        clock=At(t + 4 * 60 * 10**9),
    )
    events: list[Event] = [
        cause,
        intent,
        *fill_chain(intent, "5", ids=uuid.uuid4, at_ns=t),
        settlement_fill(call, "sell", 2, "0", strategy="s1", at_ns=t + 60 * 10**9),
        settlement_fill("SPY", "buy", 200, "600", strategy="s1", at_ns=t + 60 * 10**9),
        trade(610, t + 120 * 10**9),
        bar("SPY", 612, t + 120 * 10**9),  # closes at t + 3 minutes
        trade(590, t + 150 * 10**9).model_copy(update={"ts_init": t + 200 * 10**9}),
        quote,
    ]
    assert evolve_all(RiskState.initial(), events).marks["SPY"].price == D(612)

    def runtime() -> InMemoryRuntime:
        rt = InMemoryRuntime()
        rt.add("s1", EchoStrategy, symbols=(call,), account=ACCOUNT, bar_interval="1m")
        return rt

    live = runtime()
    assert live.run(events) == [], "s1 is shown none of SPY's market data"
    held = live.hosts["s1"].ledger.position("SPY")
    assert (held.quantity, held.mark, held.unrealized_pnl) == (D(200), D(612), D(2400))

    await record_events(database_url, events)
    rebuilt = runtime()
    marked = rebuilt.router.marked_symbols()
    assert marked == {"SPY": {"1m"}}
    history = await load_history(
        database_url, ["s1"], [call, *marked], bar_intervals={call: {"1m"}, **marked}
    )
    history.restore_into(rebuilt)
    assert rebuilt.hosts["s1"].ledger.positions == live.hosts["s1"].ledger.positions
    assert rebuilt.hosts["s1"].ledger.pnl() == live.hosts["s1"].ledger.pnl()


def _events_scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The scans of ``events`` anywhere in an EXPLAIN (FORMAT JSON) plan."""
    found = [plan] if plan.get("Relation Name") == "events" else []
    for child in plan.get("Plans", []):
        found += _events_scans(child)
    return found


async def test_the_rebuild_s_price_lookups_are_index_probes_found_or_not(
    database_url: str,
) -> None:
    """The start-up rebuild's lookups of a symbol's last trade, last bar (of
    an interval, or any), last mark, last fill and latest bars each read at most a row
    or two of ``events``, also for a symbol that has none of them (a contract
    only ever quoted) and as the generic plan PostgreSQL switches to after
    five runs. One query of trades and bars newest by seq first read the
    primary key backwards: here 20,000 rows for the contract, at 2,000,000
    events about 0.9 s a symbol at every start-up."""
    option = "O:SPY241220C00600000"
    cause = signal("s1", "AAPL", at_ns=NOW)
    await record_events(database_url, [cause])
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        # 20,000 rows after it, made in SQL: trades of AAPL and MSFT, and one
        # in 10 a quote of the contract (which no price lookup reads).
        await conn.execute(
            """
            INSERT INTO events (seq, id, subject, type, ts_event, ts_init, source,
                                correlation_id, symbol, payload)
            SELECT m + s, gen_random_uuid(), 'md', kind, $1::bigint + s, $1::bigint + s,
                   'test', gen_random_uuid(), sym, jsonb_build_object('price', '190')
            FROM (SELECT max(seq) AS m FROM events) AS last,
                 generate_series(1, 20000) AS s,
                 LATERAL (
                     SELECT CASE WHEN s % 10 = 0 THEN 'QuoteUpdated' ELSE 'TradePrinted' END
                                AS kind,
                            CASE WHEN s % 10 = 0 THEN $2
                                 WHEN s % 2 = 0 THEN 'AAPL' ELSE 'MSFT' END AS sym
                 ) AS pick
            """,
            NOW,
            option,
        )
        await conn.execute("ANALYZE events")
        last_seq = await conn.fetchval("SELECT max(seq) FROM events")
        lookups: list[tuple[str, tuple[Any, ...]]] = [
            (store.LAST_TRADE_SQL, (option, last_seq)),
            (store.LAST_BAR_SQL, (option, last_seq, "1m")),
            (store.LAST_BAR_SQL, (option, last_seq, None)),
            (store.LAST_MARK_SQL, (option, last_seq)),
            (store.LAST_MARK_SQL, ("AAPL", last_seq)),
            (store.LAST_FILL_SQL, (option, last_seq)),
            (store.WARMUP_SQL, (option, last_seq, 50, "1m")),
            (store.LAST_TRADE_SQL, ("AAPL", last_seq)),
        ]
        for sql, args in lookups:
            for _ in range(7):  # past the five custom plans
                doc = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
            [explained] = orjson.loads(doc)
            scans = _events_scans(explained["Plan"])
            read = sum(s["Actual Rows"] + s.get("Rows Removed by Filter", 0) for s in scans)
            assert read <= 2, (sql, args, scans)
    finally:
        await conn.close()


async def test_the_rebuild_s_fill_lookup_skips_settlements_in_one_index_probe(
    database_url: str,
) -> None:
    """A symbol's newest fill that is no settlement (an option's expiry,
    ``FillPayload.settlement``: the strike is no price) is found by one
    probe of ``ix_events_newest_fill`` (migration 0014 put the predicate in
    the index), as the custom plan and the generic one PostgreSQL switches
    to after five runs: 2,000 settlement fills of SPY newer than its last
    trade's fill are not read only to be thrown away."""
    cause = signal("s1", "SPY", at_ns=NOW)
    await record_events(database_url, [cause])
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        # A fill of SPY at 610, then 2,000 settlement fills of SPY at the
        # strike, newer; and 10,000 trades of other symbols around them.
        await conn.execute(
            """
            INSERT INTO events (seq, id, subject, type, ts_event, ts_init, source,
                                correlation_id, symbol, payload)
            SELECT m + s, gen_random_uuid(), 'x', kind, $1::bigint + s, $1::bigint + s,
                   'test', gen_random_uuid(), sym, body
            FROM (SELECT max(seq) AS m FROM events) AS last,
                 generate_series(1, 12001) AS s,
                 LATERAL (
                     SELECT CASE WHEN s = 1 OR s % 6 = 0 THEN 'FillReceived'
                                 ELSE 'TradePrinted' END AS kind,
                            CASE WHEN s = 1 OR s % 6 = 0 THEN 'SPY'
                                 WHEN s % 2 = 0 THEN 'AAPL' ELSE 'MSFT' END AS sym,
                            CASE WHEN s = 1 THEN jsonb_build_object('price', '610')
                                 WHEN s % 6 = 0 THEN jsonb_build_object(
                                     'price', '600', 'settlement', 'exercised')
                                 ELSE jsonb_build_object('price', '190') END AS body
                 ) AS pick
            """,
            NOW,
        )
        await conn.execute("ANALYZE events")
        last_seq = await conn.fetchval("SELECT max(seq) FROM events")
        for _ in range(7):  # past the five custom plans
            doc = await conn.fetchval(
                f"EXPLAIN (ANALYZE, FORMAT JSON) {store.LAST_FILL_SQL}", "SPY", last_seq
            )
            [explained] = orjson.loads(doc)
            scans = _events_scans(explained["Plan"])
            read = sum(s["Actual Rows"] + s.get("Rows Removed by Filter", 0) for s in scans)
            assert read <= 2, scans
            assert {s.get("Index Name") for s in scans} == {"ix_events_newest_fill"}, scans
        row = await conn.fetchrow(store.LAST_FILL_SQL, "SPY", last_seq)
        assert orjson.loads(row["payload"]) == {"price": "610"}
    finally:
        await conn.close()
