"""Fuzzing the decoder: whatever arrives, ``decode`` returns an event or raises
``DecodeError`` -- never anything else, since a crash there stops a consumer.
And what hypothesis builds as valid events round-trips exactly."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from functools import cache
from typing import Any, get_args

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import (  # type: ignore[import-untyped]  # no types-jsonschema in dev deps
    Draft202012Validator,
    FormatChecker,
)
from pydantic import BaseModel

from libs.contract import proto
from libs.contract.codec import DecodeError, decode, encode
from libs.contract.envelope import NANOS_MAX, Event
from libs.contract.events import (
    EVENT_TYPES,
    BarClosed,
    BarPayload,
    DeadLetterPayload,
    FeedName,
    FillPayload,
    FillReceived,
    MarkPayload,
    MarkUpdated,
    MessageDeadLettered,
    OrderIntentCreated,
    OrderIntentPayload,
    OrderType,
    QuotePayload,
    QuoteUpdated,
    ReasonCode,
    RiskDecisionMade,
    RiskDecisionPayload,
    Side,
    SubmitOrder,
    SubmitOrderPayload,
    TimeInForce,
    TradePayload,
    TradePrinted,
)

# Deterministic and fast: a fixed number of examples, no wall-clock deadline
# (a slow CI machine must not turn into a flaky test), no example database.
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ROUND_TRIP = settings(FUZZ, max_examples=150)


def decodes_or_refuses(data: bytes, max_bytes: int | None = None) -> Event | None:
    """The one property: an event, or DecodeError with a known reason.

    Any other exception propagates and fails the test.
    """
    refusal: DecodeError | None = None
    event: Event | None = None
    try:
        event = decode(data) if max_bytes is None else decode(data, max_bytes=max_bytes)
    except DecodeError as e:
        refusal = e
    if refusal is not None:
        assert refusal.reason in {"oversized", "malformed_json", "invalid_event"}
        assert refusal.detail
        return None
    assert isinstance(event, Event)
    assert type(event) is EVENT_TYPES[event.type]
    # Whatever decoded must encode again, canonically.
    data_again = encode(event)
    assert decode(data_again) == event
    return event


# ------------------------------------------------------------- valid events

tokens = st.from_regex(r"[A-Za-z0-9_:\-]{1,64}", fullmatch=True)
#: An ``O:`` symbol must name an option contract (libs.contract.options).
symbols = tokens.filter(lambda s: not s.startswith("O:")) | st.just("O:SPY241220P00720000")
nanos = st.integers(min_value=0, max_value=NANOS_MAX)
small_ints = st.none() | st.integers(min_value=-(2**31), max_value=2**31)
texts = st.text(max_size=40)
feeds = st.sampled_from(get_args(FeedName))
sides = st.sampled_from(get_args(Side))
order_types = st.sampled_from(get_args(OrderType))
time_in_forces = st.sampled_from(get_args(TimeInForce))


def decimals(low: Decimal | None) -> st.SearchStrategy[Decimal]:
    """Finite decimals >= ``low``, of every shape str(Decimal) takes (1E+3, 0E-7, 5.00)."""
    # The contract allows 38 digits, 12 after the point.
    plain = st.decimals(
        min_value=Decimal("-1e12") if low is None else low,
        max_value=Decimal("1e12"),
        allow_nan=False,
        allow_infinity=False,
        places=12,
    )
    scaled = st.builds(
        lambda digits, exponent: Decimal(digits).scaleb(exponent),
        st.integers(min_value=-(10**12) if low is None else 0, max_value=10**12),
        st.integers(min_value=-12, max_value=6),
    )
    return plain | scaled


prices = decimals(Decimal(0)).filter(lambda d: d > 0)
quantities = prices
non_negative = decimals(Decimal(0))
money = decimals(None)


def envelope(cls: type[Event], payload: st.SearchStrategy[Any]) -> st.SearchStrategy[Event]:
    return st.builds(
        cls,
        id=st.uuids(),
        ts_event=nanos,
        ts_init=nanos,
        source=st.text(min_size=1, max_size=128),
        correlation_id=st.uuids(),
        causation_id=st.none() | st.uuids(),
        payload=payload,
    )


trade_payloads = st.builds(
    TradePayload,
    symbol=symbols,
    price=prices,
    size=quantities,
    exchange=small_ints,
    trade_id=st.none() | texts,
    conditions=st.lists(st.integers(0, 255), max_size=4).map(tuple),
    tape=small_ints,
    sequence=small_ints,
    feed=feeds,
    backfilled=st.booleans(),
)
quote_payloads = st.builds(
    QuotePayload,
    symbol=symbols,
    bid_price=money,
    bid_size=non_negative,
    ask_price=money,
    ask_size=non_negative,
    indicators=st.lists(st.integers(0, 999), max_size=3).map(tuple),
    feed=feeds,
)


@st.composite
def mark_payloads(draw: st.DrawFn) -> MarkPayload:
    """A mark at its quote's bid, ask or anywhere the contract allows between."""
    bid, ask = sorted((draw(prices), draw(prices)))
    return MarkPayload(
        symbol=draw(symbols),
        price=draw(st.sampled_from([bid, ask])),
        bid_price=bid,
        ask_price=ask,
        feed=draw(feeds),
    )


