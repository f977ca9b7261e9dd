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

No leg is left naked. Once a pair is closing, it closes whatever the spread
does next, and no pair is entered until both legs are flat with nothing
pending. It closes when:

- a leg of its entry is denied by the risk-gate, rejected or canceled by the
  broker (with nothing or only part filled): what each leg actually holds is
  closed at once, a leg whose order is still working as soon as that order
  ends (no close is sent against it);
- the exit is signaled (``|z| < exit_z``).

A close that is denied, rejected or canceled is sent again at the next bar
of either leg (not at once: a refusal that stands would be answered by
another order at once, for ever).

A pair is whole when each leg holds what the entry sent it. The instance
that sent the entry judges the pair by those quantities, never by the fill
prices: an entry filled far from the closes it was sized at (slippage) is a
whole pair and is held; any other quantity, with nothing pending, closes it.

That the pair is closing lives in the instance. A fresh one (after a runner
restart, or a fault's) knows what the books give back, positions and
pending orders, and at its first bar closes the pair they show is not
whole: one leg held alone, a close working against a leg (each leg's
exposure is then 0: no pair is entered on top, and a close refused is sent
again at the next bar), or both held at other than what the entry made (an
entry or an exit one of whose legs filled in part, the rest canceled or
refused). It does not know the entry's quantities; it sizes the entry again
from the closes of the minute it was sized at, when its warm-up holds that
minute (the last paired one closed by the pair's first fill, at most a bar
before it), and judges the pair by them, as the instance that entered it
would; a leg held at that quantity and the other not closes the pair,
whatever the fill prices. Without that minute (the pair entered before the
warm-up's bars), or with neither leg at its quantity (the minute may not be
the entry's, or ``leg_notional`` changed since), it judges by the legs'
costs at average price: more than one unit of the dearer leg and
``RATIO_SLACK`` of the larger cost apart closes the pair, so a part fill
within that is held and an entry filled more than about 5 % off its closes
is closed. Both legs closed in part and in proportion look whole: they are
held until ``|z| < exit_z``, unless the exit is seen due (below).

A fresh instance also closes, at its first bar, a pair held whole whose exit
was due: a paired minute of its warm-up after the pair opened had
``|z| < exit_z``. The exit was signaled then and both closes were refused
before the restart (the instance that sent them knew the pair was closing,
and sent them again at each bar), or it fell due while the runner was down;
either way the strategy had decided to be flat, and a pair that looks whole
is not held against that decision until ``|z| < exit_z`` comes again. Its
warm-up is ``2 x lookback`` minutes, so that the latest ``lookback`` of them
have z-scores (worked out only once the pair is held, as each costs a pass
over the spreads); an exit due before them is not seen, and such a pair is
held until ``|z| < exit_z``.

An order the fresh instance did not send (its entry's leg, or a close)
refused before its pair is closing closes the pair at once, whatever the
books show, not at the next bar: the instance that sent it was closing the
pair, or would have closed it then (a leg of its entry). A leg of the entry
denied after the restart closes the other leg then; a close denied after
the other leg's was refused while the runner was down closes both, though
the books show a pair that looks whole.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal
from typing import ClassVar

from pydantic import Field, model_validator

from libs.contract.events import Side, contract_multiplier
from libs.contract.options import parse_option
from libs.strategy.base import Bar, Fill, OrderUpdate, ParamError, Strategy, StrategyParams
from libs.strategy.context import ZERO, Direction
from libs.strategy.examples._common import exposure
from libs.strategy.indicators import Rolling, rounded
from libs.strategy.ledger import signed

log = logging.getLogger(__name__)

#: Standard deviations of the log-price spread at or below this are noise.
SPREAD_NOISE = Decimal("1e-12")
#: Both legs held, their costs (quantity x average price x multiplier) may
#: differ by one unit of the dearer leg (each is sized to whole units of
#: ``leg_notional``) and this part of the larger cost (the fills' slippage
#: from the bar's close the legs were sized at); more, and the pair is not
#: the one an entry made: a leg of it filled or closed in part.
RATIO_SLACK = Decimal("0.05")


@dataclass(frozen=True, slots=True)
class _Minute:
    """A paired minute the instance was warmed up on: when its bars ran,
    each leg's close (what an entry then was sized at) and, in a pair held
    since before it, the spread's z-score then (None: not worked out)."""

    start_ns: int
    end_ns: int
    price_a: Decimal
    price_b: Decimal
    z: Decimal | None = None


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
        #: Why the pair is closing (None: it is not). Set by a failed entry
        #: leg, the exit or a leg found held alone; cleared once both legs are
        #: flat with nothing pending. Meanwhile no pair is entered.
        self._closing: str | None = None
        #: The latest entry's signal: a leg of it that ends unfilled (or part
        #: filled) leaves the other leg unhedged.
        self._entry: uuid.UUID | None = None
        #: What the latest entry this instance sent holds, whole (signed, by
        #: leg): a pair is judged whole by these quantities, never by its fill
        #: prices. None once the pair is flat, and in a fresh instance (after a
        #: restart) for the pair it finds held.
        self._legs: dict[str, Decimal] | None = None
        #: The paired minutes of the warm-up (the store's latest bars, those
        #: that closed while the runner was down): a fresh instance sizes the
        #: entry of the pair it finds held again from them (``_entry_legs``).
        self._past: deque[_Minute] = deque(maxlen=self.warmup_bars(self.params))
        #: The signals this instance sent since the pair was last flat with
        #: nothing pending (an order of an earlier one can no longer end). A
        #: refused order of any other signal was sent by an instance before a
        #: restart: it is judged by the books (``on_order_update``).
        self._sent: set[uuid.UUID] = set()

    @classmethod
    def warmup_bars(cls, params: PairsParams) -> int:
        """``lookback`` minutes to fill the spreads the first live z-score is
        taken against, and ``lookback`` before them: the z-scores of the
        latest ones, once a pair is held, say whether its exit was due
        (``_exit_due``)."""
        return 2 * params.lookback

    def on_warmup(self, bar: Bar) -> None:
        paired = self._pair(bar)
        if paired is None:
            return
        spread, price_a, price_b = paired
        opened = self._opened_ns()
        z = None
        if opened is not None and opened <= bar.end_ns:
            # Held since before this minute: the exit rule applied to it. Only
            # then, as each z-score costs a pass over the lookback.
            z = self._zscore(spread)
        else:
            self._spreads.push(spread)
        self._past.append(_Minute(bar.start_ns, bar.end_ns, price_a, price_b, z))

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
        z = None if paired is None else self._zscore(paired[0])
        if self._closing is None:
            self._closing = self._unwhole()
        if self._closing is not None:
            # Whatever the spread: a close refused (or a leg held alone) is
            # sent (again) at every bar until both legs are flat.
            self._close()
            return
        if paired is None or z is None:
            return
        p = self.params
        _, price_a, price_b = paired
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
                legs: tuple[tuple[Side, Decimal], ...] = (("sell", qty_a), ("buy", qty_b))
                self._entry = self._trade("pair_entry", "short", self._reason(z), legs, z)
            else:
                legs = (("buy", qty_a), ("sell", qty_b))
                self._entry = self._trade("pair_entry", "long", self._reason(z), legs, z)
            self._legs = {
                symbol: signed(side, quantity)
                for symbol, (side, quantity) in zip((self._a, self._b), legs, strict=True)
            }
        elif abs(z) < p.exit_z:
            for symbol, held in ((self._a, held_a), (self._b, held_b)):
                if held != 0:
                    self._expired(symbol, held=held)  # said once; its leg is not sent
            self._closing = self._reason(z)
            self._close(strength=z)

    def on_fill(self, fill: Fill) -> None:
        if self._closing is not None:
            # A leg's order that was still working has ended: close what it filled.
            self._close()

    def on_order_update(self, update: OrderUpdate) -> None:
        """A leg of the entry denied, rejected or canceled: the pair is
        closed at once, each leg by what it holds. A refused close is not
        answered here but at the next bar (``on_bar``).

        A refused order of a signal this instance did not send (one sent
        before a restart: an entry's leg, or a close) closes the pair at
        once, whatever the books show: the instance that sent it was closing
        the pair, or would close it at this refusal (a leg of its entry), and
        the fresh one does not know which. Its reason says what the books
        show (a leg held alone, legs at other than the entry's ratio), if
        anything: a close refused with the other leg's close refused already
        (while the runner was down) leaves a pair that looks whole, and was
        held until ``exit_z``. Once the pair is closing, a refused close
        waits for the next bar, whoever sent it."""
        if update.kind == "accepted":
            return
        leg = update.symbol or "a leg"
        detail = f": {update.reason}" if update.reason else ""
        if update.signal_id == self._entry:
            self._closing = f"entry leg {leg} {update.kind}{detail}; the pair is closed"
        elif (
            self._closing is None
            and update.signal_id not in self._sent
            and update.intent_id is not None  # an order the books still had working
        ):
            why = self._unwhole() or "the pair is closed"
            self._closing = f"{leg} {update.kind}{detail} (an order sent before a restart); {why}"
        else:
            return
        self._close()

    def _zscore(self, spread: Decimal) -> Decimal | None:
        """The z-score of ``spread`` against the previous ``lookback`` ones
        (None until there are that many, or over a spread that does not
        move); ``spread`` joins them."""
        ready = self._spreads.full
        mean = self._spreads.mean() if ready else Decimal(0)
        sd = self._spreads.stdev() if ready else Decimal(0)
        self._spreads.push(spread)
        if not ready or sd <= SPREAD_NOISE:
            # A spread that has not moved beyond the arithmetic's own rounding
            # (a ratio held exactly: the logarithms differ in the last digit)
            # carries no signal, and a z-score over it would be astronomic.
            return None
        return rounded((spread - mean) / sd)

    def _unwhole(self) -> str | None:
        """Why the pair the books show must close (None: it is whole, or flat)."""
        return self._naked() or self._closing_working() or self._lopsided() or self._exit_due()

    def _naked(self) -> str | None:
        """Why the pair must close when exactly one leg is held (pending
        orders counted) and the other is flat: a fresh instance, after a
        restart, finds it so when the other leg's entry failed meanwhile. An
        expired option leg counts as flat: it is the broker's to settle."""
        held = {
            symbol: ZERO if self.ctx.expired(symbol) else exposure(self.ctx, symbol)
            for symbol in (self._a, self._b)
        }
        alone = [symbol for symbol, quantity in held.items() if quantity != 0]
        if len(alone) != 1:
            return None
        (symbol,) = alone
        return f"{symbol} held alone ({held[symbol]}): closed"

    def _closing_working(self) -> str | None:
        """Why the pair is closing when an order works against a leg held (a
        close: an entry's orders add to their legs). The instance that sent
        it knows; a fresh one, after a restart, sees each leg's exposure at 0
        and took the pair for flat: it entered another on top and, the closes
        refused, held both as one pair of twice the size."""
        for symbol in (self._a, self._b):
            held, pending = self.ctx.position(symbol).quantity, self.ctx.pending(symbol)
            if held * pending < 0:
                return f"a close of {symbol} ({held} held) is working: the pair is closed"
        return None

    def _lopsided(self) -> str | None:
        """Why the pair must close when both legs are held, nothing pending in
        either, at other than what an entry holds: an entry or an exit one of
        whose legs filled in part. The instance that sent the entry knows its
        quantities (``_legs``): any other is not the pair, whatever the fill
        prices (an entry filled away from the closes it was sized at is
        whole). The instance that saw a leg fill in part is closing the pair
        already; a fresh one, after a restart, knows only the positions, and
        judges them by the legs' costs at their average prices (legs of about
        equal cost, of opposite sides: what the entry sized them by). An
        expired option leg is the broker's to settle (``_partner_expired``)."""
        legs = [self.ctx.position(symbol) for symbol in (self._a, self._b)]
        if any(
            leg.quantity == 0 or self.ctx.pending(leg.symbol) != 0 or self.ctx.expired(leg.symbol)
            for leg in legs
        ):
            return None
        a, b = legs
        made = self._legs if self._legs is not None else self._entry_legs()
        if made is not None:
            matched = [leg.quantity == made[leg.symbol] for leg in legs]
            if all(matched):
                return None
            # Neither leg at what the minute sizes it: that minute may not be
            # the entry's (a fill later than the next bar), or leg_notional
            # changed since; the costs judge.
            if any(matched) or self._legs is not None:
                return (
                    f"{a.symbol} {a.quantity} and {b.symbol} {b.quantity} held at other than "
                    f"the entry's ratio (it made {made[a.symbol]} and {made[b.symbol]}): closed"
                )
        units = [leg.average_price * contract_multiplier(leg.symbol) for leg in legs]
        costs = [abs(leg.quantity) * unit for leg, unit in zip(legs, units, strict=True)]
        same_side = (a.quantity > 0) == (b.quantity > 0)
        if not same_side and abs(costs[0] - costs[1]) <= max(units) + RATIO_SLACK * max(costs):
            return None
        return (
            f"{a.symbol} {a.quantity} and {b.symbol} {b.quantity} held at other than the "
            f"entry's ratio (costs {rounded(costs[0])} and {rounded(costs[1])}): closed"
        )

    def _exit_due(self) -> str | None:
        """Why a pair held whole must close: a paired minute of the warm-up
        after it opened had ``|z| < exit_z``, so its exit was signaled then
        (or due, the runner down) and both closes were refused (denied,
        rejected, canceled) before this instance started. Only the instance
        that sent them knew the pair was closing; a fresh one sees a whole
        pair and held it until ``|z| < exit_z`` again, though the strategy
        had decided to be flat. An expired option leg is the broker's to
        settle (``_partner_expired``)."""
        opened = self._opened_ns()
        if opened is None or any(
            self.ctx.pending(symbol) != 0 or self.ctx.expired(symbol)
            for symbol in (self._a, self._b)
        ):
            return None
        for past in self._past:
            if past.z is not None and past.end_ns >= opened and abs(past.z) < self.params.exit_z:
                ended = datetime.fromtimestamp(past.end_ns // 10**9, UTC).isoformat()
                return (
                    f"the exit was due at the minute ending {ended} (z={past.z}) and the pair "
                    "is still held (its closes refused, or the runner down then): closed"
                )
        return None

    def _opened_ns(self) -> int | None:
        """When the pair held opened (its later leg's first fill, by market
        time); None while a leg is flat, or the ledger does not know."""
        legs = [self.ctx.position(symbol) for symbol in (self._a, self._b)]
        opened = [leg.opened_ns for leg in legs if leg.quantity != 0]
        if len(opened) != 2 or None in opened:
            return None
        return max(ns for ns in opened if ns is not None)

    def _entry_legs(self) -> dict[str, Decimal] | None:
        """What the entry of the pair held made (signed, by leg), sized again
        from the closes of the minute it was sized at: the last paired minute
        of the warm-up closed by the pair's first fill, and no longer than a
        bar before it (a market order fills within a bar; a later fill, say
        at the next day's open, leaves the minute unknown). None when the
        warm-up holds no such minute (the pair was entered before it)."""
        legs = [self.ctx.position(symbol) for symbol in (self._a, self._b)]
        opened = [leg.opened_ns for leg in legs]
        if None in opened:
            return None
        first = min(ns for ns in opened if ns is not None)
        sized = None
        for past in self._past:
            if past.end_ns <= first:
                sized = past
        if sized is None or first - sized.end_ns > sized.end_ns - sized.start_ns:
            return None
        qty_a = self._leg_quantity(self._a, sized.price_a)
        qty_b = self._leg_quantity(self._b, sized.price_b)
        short_a = legs[0].quantity < 0
        return {self._a: -qty_a if short_a else qty_a, self._b: qty_b if short_a else -qty_b}

    def _close(self, strength: Decimal | None = None) -> None:
        """Close each leg held with no order working in it (one would be
        sent against that order; it is closed when that order ends). Both
        flat with nothing pending: the pair is closed. An expired option
        leg is left to the broker's settlement."""
        legs: list[tuple[Side, Decimal]] = []
        working = False
        for symbol in (self._a, self._b):
            held = ZERO if self.ctx.expired(symbol) else self.ctx.position(symbol).quantity
            if self.ctx.pending(symbol) != 0:
                working, held = True, ZERO
            legs.append(("sell" if held > 0 else "buy", abs(held)))
        if not working and all(quantity == 0 for _, quantity in legs):
            self._closing = None
            self._sent.clear()
            self._legs = None
        elif self._closing is not None and any(quantity > 0 for _, quantity in legs):
            self._trade("pair_exit", "flat", self._closing, tuple(legs), strength)

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
        self._sent.add(signal.id)
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

    def _reason(self, z: Decimal) -> str:
        return f"spread z={z} ({self._a} vs {self._b}, lookback {self.params.lookback})"

    def _trade(
        self,
        name: str,
        direction: Direction,
        reason: str,
        legs: tuple[tuple[Side, Decimal], ...],
        strength: Decimal | None = None,
    ) -> uuid.UUID:
        """One signal (on A) causing each leg's order of a quantity above 0;
        the signal's id."""
        signal = self.ctx.signal(self._a, name, direction, reason=reason, strength=strength)
        self._sent.add(signal.id)
        for symbol, (side, quantity) in zip((self._a, self._b), legs, strict=True):
            if quantity > 0:
                self.ctx.order(symbol, side, quantity, cause=signal)
        return signal.id
