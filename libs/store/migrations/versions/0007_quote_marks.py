"""positions_marked prices a position from option marks (quotes) too.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08

A thin option contract can go minutes without a trade or a bar while the
market quotes it; marketdata publishes ``MarkUpdated`` (``md.mark.<symbol>``,
the quote's midpoint, throttled) for option contracts. Until now the view
valued a position at the symbol's last recorded trade (its last bar's close
when it never traded), so an option position was marked at a trade of long
ago, or not at all.

The last price is now the newer, by market time (``ts_event``), of that trade
(or bar) and the symbol's last mark; at the same time, the one later in the
stream. That is the risk-gate's rule for the same prices (newest wins,
``services/risk_gate/README.md``). Equities have no marks: their price is
the same as before.

The view keeps its columns (``last_price``, ``last_price_ns``,
``unrealized_pnl``), so it is replaced in place and keeps its grants, and
``account_pnl`` over it is untouched. The last mark of a symbol is found as
its last trade is (the primary key read backwards, ``ix_events_symbol`` for
a quiet one): no new index, which would cost the recorder on every row.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from libs.store.migrate import revision_module

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POSITIONS_MARKED = """
CREATE OR REPLACE VIEW positions_marked AS
SELECT p.*,
       lp.price AS last_price,
       lp.ts_event AS last_price_ns,
       CASE
           WHEN p.quantity = 0 THEN 0
           ELSE round(
               (lp.price - p.avg_price) * p.quantity * contract_multiplier(p.symbol), 12
           )
       END AS unrealized_pnl
FROM positions p
LEFT JOIN LATERAL (
    SELECT (e.payload->>'price')::numeric AS price, e.ts_event, e.seq FROM events e
    WHERE e.type = 'TradePrinted' AND e.symbol = p.symbol ORDER BY e.seq DESC LIMIT 1
) t ON true
LEFT JOIN LATERAL (
    SELECT (e.payload->>'close')::numeric AS price, e.ts_event, e.seq FROM events e
    WHERE e.type = 'BarClosed' AND e.symbol = p.symbol AND t.price IS NULL
    ORDER BY e.seq DESC LIMIT 1
) b ON true
LEFT JOIN LATERAL (
    SELECT (e.payload->>'price')::numeric AS price, e.ts_event, e.seq FROM events e
    WHERE e.type = 'MarkUpdated' AND e.symbol = p.symbol ORDER BY e.seq DESC LIMIT 1
) m ON true
LEFT JOIN LATERAL (
    SELECT c.price, c.ts_event
    FROM (
        VALUES (coalesce(t.price, b.price), coalesce(t.ts_event, b.ts_event),
                coalesce(t.seq, b.seq)),
               (m.price, m.ts_event, m.seq)
    ) AS c(price, ts_event, seq)
    WHERE c.price IS NOT NULL
    ORDER BY c.ts_event DESC, c.seq DESC
    LIMIT 1
) lp ON true
"""


def upgrade() -> None:
    op.execute(POSITIONS_MARKED)


def downgrade() -> None:
    # 0006's view (trades, else bars), itself written as CREATE OR REPLACE.
    op.execute(revision_module("0006").POSITIONS_MARKED)
