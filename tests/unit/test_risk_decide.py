"""The risk-gate's checks: one table row per rule and reason code, plus the
"parameter typo" scenarios (a size 100x too large, an order loop) and the
daily-loss breaker driven by fills and marks."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from libs.contract.envelope import Event
from libs.contract.events import (
    BarClosed,
    BarPayload,
    FillPayload,
    FillReceived,
    KillSwitchEngaged,
    MarkPayload,
    MarkUpdated,
    OperatorActionPayload,
    OrderIntentCreated,
    OrderIntentPayload,
    OrderRejected,
    OrderRejectedPayload,
    QuotePayload,
    QuoteUpdated,
    ReasonCode,
    ResumePayload,
    SignalGenerated,
    SignalPayload,
    SubmitOrder,
    TradePayload,
    TradePrinted,
    TradingResumeRequested,
    TradingStateChanged,
    TradingStatePayload,
)
from services.marketdata.domain.marks import OptionMarks
from services.risk_gate.domain.commands import decision_id_for, order_id_for
from services.risk_gate.domain.decide import decide, reduces_position
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.limits import RiskLimits
from services.risk_gate.domain.react import react
from services.risk_gate.domain.state import RiskState

D = Decimal
S = 1_000_000_000
#: 2026-03-10 15:00 UTC = 11:00 New York (EDT): mid-session.
T0 = 1_773_154_800 * S

LIMITS = RiskLimits.model_validate(
    {
        "price_band": {"max_deviation": 0.05, "max_mark_age_s": 60},
        "max_intent_age_s": 5,
        "accounts": {
            "acct": {
                "daily_loss_limit": 1000,
                "rate_limit": {"max_orders": 8, "per_seconds": 1},
                "symbols": {"MSFT": {"max_position": 150}},
            },
            "paper": {"daily_loss_limit": 1000},
            "other": {"daily_loss_limit": 1000},
        },
        "strategies": {
            "sma": {
                "account": "acct",
                "shadow_account": "paper",
                "max_gross_notional": 50_000,
                "max_position": 300,
                "max_order_quantity": 100,
                "max_order_notional": 10_000,
                "rate_limit": {"max_orders": 5, "per_seconds": 1},
            },
            "pairs": {
                "account": "acct",
                "max_gross_notional": 100_000,
                "max_position": 1000,
                "max_order_quantity": 1000,
                "max_order_notional": 100_000,
                "symbols": {"AAPL": {"max_position": 120}, "MSFT": {"max_position": 1000}},
            },
        },
    }
)


class At:
    def __init__(self, ns: int) -> None:
        self.ns = ns

    def now_ns(self) -> int:
        return self.ns


def trade(symbol: str, price: str | int, t: int = T0) -> TradePrinted:
    return TradePrinted.create(
        TradePayload(symbol=symbol, price=D(price), size=D(1), feed="synthetic"),
        source="test",
        clock=At(t),
    )


def bar(symbol: str, close: str | int, t: int = T0) -> BarClosed:
    return BarClosed.create(
        BarPayload(
            symbol=symbol,
            interval="1m",
            open=D(close),
            high=D(close),
            low=D(close),
            close=D(close),
            volume=D(100),
            start_ns=t - 60 * S,
            end_ns=t,
            feed="synthetic",
        ),
        source="test",
        clock=At(t),
    )


def intent(
    quantity: str | int = 10,
    *,
    side: str = "buy",
    symbol: str = "AAPL",
    strategy: str = "sma",
    account: str = "acct",
    t: int = T0,
    cause: Event | None = None,
    **extra: Any,
) -> OrderIntentCreated:
    return OrderIntentCreated.create(
        OrderIntentPayload(
            strategy=strategy,
            account=account,
            symbol=symbol,
            side=side,
            quantity=D(quantity),
            **extra,
        ),
        source="test",
        clock=At(t),
        cause=cause,
    )


def fill(
    order_id: uuid.UUID,
    quantity: str | int,
    price: str | int,
    *,
    side: str = "buy",
    symbol: str = "AAPL",
    account: str = "acct",
    leaves: str | int = 0,
    t: int = T0,
    fill_id: str | None = None,
    strategy: str | None = None,
) -> FillReceived:
    return FillReceived.create(
        FillPayload(
            order_id=order_id,
            account=account,
            broker_order_id="b-1",
            fill_id=fill_id or uuid.uuid4().hex,
            symbol=symbol,
            side=side,
            quantity=D(quantity),
            price=D(price),
            cumulative_quantity=D(quantity),
            leaves_quantity=D(leaves),
            status="complete" if D(leaves) == 0 else "partial",
            strategy=strategy,
        ),
        source="test",
        clock=At(t),
    )


def state_change(scope: str, state: str, t: int = T0) -> TradingStateChanged:
    return TradingStateChanged.create(
        TradingStatePayload(scope=scope, state=state, previous="active", reason="test"),
        source="test",
        clock=At(t),
    )


def apply(state: RiskState, *events: Event) -> RiskState:
    for e in events:
        state = evolve(state, e)
    return state


def run_intent(state: RiskState, i: OrderIntentCreated, now: int) -> tuple[RiskState, Any]:
    """What the gate does with one intent: evolve, decide, apply the decision."""
    state = evolve(state, i)
    d = decide(state, i, now)
    return apply(state, *d.events), d


def filled_position(
    state: RiskState, quantity: int, price: int, *, symbol: str = "AAPL", strategy: str = "sma"
) -> RiskState:
    """An accepted order for ``quantity`` filled completely at ``price``."""
    side = "buy" if quantity > 0 else "sell"
    i = intent(abs(quantity), side=side, symbol=symbol, strategy=strategy)
    state = evolve(state, i)
    d = decide(state, i, T0)
    assert d.accepted, d.detail
    state = apply(state, *d.events)
    return evolve(state, fill(order_id_for(i.id), abs(quantity), price, side=side, symbol=symbol))


def base() -> RiskState:
    return apply(RiskState.initial(LIMITS), trade("AAPL", 100), trade("MSFT", 50))


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

#: Expired at 16:00 New York on Friday 2026-03-06, before T0.
EXPIRED = "O:AAPL260306C00100000"
#: A cash-settled index option (no shares delivered), trading at T0.
SPX = "O:SPX260320C05000000"


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


OPTION = "O:AAPL260320C00100000"


@pytest.mark.parametrize(
    ("symbol", "options", "limit", "age_s", "reason"),
    [
        # 10 % from the last price: outside the equities' 5 %, inside the options' 25 %.
        ("AAPL", {"max_deviation": "0.25"}, "110", 0, ReasonCode.PRICE_BAND),
        (OPTION, {"max_deviation": "0.25"}, "2.2", 0, ReasonCode.ACCEPTED),
        (OPTION, None, "2.2", 0, ReasonCode.PRICE_BAND),  # no band of their own: 5 %
        # A last price 5 minutes old: past the equities' 60 s, within the options' 10 min.
        ("AAPL", {"max_mark_age_s": 600}, "100", 300, ReasonCode.NO_MARKET_PRICE),
        (OPTION, {"max_mark_age_s": 600}, "2", 300, ReasonCode.ACCEPTED),
        # A key left out takes the equities' value.
        (OPTION, {"max_deviation": "0.25"}, "2", 300, ReasonCode.NO_MARKET_PRICE),
        (OPTION, {"max_mark_age_s": 600}, "2.2", 0, ReasonCode.PRICE_BAND),
    ],
)
def test_options_may_have_a_price_band_of_their_own(
    symbol: str, options: dict[str, Any] | None, limit: str, age_s: int, reason: ReasonCode
) -> None:
    band = {"max_deviation": "0.05", "max_mark_age_s": 60, "options": options}
    limits = RiskLimits.model_validate({**LIMITS.model_dump(), "price_band": band})
    last = "100" if symbol == "AAPL" else "2"
    state = apply(RiskState.initial(limits), trade(symbol, last, T0 - age_s * S))
    kwargs: dict[str, Any] = {"asset_class": "option"} if symbol == OPTION else {}
    i = intent(1, symbol=symbol, order_type="limit", limit_price=D(limit), **kwargs)
    d = decide(evolve(state, i), i, T0)
    assert d.reason is reason, d.detail


#: 2026-03-10 16:00 New York (EDT) = 20:00 UTC: the close of TODAY's expiry day.
CLOSE = T0 + 5 * 3600 * S
TODAY = "O:AAPL260310C00100000"


@pytest.mark.parametrize(
    ("symbol", "held", "side", "quantity", "now", "max_mark_age_s", "reason"),
    [
        # Opening or adding, with a fresh price, and with no age checked at all.
        (EXPIRED, 0, "buy", 1, T0, 60, ReasonCode.CONTRACT_EXPIRED),
        (EXPIRED, 0, "buy", 1, T0, None, ReasonCode.CONTRACT_EXPIRED),
        (EXPIRED, 0, "sell", 1, T0, None, ReasonCode.CONTRACT_EXPIRED),
        (EXPIRED, 5, "buy", 1, T0, 60, ReasonCode.CONTRACT_EXPIRED),
        (EXPIRED, -5, "sell", 1, T0, 60, ReasonCode.CONTRACT_EXPIRED),
        # Reducing too: no venue takes it (it passed, and the broker refused it).
        (EXPIRED, 5, "sell", 5, T0, 60, ReasonCode.CONTRACT_EXPIRED),
        (EXPIRED, -5, "buy", 2, T0, None, ReasonCode.CONTRACT_EXPIRED),
        (EXPIRED, 5, "sell", 6, T0, 60, ReasonCode.CONTRACT_EXPIRED),
        # On its expiry day it trades until the close, 16:00 New York.
        (TODAY, 0, "buy", 1, T0, 60, ReasonCode.ACCEPTED),
        (TODAY, 0, "buy", 1, CLOSE - S, 60, ReasonCode.ACCEPTED),
        (TODAY, 0, "buy", 1, CLOSE, 60, ReasonCode.CONTRACT_EXPIRED),
        (TODAY, 0, "buy", 1, CLOSE + 3600 * S, None, ReasonCode.CONTRACT_EXPIRED),
        (TODAY, 3, "sell", 3, CLOSE - S, None, ReasonCode.ACCEPTED),
        (TODAY, 3, "sell", 3, CLOSE, None, ReasonCode.CONTRACT_EXPIRED),
        (TODAY, 3, "sell", 3, CLOSE + 3600 * S, None, ReasonCode.CONTRACT_EXPIRED),
    ],
)
def test_every_order_in_an_expired_contract_is_denied_a_close_included(
    symbol: str,
    held: int,
    side: str,
    quantity: int,
    now: int,
    max_mark_age_s: int | None,
    reason: ReasonCode,
) -> None:
    """Last month's contract in a strategy's config (a typo) was traded as
    long as its last price was fresh, or at any age with no max_mark_age_s:
    the broker refuses it, the paper broker filled it. A close passed as a
    reduce, for the broker to refuse it as well: no venue lists the contract
    after its expiry day, and the broker settles the position."""
    band = {"max_deviation": "0.05", "max_mark_age_s": max_mark_age_s}
    limits = RiskLimits.model_validate({**LIMITS.model_dump(), "price_band": band})
    state = apply(RiskState.initial(limits), trade(symbol, 2, now))
    if held:
        bought = "buy" if held > 0 else "sell"
        held_fill = fill(uuid.uuid4(), abs(held), 2, side=bought, symbol=symbol, strategy="sma")
        state = evolve(state, held_fill)
    i = intent(quantity, side=side, symbol=symbol, asset_class="option", t=now)
    d = decide(evolve(state, i), i, now)
    assert d.reason is reason, d.detail
    if reason is ReasonCode.CONTRACT_EXPIRED:
        assert f"{symbol} expired at the close of" in d.detail
        assert "no venue takes an order in it, a close included" in d.detail
        assert f"the account's position of {held} is the broker's to settle" in d.detail


def test_closes_of_an_expired_contract_use_no_rate_limit_of_the_account() -> None:
    """A strategy answering the broker's refusal of its close by closing
    again (pairs_trade did, every minute): each close the gate accepted took
    a place in the account's rate window before the broker refused it, and
    8 of them in a second denied another strategy's order
    (account_rate_limit). Denied at the gate, they take none."""
    held = fill(uuid.uuid4(), 5, 2, symbol=EXPIRED, strategy="pairs", t=T0 - 3600 * S)
    state = apply(base(), trade(EXPIRED, 2), held)
    reasons = []
    for k in range(8):
        t = T0 + k * S // 10
        close = intent(5, side="sell", symbol=EXPIRED, strategy="pairs", asset_class="option", t=t)
        state, d = run_intent(state, close, t)
        reasons.append(d.reason)
        if d.order is not None:  # the broker refuses it
            refused = OrderRejectedPayload(
                order_id=d.order.payload.order_id, account="acct", reason="not tradable"
            )
            state = evolve(state, OrderRejected.create(refused, source="test", clock=At(t)))
    other = intent(10, t=T0 + 9 * S // 10)
    state, d = run_intent(state, other, T0 + 9 * S // 10)
    assert d.accepted, d.detail
    assert reasons == [ReasonCode.CONTRACT_EXPIRED] * 8
    assert state.account_position("acct", EXPIRED) == 5


@pytest.mark.parametrize(
    ("symbol", "held", "side", "quantity", "reason"),
    [
        # Cash-settled index options: opening or adding is denied...
        (SPX, 0, "buy", 1, ReasonCode.CONTRACT_UNSUPPORTED),
        (SPX, 0, "sell", 1, ReasonCode.CONTRACT_UNSUPPORTED),
        ("O:SPXW260320P05000000", 0, "buy", 1, ReasonCode.CONTRACT_UNSUPPORTED),
        ("O:VIX260318C00020000", 0, "sell", 1, ReasonCode.CONTRACT_UNSUPPORTED),
        (SPX, 5, "buy", 1, ReasonCode.CONTRACT_UNSUPPORTED),
        (SPX, -5, "sell", 1, ReasonCode.CONTRACT_UNSUPPORTED),
        # ...and so is a close past flat, which opens the other side.
        (SPX, 5, "sell", 6, ReasonCode.CONTRACT_UNSUPPORTED),
        # A position held already may be closed before its expiry.
        (SPX, 5, "sell", 5, ReasonCode.ACCEPTED),
        (SPX, -5, "buy", 2, ReasonCode.ACCEPTED),
        # Adjusted contracts (an OCC root ending in a digit).
        ("O:SPY1260320P00500000", 0, "buy", 1, ReasonCode.CONTRACT_UNSUPPORTED),
        ("O:AAPL1260320C00100000", 3, "sell", 3, ReasonCode.ACCEPTED),
        # SPY's own options deliver 100 shares of SPY: supported.
        ("O:SPY260320P00500000", 0, "buy", 1, ReasonCode.ACCEPTED),
    ],
)
def test_an_order_that_opens_a_contract_tradebus_cannot_settle_is_denied(
    symbol: str, held: int, side: str, quantity: int, reason: ReasonCode
) -> None:
    """Every settlement (the paper broker's, the gateway's, its cross) books
    an exercise or assignment as 100 shares of the root at the strike: an
    SPX call exercised became 100 "SPX" shares bought at 5000, which no
    broker delivers (SPX settles in cash), and an adjusted SPY1 contract's
    deliverable is not 100 SPY1 shares. The gate denies what would open
    such a position, whatever the strategies.yaml check and the SDK did."""
    state = apply(RiskState.initial(LIMITS), trade(symbol, 2))
    if held:
        bought = "buy" if held > 0 else "sell"
        held_fill = fill(uuid.uuid4(), abs(held), 2, side=bought, symbol=symbol, strategy="sma")
        state = evolve(state, held_fill)
    i = intent(quantity, side=side, symbol=symbol, asset_class="option")
    d = decide(evolve(state, i), i, T0)
    assert d.reason is reason, d.detail
    if reason is ReasonCode.CONTRACT_UNSUPPORTED:
        assert d.detail.startswith(f"{symbol} is not supported: "), d.detail
        assert f"An order in it may only reduce the position sma holds ({held}" in d.detail
        assert f"not {side} {quantity}" in d.detail


def test_every_reason_code_is_exercised() -> None:
    assert {case[4] for case in CASES} == set(ReasonCode)


def test_ids_derive_from_the_intent_and_the_chain_stays_the_signals() -> None:
    signal = SignalGenerated.create(
        SignalPayload(strategy="sma", symbol="AAPL", name="cross", direction="long"),
        source="test",
        clock=At(T0),
    )
    i = intent(10, cause=signal)
    state = evolve(base(), i)
    first = decide(state, i, T0)
    again = decide(state, i, T0 + S // 10)
    assert first.accepted
    assert first.order is not None
    assert again.order is not None
    assert first.event.id == again.event.id == decision_id_for(i.id)
    assert first.order.id == again.order.id
    assert first.order.payload.order_id == order_id_for(i.id) == first.event.payload.order_id
    assert first.event.causation_id == i.id
    assert first.order.causation_id == first.event.id
    assert first.event.correlation_id == first.order.correlation_id == signal.id
    assert first.order.payload.intent_id == i.id
    assert (first.order.payload.side, first.order.payload.quantity) == ("buy", D(10))


def test_a_decided_intent_seen_again_is_not_pending() -> None:
    state = base()
    i = intent(10)
    state, d = run_intent(state, i, T0)
    assert d.accepted
    again = evolve(state, i)
    assert i.id not in again.pending_intents
    assert i.id in again.decided
    assert len(again.open_orders()) == 1


def test_typo_size_100x_never_becomes_an_order() -> None:
    state = base()
    meant = intent(10)
    typo = intent(1000)
    state, ok = run_intent(state, meant, T0)
    state, denied = run_intent(state, typo, T0)
    assert ok.accepted
    assert denied.reason is ReasonCode.MAX_ORDER_QUANTITY
    assert denied.order is None
    assert [o.quantity for o in state.open_orders()] == [D(10)]


def test_order_loop_is_stopped_by_the_rate_limit_and_the_position_cap() -> None:
    """A strategy stuck in a loop sends the same buy 200 times in 2 seconds."""
    state = base()
    decisions = []
    for k in range(200):
        t = T0 + k * S // 100
        i = intent(40, t=t)
        state, d = run_intent(state, i, t)
        decisions.append(d)
    accepted = [d for d in decisions if d.accepted]
    reasons = {d.reason for d in decisions if not d.accepted}
    # 40 per order, cap 300 with open orders counted: 7 orders fit, the 8th would make 320.
    assert len(accepted) == 7
    assert sum(o.quantity for o in state.open_orders()) == D(280)
    assert reasons == {ReasonCode.STRATEGY_RATE_LIMIT, ReasonCode.MAX_STRATEGY_POSITION}
    # Within the first second at most 5 got through.
    assert sum(1 for d in decisions[:100] if d.accepted) == 5
    orders = [e for d in decisions for e in d.events if isinstance(e, SubmitOrder)]
    assert len(orders) == 7


def test_daily_loss_breaker_with_fills_and_marks() -> None:
    """Long 100 @ 100, a resting order, the price slides: the breaker trips at -1000."""
    state = base()
    state = filled_position(state, 100, 100)
    resting = intent(20, order_type="limit", limit_price=D("99"))
    state, d = run_intent(state, resting, T0)
    assert d.accepted
    for price, t in (("95", 1), ("91", 2)):
        state = evolve(state, trade("AAPL", price, T0 + t * S))
        assert react(state, T0 + t * S) == []
    assert state.day_pnl("acct") == D(-900)
    state = evolve(state, bar("AAPL", "89.5", T0 + 3 * S))
    assert state.day_pnl("acct") == D(-1050)
    reaction = react(state, T0 + 3 * S)
    assert [e.type for e in reaction] == [
        "BreakerTripped",
        "CancelOrder",
        "FlattenAccount",
        "TradingStateChanged",
    ]
    breaker, cancel, flatten, halted = reaction
    assert breaker.payload.breaker == "daily_loss"
    assert breaker.payload.value == D(-1050)
    assert cancel.payload.order_id == order_id_for(resting.id)
    assert flatten.payload.account == "acct"
    assert (halted.payload.scope, halted.payload.state) == ("acct", "halted")
    state = apply(state, *reaction)
    assert react(state, T0 + 4 * S) == []
    # Nothing new passes, not even at a better price...
    state, d = run_intent(state, intent(1, t=T0 + 5 * S), T0 + 5 * S)
    assert d.reason is ReasonCode.HALTED
    # ... until an operator resumes the account.
    resume = TradingResumeRequested.create(
        ResumePayload(operator="ann", reason="reviewed", scope="acct"),
        source="op",
        clock=At(T0 + 6 * S),
    )
    state = evolve(state, resume)
    (active,) = react(state, T0 + 6 * S)
    assert (active.payload.state, active.payload.previous) == ("active", "halted")
    state = evolve(state, active)
    state, d = run_intent(state, intent(1, side="sell", t=T0 + 7 * S), T0 + 7 * S)
    assert d.accepted, d.detail


def test_reduces_position_counts_open_orders_on_the_same_side() -> None:
    state = filled_position(base(), 100, 100)
    assert reduces_position(state, "acct", "AAPL", "sell", D(100))
    assert not reduces_position(state, "acct", "AAPL", "sell", D(101))
    assert not reduces_position(state, "acct", "AAPL", "buy", D(1))
    state, d = run_intent(state, intent(60, side="sell"), T0)
    assert d.accepted
    assert reduces_position(state, "acct", "AAPL", "sell", D(40))
    assert not reduces_position(state, "acct", "AAPL", "sell", D(41))


# ------------------------------------------------------------ quote marks


def mark(symbol: str, price: str, t: int = T0, spread: str = "0.10") -> MarkUpdated:
    """An option's mark from a quote ``spread`` wide around ``price``."""
    half = D(spread) / 2
    return MarkUpdated.create(
        MarkPayload(
            symbol=symbol,
            price=D(price),
            bid_price=D(price) - half,
            ask_price=D(price) + half,
            feed="polygon",
        ),
        source="test",
        clock=At(t),
    )


