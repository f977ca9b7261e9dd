"""Reading the event store: listings, causal chains, ranges for replay.

Subject filters use NATS wildcards (``md.bar.*.AAPL``, ``orders.>``) and are
translated to SQL here, with a literal prefix first so the subject index is
used.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from libs.contract.subjects import check_pattern
from libs.store.schema import DUPLICATE, MISSING, UNDECODABLE

SELECT = (
    "SELECT seq, id, subject, type, ts_event, ts_init, recorded_at, source, correlation_id, "
    "causation_id, strategy, account, symbol, payload, raw FROM events"
)


@dataclass(frozen=True, slots=True)
class Tail:
    """The store's last row: what the stream must still hold at that sequence."""

    seq: int
    id: uuid.UUID
    subject: str
    type: str


def last_seq_of(tail: Tail | None) -> int:
    """The store's last sequence: ``tail``'s, or 0 for an empty store."""
    return tail.seq if tail is not None else 0


async def tail(conn: asyncpg.Connection) -> Tail | None:
    """The last recorded row; None for an empty store."""
    row = await conn.fetchrow("SELECT seq, id, subject, type FROM events ORDER BY seq DESC LIMIT 1")
    return None if row is None else Tail(int(row["seq"]), row["id"], row["subject"], row["type"])


@dataclass(frozen=True, slots=True)
class Recorded:
    """A row of the store as read back."""

    seq: int
    id: uuid.UUID
    subject: str
    type: str
    ts_event: int
    ts_init: int
    source: str
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None
    strategy: str | None
    account: str | None
    symbol: str | None
    payload: Any
    raw: bytes | None

    @property
    def is_event(self) -> bool:
        """False for positions the recorder filled itself (bad/duplicate/missing)."""
        return self.type not in (UNDECODABLE, DUPLICATE, MISSING)

    def envelope(self) -> dict[str, Any]:
        """The event as it was published (same fields, same values)."""
        return {
            "id": str(self.id),
            "type": self.type,
            "ts_event": self.ts_event,
            "ts_init": self.ts_init,
            "source": self.source,
            "correlation_id": str(self.correlation_id),
            "causation_id": str(self.causation_id) if self.causation_id else None,
            "payload": self.payload,
        }

    def wire_bytes(self) -> bytes:
        """Bytes to republish: the event's JSON, or the raw bytes if it never decoded."""
        if self.type == UNDECODABLE and self.raw is not None:
            return self.raw
        return orjson.dumps(self.envelope())

    def as_json(self) -> dict[str, Any]:
        out = {"seq": self.seq, "subject": self.subject, **self.envelope()}
        if self.raw is not None:
            out["raw_size"] = len(self.raw)
        return out


def _row(rec: asyncpg.Record) -> Recorded:
    return Recorded(
        seq=rec["seq"],
        id=rec["id"],
        subject=rec["subject"],
        type=rec["type"],
        ts_event=rec["ts_event"],
        ts_init=rec["ts_init"],
        source=rec["source"],
        correlation_id=rec["correlation_id"],
        causation_id=rec["causation_id"],
        strategy=rec["strategy"],
        account=rec["account"],
        symbol=rec["symbol"],
        payload=orjson.loads(rec["payload"]),
        raw=rec["raw"],
    )


def subject_filter(pattern: str, param: int) -> tuple[str, list[str]]:
    """SQL condition (and its parameters, numbered from ``param``) for a NATS pattern.

    Raises :class:`~libs.contract.subjects.SubjectPatternError` for a pattern
    NATS would refuse (``md.>.AAPL``, ``md trade``)."""
    if pattern in ("", ">"):
        return "TRUE", []
    check_pattern(pattern)
    tokens = pattern.split(".")
    literal: list[str] = []
    for tok in tokens:
        if tok in ("*", ">"):
            break
        literal.append(tok)
    regex_parts = []
    for tok in tokens:
        if tok == ">":
            regex_parts.append(r"[^.]+(\.[^.]+)*")
        elif tok == "*":
            regex_parts.append(r"[^.]+")
        else:
            regex_parts.append(re.escape(tok))
    regex = "^" + r"\.".join(regex_parts) + "$"
    prefix = ".".join(literal)
    if len(literal) < len(tokens):
        prefix += "."
    like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return f"(subject LIKE ${param} AND subject ~ ${param + 1})", [like, regex]


