"""The event store's migrations go up and down cleanly on real PostgreSQL.

Each test gets a database of its own (not the migrated template): it
upgrades, downgrades and upgrades again with alembic, as ``tradebus db
upgrade`` does, and reads what the views say at each revision.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from alembic import command

from libs.contract.events import FillPayload, FillReceived
from libs.store.errors import StoreUnavailable
from libs.store.migrate import alembic_config, ensure_database, upgrade_async
from libs.store.schema import EventRow
from libs.store.urls import asyncpg_url
from tests.integration.read_model_events import (
    ACCOUNT,
    BEFORE_T0,
    CLOCK,
    OPTION,
    T0,
    At,
    Orders,
    S,
    bar_at,
    mark_at,
    trade_at,
)
from tests.integration.recording import record_events
from tests.integration.store_cut import CuttingProxy

D = Decimal
HEAD = "0015"
READONLY_ROLE = "tradebus_readonly"


async def fresh_database(pg_admin_url: str) -> str:
    """An empty database (and the read-only role the views are granted to)."""
    admin = await asyncpg.connect(asyncpg_url(pg_admin_url))
    name = f"m_{uuid.uuid4().hex[:12]}"
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", READONLY_ROLE):
            await admin.execute(f"CREATE ROLE {READONLY_ROLE} NOLOGIN")
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return asyncpg_url(pg_admin_url).rsplit("/", 1)[0] + f"/{name}"


async def downgrade(url: str, revision: str) -> None:
    await asyncio.to_thread(command.downgrade, alembic_config(url), revision)


async def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def revision(url: str) -> str | None:
    rows = await fetch(url, "SELECT version_num FROM alembic_version")
    return str(rows[0]["version_num"]) if rows else None


async def last_price(url: str) -> tuple[Decimal, int, Decimal]:
    [row] = await fetch(
        url,
        "SELECT last_price, last_price_ns, unrealized_pnl FROM positions_marked "
        "WHERE account = $1 AND symbol = $2",
        ACCOUNT,
        OPTION,
    )
    return row["last_price"], row["last_price_ns"], row["unrealized_pnl"]


async def readonly_may_read(url: str, view: str) -> bool:
    [row] = await fetch(
        url, "SELECT has_table_privilege($1, $2, 'SELECT') AS ok", READONLY_ROLE, view
    )
    return bool(row["ok"])


async def test_0007_marks_option_positions_from_quotes_and_goes_down_and_up(
    pg_admin_url: str,
) -> None:
    """0007 values an option position at its quote mark when the mark
    is newer than its last trade; down to 0006 it is valued at the trade
    again (marks ignored), the grants kept both ways; up again, the mark."""
    url = await fresh_database(pg_admin_url)
    await upgrade_async(url, "0007")
    assert await revision(url) == "0007"
    o = Orders(BEFORE_T0)
    o.fill(o.submit("opt", OPTION, "buy", "2"), "2", "5")
    await record_events(
        url, [*o.events, trade_at(OPTION, "4", T0 - 600 * S), mark_at(OPTION, "5.5", T0)]
    )
    assert await last_price(url) == (D("5.5"), T0, D(100))

    await downgrade(url, "0006")
    assert await revision(url) == "0006"
    assert await last_price(url) == (D(4), T0 - 600 * S, D(-200)), "0006: the last trade"
    assert await readonly_may_read(url, "positions_marked")
    assert await readonly_may_read(url, "account_pnl")

    await upgrade_async(url, "0007")
    assert await revision(url) == "0007"
    assert await last_price(url) == (D("5.5"), T0, D(100))
    assert await readonly_may_read(url, "positions_marked")
    [pnl] = await fetch(url, "SELECT unrealized_pnl FROM account_pnl WHERE account = $1", ACCOUNT)
    assert pnl["unrealized_pnl"] == D(100)


async def index_exists(url: str, name: str) -> bool:
    rows = await fetch(url, "SELECT 1 FROM pg_indexes WHERE indexname = $1", name)
    return bool(rows)


#: Contracts and equities whose prices 0008's index must find exactly as the
#: walks of 0007 did: each lacks one kind of price row or more.
NEVER_TRADED = "O:QQQ241220C00500000"  # marks only
BARS_AND_MARKS = "O:NVDA241220C00150000"  # bars and marks, never traded
TRADED_ONCE = "O:AMD241220C00200000"  # one trade, long before its marks
UNPRICED = "O:NFLX241220P00900000"  # nothing at all: no price
BARS_ONLY = "BRK.B"  # an equity priced from bars only


def priced_store() -> list[Any]:
    """Positions in every symbol above, two equities (trades, no marks) and a
    flat one, with their market data interleaved over a stretch of time."""
    o = Orders(BEFORE_T0)
    for strategy, symbol, side, qty, price in (
        ("eq", "AAPL", "buy", "10", "190"),
        ("eq", "MSFT", "sell", "5", "400"),
        ("eq", BARS_ONLY, "buy", "3", "450"),
        ("opt", OPTION, "buy", "2", "5"),
        ("opt", NEVER_TRADED, "sell", "1", "3"),
        ("opt", BARS_AND_MARKS, "buy", "4", "2"),
        ("opt", TRADED_ONCE, "buy", "1", "1.5"),
        ("opt", UNPRICED, "buy", "1", "7"),
    ):
        o.fill(o.submit(strategy, symbol, side, qty), qty, price)
    flat = o.submit("flat", "NVDA", "buy", "1")
    o.fill(flat, "1", "120")
    o.fill(o.submit("flat", "NVDA", "sell", "1"), "1", "121")
    market: list[Any] = [trade_at(TRADED_ONCE, "1.4", T0 - 900 * S)]
    for i in range(30):
        t = T0 - (300 - 10 * i) * S
        market += [
            trade_at("AAPL", str(190 + i), t),
            trade_at("MSFT", str(400 - i), t),
            trade_at("NVDA", str(120 + i), t),
            bar_at(BARS_ONLY, str(450 + i), t),
            mark_at(NEVER_TRADED, f"3.{i:02d}", t),
            bar_at(BARS_AND_MARKS, f"2.{i:02d}", t + S),
            mark_at(BARS_AND_MARKS, f"2.{i:02d}", t if i % 2 else t + 2 * S),
            mark_at(TRADED_ONCE, f"1.{i:02d}", t),
            trade_at(OPTION, f"5.{i:02d}", t),
            mark_at(OPTION, f"6.{i:02d}", t + (S if i == 29 else -S)),
        ]
    return [*o.events, *market]


async def test_0008_indexes_the_last_prices_and_positions_marked_says_what_0007_said(
    pg_admin_url: str,
) -> None:
    """0008 adds ix_events_last_price and reorders positions_marked's
    lookups so each is a probe of it. On a store where each lookup can miss
    (equities without marks, contracts without trades or bars or anything),
    every row of positions_marked and account_pnl is the same at 0008 as at
    0007, down and up again; grants kept both ways."""
    url = await fresh_database(pg_admin_url)
    await upgrade_async(url, "0008")
    assert await revision(url) == "0008"
    assert await index_exists(url, "ix_events_last_price")
    await record_events(url, priced_store())
    marked = "SELECT * FROM positions_marked ORDER BY account, strategy, symbol"
    pnl = "SELECT * FROM account_pnl ORDER BY account"
    at_head = await fetch(url, marked)
    pnl_at_head = await fetch(url, pnl)

    await downgrade(url, "0007")
    assert await revision(url) == "0007"
    assert not await index_exists(url, "ix_events_last_price")
    assert await fetch(url, marked) == at_head
    assert await fetch(url, pnl) == pnl_at_head
    assert await readonly_may_read(url, "positions_marked")

    await upgrade_async(url, "0008")
    assert await fetch(url, marked) == at_head
    assert await fetch(url, pnl) == pnl_at_head
    assert await readonly_may_read(url, "positions_marked")
    assert await readonly_may_read(url, "account_pnl")
    # And what they say is what the rule says (not merely the same twice).
    last = {r["symbol"]: (r["last_price"], r["last_price_ns"]) for r in at_head}
    end = T0 - 10 * S  # the last of the 30 rounds
    assert last == {
        "AAPL": (D(219), end),
        "MSFT": (D(371), end),
        "NVDA": (D(149), end),
        BARS_ONLY: (D(479), end),
        OPTION: (D("6.29"), end + S),  # the mark, newer than the trade
        NEVER_TRADED: (D("3.29"), end),
        BARS_AND_MARKS: (D("2.29"), end + S),  # the bar, newer than the mark
        TRADED_ONCE: (D("1.29"), end),
        UNPRICED: (None, None),
    }


def copy_of(fill: FillReceived, strategy: str | None) -> FillReceived:
    """The same fill recorded again under a new id (a redelivery after a
    restart), carrying ``strategy`` or none."""
    payload = FillPayload.model_validate(fill.payload.model_dump() | {"strategy": strategy})
    return FillReceived.create(payload, source="test", clock=CLOCK)


def strategy_mixed_store() -> tuple[list[Any], int]:
    """Fills of both kinds: carrying their strategy (as the broker-gateway
    records them) and not (booked to their SubmitOrder's), one carrying a
    strategy other than its command's, one whose command was never recorded,
    and duplicates under two ids where the first copy carries the strategy
    and the second not, and the other way round; partials, an option, a
    flip through zero. Returns the events and how many fills (copies
    included) carry no strategy."""
    o = Orders(BEFORE_T0)
    events: list[Any] = []
    carried = 0

    def fill(oid: uuid.UUID, qty: str, price: str, strategy: str | None) -> FillReceived:
        nonlocal carried
        plain = o.fill(oid, qty, price, commission="0.65")
        o.events.remove(plain)
        event = copy_of(plain, strategy)
        events.append(event)
        carried += strategy is None
        return event

    def submit(strategy: str, symbol: str, side: str, qty: str) -> uuid.UUID:
        oid = o.submit(strategy, symbol, side, qty)
        events.append(o.events.pop())
        return oid

    a = submit("s1", "AAPL", "buy", "10")
    fill(a, "4", "100", "s1")
    first = fill(a, "6", "101", None)
    b = submit("s1", "AAPL", "sell", "15")  # through zero: short 5
    fill(b, "15", "103", "s1")
    c = submit("s2", OPTION, "buy", "3")
    twice = fill(c, "2", "4.5", "s2")
    events.append(copy_of(twice, None))  # its second copy: counted once, booked s2
    carried += 1
    fill(c, "1", "4.75", None)
    events.append(copy_of(first, "s1"))  # a second copy carrying what the first did not
    d = submit("s2", OPTION, "sell", "3")
    fill(d, "3", "5", "s3")  # the fill's own strategy wins over its command's
    lost = o.submit("s4", "MSFT", "buy", "2")
    o.events.pop()  # its command never recorded: a fill booked to no strategy
    fill(lost, "2", "400", None)
    return events, carried


def submit_order_lookups(plan: dict[str, Any]) -> int:
    """How many times the plan looked for a SubmitOrder (index scans of it)."""
    own = "SubmitOrder" in str(plan.get("Index Cond", "")) + str(plan.get("Filter", ""))
    loops = int(plan.get("Actual Loops", 0)) if own else 0
    return loops + sum(submit_order_lookups(child) for child in plan.get("Plans", []))


async def submit_order_lookups_of_fills(url: str) -> int:
    [row] = await fetch(url, "EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM fills")
    [doc] = json.loads(row[0])
    return submit_order_lookups(doc["Plan"])


async def test_0009_fills_looks_up_the_command_only_of_a_fill_without_strategy(
    pg_admin_url: str,
) -> None:
    """0009 makes ``fills`` look for the SubmitOrder of a fill only when the
    fill carries no strategy. On a store of both kinds, with duplicates
    under two ids, every read model says at 0009 what it said at 0008, down
    and up again; grants kept; and the lookups made are one per fill
    without a strategy, where 0008 made one per fill."""
    url = await fresh_database(pg_admin_url)
    await upgrade_async(url, "0009")
    assert await revision(url) == "0009"
    events, without = strategy_mixed_store()
    await record_events(url, events)
    reads = {
        view: f"SELECT * FROM {view} ORDER BY {order}"  # noqa: S608 - constants
        for view, order in (
            ("fills", "seq"),
            ("orders", "account, order_id"),
            ("fill_positions", "seq"),
            ("positions", "account, strategy, symbol"),
            ("positions_marked", "account, strategy, symbol"),
            ("account_pnl", "account"),
        )
    }
    at_head = {view: await fetch(url, sql) for view, sql in reads.items()}
    assert await submit_order_lookups_of_fills(url) == without == 4

    await downgrade(url, "0008")
    assert await revision(url) == "0008"
    for view, sql in reads.items():
        assert await fetch(url, sql) == at_head[view], view
    assert await submit_order_lookups_of_fills(url) > without, "0008: one per fill"
    assert await readonly_may_read(url, "fills")

    await upgrade_async(url, "0009")
    for view, sql in reads.items():
        assert await fetch(url, sql) == at_head[view], view
    assert await readonly_may_read(url, "fills")
    assert await readonly_may_read(url, "positions")
    # And what they say is what the rule says (not merely the same twice).
    booked = [(r["strategy"], r["symbol"], r["quantity"]) for r in at_head["fills"]]
    assert booked == [
        ("s1", "AAPL", D(4)),
        ("s1", "AAPL", D(6)),  # no strategy of its own: its command's
        ("s1", "AAPL", D(15)),
        ("s2", OPTION, D(2)),  # its later copy (no strategy) not counted
        ("s2", OPTION, D(1)),
        ("s3", OPTION, D(3)),
        (None, "MSFT", D(2)),
    ]
    positions = {
        (r["strategy"], r["symbol"]): (r["quantity"], r["avg_price"], r["realized_pnl"], r["fills"])
        for r in at_head["positions"]
    }
    assert positions == {
        # 4 @ 100 + 6 @ 101 = 10 @ 100.6; sell 15 @ 103: +24 on 10, short 5 @ 103.
        ("s1", "AAPL"): (D(-5), D(103), D(24) - 3 * D("0.65"), 3),
        # 2 @ 4.5 + 1 @ 4.75 = 3 @ 4.5833..., 100 shares a contract.
        ("s2", OPTION): (D(3), round(D("13.75") / 3, 12), -2 * D("0.65"), 2),
        ("s3", OPTION): (D(-3), D(5), -D("0.65"), 1),
        (None, "MSFT"): (D(2), D(400), -D("0.65"), 1),
    }


async def test_0012_values_a_position_at_a_fill_newer_than_its_last_price(
    pg_admin_url: str,
) -> None:
    """0012 takes the symbol's last fill (of any account) as a price, the
    newest by market time winning as in the risk-gate: long 2 contracts, a
    trade at 4 at T0, then another account's fill at 4.5 a minute later with
    no print since. At 0012 the position is worth 4.5; down to 0011 it is
    worth the trade's 4 (the index gone, the grants kept); up again, 4.5."""
    url = await fresh_database(pg_admin_url)
    await upgrade_async(url, "0012")
    assert await revision(url) == "0012"
    assert await index_exists(url, "ix_events_last_fill")
    o = Orders(BEFORE_T0)
    o.fill(o.submit("opt", OPTION, "buy", "2"), "2", "5")
    elsewhere = Orders(At(T0 + 60 * S))
    sold = elsewhere.fill(elsewhere.submit("other", OPTION, "sell", "1"), "1", "4.5")
    elsewhere_fill = sold.model_copy(
        update={"payload": sold.payload.model_copy(update={"account": "acct-b"})}
    )
    await record_events(url, [*o.events, trade_at(OPTION, "4", T0), elsewhere_fill])
    assert await last_price(url) == (D("4.5"), T0 + 60 * S, D(-100))  # 2 x -0.5 x 100

    await downgrade(url, "0011")
    assert await revision(url) == "0011"
    assert not await index_exists(url, "ix_events_last_fill")
    assert await last_price(url) == (D(4), T0, D(-200)), "0011: the last trade"
    assert await readonly_may_read(url, "positions_marked")
    assert await readonly_may_read(url, "account_pnl")

    await upgrade_async(url, "0012")
    assert await last_price(url) == (D("4.5"), T0 + 60 * S, D(-100))
    assert await readonly_may_read(url, "positions_marked")


async def schema_of_the_marks(url: str) -> list[tuple[str, str]]:
    """The definitions of ``events``' indexes and of ``positions_marked``."""
    rows = await fetch(
        url,
        "SELECT indexname AS name, indexdef AS definition FROM pg_indexes "
        "WHERE tablename = 'events' "
        "UNION ALL SELECT 'positions_marked', pg_get_viewdef('positions_marked'::regclass) "
        "ORDER BY name",
    )
    return [(r["name"], r["definition"]) for r in rows]


async def test_0013_values_a_position_at_the_newest_print_not_a_late_older_one(
    pg_admin_url: str,
) -> None:
    """0013 takes each kind's newest price by market time, not its last in
    the stream: long 2 contracts, a trade at 4 at T0, then a trade at 3
    stamped a minute earlier, recorded after it (a late print). At 0013 the
    position is worth the newest trade's 4; down to 0012 it is worth the
    late trade's 3 (0012's indexes and view exactly as they were, the grants
    kept); up again, 4."""
    url = await fresh_database(pg_admin_url)
    await upgrade_async(url, "0012")
    at_0012 = await schema_of_the_marks(url)
    await upgrade_async(url)
    assert await revision(url) == HEAD == "0015"
    assert await index_exists(url, "ix_events_newest_price")
    assert await index_exists(url, "ix_events_newest_fill")
    assert not await index_exists(url, "ix_events_last_price")
    assert not await index_exists(url, "ix_events_last_fill")
    o = Orders(BEFORE_T0)
    o.fill(o.submit("opt", OPTION, "buy", "2"), "2", "5")
    late = trade_at(OPTION, "3", T0 + 60 * S).model_copy(update={"ts_event": T0 - 60 * S})
    await record_events(url, [*o.events, trade_at(OPTION, "4", T0), late])
    assert await last_price(url) == (D(4), T0, D(-200))  # 2 x -1 x 100

    await downgrade(url, "0012")
    assert await revision(url) == "0012"
    assert await schema_of_the_marks(url) == at_0012
    assert await last_price(url) == (D(3), T0 - 60 * S, D(-400)), "0012: the late trade"
    assert await readonly_may_read(url, "positions_marked")
    assert await readonly_may_read(url, "account_pnl")

    await upgrade_async(url)
    assert await last_price(url) == (D(4), T0, D(-200))
    assert await readonly_may_read(url, "positions_marked")
    assert await readonly_may_read(url, "account_pnl")


async def raw_comment(url: str) -> str | None:
    [row] = await fetch(
        url,
        "SELECT col_description('events'::regclass, attnum) AS comment FROM pg_attribute "
        "WHERE attrelid = 'events'::regclass AND attname = 'raw'",
    )
    comment: str | None = row["comment"]
    return comment


async def test_0015_says_raw_keeps_a_differing_copys_bytes_and_goes_down_and_up(
    pg_admin_url: str,
) -> None:
    """``events.raw`` also keeps the bytes of a copy under a recorded id that
    says otherwise (its ``DuplicateSuppressed`` pointer's); at head the
    column says so, as the model does. Down to 0014, 0005's comment."""
    url = await fresh_database(pg_admin_url)
    await upgrade_async(url)
    at_head = await raw_comment(url)
    assert at_head == EventRow.__table__.c.raw.comment
    assert at_head is not None
    assert "DuplicateSuppressed" in at_head

    await downgrade(url, "0014")
    assert await raw_comment(url) == (
        "the message as received, when it did not decode or was stored altered (U+0000)"
    )
    await upgrade_async(url)
    assert await raw_comment(url) == at_head


async def test_every_migration_goes_down_to_nothing_and_up_again(pg_admin_url: str) -> None:
    url = await fresh_database(pg_admin_url)
    await upgrade_async(url)
    await downgrade(url, "base")
    assert await revision(url) is None
    left = await fetch(
        url,
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relname NOT LIKE 'alembic_version%'",
    )
    assert [r["relname"] for r in left] == [], "every table, view and index is gone"
    functions = await fetch(
        url,
        "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'public'",
    )
    assert [r["proname"] for r in functions] == []
    await upgrade_async(url)
    assert await revision(url) == HEAD
    assert await fetch(url, "SELECT * FROM positions_marked") == []


async def test_a_connection_closed_under_ensure_database_is_store_unavailable(
    pg_admin_url: str,
) -> None:
    """PostgreSQL's connection is closed once it has said the database is
    missing: the CREATE DATABASE after it fails with asyncpg's
    ConnectionDoesNotExistError (or, had the client seen the close first, its
    InterfaceError). That is the StoreUnavailable `tradebus db upgrade`
    reports, as for a refused connection; it went through as asyncpg's own
    traceback (the queries were outside the try)."""
    async with CuttingProxy(pg_admin_url, cut=1) as proxy:
        missing = proxy.url.rsplit("/", 1)[0] + f"/m_{uuid.uuid4().hex[:12]}"
        with pytest.raises(StoreUnavailable, match="cannot create database 'm_") as raised:
            await ensure_database(missing)
        assert proxy.cut_done
    assert isinstance(
        raised.value.__cause__, asyncpg.InterfaceError | asyncpg.ConnectionDoesNotExistError
    )


async def test_an_interface_error_in_ensure_database_is_store_unavailable(
    pg_admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection the client already knows is closed (PostgreSQL went away
    while it was idle) answers its next query with asyncpg's InterfaceError,
    "connection is closed": neither an OSError nor a PostgresError, so it was
    a traceback, not a StoreUnavailable. Here the connection is closed as it
    is handed over."""
    real_connect = asyncpg.connect

    async def closed_connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
        conn = await real_connect(*args, **kwargs)
        conn.terminate()
        return conn

    monkeypatch.setattr(asyncpg, "connect", closed_connect)
    with pytest.raises(StoreUnavailable, match="connection is closed") as raised:
        await ensure_database(pg_admin_url.rsplit("/", 1)[0] + "/m_never")
    assert type(raised.value.__cause__) is asyncpg.InterfaceError