def option_intent(quantity: int, **extra: Any) -> OrderIntentCreated:
    return intent(quantity, symbol=OPTION, asset_class="option", **extra)


def test_an_option_priced_only_by_a_quote_mark_is_accepted() -> None:
    """No trade and no bar of the contract: no price, so no order, until the
    mark of its quote prices it, for the band, the notional and the age."""
    state = RiskState.initial(LIMITS)
    limit = option_intent(2, order_type="limit", limit_price=D("2.05"))
    d = decide(evolve(state, limit), limit, T0)
    assert (d.reason, d.detail) == (ReasonCode.NO_MARKET_PRICE, f"no market price for {OPTION}")

    state = evolve(state, mark(OPTION, "2.00", T0 - 10 * S))
    d = decide(evolve(state, limit), limit, T0)
    assert d.accepted, d.detail
    # The band is around the mark: 2.20 is 10 % away (5 % allowed).
    far = option_intent(2, order_type="limit", limit_price=D("2.20"))
    d = decide(evolve(state, far), far, T0)
    assert d.reason is ReasonCode.PRICE_BAND
    assert "from the last price 2.00" in d.detail
    # A market order is valued at the mark: 60 x 2.00 x 100 = 12,000 > 10,000.
    big = option_intent(60)
    d = decide(evolve(state, big), big, T0)
    assert (d.reason, d.detail) == (
        ReasonCode.MAX_ORDER_NOTIONAL,
        "notional 12000.00 > max 10000 per order",
    )
    # Its age counts as a trade's: past max_mark_age_s (60 s) it is no price.
    later = option_intent(2, order_type="limit", limit_price=D("2.05"), t=T0 + 51 * S)
    d = decide(evolve(state, later), later, T0 + 51 * S)
    assert d.reason is ReasonCode.NO_MARKET_PRICE
    assert "61.0s old (max 60s)" in d.detail


