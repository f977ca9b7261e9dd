"""Polygon wire format -> our events: fields, Decimals, ns times, ids, rejections."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from libs.contract.codec import decode, derived_id, encode
from libs.contract.envelope import Money, Nanos, NonNegativeQuantity, Price, Quantity, Symbol
from libs.contract.events import BarClosed, QuoteUpdated, TradePrinted
from libs.contract.subjects import subject_for
from services.marketdata.adapters.polygon.parse import (
    FrameParser,
    bar_id,
    rest_bar_event,
    statuses_text,
    trade_id,
    trading_day,
)
from services.marketdata.adapters.polygon.schemas import (
    RestAgg,
    RestAggsResponse,
    RestError,
    WireMillis,
    WireMoney,
    WirePrice,
    WireQuantity,
    WireSize,
    WireSymbol,
)
from services.marketdata.domain.cache import new_york_day

FIXTURES = Path(__file__).parent.parent / "fixtures" / "polygon"
NOW = 1_700_000_000_123_456_789


class FixedClock:
    def now_ns(self) -> int:
        return NOW


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def parser() -> FrameParser:
    return FrameParser(source="marketdata/test", clock=FixedClock())


def test_stock_frame_becomes_trades_quotes_bars_in_frame_order() -> None:
    parsed = parser().parse(fixture("ws_stocks_mixed.json"))

    assert [type(e) for e in parsed.events] == [
        TradePrinted,
        TradePrinted,
        QuoteUpdated,
        BarClosed,
        BarClosed,
    ]
    assert [s.message for s in parsed.statuses] == ["subscribed to: A.MSFT"]
    assert parsed.counts == {"trades": 2, "quotes": 1, "second_bars": 1, "minute_bars": 1}
    assert parsed.rejected == []

    trade = parsed.events[0]
    assert isinstance(trade, TradePrinted)
    p = trade.payload
    assert (p.symbol, p.price, p.size) == ("MSFT", Decimal("114.125"), Decimal("100"))
    assert (p.exchange, p.trade_id, p.tape, p.sequence) == (4, "52983525034825", 3, 3681328)
    assert p.conditions == (14, 41)
    assert p.feed == "polygon"
    assert trade.ts_event == 1536036818784 * 1_000_000
    assert trade.ts_init == NOW
    # 1536036818784 ms is 2018-09-04 00:53 in New York (04:53 UTC).
    assert trade.id == derived_id("polygon", "T", "MSFT", "2018-09-04", 3681328)
    assert trade.correlation_id == trade.id
    assert subject_for(trade) == "md.trade.MSFT"
    # A trade without conditions leaves out ``c``.
    assert parsed.events[1].payload.conditions == ()

    quote = parsed.events[2]
    assert isinstance(quote, QuoteUpdated)
    q = quote.payload
    assert (q.bid_price, q.ask_price) == (Decimal("114.125"), Decimal("114.128"))
    assert (q.bid_size, q.ask_size) == (Decimal(100), Decimal(160))
    assert (q.bid_exchange, q.ask_exchange, q.condition, q.indicators) == (4, 7, 0, (604,))
    assert quote.id == derived_id("polygon", "Q", "MSFT", "2018-09-04", 50385480)

    second, minute = parsed.events[3], parsed.events[4]
    assert isinstance(second, BarClosed)
    assert isinstance(minute, BarClosed)
    assert second.payload.interval == "1s"
    assert subject_for(second) == "md.bar.1s.MSFT"
    m = minute.payload
    assert m.interval == "1m"
    assert (m.open, m.high, m.low, m.close) == (
        Decimal("114.06"),
        Decimal("114.13"),
        Decimal("114.05"),
        Decimal("114.125"),
    )
    assert (m.volume, m.vwap) == (Decimal(41853), Decimal("114.0877"))
    assert (m.start_ns, m.end_ns) == (1536036760000 * 10**6, 1536036820000 * 10**6)
    assert minute.ts_event == m.end_ns
    assert m.backfilled is False
    assert minute.id == bar_id("MSFT", "1m", 1536036760000)
    assert parsed.newest_ns == 1536036820000 * 10**6


def test_option_records_without_optional_fields() -> None:
    parsed = parser().parse(fixture("ws_options.json"))

    trade, quote = parsed.events
    assert trade.payload.symbol == "O:AMC210827C00032000"
    assert (trade.payload.trade_id, trade.payload.tape) == (None, None)
    assert trade.payload.conditions == (233,)
    assert subject_for(trade) == "md.trade.O:AMC210827C00032000"
    assert quote.payload.condition is None
    assert quote.payload.indicators == ()


def test_same_record_twice_gives_the_same_id() -> None:
    a = parser().parse(fixture("ws_stocks_mixed.json")).events
    b = parser().parse(fixture("ws_stocks_mixed.json")).events
    assert [e.id for e in a] == [e.id for e in b]
    assert len({e.id for e in a}) == len(a)


def test_the_same_sequence_number_on_another_day_is_another_print() -> None:
    # Polygon starts its sequence numbers again every trading day: a trade
    # and a quote of Tuesday with Monday's sequence number are new events.
    monday, tuesday = 1709564400000, 1709650800000  # 10:00 New York, 4 and 5 March 2024
    frame = [
        {"ev": "T", "sym": "AAPL", "x": 4, "p": 175.1, "s": 100, "t": monday, "q": 1234},
        {"ev": "T", "sym": "AAPL", "x": 11, "p": 170.02, "s": 300, "t": tuesday, "q": 1234},
        {"ev": "Q", "sym": "AAPL", "bx": 4, "bp": 175.0, "bs": 2, "ax": 7, "ap": 175.02}
        | {"as": 3, "t": monday, "q": 777},
        {"ev": "Q", "sym": "AAPL", "bx": 11, "bp": 170.0, "bs": 5, "ax": 12, "ap": 170.05}
        | {"as": 1, "t": tuesday, "q": 777},
    ]
    t1, t2, q1, q2 = parser().parse(json.dumps(frame).encode()).events
    assert t1.id != t2.id
    assert q1.id != q2.id
    assert t2.id == derived_id("polygon", "T", "AAPL", "2024-03-05", 1234)
    assert q1.id == derived_id("polygon", "Q", "AAPL", "2024-03-04", 777)
    # The day is New York's: 23:59 and 00:00 local time are two days, the
    # same UTC date or not (20:00 New York is already the next day in UTC).
    midnight = 1709614800000  # 2024-03-05 00:00 New York (05:00 UTC)
    assert trade_id("AAPL", 1, None, midnight - 1) == derived_id(
        "polygon", "T", "AAPL", "2024-03-04", 1
    )
    assert trade_id("AAPL", 1, None, midnight) == derived_id(
        "polygon", "T", "AAPL", "2024-03-05", 1
    )


@settings(max_examples=200, deadline=None)
@given(t=st.integers(min_value=0, max_value=(2**63 - 1) // 1_000_000))
def test_the_trading_day_is_the_new_york_date_of_the_sip_time(t: int) -> None:
    # Asked in any order: the bounds kept from the day before must not leak.
    for ms in (t, max(0, t - 86_399_999), t, t + 1):
        assert trading_day(ms) == new_york_day(ms).isoformat()


def test_live_minute_bar_and_rest_bar_of_the_same_minute_share_their_id() -> None:
    live = parser().parse(fixture("ws_stocks_mixed.json")).events[4]
    rest = RestAgg.model_validate(
        {"o": 114.06, "h": 114.13, "l": 114.05, "c": 114.125, "v": 41853, "t": 1536036760000}
    )
    backfilled = rest_bar_event("MSFT", rest, source="marketdata/other", ts_init=1)

    assert backfilled.id == live.id
    assert backfilled.payload.backfilled is True
    assert backfilled.payload.end_ns == live.payload.end_ns
    assert backfilled.ts_event == live.ts_event
    assert subject_for(backfilled) == "md.bar.1m.MSFT"


def test_events_satisfy_the_contract_when_decoded_strictly() -> None:
    # Events are built without a second validation pass; the strict decoder
    # (what the recorder runs) must accept every one of them unchanged.
    for name in ("ws_stocks_mixed.json", "ws_options.json"):
        for event in parser().parse(fixture(name)).events:
            assert decode(encode(event)) == event


def test_malformed_json_is_rejected_whole() -> None:
    parsed = parser().parse(b'[{"ev":"T","sym":"MSFT",')
    assert parsed.events == []
    [bad] = parsed.rejected
    assert bad.reason == "malformed_json"
    assert bad.raw == b'[{"ev":"T","sym":"MSFT",'


def test_a_frame_that_is_not_an_array_is_rejected() -> None:
    [bad] = parser().parse(b'{"ev":"status","status":"connected"}').rejected
    assert bad.reason == "not_an_array"


def test_one_invalid_event_is_rejected_and_the_rest_of_the_frame_goes_through() -> None:
    frame = json.dumps(
        [
            {"ev": "T", "sym": "MSFT", "x": 4, "p": 10.5, "s": 1, "t": 1, "q": 1},
            {"ev": "T", "sym": "MSFT", "x": 4, "s": 1, "t": 2, "q": 2},  # no price
            {"ev": "LULD", "T": "MSFT"},  # not a record we know
            {"ev": "T", "sym": "MSFT", "x": 4, "p": 0, "s": 1, "t": 3, "q": 3},  # price 0
            {"ev": "T", "sym": "BRK B", "x": 4, "p": 1, "s": 1, "t": 4, "q": 4},  # not a symbol
            {"ev": "T", "sym": "MSFT", "x": 4, "p": 10.6, "s": 1, "t": 5, "q": 5},
        ]
    ).encode()
    parsed = parser().parse(frame)

    assert [e.payload.sequence for e in parsed.events] == [1, 5]
    assert [r.reason for r in parsed.rejected] == ["invalid_event"] * 4
    assert json.loads(parsed.rejected[0].raw) == {
        "ev": "T",
        "sym": "MSFT",
        "x": 4,
        "s": 1,
        "t": 2,
        "q": 2,
    }
    assert "p" in parsed.rejected[0].detail
    assert json.loads(parsed.rejected[3].raw)["sym"] == "BRK B"


def test_a_share_class_ticker_is_published_not_dead_lettered() -> None:
    frame = b'[{"ev":"T","sym":"BRK.B","x":4,"p":412.5,"s":10,"t":1709564400000,"q":9}]'
    parsed = parser().parse(frame)
    assert parsed.rejected == []
    [trade] = parsed.events
    assert trade.payload.symbol == "BRK.B"
    assert subject_for(trade) == "md.trade.BRK~B"


def test_rejected_frame_becomes_a_dead_letter_with_its_bytes() -> None:
    [bad] = parser().parse(b"not json at all").rejected
    letter = bad.dead_letter(market="stocks", source="marketdata/test", clock=FixedClock())

    assert subject_for(letter) == "deadletter.marketdata"
    assert letter.payload.original_subject == "polygon.stocks"
    assert base64.b64decode(letter.payload.raw_b64) == b"not json at all"
    assert letter.payload.error.startswith("malformed_json")
    assert decode(encode(letter)) == letter


def test_unknown_fields_are_ignored() -> None:
    frame = b'[{"ev":"T","sym":"MSFT","p":1.5,"s":3,"t":9,"q":1,"ds":"3.0","new":true}]'
    [event] = parser().parse(frame).events
    assert event.payload.price == Decimal("1.5")


def test_status_frames_carry_no_events() -> None:
    for name in ("ws_connected.json", "ws_auth_success.json", "ws_subscribed.json"):
        parsed = parser().parse(fixture(name))
        assert parsed.events == []
        assert parsed.statuses
    assert statuses_text(parser().parse(fixture("ws_auth_failed.json")).statuses) == (
        "auth_failed: authentication failed"
    )
    [kick] = parser().parse(fixture("ws_max_connections.json")).statuses
    assert kick.status == "max_connections"


def test_rest_pages_and_error_bodies() -> None:
    page = RestAggsResponse.model_validate_json(fixture("rest_aggs_page1.json"))
    assert page.next_url is not None
    assert "cursor=" in page.next_url
    assert [r.t for r in page.results] == [1673274600000, 1673274660000]
    assert page.results[0].vw == Decimal("131.6292")
    assert RestAggsResponse.model_validate_json(fixture("rest_aggs_empty.json")).results == ()
    error = RestError.model_validate_json(fixture("rest_error_unknown_key.json"))
    assert error.text == "Unknown API Key"
    refused = RestError.model_validate_json(fixture("rest_not_authorized.json"))
    assert refused.status == "NOT_AUTHORIZED"
    assert refused.text.startswith("You are not entitled")


@pytest.mark.parametrize("text", ["0.0001", "190.16", "1234.5678", "0.1", "99999.99"])
def test_prices_keep_the_digits_polygon_wrote(text: str) -> None:
    frame = f'[{{"ev":"T","sym":"X","p":{text},"s":1,"t":1,"q":1}}]'.encode()
    [event] = parser().parse(frame).events
    assert event.payload.price == Decimal(text)
    assert str(event.payload.price) == text


prices = st.decimals(
    min_value=Decimal("0.0001"), max_value=Decimal("99999"), places=4, allow_nan=False
)


@settings(max_examples=60, deadline=None)
@given(
    price=prices,
    size=st.integers(min_value=1, max_value=10**7),
    seq=st.integers(min_value=0, max_value=2**53),
    t=st.integers(min_value=0, max_value=4_000_000_000_000),
    conditions=st.lists(st.integers(min_value=0, max_value=255), max_size=4),
)
def test_any_valid_trade_round_trips_through_the_contract(
    price: Decimal, size: int, seq: int, t: int, conditions: list[int]
) -> None:
    record = {"ev": "T", "sym": "AAPL", "x": 4, "p": float(price), "s": size, "t": t, "q": seq}
    if conditions:
        record["c"] = conditions
    [event] = parser().parse(json.dumps([record]).encode()).events
    assert event.payload.price == price
    assert event.ts_event == t * 1_000_000
    assert event.payload.conditions == tuple(conditions)
    assert decode(encode(event)) == event


@settings(max_examples=50, deadline=None)
@given(
    symbol=st.from_regex(r"[A-Z:]{1,12}", fullmatch=True),
    n=st.integers(min_value=0, max_value=2**63),
    venue_id=st.text(max_size=20),
)
def test_fast_ids_are_exactly_the_contract_derived_ids(symbol: str, n: int, venue_id: str) -> None:
    assert trade_id(symbol, n, None, 0) == derived_id("polygon", "T", symbol, "1969-12-31", n)
    assert trade_id(symbol, None, venue_id, n) == derived_id(
        "polygon", "T", symbol, "i", venue_id, n
    )
    assert bar_id(symbol, "1m", n) == derived_id("polygon", "bar", symbol, "1m", n)


# The parser builds events without validating them a second time; these tests
# hold it to the contract: same fields, same values, same constraints.


def test_built_events_hold_every_contract_field_and_validate_to_themselves() -> None:
    events = [
        *parser().parse(fixture("ws_stocks_mixed.json")).events,
        *parser().parse(fixture("ws_options.json")).events,
    ]
    assert {type(e) for e in events} == {TradePrinted, QuoteUpdated, BarClosed}
    for event in events:
        cls = type(event)
        assert list(event.__dict__) == list(cls.model_fields)
        assert list(event.payload.__dict__) == list(type(event.payload).model_fields)
        assert cls.model_validate(event.model_dump()) == event
        assert event.model_dump_json() == cls.model_validate(event.model_dump()).model_dump_json()


PROBES = ["0", "-1", "1", "190.16", "0.000000000001", "1E-13", "1" * 38, "1" * 39, "NaN", "Inf"]


@pytest.mark.parametrize(
    ("wire", "contract"),
    [
        (WirePrice, Price),
        (WireQuantity, Quantity),
        (WireSize, NonNegativeQuantity),
        (WireMoney, Money),
    ],
)
def test_wire_numbers_carry_the_contract_constraints(wire: Any, contract: Any) -> None:
    ours: TypeAdapter[Any] = TypeAdapter(wire)
    theirs: TypeAdapter[Any] = TypeAdapter(contract)
    for probe in PROBES:
        assert _accepts(ours, Decimal(probe)) == _accepts(theirs, Decimal(probe)), probe


def test_wire_symbols_and_times_carry_the_contract_constraints() -> None:
    for probe in ["AAPL", "O:SPY241220P00720000", "BRK.B", "", "A" * 64, "A" * 65, "a b", "X-1_y"]:
        assert _accepts(TypeAdapter(WireSymbol), probe) == _accepts(TypeAdapter(Symbol), probe)
    limit = (2**63 - 1) // 1_000_000
    for ms in [0, -1, limit, limit + 1]:
        ns_ok = _accepts(TypeAdapter(Nanos), ms * 1_000_000)
        assert _accepts(TypeAdapter(WireMillis), ms) == ns_ok


def _accepts(adapter: TypeAdapter[Any], value: object) -> bool:
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True
