"""What the example strategies share: moving a symbol to a target position."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import Field

from libs.contract.events import OrderIntentCreated, SignalGenerated
from libs.strategy.context import Direction, StrategyContext

#: A ``quantity`` parameter: what an order can carry (the contract's Quantity,
#: 26 digits and 12 places), else the strategy's first order faults.
OrderQuantity = Annotated[Decimal, Field(gt=0, max_digits=38, decimal_places=12)]


def exposure(ctx: StrategyContext, symbol: str) -> Decimal:
    """Position plus what is still pending: what the strategy will hold if all fills."""
    return ctx.position(symbol).quantity + ctx.pending(symbol)


def trade_to(
    ctx: StrategyContext,
    symbol: str,
    target: Decimal,
    *,
    name: str,
    direction: Direction,
    reason: str,
    strength: Decimal | None = None,
) -> tuple[SignalGenerated, OrderIntentCreated] | None:
    """Signal and order the difference between ``target`` and the exposure (if any)."""
    delta = target - exposure(ctx, symbol)
    if delta == 0:
        return None
    signal = ctx.signal(symbol, name, direction, reason=reason, strength=strength)
    intent = ctx.order(symbol, "buy" if delta > 0 else "sell", abs(delta), cause=signal)
    return signal, intent
