"""A strategy's books: positions and P&L from its fills, and its open intents.

Both are pure and rebuilt by replaying the same events (from the store on
start-up, from the bus afterwards), so they must be idempotent: a fill seen
twice counts once (a copy as long as its key is kept: the host forgets the
keys of fills seen longer ago than a copy comes, ``libs/strategy/books.py``).

Positions use average cost: adding to a position re-weights the average
price; reducing it realizes ``(price - average) x closed quantity`` (sign
by side; times 100 for an option contract, ``contract_multiplier``); crossing
through zero realizes the closed part and opens the rest at the fill price.
Commissions come off realized P&L. A position keeps the market time of the
fill that last opened it from flat (``Position.opened_ns``): a flip through
zero opens it again at its fill; adding and closing part keep it; closed,
it has none.

A position is marked as the risk-gate and ``tradebus positions`` mark it,
by trades, bars' closes, marketdata's option marks and fills (never by a
quote: the host says what marks, ``StrategyHost._apply_market_data``): at
the newest price by the market's own time (the host passes
``Event.market_ns``: ``ts_event``, no later than a few seconds after the
event was made, so one bad stamp ahead cannot hold the mark), a fill's price
included, so a price arriving late with an older time does not move the mark
back, and a fill newer than the last print marks the position at its price
(a thin option contract may see no print for hours after it). The newest
price of a symbol not held yet is kept too: a position that opens without a
price of its own (the underlying's shares of an option's exercise, booked at
the strike) is marked by it at once, as the risk-gate marks it, not only at
the symbol's next print (overnight, or over a weekend, after an expiry).
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal

from libs.contract.codec import order_id_for
from libs.contract.events import FillPayload, OrderIntentCreated, Side, contract_multiplier
from libs.strategy.context import ZERO, PnL, Position


def signed(side: Side, quantity: Decimal) -> Decimal:
    """Buys positive, sells negative."""
    return quantity if side == "buy" else -quantity


def _sign(x: Decimal) -> int:
    return (x > 0) - (x < 0)


#: A fill as its broker names it: (account, broker order id, fill id).
FillKey = tuple[str, str, str]


class Ledger:
    """Positions per symbol from fills; marks for unrealized P&L."""

    def __init__(self) -> None:
        self._positions: dict[str, Position] = {}
        #: The fills taken, to drop a copy (``apply_fill``) until forgotten
        #: (``forget_fills``).
        self._seen_fills: set[FillKey] = set()
        #: (when seen, key) of the fills taken that may be forgotten, in the
        #: order taken.
        self._seen_at: deque[tuple[int, FillKey]] = deque()
        self._fills_applied = 0
        #: The newest price (and its market time) of each symbol marked and
        #: not held yet: the mark a position in it opens with.
        self._prices: dict[str, tuple[Decimal, int]] = {}

    @property
    def positions(self) -> dict[str, Position]:
        return self._positions

    def position(self, symbol: str) -> Position:
        return self._positions.get(symbol) or Position(symbol)

    @property
    def fills_applied(self) -> int:
        """Fills this ledger took (not counting those of a seed), forgotten
        ones included: what a start-up folded, for its checkpoint."""
        return self._fills_applied

    def seed(self, positions: Mapping[str, Position]) -> None:
        """Start from ``positions`` (a checkpoint's fold of earlier fills)."""
        if self._positions or self._fills_applied:
            raise ValueError("a ledger is seeded before any fill")
        self._positions = dict(positions)

    def mark(self, symbol: str, price: Decimal, ts_ns: int) -> None:
        """``price`` of ``symbol`` at market time ``ts_ns`` marks its position
        unless the mark is newer; of a symbol not held yet, it is kept as the
        mark a position in it opens with."""
        pos = self._positions.get(symbol)
        if pos is None:
            self.note_price(symbol, price, ts_ns)
        elif ts_ns >= pos.mark_ns:
            self._positions[symbol] = replace(pos, mark=price, mark_ns=ts_ns)

    def note_price(self, symbol: str, price: Decimal, ts_ns: int) -> None:
        """Keep ``price`` (at ``ts_ns``) of ``symbol``, unless a newer one is
        kept, as the mark a position in it opens with; nothing for a symbol
        the ledger has a position in (a checkpoint's rebuild hands it the
        prices its seed had seen: the seed's marks have them already)."""
        if symbol in self._positions:
            return
        last = self._prices.get(symbol)
        if last is None or ts_ns >= last[1]:
            self._prices[symbol] = (price, ts_ns)

    def apply_fill(self, fill: FillPayload, ts_ns: int, *, seen_ns: int | None = None) -> bool:
        """Apply a fill (of market time ``ts_ns``: its event's ``market_ns``);
        False (and nothing changes) when it was already applied and is not
        forgotten. ``seen_ns``: when it was seen (its event's ``ts_init``),
        what :meth:`forget_fills` judges it by; None: never forgotten."""
        key = (fill.account, fill.broker_order_id, fill.fill_id)
        if key in self._seen_fills:
            return False
        self._seen_fills.add(key)
        self._fills_applied += 1
        if seen_ns is not None:
            self._seen_at.append((seen_ns, key))
        pos = self._positions.get(fill.symbol)
        if pos is None:
            # Marked from the start by the newest price seen (the gate marks
            # a symbol so, whoever held it then); the fill's own price, if
            # newer, replaces it below. A settlement's price, a strike, is none.
            last = self._prices.pop(fill.symbol, None)
            pos = (
                Position(fill.symbol)
                if last is None
                else Position(fill.symbol, mark=last[0], mark_ns=last[1])
            )
        q0, avg0 = pos.quantity, pos.average_price
        dq = signed(fill.side, fill.quantity)
        realized = pos.realized_pnl - fill.commission
        new_q = q0 + dq
        opened_ns = pos.opened_ns
        if q0 == 0 or _sign(q0) == _sign(dq):
            avg = (avg0 * abs(q0) + fill.price * abs(dq)) / abs(new_q)
            if q0 == 0:
                opened_ns = ts_ns
        else:
            closing = min(abs(dq), abs(q0))
            realized += (fill.price - avg0) * closing * _sign(q0) * contract_multiplier(fill.symbol)
            if new_q == 0:
                avg, opened_ns = ZERO, None
            elif _sign(new_q) == _sign(q0):
                avg = avg0
            else:
                avg, opened_ns = fill.price, ts_ns
        mark, mark_ns = pos.mark, pos.mark_ns
        # A settlement (an option's expiry: the contract at 0, the underlying
        # at the strike) is booked, but it is no market price.
        if fill.settlement is None and (mark is None or ts_ns >= mark_ns):
            mark, mark_ns = fill.price, ts_ns
        self._positions[fill.symbol] = Position(
            fill.symbol, new_q, avg, realized, mark, mark_ns, opened_ns
        )
        return True

    def forget_fills(self, before_ns: int) -> None:
        """Forget the fills seen before ``before_ns`` (their ``seen_ns``), oldest
        taken first (one stamped out of order waits for those taken before
        it): a copy of one that comes after this is applied again. The host
        forgets only those seen longer ago than a copy can come
        (``HostBooks._apply_fill``); their effect on the positions stays."""
        seen_at = self._seen_at
        while seen_at and seen_at[0][0] < before_ns:
            self._seen_fills.discard(seen_at.popleft()[1])

    def pnl(self) -> PnL:
        realized = sum((p.realized_pnl for p in self._positions.values()), ZERO)
        unrealized = sum((p.unrealized_pnl for p in self._positions.values()), ZERO)
        return PnL(realized, unrealized)


@dataclass(slots=True)
class OpenIntent:
    """An intent not yet finished: its remaining (unfilled) quantity."""

    intent_id: uuid.UUID
    signal_id: uuid.UUID
    symbol: str
    side: Side
    remaining: Decimal
    order_id: uuid.UUID | None = None


class IntentBook:
    """The strategy's intents that are still working, to answer ``pending``.

    An intent is open from its emission until it is denied by the risk-gate,
    completely filled, rejected or canceled. Broker events carry the order id,
    which the risk-gate derives from the intent's id (``order_id_for``): each
    intent is mapped to its order from the start. A decision naming another
    order id (a gate that derived it otherwise) re-maps it; a broker event
    whose order id maps to nothing is matched to the oldest unmapped intent
    of its signal (its correlation id) with the same symbol and side.

    The ids of the intents it took (``add``: a copy read back again is no new
    intent) are kept until the host forgets a finished one (``forget``).
    """

    def __init__(self) -> None:
        self._open: dict[uuid.UUID, OpenIntent] = {}
        self._by_order: dict[uuid.UUID, uuid.UUID] = {}
        self._seen: set[uuid.UUID] = set()

    def __len__(self) -> int:
        return len(self._open)

    def knows(self, intent_id: uuid.UUID) -> bool:
        return intent_id in self._seen

    def forget(self, intent_id: uuid.UUID) -> None:
        """Forget a finished intent (a working one is kept): a copy of it read
        back after this is taken as a new intent. The host forgets only those
        finished longer ago than any copy can come (``HostBooks._retire``)."""
        if intent_id not in self._open:
            self._seen.discard(intent_id)

    def working_of(self, signal_id: uuid.UUID) -> bool:
        """Whether an intent of the chain of ``signal_id`` is still working."""
        return any(i.signal_id == signal_id for i in self._open.values())

    def add(self, intent: OrderIntentCreated) -> bool:
        """Open ``intent``; False when it was seen before (a replay)."""
        if intent.id in self._seen:
            return False
        self._seen.add(intent.id)
        p = intent.payload
        order_id = order_id_for(intent.id)
        self._open[intent.id] = OpenIntent(
            intent.id, intent.correlation_id, p.symbol, p.side, p.quantity, order_id
        )
        self._by_order[order_id] = intent.id
        return True

    def pending(self, symbol: str) -> Decimal:
        return sum(
            (signed(i.side, i.remaining) for i in self._open.values() if i.symbol == symbol),
            ZERO,
        )

    def get(self, intent_id: uuid.UUID) -> OpenIntent | None:
        return self._open.get(intent_id)

    def accepted(self, intent_id: uuid.UUID, order_id: uuid.UUID | None) -> None:
        """The risk-gate made ``order_id`` from the intent."""
        intent = self._open.get(intent_id)
        if intent is not None and order_id is not None and order_id != intent.order_id:
            if intent.order_id is not None:
                self._by_order.pop(intent.order_id, None)
            intent.order_id = order_id
            self._by_order[order_id] = intent_id

    def close(self, intent_id: uuid.UUID) -> OpenIntent | None:
        """The intent is finished (denied, rejected, canceled, filled)."""
        intent = self._open.pop(intent_id, None)
        if intent is not None and intent.order_id is not None:
            self._by_order.pop(intent.order_id, None)
        return intent

    def find(
        self,
        order_id: uuid.UUID,
        signal_id: uuid.UUID,
        symbol: str | None = None,
        side: Side | None = None,
    ) -> OpenIntent | None:
        """The open intent behind broker order ``order_id``, mapping it if needed."""
        intent_id = self._by_order.get(order_id)
        if intent_id is not None:
            return self._open.get(intent_id)
        for intent in self._open.values():
            if (
                intent.order_id is None
                and intent.signal_id == signal_id
                and (symbol is None or intent.symbol == symbol)
                and (side is None or intent.side == side)
            ):
                intent.order_id = order_id
                self._by_order[order_id] = intent.intent_id
                return intent
        return None

    def filled(self, fill: FillPayload, signal_id: uuid.UUID) -> OpenIntent | None:
        """Take a fill off its intent; closes it when nothing is left to fill."""
        intent = self.find(fill.order_id, signal_id, fill.symbol, fill.side)
        if intent is None:
            return None
        # leaves_quantity is the broker's own count of what is left: exact, and
        # min() keeps it right if fills arrive out of order.
        intent.remaining = min(intent.remaining, fill.leaves_quantity)
        if fill.status == "complete" or intent.remaining == 0:
            self.close(intent.intent_id)
        return intent