bar_payloads = st.builds(
    BarPayload,
    symbol=symbols,
    interval=st.sampled_from(["1s", "1m"]),
    open=prices,
    high=prices,
    low=prices,
    close=prices,
    volume=non_negative,
    vwap=st.none() | money,
    trades=st.none() | st.integers(0, 10**9),
    start_ns=nanos,
    end_ns=nanos,
    feed=feeds,
)
intent_payloads = st.builds(
    OrderIntentPayload,
    strategy=tokens,
    account=tokens,
    symbol=symbols,
    side=sides,
    quantity=quantities,
    order_type=order_types,
    limit_price=st.none() | prices,
    stop_price=st.none() | prices,
    time_in_force=time_in_forces,
)
decision_payloads = st.builds(
    RiskDecisionPayload,
    intent_id=st.uuids(),
    strategy=tokens,
    account=tokens,
    symbol=symbols,
    decision=st.sampled_from(["accepted", "denied"]),
    reason=st.sampled_from(ReasonCode),
    detail=texts,
    order_id=st.none() | st.uuids(),
)
submit_payloads = st.builds(
    SubmitOrderPayload,
    order_id=st.uuids(),
    intent_id=st.none() | st.uuids(),
    strategy=tokens,
    account=tokens,
    symbol=symbols,
    side=sides,
    quantity=quantities,
    order_type=order_types,
    limit_price=st.none() | prices,
    time_in_force=time_in_forces,
)
fill_payloads = st.builds(
    FillPayload,
    order_id=st.uuids(),
    account=tokens,
    broker_order_id=texts,
    fill_id=texts,
    symbol=symbols,
    side=sides,
    quantity=quantities,
    price=prices,
    cumulative_quantity=quantities,
    leaves_quantity=non_negative,
    status=st.sampled_from(["partial", "complete"]),
    commission=money,
)
dead_letter_payloads = st.builds(
    DeadLetterPayload,
    service=tokens,
    original_subject=texts,
    error=texts,
    raw_b64=st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
    raw_size=st.integers(0, 10**6),
    headers=st.dictionaries(texts, texts, max_size=3),
    stream_seq=st.none() | st.integers(1, 2**63 - 1),
)

PAYLOADS: dict[type[Event], st.SearchStrategy[Any]] = {
    TradePrinted: trade_payloads,
    QuoteUpdated: quote_payloads,
    BarClosed: bar_payloads,
    MarkUpdated: mark_payloads(),
    OrderIntentCreated: intent_payloads,
    RiskDecisionMade: decision_payloads,
    SubmitOrder: submit_payloads,
    FillReceived: fill_payloads,
    MessageDeadLettered: dead_letter_payloads,
}
valid_events: st.SearchStrategy[Event] = st.one_of(
    [envelope(cls, payloads) for cls, payloads in PAYLOADS.items()]
)


def decimal_fields(cls: type[Event]) -> list[str]:
    """Payload fields typed Decimal (or Decimal | None)."""
    payload_cls = cls.model_fields["payload"].annotation
    assert isinstance(payload_cls, type)
    assert issubclass(payload_cls, BaseModel)
    return [
        name
        for name, field in payload_cls.model_fields.items()
        if field.annotation is Decimal or Decimal in get_args(field.annotation)
    ]


events_with_money: st.SearchStrategy[Event] = st.one_of(
    [envelope(cls, payloads) for cls, payloads in PAYLOADS.items() if decimal_fields(cls)]
)


@cache
def union_validator() -> Draft202012Validator:
    return Draft202012Validator(
        json.loads(proto.render()["events.schema.json"]), format_checker=FormatChecker()
    )


