"""``tradebus positions``: positions and P&L per account and strategy, from the store.

Reads the ``positions_marked`` view (migration 0002; options counted 100
shares since 0006, marks since 0007, its price lookups index probes since
0008, the fold started from the recorder's latest snapshot of it since
0010, a bar newer than the last trade taken since 0011, a fill since 0012,
each kind's newest by market time since 0013): quantities, average prices
and realized P&L from the recorded fills, unrealized P&L at the symbol's
last price (the newest by market time of its trades, bar closes, marks and
fills).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from libs.store.connect import connect

QUERY = (
    "SELECT account, strategy, symbol, quantity, avg_price, realized_pnl, last_price, "
    "unrealized_pnl, fills, last_fill_ns FROM positions_marked "
    "WHERE ($1::text IS NULL OR account = $1) "
    "ORDER BY account, strategy NULLS LAST, symbol"
)


@dataclass(frozen=True, slots=True)
class PositionRow:
    account: str
    strategy: str | None
    symbol: str
    quantity: Decimal
    avg_price: Decimal
    realized_pnl: Decimal
    last_price: Decimal | None
    unrealized_pnl: Decimal | None
    fills: int
    last_fill_ns: int

    def as_json(self) -> dict[str, Any]:
        return {k: _json(v) for k, v in asdict(self).items()}


def _json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return plain(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def plain(value: Decimal | None) -> str:
    """A decimal without trailing zeros or exponent (``14``, ``100.6``)."""
    if value is None:
        return ""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


async def read_positions(database_url: str, account: str | None = None) -> list[PositionRow]:
    """The positions of ``account`` (every account: None); a store that cannot
    be reached is a :class:`~libs.store.errors.StoreUnavailable` naming it."""
    conn = await connect(database_url)
    try:
        rows = await conn.fetch(QUERY, account)
    finally:
        await conn.close()
    return [PositionRow(**dict(r)) for r in rows]


@dataclass(frozen=True, slots=True)
class Totals:
    """One account's P&L over its rows."""

    realized: Decimal
    #: Over the positions with a price only: see ``unpriced``.
    unrealized: Decimal
    #: The open positions with no price at all (``strategy symbol``; ``-``:
    #: nobody's), which ``unrealized`` leaves out: shares an option's
    #: exercise delivered in a symbol with no market data recorded, say (a
    #: settlement's fill is never a price).
    unpriced: tuple[str, ...] = ()


def totals(rows: list[PositionRow]) -> dict[str, Totals]:
    """Realized and unrealized P&L per account, and the positions the
    unrealized P&L leaves out for want of a price."""
    out: dict[str, Totals] = {}
    for r in rows:
        t = out.get(r.account) or Totals(Decimal(0), Decimal(0))
        unpriced = t.unpriced
        if r.quantity and r.unrealized_pnl is None:
            unpriced = (*unpriced, f"{r.strategy or '-'} {r.symbol}")
        out[r.account] = Totals(
            t.realized + r.realized_pnl, t.unrealized + (r.unrealized_pnl or 0), unpriced
        )
    return out


def nets(rows: list[PositionRow]) -> dict[tuple[str, str], Decimal]:
    """Each account's net quantity per symbol held by more than one strategy.

    A flatten closes the account's net position at the broker and splits its
    closing fills over the strategies, so strategies can keep offsetting
    quantities (one long, one short) while the account is flat: this says so.
    """
    held: dict[tuple[str, str], list[Decimal]] = {}
    for r in rows:
        if r.quantity:
            held.setdefault((r.account, r.symbol), []).append(r.quantity)
    return {key: sum(qs, Decimal(0)) for key, qs in held.items() if len(qs) > 1}
