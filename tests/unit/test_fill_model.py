"""The paper broker's fill model (services/paper_broker/domain/fill_model.py), table-tested."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.paper_broker.domain.fill_model import (
    FillModelConfig,
    MarketUpdate,
    WorkingOrder,
    on_market,
    on_submit,
)

D = Decimal
PLAIN = FillModelConfig()
SLIP = FillModelConfig(slippage_bps=D(10))  # 0.1 %


def trade(price: str) -> MarketUpdate:
    return MarketUpdate.trade("AAPL", D(price))


def bar(o: str, h: str, low: str, c: str) -> MarketUpdate:
    return MarketUpdate.bar("AAPL", D(o), D(h), D(low), D(c))


@pytest.mark.parametrize(
    ("side", "last", "expected"),
    [
        ("buy", "100", "100.1000"),
        ("sell", "100", "99.9000"),
        # Rounded against the trader: a buy up, a sell down (4 places).
        ("buy", "33.33333", "33.3667"),
        ("sell", "33.33333", "33.2999"),
    ],
)
def test_market_order_fills_at_last_price_plus_slippage(
    side: str, last: str, expected: str
) -> None:
    order = WorkingOrder(side=side, order_type="market", remaining=D(10))  # type: ignore[arg-type]
    match = on_submit(SLIP, order, D(last))
    assert match.quantity == D(10)
    assert match.price == D(expected)


def test_market_order_without_a_price_waits_then_fills_on_the_first_update() -> None:
    order = WorkingOrder(side="buy", order_type="market", remaining=D(5))
    assert not on_submit(PLAIN, order, None).fills
    match = on_market(PLAIN, order, bar("10", "11", "9", "10.5"))
    assert (match.quantity, match.price) == (D(5), D("10.5"))


@pytest.mark.parametrize(
    ("side", "limit", "last", "price"),
    [
        ("buy", "101", "100", "100.1000"),  # marketable: slipped, but within the limit
        ("buy", "100.05", "100", "100.05"),  # marketable: slippage capped at the limit
        ("buy", "99", "100", None),  # not marketable: rests
        ("sell", "99", "100", "99.9000"),
        ("sell", "99.95", "100", "99.95"),
        ("sell", "101", "100", None),
    ],
)
def test_limit_order_at_submission(side: str, limit: str, last: str, price: str | None) -> None:
    order = WorkingOrder(side=side, order_type="limit", remaining=D(3), limit_price=D(limit))  # type: ignore[arg-type]
    match = on_submit(SLIP, order, D(last))
    assert match.price == (D(price) if price else None)
    assert match.quantity == (D(3) if price else D(0))


@pytest.mark.parametrize(
    ("side", "update", "touch", "price"),
    [
        ("buy", trade("100.01"), True, None),
        ("buy", trade("100"), True, "100"),  # touched: fills at the limit
        ("buy", trade("100"), False, None),  # must trade through
        ("buy", trade("99.99"), False, "99.99"),
        ("buy", trade("99"), True, "99"),  # traded through: at the trade's price, as a bar's open
        ("buy", bar("101", "102", "99.5", "101"), True, "100"),  # the low reached it
        ("buy", bar("99", "99.5", "98", "99"), True, "99"),  # opened through it: at the open
        ("buy", bar("101", "102", "100.5", "101"), True, None),
        ("sell", trade("100"), True, "100"),
        ("sell", trade("99.99"), True, None),
        ("sell", trade("100.5"), True, "100.5"),
        ("sell", bar("99", "100.2", "98", "99"), True, "100"),
        ("sell", bar("101", "102", "100.5", "101"), True, "101"),
    ],
)
def test_resting_limit_order_fills_when_the_market_crosses(
    side: str, update: MarketUpdate, touch: bool, price: str | None
) -> None:
    config = FillModelConfig(slippage_bps=D(10), limit_fill_on_touch=touch)
    order = WorkingOrder(side=side, order_type="limit", remaining=D(7), limit_price=D(100))  # type: ignore[arg-type]
    match = on_market(config, order, update)
    assert match.price == (D(price) if price else None)
    assert match.fills == (price is not None)


def test_large_orders_fill_in_partial_fills_one_per_update() -> None:
    config = FillModelConfig(max_fill_quantity=D(100))
    remaining = D(250)
    fills = []
    first = on_submit(config, WorkingOrder("buy", "market", remaining), D(50))
    fills.append(first.quantity)
    remaining -= first.quantity
    while remaining > 0:
        m = on_market(config, WorkingOrder("buy", "market", remaining), trade("50.5"))
        fills.append(m.quantity)
        remaining -= m.quantity
    assert fills == [D(100), D(100), D(50)]


@pytest.mark.parametrize(
    ("side", "update", "triggered", "price"),
    [
        ("buy", trade("104.99"), False, None),
        ("buy", trade("105"), True, "105.1050"),  # market from the trigger, slipped
        ("buy", bar("104", "106", "103", "105.5"), True, "105.1050"),  # from the stop
        ("buy", bar("107", "108", "106", "107"), True, "107.1070"),  # gapped: from the open
        ("sell", trade("95.01"), False, None),
        ("sell", trade("95"), True, "94.9050"),
        ("sell", bar("94", "94.5", "93", "94"), True, "93.9060"),
    ],
)
def test_stop_orders_trigger_then_fill_as_market(
    side: str, update: MarketUpdate, triggered: bool, price: str | None
) -> None:
    stop = D(105) if side == "buy" else D(95)
    order = WorkingOrder(side=side, order_type="stop", remaining=D(2), stop_price=stop)  # type: ignore[arg-type]
    match = on_market(SLIP, order, update)
    assert match.triggered == triggered
    assert match.price == (D(price) if price else None)


def test_stop_limit_triggers_then_works_as_a_limit() -> None:
    order = WorkingOrder("buy", "stop_limit", D(4), limit_price=D("105.5"), stop_price=D(105))
    # Triggered at 106, above the limit: triggered, not filled.
    m = on_market(PLAIN, order, trade("106"))
    assert m.triggered
    assert not m.fills
    # Now a resting limit: fills when the market comes back to 105.5, at the
    # trade's price when that is better.
    resting = WorkingOrder("buy", "stop_limit", D(4), D("105.5"), D(105), triggered=True)
    assert not on_market(PLAIN, resting, trade("105.6")).fills
    m = on_market(PLAIN, resting, trade("105.4"))
    assert (m.quantity, m.price, m.triggered) == (D(4), D("105.4"), False)


def test_a_stop_already_passed_at_submission_triggers_at_once() -> None:
    order = WorkingOrder("sell", "stop", D(1), stop_price=D(100))
    m = on_submit(PLAIN, order, D(99))
    assert m.triggered
    assert m.price == D(99)


def test_slipped_price_never_rounds_to_zero() -> None:
    config = FillModelConfig(slippage_bps=D(5000), price_decimals=2)
    m = on_submit(config, WorkingOrder("sell", "market", D(1)), D("0.01"))
    assert m.price == D("0.01")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"slippage_bps": D(-1)},
        {"max_fill_quantity": D(0)},
        {"price_decimals": 13},
    ],
)
def test_config_refuses_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be"):
        FillModelConfig(**kwargs)  # type: ignore[arg-type]
