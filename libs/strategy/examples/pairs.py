"""Pairs trade: two symbols, the z-score of their log-price spread.

``symbols: [A, B]``. For every minute in which both have a bar (matched by
bar start), the spread is ``ln(close_A) - hedge_ratio * ln(close_B)``. Its
z-score is taken against the previous ``lookback`` spreads (the current one
excluded, so a jump shows in full). Flat, ``z > entry_z`` sells the spread
(sell A, buy B) and ``z < -entry_z`` buys it (buy A, sell B), each leg sized
to about ``leg_notional`` (whole shares, or whole option contracts of 100
shares each); in a trade, ``|z| < exit_z`` closes both legs. One signal (on
A) causes both legs' intents, so the pair is one chain in the audit trail.
No pair is entered once an option leg's contract has expired (the close of
its expiry day, by the strategy's clock, ``ctx.expired``): its order would be
denied and the other leg left unhedged. A pair held past its option leg's
expiry closes its other leg alone, on that leg's first bar after the
expiry (the expired contract prints no more bars, so no minute pairs again):
no venue takes an order in the expired contract, and its position is left to
the broker's settlement (exercise or lapse), said once.
"""

from __future__ import annotations

import logging
from decimal import ROUND_FLOOR, Decimal
from typing import ClassVar

from pydantic import Field, model_validator

from libs.contract.events import Side, contract_multiplier
from libs.contract.options import parse_option
from libs.strategy.base import Bar, ParamError, Strategy, StrategyParams
from libs.strategy.context import ZERO, Direction
from libs.strategy.examples._common import exposure
from libs.strategy.indicators import Rolling, rounded

log = logging.getLogger(__name__)

#: Standard deviations of the log-price spread at or below this are noise.
SPREAD_NOISE = Decimal("1e-12")


class PairsParams(StrategyParams):
    lookback: int = Field(default=60, ge=3, le=10_000)
    entry_z: Decimal = Field(default=Decimal(2), gt=0, le=20)
    #: Both legs close when |z| < exit_z: 0 would never close them.
    exit_z: Decimal = Field(default=Decimal("0.5"), gt=0, le=20)
    #: Units of ln(B) per unit of ln(A) in the spread.
    hedge_ratio: Decimal = Field(default=Decimal(1), gt=0, le=100)
    #: Money per leg; each leg trades floor(leg_notional / (price x multiplier))
    #: shares or option contracts (``contract_multiplier``: 100 for ``O:…``).
    #: At most 1e12: even at the smallest price (1e-12) a leg is then 1e24
    #: units, which an order can carry (26 digits); else its entry faults.
    #: At most 12 decimal places, as money and prices are: a smaller one buys
    #: no unit at any price and the pair never trades. A leg_notional below a
    #: leg's price sizes it to no unit too: that entry is skipped, said once.
    leg_notional: Decimal = Field(
        default=Decimal(10_000), gt=0, le=Decimal(10**12), decimal_places=12
    )

    @model_validator(mode="after")
    def _thresholds(self) -> PairsParams:
        if self.exit_z >= self.entry_z:
            raise ParamError("exit_z", "must be < entry_z")
        return self


