"""What the services' checkpoints of rebuilt state share.

A checkpoint (``services/risk_gate/adapters/checkpoint.py``,
``services/strategy_runner/adapters/checkpoint.py``) is a fold of the store up
to a sequence. It may only be used by the code that folded it: each names
the source files its fold depends on, and :func:`code_digest` hashes them
with the encoding's format number, and the installed versions of the
packages whose answers it folds (exchange-calendars' holidays and early
closes, say). A release or an upgrade that changes any of them makes its old
checkpoints unusable (they are ignored, and the rebuild folds from the
start).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Iterable
from pathlib import Path

import asyncpg


def installed_version(distribution: str) -> str | None:
    """``distribution``'s installed version; None if it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def code_digest(
    fmt: int,
    sources: Iterable[Path],
    packages: Iterable[tuple[str, str | None]] = (),
) -> str:
    """A hash of ``sources`` (names and contents, in order), ``fmt`` and
    ``packages``' (name, installed version or None) pairs, in order."""
    h = hashlib.sha256(f"format {fmt}\n".encode())
    for path in sources:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    for name, version in packages:
        h.update(f"\npackage {name} {version}".encode())
    return h.hexdigest()[:32]


async def table_exists(conn: asyncpg.Connection, table: str) -> bool:
    """Whether ``table`` exists (a store not yet migrated has no checkpoint table)."""
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table))
