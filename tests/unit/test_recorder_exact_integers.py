"""Decimal fields written as JSON integers too big for 64 bits: the recorder's
row keeps their digits, and the store's read path gives them back exactly.

orjson reads an integer outside ``[-2**63, 2**64)`` as a float and cannot
write one; the contract decodes any integer exactly and refuses floats."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import pytest

from libs.contract.codec import decode
from libs.contract.events import FillPayload
from libs.store import exact_json, queries
from libs.store.writer import Row, differences, duplicate_row, said_by
from services.recorder.domain.rows import StreamMessage, to_row
from tests.unit.contract_samples import as_bytes, fill_event

QUANTITY = 12345678901234567890123  # 23 digits, past 2**64
COMMISSION = -9999999999999999999  # 19 digits, below -2**63


def _big_fill() -> bytes:
    return as_bytes(fill_event(quantity=QUANTITY, commission=COMMISSION))


def _row_of(data: bytes, seq: int = 1) -> Row:
    converted = to_row(StreamMessage(seq, "fills.acct.s1", data), max_bytes=1 << 20)
    assert converted.error is None
    return converted.row


def _record(row: Row) -> dict[str, Any]:
    """``row`` as asyncpg gives it back (jsonb as text, PostgreSQL's own spelling)."""
    return {**row._asdict(), "payload": json.dumps(json.loads(row.payload)), "recorded_at": None}


def test_the_recorded_row_keeps_every_digit_of_a_big_integer() -> None:
    payload = json.loads(_row_of(_big_fill()).payload)
    assert (payload["quantity"], payload["commission"]) == (QUANTITY, COMMISSION)


def test_an_event_with_a_big_integer_reads_back_exactly() -> None:
    record = _record(_row_of(_big_fill()))

    event = queries.stored_event(record)  # a Record's mapping
    recorded = queries._row(record)
    for read in (event, decode(recorded.wire_bytes())):
        assert read is not None
        assert isinstance(read.payload, FillPayload)
        assert read.payload.quantity == Decimal(QUANTITY)
        assert read.payload.commission == Decimal(COMMISSION)
    assert recorded.payload["quantity"] == QUANTITY


def test_copies_differing_only_past_64_bits_differ() -> None:
    """Read as floats, the two quantities were one number, and the copy's
    pointer kept neither its bytes nor what differs."""
    first = _row_of(_big_fill())
    again = fill_event(quantity=QUANTITY + 1, commission=COMMISSION)
    copy = _row_of(as_bytes(again), seq=2)
    assert differences(copy, said_by(first)) == ("payload",)
    pointer = duplicate_row(copy, first.seq, ("payload",), sent=None)
    assert pointer.raw is not None
    assert json.loads(pointer.raw)["payload"]["quantity"] == QUANTITY + 1


@pytest.mark.parametrize(
    "text",
    [
        '{"a":12345678901234567890123}',
        '{"a":-9999999999999999999,"b":"x"}',
        '{"a":[18446744073709551616,1.5]}',
        '{"a":"12345678901234567890 in a string","b":1796676477730206414}',
        '{"a":1796676477730206414,"b":-9223372036854775808,"c":18446744073709551615}',
        '{"a":"\\u00e9","b":null,"c":true}',
    ],
)
def test_exact_json_reads_and_writes_as_the_standard_library(text: str) -> None:
    value = exact_json.loads(text)
    assert value == json.loads(text)
    assert exact_json.loads(text.encode()) == value
    assert exact_json.loads(exact_json.dumps(value)) == value
    assert (
        exact_json.dumps(value, sort_keys=True)
        == json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )


def test_exact_json_refuses_what_json_does_not_allow() -> None:
    """The standard library takes NaN and Infinity; PostgreSQL's JSON does not."""
    with pytest.raises(ValueError, match="expected value at line 1"):
        exact_json.loads('{"a":12345678901234567890123,"b":NaN}')


def test_a_big_integer_is_written_in_key_order() -> None:
    value = {"z": str(uuid.UUID(int=1)), "a": QUANTITY}
    expected = b'{"z":"00000000-0000-0000-0000-000000000001","a":%d}' % QUANTITY
    assert exact_json.dumps(value) == expected
