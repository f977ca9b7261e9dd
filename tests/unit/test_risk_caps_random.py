"""The caps hold at every point of random timelines.

Whatever the flow (intents of every size from two strategies, partial and
complete fills at any price, cancels, rejects, breakers, the kill switch, a
day change), after every event a strategy's position plus its open orders on
either side stays within ``max_position``; every order the gate issues is
within ``max_order_quantity`` and leaves the strategy within
``max_gross_notional``.
"""

from __future__ import annotations

from collections import Counter

from libs.contract.events import RiskDecisionMade, SubmitOrder
from services.risk_gate.domain.decide import gross_exposure
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.state import RiskState
from tests.unit.risk_evolve_inputs import LIMITS
from tests.unit.risk_timelines import timeline

SYMBOLS = ("AAPL", "MSFT")


def test_positions_orders_and_exposure_stay_within_the_caps() -> None:
    verdicts: Counter[str] = Counter()
    for seed in range(1, 121):
        state = RiskState.initial(LIMITS)
        for event in timeline(seed, steps=150):
            state = evolve(state, event)
            for name, caps in LIMITS.strategies.items():
                for symbol in SYMBOLS:
                    held = state.strategy_position(name, caps.account, symbol)
                    buys, sells = state.open_by_side(caps.account, symbol, name)
                    assert -caps.max_position <= held - sells, (seed, event.type, name)
                    assert held + buys <= caps.max_position, (seed, event.type, name)
            if isinstance(event, SubmitOrder):
                p = event.payload
                caps = LIMITS.strategies[p.strategy]
                assert p.quantity <= caps.max_order_quantity, seed
                exposure = gross_exposure(state, p.strategy, p.account)
                assert exposure <= caps.max_gross_notional, seed
            if isinstance(event, RiskDecisionMade):
                verdicts[event.payload.reason.value] += 1
    # The caps did bind: some intents were denied for the position cap.
    assert verdicts["accepted"] > 0
    assert verdicts["max_strategy_position"] > 0, verdicts
