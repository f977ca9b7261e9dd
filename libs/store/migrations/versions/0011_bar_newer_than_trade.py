"""positions_marked prices a position at a bar newer than its last trade.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-09

Since 0002 the view looked up a symbol's last bar only when the symbol had
never traded (``AND t.price IS NULL``): one trade ever recorded hid every
bar after it, however much newer. 0007 then chose the newer of that price
and the last mark, calling it the risk-gate's rule (the newest by market
time whatever its kind, ``services/risk_gate/README.md``), but the gate takes
a bar newer than the last trade and the view did not. So a symbol whose
trades stopped being recorded while its bars went on (``TRADEBUS_CHANNELS``
without ``trades`` after a session with them; a thin equity's gap-filled
bars after an outage) was valued by ``tradebus positions`` at its last trade
for as long as that lasted, while the risk-gate's day P&L and the strategy's
ledger were marked at the bars.

Now the last trade, the last bar and the last mark are each looked up (a
probe of ``ix_events_last_price``, 0008) and the newest of the three by
``ts_event`` values the position; at the same time, the one later in the
stream. A symbol that has never traded is priced as before; so is one whose
last trade is at least as new as its last bar.

Only ``positions_marked`` changes; the fold (``positions``,
``position_states``) does not, so ``position_snapshots`` stays as it is. The
view keeps its columns: it is replaced in place and keeps its grants, and
``account_pnl`` over it is untouched. Downgrade puts 0008's view back.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from libs.store.migrate import revision_module

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 0008's view; the bar looked up whether or not the symbol traded, and the
# newest of trade, bar and mark taken.
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
    WHERE e.type = 'TradePrinted' AND e.symbol = p.symbol ORDER BY -e.seq LIMIT 1
) t ON true
LEFT JOIN LATERAL (
    SELECT (e.payload->>'close')::numeric AS price, e.ts_event, e.seq FROM events e
    WHERE e.type = 'BarClosed' AND e.symbol = p.symbol
    ORDER BY -e.seq LIMIT 1
) b ON true
LEFT JOIN LATERAL (
    SELECT (e.payload->>'price')::numeric AS price, e.ts_event, e.seq FROM events e
    WHERE e.type = 'MarkUpdated' AND e.symbol = p.symbol ORDER BY -e.seq LIMIT 1
) m ON true
LEFT JOIN LATERAL (
    SELECT c.price, c.ts_event
    FROM (
        VALUES (t.price, t.ts_event, t.seq),
               (b.price, b.ts_event, b.seq),
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
    # 0008's view (itself written as CREATE OR REPLACE).
    op.execute(revision_module("0008").POSITIONS_MARKED)
