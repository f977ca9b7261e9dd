"""Bollinger-band mean reversion: fade closes outside the bands, exit at the mean.

Bands are the ``period``-bar simple moving average of closes plus and minus
``num_std`` population standard deviations (the current close included, as
Bollinger defines them). Flat, a close below the lower band buys
``quantity``; above the upper band sells short (with ``allow_short``). Long,
a close back at or above the middle band exits; short, at or below it.
The signal's strength is the close's z-score.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field

from libs.strategy.base import Bar, Strategy, StrategyParams
from libs.strategy.context import Direction
from libs.strategy.examples._common import OrderQuantity, exposure, trade_to
from libs.strategy.indicators import Rolling, rounded


class BollingerParams(StrategyParams):
    period: int = Field(default=20, ge=2, le=5000)
    num_std: Decimal = Field(default=Decimal(2), gt=0, le=10)
    quantity: OrderQuantity = Decimal(100)
    allow_short: bool = True


class BollingerReversion(Strategy[BollingerParams]):
    """Buy the lower band, sell the upper band, exit at the middle band."""

    @classmethod
    def warmup_bars(cls, params: BollingerParams) -> int:
        return params.period

    def on_start(self) -> None:
        self._closes = {s: Rolling(self.params.period) for s in self.ctx.symbols}

    def on_warmup(self, bar: Bar) -> None:
        self._closes[bar.symbol].push(bar.close)

    def on_bar(self, bar: Bar) -> None:
        p = self.params
        closes = self._closes[bar.symbol]
        closes.push(bar.close)
        if not closes.full:
            return
        mean, sd = closes.mean(), closes.stdev()
        upper, lower = mean + p.num_std * sd, mean - p.num_std * sd
        # Flat closes (sd 0): the bands are the mean and the close is on it, so
        # nothing enters, but a position exits at the middle band as always.
        z = rounded((bar.close - mean) / sd) if sd else Decimal(0)
        bands = f"bands {rounded(lower)} / {rounded(mean)} / {rounded(upper)}"
        held = exposure(self.ctx, bar.symbol)
        target: Decimal | None = None
        direction: Direction = "flat"
        if held == 0 and bar.close < lower:
            target, direction, name = p.quantity, "long", "bb_entry"
            reason = f"close {bar.close} below the lower band; {bands}"
        elif held == 0 and bar.close > upper and p.allow_short:
            target, direction, name = -p.quantity, "short", "bb_entry"
            reason = f"close {bar.close} above the upper band; {bands}"
        elif (held > 0 and bar.close >= mean) or (held < 0 and bar.close <= mean):
            target, name = Decimal(0), "bb_exit"
            reason = f"close {bar.close} back at the middle band; {bands}"
        if target is not None:
            trade_to(
                self.ctx,
                bar.symbol,
                target,
                name=name,
                direction=direction,
                reason=reason,
                strength=z,
            )
