"""`tradebus audit` says what each event of a chain says, in one line."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest

from libs.contract.events import (
    FillPayload,
    MarkPayload,
    OrderAcceptedPayload,
    OrderIntentPayload,
    OrderRejectedPayload,
    ReasonCode,
    RiskDecisionPayload,
    SignalPayload,
    SubmitOrderPayload,
)
from services.ops.gist import GISTS, gist

ORDER = uuid.UUID(int=7)


def stored(model: Any) -> dict[str, Any]:
    """A payload as the store gives it back (JSON)."""
    return dict(model.model_dump(mode="json"))


@pytest.mark.parametrize(
    ("type_", "payload", "says"),
    [
        (
            "SignalGenerated",
            SignalPayload(
                strategy="sma-aapl", symbol="AAPL", name="cross_up", direction="long", reason="5>20"
            ),
            "sma-aapl: cross_up long AAPL (5>20)",
        ),
        (
            "OrderIntentCreated",
            OrderIntentPayload(
                strategy="sma-aapl",
                account="paper",
                symbol="AAPL",
                side="buy",
                quantity=Decimal(100),
                order_type="limit",
                limit_price=Decimal("190.5"),
            ),
            "sma-aapl: buy 100 AAPL limit 190.5 on paper",
        ),
        (
            "RiskDecisionMade",
            RiskDecisionPayload(
                intent_id=ORDER,
                strategy="sma-aapl",
                account="paper",
                symbol="AAPL",
                decision="denied",
                reason=ReasonCode.MAX_STRATEGY_POSITION,
                detail="AAPL 10000 > 300",
            ),
            "denied: max_strategy_position (AAPL 10000 > 300)",
        ),
        (
            "RiskDecisionMade",
            RiskDecisionPayload(
                intent_id=ORDER,
                strategy="sma-aapl",
                account="paper",
                symbol="AAPL",
                decision="accepted",
                reason=ReasonCode.ACCEPTED,
                order_id=ORDER,
            ),
            "accepted",
        ),
        (
            "SubmitOrder",
            SubmitOrderPayload(
                order_id=ORDER,
                strategy="orb-spy",
                account="paper",
                symbol="SPY",
                side="sell",
                quantity=Decimal(50),
                order_type="stop",
                stop_price=Decimal("500.25"),
                time_in_force="gtc",
            ),
            "sell 50 SPY stop 500.25 gtc",
        ),
        (
            "OrderAccepted",
            OrderAcceptedPayload(
                order_id=ORDER, account="paper", broker_order_id="b-1", symbol="AAPL"
            ),
            "broker order b-1",
        ),
        (
            "FillReceived",
            FillPayload(
                order_id=ORDER,
                account="paper",
                broker_order_id="b-1",
                fill_id="f-1",
                symbol="AAPL",
                side="buy",
                quantity=Decimal(40),
                price=Decimal("190.78"),
                cumulative_quantity=Decimal(40),
                leaves_quantity=Decimal(60),
                status="partial",
            ),
            "buy 40 AAPL @ 190.78, partial (60 left)",
        ),
        (
            "FillReceived",
            FillPayload(
                order_id=ORDER,
                account="paper",
                broker_order_id="b-2",
                fill_id="f-2",
                symbol="AAPL",
                side="sell",
                quantity=Decimal(100),
                price=Decimal("188.1"),
                cumulative_quantity=Decimal(100),
                leaves_quantity=Decimal(0),
                status="complete",
                strategy="sma-aapl",
            ),
            "sell 100 AAPL @ 188.1, complete, booked to sma-aapl",
        ),
        (
            "OrderRejected",
            OrderRejectedPayload(
                order_id=ORDER, account="paper", reason="insufficient\nbuying power", code="403"
            ),
            "insufficient buying power [403]",
        ),
    ],
)
def test_each_order_path_event_reads_as_one_line(type_: str, payload: Any, says: str) -> None:
    assert gist(type_, stored(payload)) == says


def test_a_mark_reads_as_its_price_and_the_quote_it_came_from() -> None:
    payload = MarkPayload(
        symbol="O:SPY241220P00720000",
        price=Decimal("2.525"),
        bid_price=Decimal("2.50"),
        ask_price=Decimal("2.55"),
        feed="polygon",
    )
    said = gist("MarkUpdated", stored(payload))
    assert said == "mark O:SPY241220P00720000 2.525 (bid 2.50 / ask 2.55)"
    assert gist("MarkUpdated", {"symbol": "O:X", "price": "1"}) == "mark O:X 1 (bid ? / ask ?)"


def test_a_positions_check_reads_as_agreement_or_each_difference() -> None:
    from libs.contract.events import PositionDifference, PositionsCheckedPayload

    agree = PositionsCheckedPayload(account="paper", broker="paper", broker_positions=2)
    assert gist("BrokerPositionsChecked", stored(agree)) == (
        "paper: positions agree with the broker's"
    )
    differ = PositionsCheckedPayload(
        account="paper",
        broker="paper",
        broker_positions=2,
        differences=(
            PositionDifference(
                symbol="AAPL", broker_quantity=Decimal(6), recorded_quantity=Decimal(1)
            ),
            PositionDifference(
                symbol="TSLA", broker_quantity=Decimal(0), recorded_quantity=Decimal(-2)
            ),
        ),
    )
    assert gist("BrokerPositionsChecked", stored(differ)) == (
        "paper: positions differ: AAPL 6 at the broker, 1 recorded; "
        "TSLA 0 at the broker, -2 recorded"
    )


def test_a_flatten_s_closing_orders_read_as_each_order_and_what_still_works() -> None:
    from libs.contract.events import ClosingOrder, ClosingOrdersPayload

    placed = ClosingOrdersPayload(
        account="paper",
        orders=(
            ClosingOrder(
                order_id=ORDER,
                symbol="AAPL",
                side="sell",
                quantity=Decimal(100),
                leaves_quantity=Decimal(60),
                strategy="sma-aapl",
            ),
            ClosingOrder(
                order_id=uuid.UUID(int=8),
                symbol="MSFT",
                side="buy",
                quantity=Decimal(5),
                leaves_quantity=Decimal(5),
            ),
        ),
    )
    assert gist("ClosingOrdersPlaced", stored(placed)) == (
        "paper: sell 100 AAPL (60 working, sma-aapl); buy 5 MSFT"
    )
    assert gist("ClosingOrdersPlaced", {"account": "paper"}) == "paper: no closing orders"


def test_every_gist_names_a_type_of_the_contract_or_a_recorder_row() -> None:
    from libs.contract.events import EVENT_TYPES
    from libs.store.layout import DUPLICATE, MISSING, UNDECODABLE

    assert set(GISTS) <= {*EVENT_TYPES, DUPLICATE, UNDECODABLE, MISSING}
    assert {DUPLICATE, UNDECODABLE, MISSING} <= set(GISTS)


def test_the_recorder_s_rows_say_what_they_stand_for() -> None:
    original = "d07a85f5-22ee-45bb-9bb2-9ead4f28af19"
    assert gist("DuplicateSuppressed", {"duplicate_of": original, "first_seq": 812}) == (
        f"duplicate of {original} at seq 812"
    )
    undecodable = {"reason": "invalid_json", "error": "not JSON:\nb'{'", "size": 1}
    assert gist("Undecodable", undecodable) == "invalid_json: not JSON: b'{'"
    assert gist("MessageMissing", {"reason": "not in stream"}) == "not in stream"


def test_what_has_no_gist_gets_none_and_a_missing_field_does_not_fail() -> None:
    assert gist("TradePrinted", {"symbol": "AAPL"}) == ""
    assert gist("FillReceived", "not an object") == ""
    assert gist("FillReceived", {"symbol": "AAPL"}) == "? ? AAPL @ ?, ?"
