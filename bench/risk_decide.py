"""What one risk decision costs with many orders resting, against none.

The risk-gate decides each intent against its state, open orders included
(a strategy's position cap and gross notional count what its open orders
would add). This measures ``decide`` in-process, the pure function the
service and the backtest both call, for one market buy intent against a
state holding 0, 10, 100, 1,000 and 10,000 resting limit orders of the same
strategy, account and symbol (the worst case: every one of them is in the
book the checks read), spread over both sides; the figure with none resting
is the baseline of the same run.

A decision should not grow with the orders resting: a gate that falls behind
in a burst holds more of them (their fills are still queued behind it), and
a decision that slows with them would make it fall further behind.

Progress goes to stderr; stdout gets a table and, as its last line, one JSON
object with the figures and their units.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from decimal import Decimal

from harness import say  # bench/harness.py

from libs.contract.envelope import Event
from libs.contract.events import (
    OrderIntentCreated,
    OrderIntentPayload,
    SubmitOrder,
    SubmitOrderPayload,
    TradePayload,
    TradePrinted,
)
from libs.strategy.testing import At
from services.risk_gate.domain.decide import decide
from services.risk_gate.domain.evolve import evolve
from services.risk_gate.domain.limits import RiskLimits
from services.risk_gate.domain.state import RiskState

S = 1_000_000_000
#: 2026-03-10 15:00 UTC = 11:00 New York: mid-session.
T0 = 1_773_154_800 * S
RESTING = (0, 10, 100, 1_000, 10_000)
STRATEGY, ACCOUNT, SYMBOL = "bench", "paper", "AAPL"

LIMITS = RiskLimits.model_validate(
    {
        "accounts": {ACCOUNT: {"daily_loss_limit": 1_000_000}},
        "strategies": {
            STRATEGY: {
                "account": ACCOUNT,
                "max_gross_notional": 10**12,
                "max_position": 10**9,
                "max_order_quantity": 1_000,
                "max_order_notional": 10**8,
            }
        },
    }
)


def _event(cls: type[Event], payload: object, t: int) -> Event:
    return cls.create(payload, source="bench", clock=At(t))


def state_with(resting: int) -> RiskState:
    """A market price, then ``resting`` limit orders (alternately buys and sells)."""
    trade = TradePayload(symbol=SYMBOL, price=Decimal(100), size=Decimal(1), feed="synthetic")
    state = evolve(RiskState.initial(LIMITS), _event(TradePrinted, trade, T0))
    for k in range(resting):
        side = "buy" if k % 2 == 0 else "sell"
        order = SubmitOrderPayload(
            order_id=uuid.uuid4(),
            intent_id=uuid.uuid4(),
            strategy=STRATEGY,
            account=ACCOUNT,
            symbol=SYMBOL,
            side=side,
            quantity=Decimal(10),
            order_type="limit",
            limit_price=Decimal(90) if side == "buy" else Decimal(110),
        )
        state = evolve(state, _event(SubmitOrder, order, T0 - S))
    assert len(state.orders) == resting
    return state


def intents(n: int) -> list[OrderIntentCreated]:
    payload = OrderIntentPayload(
        strategy=STRATEGY, account=ACCOUNT, symbol=SYMBOL, side="buy", quantity=Decimal(1)
    )
    return [OrderIntentCreated.create(payload, source="bench", clock=At(T0)) for _ in range(n)]


def decide_us(state: RiskState, batch: list[OrderIntentCreated], repeats: int) -> float:
    """Median over ``repeats`` of the mean microseconds per decision."""
    means = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        for intent in batch:
            d = decide(state, intent, T0)
            assert d.accepted, d.detail
        means.append((time.perf_counter_ns() - started) / len(batch) / 1e3)
    return statistics.median(means)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=2_000, help="per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    opts = parser.parse_args()
    batch = intents(opts.decisions)
    figures: dict[int, float] = {}
    for resting in RESTING:
        say(f"{resting} orders resting: building the state")
        state = state_with(resting)
        figures[resting] = decide_us(state, batch, opts.repeats)
        say(f"{resting} orders resting: {figures[resting]:.1f} us per decision")
    base = figures[0]
    print(f"{'orders resting':>15}  {'us/decision':>12}  {'vs none':>8}")
    for resting, us in figures.items():
        print(f"{resting:>15}  {us:>12.1f}  {us / base:>7.2f}x")
    print(
        json.dumps(
            {
                "decide_us_by_orders_resting": {str(k): round(v, 2) for k, v in figures.items()},
                "ratio_1000_resting_vs_none": round(figures[1_000] / base, 3),
                "ratio_10000_resting_vs_none": round(figures[10_000] / base, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
