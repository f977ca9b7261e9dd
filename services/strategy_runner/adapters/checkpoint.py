"""Strategy checkpoints: a strategy's positions folded from its fills up to a sequence.

A strategy's positions, average prices and realized P&L come from every fill
it ever had, in order (average cost: each fill's effect depends on the ones
before it). Without checkpoints every start-up reads and folds all of them,
so it grows with every fill recorded. With them, a start-up seeds each
strategy's ledger from its newest usable checkpoint and folds only what
came after it.

**Exact by construction.** A checkpoint is only ever written from a rebuild
at start-up: the fold of the store's events up to the snapshot's sequence,
never the live books. The rebuild that loads it leaves every event at or
below its sequence out of the ledger (fills and marks alike: they are in the
checkpoint) while still giving the fills to the strategy's working intents;
so the ledger ends exactly as folding from the first event would leave it
(``tests/integration/test_strategy_checkpoints.py`` checks this at many split
points). A checkpoint is used only when:

- its ``code_digest`` matches: a hash of the ledger's code, the event
  contract and this module (a release that changes them ignores old ones);
- the store still holds, at ``seq``, the event it was folded from.

Otherwise it is ignored and the rebuild folds every fill, as without
checkpoints. The positions are stored as JSON, field by field.

A ledger counts a fill once by its (account, broker order id, fill id); a
checkpoint does not keep those keys. That is safe because the store holds
each fill once: the broker-gateway derives a fill's event id from its order
and cumulative quantity, and the store keeps one event per id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import asyncpg
import orjson

from libs.store.checkpoints import code_digest, table_exists
from libs.strategy.context import Position

#: Bumped when the encoding below changes (2: the mark's market time; 3: the
#: time each position was opened, ``Position.opened_ns``). An older format's
#: checkpoints have another digest and are not read: the first start-up folds
#: the fills from the start again, which gives every position its open time.
FORMAT = 3
#: Checkpoints kept per strategy and digest.
KEEP = 3
_HERE = Path(__file__).resolve()
_ROOT = _HERE.parents[3]
#: The code a ledger fold depends on: the ledger, its positions, and the
#: host (its books: which events mark it, and how) and router (whose fills).
#: A change to any of them makes earlier checkpoints ignored once (the first
#: start-up after it folds the fills from the start, and checkpoints again).
#: Not ``libs/strategy/history.py``: the order history (``ctx.orders()``) is
#: no part of a checkpoint (each start-up rebuilds it from the chains it
#: reads), so a change to it must not discard checkpoints.
_SOURCES = (
    _ROOT / "libs" / "strategy" / "ledger.py",
    _ROOT / "libs" / "strategy" / "context.py",
    _ROOT / "libs" / "strategy" / "host.py",
    _ROOT / "libs" / "strategy" / "books.py",
    _ROOT / "libs" / "strategy" / "routing.py",
    # underlyings(): which symbols' prices mark an option strategy's shares.
    _ROOT / "libs" / "contract" / "options.py",
    # Event.market_ns and CLOCK_SKEW_NS: the marks' market time.
    _ROOT / "libs" / "contract" / "envelope.py",
    # The event contract: the union and its families' modules.
    _ROOT / "libs" / "contract" / "events.py",
    _ROOT / "libs" / "contract" / "events_market.py",
    _ROOT / "libs" / "contract" / "events_orders.py",
    _ROOT / "libs" / "contract" / "events_risk.py",
    _HERE,
)


CODE_DIGEST = code_digest(FORMAT, _SOURCES)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One strategy's ledger positions as folded up to ``seq``."""

    strategy: str
    seq: int
    #: Fills folded into it, in all.
    fills: int
    positions: dict[str, Position]


def encode(positions: Mapping[str, Position]) -> str:
    return orjson.dumps(
        {
            s: [
                str(p.quantity),
                str(p.average_price),
                str(p.realized_pnl),
                None if p.mark is None else str(p.mark),
                p.mark_ns,
                p.opened_ns,
            ]
            for s, p in positions.items()
        }
    ).decode()


def decode(data: str) -> dict[str, Position]:
    raw: Any = orjson.loads(data)
    if not isinstance(raw, dict):
        raise ValueError("positions are not an object")
    out: dict[str, Position] = {}
    for symbol, row in raw.items():
        if not isinstance(row, list) or len(row) != 6:
            raise ValueError(f"{symbol}: not a position of format {FORMAT}")
        qty, avg, realized, mark, mark_ns, opened_ns = row
        out[symbol] = Position(
            symbol,
            Decimal(qty),
            Decimal(avg),
            Decimal(realized),
            None if mark is None else Decimal(mark),
            int(mark_ns),
            None if opened_ns is None else int(opened_ns),
        )
    return out


async def latest(
    conn: asyncpg.Connection, strategies: Sequence[str], *, up_to: int
) -> dict[str, Checkpoint]:
    """Each strategy's newest usable checkpoint at or below ``up_to`` (call
    inside the rebuild's snapshot transaction)."""
    if not await table_exists(conn, "strategy_checkpoints"):
        return {}
    rows = await conn.fetch(
        "SELECT c.strategy, c.seq, c.fills, c.positions::text AS positions "
        "FROM strategy_checkpoints c JOIN events e ON e.seq = c.seq AND e.id = c.event_id "
        "WHERE c.strategy = ANY($1::text[]) AND c.code_digest = $2 AND c.seq <= $3 "
        "ORDER BY c.strategy, c.seq DESC",
        list(strategies),
        CODE_DIGEST,
        up_to,
    )
    out: dict[str, Checkpoint] = {}
    for row in rows:
        name = row["strategy"]
        if name in out:
            continue
        try:
            positions = decode(row["positions"])
        except (ValueError, TypeError, ArithmeticError):
            continue  # unreadable: an older one, or the whole fold
        out[name] = Checkpoint(name, int(row["seq"]), int(row["fills"]), positions)
    return out


async def write(conn: asyncpg.Connection, checkpoint: Checkpoint) -> bool:
    """Store ``checkpoint``; keep the newest :data:`KEEP` of its strategy and
    digest. False if the store has no event at its seq (or no table)."""
    if not await table_exists(conn, "strategy_checkpoints"):
        return False
    async with conn.transaction():
        done = cast(
            str,
            await conn.execute(
                "INSERT INTO strategy_checkpoints "
                "(strategy, seq, event_id, code_digest, fills, positions) "
                "SELECT $1, seq, id, $3, $4, $5::jsonb FROM events WHERE seq = $2 "
                "ON CONFLICT DO NOTHING",
                checkpoint.strategy,
                checkpoint.seq,
                CODE_DIGEST,
                checkpoint.fills,
                encode(checkpoint.positions),
            ),
        )
        # Ours beyond the newest KEEP; an older release's once a day old.
        await conn.execute(
            "DELETE FROM strategy_checkpoints WHERE strategy = $1 AND ((code_digest = $2 "
            "AND seq < (SELECT min(seq) FROM (SELECT seq FROM strategy_checkpoints "
            "WHERE strategy = $1 AND code_digest = $2 ORDER BY seq DESC LIMIT $3) AS kept)) "
            "OR (code_digest <> $2 AND written_at < now() - interval '1 day'))",
            checkpoint.strategy,
            CODE_DIGEST,
            KEEP,
        )
    return done.endswith(" 1")
