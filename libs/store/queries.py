"""Reading the event store: listings, causal chains, ranges for replay.

Subject filters use NATS wildcards (``md.bar.*.AAPL``, ``orders.>``) and are
translated to SQL here, with a literal prefix first so the subject index is
used.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from pydantic import ValidationError

from libs.contract.events import EVENT_ADAPTER, AnyEvent
from libs.contract.subjects import check_pattern
from libs.store import exact_json
from libs.store.layout import DUPLICATE, MISSING, UNDECODABLE, stored_subject

log = logging.getLogger(__name__)

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


def stored_event(row: asyncpg.Record) -> AnyEvent | None:
    """The event an ``events`` row holds (its ``seq``, ``id``, ``type``,
    ``ts_event``, ``ts_init``, ``source``, ``correlation_id``,
    ``causation_id`` and ``payload``; the UUID columns taken as asyncpg gives
    them: parsing their text again costs 20 %). None, said, for a row the
    contract does not take: recorded under an older one (an ``O:`` symbol
    naming no contract, say), or no event at all (a hole row). A rebuild
    skips it rather than refuse to start at every restart."""
    envelope = {
        "id": row["id"],
        "type": row["type"],
        "ts_event": row["ts_event"],
        "ts_init": row["ts_init"],
        "source": row["source"],
        "correlation_id": row["correlation_id"],
        "causation_id": row["causation_id"],
        "payload": exact_json.loads(row["payload"]),
    }
    try:
        event: AnyEvent = EVENT_ADAPTER.validate_python(envelope)
    except ValidationError as e:
        log.warning("skipping stored event seq %d (%s): %s", row["seq"], row["type"], e)
        return None
    return event


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

    @property
    def sent_subject(self) -> str:
        """The subject the message was published on. The ``subject`` column,
        but for an undecodable message on a subject too long for the
        store's subject index: its row keeps the subject cut
        (:func:`~libs.store.layout.stored_subject`, maybe no valid subject
        at all) and the whole one in its payload."""
        if self.type == UNDECODABLE and isinstance(self.payload, dict):
            whole = self.payload.get("subject")
            if isinstance(whole, str):
                return whole
        return self.subject

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
        """Bytes to republish: the raw bytes where they were kept (the message
        never decoded, or held text PostgreSQL cannot store, U+0000, which
        the stored payload has as U+FFFD), else the event's JSON."""
        if self.raw is not None:
            return self.raw
        return exact_json.dumps(self.envelope())

    def as_json(self) -> dict[str, Any]:
        """The row for ``--json`` listings: its subject the one the message
        was sent on (:attr:`sent_subject`), not the store's cut of it."""
        out = {"seq": self.seq, "subject": self.sent_subject, **self.envelope()}
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
        payload=exact_json.loads(rec["payload"]),
        raw=rec["raw"],
    )


#: The subject a row's message was sent on, in SQL (see Recorded.sent_subject).
SENT_SUBJECT = (
    f"(CASE WHEN type = '{UNDECODABLE}' AND payload ? 'subject' "
    "THEN payload->>'subject' ELSE subject END)"
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
    if literal and len(literal) < len(tokens):
        # The literal tokens before the first wildcard, and their dot. A
        # pattern that starts with a wildcard has no prefix: "." would
        # match no subject at all.
        prefix += "."
    # A row the recorder made for a message on a subject too long for the
    # subject index keeps its first SUBJECT_MAX_BYTES (stored_subject) and
    # the whole subject in its payload: the LIKE (on the index) takes such a
    # row by the cut start of the prefix, and the regex decides on the whole
    # subject, as NATS would.
    prefix = stored_subject(prefix)
    like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return f"(subject LIKE ${param} AND {SENT_SUBJECT} ~ ${param + 1})", [like, regex]


async def list_events(
    conn: asyncpg.Connection,
    *,
    subject: str = ">",
    after: int = 0,
    limit: int = 100,
    type_: str | None = None,
    newest: bool = False,
) -> list[Recorded]:
    """Up to ``limit`` events after sequence ``after``, in sequence order: the
    first that match, or with ``newest`` the last that match."""
    cond, params = subject_filter(subject, 3)
    sql = f"{SELECT} WHERE seq > $1 AND {cond}"
    args: list[Any] = [after, limit, *params]
    if type_ is not None:
        sql += f" AND type = ${len(args) + 1}"
        args.append(type_)
    sql += f" ORDER BY seq{' DESC' if newest else ''} LIMIT $2"
    rows = [_row(r) for r in await conn.fetch(sql, *args)]
    return rows[::-1] if newest else rows


class IdPrefixError(ValueError):
    """Not the start of an event id."""


#: Fewest hex digits of an id that ``ids_starting_with`` takes (the listings
#: print eight).
MIN_ID_PREFIX = 4


def id_prefix_range(prefix: str) -> tuple[uuid.UUID, uuid.UUID]:
    """The lowest and highest id that start with ``prefix`` (hex digits, with
    or without the dashes of a printed id). PostgreSQL orders uuids by their
    bytes, as their hex digits read, so the ids with a prefix are one range of
    the ``id`` index."""
    digits = prefix.strip().lower().replace("-", "")
    if not re.fullmatch(rf"[0-9a-f]{{{MIN_ID_PREFIX},32}}", digits):
        raise IdPrefixError(
            f"not an event id or the start of one ({MIN_ID_PREFIX} to 32 hex digits): {prefix!r}"
        )
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))


async def ids_starting_with(
    conn: asyncpg.Connection, prefix: str, limit: int = 2
) -> list[uuid.UUID]:
    """Up to ``limit`` recorded event ids that start with ``prefix``, in id order.

    Raises :class:`IdPrefixError` if ``prefix`` cannot start an id."""
    low, high = id_prefix_range(prefix)
    rows = await conn.fetch(
        "SELECT id FROM events WHERE id BETWEEN $1 AND $2 ORDER BY id LIMIT $3", low, high, limit
    )
    return [r["id"] for r in rows]


async def get_event(conn: asyncpg.Connection, event_id: uuid.UUID) -> Recorded | None:
    rec = await conn.fetchrow(f"{SELECT} WHERE id = $1", event_id)
    return _row(rec) if rec is not None else None


async def where_recorded(
    conn: asyncpg.Connection, event_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, tuple[int, str]]:
    """The sequence and type of each of ``event_ids`` the store holds."""
    rows = await conn.fetch(
        "SELECT id, seq, type FROM events WHERE id = ANY($1::uuid[])", event_ids
    )
    return {r["id"]: (int(r["seq"]), r["type"]) for r in rows}


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
