"""Moving-average crossover: long when the fast SMA crosses above the slow one.

On each closed bar the strategy updates a fast and a slow simple moving
average of closes. When the fast crosses above the slow ("golden cross") it
goes long ``quantity``; when it crosses below ("death cross") it goes short
``quantity`` if ``allow_short``, else flat. The first comparison after the
warm-up only sets the side; only a later change of side trades. Exposure
(position plus pending intents) is what is compared to the target, so a
repeated signal while an order is working does not double up.

After a restart (or a fault's fresh instance) the warm-up rebuilds the
averages and the side, but a crossing seen in it trades nothing: a cross
that came while the runner was down is missed. So the first bar of each
symbol whose side is known compares the side with the exposure rebuilt from
the store: a position held against it (long with the fast average below the
slow one; short with it above) is closed, to flat. That is the exit the
missed cross would have made; the entry it would have made too (the short
of a death cross, with ``allow_short``) is not made late, as no entry is
made on the first comparison.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field, model_validator

from libs.strategy.base import Bar, ParamError, Strategy, StrategyParams
from libs.strategy.context import Direction
from libs.strategy.examples._common import OrderQuantity, exposure, trade_to
from libs.strategy.indicators import Rolling, rounded


class SmaCrossoverParams(StrategyParams):
    fast_period: int = Field(default=10, ge=1, le=1000)
    slow_period: int = Field(default=30, ge=2, le=5000)
    #: Shares held while long (and while short, with ``allow_short``).
    quantity: OrderQuantity = Decimal(100)
    allow_short: bool = False

    @model_validator(mode="after")
    def _periods(self) -> SmaCrossoverParams:
        if self.fast_period >= self.slow_period:
            raise ParamError("fast_period", "must be < slow_period")
        return self


class SmaCrossover(Strategy[SmaCrossoverParams]):
    """Fast/slow simple moving-average crossover, per symbol."""

    @classmethod
    def warmup_bars(cls, params: SmaCrossoverParams) -> int:
        return params.slow_period

    def on_start(self) -> None:
        self._closes = {s: Rolling(self.params.slow_period) for s in self.ctx.symbols}
        self._fast_above: dict[str, bool] = {}
        #: Symbols whose exposure was compared with the side since the start.
        self._checked: set[str] = set()

    def on_warmup(self, bar: Bar) -> None:
        # The averages and the side the fast one is on; a crossing in the past
        # trades nothing now.
        self._update(bar)

    def _update(self, bar: Bar) -> tuple[bool, Decimal, Decimal] | None:
        """Take the close in; (fast above?, fast, slow) if the fast SMA changed side."""
        closes = self._closes[bar.symbol]
        closes.push(bar.close)
        if not closes.full:
            return None
        fast, slow = closes.mean_of_last(self.params.fast_period), closes.mean()
        if fast == slow:
            return None
        above = fast > slow
        before = self._fast_above.get(bar.symbol)
        self._fast_above[bar.symbol] = above
        if before is None or before == above:
            return None
        return above, fast, slow

    def on_bar(self, bar: Bar) -> None:
        crossed = self._update(bar)
        if crossed is None:
            self._check_side(bar.symbol)
            return
        self._checked.add(bar.symbol)
        above, fast, slow = crossed
        p = self.params
        direction: Direction
        if above:
            target, direction = p.quantity, "long"
        elif p.allow_short:
            target, direction = -p.quantity, "short"
        else:
            target, direction = Decimal(0), "flat"
        word = "above" if above else "below"
        trade_to(
            self.ctx,
            bar.symbol,
            target,
            name="sma_cross",
            direction=direction,
            reason=(
                f"SMA({p.fast_period})={rounded(fast)} crossed {word} "
                f"SMA({p.slow_period})={rounded(slow)}"
            ),
            strength=rounded((fast - slow) / slow),
        )

    def _check_side(self, symbol: str) -> None:
        """Once per symbol after the start, with the side known: close a
        position held against it. Only a change of side trades, and the
        warm-up's trade nothing, so a cross missed while the runner was down
        (its exit) would otherwise wait for the next cross, which, the
        position already on its side, trades nothing either."""
        above = self._fast_above.get(symbol)
        if above is None or symbol in self._checked:
            return
        self._checked.add(symbol)
        held = exposure(self.ctx, symbol)
        if (held > 0 and not above) or (held < 0 and above):
            word = "below" if held > 0 else "above"
            trade_to(
                self.ctx,
                symbol,
                Decimal(0),
                name="sma_cross",
                direction="flat",
                reason=(
                    f"{held} held with SMA({self.params.fast_period}) {word} "
                    f"SMA({self.params.slow_period}) at the start: a cross missed while "
                    "not running"
                ),
            )
