"""The risk-gate's checks: one table row per rule and reason code."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from libs.contract.events import KillSwitchEngaged, OperatorActionPayload, ReasonCode
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_decide_inputs import (
    EXPIRED,
    LIMITS,
    SPX,
    T0,
    At,
    D,
    S,
    apply,
    base,
    fill,
    filled_position,
    intent,
    run_intent,
    state_change,
    trade,
)


def _without_obligations(s: RiskState) -> RiskState:
    assert [o.kind for o in s.obligations] == ["daily_loss"]
    return s


def _old_mark(_: RiskState) -> RiskState:
    return apply(RiskState.initial(LIMITS), trade("AAPL", 100, T0 - 61 * S))


def _open_order(s: RiskState, quantity: int) -> RiskState:
    i = intent(quantity)
    s, d = run_intent(s, i, T0)
    assert d.accepted, d.detail
    return s


def _with_limit_lowered(s: RiskState) -> RiskState:
    lowered = LIMITS.model_copy(
        update={
            "strategies": {
                **LIMITS.strategies,
                "sma": LIMITS.strategies["sma"].model_copy(update={"max_position": D(20)}),
            }
        }
    )
    return replace(s, limits=lowered)


def _gross_loaded(s: RiskState, limit: int | None = None) -> RiskState:
    # 100 AAPL @ 100 held, 100 NVDA @ 50 held, 100 NVDA open: 10,000 + 10,000 = 20,000
    s = filled_position(evolve(s, trade("NVDA", 50)), 100, 100)
    s = filled_position(s, 100, 50, symbol="NVDA")
    i = intent(100, symbol="NVDA")
    s, d = run_intent(s, i, T0)
    assert d.accepted, d.detail
    cap = D(limit) if limit is not None else D(25_000)
    strategies = {
        **LIMITS.strategies,
        "sma": LIMITS.strategies["sma"].model_copy(update={"max_gross_notional": cap}),
    }
    return replace(s, limits=LIMITS.model_copy(update={"strategies": strategies}))


def _submitted(s: RiskState, n: int, strategy: str = "sma") -> RiskState:
    for k in range(n):
        side = "buy" if k % 2 == 0 else "sell"
        i = intent(1, side=side, strategy=strategy, t=T0 - S // 2)
        s, d = run_intent(s, i, T0 - S // 2)
        assert d.accepted, d.detail
    return s


def _held_off_the_list(s: RiskState) -> RiskState:
    """pairs holds 50 NVDA, a symbol its list no longer names (taken off the
    list after it bought, or booked to it by a flatten)."""
    s = evolve(s, trade("NVDA", 10))
    return evolve(s, fill(uuid.uuid4(), 50, 10, symbol="NVDA", strategy="pairs"))


Setup = Callable[[RiskState], RiskState]


def _noop(s: RiskState) -> RiskState:
    return s


# (name, setup, intent kwargs, now offset ns, expected reason, text in the detail)
CASES: list[tuple[str, Setup, dict[str, Any], int, ReasonCode, str]] = [
    ("accepted", _noop, {}, 0, ReasonCode.ACCEPTED, ""),
    ("accepted on the shadow account", _noop, {"account": "paper"}, 0, ReasonCode.ACCEPTED, ""),
    (
        "unknown strategy",
        _noop,
        {"strategy": "smaa"},
        0,
        ReasonCode.UNKNOWN_STRATEGY,
        "smaa",
    ),
    ("unknown account", _noop, {"account": "nope"}, 0, ReasonCode.UNKNOWN_ACCOUNT, "nope"),
    (
        "not the strategy's account",
        _noop,
        {"account": "other"},
        0,
        ReasonCode.UNKNOWN_ACCOUNT,
        "trades account acct",
    ),
    (
        # Named the broker's way (no O:), the option's notional would be
        # counted per share, not per 100-share contract: 100x too small.
        "an option not named O:<OCC>",
        lambda s: evolve(s, trade("AAPL260320C00100000", 2)),
        {"symbol": "AAPL260320C00100000", "asset_class": "option"},
        0,
        ReasonCode.ASSET_CLASS,
        "AAPL260320C00100000 is an equity symbol, the intent says option",
    ),
    (
        "an O: symbol sent as an equity",
        lambda s: evolve(s, trade("O:AAPL260320C00100000", 2)),
        {"symbol": "O:AAPL260320C00100000"},
        0,
        ReasonCode.ASSET_CLASS,
        "is an option symbol, the intent says equity",
    ),
    (
        "an option order for part of a contract",
        lambda s: evolve(s, trade("O:AAPL260320C00100000", 2)),
        {"symbol": "O:AAPL260320C00100000", "asset_class": "option", "quantity": D("0.5")},
        0,
        ReasonCode.FRACTIONAL_QUANTITY,
        "a whole number of contracts, not 0.5 of O:AAPL260320C00100000",
    ),
    (
        "an option past its expiry day",
        lambda s: evolve(s, trade(EXPIRED, 2)),
        {"symbol": EXPIRED, "asset_class": "option"},
        0,
        ReasonCode.CONTRACT_EXPIRED,
        f"{EXPIRED} expired at the close of 2026-03-06 (16:00 New York)",
    ),
    (
        "an option tradebus cannot settle",
        lambda s: evolve(s, trade(SPX, 2)),
        {"symbol": SPX, "asset_class": "option", "quantity": 1},
        0,
        ReasonCode.CONTRACT_UNSUPPORTED,
        f"{SPX} is not supported: SPX options are cash-settled",
    ),
    ("stale intent", _noop, {}, 6 * S, ReasonCode.STALE_INTENT, "max 5s"),
    (
        "kill switch",
        lambda s: evolve(
            s,
            KillSwitchEngaged.create(
                OperatorActionPayload(operator="ann", reason="fat finger"),
                source="op",
                clock=At(T0),
            ),
        ),
        {},
        0,
        ReasonCode.KILL_SWITCH,
        "ann: fat finger",
    ),
    (
        "account halted",
        lambda s: evolve(s, state_change("acct", "halted")),
        {},
        0,
        ReasonCode.HALTED,
        "acct is halted",
    ),
    (
        "everything halted",
        lambda s: evolve(s, state_change("global", "halted")),
        {},
        0,
        ReasonCode.HALTED,
        "global is halted",
    ),
    (
        "reducing: a buy on a flat book does not reduce",
        lambda s: evolve(s, state_change("acct", "reducing")),
        {},
        0,
        ReasonCode.REDUCE_ONLY,
        "does not reduce",
    ),
    (
        "reducing: a sell larger than the long position crosses zero",
        lambda s: evolve(filled_position(s, 50, 100), state_change("acct", "reducing")),
        {"side": "sell", "quantity": 60},
        0,
        ReasonCode.REDUCE_ONLY,
        "position of 50",
    ),
    (
        "reducing: a sell of part of the long position passes",
        lambda s: evolve(filled_position(s, 50, 100), state_change("global", "reducing")),
        {"side": "sell", "quantity": 30},
        0,
        ReasonCode.ACCEPTED,
        "",
    ),
    (
        "daily loss reached, breaker not yet tripped",
        lambda s: _without_obligations(evolve(filled_position(s, 100, 100), trade("AAPL", 89))),
        {"side": "sell", "quantity": 10},
        0,
        ReasonCode.DAILY_LOSS,
        "-1100",
    ),
    ("no market price", _noop, {"symbol": "NVDA"}, 0, ReasonCode.NO_MARKET_PRICE, "NVDA"),
    (
        "market price too old",
        _old_mark,
        {},
        0,
        ReasonCode.NO_MARKET_PRICE,
        "61.0s old",
    ),
    (
        "limit price outside the band",
        _noop,
        {"order_type": "limit", "limit_price": D("106")},
        0,
        ReasonCode.PRICE_BAND,
        "6.00% from the last price 100",
    ),
    (
        "limit price inside the band",
        _noop,
        {"order_type": "limit", "limit_price": D("104.99")},
        0,
        ReasonCode.ACCEPTED,
        "",
    ),
    (
        "limit order without a limit price",
        _noop,
        {"order_type": "limit"},
        0,
        ReasonCode.PRICE_BAND,
        "needs a limit price",
    ),
    (
        "stop price outside the band",
        _noop,
        {"order_type": "stop", "stop_price": D("90")},
        0,
        ReasonCode.PRICE_BAND,
        "stop price 90",
    ),
    (
        "fat finger: size 100x too large",
        _noop,
        {"quantity": 1000},
        0,
        ReasonCode.MAX_ORDER_QUANTITY,
        "1000 > max 100",
    ),
    (
        "fat finger: notional at the limit price",
        _noop,
        {"quantity": 100, "order_type": "limit", "limit_price": D("104")},
        0,
        ReasonCode.MAX_ORDER_NOTIONAL,
        "10400",
    ),
    (
        "fat finger: notional of options (x100)",
        lambda s: evolve(s, trade("O:AAPL260320C00100000", 2)),
        {"quantity": 80, "symbol": "O:AAPL260320C00100000", "asset_class": "option"},
        0,
        ReasonCode.MAX_ORDER_NOTIONAL,
        "16000",
    ),
    (
        "strategy position: held + open orders + this order past the cap",
        lambda s: _open_order(filled_position(filled_position(s, 100, 100), 100, 100), 100),
        {"quantity": 10},
        0,
        ReasonCode.MAX_STRATEGY_POSITION,
        "would reach 310 (position 200, open orders 100), max 300",
    ),
    (
        "strategy position: a sell reducing a position above the cap passes",
        lambda s: _with_limit_lowered(filled_position(s, 100, 100)),
        {"side": "sell", "quantity": 50},
        0,
        ReasonCode.ACCEPTED,
        "",
    ),
    (
        "symbol outside the strategy's list",
        _noop,
        {"strategy": "pairs", "symbol": "NVDA"},
        0,
        ReasonCode.NO_MARKET_PRICE,
        "",
    ),
    (
        "symbol outside the strategy's list (priced)",
        lambda s: evolve(s, trade("NVDA", 10)),
        {"strategy": "pairs", "symbol": "NVDA"},
        0,
        ReasonCode.MAX_SYMBOL_POSITION,
        "not among the symbols of pairs",
    ),
    (
        "symbol off the strategy's list: selling what it holds passes",
        _held_off_the_list,
        {"strategy": "pairs", "symbol": "NVDA", "side": "sell", "quantity": 50},
        0,
        ReasonCode.ACCEPTED,
        "",
    ),
    (
        "symbol off the strategy's list: selling past what it holds",
        _held_off_the_list,
        {"strategy": "pairs", "symbol": "NVDA", "side": "sell", "quantity": 51},
        0,
        ReasonCode.MAX_SYMBOL_POSITION,
        "not among the symbols of pairs",
    ),
    (
        "symbol off the strategy's list: adding to what it holds",
        _held_off_the_list,
        {"strategy": "pairs", "symbol": "NVDA", "quantity": 1},
        0,
        ReasonCode.MAX_SYMBOL_POSITION,
        "not among the symbols of pairs",
    ),
    (
        "strategy per-symbol cap",
        _noop,
        {"strategy": "pairs", "quantity": 121},
        0,
        ReasonCode.MAX_SYMBOL_POSITION,
        "max 120 for AAPL",
    ),
    (
        "account per-symbol cap across strategies",
        lambda s: filled_position(s, 100, 50, symbol="MSFT", strategy="pairs"),
        {"symbol": "MSFT", "quantity": 60},
        0,
        ReasonCode.MAX_SYMBOL_POSITION,
        "account acct position in MSFT would reach 160",
    ),
    (
        "gross notional: positions elsewhere + this order",
        lambda s: _gross_loaded(s),
        {"quantity": 100},
        0,
        ReasonCode.MAX_GROSS_NOTIONAL,
        "would reach 30000.00 (now 20000.00), max 25000",
    ),
    (
        "gross notional: a reducing order passes above the cap",
        lambda s: _gross_loaded(s, limit=10_000),
        {"side": "sell", "quantity": 50, "symbol": "NVDA"},
        0,
        ReasonCode.ACCEPTED,
        "",
    ),
    (
        "strategy rate limit",
        lambda s: _submitted(s, 5),
        {},
        0,
        ReasonCode.STRATEGY_RATE_LIMIT,
        "5 orders in the last 1s, max 5",
    ),
    (
        "strategy rate limit: the window has passed",
        lambda s: _submitted(s, 5),
        {"t": T0 + S},
        S,
        ReasonCode.ACCEPTED,
        "",
    ),
    (
        "account rate limit",
        lambda s: _submitted(s, 8, strategy="pairs"),
        {},
        0,
        ReasonCode.ACCOUNT_RATE_LIMIT,
        "8 orders in the last 1s, max 8",
    ),
]


@pytest.mark.parametrize(
    ("setup", "kwargs", "offset", "reason", "detail"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_each_check_has_its_reason(
    setup: Setup, kwargs: dict[str, Any], offset: int, reason: ReasonCode, detail: str
) -> None:
    state = setup(base())
    i = intent(**kwargs)
    state = evolve(state, i)
    d = decide(state, i, T0 + offset)
    assert d.reason is reason, d.detail
    assert detail in d.detail
    assert d.event.payload.reason is reason
    assert d.event.payload.detail == d.detail
    if reason is ReasonCode.ACCEPTED:
        assert d.event.payload.decision == "accepted"
        assert d.order is not None
    else:
        assert d.event.payload.decision == "denied"
        assert d.order is None
        assert d.event.payload.order_id is None
        assert d.events == (d.event,)


def test_every_reason_code_is_exercised() -> None:
    assert {case[4] for case in CASES} == set(ReasonCode)
