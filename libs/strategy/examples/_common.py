"""What the example strategies share: moving a symbol to a target position."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Annotated

from pydantic import Field

from libs.contract.events import OrderIntentCreated, SignalGenerated
from libs.strategy.context import Direction, StrategyContext

log = logging.getLogger(__name__)

#: (strategy, symbol) of the expired contracts already said (once per process).
_said_expired: set[tuple[str, str]] = set()

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
    """Signal and order the difference between ``target`` and the exposure (if any).

    Nothing for an option contract past its expiry (``ctx.expired``): no
    venue takes an order in it, a close included, so the SDK refuses one (a
    fault that would stop the strategy); what is held in it is the broker's to
    settle. Said once per strategy and contract."""
    if ctx.expired(symbol):
        if (ctx.name, symbol) not in _said_expired:
            _said_expired.add((ctx.name, symbol))
            log.warning(
                "%s: %s has expired: no order in it (wanted %s, holding %s); "
                "what is held is the broker's to settle",
                ctx.name,
                symbol,
                target,
                ctx.position(symbol).quantity,
            )
        return None
    delta = target - exposure(ctx, symbol)
    if delta == 0:
        return None
    signal = ctx.signal(symbol, name, direction, reason=reason, strength=strength)
    intent = ctx.order(symbol, "buy" if delta > 0 else "sell", abs(delta), cause=signal)
    return signal, intent
