"""The read models of migration 0002 (fills, orders, positions, P&L) on real Postgres.

Events go into ``events`` exactly as the recorder writes them (its own row
conversion and COPY), then the views are read back.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import pytest
from typer.testing import CliRunner

from libs.contract.envelope import Clock, Event, WallClock
from libs.contract.events import (
    BarClosed,
    BarPayload,
    CancelOrder,
    CancelOrderPayload,
    FillPayload,
    FillReceived,
    MarkPayload,
    MarkUpdated,
    OrderAccepted,
    OrderAcceptedPayload,
    OrderCanceled,
    OrderCanceledPayload,
    OrderRejected,
    OrderRejectedPayload,
    SubmitOrder,
    SubmitOrderPayload,
    TradePayload,
    TradePrinted,
)
from libs.store.migrate import upgrade_async
from libs.store.urls import asyncpg_url
from services import cli as root
from services.broker_gateway import positions
from tests.integration.recording import record_events

D = Decimal
CLOCK = WallClock()
ACCOUNT = "acct"


class Orders:
    """Builds a realistic order path: commands, acks, fills with cumulative
    quantities; at ``clock``'s times (the wall clock unless told)."""

    def __init__(self, clock: Clock = CLOCK) -> None:
        self.clock = clock
        self.events: list[Event] = []
        self.commands: dict[uuid.UUID, SubmitOrder] = {}
        self.filled: dict[uuid.UUID, Decimal] = {}

    def submit(self, strategy: str, symbol: str, side: str, qty: str) -> uuid.UUID:
        oid = uuid.uuid4()
        cmd = SubmitOrder.create(
            SubmitOrderPayload(
                order_id=oid,
                strategy=strategy,
                account=ACCOUNT,
                symbol=symbol,
                side=side,
                quantity=D(qty),
            ),
            source="test",
            clock=self.clock,
        )
        self.commands[oid] = cmd
        self.filled[oid] = D(0)
        self.events.append(cmd)
        return oid

    def accept(self, oid: uuid.UUID) -> None:
        cmd = self.commands[oid]
        payload = OrderAcceptedPayload(
            order_id=oid, account=ACCOUNT, broker_order_id=f"b-{oid}", symbol=cmd.payload.symbol
        )
        self.events.append(
            OrderAccepted.create(payload, source="test", clock=self.clock, cause=cmd)
        )

    def fill(self, oid: uuid.UUID, qty: str, price: str, commission: str = "0") -> FillReceived:
        cmd = self.commands[oid]
        self.filled[oid] += D(qty)
        leaves = cmd.payload.quantity - self.filled[oid]
        event = FillReceived.create(
            FillPayload(
                order_id=oid,
                account=ACCOUNT,
                broker_order_id=f"b-{oid}",
                fill_id=f"{oid}:{self.filled[oid]}",
                symbol=cmd.payload.symbol,
                side=cmd.payload.side,
                quantity=D(qty),
                price=D(price),
                cumulative_quantity=self.filled[oid],
                leaves_quantity=leaves,
                status="complete" if leaves == 0 else "partial",
                commission=D(commission),
            ),
            source="test",
            clock=self.clock,
            cause=cmd,
        )
        self.events.append(event)
        return event


def trade(symbol: str, price: str) -> TradePrinted:
    return TradePrinted.create(
        TradePayload(symbol=symbol, price=D(price), size=D(1), feed="synthetic"),
        source="test",
        clock=CLOCK,
    )


def bar(symbol: str, close: str) -> BarClosed:
    p = D(close)
    return BarClosed.create(
        BarPayload(
            symbol=symbol,
            interval="1m",
            open=p,
            high=p,
            low=p,
            close=p,
            volume=D(1),
            start_ns=0,
            end_ns=60_000_000_000,
            feed="synthetic",
        ),
        source="test",
        clock=CLOCK,
    )