async def list_events(
    conn: asyncpg.Connection,
    *,
    subject: str = ">",
    after: int = 0,
    limit: int = 100,
    type_: str | None = None,
) -> list[Recorded]:
    cond, params = subject_filter(subject, 3)
    sql = f"{SELECT} WHERE seq > $1 AND {cond}"
    args: list[Any] = [after, limit, *params]
    if type_ is not None:
        sql += f" AND type = ${len(args) + 1}"
        args.append(type_)
    sql += " ORDER BY seq LIMIT $2"
    return [_row(r) for r in await conn.fetch(sql, *args)]


async def get_event(conn: asyncpg.Connection, event_id: uuid.UUID) -> Recorded | None:
    rec = await conn.fetchrow(f"{SELECT} WHERE id = $1", event_id)
    return _row(rec) if rec is not None else None


async def causal_chain(conn: asyncpg.Connection, event_id: uuid.UUID) -> list[Recorded]:
    """Every event sharing ``event_id``'s correlation id, in sequence order.

    The chain's root is the event whose id is the correlation id; each other
    event names its parent in ``causation_id``.
    """
    rows = await conn.fetch(
        f"{SELECT} WHERE correlation_id = "  # noqa: S608 - constant column list
        "(SELECT correlation_id FROM events WHERE id = $1) ORDER BY seq",
        event_id,
    )
    return [_row(r) for r in rows]


async def count_range(
    conn: asyncpg.Connection,
    *,
    subject: str = ">",
    from_seq: int = 1,
    to_seq: int | None = None,
    since_ns: int | None = None,
    until_ns: int | None = None,
) -> int:
    where, args = _range_where(subject, from_seq, to_seq, since_ns, until_ns)
    # `where` is built from fixed fragments; every value is a bind parameter.
    sql = f"SELECT count(*) FROM events WHERE {where}"  # noqa: S608
    return int(await conn.fetchval(sql, *args))


def _range_where(
    subject: str,
    from_seq: int,
    to_seq: int | None,
    since_ns: int | None,
    until_ns: int | None,
    types: Sequence[str] | None = None,
) -> tuple[str, list[Any]]:
    args: list[Any] = [from_seq, to_seq if to_seq is not None else 2**63 - 1]
    where = "seq >= $1 AND seq <= $2"
    if types is not None:
        args.append(list(types))
        where += f" AND type = ANY(${len(args)}::text[])"
    if since_ns is not None:
        args.append(since_ns)
        where += f" AND ts_event >= ${len(args)}"
    if until_ns is not None:
        args.append(until_ns)
        where += f" AND ts_event < ${len(args)}"
    cond, params = subject_filter(subject, len(args) + 1)
    args.extend(params)
    return f"{where} AND {cond}", args


async def iter_range(
    conn: asyncpg.Connection,
    *,
    subject: str = ">",
    from_seq: int = 1,
    to_seq: int | None = None,
    since_ns: int | None = None,
    until_ns: int | None = None,
    types: Sequence[str] | None = None,
    page: int = 2000,
) -> AsyncIterator[Recorded]:
    """Rows in sequence order, fetched a page at a time (keyset pagination);
    only those of ``types``, when given."""
    cursor = from_seq
    while True:
        where, args = _range_where(subject, cursor, to_seq, since_ns, until_ns, types)
        rows = await conn.fetch(f"{SELECT} WHERE {where} ORDER BY seq LIMIT {int(page)}", *args)
        for rec in rows:
            yield _row(rec)
        if len(rows) < page:
            return
        cursor = rows[-1]["seq"] + 1
