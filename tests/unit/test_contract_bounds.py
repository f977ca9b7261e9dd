"""The contract's bounds on times, ids and integers: what the store cannot
hold exactly (or index) is refused at decode, by the decoder every service
uses, so no service acts on an event the audit store would not keep.

- A nanosecond time is at most :data:`NANOS_MAX` (2200-01-01): the store's
  market-time indexes add ``CLOCK_SKEW_NS`` to ``ts_init`` in bigint, and a
  value near ``2**63 - 1`` overflowed them.
- An id is a UUID as the services write it (lower-case 8-4-4-4-12 hex):
  ``urn:uuid:…``, braces, upper case or no hyphens were accepted, and the
  store keeps a payload as sent (``urn:uuid:…`` fails its ``::uuid`` index).
- An integer field fits a signed 64-bit integer: the recorder re-parses the
  payload with orjson, which reads a bigger one as a float, so the store
  kept other digits than the services acted on. (A decimal written as a
  JSON integer past 64 bits still decodes exactly, as ``test_contract.py``'s
  ``test_json_integers_are_exact_decimals`` requires, and the store still
  keeps it as a float: an open problem.)
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from jsonschema import (  # type: ignore[import-untyped]  # no types-jsonschema in dev deps
    Draft202012Validator,
)

from libs.contract.codec import DecodeError, dead_letter, decode, derived_id, encode, order_id_for
from libs.contract.envelope import (
    CANONICAL_ID_PATTERN,
    CLOCK_SKEW_NS,
    INT64_MAX,
    INT64_MIN,
    NANOS_MAX,
    Event,
    WallClock,
)
from libs.contract.events import (
    EVENT_ADAPTER,
    BarClosed,
    BarPayload,
    BrokerPositionsChecked,
    ClosingOrder,
    ClosingOrdersPayload,
    ClosingOrdersPlaced,
    FeedStatusChanged,
    FeedStatusPayload,
    PositionsCheckedPayload,
    QuotePayload,
    QuoteUpdated,
    ReasonCode,
    RiskDecisionMade,
    RiskDecisionPayload,
    SubmitOrder,
    SubmitOrderPayload,
    TradePayload,
    TradePrinted,
)
from services.recorder.domain.rows import StreamMessage, to_row
from tests.unit.contract_samples import T0, FixedClock, all_10_aapl_filled, intent_to_buy_10_aapl

PROTO = Path(__file__).resolve().parents[2] / "proto"
BIGINT_MAX = 2**63 - 1
CLOCK = FixedClock()


def samples() -> dict[str, Event]:
    """One event of each shape whose fields these tests reach into."""
    intent = intent_to_buy_10_aapl(CLOCK)
    order_id = order_id_for(intent.id)
    submit = SubmitOrder.create(
        SubmitOrderPayload.for_intent(intent, order_id),
        source="risk-gate",
        clock=CLOCK,
        cause=intent,
    )
    return {
        "submit": submit,
        "decision": RiskDecisionMade.create(
            RiskDecisionPayload.for_intent(intent, ReasonCode.ACCEPTED, order_id=order_id),
            source="risk-gate",
            clock=CLOCK,
            cause=intent,
        ),
        "closing": ClosingOrdersPlaced.create(
            ClosingOrdersPayload(
                account="acct-a",
                orders=(
                    ClosingOrder(
                        order_id=uuid.uuid4(),
                        symbol="AAPL",
                        side="sell",
                        quantity=Decimal(5),
                        leaves_quantity=Decimal(5),
                    ),
                ),
            ),
            source="broker-gateway",
            clock=CLOCK,
        ),
        "fill": all_10_aapl_filled(order_id, "187.19", CLOCK, cause=submit),
        "trade": TradePrinted.create(
            TradePayload(
                symbol="AAPL",
                price=Decimal("187.19"),
                size=Decimal(100),
                exchange=4,
                conditions=(12, 37),
                tape=3,
                sequence=1234,
                feed="polygon",
            ),
            source="marketdata",
            clock=CLOCK,
        ),
        "quote": QuoteUpdated.create(
            QuotePayload(
                symbol="AAPL",
                bid_price=Decimal("187.18"),
                bid_size=Decimal(2),
                ask_price=Decimal("187.20"),
                ask_size=Decimal(3),
                bid_exchange=11,
                ask_exchange=12,
                condition=1,
                indicators=(604,),
                tape=3,
                sequence=99,
                feed="polygon",
            ),
            source="marketdata",
            clock=CLOCK,
        ),
        "bar": BarClosed.create(
            BarPayload(
                symbol="AAPL",
                interval="1m",
                open=Decimal(1),
                high=Decimal(2),
                low=Decimal(1),
                close=Decimal(2),
                volume=Decimal(10),
                trades=7,
                start_ns=T0 - 60_000_000_000,
                end_ns=T0,
                feed="polygon",
            ),
            source="marketdata",
            clock=CLOCK,
        ),
        "status": FeedStatusChanged.create(
            FeedStatusPayload(
                feed="polygon",
                status="gap_filled",
                gap_filled_bars=3,
                market="stocks",
                open_gaps={"1m": {"MSFT": T0}, "1s": {}},
            ),
            source="marketdata",
            clock=CLOCK,
        ),
        "positions": BrokerPositionsChecked.create(
            PositionsCheckedPayload(account="acct-a", broker="paper", broker_positions=2),
            source="broker-gateway",
            clock=CLOCK,
        ),
        "dead": dead_letter(
            service="risk-gate",
            subject="strategy.intent.sma",
            data=b"not json",
            error=DecodeError("malformed_json", "expected value"),
            clock=CLOCK,
            source="risk-gate",
            stream_seq=17,
        ),
    }


def _wire(sample: str) -> dict[str, Any]:
    wire: dict[str, Any] = json.loads(encode(samples()[sample]))
    return wire


def _set(wire: dict[str, Any], path: tuple[str | int, ...], value: object) -> None:
    at: Any = wire
    for key in path[:-1]:
        at = at[key]
    at[path[-1]] = value


def _decode_with(sample: str, path: tuple[str | int, ...], value: object) -> Event:
    wire = _wire(sample)
    _set(wire, path, value)
    # json, not orjson: json writes an int of any size, as a producer
    # elsewhere may; orjson refuses one beyond 64 bits.
    return decode(json.dumps(wire).encode())


def _refused(sample: str, path: tuple[str | int, ...], value: object) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        _decode_with(sample, path, value)
    assert info.value.reason == "invalid_event"
    return info.value


def _schema() -> dict[str, Any]:
    return EVENT_ADAPTER.json_schema(mode="validation")


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


# ----------------------------------------------------------------- times

NS_FIELDS = [
    ("trade", ("ts_event",)),
    ("trade", ("ts_init",)),
    ("fill", ("ts_event",)),
    ("fill", ("ts_init",)),
    ("bar", ("payload", "start_ns")),
    ("bar", ("payload", "end_ns")),
    ("status", ("payload", "open_gaps", "1m", "MSFT")),
]


def test_the_time_bound_is_2200_and_leaves_room_for_the_store_s_arithmetic() -> None:
    assert dt.datetime.fromtimestamp(NANOS_MAX // 10**9, dt.UTC) == dt.datetime(
        2200, 1, 1, tzinfo=dt.UTC
    )
    # The market-time indexes (migrations 0013, 0014) compute ts_init + 5 s.
    assert NANOS_MAX + CLOCK_SKEW_NS < BIGINT_MAX
    # Decades of room above it for any other sum of times.
    assert BIGINT_MAX - NANOS_MAX > 60 * 365 * 86_400 * 10**9


@pytest.mark.parametrize(("sample", "path"), NS_FIELDS)
@pytest.mark.parametrize("value", [NANOS_MAX + 1, BIGINT_MAX - 1, BIGINT_MAX])
def test_a_time_past_the_bound_is_refused_naming_the_field(
    sample: str, path: tuple[str, ...], value: int
) -> None:
    error = _refused(sample, path, value)
    assert ".".join(path) in error.detail


@pytest.mark.parametrize(("sample", "path"), NS_FIELDS)
def test_a_negative_time_is_refused(sample: str, path: tuple[str, ...]) -> None:
    assert ".".join(path) in _refused(sample, path, -1).detail


@pytest.mark.parametrize(("sample", "path"), NS_FIELDS)
@pytest.mark.parametrize("value", [0, T0, NANOS_MAX])
def test_times_up_to_the_bound_decode(sample: str, path: tuple[str, ...], value: int) -> None:
    wire = _wire(sample)
    if path[-1] == "start_ns":
        _set(wire, ("payload", "end_ns"), value)
    _set(wire, path, value)
    event = decode(json.dumps(wire).encode())
    assert json.loads(encode(event)) == wire


def test_the_wall_clock_is_far_inside_the_bound() -> None:
    now = WallClock().now_ns()
    assert abs(now - time.time_ns()) < 60 * 10**9
    assert now < NANOS_MAX - 100 * 365 * 86_400 * 10**9


# ------------------------------------------------------------------- ids

ID_FIELDS = [
    ("submit", ("id",)),
    ("submit", ("correlation_id",)),
    ("submit", ("causation_id",)),
    ("submit", ("payload", "order_id")),
    ("submit", ("payload", "intent_id")),
    ("decision", ("payload", "intent_id")),
    ("decision", ("payload", "order_id")),
    ("fill", ("payload", "order_id")),
    ("closing", ("payload", "orders", 0, "order_id")),
]

_CANONICAL = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
NON_CANONICAL = [
    "urn:uuid:" + _CANONICAL,
    "{" + _CANONICAL + "}",
    _CANONICAL.replace("-", ""),
    _CANONICAL.upper(),
    " " + _CANONICAL,
    _CANONICAL + "\n",
]


@pytest.mark.parametrize(("sample", "path"), ID_FIELDS)
@pytest.mark.parametrize("text", NON_CANONICAL)
def test_an_id_not_in_canonical_form_is_refused_naming_the_field(
    sample: str, path: tuple[str | int, ...], text: str
) -> None:
    error = _refused(sample, path, text)
    assert ".".join(str(p) for p in path) in error.detail
    assert "canonical" in error.detail


@pytest.mark.parametrize(("sample", "path"), ID_FIELDS)
def test_a_canonical_id_decodes(sample: str, path: tuple[str | int, ...]) -> None:
    wire = _wire(sample)
    _set(wire, path, _CANONICAL)
    event = decode(json.dumps(wire).encode())
    assert json.loads(encode(event)) == wire


def test_what_the_services_make_ids_with_writes_canonical_ids() -> None:
    pattern = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    made = [uuid.uuid4(), derived_id("x", 1), order_id_for(uuid.uuid4())]
    assert all(pattern.fullmatch(str(u)) for u in made)
    for event in samples().values():
        assert decode(encode(event)) == event


def test_every_id_in_the_contract_takes_the_canonical_form_only() -> None:
    """A guard for fields added later: every UUID of the schema carries the
    canonical pattern, which only the canonical-id type adds."""
    ids = [n for n in _walk(_schema()) if n.get("format") == "uuid"]
    assert len(ids) >= 8
    for node in ids:
        assert node.get("pattern") == CANONICAL_ID_PATTERN, node


# Not the one with a trailing newline: Python's ``re`` (which the jsonschema
# package uses) lets ``$`` match before it, unlike the ECMA-262 regexes JSON
# Schema specifies; the decoder matches the whole text.
@pytest.mark.parametrize("text", [t for t in NON_CANONICAL if not t.endswith("\n")])
def test_the_published_schema_refuses_a_non_canonical_id(text: str) -> None:
    schema = json.loads((PROTO / "events.schema.json").read_text(encoding="utf-8"))
    validator = Draft202012Validator(schema)
    wire = _wire("submit")
    assert validator.is_valid(wire)
    wire["payload"]["order_id"] = text
    assert not validator.is_valid(wire)


# -------------------------------------------------------------- integers

INT_FIELDS = [
    ("trade", ("payload", "exchange")),
    ("trade", ("payload", "conditions", 0)),
    ("trade", ("payload", "tape")),
    ("trade", ("payload", "sequence")),
    ("quote", ("payload", "bid_exchange")),
    ("quote", ("payload", "ask_exchange")),
    ("quote", ("payload", "condition")),
    ("quote", ("payload", "indicators", 0)),
    ("quote", ("payload", "tape")),
    ("quote", ("payload", "sequence")),
    ("bar", ("payload", "trades")),
    ("status", ("payload", "gap_filled_bars")),
    ("dead", ("payload", "raw_size")),
    ("dead", ("payload", "stream_seq")),
    ("positions", ("payload", "broker_positions")),
]


@pytest.mark.parametrize(("sample", "path"), INT_FIELDS)
@pytest.mark.parametrize("value", [INT64_MAX + 1, 2**64, 10**30, INT64_MIN - 1])
def test_an_integer_beyond_64_bits_is_refused_naming_the_field(
    sample: str, path: tuple[str | int, ...], value: int
) -> None:
    error = _refused(sample, path, value)
    assert ".".join(str(p) for p in path) in error.detail


@pytest.mark.parametrize(("sample", "path"), INT_FIELDS)
def test_the_largest_64_bit_integer_decodes_and_the_store_keeps_it_exactly(
    sample: str, path: tuple[str | int, ...]
) -> None:
    wire = _wire(sample)
    _set(wire, path, INT64_MAX)
    data = json.dumps(wire).encode()
    event = decode(data)
    assert json.loads(encode(event)) == wire
    converted = to_row(StreamMessage(1, "md.trade.AAPL", data), max_bytes=1 << 20)
    assert converted.error is None
    assert json.loads(converted.row.payload) == wire["payload"]


DECIMAL_FIELDS = [
    ("fill", ("payload", "quantity")),
    ("fill", ("payload", "price")),
    ("fill", ("payload", "commission")),
    ("trade", ("payload", "size")),
]


@pytest.mark.parametrize(("sample", "path"), DECIMAL_FIELDS)
def test_a_huge_decimal_as_a_string_or_a_64_bit_integer_is_stored_exactly(
    sample: str, path: tuple[str, ...]
) -> None:
    values: list[str | int] = ["12345678901234567890123456.123456789012", INT64_MAX]
    for value in values:
        wire = _wire(sample)
        _set(wire, path, value)
        if sample == "fill" and path[-1] == "quantity":
            _set(wire, ("payload", "cumulative_quantity"), value)
        data = json.dumps(wire).encode()
        event = decode(data)
        stored = to_row(StreamMessage(1, "broker.fill.acct-a", data), max_bytes=1 << 20).row
        assert Decimal(str(json.loads(stored.payload)[path[-1]])) == Decimal(value)
        assert Decimal(json.loads(encode(event))["payload"][path[-1]]) == Decimal(value)


# ------------------------------------------------------- the published schema


def test_every_integer_in_the_contract_fits_64_bits() -> None:
    """A guard for fields added later: every integer of the schema (the one
    ``proto/`` is made of) has bounds within a signed 64-bit integer."""
    integers = [n for n in _walk(_schema()) if n.get("type") == "integer"]
    assert integers
    for node in integers:
        assert node.get("minimum", INT64_MIN - 1) >= INT64_MIN, node
        assert node.get("maximum", INT64_MAX + 1) <= INT64_MAX, node