async def query(database_url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def test_positions_realized_and_unrealized_pnl(database_url: str) -> None:
    o = Orders()
    a1 = o.submit("s1", "AAPL", "buy", "10")
    o.accept(a1)
    o.fill(a1, "4", "100")
    o.fill(a1, "6", "101")  # long 10 @ 100.6
    a2 = o.submit("s1", "AAPL", "sell", "15")
    dup = o.fill(a2, "15", "102", commission="1.5")  # 10 closed (+14), short 5 @ 102
    m1 = o.submit("s2", "MSFT", "sell", "3")
    o.fill(m1, "3", "50")
    m2 = o.submit("s2", "MSFT", "buy", "3")
    o.fill(m2, "3", "45")  # flat, +15
    n1 = o.submit("s3", "NVDA", "buy", "2")
    o.fill(n1, "2", "10")
    # The same fill recorded again under another id (the order's cumulative
    # quantity says it is the same): counted once.
    again = dup.model_copy(update={"id": uuid.uuid4()})
    await record_events(database_url, [*o.events, again, trade("AAPL", "99"), bar("NVDA", "12")])

    rows = await query(
        database_url,
        "SELECT strategy, symbol, quantity, avg_price, realized_pnl, last_price, unrealized_pnl, "
        "fills FROM positions_marked WHERE account = $1 ORDER BY strategy",
        ACCOUNT,
    )
    got = [
        (
            r["strategy"],
            r["symbol"],
            r["quantity"],
            r["avg_price"],
            r["realized_pnl"],
            r["last_price"],
            r["unrealized_pnl"],
            r["fills"],
        )
        for r in rows
    ]
    assert got == [
        ("s1", "AAPL", D(-5), D(102), D("12.5"), D(99), D(15), 3),
        ("s2", "MSFT", D(0), D(0), D(15), D(45), D(0), 2),  # flat, marked by its last fill
        ("s3", "NVDA", D(2), D(10), D(0), D(12), D(4), 1),  # marked at the last bar's close
    ]
    [pnl] = await query(database_url, "SELECT * FROM account_pnl WHERE account = $1", ACCOUNT)
    assert (pnl["realized_pnl"], pnl["unrealized_pnl"], pnl["open_positions"]) == (
        D("27.5"),
        D(19),
        2,
    )
    steps = await query(
        database_url,
        "SELECT position_quantity, realized_pnl FROM fill_positions "
        "WHERE symbol = 'AAPL' ORDER BY seq",
    )
    assert [(s["position_quantity"], s["realized_pnl"]) for s in steps] == [
        (D(4), D(0)),
        (D(10), D(0)),
        (D(-5), D("12.5")),
    ]


async def test_an_option_contract_counts_100_shares_of_its_price(database_url: str) -> None:
    """Option prices are per share and a contract is 100 shares: the P&L of
    the views counts them so (migration 0006), as the risk-gate does; the
    average price stays per share. Before, it read 100 times too small."""
    option = "O:SPY241220P00720000"
    o = Orders()
    buy = o.submit("opt", option, "buy", "2")
    o.fill(buy, "2", "5")
    sell = o.submit("opt", option, "sell", "1")
    o.fill(sell, "1", "6", commission="0.65")  # closes 1 contract: +100, less 0.65
    await record_events(database_url, [*o.events, trade(option, "5.5")])
    [row] = await query(
        database_url,
        "SELECT quantity, avg_price, realized_pnl, last_price, unrealized_pnl "
        "FROM positions_marked WHERE symbol = $1",
        option,
    )
    assert (row["quantity"], row["avg_price"], row["realized_pnl"]) == (D(1), D(5), D("99.35"))
    assert (row["last_price"], row["unrealized_pnl"]) == (D("5.5"), D(50))  # 0.5 x 1 x 100
    steps = await query(
        database_url,
        "SELECT position_avg_price, realized_pnl FROM fill_positions WHERE symbol = $1 "
        "ORDER BY seq",
        option,
    )
    assert [(r["position_avg_price"], r["realized_pnl"]) for r in steps] == [
        (D(5), D(0)),
        (D(5), D("99.35")),
    ]


class At:
    def __init__(self, ns: int) -> None:
        self.ns = ns

    def now_ns(self) -> int:
        return self.ns


S = 1_000_000_000
T0 = 1_773_154_800 * S
OPTION = "O:SPY241220P00720000"
#: Orders filled an hour before T0: the prices of the tests below are newer.
BEFORE_T0 = At(T0 - 3600 * S)


def trade_at(symbol: str, price: str, t: int) -> TradePrinted:
    return TradePrinted.create(
        TradePayload(symbol=symbol, price=D(price), size=D(1), feed="polygon"),
        source="test",
        clock=At(t),
    )


def bar_at(symbol: str, close: str, t: int) -> BarClosed:
    return bar(symbol, close).model_copy(update={"ts_event": t})


def mark_at(symbol: str, price: str, t: int) -> MarkUpdated:
    """marketdata's mark of a quote 0.10 wide around ``price``, quoted at ``t``."""
    return MarkUpdated.create(
        MarkPayload(
            symbol=symbol,
            price=D(price),
            bid_price=D(price) - D("0.05"),
            ask_price=D(price) + D("0.05"),
            feed="polygon",
        ),
        source="test",
        clock=At(t),
    )


def late(price: Event) -> Event:
    """``price`` recorded late: made (``ts_init``) a minute after everything
    else of a test, its own time (``ts_event``) kept, as Polygon delivers an
    out-of-sequence or late-reported trade."""
    return price.model_copy(update={"ts_init": T0 + 60 * S})


async def test_an_option_position_is_valued_at_its_quote_mark(database_url: str) -> None:
    """Long 2 contracts at 5: with no trade or bar of the contract since, the
    mark of its quote values it (0007); before, it had no price at all."""
    o = Orders(BEFORE_T0)
    o.fill(o.submit("opt", OPTION, "buy", "2"), "2", "5")
    await record_events(database_url, [*o.events, mark_at(OPTION, "5.5", T0)])
    [row] = await query(
        database_url,
        "SELECT last_price, last_price_ns, unrealized_pnl FROM positions_marked WHERE symbol = $1",
        OPTION,
    )
    assert (row["last_price"], row["last_price_ns"]) == (D("5.5"), T0)
    assert row["unrealized_pnl"] == D(100)  # 0.5 x 2 x 100
    [pnl] = await query(database_url, "SELECT * FROM account_pnl WHERE account = $1", ACCOUNT)
    assert pnl["unrealized_pnl"] == D(100)


@pytest.mark.parametrize(
    ("prices", "last"),
    [
        pytest.param(
            [trade_at(OPTION, "4", T0 - 60 * S), mark_at(OPTION, "5.5", T0)],
            ("5.5", T0),
            id="a mark newer than the last trade wins",
        ),
        pytest.param(
            [mark_at(OPTION, "5.5", T0 - 60 * S), trade_at(OPTION, "4", T0)],
            ("4", T0),
            id="a trade newer than the last mark wins",
        ),
        pytest.param(
            [mark_at(OPTION, "5.5", T0), trade_at(OPTION, "4", T0 - 60 * S)],
            ("5.5", T0),
            id="an older trade recorded later does not",
        ),
        pytest.param(
            [trade_at(OPTION, "4", T0), mark_at(OPTION, "5.5", T0)],
            ("5.5", T0),
            id="at the same time the later in the stream wins",
        ),
        pytest.param(
            [bar_at(OPTION, "4.5", T0 - 60 * S), mark_at(OPTION, "5.5", T0)],
            ("5.5", T0),
            id="a mark newer than the last bar wins",
        ),
        pytest.param(
            [mark_at(OPTION, "5.5", T0 - 60 * S), bar_at(OPTION, "4.5", T0)],
            ("4.5", T0),
            id="a bar newer than the last mark wins",
        ),
        pytest.param(
            [trade_at(OPTION, "4", T0 - 60 * S), bar_at(OPTION, "4.5", T0)],
            ("4.5", T0),
            id="a bar newer than the last trade wins",
        ),
        pytest.param(
            [bar_at(OPTION, "4.5", T0 - 60 * S), trade_at(OPTION, "4", T0)],
            ("4", T0),
            id="a trade newer than the last bar wins",
        ),
        pytest.param(
            [
                # Stamped a day ahead of when it was made (a bad clock): its
                # time is taken as 5 s after that (Event.market_ns), so the
                # mark a minute later is newer; on its own stamp it held the
                # price for a day.
                trade_at(OPTION, "9", T0 - 120 * S).model_copy(
                    update={"ts_event": T0 + 86_400 * S}
                ),
                mark_at(OPTION, "4.2", T0 - 60 * S),
            ],
            ("4.2", T0 - 60 * S),
            id="a price stamped a day ahead does not hold it",
        ),
        pytest.param(
            [trade_at(OPTION, "4", T0), late(trade_at(OPTION, "3", T0 - 60 * S))],
            ("4", T0),
            id="a late trade older than the last does not move it back",
        ),
        pytest.param(
            [bar_at(OPTION, "4.5", T0), late(bar_at(OPTION, "3.5", T0 - 60 * S))],
            ("4.5", T0),
            id="a late bar older than the last does not move it back",
        ),
        pytest.param(
            [mark_at(OPTION, "5.5", T0), late(mark_at(OPTION, "5.1", T0 - 60 * S))],
            ("5.5", T0),
            id="a late mark older than the last does not move it back",
        ),
        pytest.param(
            [
                trade_at(OPTION, "4", T0 - 120 * S),
                mark_at(OPTION, "5.5", T0 - 60 * S),
                trade_at(OPTION, "4.2", T0),
                late(trade_at(OPTION, "3", T0 - 90 * S)),
            ],
            ("4.2", T0),
            id="a late trade does not hide the newest trade",
        ),
    ],
)
async def test_the_newest_of_trade_bar_and_mark_values_a_position(
    database_url: str, prices: list[Event], last: tuple[str, int]
) -> None:
    """The risk-gate's rule: the newest price by market time, the later in
    the stream at the same time. Until 0011 a bar was looked at only for a
    symbol that had never traded: a bar newer than the last trade lost.
    Until 0013 each kind's candidate was its last in the stream, so a late
    print older than the one before it moved the price back to a stale one."""
    o = Orders(BEFORE_T0)
    o.fill(o.submit("opt", OPTION, "buy", "1"), "1", "5")
    await record_events(database_url, [*o.events, *prices])
    [row] = await query(
        database_url,
        "SELECT last_price, last_price_ns, unrealized_pnl FROM positions_marked WHERE symbol = $1",
        OPTION,
    )
    assert (row["last_price"], row["last_price_ns"]) == (D(last[0]), last[1])
    assert row["unrealized_pnl"] == (D(last[0]) - 5) * 100


#: What each of a position's price lookups reads, and the index it probes (0013).
PRICE_INDEXES = {
    "TradePrinted": "ix_events_newest_price",
    "BarClosed": "ix_events_newest_price",
    "MarkUpdated": "ix_events_newest_price",
    "FillReceived": "ix_events_newest_fill",
}


def price_lookups(plan: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The scans of ``events`` in an EXPLAIN (FORMAT JSON) plan that look for
    a symbol's price row (a trade, bar, mark or fill), wherever they sit in
    the tree, each with the type it looks for (the fill index's partial
    predicate is the type, so a probe of it names none). The fold's scans of
    the fills name no symbol: they are not these."""
    found = []
    if plan.get("Relation Name") == "events":
        conds = " ".join(str(plan.get(k, "")) for k in ("Index Cond", "Filter", "Recheck Cond"))
        if plan.get("Index Name") == "ix_events_newest_fill":
            conds += " 'FillReceived'"
        if "symbol" in conds:
            found += [(t, plan) for t in PRICE_INDEXES if f"'{t}'" in conds]
    for child in plan.get("Plans", []):
        found += price_lookups(child)
    return found


async def test_each_last_price_is_one_index_probe_found_or_not(database_url: str) -> None:
    """positions_marked looks up a symbol's newest trade, bar, mark and fill
    by market time each with one probe of an index in that order (0013),
    also where there is none, and also as the generic plan of ``tradebus
    positions``' query (a bound account). The store is one a small universe
    makes: two equities' trades are nearly every row, and every row's time
    is 60 s older than the one before, so that the newest by market time is
    the first recorded. With 0007's lookups (newest first by seq, no such
    index) the planner read the primary key backwards, a walk over the whole
    history for the option, which never traded and was marked once at the
    start, and for AAPL's mark, which does not exist; a lookup by market
    time that the index did not order would read every row of the kind."""
    o = Orders(BEFORE_T0)
    o.fill(o.submit("eq", "AAPL", "buy", "10"), "10", "190")
    o.fill(o.submit("opt", OPTION, "buy", "1"), "1", "5")
    await record_events(database_url, [*o.events, mark_at(OPTION, "5.5", T0)])
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        # 20,000 events after them, made in SQL (quicker than events; the
        # lookups read symbol, type, seq, the times and the price): trades of
        # AAPL and MSFT, and one in 40 a bar of MSFT or a mark of a contract
        # nobody holds; each a minute older than the one before, all older
        # than the option's mark (late prints, the worst order for a lookup
        # by seq).
        await conn.execute(
            """
            INSERT INTO events (seq, id, subject, type, ts_event, ts_init, source,
                                correlation_id, symbol, payload)
            SELECT m + s, gen_random_uuid(), 'md', kind, $1::bigint - s * $2::bigint,
                   $1::bigint + s, 'test', gen_random_uuid(), sym,
                   jsonb_build_object('price', (190 + s % 7)::text, 'close', (190 + s % 7)::text)
            FROM (SELECT max(seq) AS m FROM events) AS last,
                 generate_series(1, 20000) AS s,
                 LATERAL (
                     SELECT CASE s % 40 WHEN 0 THEN 'MarkUpdated' WHEN 1 THEN 'BarClosed'
                                 ELSE 'TradePrinted' END AS kind,
                            CASE WHEN s % 40 = 0 THEN 'O:SPY241220C00600000'
                                 WHEN s % 2 = 0 THEN 'AAPL' ELSE 'MSFT' END AS sym
                 ) AS pick
            """,
            T0,
            60 * S,
        )
        await conn.execute("ANALYZE events")
        plans = [
            await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM positions_marked")
        ]
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        for account in (ACCOUNT, None):
            plans.append(
                await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {positions.QUERY}", account)
            )
        await conn.execute("RESET plan_cache_mode")
        rows = await conn.fetch("SELECT symbol, last_price FROM positions_marked ORDER BY symbol")
    finally:
        await conn.close()
    # AAPL's newest trade is its first, at s = 2 (its fill is older still):
    # 190 + 2 % 7. By seq it was the last, at s = 19998 (20000 is a mark).
    assert [(r["symbol"], r["last_price"]) for r in rows] == [("AAPL", D(192)), (OPTION, D("5.5"))]
    for plan in plans:
        [doc] = orjson.loads(plan)
        lookups = price_lookups(doc["Plan"])
        # Trade, bar, mark and fill: each scan runs once per position.
        assert sorted(t for t, _ in lookups) == sorted(PRICE_INDEXES), lookups
        for kind, scan in lookups:
            assert (scan["Node Type"], scan.get("Index Name")) == (
                "Index Scan",
                PRICE_INDEXES[kind],
            ), scan
            assert "Filter" not in scan, scan  # no row read only to be thrown away
            assert scan["Actual Rows"] <= 1, scan


async def test_orders_latest_status_and_fill_strategy(database_url: str) -> None:
    o = Orders()
    filled = o.submit("s1", "AAPL", "buy", "10")
    o.accept(filled)
    o.fill(filled, "10", "100")
    partial = o.submit("s1", "AAPL", "buy", "10")
    o.accept(partial)
    o.fill(partial, "4", "100")
    canceled = o.submit("s2", "AAPL", "buy", "10")
    o.accept(canceled)
    cancel = CancelOrder.create(
        CancelOrderPayload(order_id=canceled, account=ACCOUNT), source="t", clock=CLOCK
    )
    o.events.append(cancel)
    o.events.append(
        OrderCanceled.create(
            OrderCanceledPayload(order_id=canceled, account=ACCOUNT, reason="canceled"),
            source="t",
            clock=CLOCK,
            cause=cancel,
        )
    )
    rejected = o.submit("s2", "HALT", "buy", "1")
    o.events.append(
        OrderRejected.create(
            OrderRejectedPayload(order_id=rejected, account=ACCOUNT, reason="no", code="42210000"),
            source="t",
            clock=CLOCK,
        )
    )
    accepted = o.submit("s3", "MSFT", "sell", "1")
    o.accept(accepted)
    waiting = o.submit("s3", "MSFT", "sell", "1")
    await record_events(database_url, o.events)
    rows = await query(database_url, "SELECT * FROM orders WHERE account = $1", ACCOUNT)
    status = {r["order_id"]: (r["status"], r["filled_quantity"], r["strategy"]) for r in rows}
    assert status == {
        filled: ("filled", D(10), "s1"),
        partial: ("partially_filled", D(4), "s1"),
        canceled: ("canceled", D(0), "s2"),
        rejected: ("rejected", D(0), "s2"),
        accepted: ("accepted", D(0), "s3"),
        waiting: ("submitted", D(0), "s3"),
    }
    [r] = [r for r in rows if r["order_id"] == rejected]
    assert (r["reason"], r["reject_code"]) == ("no", "42210000")
    # The fill carries no strategy; the view takes the SubmitOrder's.
    fills = await query(database_url, "SELECT strategy, order_id FROM fills ORDER BY seq")
    assert [(f["strategy"], f["order_id"]) for f in fills] == [
        ("s1", filled),
        ("s1", partial),
    ]


VIEWS = ("fills", "orders", "fill_positions", "positions", "positions_marked", "account_pnl")


async def test_the_read_only_role_may_read_the_views(pg_admin_url: str) -> None:
    admin = await asyncpg.connect(asyncpg_url(pg_admin_url))
    name = f"ro_{uuid.uuid4().hex[:10]}"
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = 'tradebus_readonly'")
        if not exists:
            await admin.execute("CREATE ROLE tradebus_readonly NOLOGIN")
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = asyncpg_url(pg_admin_url).rsplit("/", 1)[0] + f"/{name}"
    await upgrade_async(url)
    rows = await query(
        url,
        "SELECT v, has_table_privilege('tradebus_readonly', v, 'SELECT') AS ok "
        "FROM unnest($1::text[]) AS v",
        list(VIEWS),
    )
    assert {r["v"]: r["ok"] for r in rows} == dict.fromkeys(VIEWS, True)
    # And reads them: the views call contract_multiplier (0006).
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL ROLE tradebus_readonly")
            for view in VIEWS:
                await conn.fetch(f"SELECT * FROM {view} LIMIT 1")  # noqa: S608 - constants
    finally:
        await conn.close()


async def test_positions_shows_an_account_net_where_strategies_offset(database_url: str) -> None:
    """After a flatten the account is flat at the broker while its strategies
    can hold offsetting quantities; `tradebus positions` shows the net."""
    o = Orders()
    for strategy, side in (("s1", "buy"), ("s2", "sell")):
        order = o.submit(strategy, "AAPL", side, "5")
        o.fill(order, "5", "100")
    solo = o.submit("s3", "MSFT", "buy", "2")
    o.fill(solo, "2", "50")
    more = o.submit("s3", "MSFT", "buy", "1")
    o.fill(more, "1", "50.3334")  # an average of 50.11113333...
    await record_events(database_url, o.events)
    result = await asyncio.to_thread(  # the command runs its own event loop
        CliRunner().invoke,
        root.app,
        ["positions", "--account", ACCOUNT],
        env={"DATABASE_URL": database_url},
    )
    assert result.exit_code == 0, result.output
    # Prices to four places, money to the cent, nothing cut to an ellipsis.
    assert "…" not in result.output
    msft = next(line.split() for line in result.output.splitlines() if "MSFT" in line)
    assert "50.1111" in msft, result.output
    assert "0.00" in msft, result.output  # realized P&L
    nets = [line.split() for line in result.output.splitlines() if " net " in line]
    assert len(nets) == 1, result.output  # MSFT has one strategy: no net row
    assert [cell for cell in nets[0] if cell not in "│┃|"] == [ACCOUNT, "net", "AAPL", "0"]


async def test_positions_says_which_positions_its_unrealized_total_leaves_out(
    database_url: str,
) -> None:
    """Shares an exercise delivered in a symbol with no market data have no
    price (a settlement's fill is never one): the account's unrealized total
    leaves them out, and `tradebus positions` says so instead of summing 0."""
    o = Orders()
    o.fill(o.submit("s1", "AAPL", "buy", "5"), "5", "100")
    exercised = uuid.uuid4()
    shares = FillReceived.create(
        FillPayload(
            order_id=exercised,
            account=ACCOUNT,
            broker_order_id="a-1",
            fill_id="a-1",
            symbol="XYZ",
            side="buy",
            quantity=D(100),
            price=D(600),
            cumulative_quantity=D(100),
            leaves_quantity=D(0),
            status="complete",
            strategy="s2",
            settlement="exercised",
        ),
        source="test",
        clock=CLOCK,
    )
    await record_events(database_url, [*o.events, shares])
    rows = await positions.read_positions(database_url, ACCOUNT)
    assert positions.totals(rows)[ACCOUNT].unpriced == ("s2 XYZ",)
    result = await asyncio.to_thread(
        CliRunner().invoke,
        root.app,
        ["positions", "--account", ACCOUNT],
        env={"DATABASE_URL": database_url, "COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "leaves out 1 position(s) with no price: s2 XYZ" in result.output, result.output