@pytest.mark.parametrize(
    ("events", "price"),
    [
        pytest.param(
            [trade(OPTION, "2.00", T0 - 10 * S), mark(OPTION, "2.50", T0 - 5 * S)],
            "2.50",
            id="a mark newer than the last trade replaces it",
        ),
        pytest.param(
            [mark(OPTION, "2.50", T0 - 10 * S), trade(OPTION, "2.00", T0 - 5 * S)],
            "2.00",
            id="a trade newer than the mark replaces it",
        ),
        pytest.param(
            [mark(OPTION, "2.50", T0 - 5 * S), trade(OPTION, "2.00", T0 - 10 * S)],
            "2.50",
            id="an older trade arriving late does not move the mark back",
        ),
        pytest.param(
            [trade(OPTION, "2.00", T0 - 10 * S), mark(OPTION, "2.50", T0 - 20 * S)],
            "2.00",
            id="nor does an older mark",
        ),
        pytest.param(
            [trade(OPTION, "2.00", T0 - 5 * S), mark(OPTION, "2.50", T0 - 5 * S)],
            "2.50",
            id="at the same time the later in the stream wins",
        ),
        pytest.param(
            [mark(OPTION, "2.50", T0 - 10 * S), bar(OPTION, "2.20", T0 - 5 * S)],
            "2.20",
            id="a newer bar replaces a mark",
        ),
    ],
)
def test_the_newest_price_wins_whether_trade_bar_or_quote_mark(
    events: list[Event], price: str
) -> None:
    state = apply(RiskState.initial(LIMITS), *events)
    m = state.mark(OPTION)
    assert m is not None
    assert m.price == D(price)
    assert m.ts_ns == max(e.ts_event for e in events)