class PairsTrade(Strategy[PairsParams]):
    """Mean reversion of the spread between two related symbols."""

    symbol_count: ClassVar[int | None] = 2

    def on_start(self) -> None:
        self._a, self._b = self.ctx.symbols
        self._spreads = Rolling(self.params.lookback)
        self._last: dict[str, tuple[int, Decimal]] = {}
        self._warned_unsized = False
        self._warned_expired = False

    @classmethod
    def warmup_bars(cls, params: PairsParams) -> int:
        return params.lookback

    def on_warmup(self, bar: Bar) -> None:
        paired = self._pair(bar)
        if paired is not None:
            self._spreads.push(paired[0])

    def _pair(self, bar: Bar) -> tuple[Decimal, Decimal, Decimal] | None:
        """(spread, price A, price B) once both legs' bars of a minute are in."""
        self._last[bar.symbol] = (bar.start_ns, bar.close)
        a, b = self._last.get(self._a), self._last.get(self._b)
        if a is None or b is None or a[0] != b[0]:
            return None  # wait for the other leg's bar of the same minute
        del self._last[bar.symbol]  # each minute's pair is used once
        price_a, price_b = a[1], b[1]
        return price_a.ln() - self.params.hedge_ratio * price_b.ln(), price_a, price_b

    def on_bar(self, bar: Bar) -> None:
        if self._partner_expired(bar):
            return
        paired = self._pair(bar)
        if paired is None:
            return
        p = self.params
        spread, price_a, price_b = paired
        ready = self._spreads.full
        mean = self._spreads.mean() if ready else Decimal(0)
        sd = self._spreads.stdev() if ready else Decimal(0)
        self._spreads.push(spread)
        if not ready or sd <= SPREAD_NOISE:
            # A spread that has not moved beyond the arithmetic's own rounding
            # (a ratio held exactly: the logarithms differ in the last digit)
            # carries no signal, and a z-score over it would be astronomic.
            return
        z = rounded((spread - mean) / sd)
        held_a, held_b = exposure(self.ctx, self._a), exposure(self.ctx, self._b)
        if held_a == 0 and held_b == 0:
            if abs(z) <= p.entry_z:
                return
            if any(self._expired(symbol, held=ZERO) for symbol in (self._a, self._b)):
                return
            qty_a = self._leg_quantity(self._a, price_a)
            qty_b = self._leg_quantity(self._b, price_b)
            if qty_a == 0 or qty_b == 0:
                self._warn_unsized(
                    price_a if qty_a == 0 else price_b, self._a if qty_a == 0 else self._b
                )
                return
            if z > p.entry_z:
                self._trade("pair_entry", "short", z, (("sell", qty_a), ("buy", qty_b)))
            else:
                self._trade("pair_entry", "long", z, (("buy", qty_a), ("sell", qty_b)))
        elif abs(z) < p.exit_z:
            legs: list[tuple[Side, Decimal]] = []
            for symbol, held in ((self._a, held_a), (self._b, held_b)):
                if held != 0 and self._expired(symbol, held=held):
                    held = ZERO  # no order in it: a leg of 0 is not sent
                legs.append(("sell" if held > 0 else "buy", abs(held)))
            if any(quantity > 0 for _, quantity in legs):
                self._trade("pair_exit", "flat", z, tuple(legs))

    def _partner_expired(self, bar: Bar) -> bool:
        """Whether ``bar``'s leg trades alone: its partner is an option
        contract past its expiry. No venue lists that contract any more, so
        its bars stop, no minute pairs again and the spread means nothing: a
        position still held in ``bar``'s leg is closed on this bar, once
        (what is pending counts), rather than waiting for a paired minute
        inside ``exit_z`` that never comes. The expired leg is the broker's
        to settle. Flat (or the close pending), the bar is paired as any
        other: the entry refuses a pair with an expired leg."""
        partner = self._b if bar.symbol == self._a else self._a
        if not self.ctx.expired(partner):
            return False
        held = exposure(self.ctx, bar.symbol)
        if held == 0:
            return False  # flat: the entry is what refuses the pair (said there)
        self._expired(partner, held=exposure(self.ctx, partner))  # said once
        reason = f"{partner} expired: {bar.symbol} trades alone, closed"
        signal = self.ctx.signal(bar.symbol, "pair_exit", "flat", reason=reason)
        self.ctx.order(bar.symbol, "sell" if held > 0 else "buy", abs(held), cause=signal)
        return True

    def _expired(self, symbol: str, *, held: Decimal) -> bool:
        """Whether ``symbol`` is an option contract past its expiry (by the
        strategy's clock), said once. No venue takes an order in it: flat,
        the risk-gate would deny its leg (``contract_expired``) and accept
        the other's, unhedged; holding ``held``, its close would be refused
        and sent again at every minute inside ``exit_z``, for ever."""
        if not self.ctx.expired(symbol):
            return False
        if not self._warned_expired:
            self._warned_expired = True
            when = parse_option(symbol).expired_text
            if held == 0:
                name = self.ctx.name
                log.warning("pairs %s: %s %s: no pair is entered with it", name, symbol, when)
            else:
                log.warning(
                    "pairs %s: %s %s with %s held: no venue takes an order in it, so its leg "
                    "is left to the broker's settlement and the other leg trades alone",
                    self.ctx.name,
                    symbol,
                    when,
                    held,
                )
        return True

    def _leg_quantity(self, symbol: str, price: Decimal) -> Decimal:
        """Whole units of ``symbol`` worth about ``leg_notional`` (an option
        contract's price is per share: one contract is worth 100 of it)."""
        notional = price * contract_multiplier(symbol)
        return (self.params.leg_notional / notional).to_integral_value(ROUND_FLOOR)

    def _warn_unsized(self, price: Decimal, symbol: str) -> None:
        """Say once that an entry was skipped for a leg of no whole unit: a
        leg_notional below one unit's price would otherwise never trade, silently."""
        if self._warned_unsized:
            return
        self._warned_unsized = True
        log.warning(
            "pairs %s: leg_notional %s buys no whole %s at %s (one is %s): "
            "no pair is entered while one unit of a leg costs more than leg_notional",
            self.ctx.name,
            self.params.leg_notional,
            symbol,
            price,
            price * contract_multiplier(symbol),
        )

    def _trade(
        self,
        name: str,
        direction: Direction,
        z: Decimal,
        legs: tuple[tuple[Side, Decimal], ...],
    ) -> None:
        reason = f"spread z={z} ({self._a} vs {self._b}, lookback {self.params.lookback})"
        signal = self.ctx.signal(self._a, name, direction, reason=reason, strength=z)
        for symbol, (side, quantity) in zip((self._a, self._b), legs, strict=True):
            if quantity > 0:
                self.ctx.order(symbol, side, quantity, cause=signal)
