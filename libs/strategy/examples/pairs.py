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

That the pair is closing, and what its entry sent, live in the instance. A
fresh one (after a runner restart, or a fault's) takes them up from its own
order history (``ctx.last_signal``, ``ctx.orders``) at its first live
callback, once the catch-up's events are in the books, with a leg held or
pending:

- its last signal a ``pair_entry``: the quantities that entry's orders asked
  for are the pair, and it is judged by them as by the instance that sent
  them (a part fill of any size closes it, slippage does not); a leg of that
  entry denied, rejected or canceled closes the pair, at the first callback
  when it was refused while the runner was down, at once when after the
  restart (a leg still working is closed when its order ends);
- its last signal a ``pair_exit``: the strategy had decided to be flat, and
  the pair is closing, whatever the spread and whatever the books show (both
  closes refused leave a pair that looks whole). Closes refused while the
  runner was down are sent again at the first bar, those still working are
  waited for (no pair is entered on top), and one refused after the restart
  is sent again at the next bar, as the instance that sent them would.

It also closes, at its first bar, what the books show is not a pair: one leg
held alone, or a close working against a leg.

The history reaches back as far as the runner's rebuild reads: every chain
with an order working, and those with an event within
``rebuild_finished_s`` (7 days by default). A pair entered beyond it (its
entry's chain finished before that, and no signal since) is judged by the
books alone: both legs held, nothing pending, their costs at average price
more than one unit of the dearer leg and ``RATIO_SLACK`` of the larger cost
apart close it, so a part fill within that is held and an entry filled more
than about 5 % off its closes is closed; both legs closed in part and in
proportion look whole and are held until ``|z| < exit_z``. A refused order
whose signal the history does not know closes the pair at once, whatever
the books show: an entry's leg or a close, the instance that sent it was
closing the pair or would close it then; its reason says what the books
show.

An exit that fell due while the runner was down, with no instance running to
signal it, is not acted on late: the pair is held until ``|z| < exit_z``
comes again. The warm-up is ``lookback`` minutes, the spreads the first live
z-score is taken against.
"""

from __future__ import annotations

import logging
import uuid
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
#: A pair whose entry is beyond the order history's reach: both legs held,
#: their costs (quantity x average price x multiplier) may differ by one unit
#: of the dearer leg (each is sized to whole units of ``leg_notional``) and
#: this part of the larger cost (the fills' slippage from the bar's close the
#: legs were sized at); more, and the pair is not the one an entry made: a
#: leg of it filled or closed in part.
RATIO_SLACK = Decimal("0.05")


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
        #: leg, the exit, a leg found held alone, or the order history after a
        #: restart (``_recall``); cleared once both legs are flat with nothing
        #: pending. Meanwhile no pair is entered.
        self._closing: str | None = None
        #: The latest entry's signal: a leg of it that ends unfilled (or part
        #: filled) leaves the other leg unhedged.
        self._entry: uuid.UUID | None = None
        #: What the latest entry holds, whole (signed, by leg): what its
        #: orders asked for. A pair is judged whole by these quantities, never
        #: by its fill prices. None once the pair is flat, and for a pair
        #: whose entry the order history does not hold (``_recall``).
        self._legs: dict[str, Decimal] | None = None
        #: Whether the instance has taken the pair up from the order history
        #: (``_recall``), at its first live callback.
        self._recalled = False

    @classmethod
    def warmup_bars(cls, params: PairsParams) -> int:
        """``lookback`` minutes: the spreads the first live z-score is taken
        against."""
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
        self._recall()
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
        self._recall()
        if self._closing is not None:
            # A leg's order that was still working has ended: close what it filled.
            self._close()

    def on_order_update(self, update: OrderUpdate) -> None:
        """A leg of the entry denied, rejected or canceled: the pair is
        closed at once, each leg by what it holds. A refused close is not
        answered here but at the next bar (``on_bar``): a refusal that stands
        would otherwise be answered at once, for ever. The same after a
        restart: the order history says which orders were the entry's legs
        (``_recall``) and which were closes.

        A refused order whose signal the history does not know (sent before
        a restart, beyond the history's reach) closes the pair at once,
        whatever the books show: the instance that sent it was closing the
        pair, or would close it at this refusal (a leg of its entry). Its
        reason says what the books show, if anything."""
        if update.kind == "accepted":
            return
        self._recall()
        leg = update.symbol or "a leg"
        detail = f": {update.reason}" if update.reason else ""
        if update.signal_id == self._entry:
            self._closing = f"entry leg {leg} {update.kind}{detail}; the pair is closed"
        elif (
            self._closing is None
            and update.intent_id is not None  # an order the books still had working
            and not self._known(update.intent_id)
        ):
            why = self._unwhole() or "the pair is closed"
            self._closing = (
                f"{leg} {update.kind}{detail} (an order the history does not know); {why}"
            )
        else:
            return
        self._close()

    def _recall(self) -> None:
        """Take the pair up where the instance that sent its orders left it,
        from the strategy's own order history, once, at the first live
        callback (after a restart the catch-up's refusals and fills are in
        the books by then). With a leg held or pending, the last signal says:

        - a ``pair_entry``: it is the entry (``_entry``) and the pair is what
          its orders asked for (``_legs``); a leg of it denied, rejected or
          canceled (while the runner was down) closes the pair, as it did the
          instance that saw it;
        - a ``pair_exit`` (after the last entry: an entry waits until both
          legs are flat): the pair is closing.

        With no signal in the history (beyond its reach) the books judge."""
        if self._recalled:
            return
        self._recalled = True
        if all(
            self.ctx.position(symbol).quantity == 0 and self.ctx.pending(symbol) == 0
            for symbol in (self._a, self._b)
        ):
            return
        latest = self.ctx.last_signal()
        if latest is None:
            return
        if latest.name != "pair_entry":
            when = datetime.fromtimestamp(latest.created_ns // 10**9, UTC).isoformat()
            self._closing = (
                f"{latest.name} signaled at {when} (before a restart) and the pair is "
                "not yet flat: closed"
            )
            return
        self._entry = latest.signal_id
        # Not since_ns=latest.created_ns: the orders' times are the strategy's
        # clock too, but a wall clock stepped back must not hide them.
        orders = [o for o in self.ctx.orders() if o.signal_id == latest.signal_id]
        made = {self._a: ZERO, self._b: ZERO}
        for order in orders:
            if order.symbol in made:
                made[order.symbol] += signed(order.side, order.quantity)
        if all(quantity != 0 for quantity in made.values()):  # every entry sends both
            self._legs = made
        refused = next((o for o in orders if not o.working and o.status != "filled"), None)
        if refused is not None:
            detail = f": {refused.reason}" if refused.reason else ""
            self._closing = (
                f"entry leg {refused.symbol} {refused.status}{detail} (before a restart); "
                "the pair is closed"
            )

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
        return self._naked() or self._closing_working() or self._lopsided()

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
        it knows, and a fresh one reads the exit from the order history
        (``_recall``); without it, it would see each leg's exposure at 0 and
        take the pair for flat: enter another on top and, the closes refused,
        hold both as one pair of twice the size."""
        for symbol in (self._a, self._b):
            held, pending = self.ctx.position(symbol).quantity, self.ctx.pending(symbol)
            if held * pending < 0:
                return f"a close of {symbol} ({held} held) is working: the pair is closed"
        return None

    def _lopsided(self) -> str | None:
        """Why the pair must close when both legs are held, nothing pending in
        either, at other than what its entry holds: an entry or an exit one
        of whose legs filled in part. The entry's quantities (``_legs``, the
        instance's own or recalled from the order history) judge: any other
        is not the pair, whatever the fill prices (an entry filled away from
        the closes it was sized at is whole). A pair entered beyond the
        history's reach is judged by the legs' costs at their average prices
        (legs of about equal cost, of opposite sides: what the entry sized
        them by). An expired option leg is the broker's to settle
        (``_partner_expired``)."""
        legs = [self.ctx.position(symbol) for symbol in (self._a, self._b)]
        if any(
            leg.quantity == 0 or self.ctx.pending(leg.symbol) != 0 or self.ctx.expired(leg.symbol)
            for leg in legs
        ):
            return None
        a, b = legs
        made = self._legs
        if made is not None:
            if all(leg.quantity == made[leg.symbol] for leg in legs):
                return None
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

    def _known(self, intent_id: uuid.UUID) -> bool:
        """Whether the order history knows the signal that caused the intent."""
        return any(
            order.intent_id == intent_id and order.signal_name is not None
            for order in self.ctx.orders()
        )

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
        for symbol, (side, quantity) in zip((self._a, self._b), legs, strict=True):
            if quantity > 0:
                self.ctx.order(symbol, side, quantity, cause=signal)
        return signal.id
