"""The store and the stack as an operator meets them: expected failures end
in one line and the right exit code, never a traceback (a fresh-eyes review)."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest
from typer.testing import CliRunner

from libs.bus.client import Bus
from libs.store.urls import asyncpg_url
from services import cli as root
from services.stack.preflight import UpError
from services.stack.servers import migrate


async def _stamp(database_url: str, revision: str) -> None:
    """Mark the store as migrated to ``revision``, as a newer tradebus would."""
    conn = await asyncpg.connect(asyncpg_url(database_url))
    try:
        await conn.execute("UPDATE alembic_version SET version_num = $1", revision)
    finally:
        await conn.close()


async def test_db_upgrade_of_a_store_a_newer_tradebus_migrated_is_one_line(
    database_url: str,
) -> None:
    # A home (.tradebus) kept from a newer checkout: alembic does not know
    # the store's revision, and raised its CommandError as a traceback.
    await _stamp(database_url, "0999")
    result = await asyncio.to_thread(  # the command runs its own event loop
        CliRunner().invoke, root.app, ["db", "upgrade"], env={"DATABASE_URL": database_url}
    )
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "error: cannot migrate the event store" in result.output
    assert "'0999'" in result.output


async def test_up_refuses_a_store_a_newer_tradebus_migrated(database_url: str) -> None:
    # tradebus up's step 2: an UpError (one line, the servers stopped, exit 1).
    await _stamp(database_url, "0999")
    with pytest.raises(UpError, match=r"cannot migrate the event store.*'0999'"):
        await asyncio.to_thread(migrate, database_url)


async def test_closing_a_bus_on_purpose_warns_of_no_disconnection(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # tradebus up printed a bare "nats disconnected" between its own lines
    # (after declaring the stream), and every service logged it as a
    # warning at its clean stop: a close we asked for is no disconnection.
    caplog.set_level(logging.DEBUG, logger="libs.bus.client")
    bus = await Bus.connect(nats_url, name="test-close")
    await bus.close()
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == [], [r.getMessage() for r in warned]
