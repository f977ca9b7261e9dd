"""The risk-gate's decisions over a run: ids derived from the intent, the
"parameter typo" scenarios (a size 100x too large, an order loop) and the
daily-loss breaker driven by fills and marks."""

from __future__ import annotations

from libs.contract.events import (
    ReasonCode,
    ResumePayload,
    SignalGenerated,
    SignalPayload,
    SubmitOrder,
    TradingResumeRequested,
)
from services.risk_gate.domain.commands import decision_id_for, order_id_for
from services.risk_gate.domain.decide import decide, reduces_position
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.react import react
from tests.unit.risk_decide_inputs import (
    T0,
    At,
    D,
    S,
    apply,
    bar,
    base,
    filled_position,
    intent,
    run_intent,
    trade,
)


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