def _fill_of_10(symbol: str, price: str, t: int) -> FillReceived:
    return fill(uuid.uuid4(), 10, price, symbol=symbol, strategy="sma", t=t)


@pytest.mark.parametrize(
    ("price", "ahead", "marked"),
    [
        pytest.param(trade, 24 * 3600 * S, False, id="a trade stamped a day ahead"),
        pytest.param(bar, 61 * S, False, id="a bar stamped 61 s ahead"),
        pytest.param(mark, 3600 * S, False, id="a quote's mark stamped an hour ahead"),
        pytest.param(_fill_of_10, 3600 * S, False, id="a fill stamped an hour ahead"),
        pytest.param(trade, 60 * S, True, id="a trade 60 s ahead, within max_mark_age_s"),
    ],
)
def test_a_price_stamped_ahead_of_when_it_was_seen_does_not_hold_the_mark(
    price: Callable[[str, str, int], Event], ahead: int, marked: bool
) -> None:
    """A print stamped further ahead of its own ts_init (when marketdata saw
    it) than max_mark_age_s (60 s) is a bad stamp, not a price: newest by
    market time, it held the mark at its price against every later print
    until the clock caught up, its age passing the check all along (and a
    day ahead, it rolled the trading day). Clock skew within the limit marks.
    A fill so stamped still counts, but does not mark."""
    state = apply(RiskState.initial(LIMITS), trade("AAPL", "100", T0 - 2 * S))
    seen = price("AAPL", "150", T0 - S)
    bad = seen.model_copy(update={"ts_event": seen.ts_init + ahead})
    state = apply(state, bad, trade("AAPL", "101", T0))
    m = state.mark("AAPL")
    assert m is not None
    # Within the limit it marks at its market time (no later than 5 s after
    # it was made), as the ledgers and tradebus positions take it.
    assert (m.price, m.ts_ns) == ((D(150), bad.market_ns) if marked else (D(101), T0))
    held = 10 if isinstance(bad, FillReceived) else 0
    assert state.account_position("acct", "AAPL") == held
    assert state.day is not None
    assert state.day.isoformat() == "2026-03-10"
    if not marked:
        i = intent(10, order_type="limit", limit_price=D("101"), t=T0)
        assert decide(evolve(state, i), i, T0).accepted


