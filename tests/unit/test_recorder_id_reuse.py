"""A message under a recorded event's id (``libs/store/writer.py``): when it
says what the first says, and what its DuplicateSuppressed pointer keeps
when it does not."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import orjson
import pytest

from libs.contract.codec import encode
from libs.contract.events import TradePrinted
from libs.store.layout import DUPLICATE
from libs.store.writer import EVENT_FIELDS, Row, differences, duplicate_row, said_by, what_it_says
from libs.testing.producer import make_trades
from services.ops.gist import gist
from services.recorder.domain.rows import StreamMessage, to_row

TRADE = next(iter(make_trades(1, "md/a")))


def row_of(data: bytes, seq: int = 2, subject: str = "md.trade.AAPL") -> Row:
    converted = to_row(StreamMessage(seq, subject, data), max_bytes=1 << 20)
    assert converted.error is None
    return converted.row


def event(**update: Any) -> bytes:
    return encode(TRADE.model_copy(update=update))


def payload(**update: Any) -> bytes:
    return event(payload=TRADE.payload.model_copy(update=update))


def _reversed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reversed(value[k]) for k in reversed(value)}
    return value


FIRST = said_by(row_of(encode(TRADE), seq=1))
ESCAPED = encode(TRADE).replace(b'"symbol":"AAPL"', b'"symbol" : "\\u0041APL"')
assert encode(TRADE) != ESCAPED


@pytest.mark.parametrize(
    "data",
    [
        encode(TRADE),
        # Other bytes, the same JSON: keys in another order, spaces, escapes.
        orjson.dumps(_reversed(orjson.loads(encode(TRADE))), option=orjson.OPT_INDENT_2),
        ESCAPED,
        # When and by which instance this copy was made.
        event(ts_init=TRADE.ts_init + 10**12, source="md/b"),
    ],
    ids=["same-bytes", "reordered", "escaped", "made-again"],
)
def test_the_same_event_sent_again_differs_in_nothing(data: bytes) -> None:
    assert differences(row_of(data), FIRST) == ()


def test_the_subject_it_came_on_is_not_what_the_event_says() -> None:
    assert differences(row_of(encode(TRADE), subject="md.trade.other"), FIRST) == ()


@pytest.mark.parametrize(
    ("data", "differs"),
    [
        (payload(price=TRADE.payload.price + 1), ("payload",)),
        (payload(size=Decimal("1.5")), ("payload",)),
        (payload(backfilled=True), ("payload",)),  # a field the first left to its default
        (event(ts_event=TRADE.ts_event + 1), ("ts_event",)),
        (event(causation_id=uuid.uuid4()), ("causation_id",)),
        (event(correlation_id=uuid.uuid4(), ts_event=1), ("ts_event", "correlation_id")),
    ],
    ids=["price", "size", "default", "ts_event", "causation", "two"],
)
def test_another_event_under_the_id_says_what_differs(
    data: bytes, differs: tuple[str, ...]
) -> None:
    assert differences(row_of(data), FIRST) == differs


def test_another_type_under_the_id_differs() -> None:
    row = row_of(encode(TRADE))._replace(type="QuoteUpdated")
    assert differences(row, FIRST) == ("type",)


def test_the_stored_payload_compares_as_a_json_value() -> None:
    """What the store gives back (``jsonb`` text: its own key order and
    spacing) says the same as the row it was written from."""
    row = row_of(encode(TRADE), seq=1)
    stored = orjson.loads(row.payload)
    jsonb_text = ", ".join(
        f"{orjson.dumps(k).decode()}: {orjson.dumps(stored[k]).decode()}"
        for k in sorted(stored, key=lambda k: (len(k), k))
    )
    fields = {f: getattr(row, f) for f in EVENT_FIELDS} | {"payload": "{" + jsonb_text + "}"}
    assert what_it_says(*(fields[f] for f in EVENT_FIELDS)) == FIRST


def test_a_pointer_keeps_what_the_copy_says_beyond_the_first() -> None:
    copy = row_of(event(ts_init=TRADE.ts_init + 5, source="md/b"), seq=9, subject="md.trade.x")
    dup = duplicate_row(copy, first_seq=1, sent=None)
    assert (dup.type, dup.causation_id) == (DUPLICATE, TRADE.id)
    assert orjson.loads(dup.payload) == {"duplicate_of": str(TRADE.id), "first_seq": 1}
    assert (dup.seq, dup.subject, dup.ts_event, dup.ts_init, dup.source) == (
        9,
        "md.trade.x",
        TRADE.ts_event,
        TRADE.ts_init + 5,
        "md/b",
    )


def test_a_pointer_keeps_the_bytes_of_a_copy_stored_altered() -> None:
    """A copy with U+0000 (stored as U+FFFD, its bytes in ``raw``) that
    says what the first says once stored: the pointer keeps its bytes."""
    nul = TRADE.model_copy(update={"source": "md/\x00"})
    copy = row_of(encode(nul), seq=9)
    assert copy.raw == encode(nul)
    assert duplicate_row(copy, first_seq=1, sent=None).raw == encode(nul)


def test_a_pointer_to_a_copy_that_says_the_same_keeps_no_bytes() -> None:
    copy = row_of(event(ts_init=TRADE.ts_init + 5), seq=9)
    dup = duplicate_row(copy, first_seq=1, sent=encode(TRADE))
    assert dup.raw is None
    assert "differs" not in orjson.loads(dup.payload)


def test_a_pointer_to_a_copy_that_differs_keeps_its_bytes_and_says_what_differs() -> None:
    """A producer making an event again after a restart (another ts_event,
    another reason text): the pointer keeps the copy's bytes as sent and
    names what differs. Before, it kept the id and the first's seq only."""
    data = event(
        ts_event=TRADE.ts_event + 7, payload=TRADE.payload.model_copy(update={"size": Decimal(3)})
    )
    copy = row_of(data, seq=9, subject="md.trade.x")
    dup = duplicate_row(copy, first_seq=1, differs=("ts_event", "payload"), sent=data)
    assert (dup.seq, dup.type, dup.causation_id, dup.raw) == (9, DUPLICATE, TRADE.id, data)
    assert orjson.loads(dup.payload) == {
        "duplicate_of": str(TRADE.id),
        "first_seq": 1,
        "differs": ["ts_event", "payload"],
    }
    assert (dup.subject, dup.ts_event) == ("md.trade.x", TRADE.ts_event + 7)


def test_a_differing_copy_without_its_bytes_keeps_what_it_says_as_json() -> None:
    """A row with no message behind it (no bytes were sent): the pointer
    keeps the copy as an event's JSON, everything it says, not the first's."""
    copy = row_of(payload(price=TRADE.payload.price + 1), seq=9)
    dup = duplicate_row(copy, first_seq=1, differs=("payload",), sent=None)
    assert dup.raw is not None
    kept = TradePrinted.model_validate_json(dup.raw)
    assert kept.id == TRADE.id
    assert kept.payload.price == TRADE.payload.price + 1
    assert (kept.ts_init, kept.source, kept.correlation_id) == (
        TRADE.ts_init,
        TRADE.source,
        TRADE.correlation_id,
    )


def test_the_audit_line_of_a_differing_copy_says_what_differs() -> None:
    said = {"duplicate_of": str(TRADE.id), "first_seq": 1, "differs": ["ts_event", "payload"]}
    assert gist(DUPLICATE, said) == (
        f"duplicate of {TRADE.id} at seq 1, differing in ts_event, payload"
    )
    assert gist(DUPLICATE, {"duplicate_of": str(TRADE.id), "first_seq": 1}) == (
        f"duplicate of {TRADE.id} at seq 1"
    )
