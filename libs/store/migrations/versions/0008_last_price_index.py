"""A symbol's last trade, bar and mark are index probes, not walks of the history.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08

``positions_marked`` (0007) finds each position's last price with three
lookups in ``events``: the symbol's last ``TradePrinted``, its last
``BarClosed`` (if it never traded) and its last ``MarkUpdated``, each
``ORDER BY seq DESC LIMIT 1``. With no index on (symbol, type), PostgreSQL
read the primary key backwards and filtered until it met such a row, which
is quick for an equity that trades all the time and a walk over the whole
history for a symbol that has none of that kind: an equity's mark (it never
has one), a contract that never traded, a bar nobody made. On a store of
3,000,000 events (``bench/positions_query.py``) ``positions_marked`` took
33 s, twice as long as at 1,500,000; ``account_pnl`` and ``tradebus
positions`` read it.

``ix_events_last_price`` holds (symbol, type, -seq) of the price rows only
(trades, bar closes, marks: a third of a feed, quotes are the rest), so each
lookup is one probe of it, found or not. The view is the same but for the
order of those lookups, ``ORDER BY -e.seq``: that order only this index
gives. Written ``seq DESC``, the planner may still prefer the primary key
read backwards (it is, when trades are a large share of the store and its
symbols few, as in a small universe), costing it as if every symbol had its
rows spread evenly over the history: exactly the symbols that have none pay
for that. With ``-seq`` the primary key would need a sort of every row, so
the probe wins whatever the statistics say. Same rows, same order (seq is
unique): the view's results do not change.

What it costs: one more index entry for each recorded trade, bar and mark.
On a stream of trades only (``bench/recorder.py``; the worst case, a feed's
quotes are most of it and stay out), PostgreSQL took 13.75 µs of CPU per
row COPYed instead of 11.2 and raw COPY ran at 62,500 rows/s instead of
74,900 (medians of four runs each, alternating); the recorder's own rates,
draining and end to end, moved less than between two runs of the same code.
The alternative, a table of last prices the recorder upserts in the
transaction of each batch, cost less in raw COPY (about 4 %) but is state
to keep right beside the timeline, which every writer (and a recorder of
the code before it, still running after the migration) would have to keep.
Building the index takes a SHARE lock on ``events`` for as long as it takes
(0.5 s at 1,000,000 events, about 2 s at 3,000,000): ``tradebus up`` and
compose migrate before the recorder starts; a recorder already running
waits, and past its write timeout starts over from what is committed,
losing nothing.

The view keeps its columns, so it is replaced in place and keeps its
grants; downgrade puts 0007's view back and drops the index.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from libs.store.migrate import revision_module

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PRICE_TYPES = "'TradePrinted', 'BarClosed', 'MarkUpdated'"

LAST_PRICE_INDEX = (
    "CREATE INDEX ix_events_last_price ON events (symbol, type, (-seq)) "
    f"WHERE type IN ({PRICE_TYPES})"
)

# 0007's view; each lookup ordered by -seq (see the docstring).
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
    WHERE e.type = 'BarClosed' AND e.symbol = p.symbol AND t.price IS NULL
    ORDER BY -e.seq LIMIT 1
) b ON true
LEFT JOIN LATERAL (
    SELECT (e.payload->>'price')::numeric AS price, e.ts_event, e.seq FROM events e
    WHERE e.type = 'MarkUpdated' AND e.symbol = p.symbol ORDER BY -e.seq LIMIT 1
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
    op.execute(LAST_PRICE_INDEX)
    op.execute(POSITIONS_MARKED)


def downgrade() -> None:
    # 0007's view (itself written as CREATE OR REPLACE), then the index it no longer uses.
    op.execute(revision_module("0007").POSITIONS_MARKED)
    op.execute("DROP INDEX IF EXISTS ix_events_last_price")
