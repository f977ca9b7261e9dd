"""``evolve`` for every event the risk-gate reads, the trading-day reset, and
the reactions (``react``) that obligations in the state produce."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from dataclasses import replace
from decimal import Decimal
from typing import Any, TypeVar

import pytest

from libs.contract.envelope import Event
from libs.contract.events import (
    BarClosed,
    BarPayload,
    BreakerPayload,
    BreakerTripped,
    BrokerConnectionChanged,
    BrokerConnectionPayload,
    FillPayload,
    FillReceived,
    KillSwitchEngaged,
    KillSwitchReleased,
    OperatorActionPayload,
    OrderAccepted,
    OrderAcceptedPayload,
    OrderCanceled,
    OrderCanceledPayload,
    OrderIntentCreated,
    OrderIntentPayload,
    OrderRejected,
    OrderRejectedPayload,
    QuotePayload,
    QuoteUpdated,
    ReasonCode,
    ResumePayload,
    SubmitOrder,
    SubmitOrderPayload,
    TradePayload,
    TradePrinted,
    TradingResumeRequested,
    TradingStateChanged,
    TradingStatePayload,
)
from services.risk_gate.domain.commands import order_id_for
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.limits import RiskLimits, TradingDay
from services.risk_gate.domain.react import react
from services.risk_gate.domain.state import (
    CLOSED_KEPT,
    IdSet,
    Position,
    RiskState,
    frozen_map,
    in_window,
    trading_day,
)

D = Decimal
S = 1_000_000_000
#: 2026-03-10 15:00 UTC = 11:00 New York (EDT).
T0 = 1_773_154_800 * S

LIMITS = RiskLimits.model_validate(
    {
        "accounts": {
            "acct": {"daily_loss_limit": 1000, "reduce_only_at_loss": 600},
            "b": {"daily_loss_limit": 500, "flatten_on_disconnect": False},
        },
        "strategies": {
            "sma": {
                "account": "acct",
                "max_gross_notional": 1_000_000,
                "max_position": 1000,
                "max_order_quantity": 1000,
                "max_order_notional": 1_000_000,
                "rate_limit": {"max_orders": 100, "per_seconds": 1},
            },
            "mr": {
                "account": "b",
                "max_gross_notional": 1_000_000,
                "max_position": 1000,
                "max_order_quantity": 1000,
                "max_order_notional": 1_000_000,
            },
        },
    }
)


class At:
    def __init__(self, ns: int) -> None:
        self.ns = ns

    def now_ns(self) -> int:
        return self.ns


E = TypeVar("E", bound=Event)


def ev(cls: type[E], payload: Any, t: int = T0, cause: Event | None = None) -> E:
    return cls.create(payload, source="test", clock=At(t), cause=cause)


def trade(symbol: str, price: str | int, t: int = T0) -> TradePrinted:
    return ev(TradePrinted, TradePayload(symbol=symbol, price=D(price), size=D(1), feed="demo"), t)


def bar(symbol: str, close: str | int, t: int = T0) -> BarClosed:
    c = D(close)
    payload = BarPayload(
        symbol=symbol,
        interval="1m",
        open=c,
        high=c,
        low=c,
        close=c,
        volume=D(1),
        start_ns=t - 60 * S,
        end_ns=t,
        feed="demo",
    )
    return ev(BarClosed, payload, t)


def intent(quantity: int = 10, side: str = "buy", t: int = T0, **kw: Any) -> OrderIntentCreated:
    fields: dict[str, Any] = {"strategy": "sma", "account": "acct", "symbol": "AAPL"} | kw
    return ev(
        OrderIntentCreated,
        OrderIntentPayload(side=side, quantity=D(quantity), **fields),
        t,
    )


def submitted(state: RiskState, i: OrderIntentCreated, now: int = T0) -> RiskState:
    state = evolve(state, i)
    d = decide(state, i, now)
    assert d.accepted, d.detail
    for e in d.events:
        state = evolve(state, e)
    return state


def fill(
    order_id: uuid.UUID,
    quantity: str | int,
    price: str | int,
    *,
    side: str = "buy",
    leaves: str | int = 0,
    account: str = "acct",
    symbol: str = "AAPL",
    fill_id: str | None = None,
    commission: str | int = 0,
    strategy: str | None = None,
    t: int = T0,
) -> FillReceived:
    return ev(
        FillReceived,
        FillPayload(
            order_id=order_id,
            account=account,
            broker_order_id="b",
            fill_id=fill_id or uuid.uuid4().hex,
            symbol=symbol,
            side=side,
            quantity=D(quantity),
            price=D(price),
            cumulative_quantity=D(quantity),
            leaves_quantity=D(leaves),
            status="partial" if D(leaves) else "complete",
            commission=D(commission),
            strategy=strategy,
        ),
        t,
    )


def op(cls: type[Any], scope: str | None = None, t: int = T0) -> Any:
    if scope is None:
        return ev(cls, OperatorActionPayload(operator="ann", reason="why"), t)
    return ev(cls, ResumePayload(operator="ann", reason="ok", scope=scope), t)


def conn(state: str, account: str = "acct", t: int = T0) -> BrokerConnectionChanged:
    payload = BrokerConnectionPayload(account=account, broker="paper", state=state)
    return ev(BrokerConnectionChanged, payload, t)


def apply(state: RiskState, *events: Event) -> RiskState:
    for e in events:
        state = evolve(state, e)
    return state


def settle(state: RiskState, now: int = T0) -> tuple[RiskState, list[Event]]:
    """React and apply the reaction, as the service does."""
    out = react(state, now)
    return apply(state, *out), out


def start() -> RiskState:
    return apply(RiskState.initial(LIMITS), trade("AAPL", 100), trade("MSFT", 50))


# ------------------------------------------------------------------ marks


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param([trade("AAPL", 101, T0 + S)], D(101), id="trade"),
        pytest.param([bar("AAPL", "99.5", T0 + S)], D("99.5"), id="bar close"),
        pytest.param([trade("AAPL", 90, T0 - S)], D(100), id="older print ignored"),
        pytest.param(
            [trade("AAPL", 101, T0 + 2 * S), trade("AAPL", 102, T0 + S)],
            D(101),
            id="out of order",
        ),
    ],
)
def test_marks(events: list[Event], expected: Decimal) -> None:
    state = apply(start(), *events)
    mark = state.mark("AAPL")
    assert mark is not None
    assert mark.price == expected


def test_irrelevant_events_leave_the_state_as_it_is() -> None:
    state = start()
    quote = ev(
        QuoteUpdated,
        QuotePayload(
            symbol="AAPL",
            bid_price=D(1),
            bid_size=D(1),
            ask_price=D(2),
            ask_size=D(1),
            feed="demo",
        ),
    )
    assert evolve(state, quote) is state


def test_evolve_does_not_change_its_input() -> None:
    state = start()
    before = (dict(state.marks), dict(state.orders), state.pending_intents)
    i = intent()
    after = submitted(state, i)
    assert (dict(state.marks), dict(state.orders), state.pending_intents) == before
    assert len(after.orders) == 1
    assert not state.orders


# ----------------------------------------------------------- orders, fills


def test_intent_decision_and_order_command() -> None:
    state = start()
    i = intent(10)
    state = evolve(state, i)
    assert list(state.pending_intents) == [i.id]
    d = decide(state, i, T0)
    state = evolve(state, d.event)
    assert not state.pending_intents
    assert list(state.awaiting_order) == [i.id], "accepted, its order not out yet"
    assert i.id in state.decided
    assert d.order is not None
    state = evolve(state, d.order)
    assert not state.awaiting_order
    (order,) = state.open_orders()
    assert (order.order_id, order.remaining, order.is_open) == (order_id_for(i.id), D(10), True)
    assert state.orders_in_window("strategy:sma", T0, S) == 1
    # Applying the same command again reserves nothing more.
    assert evolve(state, d.order).orders == state.orders


def test_denied_decision_owes_no_order() -> None:
    state = start()
    i = intent(10, symbol="NVDA")
    state = evolve(state, i)
    d = decide(state, i, T0)
    assert d.reason is ReasonCode.NO_MARKET_PRICE
    state = evolve(state, d.event)
    assert not state.awaiting_order
    assert not state.pending_intents
    assert react(state, T0) == []


@pytest.mark.parametrize(
    ("make", "status", "remaining"),
    [
        pytest.param(
            lambda oid: ev(
                OrderAccepted,
                OrderAcceptedPayload(
                    order_id=oid, account="acct", broker_order_id="b", symbol="AAPL"
                ),
            ),
            "open",  # the gate does not read broker acks: the order stays as it was
            D(10),
            id="accepted",
        ),
        pytest.param(
            lambda oid: ev(
                OrderRejected, OrderRejectedPayload(order_id=oid, account="acct", reason="no")
            ),
            "closed",
            D(0),
            id="rejected",
        ),
        pytest.param(
            lambda oid: ev(OrderCanceled, OrderCanceledPayload(order_id=oid, account="acct")),
            "closed",
            D(0),
            id="canceled",
        ),
        pytest.param(lambda oid: fill(oid, 4, 100, leaves=6), "open", D(6), id="partial"),
        pytest.param(lambda oid: fill(oid, 10, 100), "closed", D(0), id="complete"),
    ],
)
def test_broker_events_update_the_order(make: Any, status: str, remaining: Decimal) -> None:
    i = intent(10)
    state = submitted(start(), i)
    state = evolve(state, make(order_id_for(i.id)))
    oid = order_id_for(i.id)
    order = state.orders.get(oid) or state.closed_orders[oid]
    assert (order.is_open, order.remaining) == (status == "open", remaining)
    assert (oid in state.closed_orders) == (status == "closed")
    assert len(state.open_orders()) == (1 if remaining else 0)


def test_fills_book_account_and_strategy_positions_once() -> None:
    i = intent(10)
    state = submitted(start(), i)
    f = fill(order_id_for(i.id), 10, 100, fill_id="x1")
    state = evolve(state, f)
    again = evolve(state, fill(order_id_for(i.id), 10, 100, fill_id="x1"))
    assert state.account_position("acct", "AAPL") == D(10)
    assert state.strategy_position("sma", "acct", "AAPL") == D(10)
    assert again.positions == state.positions, "the same execution is booked once"
    # A flatten's closing fill names the strategy it closes; no order of ours.
    close = fill(uuid.uuid4(), 10, 100, side="sell", strategy="sma")
    state = evolve(state, close)
    assert state.account_position("acct", "AAPL") == 0
    assert state.strategy_position("sma", "acct", "AAPL") == 0


# (fills as (side, qty, price, commission), mark) -> (qty, avg, realized today, day P&L)
PNL_CASES = [
    ([("buy", 10, 100, 0)], 105, (10, 100, 0, 50)),
    ([("buy", 10, 100, 0), ("buy", 10, 110, 0)], 100, (20, 105, 0, -100)),
    ([("buy", 10, 100, 0), ("sell", 4, 110, 0)], 110, (6, 100, 40, 100)),
    ([("buy", 10, 100, 1), ("sell", 10, 90, 1)], 90, (0, 0, -102, -102)),
    ([("buy", 10, 100, 0), ("sell", 15, 90, 0)], 80, (-5, 90, -100, -50)),
    ([("sell", 10, 100, 0), ("buy", 10, 105, 0)], 100, (0, 0, -50, -50)),
    ([("sell", 10, 100, 0)], 103, (-10, 100, 0, -30)),
]


@pytest.mark.parametrize(("fills", "mark", "expected"), PNL_CASES)
def test_average_cost_pnl(
    fills: list[tuple[str, int, int, int]], mark: int, expected: tuple[int, int, int, int]
) -> None:
    state = start()
    for k, (side, qty, price, commission) in enumerate(fills):
        state = evolve(
            state,
            fill(uuid.uuid4(), qty, price, side=side, commission=commission, t=T0 + k + 1),
        )
    state = evolve(state, trade("AAPL", mark, T0 + S))
    pos = state.positions[("acct", "AAPL")]
    assert (pos.quantity, pos.avg_price, pos.realized_day, state.day_pnl("acct")) == tuple(
        D(x) for x in expected
    )


def test_option_pnl_uses_the_contract_multiplier() -> None:
    sym = "O:AAPL260320C00100000"
    state = evolve(start(), fill(uuid.uuid4(), 2, "1.50", symbol=sym))
    state = evolve(state, trade(sym, "1.20", T0 + S))
    assert state.day_pnl("acct") == D("-60")


# ------------------------------------------------------------ trading day


@pytest.mark.parametrize(
    ("utc", "day"),
    [
        ("2026-03-10T07:59:59+00:00", "2026-03-09"),  # 03:59:59 EDT
        ("2026-03-10T08:00:00+00:00", "2026-03-10"),  # 04:00 EDT
        ("2026-01-15T08:59:59+00:00", "2026-01-14"),  # 03:59:59 EST
        ("2026-01-15T09:00:00+00:00", "2026-01-15"),  # 04:00 EST
    ],
)
def test_trading_day_in_exchange_time(utc: str, day: str) -> None:
    ns = int(dt.datetime.fromisoformat(utc).timestamp()) * S
    assert trading_day(ns, LIMITS.trading_day) == dt.date.fromisoformat(day)


def test_new_trading_day_resets_day_pnl_and_rearms_the_breaker() -> None:
    state = start()
    state = evolve(state, fill(uuid.uuid4(), 10, 100))
    state = evolve(state, fill(uuid.uuid4(), 5, 90, side="sell"))
    state = evolve(state, trade("AAPL", 80, T0 + S))
    assert state.day_pnl("acct") == D(-50) + D(5) * D(-20)
    tripped = ev(BreakerTripped, BreakerPayload(account="acct", breaker="daily_loss"))
    state = evolve(state, tripped)
    assert state.loss_tripped["acct"] == dt.date(2026, 3, 10)
    # Next morning, 04:00 New York: a pre-market print at 82.
    next_day = T0 + 17 * 3600 * S
    state = evolve(state, trade("AAPL", 82, next_day))
    assert state.day == dt.date(2026, 3, 11)
    pos = state.positions[("acct", "AAPL")]
    assert pos.realized_day == 0
    assert pos.day_basis == D(80), "carried position measured from the last mark before the day"
    assert pos.avg_price == D(100)
    assert state.day_pnl("acct") == D(10)
    assert state.loss_tripped["acct"] != state.day


def test_position_new_day_when_flat_keeps_basis_at_cost() -> None:
    p = Position(quantity=D(0), realized_day=D(5))
    assert p.new_day(D(10)) == Position(realized_day=D(0))


# ------------------------------------------------------- breaker and reactions


def test_daily_loss_obligation_reaction_and_held_halt() -> None:
    i = intent(20, t=T0)
    state = submitted(start(), i)
    other = intent(5, order_type="limit", limit_price=D(99))
    state = submitted(state, other)
    state = evolve(state, fill(order_id_for(i.id), 20, 100))
    state = evolve(state, trade("AAPL", 50, T0 + S))
    (ob,) = state.obligations
    assert (ob.kind, ob.scope, ob.value) == ("daily_loss", "acct", D(-1000))
    state = evolve(state, trade("AAPL", 1, T0 + 2 * S))
    kinds = [o.kind for o in state.obligations]
    assert kinds == ["daily_loss"], "one obligation, not one per print"
    state, out = settle(state, T0 + 3 * S)
    assert [e.type for e in out] == [
        "BreakerTripped",
        "CancelOrder",
        "FlattenAccount",
        "TradingStateChanged",
    ]
    assert all(e.causation_id == ob.trigger_id for e in out)
    assert out[1].payload.order_id == order_id_for(other.id)
    assert not state.obligations
    assert state.scope_state("acct").state == "halted"
    # Lower still: the breaker has tripped today, no second trip.
    state = evolve(state, trade("AAPL", "0.5", T0 + 4 * S))
    assert react(state, T0 + 4 * S) == []


def test_a_loss_on_an_average_cost_with_no_end_still_trips_the_breaker() -> None:
    # Bought 1 at 100 and 2 at 100.01: the average is 100.00666..., so the day
    # P&L against it has 28 significant digits. The breaker's event must still
    # build (the contract carries 12 places): it once failed to validate, and
    # the breaker never tripped.
    state = evolve(start(), fill(uuid.uuid4(), 100, 100))
    state = evolve(state, fill(uuid.uuid4(), 200, "100.01"))
    assert state.positions[("acct", "AAPL")].avg_price.as_tuple().exponent == -25
    state = evolve(state, trade("AAPL", "96.5", T0 + S))
    (ob,) = state.obligations
    assert ob.kind == "daily_loss"
    assert ob.value == D("-1052.000000000000")  # -1052.0000...0002 to 12 places
    state, out = settle(state, T0 + 2 * S)
    breaker = out[0]
    assert isinstance(breaker, BreakerTripped)
    assert breaker.payload.value == D("-1052.000000000000")
    assert state.scope_state("acct").state == "halted"


def test_a_fill_that_marks_a_symbol_checks_every_account_holding_it() -> None:
    """A fill is a price (it marks the symbol) for every account holding the
    symbol, not only the one it fills: the other's breaker trips on it, as on
    a print at that price, rather than its intents being denied daily_loss
    with its position left open until the next print."""
    state = evolve(start(), fill(uuid.uuid4(), 10, 100, account="b", strategy="mr"))
    state = evolve(state, fill(uuid.uuid4(), 1, 40, t=T0 + S))  # acct buys 1 at 40
    assert state.day_pnl("b") == D(-600)  # past b's limit of 500
    (ob,) = state.obligations
    assert (ob.kind, ob.scope, ob.value) == ("daily_loss", "b", D(-600))
    state, out = settle(state, T0 + S)
    assert [e.type for e in out] == ["BreakerTripped", "FlattenAccount", "TradingStateChanged"]
    assert state.scope_state("b").state == "halted"


def test_reduce_only_level_before_the_breaker() -> None:
    state = evolve(start(), fill(uuid.uuid4(), 10, 100))
    state = evolve(state, trade("AAPL", 35, T0 + S))
    state, out = settle(state, T0 + S)
    assert [(e.type, e.payload.state) for e in out] == [("TradingStateChanged", "reducing")]
    assert state.scope_state("acct").state == "reducing"
    # After a resume the same loss does not put it back in reducing today.
    state = evolve(state, op(TradingResumeRequested, "acct"))
    state, out = settle(state, T0 + S)
    assert state.scope_state("acct").state == "active"
    state = evolve(state, trade("AAPL", 36, T0 + 2 * S))
    assert react(state, T0 + 2 * S) == []


@pytest.mark.parametrize(
    ("held", "orders", "canceled"),
    [
        pytest.param(100, [("buy", 10)], [0], id="long: a buy grows it"),
        pytest.param(100, [("sell", 30), ("sell", 70)], [], id="long: sells down to zero stay"),
        pytest.param(100, [("sell", 30), ("sell", 80)], [1], id="long: a sell past zero"),
        pytest.param(100, [("sell", 120), ("sell", 30)], [0], id="long: the oldest past zero"),
        pytest.param(-100, [("sell", 10), ("buy", 50)], [0], id="short: a sell grows it"),
        pytest.param(0, [("buy", 10), ("sell", 10)], [0, 1], id="flat: both grow it"),
        pytest.param(100, [("buy", 10, "MSFT")], [0], id="another symbol, not held"),
    ],
)
def test_reducing_cancels_the_open_orders_that_would_grow_a_position(
    held: int, orders: list[tuple[Any, ...]], canceled: list[int]
) -> None:
    """Reduce-only holds for the orders already working too: those placed
    while the account was active that would grow a position (by the rule a
    new order is checked by) are canceled as the account goes to reducing.
    Left working, a resting buy filled and the position grew while the
    account was reduce-only. Orders of other accounts are left alone."""
    state = start()
    if held:
        side = "buy" if held > 0 else "sell"
        state = evolve(state, fill(uuid.uuid4(), abs(held), 100, side=side, strategy="sma"))
    placed = []
    for k, (side, quantity, *symbol) in enumerate(orders):
        i = intent(quantity, side, T0 + k + 1, symbol=(symbol or ["AAPL"])[0])
        state = submitted(state, i, T0 + k + 1)
        placed.append(order_id_for(i.id))
    other = intent(10, "buy", T0, strategy="mr", account="b")
    state = submitted(state, other)
    # Day P&L -700, past reduce-only (600): held, or realized by a round trip.
    if held:
        state = evolve(state, trade("AAPL", 93 if held > 0 else 107, T0 + S))
    else:
        state = evolve(state, fill(uuid.uuid4(), 100, 100, strategy="sma", t=T0 + S))
        state = evolve(state, fill(uuid.uuid4(), 100, 93, side="sell", strategy="sma", t=T0 + S))
    assert state.day_pnl("acct") == D(-700)
    state, out = settle(state, T0 + S)
    assert state.scope_state("acct").state == "reducing"
    assert [e.type for e in out] == ["CancelOrder"] * len(canceled) + ["TradingStateChanged"]
    assert [e.payload.order_id for e in out[:-1]] == [placed[k] for k in canceled]
    assert react(state, T0 + 2 * S) == [], "once"


#: 04:00 New York on 2026-03-11: the next trading day starts.
NEXT_DAY = T0 + 17 * 3600 * S


@pytest.mark.parametrize(
    ("kind", "recorded", "loss", "next_loss"),
    [
        pytest.param("daily_loss", "loss_tripped", 89, 78, id="breaker"),  # -1,100
        pytest.param("reduce", "loss_reduced", 93, 86, id="reduce-only"),  # -700
    ],
)
def test_a_loss_reacted_to_on_the_next_day_is_recorded_on_its_own_day(
    kind: str, recorded: str, loss: int, next_loss: int
) -> None:
    """A loss 0.1 s before the next trading day, reacted to after the day began
    (a print of the new day landed first, or the gate was down overnight): the
    breaker trips (or the account reduces) for the day of the loss, and the new
    day keeps its own breaker and reduce-only level."""
    state = evolve(start(), fill(uuid.uuid4(), 100, 100))
    state = evolve(state, trade("AAPL", loss, NEXT_DAY - S // 10))
    assert [o.kind for o in state.obligations] == [kind]
    state = evolve(state, trade("AAPL", loss, NEXT_DAY))
    assert state.day == dt.date(2026, 3, 11)
    state, out = settle(state, NEXT_DAY + S // 10)
    assert out
    assert getattr(state, recorded) == {"acct": dt.date(2026, 3, 10)}
    # The operator resumes; the new day's own loss trips (reduces) again.
    state, _ = settle(evolve(state, op(TradingResumeRequested, "acct", NEXT_DAY + 60 * S)))
    assert state.scope_state("acct").state == "active"
    state = evolve(state, trade("AAPL", next_loss, NEXT_DAY + 61 * S))
    assert [o.kind for o in state.obligations] == [kind]


def _intent_of_b(t: int) -> OrderIntentCreated:
    return intent(1, t=t, strategy="mr", account="b", symbol="MSFT")


def _fill_of_b(t: int) -> FillReceived:
    return fill(uuid.uuid4(), 1, 50, account="b", symbol="MSFT", strategy="mr", t=t)


@pytest.mark.parametrize(
    "make", [pytest.param(_intent_of_b, id="an intent"), pytest.param(_fill_of_b, id="a fill")]
)
@pytest.mark.parametrize(
    "ahead",
    [pytest.param(24 * 3600 * S, id="a day ahead"), pytest.param(17 * 3600 * S, id="17 h ahead")],
)
def test_an_event_stamped_a_day_ahead_of_when_it_was_made_does_not_roll_the_trading_day(
    make: Any, ahead: int
) -> None:
    """An intent or a fill (of another account) stamped a day ahead of its own
    ts_init (a bad clock: a broker's fill time, a publisher's bad stamp) rolled
    the whole gate to the next trading day: the day P&L of an account past its
    daily loss limit restarted at 0, its breaker re-armed, and the real next
    day rolled nothing at 04:00 (its P&L ran on from the bad roll, and a
    breaker tripped after it counted for that day). Such an event is on the
    day it was made, not the day it claims."""
    state = evolve(start(), fill(uuid.uuid4(), 20, 100))
    state = evolve(state, trade("AAPL", 50, T0 + S))
    state, _ = settle(state, T0 + 2 * S)
    assert state.scope_state("acct").state == "halted"
    assert state.day_pnl("acct") == D(-1000)
    made = make(T0 + 3 * S)
    bad = made.model_copy(update={"ts_event": made.ts_init + ahead})
    state = evolve(state, bad)
    assert state.day == dt.date(2026, 3, 10)
    assert state.day_pnl("acct") == D(-1000)
    assert state.loss_tripped["acct"] == state.day
    # The real next day starts at its own 04:00.
    state = evolve(state, trade("AAPL", 50, NEXT_DAY))
    assert state.day == dt.date(2026, 3, 11)
    assert state.day_pnl("acct") == 0
    assert state.loss_tripped["acct"] != state.day


@pytest.mark.parametrize(
    ("ts_init", "rolled"),
    [
        pytest.param(NEXT_DAY - S, True, id="made 1 s before the day, within the skew"),
        pytest.param(NEXT_DAY - 10 * S, False, id="made 10 s before the day"),
    ],
)
def test_an_event_a_little_ahead_of_its_publisher_s_clock_rolls_the_day_on_its_own_time(
    ts_init: int, rolled: bool
) -> None:
    """A broker's fill time just past the day's start, seen by a gateway whose
    clock is a little behind the broker's: the fill is the new day's. Further
    ahead than CLOCK_SKEW_NS (Event.market_ns) it is a bad stamp, on the day it was made."""
    state = evolve(start(), fill(uuid.uuid4(), 1, 100, t=NEXT_DAY - 60 * S))
    made = fill(uuid.uuid4(), 1, 100, t=ts_init)
    state = evolve(state, made.model_copy(update={"ts_event": NEXT_DAY + S}))
    assert state.day == (dt.date(2026, 3, 11) if rolled else dt.date(2026, 3, 10))


def test_reaction_ids_are_deterministic() -> None:
    state = evolve(start(), fill(uuid.uuid4(), 10, 100))
    state = evolve(state, trade("AAPL", 1, T0 + S))
    first = react(state, T0 + S)
    second = react(state, T0 + 5 * S)
    assert [e.id for e in first] == [e.id for e in second]


def test_kill_switch_flattens_every_account_and_halts_everything_once() -> None:
    i = intent(10)
    state = submitted(start(), i)
    state = evolve(state, fill(uuid.uuid4(), 3, 50, account="b", symbol="MSFT"))
    state = evolve(state, op(KillSwitchEngaged))
    assert state.kill_switch.engaged
    state, out = settle(state)
    where = [(e.type, getattr(e.payload, "account", None) or e.payload.scope) for e in out]
    assert where == [
        ("BreakerTripped", "acct"),
        ("CancelOrder", "acct"),
        ("FlattenAccount", "acct"),
        ("BreakerTripped", "b"),
        ("FlattenAccount", "b"),
        ("TradingStateChanged", "global"),
    ]
    assert state.scope_state("global").state == "halted"
    again = ev(KillSwitchEngaged, OperatorActionPayload(operator="bob", reason="later"), T0 + S)
    assert evolve(state, again).obligations == ()
    # Who engaged it, why and when stay those of the first engagement.
    assert evolve(state, again).kill_switch == state.kill_switch
    assert (state.kill_switch.operator, state.kill_switch.reason) == ("ann", "why")
    state = evolve(state, op(KillSwitchReleased))
    assert not state.kill_switch.engaged
    assert state.scope_state("global").state == "halted", "held until resumed"
    state, out = settle(evolve(state, op(TradingResumeRequested, "global")))
    assert [e.payload.state for e in out] == ["active"]
    assert state.scope_state("global").state == "active"


@pytest.mark.parametrize(
    ("events", "kinds"),
    [
        pytest.param([conn("disconnected")], ["connection_lost"], id="lost"),
        pytest.param(
            [conn("disconnected"), conn("disconnected")], ["connection_lost"], id="lost twice"
        ),
        pytest.param([conn("reconnecting")], [], id="reconnecting"),
        pytest.param([conn("connected")], [], id="connected"),
        pytest.param([conn("disconnected", "b")], [], id="no flatten configured"),
        pytest.param([conn("disconnected", "unknown")], [], id="not our account"),
    ],
)
def test_broker_connection(events: list[Event], kinds: list[str]) -> None:
    state = apply(start(), *events)
    assert [o.kind for o in state.obligations] == kinds


def test_connection_lost_reaction_flattens_and_halts() -> None:
    i = intent(10)
    state = submitted(start(), i)
    state, out = settle(evolve(state, conn("disconnected")))
    assert [e.type for e in out] == [
        "BreakerTripped",
        "CancelOrder",
        "FlattenAccount",
        "TradingStateChanged",
    ]
    assert out[0].payload.breaker == "connection_lost"
    assert state.scope_state("acct").state == "halted"
    # Reconnecting does not resume by itself.
    state = evolve(state, conn("connected"))
    assert state.scope_state("acct").state == "halted"
    assert react(state, T0) == []


def test_a_connection_lost_halt_is_not_lowered_to_reducing_by_a_fold() -> None:
    """The gate reacts to a disconnect at once, but a print past the reduce-only
    level can land in the stream between the disconnect and the reaction. The
    fold of the store must not owe a reduce that, reacted to after the halt,
    would move the account from halted to reducing."""
    state = evolve(start(), fill(uuid.uuid4(), 100, 100))
    lost, print_ = conn("disconnected", t=T0 + S), trade("AAPL", 93, T0 + S + 1)
    live, reaction = settle(evolve(state, lost), T0 + S)
    live = evolve(live, print_)  # day P&L -700: past reduce-only (600), not the limit
    assert react(live, T0 + 2 * S) == []
    folded = apply(state, lost, print_, *reaction)
    assert folded.scope_state("acct").state == "halted"
    assert react(folded, T0 + 3 * S) == [], "restarting on the fold publishes nothing"
    assert folded == live


def test_a_reduce_level_reached_as_a_resume_lands_is_folded_as_the_gate_reacted() -> None:
    """The gate resumes a halted account at once, then a print past the
    reduce-only level puts it in reducing; in the stream the print can land
    ahead of the resume's reaction. The fold must reach the live state, with
    the reduce recorded for the day: else, after a restart, the operator's next
    resume that day is undone by the next print, which live it is not."""
    state = evolve(start(), fill(uuid.uuid4(), 100, 100))
    state, _ = settle(evolve(state, conn("disconnected", t=T0 + S)), T0 + S)
    resume = op(TradingResumeRequested, "acct", T0 + 2 * S)
    live, resumed = settle(evolve(state, resume), T0 + 2 * S)
    print_ = trade("AAPL", 93, T0 + 2 * S + 1)  # day P&L -700: past reduce-only (600)
    live, reduced = settle(evolve(live, print_), T0 + 2 * S)
    assert live.scope_state("acct").state == "reducing"
    folded = apply(state, resume, print_, *resumed, *reduced)
    assert folded == live
    # The operator resumes again; today's reduce does not come back.
    again = op(TradingResumeRequested, "acct", T0 + 3 * S)
    later = trade("AAPL", 92, T0 + 4 * S)
    for s in (live, folded):
        s, _ = settle(evolve(s, again), T0 + 3 * S)
        assert s.scope_state("acct").state == "active"
        assert react(evolve(s, later), T0 + 4 * S) == []


@pytest.mark.parametrize(
    "while_halted",
    [
        pytest.param([trade("AAPL", 93, T0 + 2 * S)], id="still held, no print since"),
        pytest.param(
            [fill(uuid.uuid4(), 100, 93, side="sell", strategy="sma", t=T0 + 2 * S)],
            id="flattened",
        ),
    ],
)
def test_an_account_resumed_past_its_reduce_only_level_is_put_in_reducing(
    while_halted: list[Event],
) -> None:
    """A loss that passes the reduce-only level while the account is halted
    (here by a lost connection) owes no reduce then: a halt is never lowered.
    Resumed with the loss still there, the account reduces at once, not at the
    next print of a symbol it holds (none if the halt flattened it, minutes
    for a thin one): until then any order passed, past the level."""
    state = evolve(start(), fill(uuid.uuid4(), 100, 100, strategy="sma"))
    state, _ = settle(evolve(state, conn("disconnected", t=T0 + S)), T0 + S)
    state = apply(state, *while_halted)  # day P&L -700: past reduce-only (600)
    assert state.day_pnl("acct") == D(-700)
    state, out = settle(state, T0 + 2 * S)
    assert out == []
    state, out = settle(evolve(state, op(TradingResumeRequested, "acct", T0 + 3 * S)), T0 + 3 * S)
    assert [e.payload.state for e in out] == ["active", "reducing"]
    assert state.scope_state("acct").state == "reducing"
    buy = intent(10, t=T0 + 4 * S)
    assert decide(evolve(state, buy), buy, T0 + 4 * S).reason is ReasonCode.REDUCE_ONLY
    # Resumed again, the operator's word holds for the rest of the day.
    state, out = settle(evolve(state, op(TradingResumeRequested, "acct", T0 + 5 * S)), T0 + 5 * S)
    assert [e.payload.state for e in out] == ["active"]
    assert decide(evolve(state, buy), buy, T0 + 5 * S).accepted


def test_a_reduce_owed_to_a_scope_that_halts_is_dropped_and_never_lowers_it() -> None:
    state = evolve(start(), fill(uuid.uuid4(), 10, 100))
    state = evolve(state, trade("AAPL", 35, T0 + S))
    (reduce,) = state.obligations
    assert reduce.kind == "reduce"
    halted = TradingStatePayload(scope="acct", state="halted", previous="active", reason="x")
    # A halt from elsewhere, before the reduce was reacted to: the reduce is moot.
    after = evolve(state, ev(TradingStateChanged, halted))
    assert after.obligations == ()
    assert react(after, T0 + S) == []
    # And a reduce reaction never lowers a halted scope, whatever the state holds.
    assert react(replace(after, obligations=(reduce,)), T0 + S) == []


def test_resume_of_an_active_scope_is_a_no_op() -> None:
    state = evolve(start(), op(TradingResumeRequested, "acct"))
    assert state.obligations == ()


def test_a_resume_repeated_before_the_first_is_reacted_to_owes_nothing_in_a_fold() -> None:
    """An operator resumes twice in a row; the gate reacts to the first at once
    and finds the account active at the second, but in the stream the second
    can land before the first one's reaction. The fold of the store must not
    keep the second as owed: after a restart it would raise the account to
    active on its own, here out of the halt of a daily-loss breaker that
    tripped later."""
    state = evolve(start(), fill(uuid.uuid4(), 100, 100))
    state, _ = settle(evolve(state, conn("disconnected", t=T0 + S)), T0 + S)
    assert state.scope_state("acct").state == "halted"
    first = op(TradingResumeRequested, "acct", T0 + 2 * S)
    again = op(TradingResumeRequested, "acct", T0 + 2 * S + 1)
    live, resumed = settle(evolve(state, first), T0 + 2 * S)
    live = evolve(live, again)
    assert react(live, T0 + 2 * S) == []
    loss = trade("AAPL", 89, T0 + 3 * S)  # day P&L -1,100: the breaker
    live, breaker = settle(evolve(live, loss), T0 + 3 * S)
    assert live.scope_state("acct").state == "halted"
    folded = apply(state, first, again, *resumed, loss, *breaker)
    assert folded.scope_state("acct").state == "halted"
    assert react(folded, T0 + 4 * S) == [], "restarting on the fold publishes nothing"
    assert folded.obligations == live.obligations == ()


def test_state_change_from_elsewhere_does_not_clear_an_obligation() -> None:
    state = evolve(start(), conn("disconnected"))
    unrelated = ev(
        TradingStateChanged,
        TradingStatePayload(scope="acct", state="halted", previous="active", reason="x"),
    )
    state = evolve(state, unrelated)
    assert [o.kind for o in state.obligations] == ["connection_lost"]


def test_accepted_decision_without_its_order_is_owed_after_a_crash() -> None:
    """The decision was published, the process died before the order: the
    rebuilt state owes the SubmitOrder, with the id it would have had."""
    state = start()
    i = intent(10)
    state = evolve(state, i)
    d = decide(state, i, T0)
    state = evolve(state, d.event)
    (owed,) = react(state, T0 + 3 * S)
    assert isinstance(owed, SubmitOrder)
    assert d.order is not None
    assert owed.id == d.order.id
    assert owed.payload == d.order.payload
    state = evolve(state, owed)
    assert react(state, T0 + 3 * S) == []


def test_late_fill_after_a_cancel_is_booked_to_the_orders_strategy() -> None:
    i = intent(10)
    state = submitted(start(), i)
    oid = order_id_for(i.id)
    state = evolve(state, ev(OrderCanceled, OrderCanceledPayload(order_id=oid, account="acct")))
    assert not state.open_orders()
    state = evolve(state, fill(oid, 3, 100, leaves=7))
    assert state.strategy_position("sma", "acct", "AAPL") == D(3)
    assert not state.open_orders(), "a closed order stays closed"


def test_closed_orders_are_bounded() -> None:
    state = start()
    for k in range(CLOSED_KEPT + 5):
        t = T0 + k * S // 50  # 50 a second: under the rate limit
        i = intent(1, side="buy" if k % 2 else "sell", t=t)
        state = submitted(state, i, t)
        state = evolve(state, fill(order_id_for(i.id), 1, 100, side=i.payload.side, t=t))
    assert len(state.closed_orders) == CLOSED_KEPT
    assert not state.orders
    assert len(state.decided) == CLOSED_KEPT + 5


def _open_quantity_by_definition(state: RiskState) -> dict[tuple[str, str | None, str], Any]:
    """The open orders' remaining quantity per book and side, summed afresh."""
    books: dict[tuple[str, str | None, str], list[Decimal]] = {}
    for o in state.orders.values():
        sides = books.setdefault((o.account, o.strategy, o.symbol), [D(0), D(0)])
        sides[0 if o.side == "buy" else 1] += o.remaining
    return {k: (b, s) for k, (b, s) in books.items() if b or s}


