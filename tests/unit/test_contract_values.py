"""The event contract's values: exact decimals, and strictness (extra fields,
frozen events, decode errors, sizes and timestamps)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from libs.contract.codec import DecodeError, decode, encode
from libs.contract.events import (
    BreakerPayload,
    FeedStatusChanged,
    FeedStatusPayload,
    FillPayload,
    OperatorActionPayload,
    QuotePayload,
    QuoteUpdated,
)
from tests.unit.contract_samples import SAMPLES, StepClock, as_bytes, build, fill_event

# ------------------------------------------------------------------- decimals


def test_decimals_stay_exact() -> None:
    payload = QuotePayload(
        symbol="X",
        bid_price=Decimal("0.1"),
        bid_size=Decimal("1"),
        ask_price=Decimal("0.2"),
        ask_size=Decimal("12345678901234567890.123456789"),
        feed="demo",
    )
    data = encode(QuoteUpdated.create(payload, source="test", clock=StepClock()))

    decoded = decode(data).payload

    assert isinstance(decoded, QuotePayload)
    assert decoded.bid_price + decoded.ask_price == Decimal("0.3")
    assert decoded.ask_size == Decimal("12345678901234567890.123456789")
    raw = json.loads(data)["payload"]
    assert raw["bid_price"] == "0.1", "decimals travel as strings, never JSON numbers"
    assert raw["ask_size"] == "12345678901234567890.123456789"


@pytest.mark.parametrize("text", ["187.2300", "0.0001", "1E+3", "1.5E-7", "-0.0040"])
def test_decimal_text_is_preserved(text: str) -> None:
    decoded = decode(as_bytes(fill_event(commission=text))).payload
    assert isinstance(decoded, FillPayload)
    assert str(decoded.commission) == text


def test_default_commission_is_a_decimal_string() -> None:
    raw = fill_event()
    del raw["payload"]["commission"]

    decoded = decode(as_bytes(raw))

    assert isinstance(decoded.payload, FillPayload)
    assert decoded.payload.commission == Decimal(0)
    assert json.loads(encode(decoded))["payload"]["commission"] == "0"


@pytest.mark.parametrize(
    "price",
    [
        "NaN",
        "-NaN",
        "sNaN",
        "Infinity",
        "-Infinity",
        "inf",
        187.19,  # a JSON number with a fraction: a float, already rounded
        1e300,
        "not a number",
        "",
        True,
        None,
        "-1",  # a price is positive
        "0",
    ],
    ids=repr,
)
def test_money_refuses_floats_and_non_finite(price: object) -> None:
    with pytest.raises(DecodeError) as info:
        decode(as_bytes(fill_event(price=price)))
    assert info.value.reason == "invalid_event"
    assert "price" in info.value.detail


def test_money_refuses_nan_literal_in_json() -> None:
    data = as_bytes(fill_event()).replace(b'"price": "187.19"', b'"price": NaN')
    assert b"NaN" in data
    with pytest.raises(DecodeError, match="price"):
        decode(data)


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), 187.19])
def test_models_refuse_non_finite_and_float(value: object) -> None:
    with pytest.raises(ValidationError):
        BreakerPayload(account="a", breaker="daily_loss", limit=value)


def test_json_integers_are_exact_decimals() -> None:
    decoded = decode(as_bytes(fill_event(quantity=12345678901234567890123)))
    assert isinstance(decoded.payload, FillPayload)
    assert decoded.payload.quantity == Decimal("12345678901234567890123")


# ---------------------------------------------------------------- strictness


@pytest.mark.parametrize(
    ("where", "mutate"),
    [
        ("envelope", lambda raw: raw.__setitem__("extra", 1)),
        ("payload", lambda raw: raw["payload"].__setitem__("venue", "XNAS")),
    ],
)
def test_extra_fields_are_refused(where: str, mutate: Any) -> None:
    raw = fill_event()
    mutate(raw)
    with pytest.raises(DecodeError) as info:
        decode(as_bytes(raw))
    assert info.value.reason == "invalid_event", where
    assert "Extra inputs are not permitted" in info.value.detail


def test_models_refuse_extra_fields() -> None:
    with pytest.raises(ValidationError):
        OperatorActionPayload(operator="jo", reason="x", shout=True)  # type: ignore[call-arg]


def test_events_are_frozen() -> None:
    event = build(SAMPLES[0])
    with pytest.raises(ValidationError):
        event.source = "someone else"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "malformed_json"),
        (b"{", "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"[]", "invalid_event"),
        (b"{}", "invalid_event"),
        (b'{"type": "Nope"}', "invalid_event"),
        (b'{"type": "Event"}', "invalid_event"),
        (b'{"type": "FillReceived"}', "invalid_event"),
    ],
)
def test_decode_error_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(data)
    assert info.value.reason == reason


def test_feed_status_open_gaps_round_trip_and_an_older_status_without_them_decodes() -> None:
    payload = FeedStatusPayload(
        feed="polygon",
        status="gap_filled",
        market="stocks",
        open_gaps={"1m": {"MSFT": 1_700_000_100_000_000_000}, "1s": {}},
    )
    event = FeedStatusChanged.create(payload, source="marketdata/md", clock=StepClock())
    decoded = decode(encode(event))
    assert isinstance(decoded, FeedStatusChanged)
    assert decoded.payload.open_gaps == {"1m": {"MSFT": 1_700_000_100_000_000_000}, "1s": {}}
    # Written before the field existed: no open_gaps key at all.
    older = json.loads(encode(event))
    del older["payload"]["open_gaps"]
    decoded = decode(json.dumps(older).encode())
    assert isinstance(decoded, FeedStatusChanged)
    assert decoded.payload.open_gaps is None


def test_oversized_is_refused_before_parsing() -> None:
    data = encode(build(SAMPLES[0]))
    assert decode(data, max_bytes=len(data)) is not None
    with pytest.raises(DecodeError) as info:
        decode(data, max_bytes=len(data) - 1)
    assert info.value.reason == "oversized"


@pytest.mark.parametrize(("field", "value"), [("ts_event", -1), ("ts_init", 2**63)])
def test_timestamps_fit_a_bigint(field: str, value: int) -> None:
    raw = fill_event()
    raw[field] = value
    with pytest.raises(DecodeError, match=field):
        decode(as_bytes(raw))
