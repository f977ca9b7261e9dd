"""What the services' checkpoints of rebuilt state share.

A checkpoint (``services/risk_gate/adapters/checkpoint.py``,
``services/strategy_runner/adapters/checkpoint.py``) is a fold of the store up
to a sequence. It may only be used by the code that folded it: each names
the source files its fold depends on, and :func:`code_digest` hashes them
with the encoding's format number. A release that changes any of them makes
its old checkpoints unusable (they are ignored, and the rebuild folds from
the start).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import asyncpg


def code_digest(fmt: int, sources: Iterable[Path]) -> str:
    """A hash of ``sources`` (names and contents, in order) and ``fmt``."""
    h = hashlib.sha256(f"format {fmt}\n".encode())
    for path in sources:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:32]


async def table_exists(conn: asyncpg.Connection, table: str) -> bool:
    """Whether ``table`` exists (a store not yet migrated has no checkpoint table)."""
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table))