def test_open_quantity_index_agrees_with_the_open_orders() -> None:
    """The checks read ``open_quantity`` instead of going through the open
    orders: after every submit, partial or complete fill, cancel, reject and
    late fill, in two accounts (one traded by two strategies) and two
    symbols, it must say what summing the open orders says."""
    rng = random.Random(11)
    state = start()
    books = [("acct", "sma"), ("acct", "pairs"), ("b", "mr")]  # two strategies on acct
    ever: list[tuple[uuid.UUID, str, str, str]] = []  # order id, account, symbol, side
    for step in range(1_500):
        t = T0 + step * S // 100
        roll = rng.random()
        open_ids = list(state.orders)
        if roll < 0.35 or not open_ids:
            account, strategy = rng.choice(books)
            symbol, side = rng.choice(["AAPL", "MSFT"]), rng.choice(["buy", "sell"])
            oid = uuid.uuid4()
            payload = SubmitOrderPayload(
                order_id=oid,
                intent_id=uuid.uuid4(),
                strategy=strategy,
                account=account,
                symbol=symbol,
                side=side,
                quantity=D(rng.randint(1, 50)),
            )
            state = evolve(state, ev(SubmitOrder, payload, t))
            ever.append((oid, account, symbol, side))
        elif roll < 0.9:
            order = state.orders[rng.choice(open_ids)]
            part = rng.randint(1, int(order.remaining))
            leaves = str(order.remaining - part)
            if roll < 0.8:
                state = evolve(
                    state,
                    fill(
                        order.order_id,
                        part,
                        100,
                        side=order.side,
                        leaves=leaves,
                        account=order.account,
                        symbol=order.symbol,
                        t=t,
                    ),
                )
            elif roll < 0.85:
                payload_c = OrderCanceledPayload(order_id=order.order_id, account=order.account)
                state = evolve(state, ev(OrderCanceled, payload_c, t))
            else:
                payload_r = OrderRejectedPayload(
                    order_id=order.order_id, account=order.account, reason="no"
                )
                state = evolve(state, ev(OrderRejected, payload_r, t))
        else:  # a late fill, possibly of an order already closed
            oid, account, symbol, side = rng.choice(ever)
            late = fill(oid, 1, 100, side=side, leaves=0, account=account, symbol=symbol, t=t)
            state = evolve(state, late)
        expected = _open_quantity_by_definition(state)
        assert dict(state.open_quantity) == expected, step
        for account in ("acct", "b"):
            for symbol in ("AAPL", "MSFT"):
                per_strategy = [
                    expected.get((account, strategy, symbol), (D(0), D(0)))
                    for acct, strategy in books
                    if acct == account
                ]
                for (_, strategy), mine in zip(
                    [b for b in books if b[0] == account], per_strategy, strict=True
                ):
                    assert state.open_by_side(account, symbol, strategy) == mine
                assert state.open_by_side(account, symbol) == (
                    sum((b for b, _ in per_strategy), D(0)),
                    sum((s for _, s in per_strategy), D(0)),
                )
    assert len(ever) > 300, "the walk opened many orders"
    assert len(state.closed_orders) == CLOSED_KEPT, "and closed many"