@ROUND_TRIP
@given(valid_events)
def test_valid_events_round_trip(event: Event) -> None:
    data = encode(event)

    decoded = decode(data)

    assert decoded == event
    assert type(decoded) is type(event)
    assert encode(decoded) == data


@ROUND_TRIP
@given(valid_events)
def test_the_published_schema_accepts_every_valid_event(event: Event) -> None:
    wire = json.loads(encode(event))
    errors = [e.message for e in union_validator().iter_errors(wire)]
    assert not errors, errors


# ----------------------------------------------------------------- garbage


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_bytes(data: bytes) -> None:
    decodes_or_refuses(data)


@FUZZ
@given(st.binary(max_size=256), st.integers(min_value=0, max_value=256))
def test_arbitrary_bytes_under_a_size_limit(data: bytes, max_bytes: int) -> None:
    decodes_or_refuses(data, max_bytes=max_bytes)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # NaN and Infinity too: json.dumps writes them as literals
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@FUZZ
@given(json_values)
def test_arbitrary_json_values(value: Any) -> None:
    decodes_or_refuses(json.dumps(value).encode())


envelope_keys = sorted(Event.model_fields)


@FUZZ
@given(
    st.sampled_from(sorted(EVENT_TYPES)),
    st.dictionaries(st.sampled_from(envelope_keys), json_values, max_size=len(envelope_keys)),
    st.dictionaries(st.text(max_size=20), json_values, max_size=6),
)
def test_event_shaped_json(type_name: str, fields: dict[str, Any], payload: Any) -> None:
    # Right discriminator, arbitrary contents: reaches every payload validator.
    document = {**fields, "type": type_name, "payload": payload}
    decodes_or_refuses(json.dumps(document).encode())


# --------------------------------------------------------------- mutations


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position inside a JSON document, as a key/index path."""
    found: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        for key, child in value.items():
            found.append((*prefix, key))
            found.extend(paths(child, (*prefix, key)))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found.append((*prefix, index))
            found.extend(paths(child, (*prefix, index)))
    return found


def parent_of(document: Any, path: tuple[Any, ...]) -> Any:
    node = document
    for step in path[:-1]:
        node = node[step]
    return node


def other_type(value: Any) -> st.SearchStrategy[Any]:
    """A JSON value of a different kind than ``value``."""
    kinds: list[st.SearchStrategy[Any]] = [
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**66), max_value=2**66),
        st.floats(),
        st.text(max_size=10),
        st.just([]),
        st.just({}),
        st.lists(st.integers(), max_size=2),
    ]
    return st.one_of(kinds).filter(lambda new: type(new) is not type(value))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    event = draw(valid_events)
    data = encode(event)
    document = json.loads(data)
    kind = draw(
        st.sampled_from(["drop", "retype", "add", "truncate", "flip", "splice", "duplicate"])
    )
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if kind == "flip":
        at = draw(st.integers(0, len(data) - 1))
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    if kind == "splice":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]

    path = draw(st.sampled_from(paths(document)))
    parent = parent_of(document, path)
    if kind == "drop":
        del parent[path[-1]]
    elif kind == "retype":
        parent[path[-1]] = draw(other_type(parent[path[-1]]))
    elif kind == "add":
        target = parent if isinstance(parent, dict) else document
        target[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
    else:  # duplicate a key with another value: JSON allows it, the last one wins
        text = json.dumps(document)
        key = json.dumps(draw(st.sampled_from(envelope_keys)))
        return (text[:-1] + f", {key}: {json.dumps(draw(json_values))}}}").encode()
    return json.dumps(document).encode()


@FUZZ
@given(mutated())
def test_mutated_events(data: bytes) -> None:
    decodes_or_refuses(data)


@FUZZ
@given(
    events_with_money,
    st.data(),
    st.sampled_from(
        [float("nan"), float("inf"), -float("inf"), 1.5, 1e300, "NaN", "-Infinity", "sNaN"]
    ),
)
def test_non_finite_and_float_money_is_refused(event: Event, data: st.DataObject, bad: Any) -> None:
    field = data.draw(st.sampled_from(decimal_fields(type(event))))
    document = json.loads(encode(event))
    document["payload"][field] = bad

    assert decodes_or_refuses(json.dumps(document).encode()) is None, f"{field}={bad!r} accepted"


def test_money_fields_are_found() -> None:
    assert decimal_fields(FillReceived) == [
        "quantity",
        "price",
        "cumulative_quantity",
        "leaves_quantity",
        "commission",
    ]
    assert decimal_fields(RiskDecisionMade) == []
