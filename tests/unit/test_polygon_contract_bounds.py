"""Polygon's wire schema holds records to the contract's bounds on times and
integers, so the parser (which builds events without validating them again)
never makes an event the decoder refuses: such a record is rejected, and
dead-lettered, at the adapter."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from libs.contract.codec import decode, encode
from libs.contract.envelope import INT64_MAX, NANOS_MAX, Nanos
from services.marketdata.adapters.polygon.parse import (
    FrameParser,
    rest_bar_event,
    rest_bar_rejected,
)
from services.marketdata.adapters.polygon.schemas import RestAgg, WireMillis

T_MS = 1_700_000_000_000


class FixedClock:
    def now_ns(self) -> int:
        return T_MS * 1_000_000


def parser() -> FrameParser:
    return FrameParser(source="marketdata/test", clock=FixedClock())


def _accepts(adapter: TypeAdapter[Any], value: int) -> bool:
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


def test_wire_millis_end_where_the_contract_s_times_end() -> None:
    limit = NANOS_MAX // 1_000_000
    for ms in [0, limit, limit + 1, (2**63 - 1) // 1_000_000]:
        assert _accepts(TypeAdapter(WireMillis), ms) == _accepts(
            TypeAdapter(Nanos), ms * 1_000_000
        ), ms


def _trade(**fields: object) -> dict[str, object]:
    return {"ev": "T", "sym": "AAPL", "x": 4, "p": 187.19, "s": 100, "t": T_MS, "q": 7, **fields}


def _quote(**fields: object) -> dict[str, object]:
    return {
        "ev": "Q",
        "sym": "AAPL",
        "bx": 11,
        "bp": 187.18,
        "bs": 2,
        "ax": 12,
        "ap": 187.2,
        "as": 3,
        "t": T_MS,
        "q": 8,
        **fields,
    }


PAST = [
    _trade(t=NANOS_MAX // 1_000_000 + 1),
    _trade(x=INT64_MAX + 1),
    _trade(z=2**64),
    _trade(q=10**30),
    _trade(c=[1, 2**64]),
    _quote(t=NANOS_MAX // 1_000_000 + 1),
    _quote(bx=INT64_MAX + 1),
    _quote(ax=-(2**63) - 1),
    _quote(c=2**64),
    _quote(i=[2**64]),
    _quote(q=2**70),
    _quote(z=2**64),
]


@pytest.mark.parametrize("record", PAST, ids=lambda r: str(r))
def test_a_record_past_the_contract_s_bounds_is_rejected_not_made_an_event(
    record: dict[str, object],
) -> None:
    parsed = parser().parse(json.dumps([_trade(), record, _quote()]).encode())
    # The others in the frame are events; this one is rejected, for the adapter
    # to dead-letter, never published to be refused by every consumer.
    assert [e.type for e in parsed.events] == ["TradePrinted", "QuoteUpdated"]
    assert [r.reason for r in parsed.rejected] == ["invalid_event"]
    for event in parsed.events:
        assert decode(encode(event)) == event


def test_records_at_the_bounds_make_events_that_decode() -> None:
    frame = [
        _trade(t=NANOS_MAX // 1_000_000, x=INT64_MAX, q=INT64_MAX, c=[INT64_MAX]),
        _quote(t=NANOS_MAX // 1_000_000, bx=INT64_MAX, i=[INT64_MAX], z=-(2**63)),
    ]
    parsed = parser().parse(json.dumps(frame).encode())
    assert parsed.rejected == []
    assert [e.ts_event for e in parsed.events] == [NANOS_MAX, NANOS_MAX]
    for event in parsed.events:
        assert decode(encode(event)) == event


@pytest.mark.parametrize(
    "fields",
    [{"t": 2**70}, {"t": NANOS_MAX // 1_000_000}, {"n": 2**64}, {"n": -(2**63) - 1}],
    ids=str,
)
def test_a_rest_bar_past_the_bounds_is_rejected_with_its_values_exact(
    fields: dict[str, int],
) -> None:
    row = RestAgg.model_validate({"o": 1, "h": 2, "l": 1, "c": 2, "v": 10, "t": T_MS, **fields})
    with pytest.raises(ValidationError) as info:
        rest_bar_event("AAPL", row, source="marketdata/test", ts_init=T_MS * 1_000_000)
    # Before: orjson could not write an integer beyond 64 bits, so making the
    # dead letter raised TypeError and ended the gap-fill.
    rejected = rest_bar_rejected("AAPL", row, info.value)
    assert rejected.reason == "invalid_event"
    kept = json.loads(rejected.raw)
    assert {k: kept[k] for k in fields} == fields
    assert kept["ticker"] == "AAPL"
