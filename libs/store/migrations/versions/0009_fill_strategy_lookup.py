"""``fills`` looks up the ``SubmitOrder`` only of a fill that carries no strategy.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08

A fill is booked to its own ``strategy``, else to that of the
``SubmitOrder`` with the same order id (0002). The view of 0002 joined every
fill to its ``SubmitOrder`` (``LEFT JOIN LATERAL``, one probe of
``ix_events_order_id`` each) and only then took ``coalesce(f.strategy,
s.strategy)``: the probe was made and thrown away for every fill that
carries its strategy, which the broker-gateway's fills do. Reading positions
costs the fold over every fill in the history (``bench/positions_query.py``:
about 9 µs a fill), and that probe was a fifth to a third of it.

Now the lookup is a scalar subquery inside the ``coalesce``: PostgreSQL
evaluates ``coalesce``'s arguments left to right and stops at the first that
is not null, so the subquery runs only for a fill without a strategy. Same
rows, same columns, same order: the view is replaced in place and keeps its
grants, and the views over it (``orders``, ``fill_positions``,
``positions``...) are untouched. A duplicate recorded under two ids still
counts once, booked as its first copy says (``DISTINCT ON`` keeps the first
by ``seq``, and the strategy is that row's, as before).

Downgrade puts 0002's view back (the only one ``fills`` has had).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from libs.store.migrate import revision_module

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 0002's view; the SubmitOrder's strategy looked up only when the fill has none.
FILLS = """
CREATE OR REPLACE VIEW fills AS
SELECT DISTINCT ON (f.account, f.order_id, f.cumulative_quantity)
    f.seq, f.event_id, f.ts_event, f.account,
    coalesce(
        f.strategy,
        (SELECT c.strategy FROM events c
         WHERE c.type = 'SubmitOrder' AND c.account = f.account
           AND (c.payload->>'order_id')::uuid = f.order_id
         ORDER BY c.seq LIMIT 1)
    ) AS strategy,
    f.symbol, f.order_id, f.broker_order_id, f.fill_id, f.side,
    f.quantity, f.price, f.cumulative_quantity, f.leaves_quantity, f.status,
    f.commission, f.correlation_id, f.causation_id
FROM (
    SELECT e.seq, e.id AS event_id, e.ts_event, e.account, e.strategy, e.symbol,
           (e.payload->>'order_id')::uuid AS order_id,
           e.payload->>'broker_order_id' AS broker_order_id,
           e.payload->>'fill_id' AS fill_id,
           e.payload->>'side' AS side,
           (e.payload->>'quantity')::numeric AS quantity,
           (e.payload->>'price')::numeric AS price,
           (e.payload->>'cumulative_quantity')::numeric AS cumulative_quantity,
           (e.payload->>'leaves_quantity')::numeric AS leaves_quantity,
           e.payload->>'status' AS status,
           coalesce((e.payload->>'commission')::numeric, 0) AS commission,
           e.correlation_id, e.causation_id
    FROM events e
    WHERE e.type = 'FillReceived'
) f
ORDER BY f.account, f.order_id, f.cumulative_quantity, f.seq
"""


def upgrade() -> None:
    op.execute(FILLS)


def downgrade() -> None:
    before = revision_module("0002").FILLS
    op.execute(before.replace("CREATE VIEW", "CREATE OR REPLACE VIEW", 1))
