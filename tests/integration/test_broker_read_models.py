"""The read models of migration 0002 (fills, orders, positions, P&L) on real Postgres.

Events go into ``events`` exactly as the recorder writes them (its own row
conversion and COPY), then the views are read back. How a position is
priced: test_broker_read_models_prices.py; the events:
tests/integration/read_model_events.py."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from typer.testing import CliRunner

from libs.contract.events import (
    CancelOrder,
    CancelOrderPayload,
    FillPayload,
    FillReceived,
    OrderCanceled,
    OrderCanceledPayload,
    OrderRejected,
    OrderRejectedPayload,
)
from libs.store.migrate import upgrade_async
from libs.store.urls import asyncpg_url
from services import cli as root
from services.broker_gateway import positions
from tests.integration.read_model_events import ACCOUNT, CLOCK, D, Orders, bar, query, trade
from tests.integration.recording import record_events


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