@pytest.mark.parametrize(
    ("ahead", "reason"),
    [
        pytest.param(120 * S, ReasonCode.NO_MARKET_PRICE, id="120 s ahead of the gate's clock"),
        pytest.param(60 * S, ReasonCode.ACCEPTED, id="60 s ahead, within max_mark_age_s"),
    ],
)
def test_a_last_price_stamped_ahead_of_now_is_no_price(ahead: int, reason: ReasonCode) -> None:
    """A price its publisher stamped (and saw) ahead of the gate's clock by
    more than max_mark_age_s: one of the clocks is wrong, and the price's age
    cannot be told. It passed the age check (a negative age) until the gate's
    clock caught up."""
    state = apply(RiskState.initial(LIMITS), trade("AAPL", "100", T0 + ahead))
    i = intent(10, t=T0)
    d = decide(evolve(state, i), i, T0)
    assert d.reason is reason
    if reason is ReasonCode.NO_MARKET_PRICE:
        assert "stamped 120.0s ahead of now (max 60s)" in d.detail


def test_quote_marks_value_an_option_position_and_can_trip_the_breaker() -> None:
    """Long 10 contracts at 3.00: the quote marks alone move the day P&L
    (10 x 100 per dollar) until the daily-loss breaker trips at -1000."""
    state = apply(
        RiskState.initial(LIMITS),
        mark(OPTION, "3.00", T0),
        fill(uuid.uuid4(), 10, "3.00", symbol=OPTION, strategy="sma"),
    )
    state = evolve(state, mark(OPTION, "2.50", T0 + S))
    assert state.day_pnl("acct") == D(-500)
    assert react(state, T0 + S) == []
    state = evolve(state, mark(OPTION, "2.00", T0 + 2 * S))
    assert state.day_pnl("acct") == D(-1000)
    breaker = react(state, T0 + 2 * S)[0]
    assert (breaker.type, breaker.payload.value) == ("BreakerTripped", D(-1000))


