"""The event contract, table by table: every event type round-trips, subjects,
exact decimals, strictness, causal chaining and dead letters."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from decimal import Decimal
from itertools import count, pairwise
from typing import Any, NamedTuple

import pytest
from pydantic import ValidationError

from libs.contract.codec import (
    DEFAULT_MAX_BYTES,
    HEADERS_CUT,
    DecodeError,
    dead_letter,
    decode,
    derived_id,
    encode,
)
from libs.contract.envelope import Event, Frozen
from libs.contract.events import (
    EVENT_TYPES,
    BarClosed,
    BarPayload,
    BreakerPayload,
    BreakerTripped,
    BrokerConnectionChanged,
    BrokerConnectionPayload,
    BrokerPositionsChecked,
    CancelOrder,
    CancelOrderPayload,
    ClosingOrder,
    ClosingOrdersPayload,
    ClosingOrdersPlaced,
    DeadLetterPayload,
    FeedStatusChanged,
    FeedStatusPayload,
    FillPayload,
    FillReceived,
    FlattenAccount,
    FlattenAccountPayload,
    KillSwitchEngaged,
    KillSwitchReleased,
    MarkPayload,
    MarkUpdated,
    MessageDeadLettered,
    OperatorActionPayload,
    OrderAccepted,
    OrderAcceptedPayload,
    OrderCanceled,
    OrderCanceledPayload,
    OrderIntentCreated,
    OrderIntentPayload,
    OrderRejected,
    OrderRejectedPayload,
    PositionDifference,
    PositionsCheckedPayload,
    QuotePayload,
    QuoteUpdated,
    ReasonCode,
    ResumePayload,
    RiskDecisionMade,
    RiskDecisionPayload,
    SignalGenerated,
    SignalPayload,
    StrategyFaulted,
    StrategyFaultPayload,
    SubmitOrder,
    SubmitOrderPayload,
    TradePayload,
    TradePrinted,
    TradingResumeRequested,
    TradingStateChanged,
    TradingStatePayload,
)
from libs.contract.options import CASH_SETTLED_ROOTS, parse_option
from libs.contract.subjects import (
    DOMAINS,
    SubjectError,
    is_recorded,
    replay_subject,
    subject_for,
    subject_map,
    token,
)

T0 = 1_700_000_000_000_000_000
ORDER_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")
INTENT_ID = uuid.UUID("00000000-0000-4000-8000-000000000002")


class StepClock:
    """A clock that ticks one microsecond per reading: deterministic, monotonic."""

    def __init__(self, start: int = T0) -> None:
        self._ticks = count(start, 1_000)

    def now_ns(self) -> int:
        return next(self._ticks)


def sequential_ids() -> Any:
    """An id factory yielding 1, 2, 3... as UUIDs, for deterministic events."""
    numbers = count(1_000)
    return lambda: uuid.UUID(int=next(numbers))


class Sample(NamedTuple):
    cls: type[Event]
    payload: Frozen
    subject: str


#: One realistic payload per event type, with the subject it must travel on.
SAMPLES: tuple[Sample, ...] = (
    Sample(
        TradePrinted,
        TradePayload(
            symbol="AAPL",
            price=Decimal("187.2300"),
            size=Decimal("100"),
            exchange=4,
            trade_id="52983525029461",
            conditions=(12, 37),
            tape=3,
            sequence=1063,
            feed="polygon",
        ),
        "md.trade.AAPL",
    ),
    Sample(
        QuoteUpdated,
        QuotePayload(
            symbol="MSFT",
            bid_price=Decimal("411.10"),
            bid_size=Decimal("2"),
            ask_price=Decimal("411.12"),
            ask_size=Decimal("0"),
            bid_exchange=11,
            ask_exchange=12,
            indicators=(604,),
            feed="synthetic",
        ),
        "md.quote.MSFT",
    ),
    Sample(
        BarClosed,
        BarPayload(
            symbol="SPY",
            interval="1m",
            open=Decimal("501.01"),
            high=Decimal("501.50"),
            low=Decimal("500.90"),
            close=Decimal("501.20"),
            volume=Decimal("123456"),
            vwap=Decimal("501.2237"),
            trades=812,
            start_ns=T0,
            end_ns=T0 + 60_000_000_000,
            feed="replay",
            backfilled=True,
        ),
        "md.bar.1m.SPY",
    ),
    Sample(
        MarkUpdated,
        MarkPayload(
            symbol="O:SPY241220P00720000",
            price=Decimal("9.76"),
            bid_price=Decimal("9.71"),
            ask_price=Decimal("9.81"),
            feed="polygon",
        ),
        "md.mark.O:SPY241220P00720000",
    ),
    Sample(
        FeedStatusChanged,
        FeedStatusPayload(feed="polygon", status="gap_filled", gap_filled_bars=3),
        "md.status.polygon",
    ),
    Sample(
        SignalGenerated,
        SignalPayload(
            strategy="mean_rev",
            symbol="AAPL",
            name="zscore",
            direction="long",
            strength=Decimal("-2.31"),
            reason="z < -2",
        ),
        "strategy.signal.mean_rev",
    ),
    Sample(
        OrderIntentCreated,
        OrderIntentPayload(
            strategy="mean_rev",
            account="acct-a",
            symbol="AAPL",
            side="buy",
            quantity=Decimal("10"),
            order_type="limit",
            limit_price=Decimal("187.20"),
            time_in_force="ioc",
        ),
        "strategy.intent.mean_rev",
    ),
    Sample(
        StrategyFaulted,
        StrategyFaultPayload(strategy="breakout", error="ZeroDivisionError", action="restarted"),
        "strategy.fault.breakout",
    ),
    Sample(
        RiskDecisionMade,
        RiskDecisionPayload(
            intent_id=INTENT_ID,
            strategy="mean_rev",
            account="acct-a",
            symbol="AAPL",
            decision="denied",
            reason=ReasonCode.MAX_ORDER_NOTIONAL,
            detail="1872.00 > 1000",
        ),
        "risk.decision.mean_rev.denied",
    ),
    Sample(
        TradingStateChanged,
        TradingStatePayload(scope="global", state="halted", previous="active", reason="kill"),
        "risk.state.global",
    ),
    Sample(
        BreakerTripped,
        BreakerPayload(
            account="acct-b",
            breaker="daily_loss",
            limit=Decimal("-500"),
            value=Decimal("-512.35"),
        ),
        "risk.breaker.acct-b",
    ),
    Sample(
        SubmitOrder,
        SubmitOrderPayload(
            order_id=ORDER_ID,
            intent_id=INTENT_ID,
            strategy="mean_rev",
            account="acct-a",
            symbol="AAPL",
            side="sell",
            quantity=Decimal("0.5"),
            order_type="stop_limit",
            limit_price=Decimal("180"),
            stop_price=Decimal("181.5"),
            time_in_force="gtc",
        ),
        "orders.cmd.acct-a",
    ),
    Sample(
        CancelOrder,
        CancelOrderPayload(order_id=ORDER_ID, account="acct-a", reason="stale"),
        "orders.cmd.acct-a",
    ),
    Sample(
        FlattenAccount,
        FlattenAccountPayload(account="acct-b", reason="daily_loss"),
        "orders.cmd.acct-b",
    ),
    Sample(
        OrderAccepted,
        OrderAcceptedPayload(
            order_id=ORDER_ID, account="acct-a", broker_order_id="b-77", symbol="AAPL"
        ),
        "broker.ack.acct-a",
    ),
    Sample(
        OrderRejected,
        OrderRejectedPayload(
            order_id=ORDER_ID, account="acct-a", reason="insufficient buying power", code="40310000"
        ),
        "broker.reject.acct-a",
    ),
    Sample(
        FillReceived,
        FillPayload(
            order_id=ORDER_ID,
            account="acct-a",
            broker_order_id="b-77",
            fill_id="f-1",
            symbol="AAPL",
            side="buy",
            quantity=Decimal("4"),
            price=Decimal("187.19"),
            cumulative_quantity=Decimal("4"),
            leaves_quantity=Decimal("6"),
            status="partial",
            commission=Decimal("-0.0040"),
        ),
        "broker.fill.acct-a",
    ),
    Sample(
        OrderCanceled,
        OrderCanceledPayload(order_id=ORDER_ID, account="acct-a", reason="expired"),
        "broker.cancel.acct-a",
    ),
    Sample(
        ClosingOrdersPlaced,
        ClosingOrdersPayload(
            account="acct-a",
            orders=(
                ClosingOrder(
                    order_id=ORDER_ID,
                    symbol="AAPL",
                    side="sell",
                    quantity=Decimal("100"),
                    leaves_quantity=Decimal("60"),
                    strategy="sma-aapl",
                ),
            ),
        ),
        "broker.close.acct-a",
    ),
    Sample(
        BrokerConnectionChanged,
        BrokerConnectionPayload(account="acct-a", broker="alpaca", state="reconnecting"),
        "broker.conn.acct-a",
    ),
    Sample(
        BrokerPositionsChecked,
        PositionsCheckedPayload(
            account="acct-a",
            broker="alpaca",
            broker_positions=2,
            differences=(
                PositionDifference(
                    symbol="O:SPY241220P00720000",
                    broker_quantity=Decimal("-2"),
                    recorded_quantity=Decimal("0"),
                ),
            ),
        ),
        "broker.positions.acct-a",
    ),
    Sample(
        KillSwitchEngaged,
        OperatorActionPayload(operator="jo", reason="flash crash"),
        "control.killswitch",
    ),
    Sample(
        KillSwitchReleased,
        OperatorActionPayload(operator="jo", reason="calm again"),
        "control.killswitch",
    ),
    Sample(
        TradingResumeRequested,
        ResumePayload(operator="jo", reason="reviewed", scope="acct-b"),
        "control.resume",
    ),
    Sample(
        MessageDeadLettered,
        DeadLetterPayload(
            service="risk-gate",
            original_subject="strategy.intent.mean_rev",
            error="invalid_event: payload.quantity: Input should be greater than 0",
            raw_b64=base64.b64encode(b'{"type": "OrderIntentCreated"}').decode(),
            raw_size=30,
            headers={"Nats-Msg-Id": "x"},
            stream_seq=17,
        ),
        "deadletter.risk-gate",
    ),
)


def sample_id(sample: Sample) -> str:
    return sample.cls.__name__


def build(sample: Sample, *, cause: Event | None = None) -> Event:
    return sample.cls.create(
        sample.payload, source="test", clock=StepClock(), cause=cause, ids=sequential_ids()
    )


def fill_event(**changes: Any) -> dict[str, Any]:
    """A valid FillReceived as a JSON object, with payload fields changed."""
    sample = next(s for s in SAMPLES if s.cls is FillReceived)
    raw: dict[str, Any] = json.loads(encode(build(sample)))
    raw["payload"].update(changes)
    return raw


def as_bytes(raw: dict[str, Any]) -> bytes:
    return json.dumps(raw).encode()


# ------------------------------------------------------------------- coverage


def test_samples_cover_every_event_type() -> None:
    names = [s.cls.__name__ for s in SAMPLES]
    missing = sorted(EVENT_TYPES.keys() - set(names))
    assert not missing, f"add a sample to SAMPLES for: {missing}"
    assert len(names) == len(set(names)), "one sample per event type"
    assert set(names) == EVENT_TYPES.keys()


@pytest.mark.parametrize(("name", "cls"), sorted(EVENT_TYPES.items()))
def test_event_class_shape(name: str, cls: type[Event]) -> None:
    assert cls.__name__ == name
    assert cls.model_fields["type"].default == name
    assert (cls.__doc__ or "").strip(), f"{name} needs a docstring (it documents the subject)"
    assert cls.subject_template.split(".", 1)[0] in DOMAINS
    assert cls.model_config.get("frozen") is True
    assert cls.model_config.get("extra") == "forbid"


# ----------------------------------------------------------------- round trip


@pytest.mark.parametrize("sample", SAMPLES, ids=sample_id)
def test_round_trip(sample: Sample) -> None:
    event = build(sample)
    data = encode(event)

    decoded = decode(data)

    assert type(decoded) is sample.cls
    assert decoded == event
    assert decoded.payload == sample.payload
    assert encode(decoded) == data, "encoding is canonical: decode then encode is identity"


@pytest.mark.parametrize("sample", SAMPLES, ids=sample_id)
def test_subject_for(sample: Sample) -> None:
    event = build(sample)

    subject = subject_for(event)

    assert subject == sample.subject
    assert is_recorded(subject)
    assert not is_recorded(replay_subject(subject))
    assert subject_map()[sample.cls.__name__]["subject"] == sample.cls.subject_template


def test_create_stamps_clock_and_ids() -> None:
    sample = SAMPLES[0]
    event = sample.cls.create(
        sample.payload,
        source="marketdata",
        clock=StepClock(T0),
        ts_event=T0 - 5,
        ids=lambda: ORDER_ID,
    )
    assert event.id == ORDER_ID
    assert event.ts_event == T0 - 5
    assert event.ts_init == T0
    assert event.source == "marketdata"


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


# ------------------------------------------------------------------- subjects


@pytest.mark.parametrize("value", ["AAPL", "BRK-B", "acct_a", "O:SPY240119C00450000"])
def test_token_accepts_plain_names(value: str) -> None:
    assert token(value) == value


@pytest.mark.parametrize(
    "value", ["BRK.B", "*", ">", "md.>", "A*", "", "a b", "AAPL\n", "ÄPFEL", "a\tb"]
)
def test_token_refuses_dots_wildcards_and_spaces(value: str) -> None:
    with pytest.raises(SubjectError):
        token(value)


def test_subject_for_refuses_a_wildcard_symbol_that_slipped_past_validation() -> None:
    # model_construct skips validation, as a buggy producer might: the subject
    # builder is the last line of defence against publishing on md.trade.*.
    payload = TradePayload.model_construct(
        symbol="*", price=Decimal(1), size=Decimal(1), feed="demo"
    )
    event = TradePrinted.create(payload, source="test", clock=StepClock())
    with pytest.raises(SubjectError):
        subject_for(event)


def test_models_refuse_wildcard_and_blank_symbols() -> None:
    for symbol in ("BRK B", "*", ">", ""):
        with pytest.raises(ValidationError):
            OrderAcceptedPayload(order_id=ORDER_ID, account="a", broker_order_id="b", symbol=symbol)


@pytest.mark.parametrize(
    ("symbol", "problem"),
    [
        ("O:SPY241340P00720000", "its expiry 241340 is not a date (YYMMDD)"),
        ("O:SPY240230P00720000", "its expiry 240230 is not a date (YYMMDD)"),
        ("O:SPY241220P0072000", "the strike x 1000 in 8 digits"),  # 7 digits
        ("O:SPY241220P007200000", "the strike x 1000 in 8 digits"),  # 9 digits
        ("O:SPY24122000720000", "C or P"),  # no C or P
        ("O:SPY241220X00720000", "C or P"),
        ("O:SPY", "e.g. O:SPY241220P00720000"),
        ("O:", "e.g. O:SPY241220P00720000"),
        ("O:TOOLONG241220P00720000", "a root of 1 to 6"),
        ("O:SPY241220P00000000", "its strike is 0"),
    ],
)
def test_an_option_symbol_that_does_not_parse_is_refused_saying_why(
    symbol: str, problem: str
) -> None:
    # An O: symbol was taken as long as its characters were allowed: an intent
    # for a contract that cannot exist (month 13, a strike of 7 digits) was
    # valued as an option, and the gate could not tell its expiry.
    with pytest.raises(ValidationError) as e:
        OrderIntentPayload(
            strategy="s",
            account="a",
            symbol=symbol,
            side="buy",
            quantity=Decimal(1),
            asset_class="option",
        )
    assert f"{symbol} is not an option symbol" in str(e.value)
    assert problem in str(e.value)


def test_an_option_symbol_names_its_contract() -> None:
    put = parse_option("O:SPY241220P00720000")
    assert (put.root, put.expiry, put.right, put.strike) == (
        "SPY",
        dt.date(2024, 12, 20),
        "put",
        Decimal(720),
    )
    # Expiry day's close, 16:00 New York (EST: 21:00 UTC).
    close = dt.datetime(2024, 12, 20, 21, tzinfo=dt.UTC)
    assert put.expires_at_ns == int(close.timestamp()) * 10**9
    # Expired from the close on, not a nanosecond before.
    assert not put.expired_by(put.expires_at_ns - 1)
    assert put.expired_by(put.expires_at_ns)
    assert put.expired_text == "expired at the close of 2024-12-20 (16:00 New York)"
    adjusted = parse_option("O:AAPL1261218C00100500")  # an adjusted contract's root ends in 1
    assert (adjusted.root, adjusted.right, adjusted.strike) == ("AAPL1", "call", Decimal("100.5"))
    for symbol in ("OXY", "O", "BRK.B", "O:SPY241220P00720000"):  # equities starting with O too
        assert TradePayload(symbol=symbol, price=Decimal(1), size=Decimal(1), feed="demo")


@pytest.mark.parametrize(
    ("symbol", "why"),
    [
        *(
            (f"O:{root}261218C00100000", f"{root} options are cash-settled")
            for root in sorted(CASH_SETTLED_ROOTS)
        ),
        ("O:SPY1261218C00100000", "an adjusted contract (its root SPY1 ends in a digit)"),
        ("O:AAPL2261218P00100000", "an adjusted contract (its root AAPL2 ends in a digit)"),
        # Options on ETFs and shares deliver 100 of them: supported.
        ("O:SPY261218C00100000", None),
        ("O:SPXL261218C00100000", None),
        ("O:VIXY261218C00100000", None),
        ("O:AAPL261218P00100000", None),
    ],
)
def test_a_contract_tradebus_cannot_settle_says_why(symbol: str, why: str | None) -> None:
    unsupported = parse_option(symbol).unsupported
    if why is None:
        assert unsupported is None
    else:
        assert unsupported is not None
        assert unsupported.startswith(why), unsupported
        assert "tradebus would book 100 shares of" in unsupported


def test_subject_map_lists_every_event_type() -> None:
    mapping = subject_map()
    assert mapping.keys() == EVENT_TYPES.keys()
    for name, entry in mapping.items():
        assert entry["domain"] in DOMAINS, name
        assert entry["doc"], name


# ---------------------------------------------------------- causal chaining


def test_correlation_and_causation_chain() -> None:
    by_cls = {s.cls: s for s in SAMPLES}
    clock = StepClock()
    ids = sequential_ids()

    chain: list[Event] = []
    for cls in (SignalGenerated, OrderIntentCreated, RiskDecisionMade, SubmitOrder, FillReceived):
        cause = chain[-1] if chain else None
        chain.append(
            cls.create(by_cls[cls].payload, source="test", clock=clock, cause=cause, ids=ids)
        )
    signal, *_, fill = chain

    assert signal.correlation_id == signal.id
    assert signal.causation_id is None
    for parent, child in pairwise(chain):
        assert child.correlation_id == signal.id
        assert child.causation_id == parent.id
        assert child.ts_init > parent.ts_init
    assert len({e.id for e in chain}) == len(chain)

    # Walk the fill back to its signal with ids alone, after a trip over the wire.
    store = {e.id: decode(encode(e)) for e in chain}
    walked = [store[fill.id]]
    while (parent_id := walked[-1].causation_id) is not None:
        walked.append(store[parent_id])
    assert [type(e) for e in walked] == [
        FillReceived,
        SubmitOrder,
        RiskDecisionMade,
        OrderIntentCreated,
        SignalGenerated,
    ]
    assert walked[-1].id == fill.correlation_id


# ---------------------------------------------------------------- dead letter


RAW = bytes(range(256)) + b'{"not": "an event"}\x00\xff'


def make_dead_letter(data: bytes = RAW, stream_seq: int | None = 42) -> MessageDeadLettered:
    return dead_letter(
        service="risk-gate",
        subject="strategy.intent.mean_rev",
        data=data,
        error=DecodeError("malformed_json", "expected value at line 1 column 1"),
        clock=StepClock(),
        source="risk-gate-1",
        headers={"Nats-Msg-Id": "abc"},
        stream_seq=stream_seq,
    )


def test_dead_letter_keeps_raw_bytes_exactly() -> None:
    record = make_dead_letter()

    decoded = decode(encode(record))

    assert isinstance(decoded, MessageDeadLettered)
    assert base64.b64decode(decoded.payload.raw_b64, validate=True) == RAW
    assert decoded.payload.raw_size == len(RAW)
    assert decoded.payload.error == "malformed_json: expected value at line 1 column 1"
    assert decoded.payload.headers == {"Nats-Msg-Id": "abc"}
    assert decoded.payload.stream_seq == 42
    assert subject_for(decoded) == "deadletter.risk-gate"


def test_dead_letter_id_is_stable_per_stream_seq() -> None:
    first, again = make_dead_letter(stream_seq=42), make_dead_letter(stream_seq=42)
    other = make_dead_letter(stream_seq=43)

    assert first.id == again.id
    assert first.id == derived_id("deadletter", "risk-gate", "strategy.intent.mean_rev", 42)
    assert other.id != first.id
    assert first.correlation_id == first.id


def test_dead_letter_id_without_stream_seq_follows_the_whole_message() -> None:
    prefix = b"x" * 5000
    first = make_dead_letter(prefix + b"1", stream_seq=None)
    again = make_dead_letter(prefix + b"1", stream_seq=None)
    other = make_dead_letter(prefix + b"2", stream_seq=None)

    assert first.id == again.id
    assert other.id != first.id, "messages differing only after 4 KiB must not collide"


def test_a_dead_letter_always_fits_and_says_what_it_cut() -> None:
    """A message at JetStream's limits (1 MiB of data, 64 KiB of headers of
    control characters, which JSON writes six bytes each) that failed with
    a broker's 1 MiB error page: its dead letter decodes under the default
    limit and keeps what identifies the original. The error and headers were
    copied whole: 3 MiB, over NATS's max payload (MaxPayloadError, never
    retried: the consumer stopped on that message for ever)."""
    headers = {"Nats-Msg-Id": "abc", "Big": "\x01" * 40_000}
    headers |= {f"H-{i:03d}": "x" * 100 for i in range(200)}
    record = dead_letter(
        service="broker-gateway",
        subject="orders.submit.acct-a",
        data=b"{" * (1024 * 1024),
        error="HTTPError: " + "<html>" * 200_000,
        clock=StepClock(),
        source="broker-gateway-1",
        headers=headers,
        stream_seq=7,
    )

    wire = encode(record)
    assert len(wire) <= DEFAULT_MAX_BYTES, len(wire)
    decoded = decode(wire)
    assert isinstance(decoded, MessageDeadLettered)
    kept = decoded.payload
    assert (kept.original_subject, kept.stream_seq) == ("orders.submit.acct-a", 7)
    assert kept.headers["Nats-Msg-Id"] == "abc"
    assert kept.headers[HEADERS_CUT].startswith("kept "), kept.headers[HEADERS_CUT]
    assert "of 202 headers" in kept.headers[HEADERS_CUT]
    assert kept.error.startswith("HTTPError: <html>")
    assert kept.error.endswith("(error cut: 1200011 characters)")


def test_dotted_share_class_symbol_is_carried_and_escaped_in_its_subject() -> None:
    from decimal import Decimal

    from libs.contract.codec import decode, encode
    from libs.contract.envelope import WallClock
    from libs.contract.events import TradePayload, TradePrinted
    from libs.contract.subjects import subject_for, symbol_token

    event = TradePrinted.create(
        TradePayload(symbol="BRK.B", price=Decimal("412.5"), size=Decimal(3), feed="polygon"),
        source="test",
        clock=WallClock(),
    )
    assert decode(encode(event)) == event
    assert subject_for(event) == "md.trade.BRK~B"
    assert symbol_token("O:SPY241220P00720000") == "O:SPY241220P00720000"
    with pytest.raises(SubjectError):
        symbol_token("BAD SYMBOL")


def test_an_order_command_is_the_intents_order_whole() -> None:
    """SubmitOrderPayload.for_intent (the gate's command, the test helpers',
    the demo's) carries every field of the order asked for; the test helper
    used to drop type, prices and time in force: a limit became a market order."""
    from libs.strategy.testing import accept

    intent = OrderIntentCreated.create(
        OrderIntentPayload(
            strategy="opt",
            account="acct",
            symbol="O:SPY241220P00720000",
            side="sell",
            quantity=Decimal(3),
            order_type="stop_limit",
            limit_price=Decimal("4.9"),
            stop_price=Decimal("5.1"),
            time_in_force="gtc",
            asset_class="option",
        ),
        source="test",
        clock=StepClock(),
    )
    order_id = uuid.uuid4()
    command = SubmitOrderPayload.for_intent(intent, order_id)
    asked = intent.payload.model_dump()
    assert command.model_dump() == {**asked, "order_id": order_id, "intent_id": intent.id}
    _, helper_command = accept(intent)
    assert helper_command.payload.model_dump() == {
        **asked,
        "order_id": helper_command.payload.order_id,
        "intent_id": intent.id,
    }


@pytest.mark.parametrize(
    ("bid", "price", "ask", "ok"),
    [
        ("9.71", "9.76", "9.81", True),
        ("9.71", "9.71", "9.71", True),  # a locked quote: bid = ask = mid
        ("9.81", "9.76", "9.71", False),  # crossed
        ("9.71", "9.90", "9.81", False),  # above the ask
        ("9.71", "9.70", "9.81", False),  # below the bid
        ("0", "0.05", "0.10", False),  # one-sided: no bid
    ],
)
def test_a_mark_lies_within_the_quote_it_came_from(
    bid: str, price: str, ask: str, ok: bool
) -> None:
    """A mark is never made from a crossed or one-sided quote: the contract
    refuses one outside its bid and ask, or with a side at zero."""
    raw = json.loads(encode(build(next(s for s in SAMPLES if s.cls is MarkUpdated))))
    raw["payload"].update(bid_price=bid, price=price, ask_price=ask)
    if ok:
        mark = decode(as_bytes(raw))
        assert isinstance(mark, MarkUpdated)
        assert (mark.payload.basis, mark.payload.price) == ("quote_mid", Decimal(price))
        return
    with pytest.raises(DecodeError) as info:
        decode(as_bytes(raw))
    assert info.value.reason == "invalid_event"
