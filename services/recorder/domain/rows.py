"""Pure logic of the recorder: stream messages -> rows, and batch planning.

Nothing here does I/O or reads the clock; it is table-tested in
``tests/unit/test_recorder_domain.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from libs.contract.codec import DecodeError, decode, derived_id
from libs.store import exact_json
from libs.store.layout import MISSING, NUL, UNDECODABLE, storable, stored_subject
from libs.store.writer import Row

RECORDER_SOURCE = "event-recorder"

#: U+0000 in JSON text (a JSON string escapes it). PostgreSQL cannot hold it
#: (``libs.store.layout.storable``); unstored, one such message would stop
#: the recorder: its batch would fail on every retry.
NUL_ESCAPE = b"\\u0000"


def _scrub(value: object) -> object:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {storable(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """A message of the recorded stream, as far as the recorder cares."""

    seq: int
    subject: str
    data: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    ts_ns: int = 0  # when the stream stored it


@dataclass(frozen=True, slots=True)
class Converted:
    row: Row
    error: DecodeError | None = None


def to_row(msg: StreamMessage, *, max_bytes: int) -> Converted:
    """The row for one message; an undecodable one keeps its raw bytes."""
    try:
        event = decode(msg.data, max_bytes=max_bytes)
    except DecodeError as e:
        return Converted(_undecodable(msg, e.reason, e.detail), e)
    # Payload fields live in the model's __dict__; .get avoids pydantic's
    # slow __getattr__ path for payloads without strategy/account/symbol.
    fields = event.payload.__dict__
    # The payload exactly as sent (already validated), but for U+0000; an
    # integer past 64 bits kept whole, as the contract decoded it.
    sent: object = exact_json.loads(msg.data)["payload"]
    subject, source, raw = msg.subject, event.source, None
    if NUL_ESCAPE in msg.data or NUL in subject:
        scrubbed = _scrub(sent)
        if scrubbed != sent or NUL in subject or NUL in source:
            sent, subject, source = scrubbed, storable(subject), storable(source)
            raw = msg.data
    row = Row(
        msg.seq,
        event.id,
        subject,
        event.type,
        event.ts_event,
        event.ts_init,
        source,
        event.correlation_id,
        event.causation_id,
        fields.get("strategy"),
        fields.get("account"),
        fields.get("symbol"),
        exact_json.dumps(sent).decode(),
        raw,
    )
    return Converted(row)


#: The reason an event that decoded is recorded as undecodable: the store
#: refused its row (see :func:`unstorable_row`).
UNSTORABLE = "unstorable"


def unstorable_row(msg: StreamMessage, error: str) -> Row:
    """The row for a message that decoded but whose row the store refuses on
    its own (a value it cannot hold: an index's cast or sum out of range, a
    subject too long for its index). Recorded as undecodable, its bytes
    kept, so the timeline goes on."""
    return _undecodable(msg, UNSTORABLE, error)


def _undecodable(msg: StreamMessage, reason: str, detail: str) -> Row:
    rid = derived_id("undecodable", msg.seq)
    # The error can quote the input, U+0000 included.
    payload = {"reason": reason, "error": storable(detail), "size": len(msg.data)}
    subject = stored_subject(msg.subject)
    if subject != storable(msg.subject):
        payload["subject"] = storable(msg.subject)  # the row's subject is cut
    return Row(
        msg.seq,
        rid,
        subject,
        UNDECODABLE,
        msg.ts_ns,
        msg.ts_ns,
        RECORDER_SOURCE,
        rid,
        None,
        None,
        None,
        None,
        orjson.dumps(payload).decode(),
        msg.data,
    )


def missing_row(seq: int, ts_ns: int) -> Row:
    """The row for a stream position whose message no longer exists."""
    rid = derived_id("missing", seq)
    payload = orjson.dumps({"reason": "not in stream (deleted or expired before recording)"})
    return Row(
        seq,
        rid,
        "",
        MISSING,
        ts_ns,
        ts_ns,
        RECORDER_SOURCE,
        rid,
        None,
        None,
        None,
        None,
        payload.decode(),
        None,
    )


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with one fetched batch, given the next sequence to record."""

    fresh: list[StreamMessage]  # contiguous from the first hole-free position
    already: list[StreamMessage]  # at or below the last recorded sequence
    holes: list[int]  # positions between next_seq and the batch to fetch first


def plan(next_seq: int, batch: Iterable[StreamMessage], *, max_hole: int = 10_000) -> Plan:
    """Sort a batch, split off what is already recorded, and list the holes.

    A hole is a position between ``next_seq`` and a fetched message that was
    not fetched (a redelivery that has not come back yet, or a message gone
    from the stream). The recorder reads those positions directly from the
    stream before writing, so it never writes past a hole. At most
    ``max_hole`` of them are listed: a longer hole is read ``max_hole``
    positions at a time, and the messages past it are planned again once those
    are written. (Left whole for a later batch, a hole longer than
    ``max_hole`` was never read: every later batch begins past it too.)
    """
    msgs = sorted({m.seq: m for m in batch}.values(), key=lambda m: m.seq)
    already = [m for m in msgs if m.seq < next_seq]
    ahead = [m for m in msgs if m.seq >= next_seq]
    holes: list[int] = []
    expected = next_seq
    fresh: list[StreamMessage] = []
    for m in ahead:
        gap = m.seq - expected
        if gap > 0:
            room = max_hole - len(holes)
            if gap > room:
                holes.extend(range(expected, expected + room))
                break
            holes.extend(range(expected, m.seq))
        fresh.append(m)
        expected = m.seq + 1
    return Plan(fresh=fresh, already=already, holes=holes)


def merge(fresh: Sequence[StreamMessage], filled: Sequence[StreamMessage]) -> list[StreamMessage]:
    """Fetched and hole-filled messages together, in sequence order."""
    return sorted([*fresh, *filled], key=lambda m: m.seq)
