"""Fixtures: real NATS and Postgres (see libs.testing.infra), fresh per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from libs.bus.client import Bus
from libs.store.migrate import upgrade_async
from libs.store.urls import asyncpg_url
from libs.testing.infra import provide_nats, provide_postgres
from libs.testing.streams import delete_all_streams

TEMPLATE_DB = "tradebus_template"

# The set-ups test files share (tests/<kind>/<name>.py, not test_*.py): pytest
# rewrites their asserts too, so one that fails says what it compared.
pytest.register_assert_rewrite(
    *sorted(
        f"tests.{path.parent.name}.{path.stem}"
        for path in Path(__file__).parent.glob("*/*.py")
        if not path.stem.startswith(("test_", "conftest", "__"))
    )
)


@pytest.fixture(scope="session")
def infra_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("infra")


@pytest.fixture(scope="session")
def nats_url(infra_dir: Path) -> Iterator[str]:
    with provide_nats(infra_dir) as (url, _server):
        yield url


@pytest.fixture(scope="session")
def pg_admin_url(infra_dir: Path) -> Iterator[str]:
    with provide_postgres(infra_dir) as (url, _server):
        yield url


def _with_db(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(asyncpg_url(url))
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


@pytest.fixture(scope="session")
async def template_db(pg_admin_url: str) -> str:
    """A migrated database every test database is copied from (fast)."""
    url = _with_db(pg_admin_url, TEMPLATE_DB)
    conn = await asyncpg.connect(asyncpg_url(pg_admin_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"')
    finally:
        await conn.close()
    await upgrade_async(url)
    return TEMPLATE_DB


async def make_database(pg_admin_url: str, template: str) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(asyncpg_url(pg_admin_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await conn.close()
    return _with_db(pg_admin_url, name)


@pytest.fixture
async def database_url(pg_admin_url: str, template_db: str) -> str:
    """A fresh, migrated database for this test."""
    return await make_database(pg_admin_url, template_db)


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    """A bus on a clean slate: every stream is deleted (for good: see
    libs.testing.streams) and the recorded one made again, empty."""
    b = await Bus.connect(nats_url, name="test")
    try:
        await delete_all_streams(b.js)
        await b.ensure_stream()
        yield b
    finally:
        await b.close()