# ------------------------------------------------------------ ticks in the band

#: A contract of a class that is quoted in pennies at every price (SPY's).
SPY_OPTION = "O:SPY260320P00500000"


def _banded(band: dict[str, Any], *prices: Event) -> RiskState:
    limits = RiskLimits.model_validate({**LIMITS.model_dump(), "price_band": band})
    return apply(RiskState.initial(limits), *prices)


def _band_verdict(
    state: RiskState, symbol: str, side: str, price: str, order_type: str = "limit"
) -> tuple[ReasonCode, str]:
    """The gate's verdict on a ``side`` ``order_type`` order for 1 ``symbol`` at ``price``."""
    kwargs: dict[str, Any] = {"asset_class": "option"} if symbol.startswith("O:") else {}
    key = "stop_price" if order_type == "stop" else "limit_price"
    kwargs[key] = D(price)
    i = intent(1, side=side, symbol=symbol, order_type=order_type, **kwargs)
    d = decide(evolve(state, i), i, T0)
    return d.reason, d.detail


OK, BAND = ReasonCode.ACCEPTED, ReasonCode.PRICE_BAND
#: The options' band risk.yaml suggests, with no tick allowance given.
OPTION_BAND: dict[str, Any] = {"max_deviation": "0.05", "options": {"max_deviation": "0.25"}}


