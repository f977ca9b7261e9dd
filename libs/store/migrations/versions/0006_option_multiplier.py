"""Positions and P&L count an option contract as 100 shares of its price.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

An option's price is per share and one contract is 100 shares, as the
risk-gate has always counted it (``contract_multiplier`` in the event
contract). The read models of 0002 counted it per share, so
``tradebus positions`` showed an options position's realized and unrealized
P&L 100 times too small. ``contract_multiplier(symbol)`` is the same rule in
SQL (``O:`` + OCC symbol: 100, anything else 1).

The position aggregate is unchanged: it is fed each fill's price times the
multiplier (so what it realizes is already the contract's worth, and the
commission, per fill, comes off as it is), and the average price it keeps is
divided back to a per-share price. The views keep their columns, so they are
replaced in place and keep their grants.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from libs.store.migrate import revision_module

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONTRACT_MULTIPLIER = """
CREATE FUNCTION contract_multiplier(symbol text) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN symbol LIKE 'O:%' THEN 100 ELSE 1 END::numeric $$
"""

FILL_POSITIONS = """
CREATE OR REPLACE VIEW fill_positions AS
SELECT s.seq, s.event_id, s.ts_event, s.account, s.strategy, s.symbol, s.order_id,
       s.side, s.quantity, s.price,
       s.state[1] AS position_quantity,
       round(s.state[2] / contract_multiplier(s.symbol), 12) AS position_avg_price,
       round(s.state[3], 12) AS realized_pnl
FROM (
    SELECT f.*,
           position_state(
               CASE f.side WHEN 'buy' THEN f.quantity ELSE -f.quantity END,
               f.price * contract_multiplier(f.symbol), f.commission
           ) OVER (PARTITION BY f.account, f.strategy, f.symbol ORDER BY f.seq) AS state
    FROM fills f
) s
"""

POSITIONS = """
CREATE OR REPLACE VIEW positions AS
SELECT p.account, p.strategy, p.symbol,
       p.state[1] AS quantity,
       round(p.state[2] / contract_multiplier(p.symbol), 12) AS avg_price,
       round(p.state[3], 12) AS realized_pnl,
       p.fills, p.last_fill_seq, p.last_fill_ns
FROM (
    SELECT account, strategy, symbol,
           position_state(
               CASE side WHEN 'buy' THEN quantity ELSE -quantity END,
               price * contract_multiplier(symbol), commission
               ORDER BY seq
           ) AS state,
           count(*) AS fills, max(seq) AS last_fill_seq, max(ts_event) AS last_fill_ns
    FROM fills
    GROUP BY account, strategy, symbol
) p
"""

POSITIONS_MARKED = """
CREATE OR REPLACE VIEW positions_marked AS
SELECT p.*,
       coalesce(t.price, b.price) AS last_price,
       coalesce(t.ts_event, b.ts_event) AS last_price_ns,
       CASE
           WHEN p.quantity = 0 THEN 0
           ELSE round(
               (coalesce(t.price, b.price) - p.avg_price) * p.quantity
               * contract_multiplier(p.symbol),
               12
           )
       END AS unrealized_pnl
FROM positions p
LEFT JOIN LATERAL (
    SELECT (e.payload->>'price')::numeric AS price, e.ts_event FROM events e
    WHERE e.type = 'TradePrinted' AND e.symbol = p.symbol ORDER BY e.seq DESC LIMIT 1
) t ON true
LEFT JOIN LATERAL (
    SELECT (e.payload->>'close')::numeric AS price, e.ts_event FROM events e
    WHERE e.type = 'BarClosed' AND e.symbol = p.symbol AND t.price IS NULL
    ORDER BY e.seq DESC LIMIT 1
) b ON true
"""


def upgrade() -> None:
    op.execute(CONTRACT_MULTIPLIER)
    for ddl in (FILL_POSITIONS, POSITIONS, POSITIONS_MARKED):
        op.execute(ddl)


def downgrade() -> None:
    before = revision_module("0002")
    for ddl in (before.FILL_POSITIONS, before.POSITIONS, before.POSITIONS_MARKED):
        op.execute(ddl.replace("CREATE VIEW", "CREATE OR REPLACE VIEW", 1))
    op.execute("DROP FUNCTION IF EXISTS contract_multiplier(text)")
