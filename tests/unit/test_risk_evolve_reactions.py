"""The reactions (``react``) that obligations in the risk-gate's state produce:
the daily-loss breaker, reduce-only, the kill switch, a lost connection and
resumes, live and in a fold of the store."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import pytest

from libs.contract.envelope import Event
from libs.contract.events import (
    BreakerTripped,
    KillSwitchEngaged,
    KillSwitchReleased,
    OperatorActionPayload,
    ReasonCode,
    TradingResumeRequested,
    TradingStateChanged,
    TradingStatePayload,
)
from services.risk_gate.domain.commands import order_id_for
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.react import react
from tests.unit.risk_evolve_inputs import (
    T0,
    D,
    S,
    apply,
    conn,
    ev,
    fill,
    intent,
    op,
    settle,
    start,
    submitted,
    trade,
)

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
