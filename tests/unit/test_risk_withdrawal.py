"""An order owed after a crash goes out only if the intent still passes.

The gate published an accepted decision and stopped before its
``SubmitOrder``. Meanwhile the kill switch was engaged, the account halted,
or the intent simply aged. On going live the gate settles the breakers
first, then checks the owed intent as it would a fresh one: it sends the
order, or withdraws it with a denial carrying the reason. The denial is what
finishes an intent that has no order, so the strategy's books do not wait on
it, live or rebuilt; and the intent, delivered again, never becomes an order.
"""

from __future__ import annotations

import pytest

from libs.contract.envelope import Event
from libs.contract.events import (
    KillSwitchEngaged,
    OrderIntentCreated,
    ReasonCode,
    RiskDecisionMade,
    SubmitOrder,
)
from libs.strategy import InMemoryRuntime
from libs.strategy.testing import EchoStrategy, bar
from services.risk_gate.domain.commands import decision_id_for, withdraw_id_for
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.react import react
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_evolve_inputs import T0, S, apply, conn, op, start, trade
from tests.unit.risk_evolve_inputs import intent as new_intent


def strategy() -> tuple[InMemoryRuntime, OrderIntentCreated]:
    """The strategy ``sma`` on ``acct`` buys 10 AAPL at T0 (market time)."""
    rt = InMemoryRuntime()
    rt.add("sma", EchoStrategy, {"quantity": 10}, symbols=("AAPL",), account="acct")
    (intent,) = [
        e for e in rt.run([bar("AAPL", 100, T0 - 60 * S)]) if isinstance(e, OrderIntentCreated)
    ]
    assert intent.ts_init == T0
    return rt, intent


def crashed_after_the_decision(intent: OrderIntentCreated) -> tuple[RiskState, RiskDecisionMade]:
    """The store after the gate published its acceptance and died."""
    state = evolve(start(), intent)
    d = decide(state, intent, T0)
    assert d.accepted, d.detail
    return evolve(state, d.event), d.event


@pytest.mark.parametrize(
    ("meanwhile", "restart_at", "reason"),
    [
        pytest.param([], 2 * S, None, id="nothing changed: the order goes out"),
        pytest.param([op(KillSwitchEngaged, t=T0 + S)], 2 * S, "kill_switch", id="kill switch"),
        pytest.param([conn("disconnected", t=T0 + S)], 2 * S, "halted", id="connection lost"),
        pytest.param([], 60 * S, "stale_intent", id="too old"),
    ],
)
def test_an_owed_order_goes_out_only_if_the_intent_still_passes(
    meanwhile: list[Event], restart_at: int, reason: str | None
) -> None:
    rt, intent = strategy()
    state, accepted = crashed_after_the_decision(intent)
    state = apply(state, *meanwhile)
    out = react(state, T0 + restart_at)
    orders = [e for e in out if isinstance(e, SubmitOrder)]
    decisions = [e for e in out if isinstance(e, RiskDecisionMade)]
    if reason is None:
        assert [o.payload.intent_id for o in orders] == [intent.id]
        assert decisions == []
        return
    # The breakers and halts were settled first; no order went out past them.
    assert orders == []
    assert out[-1] is decisions[0]
    (withdrawal,) = decisions
    p = withdrawal.payload
    assert (p.decision, p.reason, p.intent_id, p.order_id) == (
        "denied",
        ReasonCode(reason),
        intent.id,
        None,
    )
    assert "withdrawn" in p.detail
    assert withdrawal.id == withdraw_id_for(intent.id)
    assert withdrawal.causation_id == decision_id_for(intent.id)
    assert withdrawal.correlation_id == intent.correlation_id
    state = apply(state, *out)
    assert state.awaiting_order == {}
    assert react(state, T0 + restart_at + S) == []
    # The intent or the withdrawal delivered again: still no order, ever.
    assert apply(state, intent, withdrawal) == state
    assert react(apply(state, intent), T0 + restart_at + S) == []
    # The strategy-runner finishes the intent, live (it reads denials only)...
    assert rt.hosts["sma"].pending("AAPL") == 10
    rt.feed(withdrawal)
    assert rt.hosts["sma"].pending("AAPL") == 0
    # ...and rebuilt from the store (the acceptance, then the withdrawal).
    rebuilt = InMemoryRuntime()
    rebuilt.add("sma", EchoStrategy, {"quantity": 10}, symbols=("AAPL",), account="acct")
    for event in (intent, accepted):
        rebuilt.restore(event)
    assert rebuilt.hosts["sma"].pending("AAPL") == 10
    rebuilt.restore(withdrawal)
    assert rebuilt.hosts["sma"].pending("AAPL") == 0


def _decided_elsewhere(state: RiskState, t: int) -> RiskState:
    """``state`` with an intent of ``mr`` on ``b`` seen and decided at ``t``."""
    other = new_intent(5, t=t, strategy="mr", account="b")
    state = apply(state, trade("AAPL", 100, t), other)
    return apply(state, *decide(state, other, t).events)


def test_a_withdrawal_days_after_the_decision_is_made_once() -> None:
    """An intent accepted, its order still owed two trading days with
    decisions later: the gate's memory of decided intents has forgotten it
    by then, and its withdrawal was taken for a first decision, so the order
    stayed owed and was withdrawn again at every react and after every
    rebuild."""
    _, intent = strategy()
    state, _ = crashed_after_the_decision(intent)
    day = 86_400 * S
    state = _decided_elsewhere(_decided_elsewhere(state, T0 + day), T0 + 2 * day)
    assert intent.id not in state.decided  # forgotten after two days of decisions
    assert list(state.awaiting_order) == [intent.id]
    (withdrawal,) = react(state, T0 + 2 * day + S)
    assert isinstance(withdrawal, RiskDecisionMade)
    assert withdrawal.payload.decision == "denied"
    state = evolve(state, withdrawal)  # live, or folded from the store
    assert not state.awaiting_order
    assert react(state, T0 + 2 * day + 3600 * S) == []
    assert evolve(state, intent).pending_intents == {}  # delivered again: not decided again