@pytest.mark.parametrize(
    ("last", "side", "limit"),
    [
        # Marketdata marks a cheap contract quoted 0.05 x 0.10 at 0.075: its bid
        # and its ask are each 33 % from the mark, outside the 25 % band, and
        # half a tick from it.
        pytest.param(mark(OPTION, "0.075", spread="0.05"), "buy", "0.05", id="buy at the bid"),
        pytest.param(mark(OPTION, "0.075", spread="0.05"), "buy", "0.10", id="buy at the ask"),
        pytest.param(mark(OPTION, "0.075", spread="0.05"), "sell", "0.10", id="sell at the ask"),
        pytest.param(mark(OPTION, "0.075", spread="0.05"), "sell", "0.05", id="sell at the bid"),
        # One tick above (100 %) and below (50 %) a trade at a nickel, a dime.
        pytest.param(trade(OPTION, "0.05"), "buy", "0.10", id="a tick above a trade"),
        pytest.param(trade(OPTION, "0.10"), "sell", "0.05", id="a tick below a trade"),
    ],
)
def test_a_cheap_options_orders_at_its_bid_or_ask_pass_the_band(
    last: Event, side: str, limit: str
) -> None:
    """The band was relative only, and narrower than a tick for a contract
    this cheap (25 % of 0.075 is 0.019, the tick 0.05): no order of it at its
    own bid or ask, or a tick from its last trade, could be placed. Options
    now pass within 2 ticks of the mark, unless risk.yaml says otherwise."""
    state = _banded(OPTION_BAND, last)
    assert _band_verdict(state, OPTION, side, limit) == (
        ReasonCode.ACCEPTED,
        "",
    )


@pytest.mark.parametrize(
    ("symbol", "bid", "ask", "marked"),
    [
        # A nickel class: a quote one or two nickels wide is marked, three are not.
        (OPTION, "0.05", "0.10", True),
        (OPTION, "0.05", "0.15", True),
        (OPTION, "0.05", "0.20", False),
        (OPTION, "0.02", "0.04", True),
        (OPTION, "3.00", "3.20", True),
        # SPY's contracts trade in pennies at every price: the same quotes are
        # that many more of its ticks wide, and the gate counts in pennies.
        (SPY_OPTION, "0.05", "0.10", False),
        (SPY_OPTION, "0.05", "0.15", False),
        (SPY_OPTION, "0.10", "0.20", False),
        (SPY_OPTION, "0.05", "0.07", True),
        (SPY_OPTION, "0.01", "0.03", True),
        (SPY_OPTION, "3.00", "3.20", True),
        ("O:QQQ260320C00400000", "0.05", "0.15", False),
        ("O:IWM260320C00200000", "0.05", "0.15", False),
    ],
)
def test_the_band_passes_the_bid_and_the_ask_of_every_quote_marketdata_marks(
    symbol: str, bid: str, ask: str, marked: bool
) -> None:
    """Marketdata and the gate count a contract's ticks by one rule
    (``libs.contract.options.option_tick``). Marketdata gave a SPY contract
    quoted on the nickel grid the nickel, and marked 0.05 x 0.15 at 0.10,
    while the gate counted SPY's ticks in pennies: its bid, 0.05 from the
    mark, was 2 nickels but 5 pennies away, and denied."""
    quoted = QuoteUpdated.create(
        QuotePayload(
            symbol=symbol,
            bid_price=D(bid),
            bid_size=D(1),
            ask_price=D(ask),
            ask_size=D(1),
            sequence=1,
            feed="polygon",
        ),
        source="test",
        clock=At(T0),
    )
    made = OptionMarks().on_quote(quoted)  # marketdata's defaults
    assert isinstance(made, MarkUpdated) is marked, made
    if isinstance(made, MarkUpdated):
        state = _banded(OPTION_BAND, made)  # the band risk.yaml suggests
        for side, price in (("buy", bid), ("sell", bid), ("buy", ask), ("sell", ask)):
            assert _band_verdict(state, symbol, side, price) == (OK, "")


@pytest.mark.parametrize(
    ("ticks", "symbol", "last", "side", "price", "reason"),
    [
        # Nickels under 3: exactly 2 ticks from the last price pass, 3 do not.
        (2, OPTION, "0.05", "buy", "0.15", OK),
        (2, OPTION, "0.05", "buy", "0.20", BAND),
        (2, OPTION, "0.30", "sell", "0.20", OK),
        (2, OPTION, "0.30", "sell", "0.15", BAND),
        (3, OPTION, "0.05", "buy", "0.20", OK),
        (3, OPTION, "0.05", "buy", "0.25", BAND),
        (1, OPTION, "0.05", "buy", "0.10", OK),
        (1, OPTION, "0.05", "buy", "0.15", BAND),
        # 0: the fraction alone, as before.
        (0, OPTION, "0.05", "buy", "0.10", BAND),
        (0, OPTION, "0.05", "buy", "0.06", OK),
        # Dimes from 3 (with a 0.1 % band, so that the ticks are what counts).
        (2, OPTION, "3.00", "buy", "3.20", OK),
        (2, OPTION, "3.00", "buy", "3.30", BAND),
        # Across 3, the lower price's tick: 2.90 -> 3.00 is two nickels...
        (2, OPTION, "2.90", "buy", "3.00", OK),
        (2, OPTION, "3.00", "sell", "2.90", OK),
        # ...and 3.10 -> 2.90 three ticks (a dime and two nickels), never two dimes.
        (2, OPTION, "3.10", "sell", "2.90", BAND),
        # SPY's contracts trade in pennies at every price.
        (2, SPY_OPTION, "0.05", "buy", "0.07", OK),
        (2, SPY_OPTION, "0.05", "buy", "0.08", BAND),
        (2, SPY_OPTION, "5.00", "sell", "4.98", OK),
        (2, SPY_OPTION, "5.00", "sell", "4.97", BAND),
    ],
)
@pytest.mark.parametrize("order_type", ["limit", "stop"])
def test_an_option_price_passes_within_max_deviation_ticks_of_the_last_price(
    ticks: int,
    symbol: str,
    last: str,
    side: str,
    price: str,
    reason: ReasonCode,
    order_type: str,
) -> None:
    relative = "0.25" if D(last) < 1 else "0.001"
    options = {"max_deviation": relative, "max_deviation_ticks": ticks}
    state = _banded({"max_deviation": "0.05", "options": options}, trade(symbol, last))
    got, detail = _band_verdict(state, symbol, side, price, order_type)
    assert got is reason, detail
    if reason is ReasonCode.PRICE_BAND:
        assert f"{order_type} price {price} is " in detail
        assert f"from the last price {last} (band {D(relative):.2%}" in detail
        if ticks:
            assert f" or {ticks} ticks of " in detail


