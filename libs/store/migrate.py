"""Run the event store's alembic migrations programmatically.

``tradebus db upgrade`` calls :func:`upgrade`, which creates the database
when it does not exist yet (handy for ``make run``) and migrates to head.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from libs.store.connect import STORE_ERRORS
from libs.store.errors import MigrationFailed, StoreUnavailable, UnknownRevision
from libs.store.urls import asyncpg_url, sqlalchemy_url

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
VERSIONS = HERE / "migrations" / "versions"


def revision_module(number: str) -> ModuleType:
    """The migration ``number`` (``"0006"``) as a module: a migration that
    replaces a view puts an earlier revision's definition back on downgrade."""
    [path] = VERSIONS.glob(f"{number}_*.py")
    spec = importlib.util.spec_from_file_location(f"tradebus_migration_{number}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def alembic_config(url: str) -> Config:
    cfg = Config(str(HERE / "alembic.ini"))
    cfg.set_main_option("script_location", str(HERE / "migrations"))
    # '%' must be escaped for configparser interpolation.
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return cfg


async def ensure_database(url: str) -> None:
    """Create the URL's database if it is missing (connecting to ``postgres``)."""
    parts = urlsplit(asyncpg_url(url))
    name = parts.path.lstrip("/") or "postgres"
    admin = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
    where = f"PostgreSQL at {parts.hostname}:{parts.port}"
    try:
        conn = await asyncpg.connect(admin, timeout=10)
    except STORE_ERRORS as e:
        raise StoreUnavailable(f"cannot reach {where}") from e
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            log.info("creating database %s", name)
            await conn.execute(f'CREATE DATABASE "{name}"')
    except STORE_ERRORS as e:
        raise StoreUnavailable(f"cannot create database {name!r} on {where}: {e}") from e
    finally:
        await conn.close()


def check_revision(url: str, revision: str) -> None:
    """Raise :class:`UnknownRevision` unless a migration has ``revision``
    (``head``, ``0003``, ...), before the store is touched: alembic finds out
    only once connected, after the database was created, and raises its own
    error. A relative one (``+1``) needs the store's revision: left to alembic."""
    if "+" in revision or "-" in revision:
        return
    try:
        ScriptDirectory.from_config(alembic_config(url)).get_revisions(revision)
    except (CommandError, AssertionError) as e:  # AssertionError: an empty one
        raise UnknownRevision(
            f"no migration has revision {revision!r} (give head or one of "
            f"{', '.join(sorted(p.name.split('_')[0] for p in VERSIONS.glob('0*.py')))})"
        ) from e


def upgrade(url: str, revision: str = "head") -> None:
    """Create the database if needed and migrate it to ``revision``."""
    check_revision(url, revision)
    asyncio.run(ensure_database(url))
    _migrate(url, revision)


def _migrate(url: str, revision: str) -> None:
    try:
        command.upgrade(alembic_config(url), revision)
    except CommandError as e:
        # Its message says which revision it could not place; no traceback.
        raise MigrationFailed(
            f"alembic refused: {e} (a store migrated by a newer tradebus "
            "names a revision this one does not have)"
        ) from e


async def upgrade_async(url: str, revision: str = "head") -> None:
    """:func:`upgrade` from async code (alembic's env runs its own loop)."""
    check_revision(url, revision)
    await ensure_database(url)
    await asyncio.to_thread(_migrate, url, revision)
