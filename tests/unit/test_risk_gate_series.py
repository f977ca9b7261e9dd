"""The risk-gate's series the risk board counts with increase() exist from start-up."""

from __future__ import annotations

import uuid
from typing import get_args

from prometheus_client import REGISTRY

from libs.contract.envelope import WallClock
from libs.contract.events import (
    BreakerPayload,
    KillSwitchEngaged,
    OperatorActionPayload,
    ReasonCode,
)
from services.risk_gate.config import RiskGateSettings
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.limits import RiskLimits
from services.risk_gate.gate import RiskGate
from tests.unit.risk_decide_inputs import At, stale_state


def test_the_series_the_risk_board_counts_start_at_zero() -> None:
    """Prometheus's increase() starts from a series' first sample, and a
    labelled counter's first sample is made by its first inc(): a series first
    seen at 1 shows no increase. "Breakers tripped (24 h)" missed the first
    breaker an account tripped after the gate started (usually the only one),
    "Denials by reason" the first denial of each reason, and "Risk-gate dead
    letters (1h)" stayed at 0 (green) for the first dead letter."""
    account = f"fresh-{uuid.uuid4().hex[:8]}"  # no test has made its series yet
    limits = RiskLimits.model_validate({"accounts": {account: {"daily_loss_limit": 1000}}})
    breakers = get_args(BreakerPayload.model_fields["breaker"].annotation)
    assert breakers

    def trips(breaker: str) -> float | None:
        return REGISTRY.get_sample_value(
            "tradebus_risk_breaker_trips_total", {"account": account, "breaker": breaker}
        )

    assert all(trips(b) is None for b in breakers)
    RiskGate(RiskGateSettings(instance="test"), limits)
    assert {b: trips(b) for b in breakers} == dict.fromkeys(breakers, 0)
    for reason in ReasonCode:
        if reason is not ReasonCode.ACCEPTED:
            value = REGISTRY.get_sample_value("tradebus_orders_denied_total", {"reason": reason})
            assert value is not None, reason
    for cause in ("oversized", "malformed_json", "invalid_event"):  # libs.contract.codec's
        labels = {"service": "risk-gate", "reason": cause}
        assert REGISTRY.get_sample_value("tradebus_dead_letters_total", labels) is not None


def test_the_kill_switch_is_not_exported_until_the_state_is_rebuilt() -> None:
    """An unlabelled gauge reads 0 from its creation: after a restart the
    board's kill switch showed "off" (green) while the gate rebuilt its state,
    with the switch in fact on. Not exported until known; then its value."""
    limits = RiskLimits.model_validate({"accounts": {"acct": {"daily_loss_limit": 1000}}})
    gate = RiskGate(RiskGateSettings(instance="test"), limits)
    assert REGISTRY.get_sample_value("tradebus_risk_kill_switch") is None
    assert gate.health()[1]["kill_switch"] is None
    gate.state = evolve(
        gate.state,
        KillSwitchEngaged.create(
            OperatorActionPayload(operator="ops", reason="test"),
            source="test",
            clock=WallClock(),
        ),
    )
    gate.rebuilt = True  # as _cycle does once the store is folded
    gate._update_gauges(force=True)
    assert REGISTRY.get_sample_value("tradebus_risk_kill_switch") == 1
    assert gate.health()[1]["kill_switch"] is True
    # A new gate (a restart in-process) does not know it again until rebuilt.
    RiskGate(RiskGateSettings(instance="test"), limits)
    assert REGISTRY.get_sample_value("tradebus_risk_kill_switch") is None


def test_the_gate_exports_the_positions_marked_at_a_stale_price() -> None:
    """Per account: how many symbols it holds are marked at a price older than
    max_mark_age_s, and the age of the oldest price it is marked at. The
    breaker counts those positions at their last price, and nothing showed
    the board that the figure stood still."""
    state, now = stale_state()
    gate = RiskGate(RiskGateSettings(instance="test"), state.limits, clock=At(now))
    gate.state = state
    gate._update_gauges(force=True)

    def sample(name: str, account: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"account": account})

    assert sample("tradebus_risk_stale_marks", "acct") == 1
    assert sample("tradebus_risk_oldest_mark_age_seconds", "acct") == 600
    assert sample("tradebus_risk_stale_marks", "paper") == 1  # stamped ahead
    assert sample("tradebus_risk_oldest_mark_age_seconds", "paper") == 0
    assert sample("tradebus_risk_stale_marks", "other") == 0
    assert sample("tradebus_risk_oldest_mark_age_seconds", "other") == 0