def test_id_set_is_a_set() -> None:
    ids = [uuid.uuid4() for _ in range(1000)]
    s = IdSet()
    for x in ids:
        s = s.add(x)
    assert s.add(ids[3]) is s
    assert len(s) == 1000
    assert all(x in s for x in ids)
    assert uuid.uuid4() not in s
    assert set(s) == set(ids)


def test_id_set_versions_stay_valid_when_a_history_branches() -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    base = IdSet().add(a)
    left = base.add(b)  # the newest version: shares base's storage
    right = base.add(c)  # base is no longer the newest: a branch of its own
    again = base.add(b)  # the same id added to an old version twice
    assert (a in base, b in base, c in base) == (True, False, False)
    assert (b in left, c in left) == (True, False)
    assert (b in right, c in right) == (False, True)
    assert again == left
    assert again is not left
    assert left != right
    assert len(base) == 1
    assert (len(left), len(right)) == (2, 2)
    grown = left.add(c)  # left is still the newest of its own history
    assert set(grown) == {a, b, c}
    assert c not in left
    assert b not in right.add(a)


def _trading_day_by_wall_clock(ts_ns: int, day: TradingDay) -> dt.date:
    """The definition, computed afresh (no cached window)."""
    local = dt.datetime.fromtimestamp(ts_ns // S, tz=day.zone)
    start = dt.datetime.combine(local.date(), day.start, tzinfo=day.zone)
    return local.date() if local >= start else local.date() - dt.timedelta(days=1)


@pytest.mark.parametrize("start_at", ["04:00", "00:00", "01:30", "02:30", "23:59"])
def test_trading_day_window_agrees_with_the_definition_across_dst(start_at: str) -> None:
    # Every 7 minutes (and each second around the day's start) over the three
    # days around each 2026 DST change in New York, forwards and backwards.
    day = TradingDay(start=dt.time.fromisoformat(start_at))
    t0 = int(dt.datetime(2026, 3, 7, tzinfo=dt.UTC).timestamp())
    stamps = [t0 + k * 420 for k in range(24 * 60 // 7 * 3)]
    t1 = int(dt.datetime(2026, 10, 31, tzinfo=dt.UTC).timestamp())
    stamps += [t1 + k * 420 for k in range(24 * 60 // 7 * 3)]
    for s in list(stamps):
        local = dt.datetime.fromtimestamp(s, tz=day.zone)
        edge = dt.datetime.combine(local.date(), day.start, tzinfo=day.zone)
        stamps += [int(edge.timestamp()) + d for d in (-1, 0, 1)]
    for seconds in [*stamps, *reversed(stamps)]:
        ns = seconds * S + 999_999_999
        assert trading_day(ns, day) == _trading_day_by_wall_clock(ns, day), (start_at, seconds)


# ------------------------------------------------------------ rate windows


def test_rate_window_agrees_with_its_definition_when_the_clock_steps_back() -> None:
    """Kept ascending, trimmed and counted by bisection, the window must count
    what the definition counts (each submission trims what is no later than
    its own time minus the window; a count takes what is later than now minus
    the window), also when a submission's time is earlier than the one before
    it (a wall clock stepped back)."""
    rng = random.Random(7)
    window = 1_000
    times: tuple[int, ...] = ()
    reference: list[int] = []  # the definition, in arrival order
    t = 10_000
    for _ in range(2_000):
        t += rng.randint(-150, 60)  # mostly forward, sometimes back
        times = in_window(times, t, window)
        reference = [s for s in reference if s > t - window] + [t]
        assert list(times) == sorted(reference)
        state = replace(RiskState.initial(LIMITS), rate_windows=frozen_map({"k": times}))
        for now in (t, t + rng.randint(-window, 2 * window)):
            expected = sum(1 for s in reference if s > now - window)
            assert state.orders_in_window("k", now, window) == expected


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda t: trade("AAPL", 150, t), id="a trade"),
        pytest.param(lambda t: fill(uuid.uuid4(), 1, 150, account="b", t=t), id="a fill"),
    ],
)
def test_a_price_stamped_a_day_ahead_does_not_hold_the_mark_without_a_max_mark_age(
    make: Any,
) -> None:
    """With no max_mark_age_s (no price is ever too old, so none is dropped as
    stamped ahead), a print or a fill stamped a day ahead of when it was made
    held the gate's mark for a day, newest by its raw ts_event: every real
    price after it was "older", so a long position fallen from 100 to 30 was
    valued at 150 and no reduce-only or daily-loss breaker could trip. The
    mark's time is the event's market time (Event.market_ns), as the
    strategies' ledgers and tradebus positions take it."""
    state = evolve(start(), fill(uuid.uuid4(), 10, 100))
    made = make(T0 + S)
    state = evolve(state, made.model_copy(update={"ts_event": made.ts_init + 24 * 3600 * S}))
    state = evolve(state, trade("AAPL", 30, T0 + 10 * S))
    mark = state.mark("AAPL")
    assert mark is not None
    assert (mark.price, mark.ts_ns) == (D(30), T0 + 10 * S)
    assert state.day_pnl("acct") == D(-700)
    assert [o.kind for o in state.obligations] == ["reduce"]


# ------------------------------------------------------ option settlement

#: SPY 600 call expiring on T0's day (2026-03-10, 16:00 New York).
EXPIRING = "O:SPY260310C00600000"
#: 2026-03-11 09:30 New York: the next trading day.
NEXT_MORNING = T0 + (22 * 3600 + 1800) * S


def settled(
    symbol: str, side: str, quantity: int, price: str | int, outcome: str, *, leaves: int = 0
) -> FillReceived:
    """A settlement fill as the broker-gateway publishes it the next morning:
    stamped at the contract's expiry (16:00 New York, 2026-03-10)."""
    order_id = uuid.uuid5(uuid.NAMESPACE_OID, f"{symbol}/{outcome}")
    return FillReceived.create(
        FillPayload(
            order_id=order_id,
            account="acct",
            broker_order_id="activity",
            fill_id=uuid.uuid4().hex,
            symbol=symbol,
            side=side,
            quantity=D(quantity),
            price=D(price),
            cumulative_quantity=D(quantity),
            leaves_quantity=D(leaves),
            status="partial" if leaves else "complete",
            strategy="sma",
            settlement=outcome,
        ),
        source="test/broker-gateway",
        clock=At(NEXT_MORNING + S),
        ts_event=T0 + 5 * 3600 * S,
    )


def held_overnight(buy_price: str, close_price: str) -> RiskState:
    """sma bought 2 calls at ``buy_price`` on their expiry day; they last
    traded at ``close_price`` before the close, SPY at 610; the next day
    began (SPY at 611)."""
    state = evolve(start(), fill(uuid.uuid4(), 2, buy_price, symbol=EXPIRING, strategy="sma"))
    state = apply(state, trade(EXPIRING, close_price, T0 + 4 * 3600 * S))
    state = apply(state, trade("SPY", 610, T0 + 5 * 3600 * S - S))
    state = apply(state, trade("SPY", 611, NEXT_MORNING))
    assert state.day == dt.date(2026, 3, 11)
    return state


def test_an_exercise_published_the_next_morning_is_booked_in_that_day_and_trips_nothing() -> None:
    """Bought at 8, the calls closed at 10 (the day's P&L had +400 of
    them). Exercised overnight, published the next morning stamped at the
    expiry: booked in the day the gate is in (a day gone is never opened
    again), the contract measured from the day's basis (its last price, 10:
    -2,000 realized today) and the shares from the strike (+2,200 at 611),
    so today's P&L is SPY's move since the close (+200): nothing counted
    twice or lost. Neither leg is a price. And no daily-loss breaker (limit
    1,000) trips between the two legs: before, the contract's leg alone
    made the day -2,000, and the account was flattened and halted for a
    loss it never had. The gateway publishes an exercise's shares first, so
    between the legs the day shows a gain: here a print of another symbol
    the account holds comes between them, and still nothing trips."""
    state = held_overnight("8", "10")
    state = evolve(state, fill(uuid.uuid4(), 1, 100, symbol="AAPL", strategy="sma"))
    state = evolve(state, settled("SPY", "buy", 200, 600, "exercised"))
    assert state.day_pnl("acct") > 0  # the shares' gain, the contracts not yet gone
    state = apply(state, trade("AAPL", 100, NEXT_MORNING + 2 * S))
    state = evolve(state, settled(EXPIRING, "sell", 2, 0, "exercised"))
    assert state.day == dt.date(2026, 3, 11)
    call, spy = state.positions[("acct", EXPIRING)], state.positions[("acct", "SPY")]
    assert (call.quantity, call.realized_total, call.realized_day) == (D(0), D(-1600), D(-2000))
    assert (spy.quantity, spy.avg_price, spy.day_basis) == (D(200), D(600), D(600))
    assert state.marks["SPY"].price == D(611)
    assert state.marks[EXPIRING].price == D(10)
    assert state.day_pnl("acct") == D(200)
    assert state.obligations == ()


def test_an_exercise_s_last_leg_the_contracts_is_checked_against_the_breaker() -> None:
    """The calls closed at 10 with SPY at 610; SPY opened the next morning at
    601. The exercise's shares (first) are a gain of 200 at 601, and the
    contracts (last) lose the 2,000 they were valued at: the day is -1,800,
    past the 1,000 limit, and the breaker trips at that last leg. (Checked
    only at an expiry's or the shares' fill, it waited for the next print.)"""
    state = evolve(start(), fill(uuid.uuid4(), 2, "8", symbol=EXPIRING, strategy="sma"))
    state = apply(state, trade(EXPIRING, "10", T0 + 4 * 3600 * S))
    state = apply(state, trade("SPY", 610, T0 + 5 * 3600 * S - S))
    state = apply(state, trade("SPY", 601, NEXT_MORNING))
    state = evolve(state, settled("SPY", "buy", 200, 600, "exercised"))
    assert state.obligations == ()
    state = evolve(state, settled(EXPIRING, "sell", 2, 0, "exercised"))
    assert state.day_pnl("acct") == D(200) - D(2000)
    assert [o.kind for o in state.obligations] == ["daily_loss"]


def test_an_assignment_s_contracts_come_first_and_a_print_between_the_legs_trips_nothing() -> None:
    """sma sold 2 calls at 12, last at 10 before the close (SPY at 610):
    assigned overnight, it buys the 2 back at 0 (+2,000 on the day's basis)
    and sells 200 SPY at the strike (-2,200 at 611). The gateway publishes
    the contracts first, so between the legs the day shows the premium kept,
    never the shares' loss alone: a print of SPY (the account holds a share)
    between them trips no 1,000 breaker."""
    state = evolve(start(), fill(uuid.uuid4(), 2, 12, side="sell", symbol=EXPIRING, strategy="sma"))
    state = apply(state, trade(EXPIRING, 10, T0 + 4 * 3600 * S))
    state = apply(state, trade("SPY", 610, T0 + 5 * 3600 * S - S))
    state = evolve(state, fill(uuid.uuid4(), 1, 610, symbol="SPY", strategy="sma"))
    state = apply(state, trade("SPY", 611, NEXT_MORNING))
    state = evolve(state, settled(EXPIRING, "buy", 2, 0, "assigned"))
    assert state.day_pnl("acct") > 0
    state = apply(state, trade("SPY", 611, NEXT_MORNING + 2 * S))
    state = evolve(state, settled("SPY", "sell", 200, 600, "assigned"))
    assert state.positions[("acct", EXPIRING)].quantity == 0
    assert state.positions[("acct", "SPY")].quantity == D(-199)
    # The contracts +2,000 on their basis of 10; the share held closed at
    # 600 (-10 on its basis of 610); 199 short at 600 marked at 611 (-2,189).
    assert state.day_pnl("acct") == D(2000) - D(10) - D(2189)
    assert state.obligations == ()


def test_an_expiry_published_the_next_morning_is_a_loss_of_that_day() -> None:
    """Bought at 8, last at 6 before the close (-400 on the expiry day),
    expired worthless: the next day loses the 1,200 they were still valued
    at, a settlement whole in itself, and its breaker trips on it."""
    state = held_overnight("8", "6")
    state = evolve(state, settled(EXPIRING, "sell", 2, 0, "expired"))
    assert state.day_pnl("acct") == D(-1200)
    assert [o.kind for o in state.obligations] == ["daily_loss"]
