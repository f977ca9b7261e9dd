"""The event store's migrations go up and down cleanly on real PostgreSQL.

Each test gets a database of its own (not the migrated template): it
upgrades, downgrades and upgrades again with alembic, as ``tradebus db
upgrade`` does, and reads what the views say at each revision.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
from alembic import command

from libs.store.migrate import alembic_config, upgrade_async
from libs.store.urls import asyncpg_url
from tests.integration.recording import record_events
from tests.integration.test_broker_read_models import (
    ACCOUNT,
    OPTION,
    T0,
    Orders,
    S,
    mark_at,
    trade_at,
)

D = Decimal
HEAD = "0007"
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
    """Head (0007) values an option position at its quote mark when the mark
    is newer than its last trade; down to 0006 it is valued at the trade
    again (marks ignored), the grants kept both ways; up again, the mark."""
    url = await fresh_database(pg_admin_url)
    await upgrade_async(url)
    assert await revision(url) == HEAD
    o = Orders()
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

    await upgrade_async(url)
    assert await revision(url) == HEAD
    assert await last_price(url) == (D("5.5"), T0, D(100))
    assert await readonly_may_read(url, "positions_marked")
    [pnl] = await fetch(url, "SELECT unrealized_pnl FROM account_pnl WHERE account = $1", ACCOUNT)
    assert pnl["unrealized_pnl"] == D(100)


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
