"""positions_marked does not take an option settlement's fill as a price.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-12

The broker-gateway publishes an option position settled at its contract's
expiry as fills with ``payload.settlement`` set (``FillPayload.settlement``):
the contract closed at 0, and for an exercise or assignment the underlying
bought or sold at the strike. They are booked as every fill is (the
``positions`` view: quantity, average price, realized P&L), but since 0012
the view also takes a symbol's newest fill as its price, and a strike is not
where the underlying trades: every holder of the underlying, in every
account, would be valued at the strike until its next print (and another
account's position in the contract at 0). The risk-gate and the strategies'
ledgers do not mark at a settlement; now neither does the view.

The fill candidate skips settlements (``payload->>'settlement' IS NULL``; a
fill recorded before the field has none), and so does
``ix_events_newest_fill``'s predicate, so the lookup stays one probe that
reads no row only to throw it away (the strategy-runner's start-up lookup
of a symbol's newest fill, ``services/strategy_runner/adapters/store.py``,
takes the same predicate). The new index is built under another name (a
SHARE lock: readers go on) before the old one is dropped and it is renamed.
The view keeps its columns and grants; downgrade puts 0013's view and index
back.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from libs.store.migrate import revision_module

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FILL_CANDIDATE = "WHERE e.type = 'FillReceived' AND e.symbol = p.symbol\n"
NOT_A_SETTLEMENT = (
    "WHERE e.type = 'FillReceived' AND e.symbol = p.symbol\n"
    "      AND e.payload->>'settlement' IS NULL\n"
)


def positions_marked() -> str:
    view: str = revision_module("0013").POSITIONS_MARKED
    assert view.count(FILL_CANDIDATE) == 1, "0013's view is not as this migration expects"
    return view.replace(FILL_CANDIDATE, NOT_A_SETTLEMENT)


MARKET_NS = "least(ts_event, ts_init + 5000000000)"
NEWEST_FILL_INDEX = (
    f"CREATE INDEX ix_events_newest_fill_0014 ON events (symbol, ({MARKET_NS}) DESC, seq DESC) "
    "WHERE type = 'FillReceived' AND payload->>'settlement' IS NULL"
)


def upgrade() -> None:
    op.execute(NEWEST_FILL_INDEX)
    op.execute(positions_marked())
    op.execute("DROP INDEX ix_events_newest_fill")
    op.execute("ALTER INDEX ix_events_newest_fill_0014 RENAME TO ix_events_newest_fill")


def downgrade() -> None:
    op.execute(revision_module("0013").POSITIONS_MARKED)
    op.execute("DROP INDEX ix_events_newest_fill")
    op.execute(revision_module("0013").NEWEST_FILL_INDEX)
