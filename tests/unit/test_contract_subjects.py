"""The event contract's subjects: tokens, symbols (options and dotted share
classes) and the subject map."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from pydantic import ValidationError

from libs.contract.codec import decode, encode
from libs.contract.events import (
    EVENT_TYPES,
    OrderAcceptedPayload,
    OrderIntentPayload,
    TradePayload,
    TradePrinted,
)
from libs.contract.options import CASH_SETTLED_ROOTS, parse_option
from libs.contract.subjects import DOMAINS, SubjectError, subject_for, subject_map, token
from tests.unit.contract_samples import ORDER_ID, StepClock

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


def test_dotted_share_class_symbol_is_carried_and_escaped_in_its_subject() -> None:
    from decimal import Decimal

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