def test_the_band_names_its_ticks_when_it_denies() -> None:
    state = _banded(OPTION_BAND, trade(OPTION, "0.05"))
    assert _band_verdict(state, OPTION, "buy", "0.20") == (
        ReasonCode.PRICE_BAND,
        "limit price 0.20 is 300.00% from the last price 0.05 (band 25.00% or 2 ticks of 0.05)",
    )


@pytest.mark.parametrize(
    ("band", "symbol", "last", "limit", "reason"),
    [
        # Equities: no ticks unless risk.yaml gives some. 0.11 is a cent (one
        # tick) from 0.10, and 10 %: outside the 5 % band, as before.
        (OPTION_BAND, "AAPL", "0.10", "0.11", BAND),
        ({"max_deviation": "0.05"}, "AAPL", "0.10", "0.11", BAND),
        ({"max_deviation": "0.05"}, "AAPL", "100", "105", OK),
        ({"max_deviation": "0.05"}, "AAPL", "100", "105.01", BAND),
        # Given, equities count cents from $1, and 0.0001 below.
        ({"max_deviation": "0.0001", "max_deviation_ticks": 1}, "AAPL", "0.10", "0.1001", OK),
        ({"max_deviation": "0.001", "max_deviation_ticks": 2}, "AAPL", "1.00", "1.02", OK),
        ({"max_deviation": "0.001", "max_deviation_ticks": 2}, "AAPL", "1.00", "1.03", BAND),
        ({"max_deviation": "0.0001", "max_deviation_ticks": 1}, "AAPL", "0.10", "0.1002", BAND),
        # The equities' ticks are theirs alone: options keep their own 2...
        ({"max_deviation": "0.05", "max_deviation_ticks": 5}, OPTION, "0.05", "0.15", OK),
        ({"max_deviation": "0.05", "max_deviation_ticks": 5}, OPTION, "0.05", "0.20", BAND),
        # ...and with no options band at all, options get 2 ticks and 5 %.
        ({"max_deviation": "0.05"}, OPTION, "0.05", "0.15", OK),
        ({"max_deviation": "0.05"}, OPTION, "2.00", "2.10", OK),
        ({"max_deviation": "0.05"}, OPTION, "2.00", "2.15", BAND),
        # 0 under options turns them off.
        ({"options": {"max_deviation_ticks": 0}}, OPTION, "0.05", "0.10", BAND),
    ],
)
def test_equities_keep_their_band_and_options_have_ticks_of_their_own(
    band: dict[str, Any], symbol: str, last: str, limit: str, reason: ReasonCode
) -> None:
    state = _banded(band, trade(symbol, last))
    got, detail = _band_verdict(state, symbol, "buy", limit)
    assert got is reason, detail


#: 2025-11-28, the day after Thanksgiving: the NYSE closes at 13:00 New York
#: (18:00 UTC), and weekly contracts expire at that close.
HALF_DAY_CLOSE = 1_764_352_800 * S
HALF_DAY = "O:AAPL251128C00100000"


@pytest.mark.parametrize(
    ("now", "reason"),
    [
        (HALF_DAY_CLOSE - S, ReasonCode.ACCEPTED),
        (HALF_DAY_CLOSE, ReasonCode.CONTRACT_EXPIRED),
        (HALF_DAY_CLOSE + 2 * 3600 * S, ReasonCode.CONTRACT_EXPIRED),
    ],
)
def test_a_contract_expiring_on_a_half_day_is_denied_from_its_13_00_close(
    now: int, reason: ReasonCode
) -> None:
    """It was taken until 16:00: three hours of orders no venue accepts."""
    state = apply(RiskState.initial(LIMITS), trade(HALF_DAY, 2, now))
    i = intent(1, symbol=HALF_DAY, asset_class="option", t=now)
    d = decide(evolve(state, i), i, now)
    assert d.reason is reason, d.detail
    if reason is ReasonCode.CONTRACT_EXPIRED:
        assert d.detail.startswith(f"{HALF_DAY} expired at the close of 2025-11-28 (13:00 New")
