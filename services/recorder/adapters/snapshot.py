"""The snapshot of the positions fold the recorder writes (migration 0010).

``positions`` starts from the latest row set of ``position_snapshots`` and
folds only the fills after it; the snapshot is a cache of the fold, never
a source (without it the view folds from the start). The recorder holding
the writer lock is its one scheduled writer: the SQL function
``write_position_snapshot()`` does the work in one statement, under one MVCC
snapshot, so the state it keeps is that of exactly the fills up to the
sequence it records, and the recorder commits the stream in order, so what
that statement sees is a prefix of the stream.
"""

from __future__ import annotations

from libs.store.connect import connect


async def write_position_snapshot(database_url: str) -> int | None:
    """Write a snapshot of the fold as of the last committed event; the
    sequence it is as of, or None when there was nothing new to write."""
    conn = await connect(database_url)
    try:
        upto = await conn.fetchval("SELECT write_position_snapshot()")
    finally:
        await conn.close()
    return None if upto is None else int(upto)
